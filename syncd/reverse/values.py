"""Postgres values back into SQLite's own shape: the inverse of syncd/types.py.

Pure functions (SQLite's type affinity is asked of an in-memory database, never of a
file). The rule every conversion obeys: the SQLite value produced, once SQLite has
applied the column's affinity, reads back through syncd's forward converter as the
very Postgres value it came from (`canonical` tokens equal), so the reverse stream
never writes anything `syncd verify` or a later forward stream would see as different.
A value SQLite cannot hold that way raises NotExpressible, naming why; the caller
holds the table instead of storing something else.

What each Postgres value becomes (the value family is the Postgres column's type):

    bigint / integer / smallint   INTEGER
    double precision / real       REAL (NaN: SQLite stores it as NULL, so not expressible)
    numeric                       INTEGER when integral without a scale and within 64 bits,
                                  else REAL; a value REAL cannot hold exactly is refused
    text / varchar / char / uuid  TEXT (SQLite's affinity then applies, as to the app's own writes)
    bytea                         BLOB
    boolean                       INTEGER 0 / 1
    json / jsonb                  TEXT
    timestamp(tz) / date          the column's spelling (`ColumnShape.fmt`, see FORMATS below)

A value Postgres still holds exactly as SQLite stored it is never rewritten: `keeps`
tells the applier to leave the stored value alone (its storage class, its date
spelling, its JSON text), which is what makes forward-then-reverse the identity on
every stored value, including those no conversion could tell apart (integer 5 and text
'5' in a column without a declared type, two spellings of one instant).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from syncd.parity import dates
from syncd.types import PgType, ValueMismatch, canonical, converter

INTEGER, TEXT, BLOB, REAL, NUMERIC = "INTEGER", "TEXT", "BLOB", "REAL", "NUMERIC"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# --- spellings of instants ------------------------------------------------------------
#
# `fmt` is a pattern over these fields, everything else literal text:
#   %Y year (4 digits)  %m month  %d day  %H hour  %M minute  %S second
#   %f microseconds (6 digits)  %1f .. %6f the first N digits of the fraction
#   %z the UTC offset as +00:00 (instants are written in UTC)
# or one of the epoch spellings, which syncd's converter reads as Unix seconds:
#   unixepoch        integer seconds
#   unixepoch-real   real seconds
# The bookkeeping `columns` table's sqlite_format uses the same vocabulary.
EPOCH_INT, EPOCH_REAL = "unixepoch", "unixepoch-real"
SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S"  # what SQLite's datetime() and CURRENT_TIMESTAMP write
SQLITE_DATE = "%Y-%m-%d"
_FIELD = re.compile(r"%([YmdHMSz]|[1-6]?f|%)")
_UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)


class NotExpressible(ValueError):
    """A Postgres value SQLite cannot hold so that it reads back the same."""


@dataclass(frozen=True)
class OutOfRange:
    """A date or timestamp outside the years 1 to 9999 (a BC date, year 10000 on): Python,
    so asyncpg and syncd's converters, has no value for it. The reader brings it as
    Postgres spells it; it has no SQLite spelling syncd reads back."""

    text: str

    def __repr__(self) -> str:
        return self.text


@dataclass(frozen=True)
class ColumnShape:
    """How one column's values go back: the Postgres value family, SQLite's affinity
    for the column, and for instants the spelling SQLite holds them in."""

    name: str
    family: PgType
    affinity: str
    fmt: str | None = None
    recorded: bool = False  # fmt is the spelling schema parity recorded at cutover (Column.sqlite_format)


def family(type_name: str) -> PgType | None:
    """The value family of a Postgres column type (format_type() spelling), or None
    when SQLite has no exact form for its values."""
    t = type_name.lower()
    base = re.sub(r"\(.*?\)", "", t).strip()
    if base in ("bigint", "integer", "smallint"):
        return PgType.BIGINT
    if base in ("double precision", "real"):
        return PgType.DOUBLE
    if base == "numeric":
        return PgType.NUMERIC
    if base in ("text", "character varying", "character", "citext", "name", "uuid") or base.endswith(".citext"):
        return PgType.TEXT
    if base == "bytea":
        return PgType.BYTEA
    if base == "boolean":
        return PgType.BOOLEAN
    if base == "json":
        return PgType.JSON
    if base == "jsonb":
        return PgType.JSONB
    if base == "timestamp without time zone":
        return PgType.TIMESTAMP
    if base == "timestamp with time zone":
        return PgType.TIMESTAMPTZ
    if base == "date":
        return PgType.DATE
    return None


def declared_for(type_name: str) -> str | None:
    """The SQLite declared type for a column Postgres gained (ADD COLUMN, a new table):
    one whose affinity keeps the values as the reverse stream writes them and that
    syncd's own type mapping reads as the same family. None: not expressible."""
    fam = family(type_name)
    return {
        PgType.BIGINT: "INTEGER",
        PgType.DOUBLE: "REAL",
        PgType.NUMERIC: "NUMERIC",
        PgType.TEXT: "TEXT",
        PgType.BYTEA: "BLOB",
        PgType.BOOLEAN: "BOOLEAN",
        # No declared type (no affinity): the text stays text, and syncd keeps the
        # Postgres type of such a column (its sticky types) instead of re-deriving it.
        PgType.JSON: "",
        PgType.JSONB: "",
        PgType.TIMESTAMP: "",
        PgType.TIMESTAMPTZ: "",
        PgType.DATE: "",
    }.get(fam) if fam is not None else None


