"""DDL for the replicated tables in Postgres, and reading back what exists there."""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass

import asyncpg

from syncd.identifiers import PG_MAX_IDENTIFIER_BYTES, qualified, quote_literal, quote_pg_ident
from syncd.model import ROWID_COLUMN, Column, TableSpec
from syncd.printable import escape_controls, shorten
from syncd.types import PgDefault, PgType, added_rows_differ, pg_default

# format_type() spellings of the types syncd creates.
_FORMAT_TYPE = {
    PgType.BIGINT: "bigint",
    PgType.DOUBLE: "double precision",
    PgType.NUMERIC: "numeric",
    PgType.TEXT: "text",
    PgType.BYTEA: "bytea",
    PgType.BOOLEAN: "boolean",
    PgType.JSON: "json",
    PgType.JSONB: "jsonb",
    PgType.TIMESTAMP: "timestamp without time zone",
    PgType.TIMESTAMPTZ: "timestamp with time zone",
    PgType.DATE: "date",
}
_FROM_FORMAT_TYPE = {v: k for k, v in _FORMAT_TYPE.items()}


def _streamed_as(type_name: str) -> str:
    """The format_type() spelling syncd streams a column of `type_name` as: a COLLATE
    NOCASE column schema parity made citext at cutover (format_type qualifies it when its
    schema is not on the search path) is still text to syncd."""
    if type_name == "citext" or type_name.endswith(".citext"):
        return "text"
    return type_name


_IN_PLACE = {
    "text": re.compile(r"character varying(\(\d+\))?"),
    "numeric": re.compile(r"numeric\(\d+(,\d+)?\)"),
    "timestamp without time zone": re.compile(r"timestamp\(\d\) without time zone"),
    "timestamp with time zone": re.compile(r"timestamp\(\d\) with time zone"),
    # Postgres rewrites the table for these, every value staying as it is: a table the
    # application made in Postgres after the cutover (`serial`, `integer`, `real` columns).
    "bigint": re.compile(r"integer|smallint"),
    "double precision": re.compile(r"real"),
}


def widens_in_place(have: str, want: str) -> bool:
    """Whether Postgres retypes a column of `have` (format_type) to `want` in place,
    every value staying as it is and no row deleted: a length, scale or precision limit
    dropped (varchar(n) to text, numeric(p,s) to numeric, timestamp(p) to timestamp),
    without rewriting the table or its indexes, as an application may set on a column
    after the cutover; or a narrower integer made bigint, a real double precision (a
    rewrite of the table)."""
    pattern = _IN_PLACE.get(want)
    return pattern is not None and pattern.fullmatch(have) is not None


def column_default(col: Column) -> PgDefault:
    """The DEFAULT syncd writes for `col` (built by syncd from the literal's value, never
    SQLite's text), or why SQLite's default is not carried."""
    return pg_default(col.default_sql, col.pgtype, col.declared)


def default_note(col: Column) -> str | None:
    """One printable line saying that `col`'s SQLite default is not carried, and why."""
    why = column_default(col).not_carried
    if why is None:
        return None
    return f"default {shorten(col.default_sql or '', 80)} not carried: {why}"


def added_rows_note(col: Column) -> str | None:
    """Why the rows a column was added to (ALTER TABLE ADD COLUMN) hold another value in
    Postgres than in SQLite once Postgres adds it too, or None when they agree."""
    if col.generated:
        return "a generated column: SQLite computes its value in the rows already there, Postgres adds it empty"
    return added_rows_differ(col.default_sql, col.pgtype, col.declared)


def column_sql(col: Column, in_key: bool, identity: bool = False) -> str:
    parts = [quote_pg_ident(col.name), col.pgtype.value]
    if col.notnull and not in_key:
        parts.append("NOT NULL")
    default = column_default(col).sql
    if identity:
        parts.append(IDENTITY)  # Postgres takes no DEFAULT beside it: the identity numbers rows
    elif default is not None:
        parts.append(f"DEFAULT {default}")
    return " ".join(parts)


async def run_ddl(conn: asyncpg.Connection, sql: str) -> None:
    """Run one DDL statement through the extended protocol, which refuses a second
    statement: even a quoting bug could not smuggle one in."""
    stmt = await conn.prepare(sql)
    await stmt.fetch()


async def column_fills(conn: asyncpg.Connection, schema: str) -> list[tuple[str, str, bool, str | None]]:
    """(table, column, NOT NULL, how Postgres fills the column in a row that leaves it out:
    'an identity', 'DEFAULT <expression>', or None) of the schema's tables, generated
    columns aside: what the cutover and the rollback compare with SQLite's defaults."""
    rows = await conn.fetch(
        "SELECT c.relname, a.attname, a.attnotnull, CASE WHEN a.attidentity <> '' THEN 'an identity' "
        "WHEN d.adbin IS NOT NULL THEN 'DEFAULT ' || pg_get_expr(d.adbin, d.adrelid) END FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped "
        "AND a.attgenerated = '' ORDER BY 1, 2", schema)
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def identity_column(spec: TableSpec) -> str | None:
    """The column SQLite numbers itself (an INTEGER PRIMARY KEY, AUTOINCREMENT or not, or
    a keyless table's rowid): in Postgres an identity column, so that once the
    application writes there, an INSERT without it gets the next number, as in SQLite.
    BY DEFAULT: syncd itself always writes SQLite's own numbers."""
    return spec.key[0] if spec.rowid_alias or spec.rowid_keyed else None


IDENTITY = "GENERATED BY DEFAULT AS IDENTITY"


def create_table_sql(schema: str, spec: TableSpec) -> str:
    ident = identity_column(spec)
    lines = [f"    {column_sql(c, c.name in spec.key, identity=c.name == ident)}" for c in spec.columns]
    lines.append(f"    PRIMARY KEY ({', '.join(quote_pg_ident(k) for k in spec.key)})")
    return f"CREATE TABLE IF NOT EXISTS {qualified(schema, spec.name)} (\n" + ",\n".join(lines) + "\n)"


