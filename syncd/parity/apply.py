"""Making Postgres hold what the plan says: during dual-write (ensure_dual_write, from
reconcile and when a table starts streaming) and at cutover (finalize, inside the
cutover's final transaction).

Every statement is syncd's own (plan.py wrote it from names and translated trees) and
runs alone through the extended protocol, which refuses a second statement. Every
object carries a COMMENT naming syncd, the stage, a hash of its definition and the
source: syncd changes and drops only objects so marked, never the application's own.
Each object is created in its own savepoint: one Postgres refuses is reported with
Postgres's reason and the rest go on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import re
import sqlite3
import time
from dataclasses import dataclass, field

import asyncpg

from syncd.identifiers import pg_string_literal, qualified, quote_pg_ident
from syncd.model import TableSpec
from syncd.parity import dates, numbers, orphans
from syncd.parity.objects import SourceObjects, read_objects
from syncd.parity.plan import (CUTOVER, DUAL_WRITE, FK_CASE_TODO, ICU_LOCALE, MARK, NOCASE_COLLATION, Item, Options,
                               SourcePlan, plan_source)
from syncd.postgres.connect import describe
from syncd.postgres.ddl import run_ddl
from syncd.sqlite.connection import not_utf8, open_readonly, surrogate_text
from syncd.types import PgType, translate_default

log = logging.getLogger("syncd")

STREAMING = "streaming"
LOADING_STATES = ("pending", "loading")
RETRY_FAILED_SECONDS = 3600.0  # an object Postgres refused is tried again after this, or when it changes
RETRY_LOCKED_SECONDS = 300.0  # one whose table's lock it could not get (a transient wait): sooner
# A pass of ensure_dual_write starts no further build once it has spent this share of
# [postgres] statement_timeout_seconds (10 s of the default 60 s; several large indexes
# added at once): the rest wait for the next schema check, so that the builds of one step
# last 7/6 of a statement timeout at most, inside WatchdogSec as operations.md asks.
BUILD_BUDGET_SHARE = 1 / 6
# How long creating or dropping an object waits for a lock on its table (a long reader of
# the application's, someone's open transaction) before it gives up until a later try: a
# step of the daemon never waits on someone else's lock for a whole statement timeout.
LOCK_WAIT_SECONDS = 5.0
LOCK_WAIT = f"{LOCK_WAIT_SECONDS:g}s"


# A lock wait given up (a lock_timeout, the role's or the database's) or a deadlock is
# contention, not Postgres refusing the object: the cutover's own steps let it through,
# for the switch's transaction to be tried again whole (cutover.py), where it read as an
# object not created, and the cutover went on without it.
CONTENTION = (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError)


def lock_wait_ms(statement_timeout_seconds: float) -> int:
    """LOCK_WAIT, or half the statement timeout if that is shorter (the client-side
    timeout would otherwise cut the wait short, as an outage); never 0 (no limit)."""
    return max(1, int(min(LOCK_WAIT_SECONDS, statement_timeout_seconds / 2) * 1000))


_retry_at: dict[tuple[str, str, str], float] = {}  # (source, name, marker or comment) -> monotonic time
# (source, table) -> monotonic time: a table whose lock an object could not get; none of
# its objects is tried before then (each try would queue the application's queries again).
_locked_until: dict[tuple[str, str], float] = {}


async def run(conn: asyncpg.Connection, sql: str) -> None:
    """One statement through the extended protocol: a second one in `sql` is refused."""
    await run_ddl(conn, sql)


# --- what Postgres holds ---------------------------------------------------------------


@dataclass(frozen=True)
class PgObject:
    kind: str  # "index", "constraint", "view", "table", ...
    name: str
    table: str | None
    comment: str | None
    contype: str | None = None  # for constraints: u, f, c, p

    def owned_by(self, source: str) -> bool:
        return bool(self.comment) and self.comment.startswith(MARK + " ") and f" [{source}]: " in self.comment

    @property
    def stage(self) -> str | None:
        parts = (self.comment or "").split(" ")
        return parts[2] if len(parts) > 3 else None


async def read_pg_objects(conn: asyncpg.Connection, schema: str) -> dict[tuple[str, str | None, str], PgObject]:
    """Indexes, views and other relations by ("relation", None, name); constraints by
    ("constraint", table, name)."""
    out: dict[tuple[str, str | None, str], PgObject] = {}
    for r in await conn.fetch(
            "SELECT c.relname, c.relkind::text, t.relname, obj_description(c.oid, 'pg_class') FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_index x ON x.indexrelid = c.oid "
            "LEFT JOIN pg_class t ON t.oid = x.indrelid WHERE n.nspname = $1", schema):
        kind = {"i": "index", "v": "view", "r": "table", "p": "table"}.get(r[1], "relation")
        out[("relation", None, r[0])] = PgObject(kind, r[0], r[2], r[3])
    for r in await conn.fetch(
            "SELECT con.conname, t.relname, con.contype::text, obj_description(con.oid, 'pg_constraint') "
            "FROM pg_constraint con JOIN pg_class t ON t.oid = con.conrelid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = $1", schema):
        out[("constraint", r[1], r[0])] = PgObject("constraint", r[0], r[1], r[3], r[2])
    return out


def _name_taken(name: str, existing: PgObject) -> str:
    """Why an object syncd plans cannot be made under `name`: another source replicating
    into the same schema made one of that name (SQLite index names are each file's own),
    or someone else did."""
    other = re.match(rf"{re.escape(MARK)} \S+ \S+ \[([^\]]+)\]: ", existing.comment or "")
    if other is not None:
        return (f'the name "{name}" is taken in Postgres by source {other.group(1)}\'s {existing.kind} (both '
                "replicate into this schema); rename one of the two in SQLite, or give one source a schema of its own")
    return f'the name "{name}" is taken in Postgres by an object syncd did not create'


def _key(item: Item) -> tuple[str, str | None, str]:
    assert item.name is not None
    if item.object_kind == "constraint":
        return ("constraint", item.table, item.name)
    return ("relation", None, item.name)


def _object_kind(item: Item, stage: str) -> str:
    """A unique item is a constraint while its statements make one, else an index."""
    stmts = item.dual_write if stage == DUAL_WRITE else item.cutover
    if item.kind == "unique":
        return "constraint" if any("ADD CONSTRAINT" in s for s in stmts) else "index"
    return item.object_kind


def _drop_sql(schema: str, obj: PgObject) -> str:
    if obj.kind == "constraint":
        return f"ALTER TABLE {qualified(schema, obj.table or '')} DROP CONSTRAINT IF EXISTS {quote_pg_ident(obj.name)}"
    if obj.kind == "view":
        return f"DROP VIEW IF EXISTS {qualified(schema, obj.name)}"
    return f"DROP INDEX IF EXISTS {qualified(schema, obj.name)}"


def _comment_sql(schema: str, item: Item, kind: str, marker: str) -> str:
    assert item.name is not None
    if kind == "constraint":
        return (f"COMMENT ON CONSTRAINT {quote_pg_ident(item.name)} ON {qualified(schema, item.table or '')} "
                f"IS {pg_string_literal(marker)}")
    if kind == "view":
        return f"COMMENT ON VIEW {qualified(schema, item.name)} IS {pg_string_literal(marker)}"
    return f"COMMENT ON INDEX {qualified(schema, item.name)} IS {pg_string_literal(marker)}"


# --- dual-write ----------------------------------------------------------------------------


@dataclass
class EnsureReport:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    # (what, Postgres's reason, the object's Postgres name and marker; None for a drop)
    failed: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # not started: the pass spent its build budget
    retyped: list[str] = field(default_factory=list)


async def ensure_dual_write(conn: asyncpg.Connection, source: str, plan: SourcePlan, specs: dict[str, TableSpec],
                            states: dict[str, str], index_now: frozenset[str] = frozenset(),
                            budget: float = 10.0) -> EnsureReport:
    """Bring the source's objects to their dual-write shape: what the plan creates
    during dual-write exists (deferrable UNIQUE constraints only on tables in
    `states` streaming; indexes on those too, or on any table named in `index_now`),
    and every other object syncd made for this source is gone (the cutover's, after a
    rollback; an index SQLite dropped). Typed columns opted into dual-write are not
    retyped here (see retype_dual_write). No build starts once the call has spent
    `budget` seconds (BUILD_BUDGET_SHARE): those wait for a later call."""
    report = EnsureReport()
    schema = plan.schema
    started = time.monotonic()
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'")  # the caller's transaction, to its end
    have = await read_pg_objects(conn, schema)
    wanted: dict[tuple[str, str | None, str], tuple[Item, str]] = {}
    # Deferrable uniques of a held or paused table, indexes of a table not streaming yet: left as they are.
    keep: set[tuple[str, str | None, str]] = set()
    for item in plan.items:
        if item.left_out or not item.dual_write or item.kind == "type" or item.name is None:
            continue
        if item.table not in specs:
            continue
        kind = _object_kind(item, DUAL_WRITE)
        key = ("constraint", item.table, item.name) if kind == "constraint" else ("relation", None, item.name)
        if item.after_load and item.table not in index_now and states.get(item.table or "") != STREAMING:
            # Made once the table streams. One that exists as the plan has it stays
            # meanwhile (a reload keeps the live table's); one that differs (SQLite's index
            # changed, or it is the cutover's unique one) goes now, as any stale object.
            existing = have.get(key) or have.get(("relation", None, item.name))
            if existing is None or existing.comment == item.marker(DUAL_WRITE, source):
                keep.add(key)
            continue
        if item.needs_streaming:
            # Rows of a table being loaded come from several moments: a unique constraint
            # could trip between chunks. It exists from the moment the table streams.
            state = states.get(item.table or "")
            if state is None or state in LOADING_STATES:
                continue
            if state != STREAMING:
                keep.add(key)
                continue
        wanted[key] = (item, item.marker(DUAL_WRITE, source))
    # Drop what is ours and not wanted as it is: views, then foreign keys and checks
    # (they may depend on a unique constraint), then the rest.
    stale = [obj for key, obj in have.items() if obj.owned_by(source) and (obj.table in specs or obj.kind == "view")
             and key not in keep and (key not in wanted or wanted[key][1] != obj.comment)]
    stale.sort(key=lambda o: (o.kind != "view", o.contype not in ("f", "c"), o.kind != "constraint"))
    if any(o.kind == "view" for o in stale):  # a view another reads goes after it (Postgres refuses it before)
        stale = _readers_first(stale, await _view_readers(conn, schema))
    now = time.monotonic()
    locked: set[str | None] = {t for (src, t), until in _locked_until.items() if src == source and until > now}
    for obj in stale:
        memo = (source, obj.name, obj.comment or "")
        if obj.table in locked or _retry_at.get(memo, 0.0) > time.monotonic():
            continue
        try:
            async with conn.transaction():
                await run(conn, _drop_sql(schema, obj))
            report.dropped.append(f"{obj.kind} {obj.name}")
            have.pop(("constraint", obj.table, obj.name), None)
            have.pop(("relation", None, obj.name), None)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
            _failed(memo, e)
            if conn.is_closed():
                raise
            report.failed.append((f"dropping {obj.kind} {obj.name}", describe(e), None, None))
            if isinstance(e, asyncpg.LockNotAvailableError) and obj.table is not None:
                locked.add(obj.table)
                _locked_until[(source, obj.table)] = time.monotonic() + RETRY_LOCKED_SECONDS
    for key, (item, marker) in wanted.items():
        if item.table in locked:
            continue
        existing = have.get(key) or have.get(("relation", None, key[2]))
        if existing is not None:
            if not existing.owned_by(source):
                report.failed.append((f"{item.table}: {item.what}", _name_taken(item.name or "", existing), None, None))
            continue
        memo = (source, item.name or "", marker)
        if _retry_at.get(memo, 0.0) > time.monotonic():
            continue
        if time.monotonic() - started > budget:
            report.waiting.append(f"{item.table}: {item.what}")
            continue
        try:
            async with conn.transaction():
                for sql in item.dual_write:
                    await run(conn, sql)
                await run(conn, _comment_sql(schema, item, key[0] if key[0] == "constraint" else "index", marker))
            report.created.append(f"{item.table}: {item.what}")
            _retry_at.pop(memo, None)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
            _failed(memo, e)
            if conn.is_closed():
                raise  # the connection went (a cancel not acknowledged): the pass ends, the object waits
            report.failed.append((f"{item.table}: {item.what}", describe(e), item.name, marker))
            if isinstance(e, asyncpg.LockNotAvailableError):
                locked.add(item.table)
                if item.table is not None:
                    _locked_until[(source, item.table)] = time.monotonic() + RETRY_LOCKED_SECONDS
            if isinstance(e, TimeoutError):
                # [postgres] statement_timeout_seconds ran out (an index build on a large
                # table): asyncpg cancelled it, the savepoint undid it. The rest waits for a
                # later call, so that one step of the daemon spends one timeout at most.
                break
    return report


async def _view_readers(conn: asyncpg.Connection, schema: str) -> dict[str, set[str]]:
    """Each view of `schema` that other views read -> the names of those views."""
    out: dict[str, set[str]] = {}
    for read, reader in await conn.fetch(
            "SELECT DISTINCT t.relname, v.relname FROM pg_rewrite r JOIN pg_depend d ON d.classid = "
            "'pg_rewrite'::regclass AND d.objid = r.oid AND d.refclassid = 'pg_class'::regclass "
            "JOIN pg_class v ON v.oid = r.ev_class JOIN pg_class t ON t.oid = d.refobjid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = $1 AND t.relkind = 'v' "
            "AND v.oid <> t.oid", schema):
        out.setdefault(read, set()).add(reader)
    return out


def _readers_first(stale: list[PgObject], readers: dict[str, set[str]]) -> list[PgObject]:
    """`stale` with each view after the views among them that read it."""
    left = [o for o in stale if o.kind == "view"]
    ordered: list[PgObject] = []
    while left:
        names = {o.name for o in left}
        ready = [o for o in left if not readers.get(o.name, set()) & names] or left
        ordered += ready
        left = [o for o in left if o not in ready]
    return ordered + [o for o in stale if o.kind != "view"]


def _failed(memo: tuple[str, str, str], e: BaseException) -> None:
    """When the object of `memo` is tried again: a lock not had soon, a refusal later."""
    wait = RETRY_LOCKED_SECONDS if isinstance(e, asyncpg.LockNotAvailableError) else RETRY_FAILED_SECONDS
    _retry_at[memo] = time.monotonic() + wait


# --- typed columns ---------------------------------------------------------------------------


@dataclass
class Retyped:
    table: str
    column: str
    pgtype: PgType
    sqlite_format: str | None  # None: a number (parity/numbers.py), nothing to spell


async def retype(conn: asyncpg.Connection, source: str, bk_schema: str, schema: str, spec: TableSpec,
                 items: list[Item], cutover: bool = False) -> tuple[list[Retyped], list[tuple[Item, str]]]:
    """Retype the table's columns the plan types, after proving in Postgres that each
    stored text parses and renders back to itself (the same proof the audit made on
    the SQLite values in Python; for a number, that each text converts back to itself:
    numbers.py). One ALTER TABLE for all of them (one rewrite), in a
    savepoint; the bookkeeping records each column's type and SQLite spelling. In the
    `cutover`, contention (CONTENTION) is raised, not taken for a refusal; during
    dual-write a column it kept text is tried again at a later pass."""
    passes = CONTENTION if cutover else ()
    table = qualified(schema, spec.name)
    ready: list[tuple[Item, dates.Format | None, PgType]] = []
    refused: list[tuple[Item, str]] = []
    for item in items:
        v = item.verdict
        assert v is not None and v.pgtype is not None and item.column is not None
        col = quote_pg_ident(item.column)
        if v.format is None:
            differs = numbers.pg_differs(item.column, v.pgtype)
        else:
            differs = (f"{dates.pg_render(dates.pg_using(item.column, v.format, v.pgtype), v.format, v.pgtype)} "
                       f"IS DISTINCT FROM {col}")
        check = f"SELECT count(*) FROM {table} WHERE {col} IS NOT NULL AND {differs}"
        try:
            async with conn.transaction():
                bad = await conn.fetchval(check)
                if bad and v.format is None and v.pgtype is PgType.DOUBLE:
                    # Texts in SQLite's layout that Postgres prints otherwise: the exact check.
                    bad = numbers.exact_reals(await conn.fetch(
                        f"SELECT {col}, {col}::double precision FROM {table} WHERE {col} IS NOT NULL AND {differs}"))
        except passes:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            refused.append((item, f"Postgres cannot convert every value: {describe(e)}"))
            continue
        if bad:
            refused.append((item, f"{bad} value(s) Postgres would not convert back to their text exactly"))
            continue
        ready.append((item, v.format, v.pgtype))
    if not ready:
        return [], refused
    parts_of: list[list[str]] = []
    for item, fmt, pgtype in ready:
        parts: list[str] = []
        parts_of.append(parts)
        col = quote_pg_ident(item.column or "")
        parts.append(f"ALTER COLUMN {col} DROP DEFAULT")
        using = (numbers.pg_using(item.column or "", pgtype) if fmt is None
                 else dates.pg_using(item.column or "", fmt, pgtype))
        parts.append(f"ALTER COLUMN {col} TYPE {pgtype.value} USING {using}")
        default_sql = spec.column(item.column or "").default_sql
        default = translate_default(default_sql, pgtype)
        if default is None and fmt is not None:
            default = dates.now_default(default_sql, fmt, pgtype)
        if default is not None:
            parts.append(f"ALTER COLUMN {col} SET DEFAULT {default}")
    async def alter(group: list[int]) -> list[Retyped]:
        out = []
        async with conn.transaction():
            await run(conn, f"ALTER TABLE {table} " + ", ".join(p for i in group for p in parts_of[i]))
            for i in group:
                item, fmt, pgtype = ready[i]
                spec_ = fmt.spec if fmt is not None else None
                await _record_column(conn, bk_schema, source, spec.name, item.column or "", pgtype, spec_)
                out.append(Retyped(spec.name, item.column or "", pgtype, spec_))
        return out

    try:
        return await alter(list(range(len(ready)))), refused
    except passes:
        raise
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        if len(ready) == 1 or conn.is_closed() or isinstance(e, asyncpg.QueryCanceledError):
            refused += [(item, f"Postgres refused the new type: {describe(e)}") for item, _f, _t in ready]
            return [], refused
    # Postgres refused one of them (an object of the application's reads the column, say):
    # each column on its own, so that the others get their type.
    done: list[Retyped] = []
    for i, (item, _f, _t) in enumerate(ready):
        try:
            done += await alter([i])
        except passes:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            refused.append((item, f"Postgres refused the new type: {describe(e)}"))
            if conn.is_closed() or isinstance(e, asyncpg.QueryCanceledError):
                refused += [(it, f"Postgres refused the new type: {describe(e)}") for it, _f2, _t2 in ready[i + 1:]]
                break
    return done, refused


async def _record_column(conn: asyncpg.Connection, bk_schema: str, source: str, table: str, column: str,
                         pgtype: PgType, fmt: str | None) -> None:
    await conn.execute(
        f"INSERT INTO {quote_pg_ident(bk_schema)}.columns(source, table_name, column_name, pgtype, sqlite_format) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (source, table_name, column_name) DO UPDATE SET "
        "pgtype = EXCLUDED.pgtype, sqlite_format = EXCLUDED.sqlite_format",
        source, table, column, pgtype.value, fmt)


async def retyped_columns(conn: asyncpg.Connection, bk_schema: str,
                          source: str) -> dict[str, dict[str, tuple[PgType, str | None]]]:
    """The columns schema parity gave a type (table -> column -> (type, SQLite spelling)),
    from bookkeeping: introspection keeps using these types, so a forward stream after a
    rollback converts each value to the column's type, and only a value in the column's
    spelling. {} before bookkeeping exists."""
    try:
        rows = await conn.fetch(
            f"SELECT table_name, column_name, pgtype, sqlite_format FROM {quote_pg_ident(bk_schema)}.columns "
            "WHERE source = $1", source)
    except asyncpg.UndefinedTableError:
        return {}
    out: dict[str, dict[str, tuple[PgType, str | None]]] = {}
    for table, column, pgtype, fmt in rows:
        try:
            out.setdefault(table, {})[column] = (PgType(pgtype), fmt)
        except ValueError:
            continue  # a type this syncd does not know: introspection decides as usual
    return out


# --- reading the SQLite side ------------------------------------------------------------------


def read_sqlite(conn: sqlite3.Connection, specs: dict[str, TableSpec], views: list[str],
                options: Options, audit_types: bool, quick: bool = False
                ) -> tuple[SourceObjects, dict[tuple[str, str], dates.Verdict]]:
    """The file's objects and, with `audit_types`, every date candidate's verdict: each
    value read in Python (window by window), or `quick`: checked in SQL against the
    spelling a sample shows (the cutover's frozen file; Postgres proves each value); and
    every text column typed from its values (numbers.py): its values counted by storage
    class in SQL."""
    objects = read_objects(conn, list(specs), views)
    verdicts: dict[tuple[str, str], dates.Verdict] = {}
    if audit_types and options.typed_columns != "never":
        for name, spec in specs.items():
            cols = [c.name for c in spec.stored_columns if c.pgtype is PgType.TEXT and dates.is_candidate(c.declared)
                    and c.name not in objects.table(name).collations]
            if quick:
                for col, v in dates.audit_quick(conn, spec, cols, options.timestamp_override).items():
                    verdicts[(name, col)] = v
                continue
            for col, a in dates.audit(conn, spec, cols).items():
                verdicts[(name, col)] = a.verdict(options.timestamp_override)
        for name, spec in specs.items():
            cols = [c.name for c in spec.stored_columns if numbers.is_candidate(c)
                    and c.name not in objects.table(name).collations]
            for col, v in numbers.audit(conn, spec, cols).items():
                verdicts[(name, col)] = v
    return objects, verdicts


# How long the cutover's own reads of the file wait for its application's lock.
CUTOVER_BUSY_TIMEOUT_MS = 10_000


# --- cutover -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str
    table: str | None
    what: str
    name: str | None
    detail: str  # why it is carried this way, or why it is not

    def line(self) -> str:
        where = f"{self.table}: " if self.table else ""
        named = f' as "{self.name}"' if self.name else ""
        return f"{where}{self.what}{named}: {self.detail}"


@dataclass
class FinalizeResult:
    """What finalize created in Postgres and what it did not, each with the reason."""

    created: list[Outcome] = field(default_factory=list)
    not_created: list[Outcome] = field(default_factory=list)
    orphans: list[orphans.OrphanCount] = field(default_factory=list)
    not_valid: list[str] = field(default_factory=list)  # foreign keys left NOT VALID (--allow-orphans)
    retyped: list[Retyped] = field(default_factory=list)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step, for the downtime's account

    def lines(self) -> list[str]:
        out = [f"created: {o.line()}" for o in self.created]
        out += [f"NOT created: {o.line()}" for o in self.not_created]
        return out


class ParityRefused(Exception):
    """The cutover must not go on (the caller's transaction rolls back); one line per reason."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class OrphanRows(ParityRefused):
    pass


async def finalize(conn: asyncpg.Connection, settings, source, specs: dict[str, TableSpec],
                   allow_orphans: bool = False, sqlite_path=None) -> FinalizeResult:
    """Turn the replica into the application's database, inside the caller's final
    transaction (opened here if there is none): case-insensitive NOCASE columns, typed
    date columns (bookkeeping records their SQLite spelling) and number columns
    without a declared type (numbers.py), immediate UNIQUE
    constraints and unique indexes, CHECKs, FOREIGN KEYs (validated; NOT VALID with
    `allow_orphans`), views. Everything Postgres refuses is listed in the result with
    its reason; nothing is silently dropped. Raises OrphanRows (nothing created) when a
    foreign key has orphans and `allow_orphans` is false.

    `source` is the SourceSettings; `specs` the replicated tables (name -> TableSpec,
    as the cutover's final introspection read them); the SQLite file (frozen by then)
    is read at `sqlite_path` or the source's path."""
    if not conn.is_in_transaction():
        async with conn.transaction():
            return await finalize(conn, settings, source, specs, allow_orphans, sqlite_path)
    started = time.monotonic()
    options = Options.from_settings(settings)
    bk_schema = settings.postgres.bookkeeping_schema
    schema = source.schema
    path = sqlite_path or source.path
    specs = _with_types(specs, await retyped_columns(conn, bk_schema, source.name))
    views = await asyncio.to_thread(_view_names, path, source)

    def read() -> tuple[SourceObjects, dict]:
        c = open_readonly(path, CUTOVER_BUSY_TIMEOUT_MS)
        try:
            return read_sqlite(c, specs, views, options, audit_types=True, quick=True)
        finally:
            c.close()

    objects, verdicts = await asyncio.to_thread(read)
    plan = plan_source(schema, specs, objects, options, verdicts)
    result = FinalizeResult()
    lap = _Lap(result, started)
    lap("read SQLite")
    result.orphans = await orphans.count(conn, schema, plan.items, specs)
    lap("count orphans")
    with_orphans = [o for o in result.orphans if o.orphans]
    if with_orphans and not allow_orphans:
        raise OrphanRows([o.describe() for o in with_orphans])
    orphaned = {o.constraint for o in with_orphans}

    for item in plan.items:
        if item.left_out:
            result.not_created.append(Outcome(item.kind, item.table, item.what, item.name or item.column,
                                              item.left_out))
    await _drop_earlier_cutover(conn, source.name, schema, specs)
    # A UNIQUE constraint or index is built once, in its final form, after the columns
    # it covers changed (a collation or a type change would rebuild it first).
    uniques = []
    for item in plan.items:
        if item.kind != "unique" or item.left_out or len(item.cutover) < 2:
            continue
        try:
            async with conn.transaction():
                await run(conn, item.cutover[0])
            uniques.append(item)
        except CONTENTION:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            result.not_created.append(Outcome(item.kind, item.table, item.what, item.name,
                                              f"Postgres refused to change it: {describe(e)}"))
    lap("UNIQUE constraints set aside")
    await _nocase(conn, source.name, schema, plan, options, result)
    lap("NOCASE columns")
    for tname, spec in specs.items():
        items = [i for i in plan.for_table(tname) if i.kind == "type" and not i.left_out and i.verdict is not None
                 and (i.cutover or i.dual_write)]
        if not items:
            continue
        done, refused = await retype(conn, source.name, bk_schema, schema, spec, items, cutover=True)
        result.retyped += done
        for r in done:
            item = next(i for i in items if i.column == r.column)
            spelled = f", SQLite spelling {r.sqlite_format}" if r.sqlite_format is not None else ""
            result.created.append(Outcome("type", tname, item.what, r.column,
                                          f"{r.pgtype.value}{spelled}: {item.why}"))
        for item, why in refused:
            result.not_created.append(Outcome("type", tname, item.what, item.column, f"kept as text: {why}"))
    lap("typed columns")
    await _missing_indexes(conn, source.name, schema, plan, specs, result)
    lap("indexes not built before")
    still_exact = {(o.table, o.name) for o in result.not_created if o.kind == "nocase"}
    for kind in ("unique", "check", "foreign key", "view"):
        for item in plan.items:
            if item.kind != kind or item.left_out or not item.cutover:
                continue
            if kind == "unique" and item not in uniques:
                continue
            if kind == "foreign key" and (exact := _stays_exact(item, still_exact)):
                result.not_created.append(Outcome(
                    item.kind, item.table, item.what, item.name,
                    f"SQLite matches it ignoring case, and {exact} stays case-sensitive in Postgres (see its NOCASE "
                    f"line): {FK_CASE_TODO}"))
                continue
            stmts = list(item.cutover[1:] if kind == "unique" else item.cutover)
            detail = item.why
            if kind == "foreign key" and item.name in orphaned:
                stmts[-1] += " NOT VALID"
                count = next(o.orphans for o in with_orphans if o.constraint == item.name)
                detail = (f"NOT VALID: {count} orphan row(s) stay (--allow-orphans); Postgres checks new and "
                          "changed rows only")
                result.not_valid.append(f"{item.table}: {item.what}: {count} orphan row(s)")
            await _create(conn, source.name, schema, item, stmts, detail, result)
        lap(kind)
    result.seconds = time.monotonic() - started
    return result


def _stays_exact(item: Item, still_exact: set[tuple[str | None, str | None]]) -> str | None:
    """The column of a foreign key matched ignoring case that the cutover could not make
    case-insensitive (a Postgres foreign key would then match its pair case-sensitively)."""
    assert item.fk is not None
    for col, p, nocase in zip(item.fk.columns, item.parent_key, item.fk_nocase):
        for table, column in ((item.table, col), (item.fk_parent, p)):
            if nocase and (table, column) in still_exact:
                return f"{table}.{column}"
    return None


class _Lap:
    def __init__(self, result: FinalizeResult, started: float):
        self.result, self.last = result, started

    def __call__(self, what: str) -> None:
        now = time.monotonic()
        self.result.phases[what] = self.result.phases.get(what, 0.0) + now - self.last
        self.last = now


async def _drop_earlier_cutover(conn: asyncpg.Connection, source: str, schema: str,
                                specs: dict[str, TableSpec]) -> None:
    """An earlier cutover's views, foreign keys and CHECKs (finalize run again): dropped
    first, views before the constraints they read, so that the columns and UNIQUE
    constraints they depend on can change; they are created again below."""
    have = await read_pg_objects(conn, schema)
    mine = [o for o in have.values() if o.owned_by(source) and o.stage == CUTOVER
            and (o.kind == "view" or (o.kind == "constraint" and o.contype in ("f", "c") and o.table in specs))]
    for obj in _readers_first(mine, await _view_readers(conn, schema) if mine else {}):
        await run(conn, _drop_sql(schema, obj))


def _with_types(specs: dict[str, TableSpec],
                retyped: dict[str, dict[str, tuple[PgType, str | None]]]) -> dict[str, TableSpec]:
    """`specs` with the types schema parity gave columns earlier (typed during dual-write,
    or a cutover finished before a rollback): those columns are typed already."""
    out = {}
    for name, spec in specs.items():
        types = retyped.get(name, {})
        cols = tuple(dataclasses.replace(c, pgtype=types[c.name][0], sqlite_format=types[c.name][1])
                     if c.name in types and not c.type_note else c for c in spec.columns)
        out[name] = dataclasses.replace(spec, columns=cols) if cols != spec.columns else spec
    return out


async def _missing_indexes(conn: asyncpg.Connection, source: str, schema: str, plan: SourcePlan,
                           specs: dict[str, TableSpec], result: FinalizeResult) -> None:
    """The plain indexes of the dual-write plan are there by now, built once their table
    streamed; one that is not (Postgres refused its build, and the daemon's log said why;
    or SQLite's index changed since the daemon's last schema check) is built here, after
    the column types changed, so that the application does not switch to a Postgres
    without an index its queries use. Listed either way: built, or refused with why."""
    have = await read_pg_objects(conn, schema)
    for item in plan.items:
        if item.kind != "index" or item.left_out or not item.dual_write or item.name is None \
                or item.table not in specs:
            continue
        marker = item.marker(DUAL_WRITE, source)
        existing = have.get(("relation", None, item.name))
        if existing is not None and existing.comment == marker:
            continue
        if existing is not None and not existing.owned_by(source):
            result.not_created.append(Outcome(item.kind, item.table, item.what, item.name,
                                              _name_taken(item.name, existing)))
            continue
        stmts = ([_drop_sql(schema, existing)] if existing is not None else []) + list(item.dual_write)
        try:
            async with conn.transaction():
                for sql in stmts:
                    await run(conn, sql)
                await run(conn, _comment_sql(schema, item, "index", marker))
        except CONTENTION:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
            if conn.is_closed():
                raise
            result.not_created.append(Outcome(item.kind, item.table, item.what, item.name,
                                              f"Postgres refused it: {describe(e)}"))
            continue
        why = "it was not in Postgres" if existing is None else "SQLite's index changed"
        result.created.append(Outcome(item.kind, item.table, item.what, item.name,
                                      f"built in the cutover's transaction ({why})"))


async def _create(conn: asyncpg.Connection, source: str, schema: str, item: Item, stmts: list[str], detail: str,
                  result: FinalizeResult) -> None:
    kind = _object_kind(item, CUTOVER)
    if item.kind in ("check", "foreign key", "view") and item.name:
        # One of an earlier cutover's (rolled back since, say) is replaced; anyone else's is not touched.
        key = ("constraint", item.table, item.name) if kind == "constraint" else ("relation", None, item.name)
        existing = (await read_pg_objects(conn, schema)).get(key)
        if existing is not None:
            if not existing.owned_by(source):
                result.not_created.append(Outcome(item.kind, item.table, item.what, item.name,
                                                  _name_taken(item.name, existing)))
                return
            stmts = [_drop_sql(schema, existing), *stmts]
    try:
        async with conn.transaction():
            for sql in stmts:
                await run(conn, sql)
            await run(conn, _comment_sql(schema, item, kind, item.marker(CUTOVER, source)))
    except CONTENTION:
        raise
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        why = describe(e)
        if item.kind == "check" and item.check_sql and isinstance(e, asyncpg.CheckViolationError):
            why = await _failing_rows(conn, schema, item) or why
        result.not_created.append(Outcome(item.kind, item.table, item.what, item.name, f"Postgres refused it: {why}"))
        return
    result.created.append(Outcome(item.kind, item.table, item.what, item.name, detail))


async def _failing_rows(conn: asyncpg.Connection, schema: str, item: Item) -> str | None:
    try:
        async with conn.transaction():
            pk = await conn.fetch(
                "SELECT a.attname FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid "
                "AND a.attnum = ANY (x.indkey::int2[]) WHERE x.indrelid = $1::regclass AND x.indisprimary",
                qualified(schema, item.table or ""))
            keys = ", ".join(quote_pg_ident(r[0]) for r in pk) or "ctid"
            rows = await conn.fetch(f"SELECT {keys} FROM {qualified(schema, item.table or '')} "
                                    f"WHERE NOT ({item.check_sql}) LIMIT {orphans.SAMPLE_KEYS}")
            n = await conn.fetchval(f"SELECT count(*) FROM {qualified(schema, item.table or '')} "
                                    f"WHERE NOT ({item.check_sql})")
    except (asyncpg.PostgresError, asyncpg.InterfaceError):
        return None
    shown = ", ".join(repr(r[0]) if len(r) == 1 else repr(tuple(r)) for r in rows)
    return f"{n} row(s) fail it (SQLite holds them as they are; keys {shown})"


async def _nocase(conn: asyncpg.Connection, source: str, schema: str, plan: SourcePlan, options: Options,
                  result: FinalizeResult) -> None:
    items = [i for i in plan.items if i.kind == "nocase" and not i.left_out and i.cutover]
    # A unique index under NOCASE on a column that is not (PRIMARY KEY (name COLLATE
    # NOCASE), CREATE UNIQUE INDEX ... (name COLLATE NOCASE)) is made under the collation
    # too, after this: it must exist even where no column takes it.
    collation = qualified(schema, NOCASE_COLLATION)
    indexed = options.nocase == "icu" and any(collation in stmt for i in plan.items if not i.left_out
                                              for stmt in i.cutover)
    if not items and not indexed:
        return
    if options.nocase == "citext":
        type_sql, problem = await _citext(conn, schema)
    else:
        type_sql, problem = f"text COLLATE {qualified(schema, NOCASE_COLLATION)}", None
        try:
            async with conn.transaction():
                await run(conn, f"CREATE COLLATION IF NOT EXISTS {qualified(schema, NOCASE_COLLATION)} "
                                f"(provider = icu, locale = {pg_string_literal(ICU_LOCALE)}, deterministic = false)")
        except CONTENTION:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            problem = (f"the ICU collation could not be created ({describe(e)}); set [cutover] nocase = \"citext\" "
                       "or \"none\"")
    for item in items:
        if problem:
            result.not_created.append(Outcome("nocase", item.table, item.what, item.column, problem))
            continue
        try:
            async with conn.transaction():
                await run(conn, f"ALTER TABLE {qualified(schema, item.table or '')} ALTER COLUMN "
                                f"{quote_pg_ident(item.column or '')} TYPE {type_sql}")
        except CONTENTION:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            result.not_created.append(Outcome("nocase", item.table, item.what, item.column,
                                              f"Postgres refused it: {describe(e)} (equality stays case-sensitive)"))
            continue
        result.created.append(Outcome("nocase", item.table, item.what, item.column, item.why))


async def _citext(conn: asyncpg.Connection, schema: str) -> tuple[str, str | None]:
    """The citext type's qualified name, installing the extension into `schema` when
    the database lacks it (a trusted extension: CREATE on the database suffices)."""
    where = await conn.fetchval("SELECT n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                                "WHERE t.typname = 'citext' LIMIT 1")
    if where is None:
        try:
            async with conn.transaction():
                await run(conn, f"CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA {quote_pg_ident(schema)}")
        except CONTENTION:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            return "", (f"the citext extension could not be installed ({describe(e)}); a database owner can run "
                        "CREATE EXTENSION citext, or set [cutover] nocase = \"icu\"")
        where = schema
    return qualified(where, "citext"), None


def _view_names(path, source) -> list[str]:
    """Views of the file the source's configuration wants."""
    c = open_readonly(path, CUTOVER_BUSY_TIMEOUT_MS)
    c.text_factory = surrogate_text  # a name that is not UTF-8 is left out (introspect): no SQL names it
    try:
        names = [r[0] for r in c.execute("SELECT name FROM main.sqlite_master WHERE type = 'view'")]
    finally:
        c.close()
    return [n for n in names if source.wants_table(n) and not not_utf8(n)]


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
