"""Query speed, measured: a primary-key lookup and a lookup through each index syncd
created, timed in SQLite and in Postgres on sampled rows, the median of a few runs,
with the plan Postgres chose. Evidence for the checklist item "PostgreSQL performance
meets targets", not a claim.

Bounded for big fleets: at most [cutover] speed_max_lookups lookups per report (every
table's primary key first, then indexes), each fetching at most LOOKUP_ROWS rows.
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from syncd.identifiers import qualified, quote_ident, quote_pg_ident
from syncd.model import TableSpec
from syncd.parity.plan import Item
from syncd.postgres.connect import describe
from syncd.sqlite.connection import not_utf8
from syncd.types import ValueMismatch, converter

NO_VALUE = "no row holds a value there: nothing to look up"  # the note of an index no row is in
RUNS = 5  # timed runs per lookup (after one untimed run), over up to SAMPLES sampled rows
SAMPLES = 3
LOOKUP_ROWS = 100


def not_in_postgres(n: int) -> str:
    """The note of a lookup whose sampled rows Postgres does not hold (a table left empty
    or part-copied): finding nothing, fast, is no timing of the user's data."""
    return f"none of the {n} row(s) sampled from SQLite is in Postgres: a lookup that finds nothing times no data"


@dataclass
class Lookup:
    table: str
    what: str  # "primary key (id)", 'index "person_age" (age)'
    sqlite_ms: float | None = None
    postgres_ms: float | None = None
    plan: str | None = None  # Postgres's top plan node, e.g. "Index Scan using person_age"
    note: str | None = None

    def describe(self) -> str:
        sq = f"{self.sqlite_ms:.2f} ms in SQLite" if self.sqlite_ms is not None else "SQLite not timed"
        pg = f"{self.postgres_ms:.2f} ms" if self.postgres_ms is not None else "not timed"
        how = f" ({self.plan})" if self.plan else ""
        note = f"; {self.note}" if self.note else ""
        return f"{self.table}: {self.what}: {pg} in Postgres{how}, {sq}{note}"


@dataclass
class SpeedFacts:
    max_ms: float
    lookups: list[Lookup] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # tables with no row to look up
    errors: list[str] = field(default_factory=list)
    not_timed: int = 0  # lookups left out by the cap

    @property
    def slow(self) -> list[Lookup]:
        return [lk for lk in self.lookups if lk.postgres_ms is not None and lk.postgres_ms > self.max_ms]


