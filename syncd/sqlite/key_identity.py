"""Key identity: distinct SQLite keys that Postgres would hold as one.

A key column without a declared type can hold integer 1 and text '1' as two rows; as
Postgres text both are '1'. A `timestamp` override on a TEXT key turns
'2024-01-01 00:00:00' and '2024-01-01T00:00:00' into one instant. Merging them would
lose a row in silence, so a table where it happens is held, naming the keys, until
the rows are fixed: the audit finds them before a load (a full scan), the stream
before each apply (a lookup of the other spellings of each upserted key).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import sqlite3
from typing import Any

from syncd.identifiers import quote_ident
from syncd.model import TableSpec
from syncd.sqlite import windows
from syncd.sqlite.audit import format_key
from syncd.sqlite.connection import bound_value
from syncd.sqlite_sql import Affinity, affinity
from syncd.types import PgType, ValueMismatch, converter, converter_of, real_text

_DATES = (PgType.TIMESTAMP, PgType.TIMESTAMPTZ, PgType.DATE)
# A text so spelled is among the _date_spellings of the instant it converts to.
_USUAL_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
                         r"(?:[ T][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,7})?)?(?:Z|\+00:00)?)?")


def lossy_key_columns(spec: TableSpec) -> list[str]:
    """Key columns whose conversion can send two SQLite values to one Postgres value."""
    out = []
    for k in spec.key:
        col = spec.column(k)
        if col.sqlite_expr is not None:
            continue  # the rowid: always an integer
        if col.pgtype is PgType.TEXT and affinity(col.declared) is not Affinity.TEXT:
            out.append(k)  # numbers stay numbers in such a column; as text they meet their spelling
        elif col.pgtype in _DATES or col.pgtype is PgType.JSONB:
            out.append(k)
    return out


def _date_spellings(pgtype: PgType, value: Any) -> list[Any]:
    """The usual spellings of the instant `value` (a converted date/time) stands for."""
    if pgtype is PgType.DATE:
        # The date converter reads a date/time at midnight as its day, too (the bare day among them).
        return _date_spellings(PgType.TIMESTAMP, dt.datetime(value.year, value.month, value.day))
    moment = value
    if pgtype is PgType.TIMESTAMPTZ:
        moment = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    out = []
    # The year in four digits (strftime's %Y writes year 999 as '999', which no converter reads).
    day = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
    base = day + f"{{}}{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    # The fraction in every number of digits that keeps all of it ('.5' to '.500000'); none
    # only for the whole second, another instant otherwise.
    digits = f"{moment.microsecond:06d}"
    fractions = [""] if moment.microsecond == 0 else []
    fractions += ["." + digits[:n] for n in range(max(1, len(digits.rstrip("0"))), 7)]
    fractions.append(f".{digits}0")  # seven digits, as .NET writes them (the converter refuses a finer seventh)
    zones = ["", "Z", "+00:00"]
    for sep in (" ", "T"):
        for frac in fractions:
            for zone in zones:
                out.append(base.format(sep) + frac + zone)
        if moment.second == 0 and moment.microsecond == 0:  # a whole minute needs no seconds
            out += [f"{day}{sep}{moment.hour:02d}:{moment.minute:02d}" + zone for zone in zones]
    if moment.time() == dt.time():
        out.append(day)  # midnight: the bare day
    epoch = _epoch(pgtype, value)
    out.append(epoch)
    if epoch.is_integer():
        out.append(int(epoch))
    return out


def _epoch(pgtype: PgType, value: Any) -> float:
    """The instant `value` (a converted date/time) stands for, in seconds since 1970 (a
    date: its midnight; a timestamptz: in UTC), as _date_spellings spells it."""
    if pgtype is PgType.DATE:
        moment = dt.datetime(value.year, value.month, value.day)
    elif pgtype is PgType.TIMESTAMPTZ:
        moment = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    else:
        moment = value
    return (moment - dt.datetime(1970, 1, 1)).total_seconds()


def epoch_window(pgtype: PgType, value: Any) -> tuple[float, float]:
    """Bounds around the instant `value` (a converted date/time) stands for, in seconds
    since 1970, holding every real that converts to it: time.time() is finer than
    Postgres's microsecond, and a real within half a microsecond of the instant is read as
    it. A few doubles either side of those are inside too: a caller converts what it finds."""
    epoch = _epoch(pgtype, value)
    margin = 1e-6 + 4 * math.ulp(epoch)
    return epoch - margin, epoch + margin


def other_spellings(pgtype: PgType, raw: Any, converted: Any) -> list[Any]:
    """SQLite values other than `raw` that convert to the same Postgres value."""
    if converted is None:
        return []
    if pgtype is PgType.TEXT:
        forms: list[Any] = [converted]
        try:
            if str(int(converted)) == converted:
                forms.append(int(converted))
        except ValueError:
            pass
        try:
            f = float(converted)
            if real_text(f) == converted:
                forms.append(f)
        except ValueError:
            pass
    elif pgtype in _DATES:
        # Reals: every one within half a microsecond reads as the instant (_epochs_near).
        forms = [f for f in _date_spellings(pgtype, converted) if type(f) is not float]
    else:
        return []
    return [f for f in forms if not (type(f) is type(raw) and f == raw)]


def _describe(v: Any) -> str:
    kind = {int: "integer", float: "real", str: "text", bytes: "blob"}.get(type(v), type(v).__name__)
    return f"{format_key((v,))} ({kind})"


def collision_reason(spec: TableSpec, a: tuple, b: tuple) -> str:
    return (f'table "{spec.name}": SQLite holds keys {", ".join(_describe(v) for v in a)} and '
            f'{", ".join(_describe(v) for v in b)} as two rows, which Postgres would hold as one '
            f"({', '.join(spec.column(k).pgtype.value for k in spec.key)}); nothing is merged: fix one of the rows "
            "in SQLite (or give the key column a type that tells them apart) and the table resumes")


def unusual_spelling(spec: TableSpec, raw: tuple, pg: tuple) -> str | None:
    """The hold reason when a date key of `raw` (converted: `pg`) is spelled other than
    the usual spellings (_date_spellings), else None. The converter reads an open-ended
    set ('2024-01-01x10', any whitespace, any offset): another row spelling the instant
    so could not be looked up, and would be merged with this one in Postgres in silence."""
    for i, k in enumerate(spec.key):
        col = spec.column(k)
        pgtype = col.pgtype
        if pgtype not in _DATES or pg[i] is None or col.sqlite_expr is not None:
            continue
        if col.sqlite_format is not None:
            continue  # a column schema parity typed converts one spelling of each instant only
        if type(raw[i]) is not str:
            continue  # an epoch (time.time() finer than Postgres's microsecond too): looked up as one
        if _USUAL_TEXT.fullmatch(raw[i]):
            continue  # one parse of the usual ones, not a list of them for every key of a table
        usual = _date_spellings(pgtype, pg[i])
        write = pg[i].isoformat() if pgtype is PgType.DATE else usual[0]
        return (f'table "{spec.name}": SQLite holds the key {_describe(raw[i])} in "{k}", which Postgres holds as '
                f"{format_key((write,))} ({pgtype.value}), but which syncd cannot look up among the other spellings "
                "of that instant: a row under another one would be merged with it in Postgres; nothing is written: "
                f"write it (and every key so spelled) as {format_key((write,))} in SQLite, or take the "
                f'[sources.columns] type off "{k}" (as text each spelling is a key of its own), and the table resumes')
    return None


def stream_collision(conn: sqlite3.Connection, spec: TableSpec, rows: list[tuple]) -> str | None:
    """Before an apply: does any upserted row (SQLite form) share its Postgres key with
    another row? Checked within the batch, then by looking up the key's other spellings
    (index lookups on the key). Returns the hold reason, or None."""
    lossy = lossy_key_columns(spec)
    if not lossy or not rows:
        return None
    key_idx = spec.key_indexes
    convs = [converter_of(spec.column(k)) for k in spec.key]
    seen: dict[tuple, tuple] = {}
    keys = ", ".join(spec.sqlite_ref(k) for k in spec.key)
    for row in rows:
        raw = tuple(row[i] for i in key_idx)
        try:
            pg = tuple(f(v) for f, v in zip(convs, raw))
        except ValueMismatch:
            continue  # the converter holds the table with its own message
        odd = unusual_spelling(spec, raw, pg)
        if odd is not None:
            return odd
        other = seen.setdefault(pg, raw)
        if _differs(other, raw):
            return collision_reason(spec, other, raw)
        for i, k in enumerate(spec.key):
            if k not in lossy:
                continue
            alts = other_spellings(spec.column(k).pgtype, raw[i], pg[i])
            found = _spelled_otherwise(conn, spec, keys, raw, i, alts) or _epochs_near(conn, spec, keys, raw, i, pg[i])
            if found is not None:
                return collision_reason(spec, raw, tuple(found))
    return None


def _spelled_otherwise(conn: sqlite3.Connection, spec: TableSpec, cols: str, raw: tuple, i: int,
                       alts: list[Any]) -> tuple | None:
    """`cols` of a row whose key is `raw` but for key column i, which holds one of `alts`
    in that value's own storage class; None if there is none. One lookup per storage class
    (text, integer, real), each an IN list that seeks on every key column in the key's index
    (an OR of the classes would seek on the columns before column i only)."""
    conds, params = [], []
    for j, k in enumerate(spec.key):
        if j != i:
            conds.append(f"{spec.key_sql(k)} = ? AND typeof({spec.sqlite_ref(k)}) = ?")
            params += [raw[j], storage_class(raw[j])]
    by_class: dict[str, list[Any]] = {}
    for alt in alts:
        by_class.setdefault(storage_class(alt), []).append(alt)
    k = spec.key[i]
    for cls, values in by_class.items():
        where = " AND ".join([*conds, f"{spec.key_sql(k)} IN ({', '.join('?' * len(values))})",
                              f"typeof({spec.sqlite_ref(k)}) = ?"])
        found = conn.execute(f"SELECT {cols} FROM main.{quote_ident(spec.name)} WHERE {where} LIMIT 1",
                             [*params, *values, cls]).fetchone()
        if found is not None:
            return found
    return None


def _epochs_near(conn: sqlite3.Connection, spec: TableSpec, cols: str, raw: tuple, i: int, value: Any) -> tuple | None:
    """`cols` of a row whose key is `raw` but for date key column i, which holds a real
    other than raw[i] that converts to `value` (epoch_window: one range lookup on the key's
    index); None if there is none, or the column holds no number (a TEXT column)."""
    col = spec.column(spec.key[i])
    if col.pgtype not in _DATES or value is None or affinity(col.declared) is Affinity.TEXT:
        return None
    conds, params = [], []
    for j, k in enumerate(spec.key):
        if j != i:
            conds.append(f"{spec.key_sql(k)} = ? AND typeof({spec.sqlite_ref(k)}) = ?")
            params += [raw[j], storage_class(raw[j])]
    ref = spec.sqlite_ref(col.name)
    where = " AND ".join([*conds, f"{spec.key_sql(col.name)} BETWEEN ? AND ?", f"typeof({ref}) = 'real'"])
    conv = converter(col.pgtype)
    for found in conn.execute(f"SELECT {ref}, {cols} FROM main.{quote_ident(spec.name)} WHERE {where}",
                              [*params, *epoch_window(col.pgtype, value)]):
        if type(raw[i]) is float and found[0] == raw[i]:
            continue  # the row itself
        try:
            if conv(found[0]) == value:
                return tuple(found[1:])
        except ValueMismatch:
            continue
    return None


def survivors(conn: sqlite3.Connection, spec: TableSpec, deletes: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """Deleted SQLite keys whose Postgres key another spelling still holds in SQLite
    (integer 1 deleted, text '1' still there): that row is upserted instead of the key
    deleted. Returns (rows to upsert, keys really gone)."""
    lossy = lossy_key_columns(spec)
    if not lossy or not deletes:
        return [], deletes
    convs = [converter_of(spec.column(k)) for k in spec.key]
    cols = ", ".join(spec.sqlite_ref(c) for c in spec.column_names)
    rows, gone = [], []
    for raw in deletes:
        try:
            pg = tuple(f(v) for f, v in zip(convs, raw))
        except ValueMismatch:
            gone.append(raw)
            continue
        found = None
        for i, k in enumerate(spec.key):
            if k not in lossy or found is not None:
                continue
            alts = other_spellings(spec.column(k).pgtype, raw[i], pg[i])
            found = _spelled_otherwise(conn, spec, cols, raw, i, alts) or _epochs_near(conn, spec, cols, raw, i, pg[i])
        if found is None:
            gone.append(raw)
        else:
            rows.append(tuple(found))
    return rows, gone


def older_texts(conn: sqlite3.Connection, spec: TableSpec, rows: list[tuple], deletes: list[tuple]) -> list[tuple]:
    """The Postgres keys an older syncd wrote for these SQLite keys: a REAL in a key
    column carried as text, in Python's spelling ('1e-05', '-0.0', 'inf') where SQLite's
    own text for it is another ('1.0e-05', '0.0', 'Inf'), for the keys of upserted
    `rows` (SQLite rows) and of `deletes`. Deleted along with the batch, so a row written
    anew under SQLite's text leaves none behind under the old one; never one that a
    SQLite row holds as that very text. Returned as SQLite keys (the text), which convert
    to exactly those Postgres keys."""
    cols = [i for i, k in enumerate(spec.key) if k in lossy_key_columns(spec) and spec.column(k).pgtype is PgType.TEXT]
    if not cols or not (rows or deletes):
        return []
    key_idx = spec.key_indexes
    keys = [tuple(r[i] for i in key_idx) for r in rows] + deletes
    where = " AND ".join(f"{spec.key_sql(k)} = ? AND typeof({spec.sqlite_ref(k)}) = ?" for k in spec.key)
    sql = f"SELECT 1 FROM main.{quote_ident(spec.name)} WHERE {where}"
    out: dict[tuple, None] = {}
    for raw in keys:
        old = list(raw)
        for i in cols:
            if type(raw[i]) is float and repr(raw[i]) != real_text(raw[i]):
                old[i] = repr(raw[i])
        if old == list(raw) or tuple(old) in out:
            continue
        if conn.execute(sql, [p for v in old for p in (v, storage_class(v))]).fetchone() is None:
            out[tuple(old)] = None
    return list(out)


def storage_class(v: Any) -> str:
    """What SQLite's typeof() says of Python value `v` bound as a parameter."""
    return {int: "integer", float: "real", str: "text", bytes: "blob"}.get(type(v), "null")