def create_aside_sql(schema: str, name: str, spec: TableSpec) -> str:
    """The table a reload fills before it replaces the live rows: the same columns and
    types, no constraints (the live table checks them when the rows move in)."""
    cols = ", ".join(f"{quote_pg_ident(c.name)} {c.pgtype.value}" for c in spec.columns)
    return f"CREATE TABLE {qualified(schema, name)} ({cols})"


async def replace_rows(conn: asyncpg.Connection, schema: str, spec: TableSpec, aside_schema: str, aside: str,
                       too_slow: str | None = None, lock_wait_ms: int | None = None) -> list[tuple[str, str]]:
    """Inside the caller's transaction: the live table's rows become the aside table's,
    reshaped first if the shape moved. Readers see the old rows until the commit, then
    the new ones, never an empty or half-filled table. Returns the columns the reshape
    kept aside (reshape_empty_table). `too_slow`: the retype of the rows as they are that
    ran over the statement timeout before (RewriteTooSlow), raised again without a try;
    `lock_wait_ms`: how long that retype waits for the table's lock (LockNotAvailable)."""
    table = qualified(schema, spec.name)
    pgt = (await read_tables(conn, schema)).get(spec.name)
    # Columns kept aside after a drop in SQLite keep their values, row by row.
    # (A column SQLite has is the application's, whatever its name looks like.)
    kept = [c.name for c in pgt.columns if is_aside(c.name) and c.name not in spec.column_names] \
        if pgt is not None else []
    if pgt is not None and any(pgt.column(k) is None for k in spec.key):
        kept = []  # keyed anew: no row of the new load can be matched to its kept values
    key = ", ".join(quote_pg_ident(k) for k in spec.key)
    # A keyless table's rowids may have been renumbered (VACUUM): its rows are matched to
    # their kept values by their content too (_match_kept), never by the rowid alone.
    carried = [c.name for c in spec.columns if c.name not in spec.key and pgt is not None
               and pgt.column(c.name) is not None] if spec.rowid_keyed else []
    if kept:
        await conn.execute("DROP TABLE IF EXISTS pg_temp._syncd_kept")
        await conn.execute(f"CREATE TEMP TABLE _syncd_kept ON COMMIT DROP AS SELECT {key}, "
                           f"{', '.join(quote_pg_ident(c) for c in kept + carried)} FROM {table}")
    referenced = pgt is not None and await referenced_elsewhere(conn, table)
    if pgt is not None and not diff_shape(spec, pgt).same and (
            referenced or await _linked_by_foreign_keys(conn, table, [n for n, _, _ in diff_shape(spec, pgt).retyped])):
        try:
            pgt = await _retype_rows_as_they_are(conn, schema, spec, pgt, too_slow, lock_wait_ms, strict=referenced,
                                                 loaded=qualified(aside_schema, aside))
        except RewriteTooSlow as e:
            e.referenced = referenced
            raise
    if pgt is not None:
        await follow_nullable(conn, table, spec, pgt)
    # A column Postgres computes takes no value: it computes it from the row, as for the
    # stream's rows (the aside table holds NULL there: the load left it out).
    left = computed(pgt, spec)
    cols = ", ".join(quote_pg_ident(c) for c in spec.column_names if c not in left)
    set_aside = []
    if referenced and diff_shape(spec, pgt).same:
        # Another table's foreign key points at these rows (the application's, made in
        # Postgres after a cutover): deleting them all would fire its action (ON DELETE
        # CASCADE empties that table, SET NULL clears it) or fail. A row whose key stays
        # is rewritten in place; only the rows SQLite no longer has are deleted.
        await _refill_in_place(conn, table, spec, left, qualified(aside_schema, aside))
    else:
        await conn.execute(f"DELETE FROM {table}")
        if pgt is not None and not diff_shape(spec, pgt).same:
            set_aside = await reshape_empty_table(conn, schema, spec, pgt)
        await conn.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {qualified(aside_schema, aside)}")
    # A NOT NULL column added while the table held rows went in nullable (its rows had no
    # value yet): now that each has one, it is NOT NULL as a fresh load would make it.
    # (Columns the reshape added are made as spec says already.)
    for col in spec.columns:
        had = pgt.column(col.name) if pgt is not None else None
        if col.notnull and col.name not in spec.key and had is not None and not had.notnull:
            await conn.execute(f"ALTER TABLE {table} ALTER COLUMN {quote_pg_ident(col.name)} SET NOT NULL")
    # Likewise each column's DEFAULT: SQLite gives or changes one only by rebuilding its
    # table, which this reload follows. Without it, an INSERT of the application's after
    # a cutover stores what SQLite no longer gives (or NULL, or fails). Identity and
    # generated columns, a column Postgres holds in another type than syncd streams (typed
    # at a cutover, or by the application: its DEFAULT is theirs), and a sequence's
    # nextval are left as they are.
    if pgt is not None:
        await _follow_defaults(conn, table, spec, pgt)
    if kept:
        sets = ", ".join(f"{quote_pg_ident(c)} = k.{quote_pg_ident(c)}" for c in kept)
        match = " AND ".join(f"t.{quote_pg_ident(k)} = k.{quote_pg_ident(k)}" for k in spec.key)
        if spec.rowid_keyed:
            await _match_kept(conn, table, spec.key[0], kept, carried)
        else:
            await conn.execute(f"UPDATE {table} AS t SET {sets} FROM pg_temp._syncd_kept AS k WHERE {match}")
    await conn.execute(f"DROP TABLE {qualified(aside_schema, aside)}")
    return set_aside


