"""Measure the migration's state for `syncd report`: everything the checklist judges,
read now from both sides, never taken on trust from an earlier run."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from syncd import parity
from syncd.model import TableSpec
from syncd.parity import summary
from syncd.parity.plan import DUAL_WRITE
from syncd.parity.summary import ParityFacts
from syncd.config import Settings, SourceSettings
from syncd.endpoint_client import fetch_status, own_sources, unanswered
from syncd.health_note import FAILING
from syncd.identifiers import qualified, quote_ident, quote_pg_ident
from syncd.postgres import ddl
from syncd.postgres.bookkeeping import (HELD, LOCK_CLASS, ON_THE_WAY, PAUSED, STREAMING, Bookkeeping,
                                        bookkeeping_exists, ensure_bookkeeping, source_key)
from syncd.postgres.connect import PostgresUnavailable, close_quietly, connect, describe
from syncd.redact import scrub
from syncd.rehearsal import table_definitions
from syncd.report import backups
from syncd.report.backups import BackupFacts
from syncd.sqlite import capture, disk_guard, freeze, leftout, reader
from syncd.sqlite.connection import SourceFileError, file_problem, left_mid_transaction, open_readonly
from syncd.sqlite.introspect import introspect
from syncd.sqlite.leftout import LeftOut
from syncd.types import ValueMismatch, converter
from syncd.verify.history import VerifyRun, host_clock_offset, load_history
from syncd.verify.postgres_side import lock_holder

ENDPOINT_TIMEOUT_SECONDS = 2.0
from syncd.model import TO_POSTGRES, TO_SQLITE  # noqa: E402,F401 - which way a source replicates


@dataclass
class TableFacts:
    name: str
    state: str | None  # syncd's replication state; None: not registered
    reason: str | None
    rows_sqlite: int | None
    rows_postgres: int | None
    captured: bool  # capture triggers present and as this syncd installs them
    capture_note: str
    runs: list[VerifyRun] = field(default_factory=list)  # oldest first, in stretches (VerifyRun.count)
    # Changes to the table captured in SQLite and not applied in Postgres when both were
    # counted (Postgres first, then SQLite), as (rows they may add to SQLite's count, rows
    # they may take from it): distinct keys inserted (and keys moved to, as many as keys
    # moved from), distinct keys deleted. An UPDATE in place moves no count. None: unknown.
    in_flight: tuple[int, int] | None = (0, 0)
    # The difference the changes on their way make, exactly, where each of their keys was
    # looked up on both sides (SQLite's count less Postgres's: how many of those keys SQLite
    # holds, less how many Postgres holds in its counted snapshot); None: only bounded, by
    # `in_flight` (too many keys, or a key that could not be looked up).
    in_flight_difference: int | None = None
    copied_at: dt.datetime | None = None  # its rows last copied (a load, a reload, either way)
    definition: str | None = None  # its CREATE statement's fingerprint now (rehearsal.table_definitions)
    # When it was first copied into Postgres (the earliest of its loads recorded): before
    # that it was not replicated, so not verified either. None: not known.
    replicated_since: dt.datetime | None = None
    columns: list[str] | None = None  # its columns in the SQLite file now; None: not read

    @property
    def last_run(self) -> VerifyRun | None:
        return self.runs[-1] if self.runs else None

    @property
    def checked_before_copy(self) -> bool:
        """Its last verification began before its rows were last copied (a reload): it
        compared rows that are gone, so it is not the table's consistency now."""
        last = self.last_run
        return last is not None and self.copied_at is not None and last.started_at < self.copied_at

    @property
    def last_clean_run(self) -> VerifyRun | None:
        return next((r for r in reversed(self.runs) if r.clean), None)

    @property
    def counts_match(self) -> bool:
        """The same count, or one the changes on their way account for (an application
        writing while the counts are taken, one side after the other)."""
        if self.rows_sqlite is None or self.rows_postgres is None:
            return False
        if self.in_flight_difference is not None:  # a key on its way changed twice, or REPLACEd: no excuse
            return self.rows_sqlite - self.rows_postgres == self.in_flight_difference
        may_add, may_remove = self.in_flight or (0, 0)
        return -may_remove <= self.rows_sqlite - self.rows_postgres <= may_add


@dataclass
class Lag:
    seconds: float | None  # None: unknown
    source: str  # where the figure comes from
    pending_changes: int | None
    # Changes wait in the changelog and no daemon runs to apply them: never caught up,
    # whatever the figure (the daemon's last word may be seconds old).
    no_daemon: bool = False


@dataclass
class RehearsalFacts:
    """The latest `syncd rehearse` of a source (rehearsal.py)."""
    at: dt.datetime
    ok: bool
    rows: int | None
    cutover_downtime: float | None
    rollback_downtime: float | None
    problem: str | None
    # The tables its copy held, with their definitions' fingerprints (rehearsal.
    # table_definitions; None: not recorded, by an earlier syncd): a table created or
    # altered since was never cut over and rolled back as it is now.
    tables: dict[str, str | None] | None = None
    path: str | None = None  # the file its copy was made of (None: not recorded, by an earlier syncd)
    other_file: str | None = None  # that file, where it is not the source's file now