def audit_collisions(conn: sqlite3.Connection, spec: TableSpec) -> str | None:
    """Before a load: every key converted, window by window; the first two rows that
    share a Postgres key, or None. A key [sources.keys] names is no constraint in
    SQLite: two rows holding it byte for byte are such rows too."""
    configured = spec.key_origin == "configured"
    lossy = bool(lossy_key_columns(spec))
    if not lossy:
        return _configured_key_shared(conn, spec) if configured else None
    key_cols = ", ".join(spec.sqlite_ref(k) for k in spec.key)
    convs = [converter_of(spec.column(k)) for k in spec.key]
    order = windows.table_ordering(spec)
    seen: dict[tuple, tuple] = {}
    for rows in windows.scan(conn, spec.name, order, key_cols):
        for raw in rows:
            try:
                pg = tuple(f(v) for f, v in zip(convs, raw))
            except ValueMismatch:
                continue  # reported by the value audit
            if any(v is None for v in pg):
                continue
            odd = unusual_spelling(spec, tuple(raw), pg)
            if odd is not None:
                return odd
            key = tuple(raw)
            other = seen.setdefault(pg, key)
            if _differs(other, key):
                return collision_reason(spec, other, key)
            if other is not key and configured:
                n = _rows_holding(conn, spec, key)  # read window by window: one row moved is met twice
                if n > 1:
                    return duplicate_reason(spec, key, n)
    return None


