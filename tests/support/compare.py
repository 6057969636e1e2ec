"""Decide whether SQLite and Postgres hold the same rows, reading both sides directly
and independently of syncd's own code (no syncd import here)."""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
import struct
from decimal import Decimal
from typing import Any

import asyncpg

from tests.support.rowcompare import instant, real_as_text


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sqlite_rows(path: str, table: str,
                key: list[str] | None = None) -> tuple[list[str], dict[tuple, tuple], list[str]]:
    """(columns, rows by key, a line for each key that names more than one row)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
    try:
        info = conn.execute(f"PRAGMA table_xinfo({_q(table)})").fetchall()
        cols = [r[1] for r in info if r[6] in (0, 2, 3)]
        pk = key or [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]]
        if not pk:  # every row would fall under one empty key, and one row be compared
            raise ValueError(f"table {table!r} has no primary key: pass its key, or use compare_keyless")
        idx = [cols.index(k) for k in pk]
        rows = conn.execute(f"SELECT {', '.join(_q(c) for c in cols)} FROM {_q(table)}")
        return (cols, *_by_key(table, "SQLite", ((tuple(r[i] for i in idx), tuple(r)) for r in rows)))
    finally:
        conn.close()


async def postgres_rows(dsn: str, schema: str, table: str, cols: list[str],
                        key: list[str]) -> tuple[dict[tuple, tuple], list[str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f"SELECT {', '.join(_q(c) for c in cols)} FROM {_q(schema)}.{_q(table)}")
    finally:
        await conn.close()
    idx = [cols.index(k) for k in key]
    return _by_key(table, "Postgres", ((tuple(_norm_key(r[i]) for i in idx), tuple(r)) for r in rows))


def _by_key(table: str, side: str, keyed_rows) -> tuple[dict[tuple, tuple], list[str]]:
    """Rows by key, and a line for each key naming more than one row: kept by key alone,
    all but one of them would go uncompared (a row stored twice, or one never there)."""
    out: dict[tuple, tuple] = {}
    count: dict[tuple, int] = {}
    for k, row in keyed_rows:
        out[k] = row
        count[k] = count.get(k, 0) + 1
    return out, [f"{table}: key {k!r} names {n} rows in {side}" for k, n in count.items() if n > 1]


def _norm_key(v: Any) -> Any:
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return v


def same_value(sv: Any, pv: Any) -> bool:
    """SQLite value vs the Postgres value syncd should have made of it."""
    if sv is None or pv is None:
        return sv is None and pv is None
    if isinstance(pv, bool):
        return sv in (0, 1) and bool(sv) == pv and not isinstance(sv, float)
    if isinstance(pv, float):
        if isinstance(sv, int):  # the same integer, not the double nearest it (2^53 + 1 is no double)
            return math.isfinite(pv) and float(sv) == pv and int(pv) == sv
        if not isinstance(sv, float):
            return False
        return struct.pack(">d", sv) == struct.pack(">d", pv)
    if isinstance(pv, int):
        return isinstance(sv, int) and sv == pv
    if isinstance(pv, Decimal):
        if isinstance(sv, int):
            return pv == sv
        if isinstance(sv, float):
            return not math.isnan(sv) and pv == Decimal(repr(sv)) if math.isfinite(sv) else pv == Decimal(sv)
        return False
    if isinstance(pv, str):
        if isinstance(sv, str):
            return sv == pv
        if isinstance(sv, int):
            return str(sv) == pv
        if isinstance(sv, float):
            return real_as_text(sv, pv)
        return False
    if isinstance(pv, bytes):
        return isinstance(sv, bytes) and sv == pv
    if isinstance(pv, dt.datetime):  # the same instant, to the microsecond
        if pv.tzinfo is not None:
            pv = pv.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return instant(sv) == pv
    if isinstance(pv, dt.date):  # that day and nothing more: a time of day a date drops is a lost value
        return isinstance(sv, str) and instant(sv) == dt.datetime.combine(pv, dt.time())
    return sv == pv


async def compare_table(path: str, dsn: str, schema: str, table: str, key: list[str] | None = None) -> list[str]:
    """Differences between the two sides as readable lines; empty when equal."""
    cols, srows, problems = sqlite_rows(path, table, key)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        info = conn.execute(f"PRAGMA table_xinfo({_q(table)})").fetchall()
    finally:
        conn.close()
    pk = key or [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]]
    prows, twice = await postgres_rows(dsn, schema, table, cols, pk)
    problems += twice
    for k in srows.keys() - prows.keys():
        problems.append(f"{table}: key {k!r} missing in Postgres")
    for k in prows.keys() - srows.keys():
        problems.append(f"{table}: key {k!r} extra in Postgres")
    for k in srows.keys() & prows.keys():
        s, p = srows[k], prows[k]
        for c, sv, pv in zip(cols, s, p):
            if not same_value(sv, pv):
                problems.append(f"{table}: key {k!r} column {c!r}: SQLite {sv!r} vs Postgres {pv!r}")
    return sorted(problems)


async def compare_all(path: str, dsn: str, schema: str, tables: list[str | tuple[str, list[str]]]) -> list[str]:
    """Each table, named alone (keyed by its primary key) or as (name, key columns)."""
    out = []
    for t in tables:
        name, key = (t, None) if isinstance(t, str) else t
        out.extend(await compare_table(path, dsn, schema, name, key))
    return out


async def compare_keyless(path: str, dsn: str, schema: str, table: str, rowid_column: str = "_syncd_rowid",
                          by_rowid: bool = True) -> list[str]:
    """A table without a key: the rows as a multiset (duplicates counted), and, with
    `by_rowid`, each SQLite rowid holding the same row in Postgres's rowid column."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cols = [r[1] for r in conn.execute(f"PRAGMA table_xinfo({_q(table)})") if r[6] in (0, 2, 3)]
        srows = {r[0]: tuple(r[1:]) for r in conn.execute(f"SELECT _rowid_, {', '.join(_q(c) for c in cols)} "
                                                         f"FROM {_q(table)}")}
    finally:
        conn.close()
    pconn = await asyncpg.connect(dsn)
    try:
        prows = {r[0]: tuple(r[1:]) for r in await pconn.fetch(
            f"SELECT {_q(rowid_column)}, {', '.join(_q(c) for c in cols)} FROM {_q(schema)}.{_q(table)}")}
    finally:
        await pconn.close()
    problems = []
    unmatched = list(prows.values())
    for srow in srows.values():
        for i, prow in enumerate(unmatched):
            if all(same_value(a, b) for a, b in zip(srow, prow)):
                del unmatched[i]
                break
        else:
            problems.append(f"{table}: row {srow!r} missing in Postgres (or there once too few)")
    problems += [f"{table}: row {p!r} extra in Postgres" for p in unmatched]
    if by_rowid:
        for rid in srows.keys() | prows.keys():
            s, p = srows.get(rid), prows.get(rid)
            if s is None or p is None or not all(same_value(a, b) for a, b in zip(s, p)):
                problems.append(f"{table}: rowid {rid}: SQLite {s!r} vs Postgres {p!r}")
    return sorted(problems)