@dataclass
class SourceFacts:
    name: str
    path: str
    schema: str
    error: str | None = None  # the SQLite file could not be read
    unmeasured: bool = False  # its Postgres could not be reached: nothing of it measured (error says why)
    registered: bool = False  # syncd has this source in its bookkeeping
    streaming_since: dt.datetime | None = None
    applied_seq: int | None = None
    applied_at: dt.datetime | None = None
    lag_from: dt.datetime | None = None  # every change past the checkpoint was committed since (SourceRow.lag_from)
    lag: Lag = field(default_factory=lambda: Lag(None, "unknown", None))
    tables: list[TableFacts] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)  # views, virtual and shadow tables not migrated
    capture_suspended: str | None = None  # "<since> <why>" while capture is off to protect the disk
    suspensions: list[tuple[dt.datetime, str]] = field(default_factory=list)  # (resumed at, "<since> <why>")
    backup: BackupFacts | None = None
    parity: ParityFacts | None = None  # indexes, constraints, types, views in Postgres; orphans; lookup timings
    direction: str = TO_POSTGRES  # the cutover sets TO_SQLITE (the daemon's /status reports it)
    rollback_until: dt.datetime | None = None  # cut over: [cutover] keep_sqlite_days after the cutover
    way_back_ended: str | None = None  # cut over: why SQLite stopped following Postgres, once it has
    file_archived: bool = False  # the way back ended and the SQLite file is gone from its path, as it may be
    rehearsal: RehearsalFacts | None = None  # the latest `syncd rehearse`
    # The running daemon fails a step again and again: why, and since when (its endpoint's
    # word, or the note it leaves in Postgres, as `syncd status` reads it). None: it does not.
    daemon_failing: str | None = None
    # The application's database refuses its writes and no switch runs: a cutover or
    # rollback stopped before finishing left its freeze behind. What `syncd status` says of it.
    left_frozen: str | None = None
    # Tables the configuration leaves out that Postgres still holds (replicated before they
    # were left out, no longer followed since) -> their rows there.
    left_in_postgres: dict[str, int] = field(default_factory=dict)

    def dual_write_days(self, now: dt.datetime) -> float | None:
        if self.streaming_since is None:
            return None
        return (now - self.streaming_since).total_seconds() / 86400


@dataclass
class MigrationFacts:
    generated_at: dt.datetime
    config_path: str | None
    sources: list[SourceFacts]
    runs: list[VerifyRun]  # every verification recorded, oldest first, in stretches (VerifyRun.count)
    min_days: float
    warn_lag_seconds: float
    verify_max_age_seconds: float
    backup_glob: str | None
    backup_max_age_days: float
    max_query_ms: float = 50.0
    rehearsal_max_age_days: float = 30.0
    max_verify_gap_hours: float = 24.0  # a table left longer without a verification fails dual-write
    # Files a glob source matches that syncd does not replicate (discovery says why).
    not_picked_up: list[str] = field(default_factory=list)


def history_totals(runs: list[VerifyRun]) -> tuple[dt.datetime, int, int]:
    """(when the first run finished, runs, runs not clean) of a history in stretches."""
    return (min(r.began for r in runs), sum(r.count for r in runs), sum(r.count for r in runs if not r.clean))


def history_window(sources: list["SourceFacts"], now: dt.datetime, min_days: float) -> dt.datetime:
    """Where the dual-write window the checklist judges begins, at the earliest: [cutover]
    min_days back, or (no minimum) when the first source began to stream."""
    if min_days > 0:
        return now - dt.timedelta(days=min_days)
    return min((s.streaming_since for s in sources if s.streaming_since is not None),
               default=now - dt.timedelta(days=1))


class ReportError(Exception):
    """The report cannot be made (Postgres unreachable); the message is one line."""


class SourceNotMeasured(OSError):
    """Measuring one source failed in Postgres (a statement timeout, a dropped
    connection): the report cannot be made, and the one line says which source
    and which target database (its password hidden). An OSError, as the timeouts and
    dropped connections it mostly stands for are: every caller's handling holds
    (`syncd cutover`'s preflight among them)."""

    def __init__(self, source: str, dsn: str, cause: BaseException):
        super().__init__(f'measuring source "{source}" in {scrub(dsn)}: Postgres: {describe(cause)}')
        self.source = source


REPORT_CONNECTIONS = 4  # per target database: sources measured at once by `syncd report`


@dataclass
class _Database:
    """What the report reads of a target database once, not once per source."""
    bookkeeping: bool  # syncd's bookkeeping schema is there
    direction_column: bool  # sources.direction (an older bookkeeping's sources go to Postgres)
    rehearsals: bool  # the rehearsals table (an older bookkeeping has none)
    clock_offset: dt.timedelta  # host_clock_offset: Postgres's clock read on this host's