async def follow_nullable(conn: asyncpg.Connection, table: str, spec: TableSpec, pgt: PgTable) -> None:
    """Let each column SQLite lets hold NULL hold NULL in Postgres too: SQLite drops a
    column's NOT NULL only by rebuilding its table, which the reload follows; without it,
    the first row with NULL there (the reloaded ones, or the application's next) is refused
    and holds the table. Key and identity columns are left as they are."""
    for col in spec.columns:
        had = pgt.column(col.name)
        if not col.notnull and col.name not in spec.key and had is not None and had.notnull \
                and col.name not in pgt.key and not had.identity:
            await conn.execute(f"ALTER TABLE {table} ALTER COLUMN {quote_pg_ident(col.name)} DROP NOT NULL")
            # Said, as a NOT NULL the application set in Postgres (after a cutover, kept
            # through a rollback) goes too: SQLite's rows may hold NULL there now.
            logging.getLogger("syncd").warning(
                f"table {table}: column {quote_pg_ident(col.name)} may hold NULL in SQLite now (its table rebuilt "
                "without NOT NULL): its NOT NULL in Postgres is dropped", extra={"event": "not_null_dropped"})


async def _follow_defaults(conn: asyncpg.Connection, table: str, spec: TableSpec, pgt: PgTable) -> None:
    """Set each column's DEFAULT in Postgres to SQLite's (column_default) where SQLite has
    one syncd carries; a DEFAULT already equal to it (as Postgres prints both) is not
    touched, so a reload takes no lock for it. A DEFAULT Postgres has where SQLite has none
    syncd carries is kept: it may be the one the cutover asks the operator to set by hand
    (SQLite's not carried), or the application's own, made while it was cut over."""
    have = {r[0]: r[1] for r in await conn.fetch(
        "SELECT a.attname, pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a LEFT JOIN pg_attrdef d "
        "ON d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE a.attrelid = $1::regclass AND a.attnum > 0 "
        "AND NOT a.attisdropped AND a.attidentity = '' AND a.attgenerated = ''", table)}
    for col in spec.columns:
        had = pgt.column(col.name)
        if col.name not in have or had is None or col.sqlite_format is not None or had.pgtype is not col.pgtype:
            continue
        current, want = have[col.name], column_default(col).sql
        if current is not None and current.startswith("nextval("):
            continue
        if want is not None and (current is None or current != await _printed_default(conn, had.type_name, want)):
            await run_ddl(conn, f"ALTER TABLE {table} ALTER COLUMN {quote_pg_ident(col.name)} SET DEFAULT {want}")


async def _printed_default(conn: asyncpg.Connection, type_name: str, default: str) -> str | None:
    """`default` as Postgres prints a column's DEFAULT (pg_get_expr), for a column of
    `type_name`: a temporary table's column takes it and says it."""
    await conn.execute("DROP TABLE IF EXISTS pg_temp._syncd_default")
    await run_ddl(conn, f"CREATE TEMP TABLE _syncd_default (c {type_name} DEFAULT {default}) ON COMMIT DROP")
    return await conn.fetchval("SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d "
                               "WHERE d.adrelid = 'pg_temp._syncd_default'::regclass")


async def _match_kept(conn: asyncpg.Connection, table: str, rowid: str, kept: list[str], carried: list[str]) -> None:
    """The kept values of a keyless table's rows (pg_temp._syncd_kept: the old rows' rowid,
    kept columns and carried columns), each set on the reloaded row it belongs to. A row
    keeps its rowid unless VACUUM renumbered it (in rowid order), so a row takes the kept
    values of the old row under its rowid when every carried column agrees, else those
    of the old row with the same carried values at the same place in rowid order among
    the rows left unmatched, else (the application changed the row since) those of the
    old row under its rowid, if no other row took them. A row matching none keeps its
    kept columns empty."""
    r = quote_pg_ident(rowid)
    sets = ", ".join(f"{quote_pg_ident(c)} = k.{quote_pg_ident(c)}" for c in kept)
    values = [f"{quote_pg_ident(c)}::text" for c in carried]
    same = " AND ".join(f"t.{v} IS NOT DISTINCT FROM k.{v}" for v in values) or "true"
    pairs = "pg_temp._syncd_kept_pairs"  # (reloaded row's rowid, old row's rowid)
    unpaired_new = f"NOT EXISTS (SELECT 1 FROM {pairs} AS p WHERE p.new = t.{r})"
    unpaired_old = f"NOT EXISTS (SELECT 1 FROM {pairs} AS p WHERE p.old = k.{r})"
    await conn.execute(f"DROP TABLE IF EXISTS {pairs}")
    await conn.execute(f"CREATE TEMP TABLE _syncd_kept_pairs ON COMMIT DROP AS SELECT t.{r} AS new, k.{r} AS old "
                       f"FROM {table} AS t JOIN pg_temp._syncd_kept AS k ON t.{r} = k.{r} AND {same}")
    part = f"PARTITION BY {', '.join(values)} " if values else ""
    rank = f"row_number() OVER ({part}ORDER BY {r})"
    joined = " AND ".join(f"n.{v} IS NOT DISTINCT FROM o.{v}" for v in values)
    on = f"{joined} AND n._syncd_rank = o._syncd_rank" if joined else "n._syncd_rank = o._syncd_rank"
    cols = ", ".join(quote_pg_ident(c) for c in carried)
    await conn.execute(
        f"INSERT INTO {pairs} SELECT n.{r}, o.{r} FROM "
        f"(SELECT {r}, {cols + ', ' if cols else ''}{rank} AS _syncd_rank FROM {table} AS t WHERE {unpaired_new}) AS n "
        f"JOIN (SELECT *, {rank} AS _syncd_rank FROM pg_temp._syncd_kept AS k WHERE {unpaired_old}) AS o ON {on}")
    await conn.execute(f"INSERT INTO {pairs} SELECT t.{r}, k.{r} FROM {table} AS t JOIN pg_temp._syncd_kept AS k "
                       f"ON t.{r} = k.{r} WHERE {unpaired_new} AND {unpaired_old}")
    await conn.execute(f"UPDATE {table} AS t SET {sets} FROM {pairs} AS p JOIN pg_temp._syncd_kept AS k "
                       f"ON k.{r} = p.old WHERE t.{r} = p.new")


