"""One source's life: capture, snapshot, then stream until told to stop.

A single task does the work in small steps (one snapshot chunk, one catch-up page,
one batch), so snapshot and stream interleave and shutdown waits for at most one
step. A second task polls the file cheaply, which is the safety net under the
file-system events and what keeps the lag figure honest while Postgres is down.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from dataclasses import dataclass

from tenacity import AsyncRetrying, retry_if_exception, wait_exponential, wait_random

from syncd import metrics, parity
from syncd.collisions import LookupIndexTooSlow
from syncd.printable import listed
from syncd.config import Settings, SourceSettings
from syncd.health_note import POSTGRES_DOWN, POSTGRES_LOGIN_REFUSED, FailingNote, outage
from syncd.lag import LagTracker
from syncd.model import TO_POSTGRES
from syncd.postgres import bookkeeping as bk
from syncd.postgres.bookkeeping import CheckpointConflict, DirectionChanged, SourceLocked
from syncd.postgres.target import UnsupportedTarget
from syncd.postgres.connect import (CannotConnect, PostgresUnavailable, describe, is_transient, lock_given_up,
                                    plan_outdated, privilege_refused, short_of_resource, sqlstate,
                                    statement_cancelled)
from syncd.postgres.pool import Target
from syncd.pruner import Pruner
from syncd.reconcile import SameFileAsAnotherSource, install_capture, reconcile
from syncd.rows import RowMisfit
from syncd.session import STEP_WRITE_SECONDS, SourceSession, TableRuntime, changed
from syncd.snapshot import SchemaMoved, SnapshotRejected, TableLoad, audit, load_chunk, start
from syncd.sqlite import disk_guard, freeze, introspect, reader
from syncd.sqlite.capture import CaptureStateError, contended
from syncd.sqlite.connection import (FileMoved, SourceFileError, cannot_write, hard_links, is_sqlite_file_error,
                                    out_of_reach)
from syncd.stream import ReadAhead, apply, batch_limit, read_and_convert
from syncd.table_locks import said_once

STATS_EVERY_SECONDS = 5.0
STATS_IDLE_SECONDS = 60.0
# A source closed for idleness is looked at with a connection when its files' signature
# moves (any commit moves the size or time of the file or its -wal), and this often
# regardless: the net for a commit landing in the same clock tick as the last look and
# leaving every size as it was. A thousand idle files re-opened once a minute each cost
# the daemon 3% of a core (bench/fleet.py); every five minutes, a fifth of that.
IDLE_RELOOK_SECONDS = 300.0
# Why Postgres refuses to reshape an emptied table, for what the application made there after
# a cutover: FEATURE_NOT_SUPPORTED (a view or generated column uses the column),
# DEPENDENT_OBJECTS_STILL_EXIST (a foreign key depends on the key), DATATYPE_MISMATCH (a
# foreign key's other end keeps its type).
RESHAPE_REFUSED = ("0A000", "2BP01", "42804")

# Health states, as status and sd_notify report them (and POSTGRES_DOWN, POSTGRES_LOGIN_REFUSED:
# syncd.health_note, whose note leaves them out).
STARTING = "starting"
SNAPSHOTTING = "snapshotting"
STREAMING = "streaming"
SOURCE_MISSING = "source_missing"
LOCKED = "locked_by_other"
FILE_LOCKED = "file_locked"  # the application has kept the SQLite file locked for a while
FAILING = "failing"
CUT_OVER = "cut_over"  # the application writes Postgres now; nothing flows this way
READ_ONLY = "25006"  # read_only_sql_transaction: a standby, or default_transaction_read_only
# A file its application keeps locked this long is reported (file_locked), once; shorter
# locks are the application at work and only retried.
FILE_LOCKED_AFTER_SECONDS = 10.0


def lock_met(locked_since: float | None, path, exc: BaseException, waiting: str) -> tuple[float, str | None]:
    """A step met the application's lock on the file: (since when the file has been
    locked, monotonic; the file_locked report once that is FILE_LOCKED_AFTER_SECONDS ago,
    else None). `waiting` says what waits meanwhile."""
    now = time.monotonic()
    if locked_since is None or now - locked_since < FILE_LOCKED_AFTER_SECONDS:
        return (now if locked_since is None else locked_since), None
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(time.time() - (now - locked_since)))
    return locked_since, f"the SQLite file {path} is locked by its application (SQLite says: {exc}) since {since}; " \
                         + waiting


class Pipeline:
    direction = TO_POSTGRES  # which way this pipeline carries changes (the way back: reverse/pipeline.py)
    cannot_connect = False  # its last outage a connection not opened (not a statement failing on one)
    # Its last outage Postgres refusing writes for want of a resource (its disk full): a
    # new connection proves nothing, only a step that goes through ends it.
    writes_refused = False

    def __init__(self, settings: Settings, source: SourceSettings, target: Target | None = None):
        self.settings = settings
        self.source = source
        self.session = SourceSession(settings, source, target)
        self.name = source.name
        self.wake = asyncio.Event()
        self.stop_event = asyncio.Event()
        self.ready = asyncio.Event()
        self.lag = LagTracker()
        self.reconciled = False  # the lag is unknown until the bookkeeping is read (lag_figure)
        self.health = STARTING
        self.failing_note = FailingNote()  # FAILING, told to Postgres for `syncd status` (health_note.py)
        self.renew_connections = False  # the next step first replaces the pooled connections
        self.chunk_divisors: dict[str, int] = {}  # table -> how much smaller its load's chunks are (timeouts)
        self.batch_divisor = 1  # how much smaller the stream's batches are (timeouts), until it catches up
        self.applying = False  # a batch of changes is being applied
        self.detail = ""
        self.pg_ok: bool | None = None
        self.step_started: float | None = None  # monotonic start of the step in progress, if any
        self.needs_reconcile = True
        self.file_changed = False
        self.load: TableLoad | None = None
        self.ahead = ReadAhead()  # the next stream batch, read while this one applies
        self.max_seq_seen = 0
        self.halted_counted: tuple[dict[int, int], int] = ({}, 0)  # positions, checkpoint counted at
        self.last_poll = None
        self.locked_since: float | None = None  # monotonic: steps have failed on the file's lock since
        self.sqlite_answered = False  # the step in progress has read the file
        self.names_told = 1  # the file's hard links last warned about
        self.pruner = Pruner(source.path, source.name, settings.sqlite.prune_window,
                             settings.sqlite.write_busy_timeout_ms, settings.sqlite.read_busy_timeout_ms)
        self.pruner.on_done = self.wakeup
        self.check_postgres = False  # the fleet's recheck could not reach Postgres: see for ourselves
        self.last_stats = 0.0
        self.stats_seq = -1  # the changelog position the last size was measured at
        self.idle_since = time.monotonic()  # last step with work to do
        self.idle_pruned_after: float | None = None  # the idle spell whose last entries a prune was started for
        self.idle_closed = False  # the SQLite connection was given back for idleness
        self.closed_stat: tuple | None = None
        self.closed_at = 0.0
        self.last_request_check = 0.0
        self.last_full_check = time.monotonic()
        self.captured_once = False
        # The changelog position Postgres may hold applied past the checkpoint known here: a
        # batch whose commit's reply never came, and, until the checkpoint is first read,
        # whatever the file held when this run began capturing. Compaction leaves the entries
        # up to it as they are: the fingerprints of the batches applied from them prove the
        # file on the next reconcile (reconcile._resume_position). (A suspension deletes them:
        # every table is snapshotted again after it anyway, and the disk comes first.)
        self.may_have_applied = 0
        self.kept_unapplied = 0  # before the first reconcile: entries below the file's pruned position (held tables')
        self.own_poller = True  # the daemon turns it off and polls from its FleetPoller
        self.admission: asyncio.Semaphore | None = None  # the daemon's: at most so many sources starting at once
        self._admitted = False
        self.fleet_rechecks = False  # the daemon turns it on and fills recheck_flags (FleetRechecker)
        self.recheck_flags: RecheckFlags | None = None
        # Whether the file may be frozen by a switch that stopped before finishing with no
        # switch record left open (a rollback killed after its last transaction, before it
        # unfroze the file): looked at once at start, and again while a switch holds it.
        self.freeze_unsettled = True
        self.recheck_every = settings.stream.schema_check_interval_seconds
        self._last_error: str | None = None
        self.events: list[tuple[str, str, str | None]] = []  # (table, kind, detail) for syncd.events
        # Export every per-source series from the start, so dashboards show 0, not "no data".
        metrics.retries_total.labels(self.name)
        for kind in ("postgres", "sqlite", "data", "schema", "lock", "internal", "verify"):
            metrics.errors_total.labels(self.name, kind)
        metrics.apply_duration_seconds.labels(self.name)
        metrics.commit_to_apply_seconds.labels(self.name)
        metrics.set_lag(self.name, None)
        metrics.pending_changes.labels(self.name).set(0)
        metrics.capture_suspended.labels(self.name).set(0)

    # --- control -------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def wakeup(self) -> None:
        self.wake.set()

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    async def run(self) -> None:
        # The daemon polls every source from one task at a bounded rate (FleetPoller);
        # a pipeline run on its own (init, repair, a cutover's drain) polls itself.
        poller = asyncio.create_task(self._poll_loop(), name=f"poll-{self.name}") if self.own_poller else None
        # Exponential from 0.2 s up to the configured maximum, plus up to 0.5 s of jitter
        # (spelled so every tenacity release in the supported range takes it silently).
        backoff = wait_exponential(multiplier=0.2, max=self.settings.stream.retry_max_backoff_seconds) \
            + wait_random(0, 0.5)

        def wait(retry_state) -> float:
            # A busy SQLite file is the application at work, not an outage: try again
            # soon, or a busy rollback-journal database would starve syncd's reads.
            exc = retry_state.outcome.exception()
            if contended(exc):
                return random.uniform(0.01, 0.1)
            return backoff(retry_state)

        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: not isinstance(e, asyncio.CancelledError)),
            wait=wait,
            sleep=self._sleep,
            before_sleep=self._before_retry,
            reraise=True,
        )
        if self.admission is not None:
            await self.admission.acquire()  # a big fleet starts a few sources at a time
            self._admitted = True
        try:
            while not self.stopping:
                did = await retrying(self._step)
                if not did and not self.stopping:
                    # Woken by a file event, the poller, a recheck that is due, or stop.
                    timeout = None if not self.own_poller else self.settings.stream.poll_interval_seconds
                    try:
                        await asyncio.wait_for(self.wake.wait(), self._recheck_due_in(timeout))
                    except asyncio.TimeoutError:
                        pass
        finally:
            self._leave_admission()
            if poller is not None:
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)
            await self.ahead.drop()
            await self._close_load()
            await self.pruner.stop()
            self.pruner.shutdown()
            await self.session.close()

    def _leave_admission(self) -> None:
        """Started (streaming, or clearly failing): the next source may start."""
        if self._admitted:
            self._admitted = False
            self.admission.release()

    @property
    def pending(self) -> int:
        """Changelog entries seen and not yet applied: past the checkpoint, and held or
        paused tables' entries the checkpoint moved past (as last counted). Before the first
        reconcile the checkpoint is not known (Postgres away since the start): counted past
        the position the file notes as applied (its last prune), not from 0, which counted
        every change ever captured, with the entries that prune kept below it (held or
        paused tables', which are not known as such before the reconcile either)."""
        applied = self.session.applied_seq
        if not self.reconciled and self.session.capture is not None:
            applied = max(applied, self.session.capture.pruned_seq)
            return max(0, self.max_seq_seen - applied) + self.kept_unapplied
        return max(0, self.max_seq_seen - applied) + sum(t.queued for t in self._halted())

    def lag_figure(self, now: float) -> float | None:
        """The lag to show, None until known: before its first reconcile the pipeline knows
        neither the checkpoint nor since when changes wait (0 would say nothing waits), nor
        while it cannot read the file (gone, unreadable: what is written meanwhile is unseen)."""
        return self.lag_seconds(now) if self.reconciled and self.health != SOURCE_MISSING else None

    def lag_seconds(self, now: float) -> float:
        """The age of the oldest change not applied: the stream's, or a held or paused
        table's oldest queued change."""
        ages = [now - t.queued_since for t in self._halted() if t.queued and t.queued_since is not None]
        if self.health == FILE_LOCKED and self.lag.caught_up_at is not None:
            # The application holds the file: what it commits meanwhile waits unseen, since the
            # changelog was last read whole at most (0 would say nothing waits).
            ages.append(now - self.lag.caught_up_at)
        return max([self.lag.lag(now), *ages])

    def _halted(self) -> list[TableRuntime]:
        return [t for t in list(self.session.tables.values()) if t.state in (bk.HELD, bk.PAUSED)]

    async def _count_halted(self) -> None:
        """Count the changes held and paused tables keep queued: in full when the set of
        such tables or their positions change, otherwise only the changelog range the
        checkpoint passed since the last count."""
        # A table to be loaded again (no position) has no queue that matters.
        halted = [t for t in self._halted() if t.row.from_seq is not None]
        if not halted:
            self.halted_counted = ({}, 0)
            return
        s = self.session
        positions = {t.tid: t.row.from_seq for t in halted}
        known, applied = self.halted_counted
        if known == positions and applied == s.applied_seq:
            return
        if known == positions and applied < s.applied_seq:
            # Only the checkpoint moved: count what it passed since, and add.
            more = await s.worker.run(reader.queued_behind, dict.fromkeys(positions, applied), s.applied_seq)
            for t in halted:
                t.queued += more.get(t.tid, 0)
        else:
            counts = await s.worker.run(reader.queued_behind, positions, s.applied_seq)
            for t in halted:
                t.queued = counts.get(t.tid, 0)
        self.halted_counted = (positions, s.applied_seq)
        for t in halted:
            if t.queued and t.queued_since is None:
                t.queued_since = time.time()

    def busy_for(self, now: float) -> float:
        """How long the step in progress has been running; 0 between steps (waiting
        for a change or in a backoff sleep is healthy, a step that never ends is not)."""
        started = self.step_started
        return 0.0 if started is None else now - started

    async def _step(self) -> bool:
        self.step_started = time.monotonic()
        try:
            if self.renew_connections:
                self.renew_connections = False
                await self.session.target.renew()
            await self.failing_note.publish(self.health, self.detail, self.session)  # a failure of the last step
            self.sqlite_answered = False
            did = await self._cycle()
            if self.locked_since is not None and (self.sqlite_answered or self.session.worker.conn is not None):
                # SQLite answered (the step may have given its connection back since).
                self.locked_since = None
                if self.health == FILE_LOCKED:
                    self._recovered()
                    self.check_postgres = True  # the next step sets the health afresh
                    self.wake.set()  # and runs at once, also when nothing else is due
            await self.failing_note.publish(self.health, self.detail, self.session)  # recovered
            return did
        finally:
            self.step_started = None

    async def _sleep(self, seconds: float) -> None:
        """Backoff sleep that a stop request cuts short, and, while the file is gone, the
        poll finding it there again (poll_once wakes the pipeline): a file put back is
        followed at once, not at the end of a backoff grown to minutes' worth."""
        gone = self.health == SOURCE_MISSING and not os.path.exists(self.source.path)
        if self.health == SOURCE_MISSING:
            await self.session.let_go_if_gone()
        if self.pg_ok is False:
            # Postgres away: a load's read of the file (one transaction in WAL mode) would keep
            # the application's WAL from being checkpointed for as long as the outage lasts,
            # growing with every commit. Given up; the load resumes from its position.
            await self._close_load()
        if gone:
            # Only the file's return ends the wait early: the poll also wakes a source closed
            # for idleness at each look while its file is gone (its signature moved), which
            # would make every poll a retry (a fleet's archived tenants, the error counters).
            deadline = time.monotonic() + seconds
            while not self.stop_event.is_set() and (left := deadline - time.monotonic()) > 0:
                self.wake.clear()
                waits = [asyncio.ensure_future(self.stop_event.wait()), asyncio.ensure_future(self.wake.wait())]
                try:
                    await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
                if os.path.exists(self.source.path):
                    return
            return
        try:
            await asyncio.wait_for(self.stop_event.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # --- failure handling ------------------------------------------------------------

    def _before_retry(self, retry_state) -> None:
        exc = retry_state.outcome.exception()
        exc = out_of_reach(exc) or exc  # its folder made one syncd may not enter between two looks
        s = self.session
        applying, self.applying = self.applying, False
        self.ahead.discard()  # read before the failure: read again once it is over
        metrics.retries_total.labels(self.name).inc()
        if not contended(exc):
            self.locked_since = None  # a lock met after another failure is counted from then
        if isinstance(exc, SourceLocked):
            self._enter(LOCKED, str(exc), kind="lock", level="error")
        elif isinstance(exc, UnsupportedTarget):
            self._enter(FAILING, str(exc), kind="postgres", level="error")
        elif isinstance(exc, SameFileAsAnotherSource):
            self._enter(FAILING, str(exc), kind="sqlite", level="error")
        elif isinstance(exc, FileMoved):
            self.file_changed = True  # the file at the path is opened afresh and looked at again
        elif isinstance(exc, SourceFileError):
            flags = self.recheck_flags
            if flags is not None and flags.direction != TO_POSTGRES and s.direction == TO_POSTGRES:
                # Cut over, as the daemon's look at Postgres found (started while Postgres did not
                # answer), and no file to reconcile with (archived once the way back ended, say):
                # the daemon hands the source to the way back, which tells such a file from a missing one.
                s.direction = flags.direction
            self._enter(SOURCE_MISSING, f"{exc}; waiting for it to come back", kind="sqlite", level="error")
            metrics.source_up.labels(self.name).set(0)
            self.file_changed = True  # whatever comes back is opened afresh and looked at again
        elif isinstance(exc, parity.LockNotHad):
            self._enter(FAILING, str(exc), kind="lock", level="warning")
        elif isinstance(exc, LookupIndexTooSlow):
            self._enter(FAILING, str(exc), kind="postgres", level="error")
        elif refused := privilege_refused(exc, self.settings.dsn_for(self.source)):
            self._enter(FAILING, f"{refused}; tried again",
                        kind="postgres", level="error")
        elif sqlstate(exc) == READ_ONLY:
            self._enter(FAILING, f"Postgres takes no writes in this database ({describe(exc)}): a standby, or "
                        "default_transaction_read_only; tried again on new connections until it does",
                        kind="postgres", level="error")
            self.renew_connections = True
        elif unwritable := cannot_write(exc, self.source.path):
            self._enter(FAILING, f"{unwritable}; tried again", kind="sqlite", level="error")
        elif is_sqlite_file_error(exc, self.source.path):
            self._enter(SOURCE_MISSING, f"cannot read the SQLite file {self.source.path}: {describe(exc)}; "
                        "waiting for it to be readable again", kind="sqlite", level="error")
            metrics.source_up.labels(self.name).set(0)
        elif cancelled := statement_cancelled(exc, self.settings.dsn_for(self.source),
                                              self.settings.postgres.statement_timeout_seconds):
            self._smaller_chunks()
            self._smaller_batches(applying)
            self.session.drop_postgres()  # the step starts again on a fresh connection
            self._enter(FAILING, cancelled, kind="postgres", level="warning")
        elif locked := lock_given_up(exc, self.settings.dsn_for(self.source)):
            self.session.drop_postgres()  # the step starts again on a fresh connection
            self._enter(FAILING, locked, kind="postgres", level="warning")
        elif plan_outdated(exc):
            self._enter(FAILING, f"Postgres refused a statement syncd prepared before a table changed there "
                        f"({describe(exc)}); tried again, prepared anew", kind="postgres", level="warning")
        elif isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            self._smaller_chunks()
            self._smaller_batches(applying)
            self._pg_down(exc, f"a statement ran over [postgres] statement_timeout_seconds "
                               f"({self.settings.postgres.statement_timeout_seconds:g} s): Postgres is slow or busy, a "
                               "lock holds the table, or the server is gone")
        elif is_transient(exc):
            self._pg_down(exc)
        elif contended(exc):
            # The application holds the file: try again soon. Held for long, it is said.
            self.locked_since, detail = lock_met(self.locked_since, self.source.path, exc,
                                                 "syncd reads it again as soon as the lock is gone, its changes wait "
                                                 "in the file meanwhile")
            if detail:
                self._enter(FILE_LOCKED, detail, kind="sqlite", level="warning")
        elif isinstance(exc, DirectionChanged):
            self.needs_reconcile = True  # reconcile reads the new direction; the daemon switches pipelines
        elif isinstance(exc, CaptureStateError):
            self._enter(FAILING, str(exc), kind="sqlite", level="error")
        elif isinstance(exc, CheckpointConflict):
            self._enter(FAILING, str(exc), kind="lock", level="error")
            s.drop_postgres()
        else:
            self._enter(FAILING, f"unexpected error: {describe(exc)}", kind="internal", level="error",
                        exc=exc)
        self._mark_retry()

    def _smaller_chunks(self) -> None:
        """A load in progress when a statement ran over the timeout goes on in chunks half
        as large (down to snapshot.MIN_CHUNK_ROWS): the same chunk would time out again,
        for ever, on a slow server or with wide rows."""
        load = self.load
        if load is None:
            return
        before = load.chunk_rows
        divisor = min(1024, self.chunk_divisors.get(load.t.name, 1) * 2)
        self.chunk_divisors[load.t.name] = load.divisor = divisor
        if load.chunk_rows < before:
            self.session.warning(f"a snapshot chunk ran over [postgres] statement_timeout_seconds: chunks of "
                                 f"{load.chunk_rows} rows from now on (were {before})", table=load.t.name,
                                 event="snapshot_chunks_smaller")

    def _batch(self, size: int) -> int:
        """`size` changes a batch, or fewer while batches ran over the statement timeout."""
        return max(1, size // self.batch_divisor)

    def _smaller_batches(self, applying: bool) -> None:
        """A batch of changes being applied when a statement ran over the timeout: the
        stream goes on in batches half as large (down to one change) until it catches up;
        the same batch would time out again, for ever, on a slow server."""
        before = self._batch(self.settings.stream.batch_size)
        if not applying or before == 1:
            return
        self.batch_divisor *= 2
        self.session.warning(f"a batch of changes ran over [postgres] statement_timeout_seconds: batches 1/"
                             f"{self.batch_divisor} of their size from now on, until the stream catches up",
                             event="stream_batches_smaller")

    def _mark_retry(self) -> None:
        self.ready.set()  # clearly reported as failing counts as "ready" for systemd
        self._leave_admission()
        metrics.source_up.labels(self.name).set(1 if self.health not in (SOURCE_MISSING,) else 0)
        metrics.set_lag(self.name, self.lag_figure(time.time()))  # the poll may wait on the file as the step did

    def _pg_down(self, exc: BaseException, why: str | None = None) -> None:
        self.pg_ok = False
        self.cannot_connect = isinstance(exc, CannotConnect)
        short = short_of_resource(exc)
        self.writes_refused = short is not None
        self.session.drop_postgres()
        # Postgres answered and refused the role (a password rotated): said so, retried as an outage is.
        health, what = outage(exc, self.settings.dsn_for(self.source),
                              short or f"Postgres unreachable: {why or describe(exc)}")
        self._enter(health, f"{what}; retrying with backoff, changes stay captured in SQLite", kind="postgres",
                    level="warning")

    def _enter(self, health: str, detail: str, kind: str, level: str, exc: BaseException | None = None) -> None:
        """Log a state change once, not once per retry."""
        metrics.errors_total.labels(self.name, kind).inc()
        if self.health == health:
            self.detail = self._last_error = detail
            return  # same state, maybe another wording of the same failure: no new line
        self.health, self.detail, self._last_error = health, detail, detail
        log = self.session.error if level == "error" else self.session.warning
        trace = (type(exc), exc, exc.__traceback__) if exc is not None and health == FAILING else None
        log(detail, event=health, exc_info=trace)

    def _recovered(self) -> None:
        what = {
            POSTGRES_DOWN: "Postgres is reachable again",
            POSTGRES_LOGIN_REFUSED: "Postgres accepts syncd's login again",
            SOURCE_MISSING: "the SQLite file is back",
            LOCKED: "the source lock is free again",
            FILE_LOCKED: "the SQLite file is no longer locked",
            FAILING: "the failing step succeeded",
        }.get(self.health)
        if what:
            self.session.info(f"recovered: {what}", event="recovered")
        if self.pg_ok is not True:
            self.pg_ok = True
        self.writes_refused = False
        self._last_error = None

    # --- one step --------------------------------------------------------------------

    async def _cycle(self) -> bool:
        if self.stopping:
            return False
        self.wake.clear()
        s = self.session
        if self.file_changed:
            self.file_changed = False
            await self.ahead.drop()
            await self._close_load()
            await self.pruner.stop()
            await s.worker.close()
            self.needs_reconcile = True
            self.captured_once = False
        if (self.idle_closed and not self.needs_reconcile and self.recheck_flags is None and not self.check_postgres
                and time.monotonic() < self._next_due()
                and reader.file_signature(str(self.source.path)) == self.closed_stat
                and time.monotonic() - self.closed_at < IDLE_RELOOK_SECONDS):
            # Woken for nothing the files show (syncd's own close, say) and nothing due
            # (staying closed past a due check would wake this loop again at once, for ever).
            return False
        if s.worker.conn is None:
            inode = s.worker.inode
            await s.worker.open()
            if (not self.idle_closed or s.worker.inode != inode
                    or self._other_capture(await s.worker.run(reader.current_capture_id))):
                # A new or replaced file (in place, while closed for idleness, too):
                # everything is looked at again.
                self.needs_reconcile = True
            elif s.schema_version is not None and await s.worker.run(introspect.schema_version) != s.schema_version:
                # The application changed its schema while the file was idle (a table created
                # and filled: nothing captured, so no changelog entry tells): followed now, not
                # at the next full schema check, while the periodic check finds it unregistered.
                self.needs_reconcile = True
            if self.idle_closed:
                # Woken by the files moving: the commit that moved them may land just after
                # the read below; closed again at once, its files would look unchanged since.
                self.idle_since = time.monotonic()
            self.idle_closed = False
            metrics.source_up.labels(self.name).set(1)
            if s.worker.names != self.names_told:
                if s.worker.names > 1:
                    s.warning(hard_links(self.source.path, s.worker.names), event="hard_links")
                self.names_told = s.worker.names
        if not self.captured_once:
            suspended = await s.worker.run(disk_guard.suspended)
            if suspended:
                metrics.capture_suspended.labels(self.name).set(1)  # a daemon started meanwhile too
                # Capture stays off while Postgres is away (that is what filled the disk);
                # with Postgres back it is installed again and every table re-snapshotted.
                # Postgres is told first: nothing that needs it may come between putting the
                # triggers back and ending the suspension, or Postgres gone again meanwhile
                # would leave the file capturing, marked suspended, with the disk guard off.
                await s.connect_postgres(lock=True)
                async with s.step():  # for the report's history, once (a lost reply retries it)
                    if not await s.pg.fetchval(f"SELECT EXISTS (SELECT 1 FROM {s.bk.s}.events WHERE source = $1 "
                                               "AND kind = 'capture_suspended' AND detail = $2)", s.name, suspended):
                        await s.bk.event(s.pg, "capture_suspended", None, suspended)
                await install_capture(s)
                await s.worker.run(disk_guard.resume, self.settings.sqlite.write_busy_timeout_ms)
                metrics.capture_suspended.labels(self.name).set(0)
                s.warning(f"capture resumed (it was suspended since {suspended}); re-snapshotting every table",
                          event="capture_resumed")
                self.needs_reconcile = True
            else:
                # Capture first, even with Postgres down: from here on nothing goes unrecorded.
                # Its writes wait for a file its application keeps locked a moment at a time:
                # the step ends (LockTimeout), is tried again and, held long, reported, and a
                # stop is not held up by a wait of minutes.
                s.worker.write_wait = STEP_WRITE_SECONDS
                try:
                    await install_capture(s)
                finally:
                    s.worker.write_wait = None
            if not self.reconciled:
                self.may_have_applied = max(self.may_have_applied, await s.worker.run(reader.max_seq))
                if s.capture is not None and s.capture.pruned_seq:
                    # Held or paused tables' entries the last prune kept: they wait too.
                    self.kept_unapplied = await s.worker.run(reader.entries_below, s.capture.pruned_seq)
            self.captured_once = True
        if await s.connect_postgres(lock=True):
            self.needs_reconcile = True
            if self.health in (POSTGRES_DOWN, POSTGRES_LOGIN_REFUSED) and not self.writes_refused:
                # Postgres answered, taking the source's lock again (an outage let it go): said
                # now, not only once a step goes through, which a lock on the file may hold up.
                self._recovered()
                self._update_health()
        if not await self._postgres_work_due():
            self.pg_ok = True
            await self._maybe_close_idle()
            return False  # idle: no connection borrowed, no query sent
        self.idle_since = time.monotonic()
        async with s.pipeline_step():  # a write held up by the application ends the step
            if not self.writes_refused:  # else only the step's success says Postgres takes writes again
                self.pg_ok = True
            return await self._postgres_steps()

    async def _postgres_work_due(self) -> bool:
        """Anything for this step to do in Postgres? Asked of SQLite alone (one cheap
        read), so that a thousand idle sources cost Postgres nothing."""
        s = self.session
        self.pruner.maybe(s.applied_seq, s.keep_map())  # SQLite only; its note reaches Postgres next step
        if self.locked_since is None and (self.load is not None
                                          or any(t.state in bk.ON_THE_WAY for t in s.tables.values())):
            return True  # a load or catch-up under way: the file answered its last step just now
        # Otherwise SQLite first, whatever the step is for: a file its application holds
        # locked fails here, before a Postgres connection is borrowed. A step holding one
        # of the pool's few while it waits out the lock keeps the rest of the fleet waiting.
        top = await s.worker.run(reader.max_seq)
        self.sqlite_answered = True
        self.max_seq_seen = max(self.max_seq_seen, top)
        if self.check_postgres:
            self.check_postgres = False
            return True
        if self.needs_reconcile or self.load is not None or self.events or self.pruner.confirmed is not None:
            return True
        if self.recheck_flags is not None or self._full_check_due(time.monotonic()):
            return True
        if not self.fleet_rechecks and (time.monotonic() - self.last_request_check
                                        >= self.settings.stream.held_table_retry_seconds):
            return True
        for t in s.tables.values():
            if t.state in bk.ON_THE_WAY or (t.state == bk.HELD and self._due(t)):
                return True
        if s.direction != TO_POSTGRES:
            return False
        return top > s.applied_seq

    async def _maybe_close_idle(self) -> None:
        """A source idle for [sqlite] idle_close_seconds gives its SQLite connection back
        (each costs ~150 KB; a fleet is mostly idle). Until it is needed again, the
        poll looks at the files' size and times instead, which any commit moves."""
        if (time.monotonic() - self.idle_since < self.settings.sqlite.idle_close_seconds or self.load is not None
                or self.pruner.busy()):
            return
        s = self.session
        if self.pruner.owed(s.applied_seq) and self.idle_pruned_after != self.idle_since:
            # The last entries, before closing: one try per idle spell (a failed one is
            # retried at the next, never in a loop while the file stays idle).
            self.idle_pruned_after = self.idle_since
            self.pruner.maybe(s.applied_seq, s.keep_map(), now=True)
            return
        await s.worker.close()
        # Taken after closing: the last connection's close checkpoints a WAL file and
        # removes it, which must not look like the application writing.
        self.closed_stat = reader.file_signature(str(self.source.path))
        self.idle_closed = True
        self.closed_at = time.monotonic()

    def _next_due(self) -> float:
        """When (monotonic) an idle pipeline next has something to do: a held table's
        retry, its own recheck (run alone), the rare full check, giving an idle
        connection back."""
        dues = [self.last_full_check + self.recheck_every]
        if not self.idle_closed:
            dues.append(self.idle_since + self.settings.sqlite.idle_close_seconds)  # to give the connection back
        if not self.fleet_rechecks:
            dues.append(self.last_request_check + self.settings.stream.held_table_retry_seconds)
        dues += [t.retry_at for t in self.session.tables.values() if t.state == bk.HELD and t.retry_at]
        return min(dues)

    def _recheck_due_in(self, wait: float | None) -> float | None:
        """How long an idle pipeline may sleep before something is due."""
        due = max(0.05, self._next_due() - time.monotonic())
        return due if wait is None else min(wait, due)

    async def _postgres_steps(self) -> bool:
        s = self.session
        self._begin_full_check_when_due()
        if self.needs_reconcile:
            await self.ahead.drop()
            await self._close_load()
            await self.pruner.stop()  # it must not work from a checkpoint reconcile may reset
            await reconcile(s)
            self.needs_reconcile = False
            self._after_reconcile()

        if s.direction != TO_POSTGRES:
            # Cut over: the file is frozen for the application and Postgres is the truth.
            # The way back is the reverse stream's; this pipeline only keeps watch.
            self._recovered()
            if self.health != CUT_OVER:
                self.health, self.detail = CUT_OVER, "cut over to Postgres; the SQLite file is frozen"
                s.info("cut over to Postgres: the forward stream stops", event="cut_over")
            self.ready.set()
            self._leave_admission()
            await self._maybe_recheck()
            return False
        did = await self._snapshot_step()
        if not self.needs_reconcile:
            did = await self._catchup_step() or did
        if not self.needs_reconcile:
            did = await self._stream_step() or did
        self.pruner.maybe(s.applied_seq, s.keep_map())
        confirmed = self.pruner.take_confirmed()
        if confirmed:
            await s.bk.confirm(s.pg, confirmed)
        await self._flush_events()
        await self._maybe_recheck()
        await self._count_halted()
        self._recovered()
        self._update_health()
        self._update_gauges()
        return did

    def _after_reconcile(self) -> None:
        s = self.session
        # The changes waiting were committed after Postgres last held every captured change
        # (the time of the last apply is no bound: a daemon stopped part-way through a
        # backlog leaves changes older than it).
        since = s.lag_from or time.time()
        if self.lag.caught_up_at is not None and self.lag.applied_seq == s.applied_seq:
            since = max(since, self.lag.caught_up_at)  # reconciled again: this daemon saw since then
        max_seq = s.capture.max_seq if s.capture else 0
        self.lag.seed(s.applied_seq, max_seq, since)
        self.reconciled = True
        self.halted_counted = ({}, 0)
        for t in self._halted():
            if t.queued_since is None:
                # Held or paused before (this daemon started, or this reconcile): its queue
                # is at least as old as `since` or the row's last save, whichever came
                # first. A lower bound: when the hold began is not recorded.
                t.queued_since = min(since, t.row.updated_at.timestamp())
        self.max_seq_seen = max_seq  # the file as it is now: a restore may have moved it back
        self.may_have_applied = s.applied_seq  # the checkpoint, as Postgres holds it
        self.pruner.rewind(s.applied_seq)
        for t in s.tables.values():
            self._log_table_state(t)
            # Every table's series from the first scrape: 0 changes, not "no data".
            for op in ("insert", "update", "delete"):
                metrics.changes_applied_total.labels(self.name, t.name, op)
            metrics.snapshot_rows_loaded.labels(self.name, t.name).set(t.row.snapshot_rows)
        self._update_gauges()

    # --- snapshot ------------------------------------------------------------------

    def _due(self, t: TableRuntime) -> bool:
        return time.monotonic() >= t.retry_at

    def _pick_snapshot(self) -> TableRuntime | None:
        tables = self.session.tables
        if self.load is not None and self.load.t.name in tables and tables[self.load.t.name] is self.load.t:
            if self.load.t.state == bk.LOADING:
                return self.load.t
        for t in tables.values():
            if t.state in (bk.PENDING, bk.LOADING):
                return t
        for t in tables.values():
            if t.state == bk.HELD and t.row.resume_to in (bk.PENDING, bk.LOADING) and self._due(t):
                return t
        return None

    async def _snapshot_step(self) -> bool:
        t = self._pick_snapshot()
        if t is None:
            await self._close_load()
            return False
        if self.load is not None and self.load.t is not t:
            await self._close_load()
        s = self.session
        was_held = t.state == bk.HELD
        try:
            if t.state == bk.PENDING or (was_held and t.row.resume_to == bk.PENDING):
                reason = await audit(s, t)
                if reason is not None:
                    await self._hold(t, reason, bk.PENDING, t.row.from_seq)
                    return False
                await self._close_load()  # a start that failed before: its read side and read-ahead go
                self.load = self._table_load(t)
                try:
                    await start(s, t, self.load)
                except Exception as e:
                    # An emptied table Postgres cannot reshape for what the application made
                    # there after a cutover: a view or generated column keeping a column's
                    # type, a foreign key on its key. Tried again, it fails again until that
                    # is dropped: the table waits, its rows untouched, the others go on.
                    if sqlstate(e) not in RESHAPE_REFUSED:
                        raise
                    await self._close_load()
                    await self._hold(t, f'table "{t.name}": Postgres cannot reshape it as SQLite\'s table is now: '
                                        f"{describe(e)}", bk.PENDING, t.row.from_seq)
                    return False
            elif self.load is None and reader.snapshot_position_kind(t.spec) == "rowid-unstable":
                s.info("a table keyed by [sources.keys] cannot resume a load (VACUUM may renumber its rows): "
                       "loading it again from the start", table=t.name, event="snapshot_restarted")
                self.load = self._table_load(t)
                await start(s, t, self.load)
            elif self.load is None:
                self.load = self._table_load(t)
                await self.load.open()  # resuming: the position stays the one fixed at start
                if not (was_held and t.resume_said):  # once per hold, not at every retry
                    s.info(f"snapshot resuming after {t.row.snapshot_rows} rows", table=t.name,
                           event="snapshot_resumed")
                t.resume_said = was_held
            if t.state == bk.HELD:
                t.row = changed(t.row, state=bk.LOADING)
            done = await load_chunk(s, t, self.load)
            if was_held:
                self._resumed(t)
            if done:
                self.chunk_divisors.pop(t.name, None)  # the next load starts at full size again
                await self._close_load()
        except (RowMisfit, SnapshotRejected) as e:
            await self._close_load()
            # A load not started (its table could not be made ready) starts afresh.
            await self._hold(t, str(e), bk.LOADING if t.row.state == bk.LOADING else bk.PENDING, t.row.from_seq)
            return False
        except SchemaMoved:
            await self._close_load()
            self.needs_reconcile = True
        return True

    def _table_load(self, t: TableRuntime) -> TableLoad:
        load = TableLoad(self.session, t)
        load.divisor = self.chunk_divisors.get(t.name, 1)  # smaller chunks after a statement timeout
        return load

    async def _close_load(self) -> None:
        load, self.load = self.load, None
        if load is not None:
            await load.close()

    # --- catch-up and holds -----------------------------------------------------------

    def _pick_catchup(self) -> TableRuntime | None:
        for t in self.session.tables.values():
            if t.state == bk.CATCHUP:
                return t
        for t in self.session.tables.values():
            if t.state == bk.HELD and t.row.resume_to == bk.CATCHUP and self._due(t):
                return t
        return None

    async def _catchup_step(self) -> bool:
        """Apply one page of a table's own queued changes. The table rejoins the main
        stream once its position reaches the stream's checkpoint: the stream reads
        everything after that, so chasing the newest change (which a busy application
        keeps moving) is unnecessary."""
        t = self._pick_catchup()
        if t is None:
            return False
        s = self.session
        was_held = t.state == bk.HELD
        from_seq = t.row.from_seq or 0
        if from_seq < s.applied_seq:
            # Never past the stream's checkpoint: every change applied then lies in a
            # range Postgres has fingerprinted (see reconcile._resume_position).
            batch, converted, misfits = await s.worker.run(
                read_and_convert, from_seq, self._batch(self.settings.stream.batch_size), {t.tid: t.spec}, s.by_tid(),
                t.tid, s.schema_version, s.applied_seq,
            )
            if batch.schema_changed:
                self.needs_reconcile = True
                return True
            if not batch.empty:
                self.applying = True
                held = await apply(s, batch, converted, misfits, catchup=t)
                self.applying = False
                if t.tid in held:
                    self._held_logged(t)
                    return False
                if was_held:
                    self._resumed(t)
                return True
        # Nothing of this table is queued at or below the stream's checkpoint.
        row = changed(t.row, state=bk.STREAMING, resume_to=None, from_seq=None, reason=None)
        async with s.pg.transaction():
            await s.save_row(s.pg, row)
            if all(x.state in (bk.STREAMING, bk.REFUSED) or x is t for x in s.tables.values()):
                await s.bk.mark_streaming_since(s.pg)
        t.row = row
        await parity.table_streaming(s, t)  # its deferrable UNIQUE constraints, now that it is loaded
        if was_held:
            self._resumed(t)
        self._log_table_state(t)
        return True

    async def _hold(self, t: TableRuntime, reason: str, resume_to: str, from_seq: int | None) -> None:
        s = self.session
        row = changed(t.row, state=bk.HELD, reason=reason, resume_to=resume_to, from_seq=from_seq)
        async with s.pg.transaction():
            await s.save_row(s.pg, row)
        t.row = row
        self._held_logged(t)

    def _held_logged(self, t: TableRuntime) -> None:
        t.retry_at = time.monotonic() + self.settings.stream.held_table_retry_seconds
        if t.queued_since is None:
            t.queued_since = self.lag.first_seen((t.row.from_seq or 0) + 1) or time.time()
        self._update_gauges()
        if said_once(t.logged_reason) != said_once(t.row.reason):
            t.logged_reason = t.row.reason
            metrics.errors_total.labels(self.name, "data").inc()
            self.session.error(f"table held, its changes stay queued: {t.row.reason}", table=t.name,
                               event="table_held")
            self.events.append((t.name, "held", t.row.reason))

    def _resumed(self, t: TableRuntime) -> None:
        t.queued, t.queued_since = 0, None
        t.resume_said = False
        self._update_gauges()
        if t.logged_reason is not None:
            self.session.info("table resumed: what held it is gone", table=t.name, event="table_resumed")
            self.events.append((t.name, "resumed", None))
        t.logged_reason = None
        t.retry_at = 0.0

    async def _flush_events(self) -> None:
        """Record holds and resumes in syncd.events, in the pipeline's own flow: the
        connection serves one operation at a time."""
        while self.events:
            table, kind, detail = self.events[0]
            await self.session.bk.event(self.session.pg, kind, table, detail)
            self.events.pop(0)

    def _log_table_state(self, t: TableRuntime) -> None:
        if t.state in (bk.PAUSED, bk.HELD) and said_once(t.logged_reason) != said_once(t.row.reason):
            t.logged_reason = t.row.reason
            self.session.warning(f"table {t.state}: {t.row.reason}", table=t.name, event=f"table_{t.state}")

    # --- stream --------------------------------------------------------------------

    async def _stream_step(self) -> bool:
        s = self.session
        streaming, by_tid = s.streaming_specs(), s.by_tid()
        got = await self.ahead.take(ReadAhead.key_for(s.applied_seq, by_tid, streaming, s.schema_version))
        if got is None:
            # Nothing read ahead: a batch of the configured size gets Postgres busy soonest;
            # the larger ones follow, each read while the one before it applies.
            got = await s.worker.run(read_and_convert, s.applied_seq, self._batch(self.settings.stream.batch_size),
                                     streaming, by_tid, None, s.schema_version)
        batch, converted, misfits = got
        if batch.schema_changed:
            self.needs_reconcile = True
            return True
        if batch.empty:
            self.batch_divisor = 1  # caught up: the next backlog starts at full size again
            return False
        # Timed by the read itself: a batch read ahead was read before this step began.
        self.lag.observe(batch.max_seq, batch.read_at)
        self.max_seq_seen = max(self.max_seq_seen, batch.max_seq)
        if batch.max_seq > batch.last_seq and s.journal_mode == "wal":
            # More is queued: read the next batch on the SQLite thread while this one
            # is applied. It is used only if this apply leaves the tables as they are.
            # Only in WAL mode: in rollback-journal mode a read holds back the
            # application's commits, so syncd reads only between applies there.
            limit = self._batch(batch_limit(batch.max_seq - batch.last_seq, self.settings.stream.batch_size,
                                            s.journal_mode))
            self.ahead.start(self._read_ahead(batch.last_seq, limit, streaming, by_tid),
                             ReadAhead.key_for(batch.last_seq, by_tid, streaming, s.schema_version))
        first_seen = self.lag.first_seen(batch.after_seq + 1) or batch.read_at
        self.applying = True
        self.may_have_applied = max(self.may_have_applied, batch.last_seq)
        held = await apply(s, batch, converted, misfits, caught_up_at=self.lag.covered_at(batch.last_seq))
        self.applying = False
        now = time.time()
        self.lag.applied(s.applied_seq)
        if batch.tables:
            metrics.commit_to_apply_seconds.labels(self.name).observe(max(0.0, now - first_seen))
        by_tid = s.by_tid()
        for tid in held:
            if by_tid[tid].queued_since is None:
                by_tid[tid].queued_since = first_seen  # the held change was in this batch
            self._held_logged(by_tid[tid])
        return True

    async def _read_ahead(self, after: int, limit: int, streaming: dict, by_tid: dict):
        s = self.session
        got = await s.worker.run(read_and_convert, after, limit, streaming, by_tid, None, s.schema_version)
        if not got[0].empty:
            s.debug(f"batch read ahead: changelog entries {after + 1}..{got[0].last_seq}, "
                    f"while the batch up to {after} is applied", event="batch_read_ahead")
        return got

    async def _maybe_stats(self) -> None:
        """The changelog's size, from the poll loop: it must keep moving while Postgres
        is away, which is when an operator watches it."""
        # Measured when the changelog moved (and once a minute regardless): an idle
        # fleet should not walk a thousand changelogs' pages every few seconds.
        since = time.monotonic() - self.last_stats
        moved = self.max_seq_seen != self.stats_seq
        if since < STATS_EVERY_SECONDS or (not moved and since < STATS_IDLE_SECONDS):
            return
        self.last_stats, self.stats_seq = time.monotonic(), self.max_seq_seen
        s = self.session
        size = await s.worker.run(reader.changelog_bytes)
        metrics.changelog_bytes.labels(self.name).set(size)
        cap = self.settings.sqlite.max_changelog_mb * 1024 * 1024
        # Only while Postgres takes no changes (away, or answering but failing every step:
        # a standby, a read-only database): with it up, the stream drains the changelog,
        # and compacting entries a batch in flight has read would break its fingerprint
        # (so, failing, only between two tries: the next may be the one that succeeds).
        if size > cap and self.captured_once:
            if self.pg_ok is False or (self.health == FAILING and self.step_started is None):
                await self._protect_disk(size, cap)
            elif self.health == FAILING:
                # A try was in flight: measured again at the next poll, between two tries.
                # Left for the changelog to move, it would wait STATS_IDLE_SECONDS once the
                # application stopped writing, over the cap all along.
                self.last_stats -= STATS_EVERY_SECONDS
                self.stats_seq = None

    async def _protect_disk(self, size: int, cap: float) -> None:
        """The changelog outgrew [sqlite] max_changelog_mb: compact it, and if that is not
        enough, suspend capture for this source (see sqlite/disk_guard.py)."""
        s = self.session
        busy = self.settings.sqlite.write_busy_timeout_ms
        self.ahead.discard()  # it may hold entries the compaction removes
        after_seq = max(s.applied_seq, self.may_have_applied)
        dropped = await s.worker.run(disk_guard.compact, after_seq, busy)
        after = await s.worker.run(reader.changelog_bytes)
        metrics.changelog_bytes.labels(self.name).set(after)
        s.warning(f"changelog at {size / 1048576:.1f} MB, over [sqlite] max_changelog_mb "
                  f"({cap / 1048576:g} MB): kept one entry per key, {dropped} dropped, now {after / 1048576:.1f} MB",
                  event="changelog_compacted")
        if after <= cap:
            return
        reason = (f"the changelog reached {after / 1048576:.1f} MB, over [sqlite] max_changelog_mb "
                  f"({cap / 1048576:g} MB), while Postgres could not take its changes")
        await s.worker.run(disk_guard.suspend, s.applied_seq, reason, busy)
        self.captured_once = False  # stays off until Postgres answers (see _cycle)
        self.needs_reconcile = True
        metrics.capture_suspended.labels(self.name).set(1)
        metrics.errors_total.labels(self.name, "sqlite").inc()
        s.error(f"CAPTURE SUSPENDED: {reason}. The application's writes are no longer recorded; when Postgres "
                "answers again syncd installs capture and snapshots every table again", event="capture_suspended")

    async def _maybe_recheck(self) -> None:
        """Reconcile again when something outside SQLite may have changed: an operator
        request (`syncd resync`), a cutover or rollback, a paused table whose Postgres
        side may have been fixed (and, rarely, just in case: _begin_full_check_when_due).
        In the daemon the facts come from one query per target database for every source
        (FleetRechecker); a pipeline run alone asks for its own."""
        now = time.monotonic()
        s = self.session
        if self.fleet_rechecks:
            flags, self.recheck_flags = self.recheck_flags, None
            if flags is None:
                return
        else:
            if now - self.last_request_check < self.settings.stream.held_table_retry_seconds:
                return
            self.last_request_check = now
            flags = await fetch_recheck_flags(s.pg, s.bk.s, [s.name])
            flags = flags.get(s.name, RecheckFlags(False, s.direction, False))
        await self._undo_abandoned_freeze(flags.open_switch)
        if any(t.state == bk.PAUSED for t in s.tables.values()) or flags.requested or flags.direction != s.direction:
            self.needs_reconcile = True  # paused tables, a resync request, a cutover or rollback
        if self.needs_reconcile:
            self.wake.set()

    def _full_check_due(self, now: float) -> bool:
        return now - self.last_full_check >= self.recheck_every

    def _begin_full_check_when_due(self) -> None:
        """The just-in-case full check falls due: a reconcile in this step (not in a step of
        its own, which would borrow a pooled connection again)."""
        now = time.monotonic()
        if self._full_check_due(now):
            self.last_full_check = now
            self.needs_reconcile = True

    async def _undo_abandoned_freeze(self, open_switch: bool) -> None:
        """A cutover that froze the file and died leaves it frozen with nobody holding the
        switch: the application must not stay locked out, so syncd unfreezes it (and
        closes the record of one that died before freezing)."""
        from syncd import cutover

        s = self.session
        if s.direction != TO_POSTGRES or not (open_switch or await s.worker.run(freeze.frozen)):
            self.freeze_unsettled = False
            return
        if not await cutover.take_switch_lock(s.pg, s.key):
            # A cutover or rollback is running: it holds the file. Looked at again (the
            # daemon's rechecks) until it is settled: a rollback killed after its turn
            # leaves no open switch record to tell.
            self.freeze_unsettled = True
            return
        try:
            await cutover.undo_abandoned(self.settings, self.source, s.pg, s.worker)
            self.needs_reconcile = True
            self.freeze_unsettled = False
        finally:
            await cutover.release_switch_lock(s.pg, s.key)

    # --- health ----------------------------------------------------------------------

    def _update_health(self) -> None:
        states = {t.state for t in self.session.tables.values()}
        if states & bk.ON_THE_WAY:
            health = SNAPSHOTTING
        else:
            health = STREAMING
            self.ready.set()
            self._leave_admission()
        if self.health != health:
            stopped = [t for t in self.session.tables.values() if t.state in (bk.HELD, bk.PAUSED)]
            if health == STREAMING and not stopped:
                self.session.info("every table is streaming", event="streaming")
            elif health == STREAMING:
                names = listed([f'"{t.name}" ({t.state})' for t in stopped])
                self.session.info(f"streaming; {len(stopped)} table(s) held or paused, their changes queued: "
                                  f"{names}", event="streaming")
            self.health = health
        self.detail = ""

    def _update_gauges(self) -> None:
        s = self.session
        metrics.pending_changes.labels(self.name).set(self.pending)
        metrics.set_lag(self.name, self.lag_figure(time.time()))
        if s.applied_at:
            metrics.last_applied_timestamp_seconds.labels(self.name).set(s.applied_at)
        metrics.table_gauges(self.name, {t.name: t.state for t in s.tables.values()}, bk.STATES, (bk.HELD, bk.PAUSED))

    # --- polling -------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while not self.stopping:
            await self.poll_once()
            await asyncio.sleep(self.settings.stream.poll_interval_seconds)

    async def poll_once(self) -> None:
        """The cheap check: has anything changed, and how far has the changelog got?
        Run by the pipeline's own loop, or in the daemon by the FleetPoller."""
        s = self.session
        if self.idle_closed:
            # Closed for idleness: a commit moves a file's size or time; look again with
            # a connection when one did, and every IDLE_RELOOK_SECONDS regardless.
            looked = time.time()
            unchanged = reader.file_signature(str(self.source.path)) == self.closed_stat
            if not unchanged or time.monotonic() - self.closed_at >= IDLE_RELOOK_SECONDS:
                self.wake.set()
            elif self.max_seq_seen <= s.applied_seq:
                # Nothing committed since the connection was given back, all applied then:
                # the changelog still holds nothing Postgres lacks (a lock the application
                # takes next bounds the lag from here, not from before the idle spell).
                self.lag.observe(s.applied_seq, looked)
            metrics.last_check_timestamp_seconds.labels(self.name).set(time.time())
            metrics.set_lag(self.name, self.lag_figure(time.time()))
            return
        try:
            if s.worker.conn is not None:
                info = await s.worker.run(reader.poll, str(self.source.path))
                moved = s.schema_version is not None and info.schema_version != s.schema_version
                self._on_poll(info)
                if moved and self.pg_ok is False and self.step_started is None:
                    await self._rearm_while_away()
                if s.worker.conn is not None and info.inode == s.worker.inode:
                    await self._maybe_stats()
            elif self.health == SOURCE_MISSING and self.source.path.exists():
                self.wake.set()
        except FileMoved:  # nothing read from the file the connection holds: opened afresh
            self.file_changed = True
            self.wake.set()
            if not os.path.exists(self.source.path):
                metrics.source_up.labels(self.name).set(0)
        except sqlite3.OperationalError as e:
            if not contended(e):  # busy: the application holds a lock; poll again later
                self.file_changed = True
                self.wake.set()
        except (sqlite3.Error, SourceFileError, OSError, RuntimeError):  # RuntimeError: the worker was shut down
            self.file_changed = True  # the step says what (SourceFileError: a damaged file, say)
            self.wake.set()
        metrics.last_check_timestamp_seconds.labels(self.name).set(time.time())
        metrics.set_lag(self.name, self.lag_figure(time.time()))

    async def _rearm_while_away(self) -> None:
        """The schema moved while Postgres is away (a table rebuilt, a new one): capture
        is brought in line now, from the SQLite side alone, so the outage is no window
        of unrecorded changes; reconcile aligns Postgres when it answers again."""
        s = self.session
        if await s.worker.run(disk_guard.suspended):
            return
        await install_capture(s)
        s.info("the SQLite schema changed while Postgres is away: capture brought in line with it",
               event="capture_rearmed")

    def _other_capture(self, capture_id: str | None) -> bool:
        """The file holds another capture than the one this source streams from."""
        known = self.session.capture.capture_id if self.session.capture is not None else None
        return known is not None and capture_id is not None and capture_id != known

    def _on_poll(self, info: reader.PollInfo) -> None:
        s = self.session
        last, self.last_poll = self.last_poll, info
        if info.inode is None or info.inode != s.worker.inode:
            self.file_changed = True
            self.wake.set()
            if info.inode is None:
                metrics.source_up.labels(self.name).set(0)
            return
        if 0 <= info.max_seq < s.applied_seq or self._other_capture(info.capture_id):
            # The changelog went backwards, or another file's capture is in it: the file's
            # content was restored or replaced in place.
            self.needs_reconcile = True
            self.wake.set()
        if info.max_seq >= s.applied_seq:  # also nothing new: Postgres may be current as of then
            self.lag.observe(info.max_seq, info.read_at)
        if info.max_seq > self.max_seq_seen:
            self.max_seq_seen = info.max_seq
            self.wake.set()
        if s.schema_version is not None and info.schema_version != s.schema_version:
            self.needs_reconcile = True
            self.wake.set()
        if info.max_seq < 0:
            self.needs_reconcile = True  # the changelog vanished
            self.captured_once = False
            self.wake.set()
        if last is not None and last.data_version != info.data_version:
            self.wake.set()
        metrics.pending_changes.labels(self.name).set(self.pending)


@dataclass(frozen=True)
class RecheckFlags:
    requested: bool  # a `syncd resync` waits
    direction: str  # as bookkeeping has it now
    open_switch: bool  # a cutover or rollback started and not finished


async def fetch_recheck_flags(conn, bk_schema: str, sources: list[str]) -> dict[str, RecheckFlags]:
    """One query for every source of a target database."""
    rows = await conn.fetch(
        f"SELECT s.source, s.direction, "
        f"EXISTS (SELECT 1 FROM {bk_schema}.tables t WHERE t.source = s.source AND t.request IS NOT NULL), "
        f"EXISTS (SELECT 1 FROM {bk_schema}.switches w WHERE w.source = s.source "
        f"AND w.state IN ('started', 'frozen')) FROM {bk_schema}.sources s WHERE s.source = ANY($1::text[])",
        sources)
    return {r[0]: RecheckFlags(r[2], r[1] or TO_POSTGRES, r[3]) for r in rows}


__all__ = ["Pipeline", "PostgresUnavailable"]