async def _database(pg: asyncpg.Connection, bk_schema: str) -> _Database:
    exists = await bookkeeping_exists(pg, bk_schema)
    rehearsals = f"{Bookkeeping(bk_schema, '').s}.rehearsals"
    return _Database(exists, exists and await _has_column(pg, bk_schema, "sources", "direction"),
                     exists and bool(await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", rehearsals)),
                     await host_clock_offset(pg))


class _SpeedTurns:
    """The report may measure several sources at once, but it times their lookups one
    source at a time, in the configuration's order: the budget of lookups ([cutover]
    speed_max_lookups, for the whole report) is spent on the same sources every run, and
    no source's timings run beside another's."""

    def __init__(self, n: int, budget: int, at_once: bool):
        self.left = budget
        self._done = [asyncio.Event() for _ in range(n)] if at_once else None

    def turn(self, i: int) -> summary.Turn | None:
        return _Turn(self, i) if self._done is not None else None

    async def wait(self, i: int) -> int:
        if self._done is not None and i:
            await self._done[i - 1].wait()
        return self.left

    def done(self, i: int, timed: int) -> None:
        self.left = max(0, self.left - timed)
        if self._done is not None:
            self._done[i].set()

    def abort(self) -> None:
        for done in self._done or []:
            done.set()

    async def finish(self, i: int, timed: int) -> None:
        """Source i is measured: its turn passes, if its lookups did not take it."""
        if self._done is None or not self._done[i].is_set():
            await self.wait(i)
            self.done(i, timed)


@dataclass
class _Turn:
    turns: _SpeedTurns
    i: int

    async def wait(self) -> int:
        return await self.turns.wait(self.i)

    def done(self, timed: int) -> None:
        self.turns.done(self.i, timed)


async def gather(settings: Settings, live: dict[str, dict] | None = None,
                 upgrade_bookkeeping: bool = True, connections: int = REPORT_CONNECTIONS,
                 peers: list[SourceSettings] | None = None) -> MigrationFacts:
    """Measure every source now. `live` is the daemon's per-source /status (the daemon
    passes its own); None asks the daemon's endpoint, if one answers. The daemon passes
    upgrade_bookkeeping=False: it completed the bookkeeping when it started, and the
    DDL's table locks would queue its own writes behind each page refresh. `connections`:
    how many sources of one target database are measured at once, each on a connection
    of its own (at most [postgres] max_connections). `peers`: every source configured,
    where `settings` holds only some (`--source`, a cutover's check): each backup is told
    apart by them all."""
    now = dt.datetime.now(dt.timezone.utc)
    status = live if live is not None else await asyncio.to_thread(_daemon_status, settings)
    conns: dict[str, list[asyncpg.Connection]] = {}  # target DSN -> its connections, the first kept for the history
    databases: dict[str, _Database] = {}
    unreachable: dict[str, str] = {}  # target DSN -> why it cannot be measured
    waiting: dict[str, collections.deque[int]] = {}  # target DSN -> its sources not yet measured, in order
    for i, source in enumerate(settings.sources):
        waiting.setdefault(settings.dsn_for(source), collections.deque()).append(i)
    several = len(waiting) > 1
    at_once = connections > 1
    turns = _SpeedTurns(len(settings.sources), settings.cutover.speed_max_lookups, at_once)
    measured: list[SourceFacts | None] = [None] * len(settings.sources)

    async def one(i: int, conn: asyncpg.Connection) -> None:
        source = settings.sources[i]
        try:
            facts = await _source(settings, source, conn, databases[settings.dsn_for(source)],
                                  status.get(source.name), now,
                                  parity_max_age=0.0 if upgrade_bookkeeping else summary.CACHE_SECONDS,
                                  budget=None if at_once else turns.left, turn=turns.turn(i))
        except (asyncpg.QueryCanceledError, asyncpg.ConnectionDoesNotExistError, TimeoutError, ConnectionError) as e:
            # Timed out (here or in Postgres) or cut off; a privilege refused or another
            # error (a fault of syncd's own among them) keeps its own line or traceback (cli.entry).
            turns.abort()
            raise SourceNotMeasured(source.name, settings.dsn_for(source), e) from e
        except BaseException:
            turns.abort()  # the report fails: no source waits any more for a turn that may never come
            raise
        measured[i] = facts
        await turns.finish(i, len(facts.parity.speed.lookups) if facts.parity and facts.parity.speed else 0)

    async def unmeasured(i: int, why: str) -> None:
        source = settings.sources[i]
        measured[i] = SourceFacts(name=source.name, path=str(source.path), schema=source.schema,
                                  error=f"its Postgres cannot be measured now: {why}", unmeasured=True)
        await turns.finish(i, 0)

    async def worker(dsn: str, conn: asyncpg.Connection) -> None:
        queue = waiting[dsn]
        while queue:
            await one(queue.popleft(), conn)

    try:
        for dsn, queue in waiting.items():
            try:
                first = await connect(dsn, settings.password(), settings.postgres)
            except PostgresUnavailable as e:
                if not several:
                    raise  # the only target: there is nothing to report
                unreachable[dsn] = str(e)  # the sources on the others are still measured
                continue
            conns[dsn] = [first]
            if upgrade_bookkeeping and await bookkeeping_exists(first, settings.postgres.bookkeeping_schema):
                # An earlier release's bookkeeping (the package upgraded, the daemon not
                # restarted): completed before anything is read from it.
                await ensure_bookkeeping(first, settings.postgres.bookkeeping_schema)
            databases[dsn] = await _database(first, settings.postgres.bookkeeping_schema)
            for _ in range(min(connections, settings.postgres.max_connections, len(queue)) - 1):
                try:
                    conns[dsn].append(await connect(dsn, settings.password(), settings.postgres))
                except PostgresUnavailable:
                    break  # measured on the connections it has
        if at_once:
            work = [worker(dsn, conn) for dsn, pool in conns.items() for conn in pool]
            work += [unmeasured(i, why) for dsn, why in unreachable.items() for i in waiting[dsn]]
            await _all_or_none(work)
        else:  # one source after another, in the configuration's order (the daemon's page)
            for i, source in enumerate(settings.sources):
                dsn = settings.dsn_for(source)
                await (unmeasured(i, unreachable[dsn]) if dsn in unreachable else one(i, conns[dsn][0]))
        sources = [facts for facts in measured if facts is not None]
        await asyncio.to_thread(_backups, settings, sources, now, peers or settings.sources)
        c = settings.cutover
        window_start = history_window(sources, now, c.min_days)
        runs: list[VerifyRun] = []
        for dsn, pool in conns.items():
            if databases[dsn].bookkeeping:
                names = [s.name for s in settings.sources if settings.dsn_for(s) == dsn]
                runs += await load_history(pool[0], settings.postgres.bookkeeping_schema, names, window_start, now,
                                           max_width=c.max_verify_gap_hours * 3600)
    finally:
        for pool in conns.values():
            for conn in pool:
                await close_quietly(conn)
    # In the order they compared the rows: a run that began earlier (waiting for changes in
    # flight, a long table) may finish after one begun later, whose finding is the newer.
    runs.sort(key=lambda r: (r.started_at, r.finished_at, r.id))
    by_table: dict[tuple[str, str], list[VerifyRun]] = {}
    for r in runs:
        by_table.setdefault((r.source, r.table_name), []).append(r)
    for s in sources:
        for t in s.tables:
            t.runs = by_table.get((s.name, t.name), [])
    return MigrationFacts(
        generated_at=now, config_path=str(settings.config_path) if settings.config_path else None,
        sources=sources, runs=runs, min_days=c.min_days, warn_lag_seconds=settings.status.warn_lag_seconds,
        verify_max_age_seconds=settings.status.verify_max_age_seconds, backup_glob=c.backup_glob,
        backup_max_age_days=c.backup_max_age_days, max_query_ms=c.max_query_ms,
        rehearsal_max_age_days=c.rehearsal_max_age_days,
        max_verify_gap_hours=c.max_verify_gap_hours,
        not_picked_up=list(settings.discovery_problems),
    )


async def _rehearsal(pg: asyncpg.Connection, bk: Bookkeeping, source: str) -> RehearsalFacts | None:
    r = await pg.fetchrow(f"""SELECT finished_at, ok, rows_verified, cutover_downtime_seconds,
                                     rollback_downtime_seconds, detail::text
                              FROM {bk.s}.rehearsals WHERE source = $1 ORDER BY finished_at DESC, id DESC LIMIT 1""",
                          source)
    if r is None:
        return None
    try:
        detail = json.loads(r[5] or "{}")
        problems = detail.get("problems") or []
        tables = detail.get("tables")
        tables = {str(t): (None if d is None else str(d)) for t, d in tables.items()} \
            if isinstance(tables, dict) else None
        path = detail.get("path")
        path = str(path) if path is not None else None
    except (ValueError, AttributeError, TypeError):
        problems, tables, path = [], None, None
    return RehearsalFacts(r[0], r[1], r[2], r[3], r[4], problems[0] if problems else None, tables, path)


async def _source(settings: Settings, source: SourceSettings, pg: asyncpg.Connection, db: _Database,
                  live: dict | None, now: dt.datetime, parity_max_age: float = 0.0,
                  budget: int | None = None, turn: summary.Turn | None = None) -> SourceFacts:
    facts = SourceFacts(name=source.name, path=str(source.path), schema=source.schema,
                        direction=(live or {}).get("direction") or TO_POSTGRES)
    bk_schema = settings.postgres.bookkeeping_schema
    rows = {}
    first_loads: dict[str, dt.datetime] = {}  # table -> when its first load recorded finished
    way_back = None  # after a cutover: reverse.position's measurement
    bk: Bookkeeping | None = None
    refused: dict[tuple[str, str | None], str] = {}  # schema parity objects Postgres refused: (name, marker) -> why
    if db.bookkeeping:
        bk = Bookkeeping(bk_schema, source.name)
        src = await bk.load_source(pg)
        if src is not None:
            facts.registered = True
            facts.streaming_since, facts.applied_seq, facts.applied_at, facts.lag_from = \
                src.streaming_since, src.applied_seq, src.applied_at, src.lag_from
            # Stamped by Postgres's clock (now()): read on this host's, as the runs are. Dual-write
            # since then, by a host clock ahead, counted days that had not passed.
            if facts.applied_at is not None:
                facts.applied_at += db.clock_offset
            if facts.streaming_since is not None:
                facts.streaming_since += db.clock_offset
            if db.direction_column:  # older bookkeeping: to Postgres
                facts.direction = await pg.fetchval(f"SELECT direction FROM {bk.s}.sources WHERE source = $1",
                                                    source.name) or facts.direction
            if facts.direction == TO_SQLITE:
                from syncd.reverse.position import position

                wb = await position(settings, source, pg)
                facts.rollback_until, facts.way_back_ended = wb.rollback_until, wb.retired
                way_back = wb
        rows = await bk.load_tables(pg)
        for r in await pg.fetch(f"SELECT detail FROM {bk.s}.events WHERE source = $1 AND kind = $2 ORDER BY id",
                                source.name, parity.FAILED_EVENT):
            try:
                d = json.loads(r[0])
                refused[(str(d["object"]), d.get("marker"))] = str(d["why"])  # the latest reason per definition
            except (ValueError, KeyError, TypeError):
                continue
        facts.suspensions = [(r[0] + db.clock_offset, r[1] or "") for r in await pg.fetch(
            f"SELECT at, detail FROM {bk.s}.events WHERE source = $1 AND kind = 'capture_suspended' ORDER BY at",
            source.name)]
        facts.rehearsal = await _rehearsal(pg, bk, source.name) if db.rehearsals else None
        if facts.rehearsal is not None:  # finished_at is Postgres's now(), as above
            facts.rehearsal.at += db.clock_offset
        if facts.rehearsal is not None and facts.rehearsal.path not in (None, str(source.path.resolve())):
            facts.rehearsal.other_file = facts.rehearsal.path  # the source named another file then
        first_loads = dict(await pg.fetch(
            f"SELECT table_name, min(at) FROM {bk.s}.events WHERE source = $1 AND kind = 'snapshot_finished' "
            "GROUP BY table_name", source.name))
    pg_tables = await ddl.read_tables(pg, source.schema)
    sticky = ddl.kept_types(pg_tables)
    retyped = await parity.retyped_columns(pg, bk_schema, source.name)
    # Postgres counted first, in one snapshot with its checkpoint; then SQLite, in one
    # snapshot with the changes it holds past that checkpoint (see TableFacts.in_flight).
    side = None
    held: dict[str, int] = {}  # table -> how many of its keys on their way Postgres holds (counted snapshot)
    # Held or paused tables, each with the position its queued changes start after: the
    # checkpoint moves past them with the other tables, their changes wait all the same.
    halted = {n: r.from_seq or 0 for n, r in rows.items() if r.state in (HELD, PAUSED)}
    for _try in range(COUNT_TRIES):  # again if syncd pruned past Postgres's count meanwhile (seldom)
        async with pg.transaction(isolation="repeatable_read", readonly=True):
            counted_at, pg_counts = await _pg_counts(pg, bk, source, sorted(pg_tables))
            try:
                side = await asyncio.to_thread(_sqlite_side, source, sticky, counted_at, retyped,
                                               settings.sqlite.read_busy_timeout_ms, halted)
            except SourceFileError as e:  # it names the file
                if facts.way_back_ended and not os.path.exists(source.path):  # out of reach: as gone, as the daemon has it
                    facts.file_archived = True  # retired: nothing of SQLite is judged any more, Postgres still is
                else:
                    facts.error = str(e)
                side = None
                break
            except (sqlite3.Error, OSError) as e:
                facts.error = left_mid_transaction(e, source.path) or f"cannot read SQLite file {source.path}: {e}"
                side = None
                break
            if not side.pruned_past:
                held = await _held_in_postgres(pg, source.schema, side)
                break
    names = sorted(set(rows) | (set(side.tables) if side else set()))
    # Copies and events are dated by Postgres's clock: read on this host's, as the runs are.
    offset = db.clock_offset
    first_loads = {name: at + offset for name, at in first_loads.items()}
    for name in names:
        row = rows.get(name)
        copied_at = row.snapshot_finished_at + offset if row and row.snapshot_finished_at else None
        if side is None and facts.file_archived:
            captured, note = False, "not looked at: the SQLite file is archived, the way back having ended"
        elif side is None:
            captured, note = False, "unknown: the SQLite file could not be read"  # facts.error says why
        else:
            captured, note = side.capture.get(name, (False, "not in the SQLite file"))
        unknown = side is None or side.pruned_past or side.long_backlog
        in_flight = None if unknown else side.in_flight.get(name, (0, 0))
        keys = None if unknown else side.keys_in_flight.get(name)
        facts.tables.append(TableFacts(
            name=name, state=row.state if row else None, reason=row.reason if row else None,
            rows_sqlite=side.tables.get(name) if side else None, rows_postgres=pg_counts.get(name),
            captured=captured, capture_note=note, in_flight=in_flight,
            in_flight_difference=keys[1] - held[name] if keys is not None and name in held else None,
            copied_at=copied_at,
            definition=side.definitions.get(name) if side else None,
            columns=list(side.specs[name].column_names) if side and name in side.specs else None,
            # The bookkeeping's load time too: bookkeeping older than the events has only that.
            replicated_since=min((t for t in (first_loads.get(name), copied_at) if t is not None), default=None),
        ))
    facts.left_out = side.left_out if side else []
    # Only syncd's own copies: a table the operator made there (as the left-out entry says to) is theirs.
    owned = await bk.owners(pg, source.schema) if bk is not None else {}
    facts.left_in_postgres = {lo.name: pg_counts[lo.name] for lo in facts.left_out
                              if lo.kind == leftout.EXCLUDED and lo.name in pg_counts
                              and owned.get(lo.name) == source.name}
    if facts.direction == TO_POSTGRES:  # not "the application will not find it in Postgres": it would, as it was
        facts.left_out = [dataclasses.replace(lo, todo="Postgres keeps a copy of it as it was when syncd stopped "
                                              "following it, which the application would read after the switch: "
                                              "drop the table in Postgres (or replicate it again)")
                          if lo.kind == leftout.EXCLUDED and lo.name in facts.left_in_postgres else lo
                          for lo in facts.left_out]
    if side is not None:
        # The daemon's page measures at most every CACHE_SECONDS; the report every time.
        facts.parity = await summary.gather(settings, source, pg, side.specs, side.views, max_age=parity_max_age,
                                            budget=budget, turn=turn)
        # The reasons given for the definition planned now (not for one SQLite has since changed).
        why: dict[str, str] = {}
        for i in facts.parity.items:
            if i.name is None:
                continue
            reason = refused.get((i.name, i.marker(DUAL_WRITE, source.name))) or refused.get((i.name, None))
            if reason is not None:
                why[i.name] = reason
        facts.parity = dataclasses.replace(  # not the cached measurement's own object
            facts.parity, streaming=frozenset(t.name for t in facts.tables if t.state == STREAMING), refused=why,
            cut_over=facts.direction == TO_SQLITE)
        if facts.parity.error is None:  # views are in the plan: carried at cutover, or listed with why not
            facts.left_out = [lo for lo in facts.left_out if lo.kind != "view"] + \
                summary.left_out_entries(facts.parity.items) + facts.parity.missing_entries()
    facts.capture_suspended = side.suspended if side else None
    if facts.registered:
        facts.left_frozen = await _left_frozen(pg, bk, source, facts, side)
    facts.lag = _lag(live, facts, side.pending if side else None, now, way_back, unanswered(settings.metrics),
                     await _held_since(pg, bk, rows, side, offset) if live is None and side is not None else {})
    if live is None and facts.registered and (facts.lag.pending_changes or 0) > 0:
        # No endpoint answered: a daemon may run without one. Its source lock says (either way:
        # after a cutover it is the daemon that applies the changes waiting on the way back).
        key = await source_key(pg, bk_schema, source.name, assign=False)
        facts.lag.no_daemon = await lock_holder(pg, key) is None
    if live is not None:
        facts.daemon_failing = (live.get("detail") or "no reason given") if live.get("health") == FAILING else None
    elif facts.registered:
        facts.daemon_failing = await _failing_note(pg, bk_schema, source.name)
    return facts


SQLITE_LEFT_FROZEN = ("the SQLite file refuses the application's writes, left frozen by a cutover or rollback that "
                      "stopped before finishing (Postgres is not the application's database): a running daemon "
                      "undoes it, as does `syncd cutover` or `syncd rollback` run again")
POSTGRES_LEFT_FROZEN = ("Postgres refuses the application's writes, left frozen by a rollback that stopped before "
                        "finishing (the SQLite file is not the application's database either): a running daemon "
                        "undoes it, as does `syncd rollback` run again")


async def _left_frozen(pg: asyncpg.Connection, bk: Bookkeeping, source: SourceSettings, facts: SourceFacts,
                       side: "_SqliteSide | None") -> str | None:
    """SQLITE_LEFT_FROZEN or POSTGRES_LEFT_FROZEN where the application's database refuses its
    writes with no switch running (as `syncd status` judges it), else None."""
    if facts.direction == TO_POSTGRES:
        if side is None or side.frozen is None:
            return None
        what = SQLITE_LEFT_FROZEN
    else:  # cut over: a rollback's record open with its freeze on Postgres's tables
        if not await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{bk.s}.switches") or not await pg.fetchval(
                f"SELECT 1 FROM {bk.s}.switches WHERE source = $1 AND kind = 'rollback' "
                "AND state IN ('started', 'frozen')", source.name):
            return None
        from syncd.reverse import capture as way_back  # a rare path: a rollback open

        if not await way_back.frozen_tables(pg, await way_back.names_of(pg, bk.schema, source.name), source.schema):
            return None
        what = POSTGRES_LEFT_FROZEN
    from syncd.cutover import switch_holder  # a switch running now holds its freeze on purpose

    return what if await switch_holder(pg, await source_key(pg, bk.schema, source.name, assign=False)) is None \
        else None


