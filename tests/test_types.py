"""Type mapping and value conversion, exhaustively and without I/O."""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.identifiers import IdentifierError, quote_ident, quote_pg_ident
from syncd.model import Column, TableSpec
from syncd.rows import RowConverter, RowMisfit
from syncd.types import PgType, ValueMismatch, converter, infer_from_values, map_declared_type


@pytest.mark.parametrize("declared, expected", [
    ("INTEGER", PgType.BIGINT), ("INT", PgType.BIGINT), ("TINYINT", PgType.BIGINT), ("SMALLINT", PgType.BIGINT),
    ("MEDIUMINT", PgType.BIGINT), ("BIGINT", PgType.BIGINT), ("UNSIGNED BIG INT", PgType.BIGINT),
    ("INT2", PgType.BIGINT), ("INT8", PgType.BIGINT), ("integer", PgType.BIGINT),
    ("REAL", PgType.DOUBLE), ("FLOAT", PgType.DOUBLE), ("DOUBLE", PgType.DOUBLE),
    ("DOUBLE PRECISION", PgType.DOUBLE),
    ("NUMERIC", PgType.NUMERIC), ("DECIMAL(10,5)", PgType.NUMERIC), ("DECIMAL", PgType.NUMERIC),
    ("TEXT", PgType.TEXT), ("CHARACTER(20)", PgType.TEXT), ("VARCHAR(255)", PgType.TEXT),
    ("VARYING CHARACTER(255)", PgType.TEXT), ("NCHAR(55)", PgType.TEXT), ("NATIVE CHARACTER(70)", PgType.TEXT),
    ("NVARCHAR(100)", PgType.TEXT), ("CLOB", PgType.TEXT),
    ("BLOB", PgType.BYTEA),
    ("BOOLEAN", PgType.BOOLEAN), ("BOOL", PgType.BOOLEAN),
    ("DATE", PgType.TEXT), ("DATETIME", PgType.TEXT), ("TIMESTAMP", PgType.TEXT),
    ("JSON", PgType.TEXT),
    ("", None), ("whatever", None),
])
def test_declared_types(declared, expected):
    assert map_declared_type(declared) is expected


def test_types_inferred_from_stored_values():
    assert infer_from_values({"integer": 3})[0] is PgType.BIGINT
    assert infer_from_values({"real": 3})[0] is PgType.DOUBLE
    assert infer_from_values({"integer": 1, "real": 1})[0] is PgType.NUMERIC  # keeps 1 and 1.0 apart
    assert infer_from_values({"text": 2})[0] is PgType.TEXT
    assert infer_from_values({"blob": 2})[0] is PgType.BYTEA
    assert infer_from_values({})[0] is PgType.TEXT
    pg, note = infer_from_values({"text": 1, "integer": 1})
    assert pg is PgType.TEXT and "mixed" in note


