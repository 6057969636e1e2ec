"""Verify one source: every table, on connections of its own (no advisory lock, so it
runs beside the daemon's pipeline), with each table's result kept in the history."""

from __future__ import annotations

import asyncio
import logging
import shlex
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import asyncpg

from syncd.config import Settings, SourceSettings
from syncd.identifiers import as_named, pg_name_problem, qualified
from syncd.model import TableSpec
from syncd.postgres import bookkeeping as bk
from syncd.postgres import ddl
from syncd.postgres.bookkeeping import (Bookkeeping, SourceRow, TableRow, bookkeeping_exists, ensure_bookkeeping,
                                       source_key)
from syncd.postgres.connect import CannotConnect, PostgresUnavailable, close_quietly, connect, describe, postgres_lost
from syncd.postgres.target import UnsupportedTarget, check_target
from syncd.sqlite import capture, leftout
from syncd.sqlite.audit import format_key
from syncd.sqlite.capture import CaptureState, LockTimeout
from syncd.sqlite.connection import SourceFileError, SqliteWorker, is_busy
from syncd.parity.apply import retyped_columns
from syncd.sqlite.introspect import introspect, schema_version
from syncd.verify import history, repair, sqlite_side
from syncd.verify.keyspace import key_space
from syncd.verify.postgres_side import lock_holder, stores_utf8
from syncd.verify.result import DIFFERENT, EXTRA, MISSING, Difference, SourceVerifyResult, TableVerifyResult
from syncd.verify.table import TableCheck
from syncd.model import TO_POSTGRES, TO_SQLITE
from syncd.reverse import capture as reverse_capture
from syncd.reverse import evidence as way_back
from syncd.reverse import tables as reverse_tables
from syncd.reverse import values as reverse_values
from syncd.reverse.capture import Names

log = logging.getLogger("syncd.verify")

DEFAULT_WAIT_SECONDS = 30.0
BUSY_RETRY_SECONDS = 120.0  # how long a read may be starved by application writers before verify gives up

_STATE_TEXT = {
    bk.PENDING: "waiting for its initial snapshot",
    bk.LOADING: "its initial snapshot is in progress",
    bk.CATCHUP: "snapshot done; applying the changes queued meanwhile",
}
# The same states with no daemon running the source (stopped, killed, crashed): nothing is
# under way, and the user is told what takes it up again.
_STOPPED_TEXT = {
    bk.PENDING: "waiting for its initial snapshot; no daemon runs the source (`syncd run` loads it)",
    bk.LOADING: "its initial snapshot stopped part-way: no daemon runs the source (`syncd run` resumes it)",
    bk.CATCHUP: "snapshot done; the changes queued meanwhile wait: no daemon runs the source (`syncd run` applies "
                "them)",
}
# Cut over, a table is on its way only while the way back copies it again from Postgres.
_WAY_BACK_TEXT = {bk.LOADING: "being copied again from Postgres (by the way back)"}
_WAY_BACK_STOPPED_TEXT = {bk.LOADING: "its copy from Postgres stopped part-way: no daemon runs the source "
                                      "(`syncd run`, or `syncd verify --repair` with a --wait long enough for the "
                                      "table, copies it again from its first row)"}


class VerifyError(Exception):
    """The source could not be checked; the message is one line."""


class NoSuchTable(VerifyError):
    """None of the tables asked for is the source's."""


NOT_TAKEN_UP = ("made in Postgres after the cutover, and SQLite does not follow it yet: none of its rows are in "
                "SQLite (the daemon takes it up within seconds once it runs)")


@dataclass
class TablePlan:
    name: str
    spec: TableSpec | None
    tid: int | None
    row: TableRow | None
    reason: str | None  # None: compare it
    schema_version: int = 0  # SQLite's, when the table's shape was read
    rows_sqlite: int | None = None  # its rows, for a table with no spec (left out, holding data)
    excluded: bool = False  # copied before, left out by the configuration now: no check of it is recorded
    pg_computed: frozenset[str] = frozenset()  # columns Postgres computes itself (GENERATED ... STORED)

    @property
    def state(self) -> str | None:
        return self.row.state if self.row else None


