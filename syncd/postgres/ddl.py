"""DDL for the replicated tables in Postgres, and reading back what exists there."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from syncd.identifiers import qualified, quote_literal, quote_pg_ident
from syncd.model import Column, TableSpec
from syncd.printable import escape_controls, shorten
from syncd.types import PgDefault, PgType, pg_default

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


def column_sql(col: Column, in_key: bool) -> str:
    parts = [quote_pg_ident(col.name), col.pgtype.value]
    if col.notnull and not in_key:
        parts.append("NOT NULL")
    default = column_default(col).sql
    if default is not None:
        parts.append(f"DEFAULT {default}")
    return " ".join(parts)


async def run_ddl(conn: asyncpg.Connection, sql: str) -> None:
    """Run one DDL statement through the extended protocol, which refuses a second
    statement: even a quoting bug could not smuggle one in."""
    stmt = await conn.prepare(sql)
    await stmt.fetch()


def create_table_sql(schema: str, spec: TableSpec) -> str:
    lines = [f"    {column_sql(c, c.name in spec.key)}" for c in spec.columns]
    lines.append(f"    PRIMARY KEY ({', '.join(quote_pg_ident(k) for k in spec.key)})")
    return f"CREATE TABLE IF NOT EXISTS {qualified(schema, spec.name)} (\n" + ",\n".join(lines) + "\n)"


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

    @property
    def pgtype(self) -> PgType | None:
        return _FROM_FORMAT_TYPE.get(self.type_name)


@dataclass(frozen=True)
class PgTable:
    columns: tuple[PgColumn, ...]
    key: tuple[str, ...]

    def column(self, name: str) -> PgColumn | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None


async def read_tables(conn: asyncpg.Connection, schema: str) -> dict[str, PgTable]:
    """Every table in `schema` with its columns and primary key."""
    rows = await conn.fetch(
        """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               coalesce(a.attnum = ANY (i.indkey::int2[]), false) AS in_key,
               array_position(i.indkey::int2[], a.attnum) AS key_pos
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
        cols.append(PgColumn(r[1], r[2], r[3]))
        if r[4]:
            key.append((r[5], r[1]))
    return {name: PgTable(tuple(cols), tuple(n for _, n in sorted(key))) for name, (cols, key) in tables.items()}


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
    have = {c.name: c for c in pg.columns}
    wanted = {c.name for c in spec.columns}
    missing = [c for c in spec.columns if c.name not in have]
    extra = [c.name for c in pg.columns if c.name not in wanted]
    retyped = [
        (c.name, have[c.name].type_name, _FORMAT_TYPE[c.pgtype])
        for c in spec.columns
        if c.name in have and have[c.name].type_name != _FORMAT_TYPE[c.pgtype]
    ]
    return ShapeDiff(missing, extra, retyped, tuple(pg.key) != tuple(spec.key))


async def reshape_empty_table(conn: asyncpg.Connection, schema: str, spec: TableSpec, pg: PgTable) -> None:
    """Turn an *empty* Postgres table into `spec`'s shape: types, key and new
    columns. Never drops a column. Run inside the caller's transaction."""
    table = qualified(schema, spec.name)
    diff = diff_shape(spec, pg)
    for col in diff.missing_in_pg:
        await run_ddl(conn, add_column_sql(schema, spec, col))
    for name, _have, _want in diff.retyped:
        col = spec.column(name)
        q = quote_pg_ident(name)
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
        await run_ddl(conn, f"ALTER TABLE {table} ADD PRIMARY KEY ({', '.join(quote_pg_ident(k) for k in spec.key)})")