@pytest.mark.parametrize("pgtype, value, expected", [
    (PgType.BIGINT, 2**63 - 1, 2**63 - 1), (PgType.BIGINT, -(2**63), -(2**63)), (PgType.BIGINT, None, None),
    (PgType.DOUBLE, 1e308, 1e308), (PgType.DOUBLE, -0.0, -0.0), (PgType.DOUBLE, 3, 3.0),
    (PgType.DOUBLE, float("inf"), float("inf")), (PgType.DOUBLE, 2**53, float(2**53)),
    (PgType.NUMERIC, 0.1, Decimal("0.1")), (PgType.NUMERIC, 2**63 - 1, Decimal(2**63 - 1)),
    (PgType.NUMERIC, 1e308, Decimal(int(1e308))),  # the real's exact value, not 10^308
    (PgType.NUMERIC, 2.0**60, Decimal(1152921504606846976)), (PgType.NUMERIC, 2.0**53 - 1, Decimal(2**53 - 1)),
    (PgType.TEXT, "", ""), (PgType.TEXT, "quote ' \" back\\ new\nline", "quote ' \" back\\ new\nline"),
    (PgType.TEXT, "漢字 🚀", "漢字 🚀"), (PgType.TEXT, 1706745599, "1706745599"), (PgType.TEXT, 2460341.5, "2460341.5"),
    (PgType.BYTEA, b"", b""), (PgType.BYTEA, b"\x00\xff", b"\x00\xff"),
    (PgType.BOOLEAN, 1, True), (PgType.BOOLEAN, 0, False),
    (PgType.JSON, '{"a": [1, 2.5]}', '{"a": [1, 2.5]}'), (PgType.JSONB, "3", "3"),
    (PgType.TIMESTAMP, "2024-01-31 23:59:59", dt.datetime(2024, 1, 31, 23, 59, 59)),
    (PgType.TIMESTAMP, "2024-01-31T23:59:59.5Z", dt.datetime(2024, 1, 31, 23, 59, 59, 500000)),
    (PgType.TIMESTAMPTZ, 0, dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)),
    (PgType.DATE, "2024-02-29", dt.date(2024, 2, 29)),
])
def test_conversions(pgtype, value, expected):
    got = converter(pgtype)(value)
    assert got == expected and type(got) is type(expected)
    if isinstance(expected, float) and expected == 0:
        assert str(got) == str(expected)  # -0.0 stays negative


@pytest.mark.parametrize("pgtype, value, why", [
    (PgType.BIGINT, "lots of people", "does not fit bigint"), (PgType.BIGINT, 1.5, "does not fit bigint"),
    (PgType.BIGINT, b"x", "does not fit bigint"),
    (PgType.DOUBLE, 2**53 + 1, "2^53"), (PgType.DOUBLE, "1.5", "does not fit double"),
    (PgType.NUMERIC, "abc", "does not fit numeric"),
    (PgType.TEXT, "nul\x00inside", "NUL"), (PgType.TEXT, b"\x01", "does not fit text"),
    (PgType.BYTEA, "text", "does not fit bytea"),
    (PgType.BOOLEAN, 2, "only 0 and 1"), (PgType.BOOLEAN, "true", "only 0 and 1"),
    (PgType.JSONB, "{bad", "invalid JSON"), (PgType.JSON, "NaN", "invalid JSON"),
    (PgType.TIMESTAMP, "yesterday", "ISO-8601"), (PgType.DATE, "2024-01-31 10:00:00", "time of day"),
    (PgType.DATE, "10000-01-01", "ISO-8601"), (PgType.DATE, "0000-12-31", "ISO-8601"),
])
def test_misfits_say_why(pgtype, value, why):
    with pytest.raises(ValueMismatch) as e:
        converter(pgtype)(value)
    assert why in str(e.value)


def test_identifiers():
    assert quote_ident('weird "name"; DROP TABLE x;--') == '"weird ""name""; DROP TABLE x;--"'
    assert quote_ident("emoji 🚀") == '"emoji 🚀"'
    with pytest.raises(IdentifierError):
        quote_pg_ident("x" * 64)  # Postgres would silently cut it to 63 bytes
    with pytest.raises(IdentifierError):
        quote_ident("nul\x00")


def spec(*types: PgType) -> TableSpec:
    cols = tuple(Column(f"c{i}", "", t, False, None) for i, t in enumerate(types))
    return TableSpec("t", cols, ("c0",), False, "primary key")


def test_compiled_row_converter_matches_the_value_converters():
    types = list(PgType)
    samples = {PgType.BIGINT: 5, PgType.DOUBLE: 7, PgType.NUMERIC: 0.25, PgType.TEXT: 12, PgType.BYTEA: b"\x00",
               PgType.BOOLEAN: 1, PgType.JSON: "[]", PgType.JSONB: '{"k": 1}', PgType.TIMESTAMP: "2024-01-01",
               PgType.TIMESTAMPTZ: 1_700_000_000.5, PgType.DATE: "2024-01-01"}
    row = tuple(samples[t] for t in types)
    got = RowConverter(spec(*types)).row(row)
    assert got == tuple(converter(t)(v) for t, v in zip(types, row))
    assert [type(v) for v in got] == [type(converter(t)(v)) for t, v in zip(types, row)]


