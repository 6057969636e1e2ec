"""Key ranges that select the same rows in SQLite and in Postgres.

A range is [lo, hi) over the key in order; either end may be open. Both sides must
order keys the same way, so text compares byte-wise on both: SQLite BINARY (added
explicitly to every text key column, whatever its own collation, e.g. NOCASE) and Postgres
COLLATE "C" (added where the column's collation is not already C). A table whose
key values SQLite may store in a class that orders differently from their Postgres
type (numbers in a text key, dates as text or numbers, an override) is not split:
it is compared as one range.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from syncd.identifiers import quote_ident, quote_pg_ident
from syncd.model import Column, TableSpec
from syncd.sqlite.connection import not_utf8
from syncd.sqlite_sql import Affinity, affinity
from syncd.types import PgType, converter

# Key types whose SQLite order (for the storage classes the converter accepts) is
# their Postgres order.
_ORDERED = {PgType.BIGINT, PgType.DOUBLE, PgType.NUMERIC, PgType.TEXT, PgType.BYTEA, PgType.BOOLEAN}


def orderable(spec: TableSpec) -> bool:
    for k in spec.key:
        col = spec.column(k)
        if col.pgtype not in _ORDERED:
            return False
        if col.pgtype is PgType.TEXT and affinity(col.declared) is not Affinity.TEXT:
            return False  # a number kept as a number sorts before all text in SQLite
    return True


@dataclass(frozen=True)
class Bound:
    """One key value in both forms: as SQLite stores it and as Postgres holds it."""

    raw: tuple
    pg: tuple


@dataclass(frozen=True)
class KeyRange:
    lo: Bound | None  # inclusive; None: from the first key
    hi: Bound | None  # exclusive; None: to the last key


EVERYTHING = KeyRange(None, None)


@dataclass(frozen=True)
class KeySpace:
    spec: TableSpec
    orderable: bool
    sqlite_binary: tuple[bool, ...]  # key column needs COLLATE BINARY in SQLite
    sqlite_indexed: bool  # SQLite can walk the key in BINARY order (rowid or an index)
    pg_collate_c: tuple[bool, ...]  # key column needs COLLATE "C" in Postgres
    pg_indexed: bool
    # Key column Postgres holds in a type text has no operators with (a TEXT key the
    # application made uuid after a cutover): compared and read as its text.
    pg_as_text: tuple[bool, ...] = ()

    @property
    def key(self) -> tuple[str, ...]:
        return self.spec.key

    @property
    def key_types(self) -> tuple[PgType, ...]:
        return tuple(self.spec.column(k).pgtype for k in self.spec.key)

    @property
    def indexed(self) -> bool:
        return self.sqlite_indexed and self.pg_indexed

    # --- SQLite ----------------------------------------------------------------------

    def sqlite_refs(self) -> list[str]:
        """The key columns as SQLite SQL reaches them (a keyless table's: its rowid)."""
        return [self.spec.sqlite_ref(k) for k in self.key]

    def sqlite_key(self, refs: list[str] | None = None) -> str:
        """The key as compared with sqlite_marks(), which carry the COLLATE BINARY: on the
        value's side SQLite still walks a row value's whole index."""
        parts = list(refs or self.sqlite_refs())
        return parts[0] if len(parts) == 1 else "(" + ", ".join(parts) + ")"

    def sqlite_order(self, refs: list[str] | None = None) -> str:
        return ", ".join(r + (" COLLATE BINARY" if b else "")
                         for r, b in zip(refs or self.sqlite_refs(), self.sqlite_binary))

    def sqlite_marks(self) -> str:
        marks = ["?" + (" COLLATE BINARY" if b else "") for b in self.sqlite_binary]
        return marks[0] if len(marks) == 1 else "(" + ", ".join(marks) + ")"

    def sqlite_where(self, r: KeyRange) -> tuple[str, list[Any]]:
        conds, params = [], []
        if r.lo is not None:
            conds.append(f"{self.sqlite_key()} >= {self.sqlite_marks()}")
            params += list(r.lo.raw)
        if r.hi is not None:
            conds.append(f"{self.sqlite_key()} < {self.sqlite_marks()}")
            params += list(r.hi.raw)
        return (" AND ".join(conds) or "1"), params

    # --- Postgres --------------------------------------------------------------------

    def pg_ref(self, i: int) -> str:
        """Key column i as Postgres SQL reads it (a value of the key's own type)."""
        ref = quote_pg_ident(self.key[i])
        if self.spec.column(self.key[i]).pg_padded:
            return f"textin(bpcharout({ref}))"  # character(n) with its padding, as SQLite holds it (rowhash.pg_token)
        return f"{ref}::text" if self.pg_as_text and self.pg_as_text[i] else ref

    def pg_columns(self) -> list[str]:
        return [self.pg_ref(i) + (' COLLATE "C"' if c else "") for i, c in enumerate(self.pg_collate_c)]

    def pg_key(self) -> str:
        parts = self.pg_columns()
        return parts[0] if len(parts) == 1 else "(" + ", ".join(parts) + ")"

    def pg_order(self) -> str:
        return ", ".join(self.pg_columns())

    def pg_marks(self, first: int) -> str:
        n = len(self.key)
        marks = [f"${first + i}::{t.value}" for i, t in enumerate(self.key_types)]
        return marks[0] if n == 1 else "(" + ", ".join(marks) + ")"

    def pg_where(self, r: KeyRange, first: int = 1) -> tuple[str, list[Any]]:
        conds, params = [], []
        if r.lo is not None:
            conds.append(f"{self.pg_key()} >= {self.pg_marks(first + len(params))}")
            params += list(r.lo.pg)
        if r.hi is not None:
            conds.append(f"{self.pg_key()} < {self.pg_marks(first + len(params))}")
            params += list(r.hi.pg)
        return (" AND ".join(conds) or "true"), params

    # --- one value, both forms -----------------------------------------------------------

    def from_sqlite(self, raw: Sequence[Any]) -> Bound | None:
        """A SQLite key as a bound, or None if a value does not fit its type."""
        if any(not_utf8(v) for v in raw):  # text that is not UTF-8: no Postgres value
            return None
        try:
            pg = tuple(converter(t)(v) for t, v in zip(self.key_types, raw))
        except ValueError:
            return None
        if any(v is None for v in pg):
            return None
        return Bound(tuple(raw), pg)

    def from_postgres(self, pg: Sequence[Any]) -> Bound | None:
        """A Postgres key as a bound, or None if its SQLite form cannot be known."""
        raw = []
        for k, v in zip(self.key, pg):
            r = sqlite_value(self.spec.column(k).pgtype, v, self.spec.column(k))
            if r is _UNKNOWN:
                return None
            raw.append(r)
        return Bound(tuple(raw), tuple(pg))


_UNKNOWN = object()
_INSTANTS = (PgType.DATE, PgType.TIMESTAMP, PgType.TIMESTAMPTZ)


def sqlite_value(pgtype: PgType, v: Any, col: Column | None = None) -> Any:
    """The SQLite value a Postgres key value came from, for the ordered key types and
    for a date column schema parity typed (`col.sqlite_format`: its values have one
    spelling, the one the way back writes). For other dates the stored form is not
    unique: a date may be text or a number."""
    if v is None:
        return None
    if col is not None and col.sqlite_format is not None and pgtype in _INSTANTS:
        from syncd.reverse.values import ColumnShape, NotExpressible, to_sqlite  # the way back's own spelling

        try:
            return to_sqlite(ColumnShape(col.name, pgtype, affinity(col.declared), col.sqlite_format), v)
        except (NotExpressible, ValueError):
            return _UNKNOWN
    if pgtype is PgType.BIGINT or pgtype is PgType.TEXT or pgtype is PgType.BYTEA:
        return v
    if pgtype is PgType.DOUBLE:
        return _UNKNOWN if math.isnan(v) else float(v)  # SQLite stores NaN as NULL
    if pgtype is PgType.BOOLEAN:
        return 1 if v else 0
    if pgtype is PgType.NUMERIC and isinstance(v, Decimal):
        if v.is_finite() and v == v.to_integral_value() and abs(v) < 2**63:
            return int(v)  # NUMERIC affinity stores an integral value as an integer
        f = float(v)
        if math.isnan(f) or converter(PgType.NUMERIC)(f) != v:
            return _UNKNOWN  # no REAL is this number (more digits than a double keeps): no SQLite key is
        return f
    return _UNKNOWN


# --- what each side can do with the key ------------------------------------------------


def sqlite_key_access(conn: sqlite3.Connection, spec: TableSpec) -> tuple[tuple[bool, ...], bool]:
    """(columns needing COLLATE BINARY, whether an index walks the key in BINARY order)."""
    key = list(spec.key)
    if len(key) == 1 and spec.column(key[0]).sqlite_expr is not None:
        return (False,), True  # a keyless table's rowid: the table's own order
    text = tuple(spec.column(k).pgtype is PgType.TEXT for k in key)
    info = conn.execute(f"PRAGMA main.table_info({quote_ident(spec.name)})").fetchall()
    pk = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]]
    if (not spec.without_rowid and pk == key and len(key) == 1
            and (next(r[2] for r in info if r[1] == key[0]) or "").upper() == "INTEGER"):
        return (False,), True  # the rowid itself
    for _seq, name, _unique, _origin, partial in conn.execute(f"PRAGMA main.index_list({quote_ident(spec.name)})"):
        if partial:
            continue
        cols = [(r[2], (r[4] or "BINARY").upper()) for r in conn.execute(f"PRAGMA main.index_xinfo({quote_ident(name)})")
                if r[5]]
        if [c for c, _ in cols[: len(key)]] == key:
            # COLLATE BINARY on every text column, this index's BINARY included: compared
            # without it, a column declared NOCASE (PRIMARY KEY (k COLLATE BINARY)) compares
            # 'a' and 'A' as one value, and a range from 'a' would never get past them.
            return text, all(coll == "BINARY" for is_text, (_, coll) in zip(text, cols) if is_text)
    return text, False  # no index: the declared collation is unknown here, force BINARY