async def _failing_note(pg: asyncpg.Connection, bk_schema: str, name: str) -> str | None:
    """The failing note (health_note.py) of the daemon holding the source's lock now: one
    written since the lock's connection began (a note a daemon killed while failing left
    is not today's). Read as an earlier bookkeeping may lack its columns."""
    r = await pg.fetchrow(f"SELECT to_jsonb(s) ->> 'failing', (to_jsonb(s) ->> 'failing_since')::timestamptz, "
                          f"(to_jsonb(s) ->> 'failing_at')::timestamptz FROM {quote_pg_ident(bk_schema)}.sources s "
                          "WHERE source = $1", name)
    if r is None or r[0] is None or r[2] is None:
        return None
    key = await source_key(pg, bk_schema, name, assign=False)
    began = await pg.fetchval(
        """SELECT a.backend_start FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.classid = $1::oid AND l.objid = $2::oid AND l.objsubid = 2
             AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
        LOCK_CLASS, key)
    if began is None or r[2] < began:
        return None
    return r[0] + ("" if r[1] is None else f" (since {r[1].astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC)")


async def _all_or_none(work: list) -> None:
    """Run the coroutines at once; the first to fail cancels the others and is raised."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _backups(settings: Settings, sources: list[SourceFacts], now: dt.datetime,
             peers: list[SourceSettings]) -> None:
    """Each source's backups, told apart by what the files hold (every configured
    source's live file, `peers`, read once)."""
    if not settings.cutover.backup_glob:
        return
    base = settings.config_path.parent if settings.config_path else Path.cwd()
    live = {s.name: backups.live_identity(s.path, settings.sqlite.read_busy_timeout_ms) for s in peers}
    files = {s.name: s.path for s in peers}
    for facts, source in zip(sources, settings.sources):
        facts.backup = backups.find_backups(settings.cutover.backup_glob, source.name, base, now, source.path, live,
                                            files)


