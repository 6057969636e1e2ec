"""One source's way back: after a cutover, SQLite follows Postgres until a rollback.

The mirror of syncd/pipeline.py, with the same control surface (run, stop, wakeup,
health, lag, ready, busy_for, pending), so the daemon runs either per source by the
direction in bookkeeping. One task works in small steps: a batch from Postgres's
changelog applied to SQLite with its checkpoint, one chunk of a table being copied
again, a schema change followed. Postgres wakes it (LISTEN/NOTIFY from the capture
triggers); the poll interval is the safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import time
from dataclasses import dataclass, field

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential, wait_random

from syncd import metrics
from syncd.config import Settings, SourceSettings
from syncd.health_note import POSTGRES_DOWN, POSTGRES_LOGIN_REFUSED, FailingNote, outage
from syncd.model import TO_SQLITE, TableSpec
from syncd.pipeline import lock_met
from syncd.postgres import bookkeeping as bk
from syncd.postgres import cutover_guard, ddl
from syncd.postgres.bookkeeping import CheckpointConflict, SourceLocked, TableRow
from syncd.postgres.connect import (CannotConnect, describe, is_shape_error, is_transient, lock_given_up,
                                    plan_outdated, privilege_refused, short_of_resource, statement_cancelled)
from syncd.postgres.pool import Target
from syncd.postgres.target import UnsupportedTarget
from syncd.reconcile import install_capture
from syncd.reverse import applier, capture, reader, tables
from syncd.reverse.applier import ApplyOutcome, ApplyPlan, NeedKeys, SchemaMoved, SqliteSink, TableApply, run_on
from syncd.reverse.capture import Names
from syncd.reverse.checkpoint import META_KEY, ReverseCheckpoint, older, start
from syncd.reverse.reader import SourceTable
from syncd.reverse.values import ColumnShape, NotExpressible, OutOfRange, to_sqlite
from syncd.session import SourceSession, changed, new_row
from syncd.sqlite import freeze
from syncd.sqlite.capture import ROWIDS_MOVED_REASON, clear_rearmed, contended
from syncd.sqlite.connection import FileMoved, SourceFileError, not_utf8, out_of_reach
from syncd.sqlite.hold import BUSY_POLL_SECONDS, RowsPerHold, step_aside
from syncd.types import ValueMismatch, converter

# Health states (the forward pipeline's names where they mean the same).
STARTING = "starting"
SNAPSHOTTING = "snapshotting"  # a table is being copied again from Postgres
STREAMING = "streaming"
SOURCE_MISSING = "source_missing"
LOCKED = "locked_by_other"
FILE_LOCKED = "file_locked"  # the application has kept the SQLite file locked while syncd had to write into it
FAILING = "failing"
RETIRED = "rollback_window_over"  # [cutover] keep_sqlite_days passed: SQLite no longer follows

DIRECTION_CHECK_SECONDS = 2.0
# The watch has not seen a source for this long (Postgres away, say): its cycles run at
# the FleetPoller's pace again.
WATCH_STALE_SECONDS = 3 * DIRECTION_CHECK_SECONDS
LOOKUP_DROP_RETRY_SECONDS = 300.0  # retired: a lookup index not dropped (its table busy) is tried again then
COLLISION_ROUNDS = 4
RELOAD_CHUNK_ROWS = 5000
# Keys of a table copied again that Postgres no longer has (a TRUNCATE's whole table),
# deleted per write transaction at most: a delete carries no values to read or write.
RELOAD_GONE_ROWS = 50_000
APPLIED_AT_EVERY = 1.0  # seconds: how often applying writes the source's last apply time into Postgres
FROZEN_MESSAGE = ("this database was moved to PostgreSQL by syncd; write to PostgreSQL "
                  '(schema "{schema}") instead')
CAPTURE_PUT_BACK = "capture triggers put back in Postgres: copied again"


@dataclass
class ReverseTable:
    """A followed (or paused) table, as status and the daemon read it."""

    name: str
    tid: int | None
    spec: TableSpec | None
    row: TableRow
    shapes: tuple[ColumnShape, ...] = ()
    key_types: tuple[str, ...] = ()
    retry_at: float = 0.0
    logged_reason: str | None = None
    held_key: tuple | None = None  # held for this row's value: looked at before copying the table again
    # Held (then copied again) since, paused: its oldest change not applied (None while it
    # has missed none): SQLite's copy is that old.
    behind_since: float | None = None

    def behind(self, row: TableRow, old: "ReverseTable | None") -> None:
        """Carry or start the time this table stopped following Postgres, for its new
        bookkeeping row: kept while it is held, paused or being copied again. A paused
        table without one is given its oldest change not applied by the reconcile."""
        if row.state not in (bk.HELD, bk.PAUSED, bk.LOADING):
            self.behind_since = None
        elif old is not None and old.behind_since is not None:
            self.behind_since = old.behind_since
        elif row.behind_since is not None:
            self.behind_since = row.behind_since.timestamp()  # as saved (also across a restart)
        elif row.state == bk.HELD:
            # Held before this reconcile: since its row's last save at the latest.
            self.behind_since = row.updated_at.timestamp() if row.updated_at is not None else time.time()

    @property
    def state(self) -> str:
        return self.row.state

    def behind_row(self, row: TableRow) -> TableRow:
        """`row` noting behind_since, for status and the report to read from the database."""
        return changed(row, behind_since=_utc(self.behind_since))

    def source_table(self) -> SourceTable:
        assert self.tid is not None and self.spec is not None
        return SourceTable(self.tid, self.spec, self.key_types, tuple(sh.family for sh in self.shapes))


@dataclass
class _Reload:
    """A table being copied again from Postgres, chunk by chunk (each chunk read in its
    own snapshot; changes between chunks reach SQLite through the stream)."""

    name: str
    after: tuple | None = None  # the last key copied (Postgres values)
    keep: set = field(default_factory=set)  # key tokens Postgres had
    rows: int = 0
    # Once every chunk is copied: the stored SQLite keys Postgres did not have, deleted
    # (or written, if Postgres has them by now) a write transaction's share at a time.
    gone: list[tuple] | None = None


@dataclass
class _Catalog:
    """What a reconcile reads of Postgres, read in one read-only snapshot, each kind in
    one query for every table of the source: a quiet source's full check costs Postgres
    one transaction of a few statements, however many tables it has."""

    guarded: list[str]  # tables a cutover's guard is still on (cutover_guard)
    files: dict[str, list]  # capture.table_files
    registry: bool  # capture.registry_ready
    generation: capture.Generation | None
    base: dict[str, ddl.PgTable]  # ddl.read_tables: the sticky types
    pg_tables: dict[str, tables.PgTableInfo]
    rows: dict[str, TableRow]
    owners: dict[str, str]
    formats: dict[tuple[str, str], str]
    triggers: dict[str, dict[str, str | None]]  # capture.capture_triggers
    marks: dict[str, str]  # capture.capture_triggers: each table's triggers' row versions
    bodies: dict[int, str]  # capture.capture_bodies


class ReverseLag:
    """The age of the oldest change Postgres holds and SQLite does not, measured in
    Postgres each cycle. While Postgres cannot be asked (`unreachable`), what it holds
    is unknown: the lag is then the time since it last could be, at least, an upper
    bound on how far behind SQLite may be."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.measured_at: float | None = None
        self.started_at = time.time()
        self.pending = 0
        self.unreachable = False

    def set(self, pending: int, seconds: float, now: float) -> None:
        self.pending, self.seconds, self.measured_at, self.unreachable = pending, seconds, now, False

    def lag(self, now: float) -> float:
        if self.measured_at is None:
            return max(0.0, now - self.started_at) if self.unreachable else 0.0
        since = max(0.0, now - self.measured_at)
        if self.unreachable:
            return (self.seconds if self.pending else 0.0) + since
        return self.seconds + since if self.pending else 0.0