async def pg_key_access(conn: asyncpg.Connection, schema: str, spec: TableSpec) -> tuple[bool, ...]:
    """Key columns whose collation is not byte order (they need COLLATE "C" and then
    cannot use the primary key index). Judged from the collation's provider and
    locale, not from datcollate alone: a database whose default collation comes from
    ICU reports datcollate 'C' all the same."""
    rows = await conn.fetch(
        """SELECT a.attname, to_jsonb(co)::text
           FROM pg_attribute a
           JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_collation co ON co.oid = a.attcollation
           WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = ANY($3::text[]) AND a.attcollation <> 0""",
        schema, spec.name, list(spec.key),
    )
    if not rows:
        return tuple(False for _ in spec.key)
    # to_jsonb: the catalog columns differ between versions (datlocprovider from 15, datlocale from 17).
    db = json.loads(await conn.fetchval("SELECT to_jsonb(d)::text FROM pg_database d WHERE datname = current_database()"))
    needs = {name: not byte_order(json.loads(coll) if coll else {}, db) for name, coll in rows}
    return tuple(needs.get(k, False) for k in spec.key)


# Collations that order text as memcmp does on its bytes (UTF-8 byte order is code point order).
_LIBC_BYTE_ORDER = {"C", "POSIX"}
_BUILTIN_BYTE_ORDER = {"C", "C.UTF-8"}