async def _has_column(pg: asyncpg.Connection, schema: str, table: str, column: str) -> bool:
    return bool(await pg.fetchval("SELECT 1 FROM information_schema.columns WHERE table_schema = $1 "
                                  "AND table_name = $2 AND column_name = $3", schema, table, column))


@dataclass
class _SqliteSide:
    tables: dict[str, int]  # every table syncd is configured to replicate (refused too) -> rows
    capture: dict[str, tuple[bool, str]]
    pending: int | None  # changelog entries after the checkpoint
    left_out: list[LeftOut]
    suspended: str | None
    specs: dict[str, TableSpec] = field(default_factory=dict)  # the replicated tables
    views: list[str] = field(default_factory=list)  # the views the source's configuration wants
    in_flight: dict[str, tuple[int, int]] = field(default_factory=dict)  # see TableFacts.in_flight
    pruned_past: bool = False  # entries after the checkpoint were pruned meanwhile: in_flight unknown
    # table -> (its distinct keys on their way, as stored; how many of them it holds now),
    # read with its count; absent for a table with more than KEYS_LOOKED_UP of them.
    keys_in_flight: dict[str, tuple[list[tuple], int]] = field(default_factory=dict)
    definitions: dict[str, str] = field(default_factory=dict)  # table -> rehearsal.table_definitions
    halted_queued: dict[str, int] = field(default_factory=dict)  # held or paused table -> its changes queued
    long_backlog: bool = False  # more than IN_FLIGHT_ENTRIES after the checkpoint: in_flight unknown
    frozen: str | None = None  # the freeze's message while the file refuses the application's writes