class _Session:
    """The verifier's own handles on one source."""

    def __init__(self, settings: Settings, source: SourceSettings, connection: asyncpg.Connection | None = None):
        self.settings = settings
        self.source = source
        self.bk = Bookkeeping(settings.postgres.bookkeeping_schema, source.name)
        self.worker = SqliteWorker(source.path, f"{source.name}-verify", settings.sqlite.read_busy_timeout_ms)
        self.pg: asyncpg.Connection | None = connection
        self._own_connection = connection is None  # the daemon lends one of its pool's
        self.has_bookkeeping = False
        self.utf8 = False
        self.direction = TO_POSTGRES  # TO_SQLITE once cut over: SQLite follows Postgres then

    async def open(self) -> None:
        await self.worker.open()  # first: a missing file is the clearer message
        if self.pg is None:
            self.pg = await connect(self.settings.dsn_for(self.source), self.settings.password(),
                                    self.settings.postgres)
        await check_target(self.pg)
        self.has_bookkeeping = await bookkeeping_exists(self.pg, self.bk.schema)
        if self.has_bookkeeping:
            await ensure_bookkeeping(self.pg, self.bk.schema)  # an older install gains the newer columns
            self.direction = await self.pg.fetchval(f"SELECT direction FROM {self.bk.s}.sources WHERE source = $1",
                                                    self.source.name) or TO_POSTGRES
        self.bk.key = await source_key(self.pg, self.bk.schema, self.source.name, assign=False)
        self.utf8 = await stores_utf8(self.pg)

    async def close(self) -> None:
        if self._own_connection:
            await close_quietly(self.pg)
        await self.worker.close()
        self.worker.shutdown()

    async def run(self, fn, *args):
        """Run fn on the SQLite thread. Reads only: a busy file (in rollback-journal
        mode a stream of application commits can starve a new reader past its busy
        timeout) is waited out, as the daemon's pipeline does."""
        deadline = time.monotonic() + BUSY_RETRY_SECONDS
        delay = 0.02
        while True:
            try:
                return await self.worker.run(fn, *args)
            except sqlite3.OperationalError as e:
                if not is_busy(e) or time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)


async def verify_source(settings: Settings, source: SourceSettings, tables: list[str] | None = None, *,
                        repair: bool = False, wait_seconds: float = DEFAULT_WAIT_SECONDS,
                        record: bool = True, in_daemon: bool = False,
                        connection: asyncpg.Connection | None = None, others_ok: bool = False,
                        replaying: Callable[[], None] | None = None) -> SourceVerifyResult:
    """Compare every replicated table of `source` (or only `tables`) between SQLite
    and Postgres, record each table's result in syncd.verify_runs, and return them.

    With `repair`, differences found are replayed through the stream (see
    verify/repair.py) and the affected tables verified again; the run that found them
    keeps its counts and records how many rows were repaired. `in_daemon`: the caller
    is the daemon running this source, whose own pipeline applies the replay (none is
    started here). Never raises for an unreachable Postgres or a missing file: the
    result's `error` says what went wrong, in one line. `others_ok`: of `tables`, those
    the source does not have are another source's (`syncd verify --table` without --source);
    result.no_such_table says when it has none of them. `replaying` is called once a repair's
    replay is queued, before waiting for the stream to apply it."""
    result = SourceVerifyResult(source=source.name, path=str(source.path), schema=source.schema)
    s = _Session(settings, source, connection)
    try:
        await s.open()
        result.direction = s.direction
        plans = await _plan(s, tables, others_ok)
        if s.direction == TO_SQLITE and s.has_bookkeeping:
            # [cutover] keep_sqlite_days has passed: the file is kept as it was then, and the
            # application writes Postgres alone. Nothing is to be equal any more: comparing
            # would record consistency errors for a migration that is done.
            gen = await reverse_capture.generation(
                s.pg, await reverse_capture.names_of(s.pg, s.bk.schema, source.name))
            if gen is not None and gen.retired_at is not None:
                result.way_back_ended = gen.retired_reason or "the rollback window is over"
                result.not_compared = [p.name for p in plans]
                return result
        if in_daemon:
            plans = await _followed(s, plans)
        run_ids: dict[str, int] = {}
        for plan in plans:
            tr = await _check(s, plan, wait_seconds)
            if record and s.has_bookkeeping and not plan.excluded:  # not replicated by choice: no consistency error
                run_ids[tr.table] = await history.record(s.pg, s.bk.schema, tr, s.direction == TO_SQLITE)
            result.tables.append(tr)
        if repair:
            await _repair(s, result, plans, run_ids, wait_seconds, record, in_daemon, replaying)
    except NoSuchTable as e:
        result.error, result.no_such_table = str(e), True
    except (SourceFileError, PostgresUnavailable, UnsupportedTarget, VerifyError) as e:
        result.error = str(e)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as e:
        result.error = postgres_lost(e) or f"Postgres: {describe(e)}"  # no answer in time: what was waited for
    except (sqlite3.Error, LockTimeout) as e:
        result.error = f"SQLite file {source.path}: {e}"
    except Exception as e:  # a check that failed must say so, not take its caller down
        log.exception("verify failed", extra={"source": source.name, "event": "verify_failed"})
        result.error = f"internal error: {type(e).__name__}: {e}"
    finally:
        await s.close()
    return result