def _samples(conn: sqlite3.Connection, spec: TableSpec) -> list[tuple]:
    """Up to SAMPLES rows (every column, spec order) spread over the table."""
    cols = ", ".join(spec.sqlite_ref(c) for c in spec.column_names)
    table = f"main.{quote_ident(spec.name)}"
    rows: list[tuple] = []
    if not spec.without_rowid and not spec.rowid_keyed:
        top = conn.execute(f"SELECT max(_rowid_) FROM {table}").fetchone()[0] if "_rowid_" not in {
            c.lower() for c in spec.column_names} else None
        if top:
            for i in range(SAMPLES):
                r = conn.execute(f"SELECT {cols} FROM {table} WHERE _rowid_ >= ? ORDER BY _rowid_ LIMIT 1",
                                 (1 + (top * (2 * i + 1)) // (2 * SAMPLES),)).fetchone()
                if r is not None and r not in rows:
                    rows.append(r)
    if not rows:
        rows = conn.execute(f"SELECT {cols} FROM {table} LIMIT {SAMPLES}").fetchall()
    return rows


def _samples_with_values(conn: sqlite3.Connection, spec: TableSpec, columns: list[str]) -> list[tuple]:
    """Up to SAMPLES rows (every column, spec order) holding a value in each of `columns`:
    for an index on columns the rows spread over the table leave NULL (a sparse one)."""
    cols = ", ".join(spec.sqlite_ref(c) for c in spec.column_names)
    held = " AND ".join(f"{spec.sqlite_ref(c)} IS NOT NULL" for c in columns)
    return conn.execute(f"SELECT {cols} FROM main.{quote_ident(spec.name)} WHERE {held} LIMIT {SAMPLES}").fetchall()


def _time_sqlite(conn: sqlite3.Connection, sql: str, params: list[list[Any]]) -> float:
    conn.execute(sql, params[0]).fetchall()
    times = []
    for i in range(RUNS):
        t0 = time.perf_counter()
        conn.execute(sql, params[i % len(params)]).fetchall()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


async def _time_postgres(conn: asyncpg.Connection, sql: str, params: list[list[Any]]) -> tuple[float, str | None]:
    # Rows are fetched and discarded undecoded (executemany): the query's time in
    # Postgres and on the wire, and a value Python cannot hold (a BC date) is no error.
    stmt = await conn.prepare(sql)
    await stmt.executemany([params[0]])
    times = []
    for i in range(RUNS):
        t0 = time.perf_counter()
        await stmt.executemany([params[i % len(params)]])
        times.append(time.perf_counter() - t0)
    plan = None
    try:
        doc = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *params[0])
        plan = _top_node(doc)
    except asyncpg.PostgresError:
        pass
    return statistics.median(times) * 1000, plan


def _top_node(doc: Any) -> str | None:
    import json

    if isinstance(doc, str):
        doc = json.loads(doc)
    node = doc[0]["Plan"]
    while node.get("Node Type") == "Limit" and node.get("Plans"):
        node = node["Plans"][0]
    what = node.get("Node Type", "?")
    if node.get("Index Name"):
        what += f" using {node['Index Name']}"
    return what


async def measure(pg: asyncpg.Connection, sqlite_path, schema: str, specs: dict[str, TableSpec], items: list[Item],
                  max_ms: float, budget: int, busy_timeout_ms: int) -> SpeedFacts:
    """Time the lookups of one source. `items`: the plan's (indexes syncd created are
    looked up through); `budget`: how many lookups may be timed; `busy_timeout_ms`: how
    long a SQLite read waits for the application's lock ([sqlite] read_busy_timeout_ms)."""
    facts = SpeedFacts(max_ms)
    from syncd.sqlite.connection import open_readonly, surrogate_text

    sq = await asyncio.to_thread(open_readonly, sqlite_path, busy_timeout_ms)
    # A value that is not UTF-8 is read with its bytes kept: a row holding one (in any
    # column) is still a sample, and as a lookup value the converter leaves it out.
    sq.text_factory = surrogate_text
    try:
        samples: dict[str, list[tuple]] = {}
        for name, spec in specs.items():
            try:
                samples[name] = await asyncio.to_thread(_samples, sq, spec)
            except sqlite3.Error as e:
                facts.errors.append(f"{name}: rows could not be sampled in SQLite: {e}")
        wanted: list[tuple[TableSpec, str, tuple[str, ...], Item | None]] = []
        for name, spec in specs.items():
            if samples.get(name):
                wanted.append((spec, f"primary key ({', '.join(spec.key)})", spec.key, None))
            elif name in samples:
                facts.empty.append(name)
        for item in items:
            spec = specs.get(item.table or "")
            if spec is None or not samples.get(spec.name) or item.left_out or item.kind not in ("index", "unique") \
                    or item.name is None:
                continue
            wanted.append((spec, f'{"unique " if item.kind == "unique" else ""}index "{item.name}" '
                                 f"{item.what.split(' on ', 1)[-1]}", (), item))
        for spec, what, cols, item in wanted:
            if budget <= 0:
                facts.not_timed += 1
                continue
            budget -= 1
            lk = Lookup(spec.name, what)
            try:
                await _one(pg, sq, schema, spec, cols, item, samples[spec.name], lk)
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                lk.note = f"Postgres: {describe(e)}"
            except sqlite3.Error as e:
                lk.note = f"SQLite: {e}"
            facts.lookups.append(lk)
    finally:
        await asyncio.to_thread(sq.close)
    return facts


async def _one(pg: asyncpg.Connection, sq: sqlite3.Connection, schema: str, spec: TableSpec, key: tuple[str, ...],
               item: Item | None, rows: list[tuple], lk: Lookup) -> None:
    names = spec.column_names
    table = qualified(schema, spec.name)
    cols = list(key) if item is None else [c for c in item.lookup_columns if c in names]
    if not cols:
        await _expression(pg, schema, spec, item, rows, lk)
        return
    idx = [names.index(c) for c in cols]
    convs = [converter(spec.column(c).pgtype) for c in cols]

    def params(rows: list[tuple]) -> tuple[list, list]:
        pg_params, sq_params = [], []
        for r in rows:
            try:
                values = [f(r[i]) for f, i in zip(convs, idx)]
            except ValueMismatch:
                continue
            if any(v is None or not_utf8(v) for v in values):  # text that is not UTF-8: no Postgres value
                continue
            pg_params.append(values)
            sq_params.append([r[i] for i in idx])
        return pg_params, sq_params

    pg_params, sq_params = params(rows)
    if not pg_params:
        pg_params, sq_params = params(await asyncio.to_thread(_samples_with_values, sq, spec, cols))
    if not pg_params:
        lk.note = NO_VALUE
        return
    pred = item.predicate if item is not None else None
    where = " AND ".join(f"{quote_pg_ident(c)} = ${i + 1}" for i, c in enumerate(cols))
    # The rows themselves, whatever a partial index's predicate says of them.
    if not any([await pg.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE {where})", *p) for p in pg_params]):
        lk.note = not_in_postgres(len(pg_params))
        return
    if pred:
        where += f" AND {pred}"
    lk.postgres_ms, lk.plan = await _time_postgres(pg, f"SELECT * FROM {table} WHERE {where} LIMIT {LOOKUP_ROWS}",
                                                   pg_params)
    if pred:
        lk.note = "SQLite not timed for a partial index (its predicate is SQLite text)"
        return
    sq_where = " AND ".join(f"{spec.sqlite_ref(c)} = ?" for c in cols)
    lk.sqlite_ms = await asyncio.to_thread(
        _time_sqlite, sq, f"SELECT * FROM main.{quote_ident(spec.name)} WHERE {sq_where} LIMIT {LOOKUP_ROWS}",
        sq_params)


async def _expression(pg: asyncpg.Connection, schema: str, spec: TableSpec, item: Item | None, rows: list[tuple],
                      lk: Lookup) -> None:
    """An expression index: looked up by the expression's value for sampled rows."""
    if item is None or item.lookup_expr is None:
        lk.note = "not timed"
        return
    expr = item.lookup_expr
    kidx = [spec.column_names.index(k) for k in spec.key]
    kconv = [converter(spec.column(k).pgtype) for k in spec.key]
    table = qualified(schema, spec.name)
    kwhere = " AND ".join(f"{quote_pg_ident(k)} = ${i + 1}" for i, k in enumerate(spec.key))
    values, looked_up, found = [], 0, 0
    for r in rows:
        try:
            kv = [f(r[i]) for f, i in zip(kconv, kidx)]
        except ValueMismatch:
            continue
        if any(not_utf8(v) for v in kv):
            continue
        looked_up += 1
        row = await pg.fetchrow(f"SELECT {expr} FROM {table} WHERE {kwhere}", *kv)
        found += row is not None
        if row is not None and row[0] is not None:
            values.append([row[0]])
    if looked_up and not found:
        lk.note = not_in_postgres(looked_up)
        return
    if not values:  # a sparse expression: looked up by values some row gives
        values = [[r[0]] for r in await pg.fetch(f"SELECT {expr} FROM {table} WHERE {expr} IS NOT NULL "
                                                 f"LIMIT {SAMPLES}")]
    if not values:
        lk.note = NO_VALUE
        return
    pred = f" AND {item.predicate}" if item.predicate else ""
    lk.postgres_ms, lk.plan = await _time_postgres(
        pg, f"SELECT * FROM {table} WHERE {expr} = $1{pred} LIMIT {LOOKUP_ROWS}", values)
    lk.note = "SQLite not timed for an expression index (its expression is SQLite text)" + (
        f"; {item.lookup_note}" if item.lookup_note else "")