COUNT_TRIES = 3
KEYS_LOOKED_UP = 10_000  # a table's keys on their way looked up one by one on both sides, at most
IN_FLIGHT_ENTRIES = 500_000  # changelog entries past the checkpoint walked for the changes on their way, at most
WINDOWED_COUNT_TRIES = 3  # a table counted a window at a time while changes were captured: counted again this often


async def _pg_counts(pg: asyncpg.Connection, bk: Bookkeeping | None, source: SourceSettings,
                     tables: list[str]) -> tuple[int, dict[str, int]]:
    """(the forward checkpoint, each table's row count), inside the caller's one
    repeatable-read snapshot."""
    src = await bk.load_source(pg) if bk is not None else None
    applied = src.applied_seq if src is not None else 0
    counts = {n: await pg.fetchval(f"SELECT count(*) FROM {qualified(source.schema, n)}") for n in tables}
    return applied, counts


async def _held_in_postgres(pg: asyncpg.Connection, schema: str, side: "_SqliteSide") -> dict[str, int]:
    """For each table whose keys on their way SQLite listed (keys_in_flight), how many of
    them Postgres holds, in the caller's snapshot (the one counted). A table whose keys
    cannot be looked up (a value its key type refuses, a key column Postgres retyped) is
    left out: its count is then only bounded."""
    out: dict[str, int] = {}
    for name, (keys, _held) in side.keys_in_flight.items():
        spec = side.specs.get(name)
        if spec is None:
            continue
        if not keys:
            out[name] = 0
            continue
        types = [spec.column(k).pgtype for k in spec.key]
        try:
            convs = [converter(t) for t in types]
            columns = [[f(k[i]) for k in keys] for i, f in enumerate(convs)]
            arrays = ", ".join(f"${i + 1}::{t.value}[]" for i, t in enumerate(types))
            names = ", ".join(f"k{i}" for i in range(len(types)))
            on = " AND ".join(f"t.{quote_pg_ident(k)} = u.k{i}" for i, k in enumerate(spec.key))
            async with pg.transaction():  # a savepoint: a lookup that fails leaves the snapshot usable
                out[name] = await pg.fetchval(
                    f"SELECT count(*) FROM {qualified(schema, name)} t JOIN unnest({arrays}) AS u({names}) ON {on}",
                    *columns)
        except (ValueMismatch, asyncpg.PostgresError, asyncpg.DataError, TypeError, ValueError):
            continue
    return out