def test_row_converter_names_key_and_column():
    conv = RowConverter(spec(PgType.BIGINT, PgType.TEXT, PgType.BIGINT))
    with pytest.raises(RowMisfit) as e:
        conv.rows([(1, "ok", 2), (777777, "fine", "lots of people")])
    assert (e.value.key, e.value.column) == ((777777,), "c2")
    assert 'table "t" key 777777 column "c2"' in str(e.value) and "lots of people" in str(e.value)
    with pytest.raises(RowMisfit):
        conv.row((3, "nul\x00", 1))  # a text fast path still checks NUL


# A REAL carried as text reads as SQLite's own text for it: CAST(x AS TEXT), which is
# also what sqlite3_column_text hands an application reading the column as text.
_SQLITE = sqlite3.connect(":memory:")


def _sqlite_text(v: float) -> str:
    return _SQLITE.execute("SELECT CAST(? AS TEXT)", (v,)).fetchone()[0]


@pytest.mark.parametrize("value, text", [
    (1e-05, "1.0e-05"), (100000000000000.0, "100000000000000.0"), (1e15, "1.0e+15"), (1e16, "1.0e+16"),
    (2.5e-05, "2.5e-05"), (0.0001, "0.0001"), (1.0, "1.0"), (-0.0, "0.0"), (0.0, "0.0"), (1e300, "1.0e+300"),
    (5e-324, "4.94065645841247e-324"), (float("inf"), "Inf"), (float("-inf"), "-Inf"), (2460341.5, "2460341.5"),
    (12345.678, "12345.678"),
])
def test_a_real_as_text_is_what_sqlite_renders(value, text):
    assert converter(PgType.TEXT)(value) == text == _sqlite_text(value)
    if math.isfinite(value):
        assert converter(PgType.JSON)(value) == text  # numbers in a json column alike


@pytest.mark.parametrize("value", [0.1 + 0.2, 1 / 3, 2.0**53, 123456789012345678.0])
def test_a_real_sqlite_would_render_with_digits_lost_keeps_them(value):
    """SQLite's 15 digits do not read back as these doubles ('0.3' for 0.1 + 0.2): the
    text keeps the digits needed, in SQLite's layout, and reads back exactly."""
    text = converter(PgType.TEXT)(value)
    assert float(_sqlite_text(value)) != value
    assert float(text) == value and ("." in text.partition("e")[0])
    assert len(text.partition("e")[0].lstrip("-").replace(".", "").lstrip("0")) <= 17


@settings(max_examples=3000, deadline=None)
@given(st.floats(allow_nan=False))
def test_every_real_as_text_agrees_with_sqlite(value):
    text = converter(PgType.TEXT)(value)
    sqlite_text = _sqlite_text(value)
    if float(sqlite_text) == value:
        assert text == sqlite_text
    else:
        assert float(text) == value


@pytest.mark.parametrize("value", [
    1234567890123456.8, 1234567890123457.0, 12345678901234568.0, 9007199254740992.0,
    1733284800123456.0,  # microseconds since 1970 held as a REAL
    0.1 + 0.2, 123456789012345.67, 1.152921504606847e+18, 1.0000000000000002e-05,
])
def test_a_real_sqlite_cannot_render_exactly_keeps_its_layout(value):
    """Where SQLite's 15 digits are not the value, syncd's text has more digits, but is
    laid out as SQLite lays out that value: with an exponent where SQLite's has one."""
    text, theirs = converter(PgType.TEXT)(value), _sqlite_text(value)
    assert float(text) == value
    assert ("e" in text) == ("e" in theirs), (text, theirs)
    assert "." in text.partition("e")[0], text