async def referenced_elsewhere(conn: asyncpg.Connection, table: str) -> bool:
    """Whether a foreign key of another table points at `table`."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE contype = 'f' AND "
                                    "confrelid = $1::regclass AND conrelid <> confrelid)", table))


class RetypeRefused(Exception):
    """Postgres refused to retype the rows of a table another table's foreign key points
    at as they are: emptying the table to reshape it instead would fire that foreign
    key's action on the other table's rows (ON DELETE CASCADE deletes them)."""


class ReshapeRefused(Exception):
    """A table another table's foreign key points at must be loaded again, and its shape
    moved in a way its rows cannot follow as they are (a column SQLite no longer has):
    emptying it to reshape it would fire that foreign key's action on the
    other table's rows (ON DELETE CASCADE deletes them)."""


class RewriteTooSlow(Exception):
    """Retyping a table's rows as they are (a rewrite of the table) ran over the statement
    timeout: `alters`, the statements to run by hand; `server`, Postgres's cancel (its
    statement_timeout for syncd's role), or None (syncd's own); `referenced`, whether
    another table's foreign key points at the table's rows (else only a foreign key of
    its own links it to another table); `retyped`, `keyed_anew`: what the statements change
    (column types, the primary key)."""

    def __init__(self, alters: str, server: str | None, retyped: bool = True, keyed_anew: bool = False):
        super().__init__(alters)
        self.alters, self.server = alters, server
        self.referenced = True
        self.retyped, self.keyed_anew = retyped, keyed_anew


async def _retype_rows_as_they_are(conn: asyncpg.Connection, schema: str, spec: TableSpec,
                                   pgt: PgTable, too_slow: str | None = None,
                                   lock_wait_ms: int | None = None, strict: bool = False,
                                   loaded: str | None = None) -> PgTable:
    """Where only column types differ, each column made `spec`'s type on the rows as they
    are (their values cast, then rewritten from the load), so that a table another
    table's foreign key points at is not emptied to be reshaped. Postgres refusing (a
    view or a generated column uses the column, a foreign key's type) changes nothing:
    the table is reshaped empty as any other, or, `strict` (another table's foreign key
    points at its rows), RetypeRefused. RewriteTooSlow when the rewrite runs over the
    statement timeout. `loaded`: the table holding the rows about to replace these."""
    diff = diff_shape(spec, pgt)
    table = qualified(schema, spec.name)
    if diff.extra_in_pg or (diff.key_changed and not strict):
        if strict:
            # Emptied to be reshaped, the other table's rows would go with its foreign
            # key's action: the table is held instead, naming what to change by hand.
            raise ReshapeRefused(f"column(s) {', '.join(quote_pg_ident(c) for c in diff.extra_in_pg)} "
                                 "no longer in SQLite's table")
        return pgt
    # A key changed (`strict`): made anew on the rows as they are, where they fit it.
    pkey = await conn.fetchval("SELECT conname FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'p'",
                               table) if diff.key_changed else None
    # A character(n) value is cast to text without the padding SQLite's copy holds (the
    # way back writes it as Postgres hands it out): padded again, the key of every row
    # still matches the load's, and no row is deleted and inserted again. Where that does
    # not hold (a foreign key from a column of another type), the plain cast is tried.
    tries = (True, False) if any(_padded_width(have) for _, have, _ in diff.retyped) else (False,)
    # A key SQLite may hold unpadded (a column made character(n) in Postgres by hand, the
    # file never cut over): the plain cast first where more keys then match the load's.
    # Compared on the table's rows under the retype's own lock wait, in a savepoint, once
    # a retype remembered too slow is not to run again.
    compare = len(tries) == 2 and loaded is not None and any(_padded_width(have) for n, have, _ in diff.retyped
                                                             if n in spec.key)
    have_of = {n: have for n, have, _ in diff.retyped}

    async def matching(padded: bool) -> int:
        on = " AND ".join(f"a.{quote_pg_ident(k)} = " + (
            _cast(f"t.{quote_pg_ident(k)}", have_of[k], spec.column(k).pgtype.value, padded)
            if k in have_of else f"t.{quote_pg_ident(k)}") for k in spec.key)
        return await conn.fetchval(f"SELECT count(*) FROM {table} AS t JOIN {loaded} AS a ON {on}")

    retyped = [n for n, _, _ in diff.retyped]
    links = await _foreign_keys_on(conn, table, retyped)
    here = await conn.fetchval("SELECT $1::regclass::text", table)  # as _foreign_keys_on names it

    async def alters_for(padded: bool) -> list[str]:
        """Every statement of the retype, in order: the columns SQLite added since added
        to the rows as they are (nullable: the reloaded rows fill them), each foreign key
        on a retyped column dropped, the columns retyped, the other end of each (the
        application made both uuid, say) made the same type, its values as they are
        (Postgres keeps no foreign key between two types it cannot compare), the key
        made anew where SQLite's changed, and the foreign keys made again."""
        out = [f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column_sql(col, True)}" for col in diff.missing_in_pg]
        out += [f"ALTER TABLE {link.table} DROP CONSTRAINT {quote_pg_ident(link.name)}" for link in links]
        done = {(here, n) for n in retyped}  # a foreign key of the table's onto itself: retyped already
        for name, have, _want in diff.retyped:
            want = spec.column(name).pgtype.value
            out.append(f"ALTER TABLE {table} ALTER COLUMN {quote_pg_ident(name)} TYPE {want} "
                       f"USING {_cast(quote_pg_ident(name), have, want, padded)}")
            for other, column in sorted({(link.other_table, c) for link in links for c in link.other_columns(name)}):
                if (other, column) not in done and await _type_of(conn, other, column) == have:
                    done.add((other, column))
                    oq = quote_pg_ident(column)
                    out.append(f"ALTER TABLE {other} ALTER COLUMN {oq} TYPE {want} "
                               f"USING {_cast(oq, have, want, padded)}")
        if diff.key_changed:  # as reshape_empty_table does it, on the rows as they are
            if pkey is not None:
                out.append(f"ALTER TABLE {table} DROP CONSTRAINT {quote_pg_ident(pkey)}")
            out += [f"ALTER TABLE {table} ALTER COLUMN {quote_pg_ident(n)} DROP NOT NULL" for n in pgt.key
                    if n not in spec.key and n in spec.column_names and not spec.column(n).notnull]
            out.append(f"ALTER TABLE {table} ADD PRIMARY KEY ({', '.join(quote_pg_ident(k) for k in spec.key)})")
        for link in links:
            out.append(f"ALTER TABLE {link.table} ADD CONSTRAINT {quote_pg_ident(link.name)} {link.definition}")
            if link.comment is not None:
                out.append(f"COMMENT ON CONSTRAINT {quote_pg_ident(link.name)} ON {link.table} "
                           f"IS {quote_literal(link.comment)}")
        return out

    plans = [await alters_for(padded) for padded in tries]
    changes = {"retyped": bool(diff.retyped), "keyed_anew": diff.key_changed}
    if too_slow is not None and too_slow in ("; ".join(p) for p in plans):  # the try that ran over, whichever
        raise RewriteTooSlow(too_slow, None, **changes)
    prior = await conn.fetchval("SELECT current_setting('lock_timeout')")
    if lock_wait_ms is not None:  # a wait for the lock is no rewrite over the statement timeout
        await conn.execute(f"SET LOCAL lock_timeout = '{lock_wait_ms}ms'")
    refused: str | None = None
    try:
        while plans:
            alters = plans[0]
            comparing, compare = compare, False
            try:
                async with conn.transaction():  # a savepoint
                    if comparing:
                        if await matching(False) > await matching(True):
                            plans.reverse()
                    else:
                        for sql in alters:
                            await run_ddl(conn, sql)
                if comparing:
                    continue
            except TimeoutError:
                if conn.is_closed():
                    raise  # an outage: tried again as a whole
                raise RewriteTooSlow("; ".join(alters), None, **changes) from None
            except asyncpg.PostgresError as e:
                from syncd.postgres.connect import QUERY_CANCELED, describe, is_transient, sqlstate

                if sqlstate(e) == QUERY_CANCELED and "statement timeout" in str(e):
                    raise RewriteTooSlow("; ".join(alters), describe(e), **changes) from None
                if lock_wait_ms is not None and isinstance(e, asyncpg.LockNotAvailableError):
                    from syncd.parity import LockNotHad

                    raise LockNotHad(f'table "{spec.name}": its columns are retyped in place before it is loaded '
                                     "again, and another Postgres session holds the table (a long query or "
                                     f"transaction) past {lock_wait_ms} ms; trying again with backoff, changes stay "
                                     "captured in SQLite") from None
                if is_transient(e) or comparing:  # tried again as a whole, never emptied for want of a lock
                    raise
                refused = describe(e)
                plans.pop(0)
                continue
            return (await read_tables(conn, schema)).get(spec.name) or pgt
        if strict and refused is not None:
            raise RetypeRefused(refused)
        return pgt
    finally:
        if lock_wait_ms is not None and not conn.is_closed():
            await conn.execute("SELECT set_config('lock_timeout', $1, true)", prior)


