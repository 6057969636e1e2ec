"""Schema parity: a Postgres the application can switch to, not only a copy of its data.

Modules: objects (what the SQLite file holds), expressions and translate (SQLite SQL
read into a tree, Postgres SQL written from it through a whitelist), dates (typed date
columns, proven value by value), plan (what is created when, and why), apply (doing
it), orphans (foreign-key orphans, counted all along), speed (lookups timed on both
sides), summary (the facts report, status page and `syncd schema` show).

The hooks the rest of syncd calls:

    retyped = await parity.ensure(session, schema)      # reconcile, after the tables exist
    await parity.table_streaming(session, t)            # a table joined the stream
    await parity.check_deferred(conn, session, names)   # a batch, before its bookkeeping
    name = await parity.violated(conn, session, spec, exc)  # a batch broke a parity constraint...
    await parity.release(conn, session, spec, name, exc)     # ...that SQLite's rows cannot meet
    result = await parity.finalize(conn, settings, source, specs, allow_orphans)  # the cutover
    types = await parity.retyped_columns(conn, bk_schema, source_name)  # introspection
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field

import asyncpg

from syncd.parity.apply import (BUILD_BUDGET_SHARE, CONTENTION, LOCK_WAIT, FinalizeResult, OrphanRows, Outcome,
                                ParityRefused, PgObject, Retyped, _drop_sql, ensure_dual_write, finalize,
                                lock_wait_ms, read_pg_objects, read_sqlite, retype, retyped_columns,
                                run)
from syncd.parity.orphans import OrphanCount
from syncd.parity.plan import DUAL_WRITE, Options, SourcePlan, plan_source
from syncd.sqlite import reader

__all__ = ["CONTENTION", "FinalizeResult", "LockNotHad", "OrphanCount", "OrphanRows", "Outcome", "ParityRefused",
           "Retyped", "check_deferred", "ensure", "finalize", "preview", "read_pg_objects", "release",
           "retyped_columns", "table_streaming", "violated"]

log = logging.getLogger("syncd")

TO_SQLITE = "to_sqlite"
# Bookkeeping event: {"object": Postgres name, "marker": its planned definition's marker, "why": Postgres's reason}
FAILED_EVENT = "parity_failed"


AUDIT_EVERY_SECONDS = 3600.0  # typed_columns = "dual-write": date columns read again this often

# A table's indexes wait for its load to be over (plan.Item.after_load) while its rows
# times the number of those indexes stay under this: building them all is then one step
# of the pipeline, and must stay far inside [postgres] statement_timeout_seconds and the
# watchdog (an index of 1M short text values builds in 0.5 s here). A larger table gets
# them before its load, kept up row by row.
INDEX_AFTER_LOAD_MAX_ROWS = 5_000_000


@dataclass
class _State:
    plan: SourcePlan | None = None
    audited: tuple[int, float] | None = None  # (schema version, monotonic time) of the last date audit
    deferred: set[str] = field(default_factory=set)  # tables that may hold deferrable parity constraints
    after_load: set[str] = field(default_factory=set)  # tables with indexes made once they stream
    counted: dict[tuple[str, int | None], int] = field(default_factory=dict)  # (table, schema version) -> rows
    logged: set[str] = field(default_factory=set)  # failure lines already logged
    recorded: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # name -> (marker, why) in events
    retype_timed_out: set[str] = field(default_factory=set)  # tables whose early retype ran over the timeout
    orphans: dict[str, int] = field(default_factory=dict)  # "<table>: <foreign key>" -> orphan rows, last counted


_sessions: "weakref.WeakKeyDictionary[object, _State]" = weakref.WeakKeyDictionary()


def _state(session) -> _State:
    st = _sessions.get(session)
    if st is None:
        st = _sessions[session] = _State()
    return st


def orphan_counts(session) -> dict[str, int]:
    """The orphan rows the daemon last counted per foreign key of `session`'s source
    ("<table>: <foreign key>" -> rows), for /status and `syncd status`."""
    st = _sessions.get(session)
    return dict(st.orphans) if st is not None else {}


async def _direction(session, lock: bool = False) -> str | None:
    """The source's direction; with `lock` (inside a transaction), held until it ends:
    `syncd cutover` locks the same row before it creates the cutover's objects and
    flips the direction, so dual-write objects are never set up (nor the cutover's
    dropped) by a reconcile that read the direction just before a cutover committed."""
    try:
        return await session.pg.fetchval(f"SELECT direction FROM {session.bk.s}.sources WHERE source = $1"
                                         + (" FOR SHARE" if lock else ""), session.name)
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
        return None


async def ensure(session, schema) -> bool:
    """Reconcile's hook, run after its transaction committed: create the dual-write
    objects of every table (indexes now; deferrable UNIQUE constraints on streaming
    tables), drop those syncd made that are no longer wanted, and, with [cutover]
    typed_columns = "dual-write", retype the date columns that qualify. Returns True
    when a column was retyped: the caller reconciles again so its specs carry the type.
    Never fails reconcile: what Postgres refuses is logged, and tried again later."""
    st = _state(session)
    if session.direction == TO_SQLITE:  # as reconcile read it just now; read again, locked, below
        return False  # cut over: Postgres is the application's now
    options = Options.from_settings(session.settings)
    specs = {n: t.spec for n, t in session.tables.items()}
    states = {n: t.state for n, t in session.tables.items()}
    views = [n for n, lo in schema.left_out.items() if lo.kind == "view"]
    early = options.typed_columns == "dual-write"
    if early and st.audited is not None and st.audited[0] == schema.version and \
            time.monotonic() - st.audited[1] < AUDIT_EVERY_SECONDS:
        early = False  # the date columns were read in full lately, and the schema has not moved
    try:
        objects, verdicts = await session.worker.run(read_sqlite, specs, views, options, early)
    except sqlite3.Error as e:
        session.warning(f"schema parity: cannot read the file's indexes and constraints now ({e}); trying again "
                        "at the next check", event="parity_unreadable")
        return False
    if early and all(state == "streaming" for state in states.values()):
        st.audited = (schema.version, time.monotonic())  # every table could be retyped on this reading
    plan = plan_source(session.target_schema, specs, objects, options, verdicts if early else None)
    st.plan = plan
    st.deferred = {i.table for i in plan.items if i.needs_streaming and not i.left_out and i.table}
    waiting = Counter(i.table for i in plan.items if i.after_load and not i.left_out and i.table)
    st.after_load = set(waiting)
    index_now = await _too_large_to_wait(session, st, waiting)
    retyped = False
    async with session.pg.transaction():
        if await _direction(session, lock=True) == TO_SQLITE:
            return False
        if early:
            # Its ALTERs wait for a lock no longer than ensure_dual_write's objects do.
            await session.pg.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'")
            retyped = await _retype_early(session, st, plan, specs, states)
        report = await ensure_dual_write(session.pg, session.name, plan, specs, states, index_now, _budget(session))
    await _log(session, st, report)
    for item in plan.left_out:
        line = f"{item.table + ': ' if item.table else ''}{item.what}: {item.left_out}"
        if line not in st.logged:
            st.logged.add(line)
            session.info(f"schema parity: not carried: {line}", table=item.table, event="parity_not_carried")
    return retyped


async def _too_large_to_wait(session, st: _State, indexes: Counter) -> frozenset[str]:
    """Which tables, not streaming yet, are too large for their `indexes[table]` indexes
    to wait for the load (INDEX_AFTER_LOAD_MAX_ROWS): by the load's count where it has
    one, else SQLite's, counted once per pending spell and schema version."""
    out = set()
    # A count holds until the table's load counts it (a table pending again later is
    # counted again); a table held or refused before any load keeps its count.
    st.counted = {k: v for k, v in st.counted.items()
                  if (t := session.tables.get(k[0])) is not None
                  and (t.state == "pending" or t.row.snapshot_total is None)}
    for name, n in indexes.items():
        t = session.tables.get(name)
        if t is None or t.state == "streaming":
            continue
        rows = t.row.snapshot_total if t.state != "pending" else None
        if rows is None:
            memo = (name, session.schema_version)
            rows = st.counted.get(memo)
            if rows is None:
                try:
                    rows = await session.worker.run(reader.count_rows, name)
                except sqlite3.Error:
                    out.add(name)  # not countable now: built before the load, as for a large table
                    continue
                st.counted[memo] = rows
        if rows * n > INDEX_AFTER_LOAD_MAX_ROWS:
            out.add(name)
    return frozenset(out)