# --- which tables, and can they be compared ---------------------------------------------


async def _followed(s: _Session, plans: list[TablePlan]) -> list[TablePlan]:
    """The daemon's own check: a table it cannot compare while the application's schema
    has moved past the one the daemon follows (a table just created, rebuilt or dropped)
    waits for the daemon to follow it, within a poll, and then for its rows to be copied
    (pending, loading, catching up: on its way, nothing wrong): recorded now, it would be
    a consistency error in the window `syncd report` judges, for a table the daemon was
    about to take up. Checked at a later interval; `syncd verify` by hand records it."""
    if s.direction != TO_POSTGRES or not s.has_bookkeeping:
        return plans
    plans = [p for p in plans if p.reason is None or p.state not in bk.ON_THE_WAY]
    followed = await s.pg.fetchval(f"SELECT schema_version FROM {s.bk.s}.sources WHERE source = $1", s.source.name)
    if followed is None:
        return plans
    return [p for p in plans if p.reason is None or p.schema_version == followed]


async def _plan(s: _Session, only: list[str] | None, others_ok: bool = False) -> list[TablePlan]:
    assert s.pg is not None
    state: CaptureState = await s.run(capture.read_state)
    pg_tables = await ddl.read_tables(s.pg, s.source.schema)
    sticky = ddl.kept_types(pg_tables)
    retyped = await retyped_columns(s.pg, s.settings.postgres.bookkeeping_schema, s.source.name)
    schema = await s.run(introspect, s.source, sticky, retyped)
    src: SourceRow | None = None
    rows: dict[str, TableRow] = {}
    if s.has_bookkeeping:
        src = await s.bk.load_source(s.pg)
        rows = await s.bk.load_tables(s.pg)
    put_back = await _put_back(s, state, src)
    # Virtual tables storing rows of their own (FTS5 without content=, R*Tree) cannot be
    # replicated: their rows are nowhere in Postgres, so the source is not equal.
    holding = {n: lo for n, lo in schema.left_out.items() if lo.holds_data and lo.rows != 0}
    # Cut over: a table the application made in Postgres that the way back has not taken
    # up yet has rows SQLite lacks, which comparing SQLite's tables would not show.
    late = (set(await reverse_tables.not_taken_up(s.pg, s.source, s.bk))
            if s.has_bookkeeping and s.direction == TO_SQLITE else set())
    names = sorted(set(schema.tables) | set(schema.refused) | set(rows) | set(holding) | late)
    if only:
        only = [as_named(n, [*names, *schema.left_out]) for n in only]
        unknown = [n for n in only if n not in names]
        if unknown and not (others_ok and len(unknown) < len(only)):
            lo = schema.left_out.get(unknown[0])
            if lo is not None:  # in the file, and not replicated: say why, not that it is not there
                raise NoSuchTable(f"table {unknown[0]!r} of source {s.source.name!r} is not replicated: "
                                  f"{lo.describe()}")
            raise NoSuchTable(f"no table {unknown[0]!r} in source {s.source.name!r} "
                              "(neither in the SQLite file nor in syncd's bookkeeping)")
        names = [n for n in names if n in only]
    # A table on its way (loading, say) is only under way while a daemon runs the source.
    running = (not any(r.state in _STATE_TEXT for r in rows.values())
               or await lock_holder(s.pg, s.bk.key) is not None)
    plans = []
    for name in names:
        spec, row = schema.tables.get(name), rows.get(name)
        tid = state.tid_of(name)
        if name in late and spec is None:
            plans.append(TablePlan(name, None, tid, row, NOT_TAKEN_UP, schema.version, 0))  # none in SQLite
            continue
        if name in holding and spec is None:
            lo = holding[name]
            why = f"not replicated: {lo.describe()} (then exclude it from the source)"
            plans.append(TablePlan(name, None, tid, row, why, schema.version, lo.rows))
            continue
        excluded = name in schema.left_out and schema.left_out[name].kind == leftout.EXCLUDED
        if spec is None and row is not None and excluded:
            # Copied before, left out by the configuration now: still in SQLite, no longer kept current.
            why = (f"not replicated any more: {schema.left_out[name].why}; its rows in Postgres are no longer "
                   "kept current (the daemon forgets the table once it runs with this configuration)")
            plans.append(TablePlan(name, None, tid, row, why, schema.version,
                                   await s.run(leftout.count_rows, name), excluded=True))
            continue
        why = _why_not(s, state, src, name, spec, tid, row, schema.refused, pg_tables, schema.version, running,
                       put_back)
        computed: frozenset[str] = frozenset()
        if why is None and spec is not None:
            spec = _as_read_from(spec, pg_tables[name])
            computed = ddl.computed(pg_tables[name], spec)
        plans.append(TablePlan(name, spec, tid, row, why, schema.version, pg_computed=computed))
    return plans


