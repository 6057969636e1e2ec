"""Rows an INSERT/UPDATE OR REPLACE removed through a unique index, found at apply time.

SQLite deletes the row a REPLACE collides with without firing delete triggers (unless
the application turns recursive_triggers on), so capture never hears of it. Looking
for that row in a trigger would name non-key columns (the application's DROP COLUMN
then fails on syncd's trigger) and, under a partial index, scan the table inside the
application's write. So syncd asks Postgres instead, when it applies a batch: which
rows collide with a row being upserted, on a column set SQLite holds unique (its
collation widened, its partial predicate ignored: a superset is harmless)? Each such
row is read again from SQLite, where uniqueness is enforced: present, it is upserted
as it is now; gone, it is deleted. Nothing is deleted on Postgres's word alone.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from decimal import Decimal
from typing import Any

import asyncpg

from syncd.identifiers import qualified, quote_ident, quote_pg_ident
from syncd.model import Column, TableSpec, UniqueSet
from syncd.sqlite import key_identity, windows
from syncd.sqlite.connection import fetchall_text_safe
from syncd.sqlite_sql import Affinity, affinity
from syncd.types import PgType, ValueMismatch, converter, real_text

LOOKUP_BATCH = 500


# A number as syncd writes it into text (an integer, or real_text's spelling of a real),
# bounded so that any text it matches converts to numeric (a longer one is no such number).
_NUMBER_TEXT = r"^-?[0-9]{1,40}(\.[0-9]{1,40})?(e[-+][0-9]{1,3})?$"


def _widen(spec: TableSpec, column: str, collation: str, ref: str) -> str:
    """How Postgres compares one column of a unique set: `ref` widened to SQLite's
    collation (NOCASE, RTRIM), and numbers to their value where SQLite compares them so,
    so every row SQLite would call equal is found."""
    if spec.column(column).pgtype is not PgType.TEXT:
        return ref
    coll = collation.upper()
    ref = f"lower({ref})" if coll == "NOCASE" else f"rtrim({ref})" if coll == "RTRIM" else ref
    if spec.column(column).numbers_as_text:
        # COLLATE "C": a regular expression fails under a case-insensitive (nondeterministic) collation.
        ref = f"(CASE WHEN {ref} COLLATE \"C\" ~ '{_NUMBER_TEXT}' THEN trim_scale({ref}::numeric)::text ELSE {ref} END)"
    return ref


class LookupIndexTooSlow(Exception):
    """A lookup index could not be built within the statement timeout: reconcile (whose
    transaction builds it) is tried again; said as what it is, not as an outage."""


def index_name(spec: TableSpec, u: UniqueSet) -> str:
    named = (spec.name, u.columns, u.collations)
    if any(spec.column(c).numbers_as_text for c in u.columns):  # an index of another expression than before
        named += ("by value",)
    digest = hashlib.blake2b(repr(named).encode(), digest_size=6).hexdigest()
    return f"_syncd_uq_{digest}"


def index_sql(schema: str, spec: TableSpec, u: UniqueSet) -> str:
    """An index making the collision lookup cheap (not unique: Postgres may briefly hold
    a stale duplicate, which is exactly what the lookup finds)."""
    exprs = ", ".join(f"({_widen(spec, c, coll, quote_pg_ident(c))})" for c, coll in zip(u.columns, u.collations))
    return f"CREATE INDEX IF NOT EXISTS {quote_pg_ident(index_name(spec, u))} ON {qualified(schema, spec.name)} ({exprs})"


def _describe(u: UniqueSet, until: int | None = None) -> str:
    """The index's comment: the unique set it serves, so a set SQLite no longer has can
    still be looked up (see ensure_indexes), and until which changelog position."""
    d: dict[str, Any] = {"columns": list(u.columns), "collations": list(u.collations)}
    if until is not None:
        d["until"] = until
    return json.dumps(d)


def _comment_sql(schema: str, name: str, text: str) -> str:
    return f"COMMENT ON INDEX {qualified(schema, name)} IS '" + text.replace("'", "''") + "'"


def _retired_set(spec: TableSpec, comment: str | None) -> tuple[UniqueSet, int | None] | None:
    try:
        d = json.loads(comment or "")
        u = UniqueSet(tuple(str(c) for c in d["columns"]), tuple(str(c) for c in d["collations"]))
        until = d.get("until")
        until = int(until) if until is not None else None
    except (ValueError, TypeError, KeyError):
        return None
    names = set(spec.column_names)
    if u in spec.unique_sets or not u.columns or not all(c in names for c in u.columns):
        return None
    return u, until


_LOOKUP_INDEXES = (
    "SELECT t.relname, i.relname, obj_description(i.oid, 'pg_class') FROM pg_index x "
    "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
    "JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = $1 AND starts_with(i.relname, '_syncd_uq_')")


async def lookup_indexes(conn: asyncpg.Connection, schema: str) -> dict[str, dict[str, str | None]]:
    """table -> {lookup index: its comment} of every table of `schema`, in one query."""
    out: dict[str, dict[str, str | None]] = {}
    for table, name, comment in await conn.fetch(_LOOKUP_INDEXES, schema):
        out.setdefault(table, {})[name] = comment
    return out


async def ensure_indexes(conn: asyncpg.Connection, schema: str, spec: TableSpec, applied_seq: int,
                         top_seq: int, have: dict[str, str | None] | None = None,
                         columns: frozenset[str] | None = None) -> tuple[tuple[UniqueSet, int], ...]:
    """The lookup indexes `spec`'s unique column sets need. A set SQLite no longer has
    (the application dropped the index) is kept, with its index, until the stream has
    applied every change captured before the drop (up to `top_seq`, the changelog's end
    when the drop was noticed): a REPLACE made while the index stood removed rows
    through it. Returns those retired sets with their end positions. `have`: the
    table's lookup indexes (lookup_indexes), when the caller has read them already.
    `columns`: the Postgres table's columns, when it may lack some of SQLite's (a table
    about to be loaded again, which the load reshapes): a set over a column it does not
    hold yet gets its index at a later reconcile (the lookup works without it)."""
    wanted = {index_name(spec, u): u for u in spec.unique_sets}
    if have is None:
        have = {r[1]: r[2] for r in await conn.fetch(_LOOKUP_INDEXES + " AND t.relname = $2", schema, spec.name)}
    retired: list[tuple[UniqueSet, int]] = []
    for name in set(have) - set(wanted):
        found = _retired_set(spec, have[name])
        if found is not None and (found[1] is None or applied_seq < found[1]):
            u, until = found
            if until is None:
                until = top_seq
                await conn.execute(_comment_sql(schema, name, _describe(u, until)))
            retired.append((u, until))
            continue
        await conn.execute(f"DROP INDEX IF EXISTS {qualified(schema, name)}")
    for name, u in wanted.items():
        if columns is not None and not set(u.columns) <= columns:
            continue
        if name not in have:
            try:
                await conn.execute(index_sql(schema, spec, u))
            except TimeoutError:
                if conn.is_closed():
                    raise
                raise LookupIndexTooSlow(
                    f'table "{spec.name}": building syncd\'s lookup index for its UNIQUE ({", ".join(u.columns)}) ran '
                    "over [postgres] statement_timeout_seconds (a large table, or another session holding the table); "
                    "trying again with backoff, changes stay captured in SQLite: raise the timeout if the table is "
                    "large") from None
        if have.get(name) != _describe(u):
            await conn.execute(_comment_sql(schema, name, _describe(u)))
    return tuple(retired)


async def drop_indexes(conn: asyncpg.Connection, schema: str, tables: list[str], lock_wait_ms: int,
                       budget: float) -> tuple[int, list[str], int]:
    """When the way back ends (no rollback any more, no stream from SQLite again): the
    lookup indexes of `tables` go, each in a transaction of its own waiting `lock_wait_ms`
    at most for its table (the application's queries queue behind a waiting DROP), none
    started after `budget` seconds. Kept until then: a rollback's forward stream needs
    them, and building them again on full tables would be a long step. Returns (dropped,
    [index: why not], left for a later call)."""
    names = [r[0] for r in await conn.fetch(
        "SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE n.nspname = $1 AND t.relname = ANY($2::text[]) "
        "AND starts_with(i.relname, '_syncd_uq_')", schema, tables)]
    started = time.monotonic()
    dropped, failed = 0, []
    for name in names:
        if time.monotonic() - started > budget:
            break
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{lock_wait_ms}ms'")
                await conn.execute(f"DROP INDEX IF EXISTS {qualified(schema, name)}")
            dropped += 1
        except (asyncpg.PostgresError, TimeoutError) as e:
            if conn.is_closed():
                raise
            failed.append(f"{name}: {e or type(e).__name__}")
    return dropped, failed, len(names) - dropped


def candidates_sql(schema: str, spec: TableSpec, u: UniqueSet) -> str:
    cols = list(u.columns) + list(spec.key)
    types = [spec.column(c).pgtype.value for c in cols]
    params = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(types))
    names = [f"u{i}" for i in range(len(u.columns))] + [f"k{i}" for i in range(len(spec.key))]
    on = " AND ".join(
        f"{_widen(spec, c, coll, 't.' + quote_pg_ident(c))} = {_widen(spec, c, coll, f'n.u{i}')}"
        for i, (c, coll) in enumerate(zip(u.columns, u.collations))
    )
    tkey = ", ".join(f"t.{quote_pg_ident(k)}" for k in spec.key)
    nkey = ", ".join(f"n.k{i}" for i in range(len(spec.key)))
    return (f"SELECT DISTINCT {tkey} FROM {qualified(schema, spec.name)} AS t "
            f"JOIN unnest({params}) AS n({', '.join(names)}) ON {on} WHERE ({tkey}) IS DISTINCT FROM ({nkey})")


async def stale_keys(conn: asyncpg.Connection, schema: str, spec: TableSpec, records: list[tuple],
                     sets: tuple[UniqueSet, ...]) -> set[tuple]:
    """Postgres keys of rows colliding with `records` (converted rows about to be
    upserted) on one of `sets` (unique column sets), other than those rows themselves."""
    if not sets or not records:
        return set()
    names = spec.column_names
    key_idx = spec.key_indexes
    upserted = {tuple(r[i] for i in key_idx) for r in records}
    found: set[tuple] = set()
    for u in sets:
        idx = [names.index(c) for c in u.columns] + list(key_idx)
        columns = [[r[i] for r in records] for i in idx]
        for row in await conn.fetch(candidates_sql(schema, spec, u), *columns):
            key = tuple(row)
            if key not in upserted:
                found.add(key)
    return found


def _sqlite_int(i: int) -> list[int]:
    """[i] where SQLite can hold i as an INTEGER (64 bits), else []: binding a wider int
    raises OverflowError, and no stored INTEGER is it."""
    return [i] if -2**63 <= i < 2**63 else []


def _raw_forms(pgtype: PgType, v: Any) -> list[Any] | None:
    """Every SQLite value that converts to Postgres value `v` (None: not knowable)."""
    if v is None:
        return [None]
    if pgtype in (PgType.BIGINT, PgType.BYTEA):
        return [v]
    if pgtype is PgType.TEXT:
        out: list[Any] = [v]
        try:
            if str(int(v)) == v:
                out += _sqlite_int(int(v))
        except ValueError:
            pass
        try:
            f = float(v)
            if real_text(f) == v:
                out.append(f)
        except ValueError:
            pass
        return out
    if pgtype is PgType.DOUBLE:
        return [float(v)] + (_sqlite_int(int(v)) if float(v).is_integer() else [])
    if pgtype is PgType.NUMERIC and isinstance(v, Decimal) and v.is_finite():
        if v != v.to_integral_value():
            return [float(v)]
        # Past 64 bits SQLite holds a whole number only as a REAL, and then exactly.
        return _sqlite_int(int(v)) or ([float(v)] if Decimal(float(v)) == v else [])
    if pgtype is PgType.BOOLEAN:
        return [1 if v else 0]
    return None


def _date_lookups(col: Column, v: Any) -> list[tuple[str, list[Any]]] | None:
    """How SQLite is asked for the row of date key value `v` (a date or timestamp in
    Postgres): conditions on the key column (the SQL after it, and its parameters), or
    None where the SQLite value cannot be told exactly. A column schema parity typed holds
    one SQLite value per instant, the one the way back writes (its recorded spelling);
    a `[sources.columns]` override holds an instant in one of its usual text spellings
    (the stream holds a table with any other, key_identity.unusual_spelling) or as seconds
    since 1970, an integer or a real that rounds to `v`'s microsecond."""
    if col.sqlite_format is not None:
        from syncd.reverse.values import ColumnShape, NotExpressible, to_sqlite  # the way back's own spelling

        try:
            shape = ColumnShape(col.name, col.pgtype, affinity(col.declared), col.sqlite_format)
            return [("= ?", [to_sqlite(shape, v)])]
        except (NotExpressible, ValueError, OverflowError):
            return None
    try:
        spellings = key_identity._date_spellings(col.pgtype, v)
    except (ValueError, OverflowError):
        return None
    texts = [s for s in spellings if type(s) is str]
    out: list[tuple[str, list[Any]]] = [(f"IN ({', '.join('?' * len(texts))})", texts)]
    if affinity(col.declared) is not Affinity.TEXT:  # a TEXT column stores no number
        # The integer of a whole second, and the reals that read as `v`: told apart from
        # the doubles either side by their conversion below.
        out.append(("BETWEEN ? AND ?", list(key_identity.epoch_window(col.pgtype, v))))
    return out


def _lookups(col: Column, v: Any) -> list[tuple[str, list[Any]]] | None:
    """Conditions on key column `col` that find the SQLite rows whose key there converts
    to Postgres value `v`, or None where they cannot be known."""
    if v is not None and col.pgtype in (PgType.DATE, PgType.TIMESTAMP, PgType.TIMESTAMPTZ):
        return _date_lookups(col, v)
    forms = _raw_forms(col.pgtype, v)
    return None if forms is None else [("= ?", [f]) for f in forms]


def read_current(conn: sqlite3.Connection, spec: TableSpec, pg_keys: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """On the SQLite thread, in one read transaction: the current rows of `pg_keys`
    (SQLite rows, spec column order) and the keys SQLite no longer holds. A key whose
    SQLite form cannot be known is looked for among every key of the table
    (_scan_for): never called gone unless no SQLite row has it."""
    key_cols = [spec.column(k) for k in spec.key]
    convs = [converter(c.pgtype) for c in key_cols]
    cols = ", ".join(spec.sqlite_ref(c) for c in spec.column_names)
    table = f"main.{quote_ident(spec.name)}"
    key_idx = spec.key_indexes
    rows: list[tuple] = []
    gone: list[tuple] = []
    unknown: list[tuple] = []
    conn.execute("BEGIN")
    try:
        for pg_key in pg_keys:
            forms = [_lookups(c, v) for c, v in zip(key_cols, pg_key)]
            if any(f is None for f in forms):
                unknown.append(pg_key)
                continue
            combos: list[tuple[tuple[str, list[Any]], ...]] = [()]
            for f in forms:
                combos = [c + (x,) for c in combos for x in f]  # type: ignore[union-attr]
            hit = None
            for combo in combos:
                # The key's own index answers (under its collation, key_sql, and the column's
                # affinity); which row it found is then decided on the converted key, exactly.
                where = " AND ".join(f"{spec.key_sql(k)} {op}" for k, (op, _) in zip(spec.key, combo))
                params = [p for _, ps in combo for p in ps]
                for row in fetchall_text_safe(conn, f"SELECT {cols} FROM {table} WHERE {where}", params):
                    try:
                        if tuple(f(row[i]) for f, i in zip(convs, key_idx)) == pg_key:
                            hit = row
                    except ValueMismatch:
                        continue
                if hit is not None:
                    break
            if hit is None:
                gone.append(pg_key)
            else:
                rows.append(hit)
    finally:
        conn.execute("COMMIT")
    if unknown:
        found, missing = _scan_for(conn, spec, unknown)
        rows += found
        gone += missing
    return rows, gone


def _scan_for(conn: sqlite3.Connection, spec: TableSpec, pg_keys: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """read_current for keys whose SQLite form cannot be known: every key of the table
    converted, window by window (the file is not held for the whole scan), then the rows
    of those that convert to one of `pg_keys` read by their SQLite key. A key no SQLite
    key converts to is gone; so is one whose row went between the scan and the read (its
    delete is in the changelog after the batch)."""
    wanted = set(pg_keys)
    convs = [converter(spec.column(k).pgtype) for k in spec.key]
    raw_of: dict[tuple, tuple] = {}
    key_cols = ", ".join(spec.sqlite_ref(k) for k in spec.key)
    for window in windows.scan(conn, spec.name, windows.table_ordering(spec), key_cols):
        for raw in window:
            try:
                pg = tuple(f(v) for f, v in zip(convs, raw))
            except (ValueMismatch, TypeError):
                continue
            if pg in wanted:
                raw_of.setdefault(pg, tuple(raw))
    cols = ", ".join(spec.sqlite_ref(c) for c in spec.column_names)
    where = " AND ".join(f"{spec.key_sql(k)} = ? AND typeof({spec.sqlite_ref(k)}) = ?" for k in spec.key)
    rows: list[tuple] = []
    gone = [k for k in pg_keys if k not in raw_of]
    conn.execute("BEGIN")
    try:
        for pg_key, raw in raw_of.items():
            params = [p for v in raw for p in (v, key_identity.storage_class(v))]
            found = fetchall_text_safe(conn, f"SELECT {cols} FROM main.{quote_ident(spec.name)} WHERE {where}", params)
            if found:
                rows.append(found[0])
            else:
                gone.append(pg_key)
    finally:
        conn.execute("COMMIT")
    return rows, gone