async def table_streaming(session, t) -> None:
    """The pipeline's hook when table `t` starts streaming: its deferrable UNIQUE
    constraints and its indexes are created now (they wait for the load to be over)."""
    st = _state(session)
    if st.plan is None or (t.name not in st.deferred and t.name not in st.after_load):
        return
    plan = SourcePlan(st.plan.schema, [i for i in st.plan.items if i.table == t.name])
    async with session.pg.transaction():
        if await _direction(session, lock=True) == TO_SQLITE:
            return
        report = await ensure_dual_write(session.pg, session.name, plan, {t.name: t.spec}, {t.name: "streaming"},
                                         budget=_budget(session))
    await _log(session, st, report)


async def check_deferred(conn: asyncpg.Connection, session, tables) -> None:
    """Inside a batch's transaction, after its rows: check the deferred constraints now,
    so a violation is an error of this batch's statements (and of one table, in the
    per-table retry) rather than of the COMMIT."""
    st = _sessions.get(session)
    if st is not None and st.deferred and any(name in st.deferred for name in tables):
        await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")


async def defer(conn: asyncpg.Connection, session, table: str) -> None:
    """Back to deferred checking, for the next table of a per-table retry."""
    st = _sessions.get(session)
    if st is not None and table in st.deferred:
        await conn.execute("SET CONSTRAINTS ALL DEFERRED")


