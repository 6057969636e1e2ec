"""Columns without a declared type that syncd carries as text although they hold numbers.

Such a column takes its Postgres type from the values it holds when syncd first sees its
table (types.infer_from_values), and keeps it. An empty table has no values: the column
is text, and an application storing integers there would read '5' from Postgres after
the switch where SQLite gave it 5. At cutover such a column becomes `bigint` when every
value SQLite then holds is an integer, `double precision` when every one is a real: the
type its values would have chosen had syncd first seen them. The proof is made as for
dates (dates.py): every value's storage class in SQLite, then in Postgres every text
converted and rendered back to exactly itself, before ALTER COLUMN ... TYPE ... USING.

A column holding any text or blob value stays text, and so does one mixing integers and
reals (numeric would hand the application a Decimal where SQLite gave it an int or a
float): named, with sample keys. Nothing is recorded for the way back
(`columns.sqlite_format` stays NULL): a column without a declared type has no affinity,
so the integer or real the way back writes stays as written.
"""

from __future__ import annotations

import math
from typing import Any

from syncd.identifiers import quote_ident, quote_pg_ident
from syncd.model import Column
from syncd.parity.dates import SAMPLE_KEYS, ColumnAudit, Verdict
from syncd.types import PgType, real_text

CLASSES = ("integer", "real", "text", "blob")
_TYPE_OF = {"integer": PgType.BIGINT, "real": PgType.DOUBLE}
_NAMED = {"integer": "an integer", "real": "a real", "text": "text", "blob": "a blob"}


def is_candidate(col: Column) -> bool:
    """A column typed from its values (no usable declared type, no override) that is text."""
    return col.inferred and col.pgtype is PgType.TEXT and not col.generated


def audit(conn, spec, columns: list[str]) -> dict[str, Verdict]:
    """Every stored value of `columns` by storage class (window by window: no statement
    holds the read lock for the whole table), and the type each column can take."""
    from syncd.sqlite import windows

    if not columns:
        return {}
    parts = [f"coalesce(sum(typeof({spec.sqlite_ref(n)}) = '{cls}'), 0)" for n in columns for cls in CLASSES]
    totals = [0] * len(parts)
    order = windows.table_ordering(spec)
    for rows in windows.scan(conn, spec.name, order, ", ".join(parts)):
        totals = [a + b for a, b in zip(totals, rows[0])]
    out = {}
    for i, name in enumerate(columns):
        counts = dict(zip(CLASSES, totals[i * 4:i * 4 + 4]))
        out[name] = _verdict(conn, spec, name, counts)
    return out


def _verdict(conn, spec, name: str, counts: dict[str, int]) -> Verdict:
    total = sum(counts.values())
    audit = ColumnAudit(spec.name, name, spec.column(name).declared, values=total)
    if not total:
        return Verdict(audit, None, None, 0, why="no values yet")
    present = [c for c in CLASSES if counts[c]]
    if present == ["real"]:
        zeros = _negative_zeros(conn, spec, name)
        if zeros:
            return Verdict(audit, None, None, len(zeros), keys=zeros[:SAMPLE_KEYS], example=-0.0,
                           why="a real -0.0, which SQLite writes as the text '0.0' (the text Postgres holds): "
                               "as double precision it would read 0.0")
    if len(present) == 1 and present[0] in _TYPE_OF:
        return Verdict(audit, None, _TYPE_OF[present[0]], 0)
    numeric = [c for c in ("integer", "real") if counts[c]]
    if set(present) == {"integer", "real"}:
        odd = min(numeric, key=lambda c: counts[c])
        why = f"it holds integers and reals ({counts['integer']} and {counts['real']})"
    else:
        odd = "text" if counts["text"] else "blob"
        why = f"{_NAMED[odd]} value" + (" among numbers" if numeric else "")
    keys, example = _samples(conn, spec, name, odd)
    misfits = counts[odd] if odd in numeric else counts["text"] + counts["blob"]
    return Verdict(audit, None, None, misfits, why=why, keys=keys, example=example)


def _negative_zeros(conn, spec, name: str) -> list[tuple]:
    """Keys of the rows holding the real -0.0 in column `name`: SQLite's SQL cannot tell
    it from 0.0 (its text, quote() and comparisons say 0), so the zeros are looked at in
    Python, window by window."""
    from syncd.sqlite import windows

    col = spec.sqlite_ref(name)
    keys = ", ".join(spec.sqlite_ref(k) for k in spec.key)
    order = windows.table_ordering(spec)
    return [tuple(r[:-1]) for rows in windows.scan(conn, spec.name, order, f"{keys}, {col}",
                                                    f"typeof({col}) = 'real' AND {col} = 0")
            for r in rows if math.copysign(1.0, r[-1]) < 0]


def _samples(conn, spec, name: str, cls: str) -> tuple[list[tuple], Any]:
    keys = ", ".join(spec.sqlite_ref(k) for k in spec.key)
    col = spec.sqlite_ref(name)
    old = conn.text_factory
    conn.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
    try:
        rows = conn.execute(f"SELECT {keys}, {col} FROM main.{quote_ident(spec.name)} "
                            f"WHERE typeof({col}) = '{cls}' LIMIT {SAMPLE_KEYS}").fetchall()
    finally:
        conn.text_factory = old
    return [tuple(r[:-1]) for r in rows], (rows[0][-1] if rows else None)


# --- the same, in Postgres ------------------------------------------------------------------


def pg_using(column: str, pgtype: PgType) -> str:
    return f"{quote_pg_ident(column)}::{pgtype.value}"


def pg_differs(column: str, pgtype: PgType) -> str:
    """A Postgres condition true for a text that may not come back as itself from
    `pgtype`. An integer's text is Postgres's own; a real's is SQLite's layout (types.
    real_text: '100.0', '1.0e-05', 'Inf'), compared here in Postgres's (the fewest digits
    that read back): the few that differ in layout alone are checked in Python (exact_reals)."""
    c = quote_pg_ident(column)
    if pgtype is PgType.BIGINT:
        return f"{c}::bigint::text IS DISTINCT FROM {c}"
    return (f"{c}::double precision::text IS DISTINCT FROM CASE {c} WHEN 'Inf' THEN 'Infinity' "
            f"WHEN '-Inf' THEN '-Infinity' ELSE regexp_replace({c}, '\\.0(?=e|$)', '') END")


def exact_reals(rows: list[tuple[str, float]]) -> int:
    """How many (text, the double Postgres reads it as) do not render back, in SQLite's
    layout, to exactly the text."""
    return sum(1 for text, value in rows if real_text(value) != text)