class ReversePipeline:
    direction = TO_SQLITE
    cannot_connect = False  # its last outage a connection not opened (not a statement failing on one)

    def __init__(self, settings: Settings, source: SourceSettings, target: Target | None = None):
        self.settings = settings
        self.source = source
        self.session = SourceSession(settings, source, target)
        self.session.direction = TO_SQLITE
        self.name = source.name
        self.wake = asyncio.Event()
        self.stop_event = asyncio.Event()
        self.ready = asyncio.Event()
        self.lag = ReverseLag()
        self.applied_written = float("-inf")  # when touch_applied last ran (monotonic)
        self.health = STARTING
        self.locked_since: float | None = None  # monotonic: steps have failed on the file's lock since
        self.failing_note = FailingNote()  # FAILING, told to Postgres for `syncd status` (health_note.py)
        self.detail = ""
        self.pg_ok: bool | None = None
        self.step_started: float | None = None
        self.needs_reconcile = True
        self.shape_met = False  # the last read met a table or column gone from Postgres (see _stream_step)
        self.checkpoint: ReverseCheckpoint | None = None
        self.file_checkpoint: str | None = None  # as the file holds it (encoded), which each apply expects
        self.pruned: str | None = None
        self.reload: dict[str, str] = {}
        self.loading: _Reload | None = None
        self.generation: capture.Generation | None = None
        self.retired: str | None = None
        self.lookups_due = 0.0  # retired: when syncd's lookup indexes are (next) dropped
        self.sink = SqliteSink(settings.sqlite.write_busy_timeout_ms)
        # Rows per write transaction into the file, streamed and copied (sqlite/hold.py).
        self.writes = RowsPerHold(settings.stream.batch_size)
        self.reload_writes = RowsPerHold(RELOAD_CHUNK_ROWS)
        self.gone_writes = RowsPerHold(RELOAD_GONE_ROWS)
        self.last_direction_check = 0.0
        self.last_request_check = 0.0
        self.last_full_check = time.monotonic()
        self.listening = False  # NOTIFY from the capture triggers wakes this pipeline
        self.listened_on: int | None = None  # the session delivering them as the last cycle began (pool.py)
        # Set by the daemon's WayBackWatch (fleet.py), which looks at every source of a
        # target database in one query: when it last saw this source's direction (still to
        # SQLite) and its changelog, and whether it found something only this source's own
        # recheck (_maybe_recheck) can judge.
        self.watched_at = float("-inf")
        self.recheck_due = False
        self.fingerprint: str | None = None  # of the source's tables and columns in Postgres, as watched last
        self.seen_fingerprint: str | None = None  # as it was when this pipeline last looked itself
        # Set by the daemon like the forward pipeline's (fleet.py): who polls, who rechecks.
        self.own_poller = True
        self.fleet_rechecks = False
        self.recheck_flags = None
        self.recheck_every = settings.stream.schema_check_interval_seconds
        self.inode: tuple[int, int] | None = None
        self._last_error: str | None = None
        self.events: list[tuple[str | None, str, str | None]] = []
        self.max_seq_seen = 0  # the daemon's status reads these two from either pipeline
        d = TO_SQLITE
        metrics.retries_total.labels(self.name)
        for kind in ("postgres", "sqlite", "data", "schema", "lock", "internal", "verify"):
            metrics.errors_total.labels(self.name, kind, direction=d)
        metrics.apply_duration_seconds.labels(self.name, direction=d)
        metrics.commit_to_apply_seconds.labels(self.name, direction=d)
        metrics.set_lag(self.name, None, direction=d)
        metrics.pending_changes.labels(self.name, direction=d).set(0)

    @property
    def names(self) -> Names:
        """The way back's objects in Postgres, named by the source's key (taken with its lock)."""
        return Names(self.settings.postgres.bookkeeping_schema, self.name, self.session.key)

    # --- control -------------------------------------------------------------------


    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def lag_seconds(self, now: float) -> float:
        """The stream's lag, or a held or paused table's age, whichever is older: such a
        table's changes are not applied until it is copied again (none once the way back
        has ended: nothing follows Postgres any more)."""
        if self.retired is not None:
            return self.lag.lag(now)
        return max([self.lag.lag(now), *(now - t.behind_since for t in list(self.tables.values())
                                          if t.behind_since is not None)])

    def lag_figure(self, now: float) -> float | None:
        """The lag to show, None until known: measured in Postgres at least once (or
        Postgres out of reach, see ReverseLag); 0 before that would say nothing waits."""
        known = self.lag.measured_at is not None or self.lag.unreachable
        return self.lag_seconds(now) if known else None

    @property
    def pending(self) -> int:
        return self.lag.pending

    @property
    def tables(self) -> dict[str, ReverseTable]:
        return self.session.tables  # type: ignore[return-value]

    def wakeup(self) -> None:
        self.wake.set()

    async def poll_once(self) -> None:
        """The daemon's FleetPoller: a cycle when one is due. NOTIFY wakes this pipeline
        for each change made in Postgres; while the session listening for it lives, what
        a cycle looks at besides is watched for every source at once (WayBackWatch), and
        an idle source costs Postgres nothing of its own."""
        if self._cycle_due(time.monotonic()):
            self.wake.set()

    def _quiet(self) -> bool:
        """Nothing under way: every table followed, nothing to copy, log or retry."""
        return (self.health in (STREAMING, RETIRED) and not self.needs_reconcile and self.loading is None
                and not self.reload and not self.events
                and all(t.state == bk.STREAMING for t in list(self.tables.values())))

    def _cycle_due(self, now: float) -> bool:
        if not self.fleet_rechecks or not self._quiet():
            return True
        if self.listened_on is None or self.session.target.listening(self.names.channel) != self.listened_on:
            return True  # no session listens, or a new one: NOTIFYs meanwhile were lost
        if now - self.watched_at > WATCH_STALE_SECONDS:
            return True  # the watch has not seen this source lately (Postgres away, say)
        if self.recheck_due and now - self.last_request_check >= self.settings.stream.held_table_retry_seconds:
            return True
        if self._full_check_due(now):
            return True  # the just-in-case full check: a quiet source's own cycle now and then
        if self.retired is not None:
            return now >= self.lookups_due
        window_end = self._window_end()
        if window_end is not None and dt.datetime.now(dt.timezone.utc) >= window_end:
            return True  # the rollback window is over: the cycle ends the way back
        try:
            return self._file_replaced()
        except (SourceFileError, OSError):
            return True  # the cycle says what

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    def busy_for(self, now: float) -> float:
        started = self.step_started
        return 0.0 if started is None else now - started

    async def run(self) -> None:
        backoff = wait_exponential(multiplier=0.2, max=self.settings.stream.retry_max_backoff_seconds) \
            + wait_random(0, 0.5)

        def wait(retry_state) -> float:
            exc = retry_state.outcome.exception()
            if contended(exc):
                return random.uniform(0.01, 0.1)
            return backoff(retry_state)

        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: not isinstance(e, asyncio.CancelledError)),
            wait=wait, sleep=self._sleep, before_sleep=self._before_retry, reraise=True,
        )
        gauges = asyncio.create_task(self._gauge_loop(), name=f"gauges-{self.name}")
        try:
            while not self.stopping:
                did = await retrying(self._step)
                if not did and not self.stopping:
                    timeout = self.settings.stream.poll_interval_seconds if self.own_poller else None
                    try:
                        await asyncio.wait_for(self.wake.wait(), timeout)
                    except asyncio.TimeoutError:
                        pass
        finally:
            gauges.cancel()
            await asyncio.gather(gauges, return_exceptions=True)
            metrics.replication_lag_seconds.labels(self.name, direction=TO_SQLITE).set(0)
            metrics.pending_changes.labels(self.name, direction=TO_SQLITE).set(0)
            with contextlib.suppress(Exception):
                await self.session.target.unlisten(self.names.channel)
            await self.session.close()

    async def _gauge_loop(self) -> None:
        """Lag keeps its meaning between cycles, and while Postgres is away."""
        while True:
            now = time.time()
            metrics.set_lag(self.name, self.lag_figure(now), direction=TO_SQLITE)
            metrics.last_check_timestamp_seconds.labels(self.name).set(now)
            await asyncio.sleep(self.settings.stream.poll_interval_seconds)

    async def _step(self) -> bool:
        self.step_started = time.monotonic()
        try:
            await self.failing_note.publish(self.health, self.detail, self.session)  # a failure of the last step
            did = await self._cycle()
            await self.failing_note.publish(self.health, self.detail, self.session)  # recovered
            return did
        finally:
            self.step_started = None

    async def _sleep(self, seconds: float) -> None:
        if self.health == SOURCE_MISSING:
            await self.session.let_go_if_gone()
        try:
            await asyncio.wait_for(self.stop_event.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # --- failure handling --------------------------------------------------------------

    def _before_retry(self, retry_state) -> None:
        exc = retry_state.outcome.exception()
        exc = out_of_reach(exc) or exc  # its folder made one syncd may not enter between two looks
        metrics.retries_total.labels(self.name).inc()
        if not contended(exc):
            self.locked_since = None  # a lock met after another failure is counted from then
        if isinstance(exc, SourceLocked):
            self._enter(LOCKED, str(exc), kind="lock", level="error")
        elif isinstance(exc, UnsupportedTarget):
            self._enter(FAILING, str(exc), kind="postgres", level="error")
        elif isinstance(exc, FileMoved):
            self.needs_reconcile = True  # the next step closes the connection and opens the file at the path
        elif isinstance(exc, SourceFileError):
            self._enter(SOURCE_MISSING, f"{exc}; waiting for it to come back", kind="sqlite", level="error")
            metrics.source_up.labels(self.name).set(0)
            self.needs_reconcile = True
        elif cancelled := statement_cancelled(exc, self.settings.dsn_for(self.source),
                                              self.settings.postgres.statement_timeout_seconds):
            self.session.drop_postgres()  # the step starts again on a fresh connection
            self._enter(FAILING, cancelled, kind="postgres", level="warning")
        elif locked := lock_given_up(exc, self.settings.dsn_for(self.source)):
            self.session.drop_postgres()  # the step starts again on a fresh connection
            self._enter(FAILING, locked, kind="postgres", level="warning")
        elif refused := privilege_refused(exc, self.settings.dsn_for(self.source)):
            self._enter(FAILING, f"{refused}; tried again", kind="postgres", level="error")
            self.needs_reconcile = True  # a grant changed with the schema is met afresh
        elif plan_outdated(exc):
            self._enter(FAILING, f"Postgres refused a statement syncd prepared before a table changed there "
                        f"({describe(exc)}); tried again, prepared anew", kind="postgres", level="warning")
            self.needs_reconcile = True  # the table's change is followed
        elif is_transient(exc):
            self.pg_ok = False
            self.cannot_connect = isinstance(exc, CannotConnect)
            self.lag.unreachable = True
            self.session.drop_postgres()
            why = describe(exc)
            if isinstance(exc, TimeoutError) and not str(exc):  # asyncpg's command timeout says nothing
                why = (f"a statement ran over [postgres] statement_timeout_seconds "
                       f"({self.settings.postgres.statement_timeout_seconds:g} s): Postgres is slow or busy, a lock "
                       "holds the table, or the server is gone")
            health, what = outage(exc, self.settings.dsn_for(self.source),
                                  short_of_resource(exc) or f"Postgres unreachable: {why}")
            self._enter(health, f"{what}; retrying with backoff, the application's changes wait in Postgres's changelog",
                        kind="postgres", level="warning")
        elif contended(exc):
            # The application holds the file: try again soon; Postgres's changes wait in its
            # changelog. Held for long while syncd must write into it, it is said.
            self.locked_since, detail = lock_met(self.locked_since, self.source.path, exc,
                                                 "syncd writes Postgres's changes into it as soon as the lock is "
                                                 "gone, they wait in Postgres's changelog meanwhile")
            if detail:
                self._enter(FILE_LOCKED, detail, kind="sqlite", level="warning")
        elif isinstance(exc, CheckpointConflict):
            self._enter(FAILING, str(exc), kind="lock", level="error")
            self.session.drop_postgres()
        else:
            self._enter(FAILING, f"unexpected error: {describe(exc)}", kind="internal", level="error", exc=exc)
            self.needs_reconcile = True
        self.ready.set()

    def _enter(self, health: str, detail: str, kind: str, level: str, exc: BaseException | None = None) -> None:
        metrics.errors_total.labels(self.name, kind, direction=TO_SQLITE).inc()
        if self.health == health:
            self.detail = self._last_error = detail
            return
        self.health, self.detail, self._last_error = health, detail, detail
        log = self.session.error if level == "error" else self.session.warning
        trace = (type(exc), exc, exc.__traceback__) if exc is not None and health == FAILING else None
        log(detail, event=health, exc_info=trace)

    def _recovered(self) -> None:
        what = {POSTGRES_DOWN: "Postgres is reachable again",
                POSTGRES_LOGIN_REFUSED: "Postgres accepts syncd's login again", SOURCE_MISSING: "the SQLite file is back",
                LOCKED: "the source lock is free again", FILE_LOCKED: "the SQLite file is no longer locked",
                FAILING: "the failing step succeeded"}.get(self.health)
        if what:
            self.session.info(f"recovered: {what}", event="recovered")
        self.locked_since = None
        self.pg_ok = True
        self._last_error = None

    # --- one step ------------------------------------------------------------------------

    async def _cycle(self) -> bool:
        if self.stopping:
            return False
        self.wake.clear()
        s = self.session
        if await self._archived():
            # The way back has ended and the file is archived, as it may be then: SQLite is
            # not read any more (what is left, syncd's lookup indexes, is Postgres's), and no
            # file is missing: no source-down alert fires for it.
            await s.worker.close()
            with contextlib.suppress(KeyError):
                metrics.source_up.remove(self.name)
        elif s.worker.conn is None:
            await s.worker.open()
            self.inode = s.worker.inode
            self.needs_reconcile = True
            metrics.source_up.labels(self.name).set(1)
        elif self._file_replaced():
            await s.worker.close()
            self.needs_reconcile = True
            return True
        if await s.connect_postgres(lock=True):
            self.needs_reconcile = True  # the lock was (re)taken: anything may have changed meanwhile
            if self.health in (POSTGRES_DOWN, POSTGRES_LOGIN_REFUSED):
                # Postgres answered, taking the source's lock again (an outage let it go): said
                # now, not only once a step goes through, which a lock on the file may hold up.
                self._recovered()
                self._update_health()
        if not self.listening:
            await s.target.listen(self.names.channel, self._notified)
            self.listening = True
        # Noted before anything is read: a NOTIFY sent before this session listened is
        # one this cycle reads the change of, and one after it is delivered.
        self.listened_on = s.target.listening(self.names.channel)
        # One connection of the target's pool for the whole cycle. The cycle's writes into
        # the file (Postgres's changes, its marks) give up on a lock the application holds
        # after a second, and the next cycle waits for the lock before it borrows one.
        async with s.pipeline_step():
            return await self._cycle_on_connection()

    async def _cycle_on_connection(self) -> bool:
        self.pg_ok = True
        if await self._direction_moved():
            return False
        self._begin_full_check_when_due()
        if self.needs_reconcile:
            await self._reconcile()
            self.needs_reconcile = False
            if self.session.direction != TO_SQLITE:
                return False  # turned around by a rollback while it ran: the daemon replaces this pipeline
        if self.retired is not None or await self._retention_over():
            self._retired_health()
            self.recheck_due = False  # nothing of a retired source's tables is followed any more
            if time.monotonic() >= self.lookups_due:
                from syncd.rollback import drop_lookup_indexes

                gone = await drop_lookup_indexes(self.session.pg, self.settings, self.source)
                again = min(LOOKUP_DROP_RETRY_SECONDS, self.settings.stream.schema_check_interval_seconds)
                self.lookups_due = float("inf") if gone else time.monotonic() + again
            return False
        did = await self._stream_step()
        if not self.needs_reconcile:
            did = await self._reload_step() or did
        await self._measure()
        await self._flush_events()
        await self._maybe_recheck()
        self._recovered()
        self._update_health()
        self._update_gauges()
        return did

    def _notified(self, *_args) -> None:
        self.wake.set()

    async def _archived(self) -> bool:
        """The file is gone from its path after the way back ended (known here, or, for a
        daemon started since, recorded in Postgres): archived, not missing."""
        if os.path.exists(self.source.path):  # in a folder syncd may not enter: out of reach, not here
            return False
        if self.retired is None:
            try:
                async with self.session.target.connection() as conn:  # its key may not be taken yet
                    names = await capture.names_of(conn, self.settings.postgres.bookkeeping_schema, self.name)
                    gen = await capture.generation(conn, names)
            except Exception:  # noqa: BLE001 - Postgres away or not set up: the cycle says what
                return False
            if gen is None or gen.retired_at is None:
                return False
            self.generation = gen
            self.retired = gen.retired_reason or "the rollback window is over"
        return True

    def _file_replaced(self) -> bool:
        try:
            st = os.stat(self.source.path)
        except FileNotFoundError:
            raise SourceFileError(f"SQLite file {self.source.path} does not exist") from None
        except OSError as e:  # a folder syncd may not enter: the file is out of reach, Postgres is not at fault
            raise SourceFileError(f"SQLite file {self.source.path} cannot be reached: {e.strerror}") from None
        return (st.st_dev, st.st_ino) != self.inode

    async def _refreeze(self, message: str) -> bool:
        """Freeze the file again, found unfrozen while the application writes Postgres, only
        while the source's row still says so, that row held until the freeze is made: a
        rollback turning the source around meanwhile waits for it and unfreezes the file
        after this; one that turned it first is seen here, and the file is left as the
        rollback left it (False: the daemon replaces this pipeline)."""
        s = self.session
        assert s.pg is not None
        async with s.pg.transaction():
            d = await s.pg.fetchval(f"SELECT direction FROM {s.bk.s}.sources WHERE source = $1 FOR SHARE", s.name)
            if d is not None and d != TO_SQLITE:
                s.direction = d
                return False
            await s.worker.run(freeze.freeze, message, self.settings.sqlite.write_busy_timeout_ms,
                               self.source.wants_table)
        s.warning("the SQLite file was not frozen although the application writes Postgres: frozen again. "
                  "Writes made to it meanwhile are not in Postgres and stay in the file (a row is overwritten only "
                  "when Postgres changes it): `syncd verify` names them, `syncd verify --repair` brings the file back "
                  "to Postgres's rows", event="refrozen")
        return True

    async def _direction_moved(self) -> bool:
        """A rollback turned the source around: stop applying; the daemon replaces this
        pipeline with the forward one."""
        flags, self.recheck_flags = self.recheck_flags, None
        if flags is not None and flags.direction != self.session.direction:
            self.session.direction = flags.direction  # FleetRechecker saw it for every source at once
        now = time.monotonic()
        if now - max(self.last_direction_check, self.watched_at) < DIRECTION_CHECK_SECONDS:
            return self.session.direction != TO_SQLITE
        self.last_direction_check = now
        s = self.session
        d = await s.pg.fetchval(f"SELECT direction FROM {s.bk.s}.sources WHERE source = $1", s.name)
        if d is not None:
            s.direction = d
        return s.direction != TO_SQLITE

    async def _drop_cutover_guard(self, pg: asyncpg.Connection, guarded: list[str]) -> None:
        """The guard a cutover left on the tables (killed after its last transaction, or a
        table busy when it dropped them): it passes every write now, its record done; it goes."""
        key = self.names.key
        if not guarded:
            return
        left = await cutover_guard.unguard(pg, self.names.bk, self.source.name, key, self.source.schema)
        later = f" ({left} left for later: table busy)" if left else ""
        self.session.info(f"dropped the cutover's guard triggers{later}", event="cutover_guard_dropped")

    # --- reconcile: which tables, how, and from where ----------------------------------

    async def _read_catalog(self) -> _Catalog:
        pg = self.session.pg
        assert pg is not None
        schema, names = self.source.schema, self.names
        async with pg.transaction(isolation="repeatable_read", readonly=True):
            guarded = await cutover_guard.guarded_tables(pg, names.bk, names.key, schema)
            files = await capture.table_files(pg, schema)
            registry = await capture.registry_ready(pg, names)
            gen = await capture.generation(pg, names, exists=True) if registry else None
            base = await ddl.read_tables(pg, schema)
            pg_tables = await tables.read_pg_tables(pg, schema, base)
            rows, owners = await self.session.bk.load_tables(pg), await self.session.bk.owners(pg, schema)
            formats = await tables.read_formats(pg, names.bk, self.name)
            triggers, marks = await capture.capture_triggers(pg, schema)
            return _Catalog(guarded, files, registry, gen, base, pg_tables, rows, owners, formats, triggers, marks,
                            await capture.capture_bodies(pg, names))

    async def _reconcile(self) -> None:
        s = self.session
        pg = s.pg
        assert pg is not None
        # Postgres's schema as this reconcile begins, before it reads the tables: what the
        # application makes from now on differs from it at the next look, and is taken up then.
        # Everything else the reconcile asks Postgres is read with it, and read again only
        # once it added columns or tables (what it writes besides, the guard dropped, the
        # capture started or armed, is not read again after it).
        seen = await self._read_catalog()
        await self._drop_cutover_guard(pg, seen.guarded)
        busy = self.settings.sqlite.write_busy_timeout_ms
        self._pg_shape = self._shape(seen.files)
        gen = seen.generation
        if not seen.registry:
            await capture.ensure_registry(pg, self.names)
            gen = await capture.generation(pg, self.names)
        # No record of capture starting with the cutover: what changed since is unknown,
        # so every table is copied again from Postgres. Capture starts in Postgres only
        # once SQLite has noted those copies (below): a step that cannot write into the
        # file (its application holds the lock) then leaves no record, and the next
        # finds none again, instead of finding capture started and owing no copy.
        copy_all = gen is None
        if gen is not None:
            self.generation = gen
            if gen.retired_at is not None:
                self.retired = gen.retired_reason or "the rollback window is over"
                return

        message = await s.worker.run(freeze.frozen)
        if message is None:
            message = FROZEN_MESSAGE.format(schema=self.source.schema)
            if not await self._refreeze(message):
                return

        schema, pg_tables, rows, decisions = await self._judge_all(seen)
        ddl_done = False
        for name, d in decisions.items():
            if d.kind == tables.ADD_COLUMNS:
                await s.worker.run(tables.add_columns, name, d.add, busy)
                added = ", ".join(f'"{c.name}" ({c.type_name})' for c in d.add)
                s.info(f"column(s) added in Postgres, added in SQLite too: {added}; copying their values",
                       table=name, event="column_added")
                self.events.append((name, "column_added", f"added in SQLite: {added}"))
                ddl_done = True
            elif d.kind == tables.CREATE:
                if not await tables.adopt(s.pg, s.bk, self.source.schema, name):
                    continue  # another source adopted it first (a shared schema): it is that one's
                await s.worker.run(tables.create_table, pg_tables[name], busy)
                s.info("table created in Postgres after the cutover: created in SQLite too, copying its rows",
                       table=name, event="table_created")
                self.events.append((name, "table_created", "created in SQLite"))
                ddl_done = True
        if ddl_done:
            # the new tables refuse the application too
            await s.worker.run(freeze.freeze, message, busy, self.source.wants_table)
            seen = await self._read_catalog()
            schema, pg_tables, rows, decisions = await self._judge_all(seen)
        if copy_all:
            # The copies and the new capture's position go into the file in one write,
            # before capture starts in Postgres under that position's generation: a step
            # ending between the two (a crash, a reply lost) leaves either no record in
            # Postgres (the next step starts again) or a file at the capture's start,
            # never a file the next full check takes for an older copy put back.
            gen_id = capture.new_generation()
            file_checkpoint = await s.worker.run(applier.read_meta, META_KEY)
            await s.worker.run(run_on(self.sink, "apply"), ApplyPlan(
                [], checkpoint=start(gen_id).encode(), expect=file_checkpoint,
                reload_add={n: "copied again: capture started late" for n in schema.tables}))
            async with pg.transaction():
                await capture.start_generation(pg, self.names, self.source.schema, gen_id)
            s.warning("no record of Postgres capture for the way back (cut over by an older syncd?): capture "
                      "installed now, and every table is copied again from Postgres", event="reverse_reset")
            gen = await capture.generation(pg, self.names)
            assert gen is not None
            self.generation = gen
        assert gen is not None
        await self._renumbered(schema)
        self.file_checkpoint = await s.worker.run(applier.read_meta, META_KEY)
        cp = ReverseCheckpoint.decode(self.file_checkpoint)
        if older(cp, gen):
            # Postgres let go of changes this file has not taken, or the file holds no
            # position of this cutover, which writes one into it: it is an older copy (a
            # backup put back, a file from before the cutover, lacking what the
            # application wrote into SQLite after it). Only a copy of each table brings
            # what it lacks. The copies are asked for with the position counted on
            # from Postgres's, together: a daemon started again before they end does
            # not take the file for older again.
            why = ("the SQLite file holds less than the way back had written into it (an older copy put back "
                   "in its place?)")
            # Its count goes on from Postgres's in a lineage of its own, recorded first: the
            # copy it replaced, put back in its turn, is older too, however far it counted.
            cp = start(gen.id, gen.pruned_n, await capture.new_lineage(pg, self.names))
            await s.worker.run(run_on(self.sink, "apply"), ApplyPlan(
                [], checkpoint=cp.encode(), expect=self.file_checkpoint,
                reload_add={n: f"{why}: copied again" for n in schema.tables}))
            self.file_checkpoint = cp.encode()
            s.warning(f"{why}: every table is copied again from Postgres", event="reverse_file_older")
        self.checkpoint = cp
        self.reload = await s.worker.run(applier.read_reload)
        formats = seen.formats
        runtimes: dict[str, ReverseTable] = {}
        made: dict[str, str] = {}
        for name, d in sorted(decisions.items()):
            if d.kind == tables.FORGET:
                # The file first: a write that gives up on the application's lock leaves the
                # table's row, and the next reconcile forgets it again (its mark with it).
                if name in self.reload:  # a copy it waited for (paused, then dropped in SQLite too)
                    self.reload = await s.worker.run(run_on(self.sink, "mark"), {}, [name])
                await pg.execute(f"DELETE FROM {s.bk.s}.tables WHERE source = $1 AND table_name = $2", s.name, name)
                s.info("table gone from Postgres (dropped, renamed, or now a partition) and not in SQLite (never "
                       "there, or dropped there too): no longer followed", table=name, event="table_forgotten")
                self.events.append((name, "table_forgotten", "gone from Postgres, not in SQLite"))
                continue
            spec = schema.tables.get(name)
            tid = s.capture.tid_of(name) if (s.capture and spec is not None) else None
            row = rows.get(name) or new_row(name, tid)
            row = changed(row, tid=tid) if tid is not None else row
            if d.kind == tables.PAUSE:
                if row.state != bk.PAUSED and (spec is not None or d.reason == tables.LEFT_OUT):
                    # Its changes are not applied while it waits: copied in full when it resumes.
                    await s.worker.run(run_on(self.sink, "mark"), {name: "resumed after a pause"}, [])
                new = changed(row, state=bk.PAUSED, reason=d.reason, resume_to=None, from_seq=None)
                runtimes[name] = ReverseTable(name, tid, spec, new)
            else:
                assert spec is not None and tid is not None
                pgt = pg_tables[name]
                mark = await self._arm(name, tid, list(spec.key), seen)
                if mark is not None:
                    made[name] = mark
                samples = {}
                for c in spec.columns:
                    pgc = pgt.column(c.name)
                    fam = tables.values.family(pgc.type_name) if pgc else None
                    if fam in tables.SPELLED and (name, c.name) not in formats:
                        samples[c.name] = await s.worker.run(tables.sample_values, spec, c.name)
                shapes = tables.shapes_for(spec, pgt, {c: f for (t, c), f in formats.items() if t == name}, samples)
                key_types = tuple(pgt.column(k).type_name for k in spec.key)
                if row.state in (bk.PAUSED,):
                    s.info("table matches again: resuming (copying it again from Postgres)", table=name,
                           event="table_resumed")
                    self.reload = await s.worker.run(applier.read_reload)
                state = bk.HELD if (row.state == bk.HELD and name in self.reload) else \
                    (bk.LOADING if name in self.reload else bk.STREAMING)
                new = changed(row, state=state, reason=row.reason if state == bk.HELD else None,
                              resume_to=None, from_seq=None)
                runtimes[name] = ReverseTable(name, tid, spec, new, shapes, key_types)
            old = s.tables.get(name)
            if old is not None:
                runtimes[name].retry_at, runtimes[name].logged_reason = old.retry_at, old.logged_reason
                runtimes[name].held_key = old.held_key
            runtimes[name].behind(new, old)
            if new.state == bk.PAUSED and runtimes[name].behind_since is None and tid is not None:
                # Its changes the checkpoint has not passed yet are the oldest it will miss
                # (the later ones are noted as the stream passes them: _stream_step).
                age = await reader.oldest_uncovered(pg, self.names, self.checkpoint, tid)
                runtimes[name].behind_since = None if age is None else time.time() - age
            new = runtimes[name].row = runtimes[name].behind_row(new)
            if rows.get(name) != new:
                await s.bk.save_table(pg, new)
                runtimes[name].row = (await s.bk.load_tables(pg))[name]
            self._log_state(runtimes[name])
        await self._note_triggers(seen, made)
        s.tables = runtimes  # type: ignore[assignment]
        if self.loading is not None and self.loading.name not in self.reload:
            self.loading = None
        for t in runtimes.values():
            for op in ("insert", "update", "delete"):
                metrics.changes_applied_total.labels(self.name, t.name, op, direction=TO_SQLITE)

    async def _renumbered(self, schema) -> None:
        """Keyless tables whose rowids a VACUUM of the frozen file may have renumbered (the
        file's schema moved without syncd: capture.note_schema marked them, durably): the
        rowid no longer reaches the row Postgres keeps under that `_syncd_rowid`, so each
        is copied again from Postgres before another change of it is applied. The forward
        marks are cleared once the copy is noted in the file (a crash in between copies
        it twice, never zero times)."""
        s = self.session
        state = s.capture
        marked = {n: "copied again: SQLite's rowids, which this table without a key is kept by, may have been "
                     "renumbered (a VACUUM of the file, or a schema change syncd did not make)"
                  for n, why in (state.rearmed.items() if state is not None else ())
                  if why == ROWIDS_MOVED_REASON and n in schema.tables and schema.tables[n].rowid_keyed}
        if not marked:
            return
        for name, why in sorted(marked.items()):
            s.info(why, table=name, event="table_reloading")
        await s.worker.run(run_on(self.sink, "mark"), marked, [])
        await s.worker.run(clear_rearmed, sorted(marked), self.settings.sqlite.write_busy_timeout_ms)
        for name in marked:
            state.rearmed.pop(name, None)
        self._start_over(marked)

    async def _judge_all(self, seen: _Catalog):
        s = self.session
        result = await install_capture(s, ddl.kept_types(seen.base))  # keeps forward capture in line too
        schema = result.schema
        pg_tables, rows, owners = seen.pg_tables, seen.rows, seen.owners
        decisions: dict[str, tables.Decision] = {}
        typed: dict[str, set[str]] = {}
        for table, column in seen.formats:
            typed.setdefault(table, set()).add(column)
        candidates = set(schema.tables) | {n for n, r in rows.items() if r.state != bk.REFUSED}
        # Tables the application created in Postgres after the cutover (no source's replica).
        candidates |= {n for n in pg_tables if tables.made_by_the_application(n, self.source, owners)}
        for name in candidates:
            if name in schema.refused or (name in schema.left_out and self.source.wants_table(name)):
                continue  # a view, virtual or shadow table; one the configuration leaves out is paused below
            if owners.get(name) not in (None, s.name):
                continue  # another source's replica in a shared schema
            if name in rows and name not in schema.tables and not self.source.wants_table(name):
                decisions[name] = tables.Decision(tables.PAUSE, tables.LEFT_OUT)
                continue
            d = tables.judge(schema.tables.get(name), pg_tables.get(name), known=name in rows,
                             typed=frozenset(typed.get(name, ())))
            if d.kind != tables.IGNORE:
                decisions[name] = d
        # Tables syncd made in Postgres before this stretch of the way back began (SQLite's
        # own, replicated before the cutover): no rename in Postgres made one of them.
        dropped = any(d.kind == tables.PAUSE and d.reason == tables.DROPPED for d in decisions.values())
        made = frozenset() if self.generation is None or not dropped else frozenset(r[0] for r in await s.pg.fetch(
            f"SELECT table_name FROM {s.bk.s}.{bk.OWNED_TABLES} WHERE schema_name = $1 AND source = $2 "
            "AND created_at < $3", self.source.schema, s.name, self.generation.started_at))
        tables.renamed(decisions, schema.tables, pg_tables, made)
        tables.name_clashes(decisions, schema.tables, pg_tables, await s.worker.run(tables.sqlite_names))
        return schema, pg_tables, rows, decisions

    async def _arm(self, name: str, tid: int, key: list[str], seen: _Catalog) -> str | None:
        """The table's capture, put back if it was off; the mark of its triggers if they
        were created again (capture.capture_triggers)."""
        s = self.session
        off = not capture.armed(seen.triggers.get(name, {}), self.names, tid)
        noted = self.generation.triggers if self.generation is not None else None
        # Armed now, but not as last seen: turned off and on again in between (DISABLE
        # TRIGGER ... ENABLE TRIGGER around a bulk load, say), or dropped and made again.
        moved = not off and noted is not None and name in noted and noted[name] != seen.marks.get(name)
        copying = self.loading is not None and self.loading.name == name
        followed = name in seen.rows and (name not in self.reload or copying)
        if (off or moved) and followed:
            # Marked in SQLite before the triggers are put back (and not while their
            # transaction holds the application's table): a mark that fails leaves them
            # as they were, for the next full check to find so again.
            await self._capture_was_off(name)
        if not off and capture.current(seen.bodies, self.names, tid, key):
            return None
        async with s.pg.transaction():
            put_back = await capture.arm(s.pg, self.names, self.source.schema, name, tid, key)
            # The triggers just made, read before anyone else can touch them.
            mark = (await capture.trigger_marks(s.pg, self.source.schema, name)).get(name) if put_back else None
        if put_back and followed and not off and not moved:
            await self._capture_was_off(name)  # dropped after the catalog was read
        return mark

    async def _note_triggers(self, seen: _Catalog, made: dict[str, str]) -> None:
        """The capture triggers' marks as this reconcile saw them, and as it made those it
        created again (`made`), for the next full check to tell a trigger turned off and
        on again; written only when they moved. Not read again: a table turned off and on
        again meanwhile would be noted as it is, its changes lost."""
        s = self.session
        marks = {**seen.marks, **made}
        noted = self.generation.triggers if self.generation is not None else None
        if marks != noted:
            await capture.note_triggers(s.pg, self.names, marks)
            if self.generation is not None:
                self.generation.triggers = marks

    async def _capture_was_off(self, name: str) -> None:
        """A capture trigger of a table already followed was gone or did not fire (dropped
        or disabled outside syncd): what the application changed meanwhile was never
        recorded, so the table is copied again, from its first row if a copy was under way."""
        s = self.session
        self.reload = await s.worker.run(run_on(self.sink, "mark"), {name: CAPTURE_PUT_BACK}, [])
        self._start_over({name: CAPTURE_PUT_BACK})
        s.warning("a capture trigger in Postgres was dropped or disabled outside syncd (or turned off and on again): "
                  "put back, and the table is copied again from Postgres (the changes made meanwhile were not "
                  "recorded)", table=name, event="capture_rearmed")
        self.events.append((name, "capture_rearmed", CAPTURE_PUT_BACK))

    def _log_state(self, t: ReverseTable) -> None:
        if t.state in (bk.PAUSED, bk.HELD) and t.logged_reason != t.row.reason:
            t.logged_reason = t.row.reason
            metrics.errors_total.labels(self.name, "schema" if t.state == bk.PAUSED else "data",
                                        direction=TO_SQLITE).inc()
            self.session.warning(f"table {t.state} on the way back: {t.row.reason}", table=t.name,
                                 event=f"table_{t.state}")
            self.events.append((t.name, t.state, t.row.reason))
        elif t.state == bk.STREAMING:
            t.logged_reason = None

    # --- the stream ------------------------------------------------------------------------

    def _followed(self, include_loading: bool = True) -> dict[int, SourceTable]:
        ok = (bk.STREAMING, bk.LOADING) if include_loading else (bk.STREAMING,)
        return {t.tid: t.source_table() for t in self.tables.values()
                if t.state in ok and t.tid is not None and t.spec is not None}

    async def _stream_step(self) -> bool:
        s = self.session
        assert self.checkpoint is not None
        followed = self._followed()
        limit = self.writes.rows
        try:
            batch = await reader.read_batch(s.pg, self.names, self.source.schema, followed, self.checkpoint, limit)
        except asyncpg.PostgresError as e:
            if not is_shape_error(e) or self.shape_met:
                raise
            # A column or table the application renamed or dropped in Postgres since its
            # catalog was read (a migration, then a write): read again, the table is judged
            # (paused, saying what to do). Met again right after, it is a failure.
            self.shape_met = self.needs_reconcile = True
            return True
        self.shape_met = False
        if batch.empty and batch.before.target is None:
            if self.pruned != batch.before.done:
                # Applied before a restart, not pruned: the daemon's watch would take
                # them for changes waiting.
                await reader.prune(s.pg, self.names, batch.before.done, batch.before.n)
                self.pruned = batch.before.done
            return False  # nothing new: the checkpoint need not be written
        by_tid = {t.tid: t for t in self.tables.values() if t.tid is not None}
        for tid, at in batch.first_at.items():
            t = by_tid.get(tid)
            if t is not None and t.state == bk.PAUSED and t.behind_since is None:
                # Its first change missed since the pause: its age is the table's from now on.
                # Saved before the checkpoint passes it, as nothing else will remember it.
                t.behind_since = at - batch.clock_offset
                t.row = t.behind_row(t.row)
                await s.bk.save_table(s.pg, t.row)
        plan = ApplyPlan([], checkpoint=batch.after.encode(), expect=self.file_checkpoint,
                         schema_version=s.schema_version)
        for tid, tb in batch.tables.items():
            t = by_tid[tid]
            if tb.truncated:
                plan.reload_add[t.name] = f"{tb.copy_reason}: copied again"
                continue
            plan.tables.append(TableApply(tid, t.spec, t.shapes, tb.rows, tb.deletes))
        started = time.monotonic()
        try:
            outcome = await self._apply(plan)
        except SchemaMoved:
            self.needs_reconcile = True
            return True
        self.checkpoint = batch.after
        self.file_checkpoint = plan.checkpoint
        elapsed = time.monotonic() - started
        self.writes.held(elapsed, limit)
        # One of many back to back while Postgres's changes wait: the application's writers
        # waiting in their busy handler go first (SQLite keeps no queue: one looking again
        # every 100 ms missed the gap until the next batch). One look's worth of time at
        # most, not the batch's own (as between a table's copies): a backlog of 400k changes
        # pays about 8 s for it, where pauses as long as the batches doubled the drain. And
        # no more than twice the batch's own time: small batches (a small batch_size, a
        # quiet stream) paid 0.1 s each, which capped the way back at batch_size changes
        # per 0.1 s, below a busy application's writes. A writer looking at any moment
        # still finds the file free at least two times in three.
        await asyncio.sleep(min(BUSY_POLL_SECONDS, 2 * elapsed))
        if not batch.empty and time.monotonic() - self.applied_written >= APPLIED_AT_EVERY:
            await s.bk.touch_applied(s.pg)  # the source's last apply, as status and the report show it
            self.applied_written = time.monotonic()
        self.session.applied_at = time.time()
        self.reload.update(plan.reload_add)
        self._start_over(plan.reload_add)
        await self._held(outcome, {tid: at - batch.clock_offset for tid, at in batch.first_at.items()})
        self._count(batch, outcome, elapsed)
        if batch.after.done != self.pruned and batch.after.target is None:
            await reader.prune(s.pg, self.names, batch.after.done, batch.after.n)
            self.pruned = batch.after.done
        return True

    async def _apply(self, plan: ApplyPlan) -> ApplyOutcome:
        """Apply, fetching rows that stand in a unique value's way from Postgres (a value
        moved between rows there); a table still blocked after a few rounds is held."""
        s = self.session
        by_tid = {t.tid: t for t in self.tables.values() if t.tid is not None}
        held: dict[int, str] = {}
        for _round in range(COLLISION_ROUNDS):
            try:
                out = await s.worker.run(run_on(self.sink, "apply"), plan)
                out.held.update(held)
                s.schema_version = out.schema_version
                return out
            except NeedKeys as nk:
                t = by_tid[nk.tid]
                ta = next(x for x in plan.tables if x.tid == nk.tid)
                keys = []
                for raw in nk.keys:
                    try:
                        keys.append(tuple(converter(sh.family)(v) for sh, v in
                                          zip((t.shapes[i] for i in t.spec.key_indexes), raw)))
                    except (ValueMismatch, ValueError):
                        ta.raw_deletes.append(raw)  # no Postgres key can be this one
                if keys:
                    rows, missing = await reader.read_keys(s.pg, self.source.schema, t.source_table(), keys)
                    ta.rows.extend(rows)
                    ta.deletes.extend(missing)
                last = nk
        why = (f'table "{by_tid[last.tid].name}": rows keep standing in the way of a unique value after '
               f"{COLLISION_ROUNDS} rounds ({last.why}); Postgres holds rows a unique index of SQLite forbids")
        plan.tables = [x for x in plan.tables if x.tid != last.tid]
        plan.reload_add[by_tid[last.tid].name] = why
        out = await s.worker.run(run_on(self.sink, "apply"), plan)
        out.held[last.tid] = why
        s.schema_version = out.schema_version
        return out

    async def _held(self, outcome: ApplyOutcome, first_at: dict[int, float] | None = None) -> None:
        """`first_at`: when the oldest of each table's changes in the batch was written (this
        host's clock): a held table's changes there are not applied, it is that far behind."""
        s = self.session
        by_tid = {t.tid: t for t in self.tables.values() if t.tid is not None}
        for tid, reason in outcome.held.items():
            t = by_tid[tid]
            self.reload[t.name] = reason
            t.behind_since = t.behind_since or min(time.time(), (first_at or {}).get(tid, time.time()))
            t.row = t.behind_row(changed(t.row, state=bk.HELD, reason=reason))
            t.retry_at = time.monotonic() + self.settings.stream.held_table_retry_seconds
            key = outcome.held_keys.get(tid)
            t.held_key = key if key is not None and not any(isinstance(k, OutOfRange) for k in key) else None
            await s.bk.save_table(s.pg, t.row)
            self._log_state(t)
            if self.loading is not None and self.loading.name == t.name:
                self.loading = None

    def _count(self, batch: reader.ReverseBatch, outcome: ApplyOutcome, elapsed: float) -> None:
        d = TO_SQLITE
        metrics.apply_duration_seconds.labels(self.name, direction=d).observe(elapsed)
        metrics.last_applied_timestamp_seconds.labels(self.name, direction=d).set(time.time())
        by_tid = {t.tid: t for t in self.tables.values()}
        for tid, tb in batch.tables.items():
            if tid in outcome.held or tb.truncated:
                continue
            for op, n in tb.ops.items():
                metrics.count_applied(self.name, by_tid[tid].name, op, n, direction=d)
        if batch.oldest_at is not None:
            seen = time.time() + batch.clock_offset
            metrics.commit_to_apply_seconds.labels(self.name, direction=d).observe(max(0.0, seen - batch.oldest_at))

    # --- copying a table again ---------------------------------------------------------------

    async def _reload_step(self) -> bool:
        s = self.session
        if self.loading is None:
            now = time.monotonic()
            pick = None
            for t in list(self.tables.values()):
                if (t.name in self.reload and t.spec is not None and t.state in (bk.LOADING, bk.STREAMING, bk.HELD)
                        and now >= t.retry_at):
                    if t.state == bk.HELD and await self._still_unfit(t):
                        t.retry_at = now + self.settings.stream.held_table_retry_seconds
                        continue
                    pick = t
                    break
            if pick is None:
                return False
            await self._note_file(pick.name)
            self.loading = _Reload(pick.name)
            # No total: the one there is an earlier copy's (Postgres's rows are not counted).
            pick.row = changed(pick.row, state=bk.LOADING, snapshot_rows=0, snapshot_total=None, snapshot_key=None,
                               snapshot_started_at=dt.datetime.now(dt.timezone.utc),
                               reason=pick.row.reason if pick.state == bk.HELD else None)
            await s.bk.save_table(s.pg, pick.row)
            s.info(f"copying the table again from Postgres: {self.reload[pick.name]}", table=pick.name,
                   event="reload_started")
        load = self.loading
        t = self.tables.get(load.name)
        if t is None or t.spec is None or t.state not in (bk.LOADING, bk.STREAMING, bk.HELD):
            self.loading = None
            return False
        st = t.source_table()
        writes = self.reload_writes if load.gone is None else self.gone_writes
        size = writes.rows
        take = 0
        if load.gone is None:
            chunk, read_all = await reader.read_chunk(s.pg, self.source.schema, st, load.after, size)
            kshapes = [t.shapes[i] for i in t.spec.key_indexes]
            for r in chunk:
                load.keep.add(applier.reload_key_token(kshapes, tuple(r[i] for i in t.spec.key_indexes), pg=True))
            ta = TableApply(t.tid, t.spec, t.shapes, chunk)
            if read_all:
                load.gone = await s.worker.run(applier.keys_not_in, t.spec, t.shapes, load.keep)
                load.keep = set()
        else:
            chunk, ta = [], TableApply(t.tid, t.spec, t.shapes)
            take = min(size, len(load.gone))
            await self._gone_rows(t, ta, load.gone[:take])
        last = load.gone is not None and len(load.gone) == take
        plan = ApplyPlan([ta], schema_version=s.schema_version)
        if last:
            plan.reload_done = [t.name]
        try:
            started = time.monotonic()
            outcome = await self._apply(plan)
            held = time.monotonic() - started
            writes.held(held, size)
        except SchemaMoved:
            self.needs_reconcile = True
            self.loading = None
            return True
        await asyncio.sleep(step_aside(held))
        if t.tid in outcome.held:
            await self._held(outcome)
            return True
        load.rows += len(chunk)
        if chunk:
            load.after = tuple(chunk[-1][i] for i in t.spec.key_indexes)
        if take:
            del load.gone[:take]
        if last:
            self.reload.pop(t.name, None)
            self.loading = None
            t.behind_since = None
            t.row = changed(t.row, state=bk.STREAMING, reason=None, snapshot_rows=load.rows, behind_since=None,
                            snapshot_total=load.rows, snapshot_finished_at=await bk.postgres_clock(s.pg))
            await s.bk.save_table(s.pg, t.row)
            s.info(f"table copied again from Postgres: {load.rows} row(s); following it", table=t.name,
                   event="reload_done")
            if t.logged_reason is not None:
                self.events.append((t.name, "resumed", None))
            t.logged_reason = None
        else:
            t.row = changed(t.row, snapshot_rows=load.rows)
        metrics.snapshot_rows_loaded.labels(self.name, t.name).set(load.rows)
        return True

    def _start_over(self, marked: dict[str, str]) -> None:
        """A table marked to be copied again while its copy is under way (emptied or
        rewritten in Postgres meanwhile, which no row change brings): the rows already
        copied hold what Postgres no longer has, so the copy starts from its first row."""
        if self.loading is not None and self.loading.name in marked:
            self.session.info(f"copying the table again from its start: {marked[self.loading.name]}",
                              table=self.loading.name, event="reload_restarted")
            self.loading = None

    async def _still_unfit(self, t: ReverseTable) -> bool:
        """A table held for one row's value stays held while that row's value still does
        not fit SQLite: one row read, not the whole table copied again every retry (a
        large table in the application's Postgres would be read end to end every few
        seconds until someone fixed the value)."""
        if t.held_key is None:
            return False
        rows, _ = await reader.read_keys(self.session.pg, self.source.schema, t.source_table(), [t.held_key])
        if not rows:
            return False  # the row is gone: copy the table again
        for c, shape, v in zip(t.spec.columns, t.shapes, rows[0]):
            if c.generated:
                continue
            try:
                to_sqlite(shape, v)
            except NotExpressible:
                return True
        t.held_key = None
        return False

    async def _gone_rows(self, t: ReverseTable, ta: TableApply, stale: list[tuple]) -> None:
        """Stored SQLite keys Postgres did not have when its rows were copied, into `ta`:
        Postgres is asked about each now (rows it gained since their range was read came
        through the stream and stay); the rest are deleted."""
        s = self.session
        keys = []
        kshapes = [t.shapes[i] for i in t.spec.key_indexes]
        for raw in stale:
            if any(map(not_utf8, raw)):  # text that is not UTF-8: no Postgres key is such text
                ta.raw_deletes.append(raw)
                continue
            try:
                keys.append(tuple(converter(sh.family)(v) for sh, v in zip(kshapes, raw)))
            except (ValueMismatch, ValueError):
                ta.raw_deletes.append(raw)
        for i in range(0, len(keys), RELOAD_CHUNK_ROWS):
            rows, missing = await reader.read_keys(s.pg, self.source.schema, t.source_table(),
                                                   keys[i:i + RELOAD_CHUNK_ROWS])
            ta.rows.extend(rows)
            ta.deletes.extend(missing)

    # --- measuring, housekeeping -----------------------------------------------------------------

    async def _measure(self) -> None:
        if self.checkpoint is None:
            return
        count, age = await reader.pending(self.session.pg, self.names, self.checkpoint)
        self.lag.set(count, age, time.time())
        self.max_seq_seen = count

    async def _flush_events(self) -> None:
        while self.events:
            table, kind, detail = self.events[0]
            await self.session.bk.event(self.session.pg, kind, table, detail)
            self.events.pop(0)

    def _full_check_due(self, now: float) -> bool:
        return now - self.last_full_check >= self.recheck_every

    def _begin_full_check_when_due(self) -> None:
        """The just-in-case full check falls due: a reconcile, and a recheck after it, in
        this cycle (not a cycle of its own, which would read the changelog and the lag
        again)."""
        now = time.monotonic()
        if self._full_check_due(now):
            self.last_full_check = now
            self.needs_reconcile = True
            self.recheck_due = True

    async def _maybe_recheck(self) -> None:
        now = time.monotonic()
        if now - self.last_request_check < self.settings.stream.held_table_retry_seconds:
            return
        if self.fleet_rechecks and not self.recheck_due and self._quiet():
            return  # the daemon's WayBackWatch found nothing for this source to look at
        self.recheck_due = False
        self.seen_fingerprint = self.fingerprint  # taken before what is read below: a change after it is seen again
        self.last_request_check = now
        try:
            abandoned, files, noted = await self._recheck_reads()
            if abandoned:
                await self._undo_abandoned_rollback()
                _, files, noted = await self._recheck_reads()  # as the undo left them
            await self._reload_rewritten(files, noted)
        except BaseException:
            # Not done (the application's lock on the file, Postgres away): the next
            # recheck looks again, though the watch sees nothing new to flag.
            self.recheck_due = True
            raise
        if self._schema_moved_in_postgres(files):
            self.needs_reconcile = True
        if any(t.state == bk.PAUSED for t in self.tables.values()):
            self.needs_reconcile = True
        if self.needs_reconcile:
            self.wake.set()

    async def _recheck_reads(self) -> tuple[bool, dict[str, list], dict[str, list] | None]:
        """What a recheck asks Postgres, in one read-only snapshot: whether a rollback was
        left open or its freeze left on (_undo_abandoned_rollback), and the tables' files
        now and as noted (_reload_rewritten)."""
        s = self.session
        async with s.pg.transaction(isolation="repeatable_read", readonly=True):
            abandoned = await self._rollback_abandoned()
            return (abandoned, await capture.table_files(s.pg, self.source.schema),
                    await capture.noted_files(s.pg, self.names))

    def _schema_moved_in_postgres(self, files: dict[str, list]) -> bool:
        """Tables or columns of the target schema changed (the application's DDL in
        Postgres), as capture.table_files reads them: names and types, in column order."""
        shape = self._shape(files)
        moved = getattr(self, "_pg_shape", None) not in (None, shape)
        self._pg_shape = shape
        return moved

    @staticmethod
    def _shape(files: dict[str, list]) -> dict[str, list]:
        return {name: list(types.items()) for name, (_file, types) in files.items()}

    async def _reload_rewritten(self, now: dict[str, list], before: dict[str, list] | None) -> None:
        """Copy again a table Postgres rewrote without a row trigger firing (see
        capture.table_files), also while no daemon ran; `before`: the files as noted
        (capture.noted_files). A column that changed to another kind of value (timestamp
        to timestamptz) is not followed this way: the table is paused (tables.judge), and
        its old type given back lets it resume."""
        s = self.session
        if before == now:
            return
        rewritten = {}
        noted = dict(now)
        family = tables.values.family
        truncated: set[int] | None = None
        for name, (file, types) in now.items():
            t = self.tables.get(name)
            old = (before or {}).get(name)
            if old is None or old[0] == file or t is None or t.state not in (bk.STREAMING, bk.LOADING):
                continue
            if truncated is None:
                truncated = set() if self.checkpoint is None else await reader.truncated_tids(
                    s.pg, self.names, self.checkpoint)
            if t.tid in truncated:
                # Emptied (a TRUNCATE's new file) and not read yet: the stream copies it
                # again once it reads the entry, as emptied, not as rewritten as well.
                noted[name] = old
                continue
            if name in self.reload and (self.loading is None or self.loading.name != name):
                # Its copy, still to start, reads it as it is then (and notes its file,
                # _note_file): a TRUNCATE's new file, or a rewrite, needs no copy of its own.
                noted[name] = old
                continue
            if file == 0:  # partitioned now (no storage of its own): reconcile pauses it (tables.judge)
                self.needs_reconcile = True
                continue
            if any(c in old[1] and family(old[1][c]) != family(x) for c, x in types.items()):
                # Not followed; its old note stays, so the type given back (a rewrite
                # again, with values SQLite never had) is seen and the table copied.
                noted[name] = old
                continue
            rewritten[name] = "rewritten in Postgres (ALTER TABLE ... TYPE ... USING, VACUUM FULL, CLUSTER)"
        if rewritten:
            for name, why in rewritten.items():
                s.info(f"table {why}: copying it again", table=name, event="table_rewritten")
            self.reload = await s.worker.run(run_on(self.sink, "mark"), rewritten, [])
            self._start_over(rewritten)
            self.needs_reconcile = True
        if noted != before:
            await capture.note_files(s.pg, self.names, noted)  # after the reload is noted in SQLite

    async def _note_file(self, name: str) -> None:
        """A copy of the table starting now reads it as it is from here on: its storage
        file now is the one a later rewrite is told from (kept with the noted column
        types, which say whether a rewrite changed a kind of value)."""
        s = self.session
        before = await capture.noted_files(s.pg, self.names)
        now = (await capture.table_files(s.pg, self.source.schema)).get(name)
        if before is None or now is None:
            return
        noted = before.get(name)
        if noted is None or noted[0] != now[0]:
            before[name] = [now[0], noted[1] if noted is not None else now[1]]
            await capture.note_files(s.pg, self.names, before)

    async def _rollback_abandoned(self) -> bool:
        """A rollback's switch is open, or its freeze is on Postgres's tables: one that
        died, unless it still runs (_undo_abandoned_rollback tells by its lock)."""
        s = self.session
        open_switch = await s.pg.fetchval(f"SELECT EXISTS (SELECT 1 FROM {s.bk.s}.switches WHERE source = $1 "
                                          "AND kind = 'rollback' AND state IN ('started', 'frozen'))", s.name)
        return open_switch or bool(await capture.frozen_tables(s.pg, self.names, self.source.schema))

    async def _undo_abandoned_rollback(self) -> None:
        """A rollback that froze Postgres and died leaves the application locked out of
        the database it writes: with nobody holding the switch, syncd lifts the freeze
        (_rollback_abandoned found it open or on)."""
        from syncd.rollback import undo_abandoned_unless_switching

        await undo_abandoned_unless_switching(self.settings, self.source, self.session.pg, self.session.key)

    def _window_end(self) -> dt.datetime | None:
        """When the rollback window ([cutover] keep_sqlite_days after the cutover) ends."""
        if self.generation is None:
            return None
        return self.generation.started_at + dt.timedelta(days=self.settings.cutover.keep_sqlite_days)

    async def _retention_over(self) -> bool:
        """At the first cycle after the rollback window the way back ends: capture in
        Postgres is removed and SQLite stays as it is (never deleted)."""
        until = self._window_end()
        if until is None or dt.datetime.now(dt.timezone.utc) < until:
            return False
        days = self.settings.cutover.keep_sqlite_days
        s = self.session
        reason = (f"the rollback window ([cutover] keep_sqlite_days = {days:g}) ended at "
                  f"{until.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; the SQLite file is kept as it was then")
        from syncd.rollback import end_way_back

        await end_way_back(s.pg, self.settings, self.source, reason)
        self.retired = reason
        s.warning(f"the way back ends: {reason}; a rollback is no longer possible", event="reverse_retired")
        return True

    def _retired_health(self) -> None:
        if self.health != RETIRED:
            self.health, self.detail = RETIRED, self.retired or ""
        self._recovered()
        self.ready.set()
        self.lag.set(0, 0.0, time.time())
        self._source_gauges()
        # Every cycle: a consistency check that was running as the way back ended may
        # still publish its result after this.
        metrics.forget_tables(self.name)

    # --- health ----------------------------------------------------------------------------------

    def _update_health(self) -> None:
        states = {t.state for t in self.tables.values()}
        health = SNAPSHOTTING if bk.LOADING in states else STREAMING
        if health == STREAMING:
            self.ready.set()
        if self.health != health:
            halted = sorted(t.name for t in self.tables.values() if t.state in (bk.PAUSED, bk.HELD))
            if health == STREAMING and not halted:
                self.session.info("SQLite follows Postgres: every table is streaming back", event="streaming")
            elif health == STREAMING:
                self.session.info("SQLite follows Postgres, except the table(s) held or paused: "
                                  + ", ".join(f'"{n}"' for n in halted), event="streaming")
            self.health = health
        self.detail = ""

    def _update_gauges(self) -> None:
        self._source_gauges()
        metrics.table_gauges(self.name, {t.name: t.state for t in self.tables.values()}, bk.STATES,
                             (bk.HELD, bk.PAUSED),
                             held={t.name for t in self.tables.values() if bk.held_in_a_retry(t.state, t.row.reason)})

    def _source_gauges(self) -> None:
        """The source's own series: pending, lag, and when they were last measured."""
        d = TO_SQLITE
        metrics.pending_changes.labels(self.name, direction=d).set(self.lag.pending)
        metrics.set_lag(self.name, self.lag_figure(time.time()), direction=d)
        metrics.last_check_timestamp_seconds.labels(self.name).set(time.time())


def _utc(t: float | None) -> dt.datetime | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc)


__all__ = ["ReversePipeline"]