def _padded_width(type_name: str) -> int | None:
    """n of a character(n) column (format_type), whose values Postgres hands out padded to n."""
    m = re.fullmatch(r"character\((\d+)\)", type_name)
    return int(m[1]) if m else None


def _cast(q: str, have: str, want: str, padded: bool) -> str:
    """The USING expression turning column `q` of type `have` into `want`: a character(n)
    made text keeps its padding when `padded`."""
    width = _padded_width(have) if padded and want == "text" else None
    return f"rpad({q}::text, {width})" if width else f"{q}::{want}"


@dataclass(frozen=True)
class _ForeignKey:
    """A foreign key with one end on a table being retyped in place: `table` holds the
    constraint; `pairs` are its (column here, column at the other end) on that table."""

    name: str
    table: str  # qualified: the referencing table
    definition: str  # pg_get_constraintdef
    comment: str | None
    other_table: str  # qualified: the end that is not the table being retyped
    pairs: tuple[tuple[str, str], ...]

    def other_columns(self, column: str) -> list[str]:
        return [o for c, o in self.pairs if c == column]


async def _foreign_keys_on(conn: asyncpg.Connection, table: str, columns: list[str]) -> list[_ForeignKey]:
    """The foreign keys, either way, with `table`'s end on one of `columns`."""
    rows = await conn.fetch(
        """
        SELECT k.conname, k.conrelid::regclass::text, pg_get_constraintdef(k.oid),
               obj_description(k.oid, 'pg_constraint'), k.conrelid = $1::regclass AS referencing,
               k.confrelid::regclass::text, k.conrelid::regclass::text,
               ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY AS u(n, i)
                     JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.i),
               ARRAY(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY AS u(n, i)
                     JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.i)
        FROM pg_constraint k
        WHERE k.contype = 'f' AND (k.conrelid = $1::regclass OR k.confrelid = $1::regclass)
        """, table)
    out = []
    for name, holder, definition, comment, referencing, referenced, referencer, conkey, confkey in rows:
        here, there = (conkey, confkey) if referencing else (confkey, conkey)
        pairs = tuple(zip(here, there))
        if any(c in columns for c, _ in pairs):
            out.append(_ForeignKey(name, holder, definition, comment, referenced if referencing else referencer,
                                   pairs))
    return out


async def retype_linked_columns(conn: asyncpg.Connection, schema: str, spec: TableSpec, pgt: PgTable,
                                too_slow: str | None = None, lock_wait_ms: int | None = None) -> PgTable:
    """Inside the caller's transaction, a table emptied to be loaded again: its columns at
    one end of a foreign key (both ends made uuid, say) made `spec`'s type together with
    the other end, which reshape_empty_table cannot do (Postgres refuses the retype of
    either end alone). Returns the table as it is now. `too_slow`, `lock_wait_ms` and
    RewriteTooSlow as for replace_rows."""
    if not await _linked_by_foreign_keys(conn, qualified(schema, spec.name),
                                         [n for n, _, _ in diff_shape(spec, pgt).retyped]):
        return pgt
    return await _retype_rows_as_they_are(conn, schema, spec, pgt, too_slow, lock_wait_ms)