def _as_read_from(spec: TableSpec, pgt: ddl.PgTable) -> TableSpec:
    """`spec` with its character(n) columns marked: their values are compared padded, as
    Postgres hands them to the application and to the way back."""
    padded = {c.name for c in pgt.columns if c.padded}
    if not padded.intersection(spec.column_names):
        return spec
    return replace(spec, columns=tuple(replace(c, pg_padded=True) if c.name in padded else c for c in spec.columns))


async def _put_back(s: _Session, state: CaptureState, src: SourceRow | None) -> str | None:
    """Why the file is not the one whose changes Postgres applied (an older copy put back,
    or another file put in its place), or None: the changelog ends before the checkpoint,
    or the file notes a position Postgres never applied (reconcile._resume_position, which
    then copies every table again). Compared, its rows would read as changes in flight."""
    if src is None or s.direction != TO_POSTGRES or not state.installed or src.capture_id != state.capture_id:
        return None
    top = state.max_seq
    if top < src.applied_seq:  # read before the checkpoint: the stream may have moved on since; read again
        top = (await s.run(capture.read_state)).max_seq
    if top >= src.applied_seq and state.pruned_seq <= src.applied_seq:
        return None
    return (f"the SQLite file's changelog (noted position {state.pruned_seq}, ending at {top}) is not the one "
            f"Postgres applied (up to {src.applied_seq}): the file was restored from an older copy or replaced; "
            "the daemon copies every table again from it when it next runs")