def byte_order(coll: dict, db: dict) -> bool:
    """Whether a collation (a pg_collation row as JSON; {} for none) orders text byte
    by byte in the database `db` (its pg_database row as JSON). Unknown providers
    do not: COLLATE "C" is then added, which is always correct, only slower."""
    provider = coll.get("collprovider", "d")
    if provider == "d":  # the database's default collation
        provider = db.get("datlocprovider", "c")  # before PostgreSQL 15 always libc
        locale = db.get("datcollate") if provider == "c" else (db.get("datlocale") or db.get("daticulocale"))
    else:
        locale = coll.get("collcollate") if provider == "c" else (coll.get("colllocale") or coll.get("colliculocale"))
    if provider == "c":
        return locale in _LIBC_BYTE_ORDER
    if provider == "b":
        return locale in _BUILTIN_BYTE_ORDER
    return False  # ICU orders linguistically, whatever its locale is called ("C" included)


async def key_space(conn_sqlite_run, pg: asyncpg.Connection, schema: str, spec: TableSpec) -> KeySpace:
    """Build the KeySpace; `conn_sqlite_run(fn, *args)` runs fn on the SQLite thread."""
    binary, sqlite_indexed = await conn_sqlite_run(sqlite_key_access, spec)
    collate_c = await pg_key_access(pg, schema, spec)
    as_text = await pg_keys_as_text(pg, schema, spec)
    # Read as text (pg_ref): that text's collation may be any.
    collate_c = tuple(c or t or spec.column(k).pg_padded for c, t, k in zip(collate_c, as_text, spec.key))
    return KeySpace(
        spec=spec,
        orderable=orderable(spec),
        sqlite_binary=binary,
        sqlite_indexed=sqlite_indexed,
        pg_collate_c=collate_c,
        pg_indexed=not any(collate_c),
        pg_as_text=as_text,
    )


async def pg_keys_as_text(conn: asyncpg.Connection, schema: str, spec: TableSpec) -> tuple[bool, ...]:
    """Key columns of type TEXT that Postgres holds as uuid (its text is the lowercase form
    the way back writes, which orders as the uuid does)."""
    rows = await conn.fetch(
        """SELECT a.attname FROM pg_attribute a
           JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = ANY($3::text[]) AND a.atttypid = 'uuid'::regtype""",
        schema, spec.name, list(spec.key),
    )
    uuids = {r[0] for r in rows}
    return tuple(k in uuids and spec.column(k).pgtype is PgType.TEXT for k in spec.key)


def cell_case(key_sql: str, n_bounds: int, mark: Callable[[int], str]) -> str:
    """SQL numbering the cell a key falls in, 0..n_bounds, given ascending bounds
    (bound i ends cell i): a binary search, so log2 comparisons a row, not n.
    `mark(i)` returns the placeholder(s) for bound i; it is called once per bound, in
    the order the placeholders appear in the SQL."""

    def between(a: int, b: int) -> str:  # the key is in one of cells a..b
        if a == b:
            return str(a)
        mid = (a + b + 1) // 2  # cells a..mid-1 lie below bound mid-1
        return f"CASE WHEN {key_sql} < {mark(mid - 1)} THEN {between(a, mid - 1)} ELSE {between(mid, b)} END"

    return between(0, n_bounds)


def quoted_sqlite_table(spec: TableSpec) -> str:
    return f"main.{quote_ident(spec.name)}"