async def _linked_by_foreign_keys(conn: asyncpg.Connection, table: str, columns: list[str]) -> bool:
    return bool(columns) and bool(await _foreign_keys_on(conn, table, columns))


async def _type_of(conn: asyncpg.Connection, table: str, column: str) -> str | None:
    return await conn.fetchval("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                               "$1::regclass AND attname = $2 AND NOT attisdropped", table, column)


async def _refill_in_place(conn: asyncpg.Connection, table: str, spec: TableSpec, computed_cols: frozenset[str],
                           src: str) -> None:
    """The live rows become `src`'s, matched by key (text compared byte for byte, as
    SQLite's keys are told apart): the others deleted, the matched ones updated, the new
    ones inserted. A key matched by no row is deleted and inserted again, as before."""
    match = " AND ".join(f"t.{quote_pg_ident(k)} = a.{quote_pg_ident(k)}"
                         + (' COLLATE "C"' if spec.column(k).pgtype is PgType.TEXT else "") for k in spec.key)
    await conn.execute(f"DELETE FROM {table} AS t WHERE NOT EXISTS (SELECT 1 FROM {src} AS a WHERE {match})")
    others = [c for c in spec.column_names if c not in spec.key and c not in computed_cols]
    if others:
        sets = ", ".join(f"{quote_pg_ident(c)} = a.{quote_pg_ident(c)}" for c in others)
        await conn.execute(f"UPDATE {table} AS t SET {sets} FROM {src} AS a WHERE {match}")
    cols = ", ".join(f"a.{quote_pg_ident(c)}" for c in spec.column_names if c not in computed_cols)
    names = ", ".join(quote_pg_ident(c) for c in spec.column_names if c not in computed_cols)
    await conn.execute(f"INSERT INTO {table} ({names}) SELECT {cols} FROM {src} AS a "
                       f"WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {match})")


async def ensure_identity(conn: asyncpg.Connection, schema: str, spec: TableSpec, pg: PgTable) -> bool:
    """Give an existing table the identity column create_table_sql would have made.
    Returns whether it changed anything."""
    ident = identity_column(spec)
    col = pg.column(ident) if ident else None
    if col is None or col.identity or ident not in pg.key:
        return False
    if await conn.fetchval("SELECT pg_get_serial_sequence($1, $2)", qualified(schema, spec.name), ident) \
            or await default_sequence(conn, qualified(schema, spec.name), ident):
        # The application's serial (a table it made in Postgres after a cutover), or its
        # DEFAULT nextval() of a sequence the column does not own (one several tables share,
        # or another table's): that sequence, which it may name, numbers the rows; a cutover
        # moves it past SQLite's ids, never back. Dropping the DEFAULT would take the
        # application's numbering away from the column.
        return False
    column = f"ALTER TABLE {qualified(schema, spec.name)} ALTER COLUMN {quote_pg_ident(ident)}"
    await conn.execute(f"{column} DROP DEFAULT")  # an older syncd may have carried SQLite's default
    await conn.execute(f"{column} ADD {IDENTITY}")
    return True


async def default_sequence(conn: asyncpg.Connection, table: str, col: str) -> str | None:
    """The sequence `table`.`col`'s DEFAULT draws from (nextval), as a quoted regclass
    text, whoever owns it (the column, another table's column, nobody), or None."""
    return await conn.fetchval(
        "SELECT format('%I.%I', n.nspname, s.relname) FROM pg_attrdef ad JOIN pg_attribute a ON a.attrelid = "
        "ad.adrelid AND a.attnum = ad.adnum JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid "
        "AND d.refclassid = 'pg_class'::regclass JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S' "
        "JOIN pg_namespace n ON n.oid = s.relnamespace WHERE ad.adrelid = $1::regclass AND a.attname = $2 "
        "ORDER BY 1 LIMIT 1", table, col)


def add_column_sql(schema: str, spec: TableSpec, col: Column) -> str:
    return f"ALTER TABLE {qualified(schema, spec.name)} ADD COLUMN IF NOT EXISTS {column_sql(col, False)}"


def describe_ddl(schema: str, spec: TableSpec) -> str:
    """The CREATE TABLE statement with comments explaining the choices, for `syncd schema`."""
    # Names and SQLite text are shown escaped: each comment stays one line.
    key = ", ".join(escape_controls(k) for k in spec.key)
    notes = [f"-- table {escape_controls(quote_literal(spec.name))}: key {key} ({escape_controls(spec.key_origin)})"]
    for c in spec.columns:
        why = c.type_note or f"declared {c.declared or '(none)'}"
        notes.append(f"--   {escape_controls(c.name)}: {c.pgtype.value} <- {escape_controls(why)}")
        note = default_note(c)
        if note is not None:
            notes.append(f"--   {escape_controls(c.name)}: {note}")
    for n in spec.notes:
        notes.append(f"--   note: {escape_controls(n)}")
    return "\n".join(notes) + "\n" + create_table_sql(schema, spec) + ";"


@dataclass(frozen=True)
class PgColumn:
    name: str
    type_name: str  # format_type() output
    notnull: bool
    identity: bool = False
    generated: bool = False  # GENERATED ALWAYS AS (...) STORED in Postgres: it takes no value but its own

    @property
    def pgtype(self) -> PgType | None:
        return _FROM_FORMAT_TYPE.get(_streamed_as(self.type_name))

    @property
    def padded(self) -> bool:
        """character(n): Postgres hands out its values padded with spaces to n."""
        return re.fullmatch(r"character(\(\d+\))?|bpchar", self.type_name) is not None


@dataclass(frozen=True)
class PgTable:
    columns: tuple[PgColumn, ...]
    key: tuple[str, ...]

    def column(self, name: str) -> PgColumn | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None

    @property
    def generated(self) -> frozenset[str]:
        """The columns Postgres computes (GENERATED ALWAYS AS (...) STORED, as the
        application may make one after a cutover): it refuses any value written there,
        so syncd writes none (TableWriter) and Postgres computes it from the row."""
        return frozenset(c.name for c in self.columns if c.generated)


def computed(pgt: PgTable | None, spec: TableSpec) -> frozenset[str]:
    """The columns of `spec` Postgres computes in `pgt` (none where no table is there)."""
    return pgt.generated & frozenset(spec.column_names) if pgt is not None else frozenset()


def kept_types(tables: dict[str, PgTable]) -> dict[str, dict[str, PgType]]:
    """table -> column -> the type Postgres has for it, where syncd knows the type: what
    introspection keeps (`sticky_types`), so a type inferred from values does not flip."""
    out: dict[str, dict[str, PgType]] = {}
    for n, t in tables.items():
        out[n] = {}
        for c in t.columns:
            # timestamp(p), as an application may add it after the cutover, is a timestamp;
            # a reload or the stream after a rollback widens it (widens_in_place).
            pgtype = c.pgtype or _FROM_FORMAT_TYPE.get(_TYPMOD.sub("", c.type_name))
            if pgtype is not None:
                out[n][c.name] = pgtype
    return out


_TYPMOD = re.compile(r"(?<=^timestamp)\(\d\)(?= with(out)? time zone$)")


async def read_tables(conn: asyncpg.Connection, schema: str) -> dict[str, PgTable]:
    """Every table in `schema` with its columns and primary key."""
    rows = await conn.fetch(
        """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               coalesce(a.attnum = ANY (i.indkey::int2[]), false) AS in_key,
               array_position(i.indkey::int2[], a.attnum) AS key_pos, a.attidentity <> '' AS identity,
               a.attgenerated <> '' AS generated
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
        WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
        ORDER BY c.relname, a.attnum
        """,
        schema,
    )
    tables: dict[str, tuple[list[PgColumn], list[tuple[int, str]]]] = {}
    for r in rows:
        cols, key = tables.setdefault(r[0], ([], []))
        cols.append(PgColumn(r[1], r[2], r[3], r[6], r[7]))
        if r[4]:
            key.append((r[5], r[1]))
    return {name: PgTable(tuple(cols), tuple(n for _, n in sorted(key))) for name, (cols, key) in tables.items()}


ASIDE_MARK = "__dropped_"  # <name>__dropped_<UTC time>: what a drop in SQLite leaves in Postgres


def aside_name(name: str, when: dt.datetime, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """The name a table or column dropped in SQLite is kept under in Postgres: not one
    of `taken` (two long names alike in their first bytes, dropped in the same second,
    get _2, _3, ... before the mark)."""
    suffix = ASIDE_MARK + when.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    n = 1
    while True:
        extra = "" if n == 1 else f"_{n}"
        room = PG_MAX_IDENTIFIER_BYTES - len(suffix.encode()) - len(extra)
        candidate = name.encode("utf-8")[:room].decode("utf-8", "ignore") + extra + suffix
        if candidate not in taken:
            return candidate
        n += 1


def is_aside(name: str) -> bool:
    head, mark, stamp = name.rpartition(ASIDE_MARK)
    return bool(mark) and len(stamp) == 15 and stamp[8] == "T" and (stamp[:8] + stamp[9:]).isdigit()


@dataclass
class ColumnPlan:
    """How the Postgres table follows SQLite's columns: by name, and by position for
    what a RENAME COLUMN (which keeps a column's place) or a DROP COLUMN changed."""

    renames: list[tuple[str, str]]  # (Postgres name now, SQLite name): certain
    # Renames read where a drop could also explain the change: (Postgres name, SQLite
    # name, whether the SQLite column must be a rename: it sits before a shared column,
    # where ADD COLUMN cannot put it). The caller checks each against the data.
    guesses: list[tuple[str, str, bool]]
    drops: list[str]  # Postgres columns SQLite no longer has: kept aside


def plan_columns(sqlite_cols: list[tuple[str, PgType]], pg_cols: list[tuple[str, PgType | None]]) -> ColumnPlan | None:
    """Match SQLite's columns to Postgres's (aside columns excluded), or None when the
    change cannot be told (common columns out of order, a column appearing mid-table
    with no same-typed column gone from its place).

    Between two columns both sides share, a column only SQLite has cannot have been
    added (ADD COLUMN appends): it is a rename of a column only Postgres has there, of
    the same type (certain when the two sides' columns there pair up one to one, a guess
    when some were also dropped). After the last shared column, a rename and a drop
    followed by an add look alike: guesses again, and what is not renamed is added."""
    s_types, p_types = dict(sqlite_cols), dict(pg_cols)
    common = [n for n, _ in pg_cols if n in s_types]
    if common != [n for n, _ in sqlite_cols if n in p_types]:
        return None

    def gaps(cols: list[tuple[str, PgType | None]], other: dict) -> list[list[tuple[str, PgType | None]]]:
        out: list[list] = [[]]
        for name, t in cols:
            if name in other:
                out.append([])
            else:
                out[-1].append((name, t))
        return out

    def fits(pt: PgType | None, st: PgType) -> bool:
        return pt is None or pt is st

    p_gaps, s_gaps = gaps(pg_cols, s_types), gaps(sqlite_cols, p_types)
    plan = ColumnPlan([], [], [])
    for k, (pg_gap, s_gap) in enumerate(zip(p_gaps, s_gaps)):
        inner = k < len(p_gaps) - 1
        if inner and len(s_gap) == len(pg_gap) and all(fits(pt, st) for (_, pt), (_, st) in zip(pg_gap, s_gap)):
            plan.renames += [(pn, sn) for (pn, _), (sn, _) in zip(pg_gap, s_gap)]
            continue
        rest = list(pg_gap)
        for sn, st in s_gap:
            match = next((i for i, (_, pt) in enumerate(rest) if fits(pt, st)), None)
            if match is None:
                if inner:
                    return None  # mid-table, yet no column it could have been renamed from
                continue  # added at the end: the caller adds it
            plan.drops += [n for n, _ in rest[:match]]
            plan.guesses.append((rest[match][0], sn, inner))
            rest = rest[match + 1:]
        plan.drops += [n for n, _ in rest]
    return plan


@dataclass
class ShapeDiff:
    missing_in_pg: list[Column]  # new SQLite columns: add them
    extra_in_pg: list[str]  # columns SQLite no longer has: dropped or renamed
    retyped: list[tuple[str, str, str]]  # (column, pg type now, wanted)
    key_changed: bool

    @property
    def same(self) -> bool:
        return not (self.missing_in_pg or self.extra_in_pg or self.retyped or self.key_changed)


def diff_shape(spec: TableSpec, pg: PgTable) -> ShapeDiff:
    """How Postgres differs from `spec`; columns kept aside after a drop do not count."""
    have = {c.name: c for c in pg.columns}
    wanted = {c.name for c in spec.columns}
    missing = [c for c in spec.columns if c.name not in have]
    extra = [c.name for c in pg.columns if c.name not in wanted and not is_aside(c.name)]
    retyped = [
        (c.name, have[c.name].type_name, _FORMAT_TYPE[c.pgtype])
        for c in spec.columns
        if c.name in have and _streamed_as(have[c.name].type_name) != _FORMAT_TYPE[c.pgtype]
    ]
    return ShapeDiff(missing, extra, retyped, tuple(pg.key) != tuple(spec.key))


def is_rowid_name(name: str) -> bool:
    """A name syncd gives a keyless table's rowid column (introspect.rowid_column_name)."""
    return re.fullmatch(re.escape(ROWID_COLUMN) + r"(_\d+)?", name) is not None


def rowid_key(spec: TableSpec, pg: PgTable) -> str | None:
    """The column Postgres's copy is keyed on when it was made for a keyless table:
    syncd's rowid column, no column of SQLite's table."""
    if len(pg.key) == 1 and is_rowid_name(pg.key[0]) and pg.key[0] not in {c.name for c in spec.stored_columns}:
        return pg.key[0]
    return None


async def reshape_empty_table(conn: asyncpg.Connection, schema: str, spec: TableSpec,
                              pg: PgTable) -> list[tuple[str, str]]:
    """Turn an *empty* Postgres table into `spec`'s shape: types, key and new
    columns. Drops no column of the application's: one SQLite no longer has is kept
    aside (returned as (name, aside name)); syncd's rowid column of a table that was
    keyless goes once the table is keyed otherwise. Run inside the caller's
    transaction."""
    table = qualified(schema, spec.name)
    diff = diff_shape(spec, pg)
    stale = rowid_key(spec, pg)
    if stale is not None and stale not in spec.column_names:  # its primary key goes with it
        await run_ddl(conn, f"ALTER TABLE {table} DROP COLUMN {quote_pg_ident(stale)}")
    for col in diff.missing_in_pg:
        await run_ddl(conn, add_column_sql(schema, spec, col))
    for name, _have, _want in diff.retyped:
        col = spec.column(name)
        q = quote_pg_ident(name)
        if getattr(pg.column(name), "identity", False):  # Postgres retypes no identity column
            await run_ddl(conn, f"ALTER TABLE {table} ALTER COLUMN {q} DROP IDENTITY IF EXISTS")
        await run_ddl(conn, f"ALTER TABLE {table} ALTER COLUMN {q} DROP DEFAULT")
        await run_ddl(conn, f"ALTER TABLE {table} ALTER COLUMN {q} TYPE {col.pgtype.value} "
                            f"USING NULL::{col.pgtype.value}")
        default = column_default(col).sql
        if default is not None:
            await run_ddl(conn, f"ALTER TABLE {table} ALTER COLUMN {q} SET DEFAULT {default}")
    if diff.key_changed:
        conname = await conn.fetchval(
            "SELECT conname FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'p'", table
        )
        if conname is not None:
            await run_ddl(conn, f"ALTER TABLE {table} DROP CONSTRAINT {quote_pg_ident(conname)}")
        # Postgres keeps the NOT NULL its primary key gave the old key's columns: one that
        # SQLite lets hold NULL (a rowid table's TEXT PRIMARY KEY, now keyed on the rowid)
        # would refuse those rows. An INTEGER PRIMARY KEY kept as a plain column is an
        # identity column no longer (Postgres would number rows SQLite leaves NULL, and
        # refuses DROP NOT NULL on one).
        for name in pg.key:
            col = next((c for c in spec.columns if c.name == name), None)
            if col is not None and name not in spec.key and getattr(pg.column(name), "identity", False):
                await run_ddl(conn, f"ALTER TABLE {table} ALTER COLUMN {quote_pg_ident(name)} DROP IDENTITY IF EXISTS")
            if col is not None and name not in spec.key and not col.notnull:
                await run_ddl(conn, f"ALTER TABLE {table} ALTER COLUMN {quote_pg_ident(name)} DROP NOT NULL")
        await run_ddl(conn, f"ALTER TABLE {table} ADD PRIMARY KEY ({', '.join(quote_pg_ident(k) for k in spec.key)})")
    # A column SQLite no longer has (the old key's columns of a table rebuilt onto another
    # key) is kept aside as a dropped one is: no load or change fills it, so it is NOT NULL
    # no longer (it would refuse every row) and named so that verification passes it by.
    taken = {c.name for c in pg.columns}
    aside = []
    for name in diff.extra_in_pg:
        col = pg.column(name)
        if name == stale or col is None:
            continue
        q = quote_pg_ident(name)
        if col.identity:
            await run_ddl(conn, f"ALTER TABLE {table} ALTER COLUMN {q} DROP IDENTITY IF EXISTS")
        if col.notnull:
            await run_ddl(conn, f"ALTER TABLE {table} ALTER COLUMN {q} DROP NOT NULL")
        new_name = aside_name(name, dt.datetime.now(dt.timezone.utc), taken)
        taken.add(new_name)
        await run_ddl(conn, f"ALTER TABLE {table} RENAME COLUMN {q} TO {quote_pg_ident(new_name)}")
        aside.append((name, new_name))
    return aside