def _configured_key_shared(conn: sqlite3.Connection, spec: TableSpec) -> str | None:
    """The hold reason when two rows hold a [sources.keys] key byte for byte (of the same
    storage classes, as the stream's duplicated_key groups them), else None. Each key is
    read as SQLite holds it (a text as its bytes) and compared in sets, window by window."""
    refs = [spec.sqlite_ref(k) for k in spec.key]
    # The storage class as a small number: Python keeps one object of each, not one per row.
    select = ", ".join(f"CASE typeof({r}) WHEN 'text' THEN CAST({r} AS BLOB) ELSE {r} END, "
                       f"CASE typeof({r}) WHEN 'integer' THEN 1 WHEN 'real' THEN 2 WHEN 'text' THEN 3 ELSE 4 END"
                       for r in refs)
    not_null = " AND ".join(f"{r} IS NOT NULL" for r in refs)  # a NULL key is the value audit's
    # The keys' hashes, not the keys: a table of millions of rows is held in a set of
    # numbers. Hashes met twice are suspects (two keys' hashes may meet: hash(-1) is
    # hash(-2)); a second scan keeps the keys of those alone, and a key met twice there is
    # counted (read window by window, a row the application moved meanwhile is met twice).
    order = windows.table_ordering(spec)
    seen: set[int] = set()
    suspects: set[int] = set()
    for rows in windows.scan(conn, spec.name, order, select, not_null):
        hashes = [hash(r) for r in rows]
        window = set(hashes)
        if len(window) < len(rows) or not seen.isdisjoint(window):
            once: set[int] = set()
            for h in hashes:
                if h in seen or h in once:
                    suspects.add(h)
                once.add(h)
        seen |= window
    if not suspects:
        return None
    del seen
    keys: set[tuple] = set()
    for rows in windows.scan(conn, spec.name, order, select, not_null):
        for row in rows:
            if hash(row) not in suspects:
                continue
            if row not in keys:
                keys.add(row)
                continue
            key = tuple(v.decode("utf-8", "surrogateescape") if kind == 3 else v
                        for v, kind in zip(row[::2], row[1::2]))
            n = _rows_holding(conn, spec, key)
            if n > 1:
                return duplicate_reason(spec, key, n)
    return None


def duplicate_reason(spec: TableSpec, key: tuple, rows: int) -> str:
    """Why a table whose [sources.keys] columns hold `key` in `rows` rows is held."""
    return (f'table "{spec.name}": its [sources.keys] columns ({", ".join(spec.key)}) are not unique in SQLite: '
            f"{rows} rows have the key {format_key(key)}, and Postgres holds one row per key. Make the key unique "
            "in SQLite, or name columns that are")


def _rows_holding(conn: sqlite3.Connection, spec: TableSpec, key: tuple) -> int:
    """How many rows hold `key`, value for value and storage class for storage class."""
    where, params = [], []
    for k, v in zip(spec.key, key):
        ref = spec.sqlite_ref(k)
        mark, bound = bound_value(v)
        where.append(f"{ref} = {mark} COLLATE BINARY AND typeof({ref}) = ?")
        params += [bound, storage_class(v)]
    return conn.execute(f"SELECT count(*) FROM main.{quote_ident(spec.name)} WHERE {' AND '.join(where)}",
                        params).fetchone()[0]


def _differs(a: tuple, b: tuple) -> bool:
    """Two SQLite keys are the same only with the same values of the same storage classes."""
    return any(type(x) is not type(y) or x != y for x, y in zip(a, b))