async def violated(conn: asyncpg.Connection, session, spec, exc: BaseException) -> str | None:
    """The name of the UNIQUE constraint of schema parity `exc` reports broken, or None
    (another error, or a constraint syncd did not make for this source)."""
    if not isinstance(exc, asyncpg.UniqueViolationError):
        return None
    name = getattr(exc, "constraint_name", None)
    if not name:
        return None
    comment = await conn.fetchval(
        "SELECT obj_description(con.oid, 'pg_constraint') FROM pg_constraint con JOIN pg_class t ON t.oid = "
        "con.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = $1 AND t.relname = $2 "
        "AND con.conname = $3", session.target_schema, spec.name, name)
    return name if PgObject("constraint", name, spec.name, comment).owned_by(session.name) else None


class LockNotHad(Exception):
    """A step must change a Postgres table that another session holds (a long query or
    transaction): the step gives up after a few seconds and is tried again with backoff."""


async def release(conn: asyncpg.Connection, session, spec, name: str, exc: BaseException) -> None:
    """Drop UNIQUE constraint `name` of schema parity a batch cannot meet (SQLite holds
    values apart that Postgres calls equal), so replication goes on; it is created again
    at the next schema check if the rows allow, and reported as not carried while not.
    The drop waits 5 s at most for the table (half the statement timeout if that is
    shorter): queries queue behind a waiting DROP, so a long reader must not make every
    other query on the table wait a whole statement timeout (LockNotHad then, and the
    batch is tried again)."""
    prior = await conn.fetchval("SELECT current_setting('lock_timeout')")
    wait_ms = lock_wait_ms(session.settings.postgres.statement_timeout_seconds)
    await conn.execute(f"SET LOCAL lock_timeout = '{wait_ms}ms'")
    try:
        async with conn.transaction():
            await run(conn, _drop_sql(session.target_schema, PgObject("constraint", name, spec.name, None)))
    except asyncpg.LockNotAvailableError:
        raise LockNotHad(f'table "{spec.name}": UNIQUE constraint "{name}" of schema parity must go (a batch breaks '
                         f"it: {getattr(exc, 'detail', '') or exc}) and another Postgres session holds the table "
                         f"(a long query or transaction) past {wait_ms} ms; trying again with backoff, changes stay "
                         "captured in SQLite") from None
    finally:
        await conn.execute("SELECT set_config('lock_timeout', $1, true)", prior)
    session.warning(f'schema parity: UNIQUE constraint "{name}" dropped for now: a batch breaks it '
                    f"({getattr(exc, 'detail', '') or exc}); replication goes on, and the constraint is created "
                    "again at the next schema check if the rows allow", table=spec.name, event="parity_released")


async def _retype_early(session, st: _State, plan: SourcePlan, specs, states) -> bool:
    """Retype the streaming tables' date columns the plan types during dual-write.
    Returns True when a column was retyped. A pass stops at its first rewrite over the
    statement timeout (one step spends one timeout at most), and that table is left out
    of later passes until the daemon restarts (its rewrite needs a longer timeout), so
    that it never holds back the tables after it."""
    done_any = False
    for name, spec in specs.items():
        if states.get(name) != "streaming" or name in st.retype_timed_out:
            continue  # a table being loaded is retyped once its rows are all there
        items = [i for i in plan.for_table(name) if i.kind == "type" and not i.left_out and i.dual_write]
        if not items:
            continue
        try:
            async with session.pg.transaction():
                done, refused = await retype(session.pg, session.name, session.bk.schema, plan.schema, spec, items)
        except TimeoutError:
            if session.pg.is_closed():
                raise  # an outage: the step ends and is retried
            # The rewrite (or its wait for the table's lock) ran over the statement
            # timeout; the savepoint undid it. Streaming goes on; the columns wait.
            st.retype_timed_out.add(name)
            session.warning("schema parity: the date columns of this table stay text: retyping them ran over "
                            "[postgres] statement_timeout_seconds "
                            f"({session.settings.postgres.statement_timeout_seconds:g} s); tried again after a "
                            "restart of the daemon (with a longer timeout for a large table), the other tables at "
                            "the next reading of the date columns", table=name, event="parity_not_retyped")
            break
        for r in done:
            session.info(f'schema parity: column "{r.column}" is {r.pgtype.value} now (SQLite spelling '
                         f"{r.sqlite_format}; [cutover] typed_columns = \"dual-write\")", table=name,
                         event="parity_retyped")
            done_any = True
        for item, why in refused:
            session.warning(f'schema parity: column "{item.column}" stays text: {why}', table=name,
                            event="parity_not_retyped")
    return done_any