def _why_not(s: _Session, state: CaptureState, src: SourceRow | None, name: str, spec: TableSpec | None,
             tid: int | None, row: TableRow | None, refused: dict, pg_tables: dict[str, ddl.PgTable],
             sqlite_schema: int | None = None, running: bool = True, put_back: str | None = None) -> str | None:
    """Why this table cannot be compared now, or None. `running`: a daemon runs the source."""
    if not s.has_bookkeeping or src is None:
        return "syncd has not set this source up in Postgres yet; run `syncd init` or start the daemon"
    if not state.installed:
        return "no capture installed in the SQLite file; run `syncd init` or start the daemon"
    if src.capture_id != state.capture_id:
        return ("capture in the SQLite file was reinstalled (or the file replaced) since Postgres was loaded; "
                "the daemon re-snapshots every table")
    if put_back is not None:
        return put_back
    if row is None:
        return "not registered in syncd's bookkeeping yet; run `syncd init` or start the daemon"
    if row.state != bk.STREAMING:
        texts = _STATE_TEXT if running else _STOPPED_TEXT
        if s.direction == TO_SQLITE:
            texts = {**texts, **(_WAY_BACK_TEXT if running else _WAY_BACK_STOPPED_TEXT)}
        return row.reason or texts.get(row.state, row.state)
    if spec is None:
        if name in refused:
            return refused[name].reason
        return "the table no longer exists in SQLite"
    pgt = pg_tables.get(name)
    if pgt is None:
        return f'the table does not exist in Postgres schema "{s.source.schema}"'
    diff = ddl.diff_shape(spec, pgt)
    if s.direction == TO_SQLITE:
        # Cut over: the application shapes Postgres now (varchar(20), integer, numeric(10,2), ...).
        # A type of the same value family compares alike (reverse/values.family).
        diff.retyped = [r for r in diff.retyped if reverse_values.family(r[1]) is not spec.column(r[0]).pgtype]
    if not diff.same:
        what = [f"columns missing in Postgres: {', '.join(c.name for c in diff.missing_in_pg)}"] if diff.missing_in_pg else []
        what += [f"columns only in Postgres: {', '.join(diff.extra_in_pg)}"] if diff.extra_in_pg else []
        what += [f"{c}: {have} in Postgres, {want} expected" for c, have, want in diff.retyped]
        what += ["primary key differs"] if diff.key_changed else []
        if s.direction == TO_SQLITE and diff.retyped and not (diff.missing_in_pg or diff.extra_in_pg):
            return ("Postgres table does not match the SQLite schema (" + "; ".join(what) + "): a column's type "
                    "was changed in Postgres after the cutover to another kind of value, which the way back does "
                    "not follow; give it its old type again to compare the table (and to roll back)")
        if s.direction == TO_POSTGRES and sqlite_schema is not None and src.schema_version == sqlite_schema:
            # Postgres was reconciled to SQLite's schema as it is (the daemon records the version
            # in the transaction that changes Postgres's tables; SQLite's own note of it comes
            # before, while the change may still wait for a lock): the difference was made in
            # Postgres, which the daemon does not watch (it follows SQLite's schema changes only).
            return ("Postgres table does not match the SQLite schema (" + "; ".join(what) + "): changed in "
                    "Postgres outside syncd, which the daemon does not follow; `syncd resync --source "
                    f"{shlex.quote(s.source.name)} --table {shlex.quote(name)}` rebuilds it from SQLite")
        return ("Postgres table does not match the SQLite schema (" + "; ".join(what) +
                "); the daemon reconciles schema changes within seconds of seeing them")
    if spec.rowid_keyed and (
            (state.schema_seen is not None and sqlite_schema is not None and state.schema_seen != sqlite_schema)
            or state.rearmed.get(name) == capture.ROWIDS_MOVED_REASON):
        # Keyed by its rowid, which a VACUUM renumbers (moving the schema version, as any DDL does,
        # without syncd: capture.note_schema): compared now, rows still there would show under other rowids.
        # Cut over alike: a VACUUM of the frozen file renumbers them until the way back copies the table again.
        return ("SQLite's schema changed without syncd, and a VACUUM renumbers the rowids this table without a "
                "key is keyed by: its rows may be under other rowids in Postgres until the daemon copies the "
                "table again (it does on seeing the change); check it again then")
    if tid is None or not state.triggers_match(tid, spec):
        return ("capture triggers on this table are missing or not the ones this syncd version installs "
                "(after an upgrade: until the daemon restarts), so changes may go unrecorded; the daemon "
                "re-arms them when it (re)starts, re-snapshotting the table if some were missing")
    return None


# --- one table ------------------------------------------------------------------------


async def _check(s: _Session, plan: TablePlan, wait_seconds: float) -> TableVerifyResult:
    assert s.pg is not None
    tr = TableVerifyResult(source=s.source.name, table=plan.name, state=plan.state, started_at=time.time())
    try:
        if plan.reason is not None:
            tr.reason = plan.reason
            await _count_only(s, plan, tr)
        else:
            assert plan.spec is not None and plan.tid is not None and plan.row is not None
            ks = await key_space(s.run, s.pg, s.source.schema, plan.spec)
            check = TableCheck(s.run, s.pg, ks, plan.tid, source=s.source.name, target_schema=s.source.schema,
                               bk_schema=s.bk.schema, chunk_rows=s.settings.verify.chunk_rows, utf8_database=s.utf8)
            if s.direction == TO_SQLITE:
                check.reverse = await way_back.for_table(s.pg, _names(s), s.source.schema, plan.spec)
            computed = _computed_by(plan, s.direction)[0]
            check.computed_only = lambda d: _is_computed_only(d, computed)
            tr.columns = list(plan.spec.column_names)
            await check.check(tr, wait_seconds)
            await _still_streaming(s, plan, tr)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as e:
        if isinstance(e, (ConnectionError, asyncpg.InterfaceError)) or s.pg.is_closed():
            raise
        tr.error = postgres_lost(e) or f"Postgres: {describe(e)}"  # no answer in time: what was waited for
    except (sqlite3.Error, LockTimeout) as e:
        tr.error = f"SQLite: {e}"
    except (ValueError, TypeError, KeyError, ArithmeticError) as e:  # this table's shape or data defeated the check
        log.exception("verify failed", extra={"source": s.source.name, "table": plan.name, "event": "verify_failed"})
        tr.error = f"internal error: {type(e).__name__}: {e}"
    tr.finished_at = time.time()
    return tr


