"""SQLite declared types -> Postgres types, value conversion and canonical encoding.

Pure functions, no I/O. The same converter is used by the snapshot, the stream and
the audit, and the same canonical encoding by both sides of `syncd verify`, so a
value is judged one way everywhere.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import struct
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Any, Callable

from syncd import sqlite_sql
from syncd.identifiers import pg_string_literal
from syncd.printable import text_repr


class PgType(str, Enum):
    BIGINT = "bigint"
    DOUBLE = "double precision"
    NUMERIC = "numeric"
    TEXT = "text"
    BYTEA = "bytea"
    BOOLEAN = "boolean"
    JSON = "json"
    JSONB = "jsonb"
    TIMESTAMP = "timestamp"
    TIMESTAMPTZ = "timestamptz"
    DATE = "date"

    def __str__(self) -> str:
        return self.value


# Types whose values may be of any length (text, bytea, numeric's digits, JSON): a row
# of them may weigh a megabyte or more, where a row of the others weighs a few bytes a value.
VARIABLE_WIDTH = frozenset({PgType.TEXT, PgType.BYTEA, PgType.NUMERIC, PgType.JSON, PgType.JSONB})


# Names accepted in `[sources.columns]` overrides.
OVERRIDE_NAMES: dict[str, PgType] = {
    "bigint": PgType.BIGINT,
    "int8": PgType.BIGINT,
    "double precision": PgType.DOUBLE,
    "float8": PgType.DOUBLE,
    "numeric": PgType.NUMERIC,
    "decimal": PgType.NUMERIC,
    "text": PgType.TEXT,
    "bytea": PgType.BYTEA,
    "boolean": PgType.BOOLEAN,
    "bool": PgType.BOOLEAN,
    "json": PgType.JSON,
    "jsonb": PgType.JSONB,
    "timestamp": PgType.TIMESTAMP,
    "timestamp without time zone": PgType.TIMESTAMP,
    "timestamptz": PgType.TIMESTAMPTZ,
    "timestamp with time zone": PgType.TIMESTAMPTZ,
    "date": PgType.DATE,
}


def parse_override(name: str) -> PgType:
    key = " ".join(name.lower().split())
    try:
        return OVERRIDE_NAMES[key]
    except KeyError:
        allowed = ", ".join(sorted(OVERRIDE_NAMES))
        raise ValueError(f"unsupported Postgres type {name!r} (allowed: {allowed})") from None


def map_declared_type(declared: str) -> PgType | None:
    """Map a SQLite declared column type to a Postgres type.

    Follows SQLite's own affinity rules (https://sqlite.org/datatype3.html 3.1) so
    the mapping agrees with how SQLite stored the values, refined for the NUMERIC
    affinity family. Returns None when the declared type says nothing useful
    (no type, or an unknown name): the column's stored values then decide.
    """
    t = declared.upper()
    if not t.strip():
        return None
    if "INT" in t:
        return PgType.BIGINT
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return PgType.TEXT
    if "BLOB" in t:
        return PgType.BYTEA
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return PgType.DOUBLE
    # NUMERIC affinity from here on.
    if "BOOL" in t:
        return PgType.BOOLEAN
    if "DATE" in t or "TIME" in t:
        # SQLite keeps dates as ISO text, julian-day reals or unix-epoch integers,
        # whatever the app wrote; only text holds all of them exactly.
        return PgType.TEXT
    if "JSON" in t:
        # Byte-exact by default; jsonb would reorder keys and drop duplicates.
        return PgType.TEXT
    if "NUMERIC" in t or "DECIMAL" in t or "NUMBER" in t or "MONEY" in t:
        return PgType.NUMERIC
    return None


MAX_EXACT_DOUBLE_INT = 2**53

# What schema parity does at cutover with a text column typed from its values (parity/numbers.py).
TYPED_AT_CUTOVER = ("at cutover it becomes bigint if every value is then an integer, double precision if every "
                    "one is a real (each proven to come back exactly), else it stays text, named")
# Why a column with no usable declared type and no values is text (infer_from_values).
NO_VALUES_YET = f"no values yet: carried as text for now; {TYPED_AT_CUTOVER}"


def infer_from_values(classes: dict[str, int]) -> tuple[PgType, str | None]:
    """Choose a type for a column with no usable declared type, from what it stores.

    `classes` maps SQLite storage classes (typeof()) to counts. Returns the type and,
    when the choice merges storage classes or there are no values to choose from, a
    note for the log.
    """
    present = {c for c, n in classes.items() if n and c != "null"}
    if not present:
        return PgType.TEXT, NO_VALUES_YET
    if present == {"integer"}:
        return PgType.BIGINT, None
    if present == {"real"}:
        return PgType.DOUBLE, None
    if present == {"integer", "real"}:
        return PgType.NUMERIC, None
    if present == {"text"}:
        return PgType.TEXT, None
    if present == {"blob"}:
        return PgType.BYTEA, None
    if "blob" not in present:
        kinds = ", ".join(sorted(present))
        return PgType.TEXT, (f"holds mixed storage classes ({kinds}); mapped to text, numbers as SQLite "
                             "renders them as text")
    return PgType.BYTEA, None  # blobs mixed with others: the audit reports the non-blob values


class ValueMismatch(ValueError):
    """A stored SQLite value that does not fit the column's Postgres type."""