# --- SQLite's affinity, asked of SQLite ---------------------------------------------------

_probe = threading.local()


def _probe_conn() -> sqlite3.Connection:
    conn = getattr(_probe, "conn", None)
    if conn is None:
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.execute("CREATE TABLE p (i INTEGER, t TEXT, b BLOB, r REAL, n NUMERIC)")
        conn.execute("INSERT INTO p VALUES (NULL, NULL, NULL, NULL, NULL)")
        _probe.conn = conn
    return conn


_PROBE_COLUMN = {INTEGER: "i", TEXT: "t", BLOB: "b", REAL: "r", NUMERIC: "n"}


def stored(aff: str, value: Any) -> Any:
    """The value SQLite stores when `value` is written to a column of affinity `aff`."""
    t = type(value)
    if value is None or aff == BLOB or t is bytes:
        return value
    if (t is int and aff in (INTEGER, NUMERIC)) or (t is str and aff == TEXT) or (t is float and aff == REAL):
        return value
    col = _PROBE_COLUMN[aff]
    conn = _probe_conn()
    conn.execute(f"UPDATE p SET {col} = ?", (value,))
    # Read back, not RETURNING: that hands back a REAL column's integral value as an integer.
    return conn.execute(f"SELECT {col} FROM p").fetchone()[0]


# --- tokens: what syncd's comparison sees -------------------------------------------------