async def _count_only(s: _Session, plan: TablePlan, tr: TableVerifyResult) -> None:
    """Row counts of a table that cannot be compared: still worth showing."""
    assert s.pg is not None
    if plan.spec is not None:
        tr.rows_sqlite = await s.run(sqlite_side.count_rows, plan.spec)
    else:
        tr.rows_sqlite = plan.rows_sqlite
    # A name Postgres cannot hold (a table refused for it) is no table there; asked, Postgres
    # would fail the check on the name itself.
    exists = pg_name_problem(plan.name) is None and await s.pg.fetchval(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
        s.source.schema, plan.name,
    )
    if exists:
        tr.rows_postgres = await s.pg.fetchval(f"SELECT count(*) FROM {qualified(s.source.schema, plan.name)}")


async def _still_streaming(s: _Session, plan: TablePlan, tr: TableVerifyResult) -> None:
    """A table that left streaming (held, paused, re-snapshot) while it was checked was
    compared against a moving target: say so instead of reporting its differences."""
    assert s.pg is not None and plan.row is not None and plan.spec is not None
    now = (await s.bk.load_tables(s.pg)).get(plan.name)
    renumbered = plan.spec.rowid_keyed and await s.run(schema_version) != plan.schema_version
    if now is not None and now.state == bk.STREAMING and now.updated_at == plan.row.updated_at and not renumbered:
        return
    tr.compared = False
    tr.state = now.state if now else None
    tr.missing = tr.extra = tr.different = tr.pending = 0
    tr.differences = []
    if renumbered and now is not None and now.state == bk.STREAMING:
        # A keyless table's key is its rowid, which a VACUUM renumbers (moving the schema
        # version): rows compared across it are not the same rows.
        tr.reason = "SQLite's schema moved while the table was checked (a VACUUM renumbers its rowids); check it again later"
        return
    became = f"{now.state}: {now.reason}" if now and now.reason else (now.state if now else "unregistered")
    tr.reason = f"the table left streaming while it was checked (now {became}); check it again later"


# --- repair ---------------------------------------------------------------------------


def _names(s: _Session):
    return Names(s.bk.schema, s.source.name, s.bk.key)


async def way_back_generation(s: _Session) -> str | None:
    gen = await reverse_capture.generation(s.pg, _names(s))
    return gen.id if gen else None


def _computed_by(plan: TablePlan, direction: str) -> tuple[frozenset[str], frozenset[str], str]:
    """(the columns the side a replay writes to computes itself, those the other side
    computes, the name of the side a replay writes to)."""
    sqlite_computed = frozenset(c.name for c in plan.spec.columns if c.generated) if plan.spec else frozenset()
    if direction == TO_POSTGRES:
        return plan.pg_computed, sqlite_computed, "Postgres"
    return sqlite_computed, plan.pg_computed, "SQLite"


def _is_computed_only(d: Difference, computed: frozenset[str]) -> bool:
    """Whether `d` differs only in columns of `computed`."""
    return bool(computed and d.kind == DIFFERENT and d.columns and computed.issuperset(d.columns))


def _computed_only(tr: TableVerifyResult, plan: TablePlan, direction: str) -> None:
    """Mark not repairable each row of `tr` differing only in columns the side a replay
    writes to computes itself: written again, the row gets the same value from that side's
    expression (the way back never writes a column SQLite generates)."""
    computed, other, who = _computed_by(plan, direction)
    for d in tr.differences:
        if not _is_computed_only(d, computed):
            continue
        d.repairable = False
        cols = ", ".join(f'"{c}"' for c in d.columns)
        what = f"column{'s' if len(d.columns) > 1 else ''} {cols}"
        if plan.spec is not None and other.issuperset(d.columns):  # computed on both sides, by two expressions
            d.note = (f"{who} computes {what} itself, by another expression than the other side's: a replay "
                      f"writes the row again and {who} computes the same value; only changing one of the "
                      "two expressions makes them equal")
        else:  # on one side only, beside values the other side's application writes itself
            there = "SQLite" if who == "Postgres" else "Postgres"
            d.note = (f"{who} computes {what} itself, and {there} holds another value than its expression "
                      f"gives: a replay writes the row again and {who} computes the same value; only "
                      f"changing the value in {there} or the expression in {who} makes them equal")