def _defaults_left_out(specs: dict[str, TableSpec]) -> list[LeftOut]:
    """Column defaults syncd does not carry: after the switch the application's INSERTs
    that leave such a column out store NULL in Postgres where SQLite filled a value."""
    out = []
    for name, spec in sorted(specs.items()):
        for col in spec.columns:
            note = ddl.default_note(col)
            if note is not None:
                out.append(LeftOut(f"{name}.{col.name}", "default", f"the column's {note}",
                                   "set the column's DEFAULT in Postgres yourself, or have the application write "
                                   "the value: an INSERT leaving it out stores NULL"))
    return out


def _sqlite_side(source: SourceSettings, sticky: dict, applied_seq: int, retyped: dict | None,
                 busy_timeout_ms: int, halted: dict[str, int] | None = None) -> _SqliteSide:
    """What the report measures in the SQLite file; its application's lock is waited for
    `busy_timeout_ms` at most ([sqlite] read_busy_timeout_ms), then sqlite3.OperationalError."""
    problem = file_problem(source.path)
    if problem is not None:
        raise problem
    conn = open_readonly(source.path, busy_timeout_ms)
    try:
        schema = introspect(conn, source, sticky, retyped)
        state = capture.read_state(conn)
        tables, captured, in_flight, keys_in_flight = {}, {}, {}, {}
        pruned_past = bool(state.key_slots) and (state.pruned_seq or 0) > applied_seq + 1
        # A long backlog (Postgres away, the daemon stopped) is not walked inside a table's
        # read, which in rollback-journal mode holds the application's writers back for as
        # long as it runs: the changes on their way are then unknown, as when pruned past.
        long_backlog = bool(state.key_slots) and state.max_seq - applied_seq > IN_FLIGHT_ENTRIES
        wal = conn.execute("PRAGMA main.journal_mode").fetchone()[0].lower() == "wal"
        for name in list(schema.tables) + list(schema.refused):
            follows = name in state.registry and state.key_slots and not pruned_past and not long_backlog
            # Its count and its changes in flight from one snapshot, one short read
            # transaction per table. In rollback-journal mode, where a read holds the
            # application's writers back for as long as it runs, the rows are counted
            # before it a window at a time (reader.count_rows), each window its own read:
            # that count is the snapshot's where the changelog's end has not moved since
            # (no change captured meanwhile); one written all through is counted in one read.
            counted, top = None, 0
            for _ in range(0 if wal else WINDOWED_COUNT_TRIES if follows else 1):
                top = reader.max_seq(conn) if follows else 0
                counted = reader.count_rows(conn, name)
                if not follows or reader.max_seq(conn) == top:
                    break
            else:
                # Written all through its counts (or a WAL file): counted in the read below, one
                # snapshot with its changes in flight, as a count torn by deletes in windows
                # already counted could cancel a difference the changes in flight then excuse.
                counted = None
            conn.execute("BEGIN")
            try:
                tables[name] = counted if counted is not None else \
                    conn.execute(f"SELECT count(*) FROM main.{quote_ident(name)}").fetchone()[0]
                if follows:
                    in_flight[name] = _in_flight(conn, *state.registry[name], applied_seq)
                    if name in schema.tables and (counted is None or reader.max_seq(conn) == top):
                        keys = _keys_in_flight(conn, schema.tables[name], state.registry[name][0], applied_seq)
                        if keys is not None:
                            keys_in_flight[name] = keys
            finally:
                conn.execute("COMMIT")
        for name, spec in schema.tables.items():
            tid = state.tid_of(name)
            if tid is None:
                captured[name] = (False, "no capture triggers: the table is not registered in the SQLite file")
            elif state.triggers_match(tid, spec):
                captured[name] = (True, "capture triggers installed")
            else:
                captured[name] = (False, "capture triggers missing or not the ones this syncd version installs")
        for name, refusal in schema.refused.items():
            captured[name] = (False, f"not captured: refused ({refusal.reason})")
        pending, queued, names = None, {}, {}
        if state.key_slots:
            pending = reader.entries_after(conn, applied_seq)
            # a held or paused table's changes queued behind the checkpoint: pending all the same
            names = {state.tid_of(n): n for n in (halted or {}) if state.tid_of(n) is not None}
            queued = reader.queued_behind(conn, {tid: halted[n] for tid, n in names.items()}, applied_seq)
            pending += sum(queued.values())
        left_out = sorted(schema.left_out.values(), key=lambda lo: lo.name) + _defaults_left_out(schema.tables)
        left_out = [dataclasses.replace(lo, rows=leftout.count_rows(conn, lo.name)) if lo.kind == leftout.EXCLUDED
                    else lo for lo in left_out]  # how much the operator chose to leave behind, said as measured
        return _SqliteSide(tables, captured, pending, left_out,
                           disk_guard.suspended(conn), dict(schema.tables),
                           [n for n, lo in schema.left_out.items() if lo.kind == "view"], in_flight, pruned_past,
                           keys_in_flight, table_definitions(conn),
                           {names[tid]: n for tid, n in queued.items() if n}, long_backlog, freeze.frozen(conn))
    finally:
        conn.close()


def _in_flight(conn: sqlite3.Connection, tid: int, key: tuple, applied_seq: int) -> tuple[int, int]:
    """TableFacts.in_flight of the table `tid` from its changelog entries after `applied_seq`."""
    slots = ", ".join(capture.slot(i) for i in range(max(1, len(key))))
    by_op = dict(conn.execute(
        f"SELECT op, count(*) FROM (SELECT DISTINCT op, {slots} FROM main.{quote_ident(capture.CHANGELOG)} "
        "WHERE tid = ? AND seq > ?) GROUP BY op", (tid, applied_seq)).fetchall())
    inserted, updated, deleted = (by_op.get(op, 0) for op in (capture.OP_INSERT, capture.OP_UPDATE, capture.OP_DELETE))
    return inserted + min(updated, deleted), deleted