def _budget(session) -> float:
    return session.settings.postgres.statement_timeout_seconds * BUILD_BUDGET_SHARE


async def _log(session, st: _State, report) -> None:
    for what in report.created:
        session.info(f"schema parity: created {what}", event="parity_created")
    for what in report.dropped:
        session.info(f"schema parity: dropped {what} (no longer in SQLite, or back to its dual-write form)",
                     event="parity_dropped")
    if report.waiting:
        session.info(f"schema parity: {len(report.waiting)} object(s) wait for the next schema check (this one spent "
                     f"its {_budget(session):.3g} s of builds): {', '.join(report.waiting[:5])}"
                     + (", ..." if len(report.waiting) > 5 else ""), event="parity_waiting")
    for what, why, name, marker in report.failed:
        line = f"{what}: {why}"
        if line not in st.logged:
            st.logged.add(line)
            session.warning(f"schema parity: not created: {line}", event="parity_failed")
        if name is not None and st.recorded.get(name) != (marker, why):
            # For the report, which names why an object the plan wants is not in Postgres:
            # written whenever the reason changes, for the definition it was given for.
            try:
                await session.bk.event(session.pg, FAILED_EVENT, None,
                                       json.dumps({"object": name, "marker": marker, "why": why}))
                st.recorded[name] = (marker, why)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                pass  # Postgres away: the log line above says it; tried again at the next failure


def preview(settings, source, specs, present: dict[str, str | None] | None = None) -> list[str]:
    """What finalize would create and leave out for `source` now, one line each, for
    `syncd cutover --dry-run` (reads the SQLite file read-only, every date value in full;
    touches nothing). `present`: the objects Postgres holds in the source's schema now,
    name -> comment (a dual-write index missing there, or not as planned, is built by
    finalize). Orphans are the report's (`foreign_keys` item)."""
    from syncd.parity.apply import CUTOVER_BUSY_TIMEOUT_MS
    from syncd.sqlite.connection import not_utf8, open_readonly, surrogate_text

    options = Options.from_settings(settings)
    conn = open_readonly(source.path, CUTOVER_BUSY_TIMEOUT_MS)
    try:
        conn.text_factory = surrogate_text  # a name that is not UTF-8 is left out (introspect): no SQL names it
        views = [r[0] for r in conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'view'")
                 if source.wants_table(r[0]) and not not_utf8(r[0])]
        conn.text_factory = str
        objects, verdicts = read_sqlite(conn, specs, views, options, audit_types=True)
    finally:
        conn.close()
    plan = plan_source(source.schema, specs, objects, options, verdicts)
    out = []
    for i in plan.items:
        where = f"{i.table}: " if i.table else ""
        if i.left_out:
            out.append(f"schema: will not carry {where}{i.what}: {i.left_out}")
        elif i.cutover:
            named = f' as "{i.name}"' if i.name else ""
            # What dual-write has in Postgres already is changed, not created.
            if i.kind == "type" and i.verdict is not None and i.verdict.pgtype is not None:
                out.append(f"schema: will type {where}{i.what} as {i.verdict.pgtype.value}")
            elif i.kind == "nocase":
                out.append(f"schema: will make {where}{i.what} case-insensitive")
            elif i.kind == "unique" and i.dual_write and i.object_kind == "constraint":
                out.append(f"schema: will make {where}{i.what}{named} immediate (deferred during dual-write)")
            elif i.kind == "unique" and i.dual_write:
                out.append(f"schema: will make {where}{i.what}{named} unique (a plain index during dual-write)")
            else:
                out.append(f"schema: will create {where}{i.what}{named}")
        elif i.kind == "index" and i.dual_write and present is not None and \
                present.get(i.name or "", "") != i.marker(DUAL_WRITE, source.name):
            now = "not in Postgres now (the report says why)" if i.name not in present else "changed in SQLite"
            out.append(f'schema: will build {where}{i.what} as "{i.name}": {now}; built in the final transaction, '
                       "its build time adds to the write downtime")
    return out