async def _repair(s: _Session, result: SourceVerifyResult, plans: list[TablePlan], run_ids: dict[str, int],
                  wait_seconds: float, record: bool, in_daemon: bool,
                  replaying: Callable[[], None] | None = None) -> None:
    assert s.pg is not None
    by_name = {p.name: p for p in plans}
    queued: dict[str, int] = {}
    replayed: dict[str, list[Difference]] = {}
    skipped_notes = []
    copying: set[str] = set()  # tables the way back copies again in full (cut over, too many to replay by key)
    target = 0
    excluded = {p.name for p in plans if p.excluded}  # not replicated by choice: no repair is owed to them
    resumed: set[str] = set()  # cut over: copies again from Postgres cut short, taken up again here
    for tr in result.tables:
        plan = by_name.get(tr.table)
        if (s.direction == TO_SQLITE and not in_daemon and not tr.compared and not tr.error
                and tr.state == bk.LOADING and plan is not None and plan.tid is not None and plan.row is not None
                and plan.row.reason is None and not plan.excluded and plan.spec is not None
                and await lock_holder(s.pg, s.bk.key) is None):
            # Its copy again from Postgres stopped part-way (the process running it killed) and no
            # daemon runs the source: the way back run here takes the copy up again.
            target = max(target, await way_back.copy_again(s.pg, _names(s), plan.tid))
            queued[tr.table] = 0
            replayed[tr.table] = []
            copying.add(tr.table)
            resumed.add(tr.table)
            continue
        if not tr.compared and not tr.error and tr.table not in excluded:  # its rows may differ all the same
            skipped_notes.append(f'"{tr.table}" not repaired: it was not compared: {tr.reason or "no reason recorded"}')
        if not tr.compared or tr.equal or tr.error:
            continue
        _computed_only(tr, by_name[tr.table], s.direction)
        if s.direction == TO_SQLITE:  # the way back replays keys as Postgres holds them
            pg_keys, skipped = repair.way_back_keys(tr.differences, [by_name[tr.table].spec.column(k).pgtype
                                                                     for k in by_name[tr.table].spec.key])
            # A SQLite row under a spelling Postgres's key type does not give back (a uuid in
            # capitals, a code without its character(n) padding) is only in SQLite, and no
            # replay by key reaches it: like a key no Postgres key can be, it is left to a copy.
            left = {id(d) for d in skipped}
            listed = [d for d in tr.differences if id(d) not in left]
            only_sqlite = [i for i, d in enumerate(listed) if d.kind == MISSING]
            if only_sqlite:
                ev = await way_back.for_table(s.pg, _names(s), s.source.schema, by_name[tr.table].spec)
                moved = await way_back.respelled(s.pg, ev, [pg_keys[i] for i in only_sqlite])
                gone = {i for i, m in zip(only_sqlite, moved) if m}
                skipped += [listed[i] for i in sorted(gone)]
                pg_keys = [k for i, k in enumerate(pg_keys) if i not in gone]
            entries = [(0, k) for k in pg_keys]
        else:
            entries, skipped = repair.changelog_entries(tr.differences)
        # Beyond MAX_LISTED, or rows the totals miss with no key; cut over, also a SQLite row
        # under a key no Postgres key can be (a blob in a TEXT key), which no replay by key
        # reaches (a NULL in a key, which a copy does not remove either, is left to the note).
        unkeyed = s.direction == TO_SQLITE and any(d.repairable and d.raw_key is not None and None not in d.raw_key
                                                   for d in skipped)
        # Rows past the listed ones that differ only in columns computed where a replay writes
        # are known all the same: neither a replay nor a copy mends them (_computed_only).
        if len(tr.differences) + tr.computed_unlisted < tr.mismatched or unkeyed:
            if s.direction == TO_SQLITE:
                # A cut-over source refuses `syncd resync` (it would rebuild Postgres from the frozen
                # file): the way back copies the whole table again from Postgres instead (its last
                # step deletes the SQLite keys Postgres does not hold, whatever they are).
                plan = by_name[tr.table]
                assert plan.tid is not None
                target = max(target, await way_back.copy_again(s.pg, _names(s), plan.tid))
                queued[tr.table] = tr.mismatched
                replayed[tr.table] = list(tr.differences)
                copying.add(tr.table)
                continue
            skipped_notes.append(f'"{tr.table}": not every differing row is known by key (too many, or only '
                                 f"the row totals show them); run `syncd resync` for it instead")
            continue
        if tr.computed_unlisted:
            who = _computed_by(by_name[tr.table], s.direction)[2]
            skipped_notes.append(f'"{tr.table}": {tr.computed_unlisted} further row(s) not repaired: {who} computes '
                                 "the only columns they differ in itself, as for the rows listed")
        for d in skipped:
            why = d.note or "its SQLite form is unknown"
            if d.note is None and d.kind == EXTRA and s.direction == TO_POSTGRES:
                why += ", so no replay reaches it: delete the row in Postgres"
            skipped_notes.append(f'"{tr.table}" key {format_key(d.key)} not repaired: {why}')
        if entries:
            plan = by_name[tr.table]
            assert plan.tid is not None
            if s.direction == TO_SQLITE:  # SQLite follows Postgres: the way back replays the keys
                ev = await way_back.for_table(s.pg, _names(s), s.source.schema, plan.spec)
                target = max(target, await way_back.enqueue(s.pg, _names(s), ev, plan.spec, plan.tid, pg_keys))
            else:
                target = max(target, await repair.enqueue(s.run, s.settings, plan.tid, entries))
            queued[tr.table] = len(entries)
            left_out = {id(d) for d in skipped}
            replayed[tr.table] = [d for d in tr.differences if id(d) not in left_out]
    if not queued:
        result.repair_note = "; ".join(skipped_notes) or "nothing to repair"
        return
    if replaying is not None:
        replaying()
    try:
        if s.direction == TO_SQLITE:
            how = await way_back.apply_through_way_back(
                s.settings, s.source, s.pg, s.run, _names(s),
                (await way_back_generation(s)), target, max(wait_seconds, 5.0), in_daemon, copying)
        else:
            how = await repair.apply_through_stream(s.settings, s.source, s.pg, target, max(wait_seconds, 5.0),
                                                    own_pipeline=not in_daemon)
    except (TimeoutError, CannotConnect) as e:  # no stream got there, or none could connect: the replay waits
        waiting = [f"{sum(queued.values())} row(s) queued for replay"] if set(queued) - resumed else []
        waiting += [f"copy from Postgres of {', '.join(sorted(resumed))} started again from its first row (`syncd run` "
                    "sees it through; a --repair waits only --wait seconds)"] if resumed else []
        result.repair_note = "; ".join([f"{' and '.join(waiting)} but not applied: {e}", *skipped_notes])
        return
    again = []
    confirmed = 0
    unconfirmed = []
    for tr in result.tables:
        if tr.table not in queued:
            again.append(tr)
            continue
        # The table's state row may have moved on (e.g. a hold); look at it afresh.
        fresh = (await _plan(s, [tr.table]))[0]
        tr2 = await _check(s, fresh, wait_seconds)
        if record and s.has_bookkeeping:  # the repair is on the run that found the rows
            await history.record(s.pg, s.bk.schema, tr2, s.direction == TO_SQLITE)
        again.append(tr2)
        if not tr2.compared:
            # Held, paused or reloading: the replay may wait behind it (a change applied
            # before it held the table); nothing says the rows were repaired.
            what = "copy from Postgres taken up again" if tr.table in resumed else f"{queued[tr.table]} row(s) replayed"
            unconfirmed.append(f'"{tr.table}": {what}, not confirmed: the table is '
                               f'{tr2.state or "not registered"} ({tr2.error or tr2.reason})')
            continue
        if record and tr.table in run_ids:
            await history.mark_repaired(s.pg, s.bk.schema, run_ids[tr.table], queued[tr.table])
        confirmed += 0 if tr.table in copying else queued[tr.table]
        tr2.repaired = queued[tr.table]
        tr2.replayed = replayed[tr.table]
    done = [f"{confirmed} row(s) replayed through the stream, {how}"] if confirmed else []
    copied = sorted(copying.intersection(t.table for t in again if t.repaired))
    if copied:
        done.append(f"copied again in full from Postgres by the way back, {how}: {', '.join(copied)}")
    finished = sorted(resumed.intersection(t.table for t in again if t.compared))
    if finished:
        done.append(f"copy from Postgres, stopped part-way before, taken up again and finished by the way back, "
                    f"{how}: {', '.join(finished)}")
    result.repair_note = "; ".join([*done, *unconfirmed, *skipped_notes])
    result.tables = again