def _describe(value: Any) -> str:
    if isinstance(value, bytes):
        shown = value[:16].hex()
        return f"blob x'{shown}{'…' if len(value) > 16 else ''}'"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "…"
        return f"text {text_repr(shown)}"
    if isinstance(value, float):
        return f"real {value!r}"
    return f"integer {value!r}"


def _misfit(value: Any, pgtype: PgType, why: str = "") -> ValueMismatch:
    return ValueMismatch(f"{_describe(value)} does not fit {pgtype.value}{': ' + why if why else ''}")


def _check_text(value: str, pgtype: PgType) -> str:
    if "\x00" in value:
        raise _misfit(value, pgtype, "Postgres text cannot hold a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _misfit(value, pgtype, "not valid UTF-8") from None
    return value


def _to_bigint(v: Any) -> Any:
    if v is None or type(v) is int:
        return v
    raise _misfit(v, PgType.BIGINT)


def _to_double(v: Any) -> Any:
    t = type(v)
    if v is None or t is float:
        return v
    if t is int:
        f = float(v)
        if abs(v) <= MAX_EXACT_DOUBLE_INT or int(f) == v:
            return f
        raise _misfit(v, PgType.DOUBLE, "integer beyond 2^53 would lose precision")
    raise _misfit(v, PgType.DOUBLE)


def _float_decimal(v: float) -> Decimal:
    """A REAL as a numeric. From 2^53 up every double is an integer, and its shortest
    repr may be another integer SQLite holds apart from it (2^60 is 1.152921504606847e+18,
    the INTEGER 1152921504606847000): such a real is sent as its exact value. Below,
    repr is the shortest text that reads back as the same double, and it cannot be an
    integer SQLite holds apart: an integral real is that integer exactly, and a
    fractional one's shortest text is fractional."""
    if math.isinf(v):
        return Decimal("Infinity") if v > 0 else Decimal("-Infinity")
    if abs(v) >= MAX_EXACT_DOUBLE_INT:
        return Decimal(int(v))
    return Decimal(repr(v))


def _to_numeric(v: Any) -> Any:
    t = type(v)
    if v is None:
        return None
    if t is int:
        return Decimal(v)
    if t is float:
        return _float_decimal(v)
    raise _misfit(v, PgType.NUMERIC)


def real_text(v: float) -> str:
    """A REAL as SQLite renders it as text (CAST(x AS TEXT), sqlite3_column_text): printf
    "%!.15g", so 1e-05 is '1.0e-05', 1e15 '1.0e+15', 100.0 '100.0', -0.0 '0.0' and an
    infinity 'Inf'. Where those 15 digits do not read back as the same double (0.1 + 0.2),
    SQLite 3.40 drops the rest ('0.3'); here the fewest digits up to 17 that do are kept
    instead, in the same layout, so no value is lost and two REALs never share a text."""
    if math.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    if v != v:
        return "NaN"  # SQLite stores NaN as NULL; a REAL read from it is never NaN
    if v == 0:
        return "0.0"  # SQLite renders -0.0 as 0.0, and holds 0.0 and -0.0 as one key
    for digits in (15, 16, 17):
        text = format(v, f".{digits}g")
        if float(text) == v:
            break
    if digits > 15 and "e" not in text and "e" in format(v, ".15g"):
        # SQLite's 15 digits put an exponent from 1e15 up; with more digits %g would not
        # (1234567890123456.8): keep SQLite's layout, 1.2345678901234568e+15.
        mantissa, e, exponent = format(v, f".{digits - 1}e").partition("e")
        text = (mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa) + e + exponent
    mantissa, e, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"  # the "!" of %!.15g: a REAL always shows a decimal point
    return mantissa + e + exponent


def _number_text(v: Any) -> str:
    return str(v) if type(v) is int else real_text(v)


def _to_text(v: Any) -> Any:
    t = type(v)
    if v is None:
        return None
    if t is str:
        if "\x00" in v:
            raise _misfit(v, PgType.TEXT, "Postgres text cannot hold a NUL character")
        return v
    if t is int or t is float:
        return _number_text(v)
    raise _misfit(v, PgType.TEXT)


def _to_bytea(v: Any) -> Any:
    if v is None or type(v) is bytes:
        return v
    raise _misfit(v, PgType.BYTEA)


def _to_boolean(v: Any) -> Any:
    if v is None:
        return None
    if type(v) is int and v in (0, 1):
        return v == 1
    raise _misfit(v, PgType.BOOLEAN, "only 0 and 1 are booleans")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# The deepest nesting of a jsonb document the comparison's reading (canonical, recursive
# in Python, two calls a level) follows with room to spare; a document with fewer brackets
# cannot nest deeper, and only the others are measured.
_MAX_JSONB_NESTING = 300


def _json_loads(v: str, numeric: bool = False) -> Any:
    """Parse JSON text, or raise ValueError. A number is JSON whatever its length; int()
    refuses 4300 digits on, so a document it fails on is read again keeping numbers as text.
    `numeric`: every number is read as text and checked against what Postgres's numeric
    (jsonb's) holds, _PastNumeric if one is past it."""
    if numeric:
        return json.loads(v, parse_constant=_reject_constant, parse_int=_within_numeric, parse_float=_within_numeric)
    try:
        return json.loads(v, parse_constant=_reject_constant)
    except ValueError:
        return json.loads(v, parse_constant=_reject_constant, parse_int=str)


class _PastNumeric(ValueError):
    pass


# Postgres's numeric, which jsonb keeps its numbers as: digits before the point and after.
_NUMERIC_INTEGER_DIGITS, _NUMERIC_SCALE = 131_072, 16_383
# The exponent Postgres's numeric input refuses from, whatever the digits (0e1073741823).
_NUMERIC_EXPONENT = (2**31 - 1) // 2  # INT_MAX / 2
# Only a document longer than _SHORT_DOCUMENT, or with an exponent of four digits or more,
# can hold a number past numeric's range (a shorter one's numbers reach 15,999 digits at
# most on either side): only such documents are read again number by number.
_SHORT_DOCUMENT = 15_000
_LONG_EXPONENT = re.compile(r"[0-9.][eE][+-]?0*[1-9][0-9]{3}")
_JSON_NUMBER = re.compile(r"-?([0-9]+)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?")


def _within_numeric(text: str) -> str:
    """`text`, a JSON number, if Postgres's numeric holds it; else _PastNumeric."""
    whole, frac, exp = _JSON_NUMBER.fullmatch(text).groups()
    frac, exp = frac or "", int(exp or 0)
    digits = (whole + frac).lstrip("0")
    if digits:
        # The first significant digit's place: 1 for 9.5, 0 for 0.5, -1 for 0.05.
        first = len(whole.lstrip("0")) or -(len(frac) - len(frac.lstrip("0")))
        if first + exp > _NUMERIC_INTEGER_DIGITS:
            raise _PastNumeric(f"{_NUMERIC_INTEGER_DIGITS:,} digits before the point")
    if len(frac) - exp > _NUMERIC_SCALE:
        raise _PastNumeric(f"{_NUMERIC_SCALE:,} digits after the point")
    if exp >= _NUMERIC_EXPONENT:
        raise _PastNumeric(f"an exponent of {_NUMERIC_EXPONENT:,} or more, whatever the digits")
    return text


def _may_pass_numeric(v: str) -> bool:
    return len(v) > _SHORT_DOCUMENT or _LONG_EXPONENT.search(v) is not None


def _nesting(doc: Any) -> int:
    """How deep lists and objects nest in a parsed JSON document (without recursing)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (list, dict)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


_SURROGATE = re.compile("[\ud800-\udfff]")


def _jsonb_refused_string(doc: Any) -> str | None:
    """What Postgres's jsonb refuses in a string (a key or a value) of the parsed `doc`:
    a \\u0000 escape (its strings are text, which holds no NUL), or a \\u escape of half
    a surrogate pair (Python's parser joins a whole pair into one character, and keeps
    a lone half as it is)."""
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str):
            if "\x00" in node:
                return "a \\u0000 escape, which jsonb's text cannot hold"
            if not node.isascii() and _SURROGATE.search(node):
                return "a \\u escape of half a surrogate pair, which jsonb refuses"
    return None


def _json_converter(pgtype: PgType) -> Callable[[Any], Any]:
    def convert(v: Any) -> Any:
        if v is None:
            return None
        t = type(v)
        if t is int or t is float:
            v = _number_text(v)
        elif t is not str:
            raise _misfit(v, pgtype)
        _check_text(v, pgtype)
        try:
            jsonb = pgtype is PgType.JSONB
            doc = _json_loads(v, numeric=jsonb and _may_pass_numeric(v))
            if jsonb and v.count("[") + v.count("{") > _MAX_JSONB_NESTING and _nesting(doc) > _MAX_JSONB_NESTING:
                raise RecursionError  # deeper than the comparison reads: it would fail there
        except _PastNumeric as e:
            raise _misfit(v, pgtype, f"a number past what Postgres's numeric holds ({e})") from None
        except ValueError as e:
            raise _misfit(v, pgtype, f"invalid JSON ({e})") from None
        except RecursionError:
            # Python's parser, which syncd checks and compares JSON with, ends at about
            # a thousand levels of nesting.
            raise _misfit(v, pgtype, "JSON nested too deep for syncd to check") from None
        if jsonb and "\\u" in v and (why := _jsonb_refused_string(doc)) is not None:
            raise _misfit(v, pgtype, why)
        return v

    return convert


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# SQLite's 'auto' modifier reads a number below this as a julian day (9999-12-31 ends it).
_JULIAN_DAY_LIMIT = 5373484.5
# A fraction with a non-zero digit after the sixth (.NET writes seven: 10:00:00.1234567).
_FINER_THAN_MICROSECONDS = re.compile(r"[.,][0-9]{6}[0-9]*[1-9]")


def _parse_datetime(v: Any, pgtype: PgType) -> dt.datetime:
    t = type(v)
    if t is int or t is float:
        if t is float and not math.isfinite(v):
            raise _misfit(v, pgtype)
        if t is float and 0 <= v < _JULIAN_DAY_LIMIT:
            # julianday() writes such a REAL, and SQLite's date functions read it as a
            # julian day; as seconds since 1970 it would be a moment in early 1970.
            raise _misfit(v, pgtype, "a real number SQLite's date functions read as a julian day, "
                                     "not seconds since 1970")
        try:
            return _EPOCH + dt.timedelta(seconds=v)
        except OverflowError:
            raise _misfit(v, pgtype, "out of range as unix epoch seconds") from None
    if t is not str:
        raise _misfit(v, pgtype)
    text = v.strip()
    if _FINER_THAN_MICROSECONDS.search(text):
        # fromisoformat keeps six fraction digits and drops the rest: another instant.
        raise _misfit(v, pgtype, "a fraction of a second finer than the microseconds Postgres keeps")
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _misfit(v, pgtype, "not an ISO-8601 date/time") from None
    return parsed


def _in_utc(v: Any, d: dt.datetime, pgtype: PgType) -> dt.datetime:
    """An aware `d` (read from `v`) in UTC, which the instant it names may lie outside the
    years 1 to 9999 in (0001-01-01T00:30+01:00): Python, so asyncpg, has no value for it."""
    try:
        return d.astimezone(dt.timezone.utc)
    except OverflowError:
        raise _misfit(v, pgtype, "in UTC the instant lies outside the years 1 to 9999") from None


def _to_timestamp(v: Any) -> Any:
    if v is None:
        return None
    d = _parse_datetime(v, PgType.TIMESTAMP)
    if d.tzinfo is not None:
        d = _in_utc(v, d, PgType.TIMESTAMP).replace(tzinfo=None)
    return d


def _to_timestamptz(v: Any) -> Any:
    if v is None:
        return None
    d = _parse_datetime(v, PgType.TIMESTAMPTZ)
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)  # SQLite's date functions work in UTC
    else:
        _in_utc(v, d, PgType.TIMESTAMPTZ)  # asyncpg sends it in UTC
    return d


def _to_date(v: Any) -> Any:
    if v is None:
        return None
    if type(v) is str and len(v.strip()) == 10:
        try:
            day = dt.date.fromisoformat(v.strip())
        except ValueError:
            raise _misfit(v, PgType.DATE, "not an ISO-8601 date") from None
    else:
        d = _parse_datetime(v, PgType.DATE)
        if (d.hour, d.minute, d.second, d.microsecond) != (0, 0, 0, 0):
            raise _misfit(v, PgType.DATE, "has a time of day; map it to timestamp instead")
        day = d.date()
    return day


_CONVERTERS: dict[PgType, Callable[[Any], Any]] = {
    PgType.BIGINT: _to_bigint,
    PgType.DOUBLE: _to_double,
    PgType.NUMERIC: _to_numeric,
    PgType.TEXT: _to_text,
    PgType.BYTEA: _to_bytea,
    PgType.BOOLEAN: _to_boolean,
    PgType.JSON: _json_converter(PgType.JSON),
    PgType.JSONB: _json_converter(PgType.JSONB),
    PgType.TIMESTAMP: _to_timestamp,
    PgType.TIMESTAMPTZ: _to_timestamptz,
    PgType.DATE: _to_date,
}


def converter(pgtype: PgType) -> Callable[[Any], Any]:
    """The function turning a SQLite value into the Python value asyncpg sends as `pgtype`.

    Raises ValueMismatch for a value that does not fit. NULL passes through.
    """
    return _CONVERTERS[pgtype]


def converter_of(col: Any) -> Callable[[Any], Any]:
    """The converter of a model.Column (column_converter with its type, spelling and
    declared type)."""
    return column_converter(col.pgtype, col.sqlite_format, col.declared)


_INSTANTS = (PgType.DATE, PgType.TIMESTAMP, PgType.TIMESTAMPTZ)
_STRICT: dict[tuple[PgType, str, str], Callable[[Any], Any]] = {}


def column_converter(pgtype: PgType, sqlite_format: str | None = None, declared: str = "") -> Callable[[Any], Any]:
    """converter(pgtype), or for a date column schema parity typed (Column.sqlite_format)
    one that takes only values in the column's SQLite spelling: any other would be
    stored as some other instant (a julian day read as epoch seconds, an offset folded
    away), and the comparison, which converts the same way, would call it equal."""
    if sqlite_format is None or pgtype not in _INSTANTS:
        return _CONVERTERS[pgtype]
    conv = _STRICT.get((pgtype, sqlite_format, declared))
    if conv is None:
        from syncd.parity.dates import strict_converter  # parity builds on this module

        conv = _STRICT[(pgtype, sqlite_format, declared)] = strict_converter(pgtype, sqlite_format, declared)
    return conv


# The storage class whose values a type's converter returns unchanged (None stays
# None). rows._PASSTHROUGH lets the same values skip the converter call in Python.
_UNCHANGED_CLASS = {PgType.BIGINT: "integer", PgType.DOUBLE: "real", PgType.TEXT: "text", PgType.BYTEA: "blob"}


def needs_conversion_filter(pgtype: PgType, col: str) -> str | None:
    """A SQLite boolean expression true for a value `converter(pgtype)` would change or
    refuse; None when the type converts every value (it never passes one unchanged).
    `col` is an already-quoted column or alias."""
    cls = _UNCHANGED_CLASS.get(pgtype)
    if cls is None:
        return None
    expr = _class_not(col, cls, "null")
    if pgtype is PgType.TEXT:
        expr = f"({expr} OR {_holds_nul(col)})"
    return expr


def _class_not(col: str, *classes: str) -> str:
    """A SQLite expression true when `col`'s storage class is none of `classes`. Written
    as comparisons, not NOT IN: SQLite runs a NOT IN list slower, and far slower on two
    connections at once (the audit's scan_two); the answer is the same."""
    return "(" + " AND ".join(f"typeof({col}) <> '{c}'" for c in classes) + ")"


def _holds_nul(col: str) -> str:
    """A SQLite expression true for a text or blob holding a NUL byte (Postgres text cannot)."""
    return f"instr(CAST({col} AS BLOB), x'00') > 0"


def audit_prefilter(pgtype: PgType, col: str) -> str | None:
    """A SQLite boolean expression true for every value that *might* not fit `pgtype`.

    The audit runs the real converter only on rows it selects, so the expression
    may be generous but must never miss. `col` is an already-quoted column name.
    None means every non-NULL value needs the converter.
    """
    nul = _holds_nul(col)
    if pgtype is PgType.BIGINT:
        return _class_not(col, "integer", "null")
    if pgtype is PgType.DOUBLE:
        return (
            f"({_class_not(col, 'real', 'integer', 'null')} OR "
            f"(typeof({col}) = 'integer' AND abs({col}) > {MAX_EXACT_DOUBLE_INT}))"
        )
    if pgtype is PgType.NUMERIC:
        return _class_not(col, "integer", "real", "null")
    if pgtype is PgType.TEXT:
        return f"(typeof({col}) = 'blob' OR (typeof({col}) = 'text' AND {nul}))"
    if pgtype is PgType.BYTEA:
        return _class_not(col, "blob", "null")
    if pgtype is PgType.BOOLEAN:
        return f"({col} IS NOT NULL AND (typeof({col}) <> 'integer' OR {col} NOT IN (0, 1)))"
    return f"{col} IS NOT NULL"


# --- canonical encoding ------------------------------------------------------------
#
# A row's canonical form is the concatenation of one token per column, separated by
# U+001F. Tokens are typed and text is length-prefixed, so no two different rows can
# share a form. The Python side encodes the value *after* conversion; the Postgres
# side builds the identical string in SQL from the stored value. Text lengths count
# UTF-8 bytes: octet_length is the one length Postgres gives alike in a UTF8 and in a
# SQL_ASCII database (where length() counts bytes too), the encodings syncd accepts.

SEP = "\x1f"


def _numeric_text(d: Decimal) -> str:
    """What Postgres's numeric_out prints for the numeric asyncpg sends for `d`."""
    if d.is_infinite():
        return "Infinity" if d > 0 else "-Infinity"
    exp = d.as_tuple().exponent
    assert isinstance(exp, int)
    scale = max(0, -exp)
    text = format(d, f".{scale}f")
    if d.is_zero():
        text = text.lstrip("-")  # Postgres numeric has no negative zero
    return text


def _numeric_value_text(d: Decimal) -> str:
    """The numeric's value without trailing fractional zeros (Postgres's trim_scale):
    19.90 and 19.9 are one value, and SQLite's REAL, which has no scale, can only hold
    it one way, so a comparison must not tell them apart."""
    text = _numeric_text(d)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _jsonb_text(value: Any) -> str:
    """What Postgres prints for `value::jsonb::text`, `value` being parsed JSON."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Decimal):
        return _numeric_text(value)
    if isinstance(value, str):
        return _jsonb_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_jsonb_text(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode("utf-8")), k.encode("utf-8")))
        return "{" + ", ".join(f"{_jsonb_string(k)}: {_jsonb_text(value[k])}" for k in keys) + "}"
    raise TypeError(type(value))


_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _jsonb_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in _JSON_ESCAPES:
            out.append(_JSON_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _normalize_json_numbers(text: str) -> Any:
    return json.loads(text, parse_float=Decimal, parse_int=Decimal, parse_constant=_reject_constant)


def utf8_length(s: str) -> int:
    """Bytes of `s` in UTF-8 (text read from SQLite that is not UTF-8 keeps its bytes)."""
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogateescape"))


def _text_token(s: str) -> str:
    return f"t{utf8_length(s)}:{s}"


def canonical(pgtype: PgType, value: Any) -> str:
    """The canonical token of a converted value (the output of `converter(pgtype)`)."""
    if value is None:
        return "N"
    if pgtype is PgType.BIGINT:
        return f"i{value}"
    if pgtype is PgType.DOUBLE:
        return "f" + struct.pack(">d", value).hex()
    if pgtype is PgType.NUMERIC:
        return "n" + _numeric_value_text(value)
    if pgtype is PgType.TEXT or pgtype is PgType.JSON:
        return _text_token(value)
    if pgtype is PgType.BYTEA:
        return "b" + value.hex()
    if pgtype is PgType.BOOLEAN:
        return "B1" if value else "B0"
    if pgtype is PgType.JSONB:
        return "j" + _text_token(_jsonb_text(_normalize_json_numbers(value)))
    if pgtype is PgType.TIMESTAMP:
        delta = value - dt.datetime(1970, 1, 1)
        return f"T{(delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds}"
    if pgtype is PgType.TIMESTAMPTZ:
        delta = value - _EPOCH
        return f"T{(delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds}"
    if pgtype is PgType.DATE:
        return f"D{(value - dt.date(1970, 1, 1)).days}"
    raise TypeError(pgtype)


def pg_canonical_expr(pgtype: PgType, col: str) -> str:
    """SQL building, in Postgres, the same token `canonical` builds in Python.

    `col` is an already-quoted column reference.
    """
    if pgtype is PgType.BIGINT:
        body = f"'i' || {col}::text"
    elif pgtype is PgType.DOUBLE:
        body = f"'f' || encode(float8send({col}), 'hex')"
    elif pgtype is PgType.NUMERIC:
        body = f"'n' || trim_scale({col})::text"
    elif pgtype in (PgType.TEXT, PgType.JSON):
        body = f"'t' || octet_length({col}::text) || ':' || {col}::text"
    elif pgtype is PgType.BYTEA:
        body = f"'b' || encode({col}, 'hex')"
    elif pgtype is PgType.BOOLEAN:
        # No ELSE: NULL must stay NULL so COALESCE below makes it 'N', not 'B0'.
        body = f"CASE WHEN {col} THEN 'B1' WHEN NOT {col} THEN 'B0' END"
    elif pgtype is PgType.JSONB:
        body = f"'jt' || octet_length({col}::text) || ':' || {col}::text"
    elif pgtype is PgType.TIMESTAMP or pgtype is PgType.TIMESTAMPTZ:
        # asyncpg stores datetime.min/max as -infinity/infinity: 'T-infinity' / 'Tinfinity',
        # tokens Python never builds, so such a row shows as different instead of failing.
        body = (f"'T' || CASE WHEN isfinite({col}) THEN (extract(epoch FROM {col}) * 1000000)::bigint::text "
                f"ELSE {col}::text END")
    elif pgtype is PgType.DATE:
        body = f"'D' || CASE WHEN isfinite({col}) THEN ({col} - DATE '1970-01-01')::text ELSE {col}::text END"
    else:
        raise TypeError(pgtype)
    return f"COALESCE({body}, 'N')"


# --- column defaults ------------------------------------------------------------------
#
# A SQLite default is carried only when it is one literal (or CURRENT_TIMESTAMP and
# friends): syncd reads its value with a SQLite tokenizer, computes what SQLite stores
# for it in the column, converts that as it converts any row, and writes the Postgres
# literal itself. No text of the SQLite schema reaches Postgres.


@dataclass(frozen=True)
class PgDefault:
    sql: str | None  # the DEFAULT expression syncd writes, or None (Postgres's default: NULL)
    not_carried: str | None = None  # why SQLite's default has no Postgres counterpart, or None


_PG_TYPE_NAMES = {
    PgType.BIGINT: "bigint", PgType.DOUBLE: "double precision", PgType.NUMERIC: "numeric", PgType.TEXT: "text",
    PgType.BYTEA: "bytea", PgType.JSON: "json", PgType.JSONB: "jsonb", PgType.TIMESTAMP: "timestamp",
    PgType.TIMESTAMPTZ: "timestamptz", PgType.DATE: "date",
}


def pg_literal(value: Any, pgtype: PgType) -> str:
    """A Postgres constant of `pgtype` for `value`, a value as `converter(pgtype)` returns
    it. Built from the value alone; every string goes through pg_string_literal."""
    if value is None:
        return "NULL"
    if pgtype is PgType.BOOLEAN:
        return "true" if value else "false"
    if pgtype is PgType.BIGINT:
        text = str(int(value))
    elif pgtype is PgType.DOUBLE:
        text = ("Infinity" if value > 0 else "-Infinity") if math.isinf(value) else repr(float(value))
    elif pgtype is PgType.NUMERIC:
        text = _numeric_text(value)
    elif pgtype is PgType.BYTEA:
        text = "\\x" + bytes(value).hex()
    elif pgtype in (PgType.TIMESTAMP, PgType.TIMESTAMPTZ, PgType.DATE):
        text = value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()
    else:
        text = str(value)
    return f"{pg_string_literal(text)}::{_PG_TYPE_NAMES[pgtype]}"


# SQLite's CURRENT_* write UTC text at second precision; these are the same in Postgres.
_NOW_UTC = "(now() AT TIME ZONE 'UTC')"
_CURRENT_TIME_DEFAULTS = {
    ("current_timestamp", PgType.TEXT): f"to_char({_NOW_UTC}, 'YYYY-MM-DD HH24:MI:SS')",
    ("current_date", PgType.TEXT): f"to_char({_NOW_UTC}, 'YYYY-MM-DD')",
    ("current_time", PgType.TEXT): f"to_char({_NOW_UTC}, 'HH24:MI:SS')",
    ("current_timestamp", PgType.TIMESTAMP): f"date_trunc('second', {_NOW_UTC})",
    ("current_timestamp", PgType.TIMESTAMPTZ): f"(date_trunc('second', {_NOW_UTC}) AT TIME ZONE 'UTC')",
    ("current_date", PgType.DATE): f"{_NOW_UTC}::date",
    # strftime('%Y-%m-%d %H:%M:%f', 'now'): SQLite's clock counts milliseconds
    ("current_timestamp_ms", PgType.TEXT): f"to_char({_NOW_UTC}, 'YYYY-MM-DD HH24:MI:SS.MS')",
    ("current_timestamp_ms", PgType.TIMESTAMP): f"date_trunc('milliseconds', {_NOW_UTC})",
    ("current_timestamp_ms", PgType.TIMESTAMPTZ): f"(date_trunc('milliseconds', {_NOW_UTC}) AT TIME ZONE 'UTC')",
}


_EPOCH_NOW = "floor(extract(epoch FROM now()))"


def _now_default(kind: sqlite_sql.ConstKind, pgtype: PgType, col_affinity: sqlite_sql.Affinity) -> str | None:
    """The Postgres DEFAULT for the time of the insert SQLite stores in a column of that
    affinity, or None when Postgres has no exact form of it."""
    q = sqlite_sql
    if kind in (q.ConstKind.UNIXEPOCH, q.ConstKind.UNIXEPOCH_TEXT):
        # The storage class SQLite gives such a value (an integer, or its text) in the column.
        sample = (q.Constant(q.ConstKind.INTEGER, 0) if kind is q.ConstKind.UNIXEPOCH
                  else q.Constant(q.ConstKind.TEXT, "0"))
        stored = type(q.stored_value(sample, col_affinity))
        return {(int, PgType.BIGINT): f"{_EPOCH_NOW}::bigint", (int, PgType.NUMERIC): f"{_EPOCH_NOW}::numeric",
                (float, PgType.DOUBLE): f"{_EPOCH_NOW}::double precision",
                (str, PgType.TEXT): f"{_EPOCH_NOW}::bigint::text"}.get((stored, pgtype))
    return _CURRENT_TIME_DEFAULTS.get((kind.value, pgtype))


def pg_default(default_sql: str | None, pgtype: PgType, declared: str | None = None) -> PgDefault:
    """The Postgres DEFAULT for a SQLite column default (its text as PRAGMA table_xinfo
    gives it), for a column of `pgtype` declared `declared` in SQLite. `declared` decides
    the affinity SQLite applies to the value; None takes the one `pgtype` implies."""
    q = sqlite_sql
    if default_sql is None:
        return PgDefault(None)
    try:
        const = q.parse_constant(default_sql)
    except q.SqlSyntaxError as e:
        return PgDefault(None, f"not valid SQLite ({e})")
    except q.NotAConstant as e:
        return PgDefault(None, str(e))
    if const.kind is q.ConstKind.NULL:
        return PgDefault(None)
    col_affinity = _column_affinity(pgtype, declared)
    if const.kind in q.AT_INSERT:
        expr = _now_default(const.kind, pgtype, col_affinity)
        if expr is None:
            what = (const.kind.value.upper() if const.kind.value in ("current_timestamp", "current_date", "current_time")
                    else default_sql.strip())
            return PgDefault(None, f"{what} has no exact form in a {pgtype.value} column")
        return PgDefault(expr)
    try:
        stored = q.stored_value(const, col_affinity)
        value = converter(pgtype)(stored)
    except q.NotAConstant as e:
        return PgDefault(None, str(e))
    except ValueMismatch as e:
        return PgDefault(None, f"the value does not fit the column: {e}")
    if value is None:
        return PgDefault(None)
    return PgDefault(pg_literal(value, pgtype))


def added_rows_differ(default_sql: str | None, pgtype: PgType, declared: str | None = None) -> str | None:
    """For a column ALTER TABLE ADD COLUMN gave DEFAULT `default_sql`: why the rows
    already in the table hold another value in Postgres, filled by pg_default's DEFAULT,
    than SQLite reads for them (sqlite_sql.added_column_value), or None when they agree."""
    q = sqlite_sql
    carried = pg_default(default_sql, pgtype, declared)
    if carried.sql is None:
        return carried.not_carried  # None: both NULL
    col_affinity = _column_affinity(pgtype, declared)
    assert default_sql is not None
    old = new = None
    try:
        old = q.added_column_value(default_sql, col_affinity)
        new = q.stored_value(q.parse_constant(default_sql), col_affinity)
        if canonical(pgtype, converter(pgtype)(old)) == canonical(pgtype, converter(pgtype)(new)):
            return None
    except (q.NotAConstant, ValueMismatch):
        pass
    return (f"SQLite reads {old!r} in the rows the column was added to and stores {new!r} in rows inserted "
            "since; Postgres's DEFAULT gives every row the latter")


def _column_affinity(pgtype: PgType, declared: str | None) -> sqlite_sql.Affinity:
    """The column's affinity from its declared type, else the one `pgtype` implies."""
    if declared is not None:
        return sqlite_sql.affinity(declared)
    return _AFFINITY_OF.get(pgtype, sqlite_sql.Affinity.BLOB)


# The affinity a column of each type has when its declared type is not known.
_AFFINITY_OF = {
    PgType.BIGINT: sqlite_sql.Affinity.INTEGER, PgType.DOUBLE: sqlite_sql.Affinity.REAL,
    PgType.NUMERIC: sqlite_sql.Affinity.NUMERIC, PgType.BOOLEAN: sqlite_sql.Affinity.NUMERIC,
    PgType.TEXT: sqlite_sql.Affinity.TEXT, PgType.BYTEA: sqlite_sql.Affinity.BLOB,
}


def translate_default(default_sql: str | None, pgtype: PgType, declared: str | None = None) -> str | None:
    """The Postgres DEFAULT expression for a SQLite column default, or None to omit it
    (see pg_default for why one is not carried)."""
    return pg_default(default_sql, pgtype, declared).sql