def _keys_in_flight(conn: sqlite3.Connection, spec: TableSpec, tid: int,
                    applied_seq: int) -> tuple[list[tuple], int] | None:
    """The distinct keys of table `tid`'s changes after `applied_seq` (as the changelog
    stores them) and how many of them the table holds now; None past KEYS_LOOKED_UP keys.
    Inside the caller's read transaction, the one its count is taken in."""
    slots = [capture.slot(i) for i in range(len(spec.key))]
    on = " AND ".join(f"s.{spec.sqlite_ref(k)} = c.{slot}" for k, slot in zip(spec.key, slots))
    rows = conn.execute(
        f"SELECT {', '.join(f'c.{slot}' for slot in slots)}, EXISTS (SELECT 1 FROM main.{quote_ident(spec.name)} s "
        f"WHERE {on}) FROM (SELECT DISTINCT {', '.join(slots)} FROM main.{quote_ident(capture.CHANGELOG)} "
        f"WHERE tid = ? AND seq > ? LIMIT {KEYS_LOOKED_UP + 1}) c", (tid, applied_seq)).fetchall()
    if len(rows) > KEYS_LOOKED_UP:
        return None
    return [tuple(r[:-1]) for r in rows], sum(r[-1] for r in rows)


def _daemon_status(settings: Settings) -> dict[str, dict]:
    """Per-source status from the running daemon's endpoint, or {} if none answers."""
    status = fetch_status(settings.metrics, ENDPOINT_TIMEOUT_SECONDS)
    return own_sources(status.get("sources") or {}, settings.sources) if isinstance(status, dict) else {}


async def _held_since(pg: asyncpg.Connection, bk: Bookkeeping | None, rows: dict, side: "_SqliteSide",
                      offset: dt.timedelta) -> dict[str, dt.datetime]:
    """Each held table with changes queued -> a time its oldest queued change existed by
    (the one Postgres refused: it was there when the table was held, and at each later
    save of the table's row), on this host's clock."""
    held = [n for n in side.halted_queued if rows[n].state == HELD]
    if bk is None or not held:
        return {}
    events = dict(await pg.fetch(f"SELECT table_name, max(at) FROM {bk.s}.events WHERE source = $1 "
                                 "AND kind = 'held' AND table_name = ANY($2::text[]) GROUP BY table_name",
                                 bk.source, held))
    return {n: min(t for t in (events.get(n), rows[n].updated_at) if t is not None) + offset for n in held}


def _lag(live: dict | None, facts: SourceFacts, pending: int | None, now: dt.datetime, way_back=None,
         silent: str = "no daemon endpoint answered", held_since: dict[str, dt.datetime] | None = None) -> Lag:
    if live is not None and live.get("lag_seconds") is not None:
        # Pending as counted in the file now (as `syncd status` counts it), else the daemon's figure.
        return Lag(float(live["lag_seconds"]), f"the running daemon ({live.get('health', '?')})",
                   pending if pending is not None else live.get("pending_changes"))
    if way_back is not None and way_back.copies_owed:
        return Lag(None, f"the SQLite file is an older copy than the way back had written into (it lacks "
                   f"changes Postgres has let go of); its {way_back.copies_owed} table(s) are copied again from "
                   f"Postgres by the daemon ({silent})", None)
    if way_back is not None:  # cut over: the way back's own measurement (reverse.position)
        return Lag(way_back.lag_seconds, "computed in Postgres: the age of the oldest change SQLite has not "
                   f"applied yet ({silent})", way_back.pending)
    if facts.error is not None:  # the file could not be read (locked, say): its changelog was not seen
        return Lag(None, "unknown (the SQLite file could not be read)", None)
    if pending is None:
        return Lag(None, "unknown (no changelog in the SQLite file)", None)
    unloaded = [t.name for t in facts.tables if t.state in ON_THE_WAY]
    if unloaded:  # a copy not finished (a daemon killed mid-load, say): rows no changelog entry counts
        return Lag(None, f"unknown: {len(unloaded)} table(s) not copied in full yet ({', '.join(unloaded)}), "
                   f"Postgres lacks rows the changelog does not count ({pending} change(s) pending; {silent})",
                   pending)
    if pending == 0:
        return Lag(0.0, f"computed: every captured change is applied ({silent})", 0)
    if held_since:
        # A held table's queued change is older than the checkpoint's bound says: its age is
        # known from below only, by when the table was held (or its row saved since).
        name, since = min(held_since.items(), key=lambda kv: kv[1])
        seconds = (now - since).total_seconds()
        held_age = (f"the age of held table \"{name}\"'s oldest queued change (at least: queued since "
                    f"{since.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC or earlier)")
        if facts.lag_from is not None and (now - facts.lag_from).total_seconds() > seconds:
            # The other tables' changes are bounded from above only: the larger figure is said as such.
            return Lag((now - facts.lag_from).total_seconds(),
                       f"computed: the larger of {held_age} and the time since Postgres last held every other "
                       f"captured change (at most that) ({pending} change(s) pending; {silent})", pending)
        return Lag(seconds, f"computed: at least {held_age} ({pending} change(s) pending; {silent})", pending)
    if facts.lag_from is None:
        return Lag(None, f"unknown: {pending} change(s) pending and the source is not registered", pending)
    # The oldest pending change was committed after the checkpoint last covered the whole
    # changelog, so the time since then bounds its age from above. The last apply is no
    # such bound: a daemon stopped part-way through a backlog leaves older changes behind.
    return Lag((now - facts.lag_from).total_seconds(),
               f"computed: at most the time since Postgres last held every captured change ({pending} change(s) "
               f"pending; {silent})", pending)
