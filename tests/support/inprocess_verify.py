"""syncd's table comparison run in-process on a SQLite connection and a Postgres schema
the test fills itself, with no daemon: fast enough to run hundreds of cases.

The SQLite side is a real file (or memory) with syncd's changelog installed and empty;
the Postgres side a real schema holding what the stream would have written (each row
through syncd's converter, a later row with the same Postgres key replacing an earlier
one), with syncd's bookkeeping saying everything up to the changelog's end is applied."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from syncd.config import SourceSettings
from syncd.identifiers import qualified, quote_ident, quote_pg_ident
from syncd.model import TableSpec
from syncd.postgres.bookkeeping import ensure_bookkeeping
from syncd.postgres.ddl import create_table_sql
from syncd.sqlite import capture
from syncd.sqlite.introspect import introspect
from syncd.types import ValueMismatch, converter
from syncd.verify.keyspace import key_space
from syncd.verify.result import TableVerifyResult
from syncd.verify.table import TableCheck

BK = "syncd"
SOURCE = "inprocess"
TID = 1


async def prepare(pg: asyncpg.Connection) -> None:
    """syncd's bookkeeping with the source at checkpoint 0 (the changelog stays empty)."""
    await ensure_bookkeeping(pg, BK)
    await pg.execute(f"INSERT INTO {quote_pg_ident(BK)}.sources (source, applied_seq) VALUES ($1, 0) "
                     "ON CONFLICT (source) DO NOTHING", SOURCE)


def sqlite_file(path: Path | str = ":memory:") -> sqlite3.Connection:
    """A connection as syncd's own: autocommit, syncd's changelog installed."""
    conn = sqlite3.connect(path, isolation_level=None)
    capture.install_base(conn, busy_timeout_ms=1000)
    return conn


def spec_of(conn: sqlite3.Connection, table: str, columns: dict[str, str] | None = None) -> TableSpec:
    source = SourceSettings(name=SOURCE, path=Path("inprocess.db"), columns={table: columns} if columns else {})
    schema = introspect(conn, source)
    if table not in schema.tables:
        raise AssertionError(f"syncd does not replicate {table!r}: {schema.refused.get(table)}")
    return schema.tables[table]


def sqlite_rows(conn: sqlite3.Connection, spec: TableSpec) -> list[tuple]:
    cols = ", ".join(spec.sqlite_ref(c) for c in spec.column_names)
    order = "" if spec.without_rowid else " ORDER BY _rowid_"  # the order the application wrote them in
    return conn.execute(f"SELECT {cols} FROM main.{quote_ident(spec.name)}{order}").fetchall()


def convert(spec: TableSpec, row: tuple) -> tuple | None:
    """The row as the stream sends it to Postgres, or None if it cannot go there."""
    try:
        out = tuple(converter(c.pgtype)(v) for c, v in zip(spec.columns, row))
    except ValueMismatch:
        return None
    return None if any(out[i] is None for i in spec.key_indexes) else out


async def load(pg: asyncpg.Connection, schema: str, spec: TableSpec, rows: list[tuple]) -> None:
    """Create the table in `schema` and upsert every row that fits, in order."""
    await pg.execute(f"CREATE SCHEMA {quote_pg_ident(schema)}")
    await pg.execute(create_table_sql(schema, spec))
    for row in rows:
        values = convert(spec, row)
        if values is not None:
            await upsert(pg, schema, spec, values)


async def upsert(pg: asyncpg.Connection, schema: str, spec: TableSpec, values: tuple[Any, ...]) -> None:
    cols = ", ".join(quote_pg_ident(c) for c in spec.column_names)
    marks = ", ".join(f"${i + 1}::{c.pgtype.value}" for i, c in enumerate(spec.columns))
    keys = ", ".join(quote_pg_ident(k) for k in spec.key)
    others = [c for c in spec.column_names if c not in spec.key]
    action = ("DO UPDATE SET " + ", ".join(f"{quote_pg_ident(c)} = EXCLUDED.{quote_pg_ident(c)}" for c in others)
              if others else "DO NOTHING")
    await pg.execute(f"INSERT INTO {qualified(schema, spec.name)} ({cols}) VALUES ({marks}) "
                     f"ON CONFLICT ({keys}) {action}", *values)


async def postgres_rows(pg: asyncpg.Connection, schema: str, spec: TableSpec) -> list[tuple]:
    cols = ", ".join(quote_pg_ident(c) for c in spec.column_names)
    return [tuple(r) for r in await pg.fetch(f"SELECT {cols} FROM {qualified(schema, spec.name)}")]


async def check(conn: sqlite3.Connection, pg: asyncpg.Connection, schema: str, spec: TableSpec,
                chunk_rows: int = 16, wait_seconds: float = 1.0) -> TableVerifyResult:
    """syncd's verdict on one table (TableCheck, as `syncd verify` runs it)."""
    async def run(fn, *args):
        return fn(conn, *args)

    ks = await key_space(run, pg, schema, spec)
    tc = TableCheck(run, pg, ks, TID, source=SOURCE, target_schema=schema, bk_schema=BK, chunk_rows=chunk_rows,
                    utf8_database=True)
    result = TableVerifyResult(source=SOURCE, table=spec.name, state="streaming")
    await tc.check(result, wait_seconds)
    return result