def normalize(fam: PgType, value: Any) -> Any:
    """A value as asyncpg returned it, as syncd's converters produce that family."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if fam is PgType.BIGINT and isinstance(value, bool):
        return int(value)
    return value


def pg_token(fam: PgType, value: Any) -> str:
    if isinstance(value, OutOfRange):
        return f"!{value.text}"  # no SQLite value's token starts with "!"
    try:
        return canonical(fam, normalize(fam, value))
    except RecursionError:  # Python's JSON parser ends at about a thousand levels of nesting
        raise NotExpressible(f"{fam.value} nested too deep for syncd to check") from None


def sqlite_token(fam: PgType, value: Any) -> str | None:
    """The token of a stored SQLite value, or None when the forward converter rejects it."""
    try:
        return canonical(fam, converter(fam)(value))
    except (ValueMismatch, ValueError, OverflowError, TypeError):
        return None


def keeps(shape: ColumnShape, existing: Any, value: Any) -> bool:
    """Whether the stored SQLite value already is `value` to syncd: then it stays as it
    is, spelling and storage class included."""
    try:
        return sqlite_token(shape.family, existing) == pg_token(shape.family, value)
    except NotExpressible:
        return False  # to_sqlite says why


# --- the conversion ---------------------------------------------------------------------


def to_sqlite(shape: ColumnShape, value: Any) -> Any:
    """The SQLite value for a Postgres value (already as SQLite will store it). Raises
    NotExpressible when no SQLite value reads back as this one."""
    if value is None:
        return None
    fam = shape.family
    value = normalize(fam, value)
    if fam in (PgType.TIMESTAMP, PgType.TIMESTAMPTZ, PgType.DATE):
        return _instant(shape, value)
    out = stored(shape.affinity, _plain(fam, value))
    if sqlite_token(fam, out) != pg_token(fam, value):
        raise NotExpressible(_why(shape, value, out))
    return out


def _plain(fam: PgType, value: Any) -> Any:
    if fam is PgType.DOUBLE:
        if isinstance(value, float) and math.isnan(value):
            raise NotExpressible("NaN: SQLite stores it as NULL")
        return float(value)
    if fam is PgType.NUMERIC:
        return numeric_value(value)
    if fam is PgType.BOOLEAN:
        return 1 if value else 0
    return value


def numeric_value(d: Decimal) -> int | float:
    """INTEGER for an integral numeric written without a scale that fits 64 bits (what
    syncd sends for SQLite's integers), REAL for everything else."""
    if d.is_nan():
        raise NotExpressible("NaN: SQLite has no such number")
    if d.is_infinite():
        return math.inf if d > 0 else -math.inf
    exp = d.as_tuple().exponent
    assert isinstance(exp, int)
    if exp >= 0 and INT64_MIN <= d <= INT64_MAX:
        return int(d)
    return float(d)


def _why(shape: ColumnShape, value: Any, out: Any) -> str:
    fam = shape.family
    if fam is PgType.NUMERIC:
        shown = repr(out)
        if isinstance(out, float) and math.isfinite(out) and Decimal(shown) == value:
            shown = str(Decimal(out))  # 1e+23 would read as the numeric itself: the REAL's exact value
        return (f"numeric {value} has more precision than SQLite's REAL (a 64-bit float) holds: it would "
                f"read back as {shown}")
    if fam in (PgType.TEXT, PgType.JSON, PgType.JSONB) and isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "…"
        if "\x00" in value:
            return f"text {shown!r} holds a NUL character"
        return (f"text {shown!r} would be stored as {type(out).__name__} {out!r} by the column's "
                f"{shape.affinity} affinity, so it would no longer read back as this text")
    return f"{fam.value} {value!r} would be stored as {out!r} by the column's {shape.affinity} affinity"


# --- instants -------------------------------------------------------------------------------


def _instant(shape: ColumnShape, value: dt.date | OutOfRange) -> Any:
    fam = shape.family
    if isinstance(value, OutOfRange):
        if value.text.lstrip("-") == "infinity":
            raise NotExpressible(f"{fam.value} {value.text} has no SQLite spelling syncd reads back")
        raise NotExpressible(f"{fam.value} {value.text} lies outside the years 1 to 9999 that syncd reads back "
                             "from SQLite")
    # A date or instant read as a value is finite (reader.select_list sends infinities as
    # OutOfRange): 9999-12-31 is that day, though asyncpg decodes infinity the same.
    want = canonical(fam, value)
    fmt = shape.fmt or (SQLITE_DATE if fam is PgType.DATE else SQLITE_DATETIME)
    for spelled in _spellings(value, fmt):
        out = stored(shape.affinity, spelled)
        if sqlite_token(fam, out) == want:
            return out
    raise NotExpressible(f"{fam.value} {value!r} has no SQLite spelling that reads back the same")


def _spellings(value: dt.date, fmt: str) -> Iterator[str | int | float]:
    """`value` in the column's spelling, then in the nearest ones that keep all of it.
    A spelling schema parity recorded at cutover (syncd/parity/dates.py: a fixed UTC
    offset, '[.%6f]') is written as parity reads it, its offset and fraction kept."""
    try:
        parity_fmt = dates.parse_spec(fmt)
    except ValueError:
        parity_fmt = None
    if parity_fmt is not None:
        nearer = [parity_fmt]
        if parity_fmt.kind == "datetime":
            nearer.append(replace(parity_fmt, seconds=True, frac=0, optional_frac=True))
        for f in nearer:
            try:
                yield dates.render(value, f)
            except (ValueError, OverflowError):
                continue
        fmt = fmt.replace("[.%6f]", "")
    for candidate in _fallbacks(fmt):
        try:
            yield format_instant(value, candidate)
        except (ValueError, OverflowError):
            continue


def _fallbacks(fmt: str) -> list[str]:
    """The column's spelling first, then the same with more of the fraction, then ISO
    with microseconds (exact for every finite instant)."""
    out = [fmt]
    if fmt == EPOCH_INT:
        out.append(EPOCH_REAL)
    elif "%S" in fmt and "f" not in fmt.replace("%S", ""):
        out.append(fmt.replace("%S", "%S.%f", 1))
    elif re.search(r"%[1-5]f", fmt):
        out.append(re.sub(r"%[1-5]f", "%f", fmt))
    out.append("%Y-%m-%d %H:%M:%S.%f")
    return list(dict.fromkeys(out))


def format_instant(value: dt.date, fmt: str) -> str | int | float:
    """Spell a date or datetime (aware ones in UTC) in `fmt`."""
    if isinstance(value, dt.datetime):
        moment = value.astimezone(_UTC).replace(tzinfo=None) if value.tzinfo else value
    else:
        moment = dt.datetime(value.year, value.month, value.day)
    if fmt in (EPOCH_INT, EPOCH_REAL):
        delta = moment.replace(tzinfo=_UTC) - _EPOCH
        if fmt == EPOCH_INT:
            if delta.microseconds:
                raise ValueError("not a whole second")
            return delta.days * 86400 + delta.seconds
        return delta.total_seconds()

    def field(m: re.Match) -> str:
        f = m.group(1)
        if f == "Y":
            return f"{moment.year:04d}"
        if f == "m":
            return f"{moment.month:02d}"
        if f == "d":
            return f"{moment.day:02d}"
        if f == "H":
            return f"{moment.hour:02d}"
        if f == "M":
            return f"{moment.minute:02d}"
        if f == "S":
            return f"{moment.second:02d}"
        if f == "z":
            return "+00:00"
        if f == "%":
            return "%"
        digits = int(f[0]) if f[0].isdigit() else 6
        return f"{moment.microsecond:06d}"[:digits]

    return _FIELD.sub(field, fmt)


_ISO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:([ T])(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?)?"
                  r"(Z|z|[+-]\d{2}:\d{2})?$")


def detect_format(value: Any) -> str | None:
    """The spelling of one stored value, in the vocabulary above, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return EPOCH_INT
    if isinstance(value, float):
        return EPOCH_REAL
    if not isinstance(value, str):
        return None
    m = _ISO.match(value)
    if m is None:
        return None
    fmt = "%Y-%m-%d"
    if m.group(4):
        fmt += m.group(4) + "%H:%M"
        if m.group(7):
            fmt += ":%S"
            if m.group(8):
                n = len(m.group(8))
                fmt += "." + ("%f" if n == 6 else f"%{n}f")
    zone = m.group(9)
    if zone in ("Z", "z"):
        fmt += zone
    elif zone:
        fmt += "%z"
    return fmt


def most_common_format(values: list[Any]) -> str | None:
    """The spelling most of a column's stored values share (ties: the first seen)."""
    counts: dict[str, int] = {}
    for v in values:
        f = detect_format(v)
        if f is not None:
            counts[f] = counts.get(f, 0) + 1
    return max(counts, key=lambda f: counts[f]) if counts else None
