"""Values on the way back come back in SQLite's own shape: syncd/reverse/values.py, the
inverse of syncd/types.py.

The identity is proved through a real Postgres: every stored-value class syncd accepts
goes forward (syncd's converter, stored in a Postgres column of the type syncd gives
it, read back by asyncpg) and back, and must be the very SQLite value again: its
storage class and its value (floats compared bit for bit). Where no conversion can
know the original (integer 5 and text '5' in a column without a declared type, the
spelling of an instant), the value still reads back as the same value to syncd, and
the applier keeps the stored one (`keeps`), which the last test holds for every value."""

from __future__ import annotations

import datetime as dt
import math
import random
import struct
from decimal import Decimal

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.reverse import values
from syncd.reverse.values import (BLOB, EPOCH_INT, EPOCH_REAL, INTEGER, NUMERIC, REAL, TEXT, ColumnShape,
                                  NotExpressible, OutOfRange, detect_format, format_instant, stored, to_sqlite)
from syncd.sqlite_sql import affinity
from syncd.types import PgType, ValueMismatch, converter

rnd = random.Random(14)


def _floats() -> list[float]:
    out = [0.0, -0.0, 1.5, -2.25, 0.1, 1e-300, 5e-324, 1.7976931348623157e308, math.inf, -math.inf, 1e15, 1e16,
           123456789.125, 2.0**53, 2.0**63, 1e20]
    out += [rnd.uniform(-1e6, 1e6) for _ in range(60)] + [rnd.random() * 10 ** rnd.randint(-20, 20) for _ in range(60)]
    return out


def _ints() -> list[int]:
    return [0, 1, -1, 2**31, -(2**31), 2**53 + 1, 2**63 - 1, -(2**63)] + [rnd.randint(-2**62, 2**62) for _ in range(60)]


TEXTS = ["", "plain", "Zürich ☃ 𝄞", "line\nbreak\ttab", "  spaced  ", "123", "1.0", "1e5", "0x1A", "-7",
         "'quoted' \"double\"", "weird \"name\"; DROP TABLE x;--", "%Y-%m-%d", "NULL"] + \
    ["".join(rnd.choice("abcxyz 019.éß€") for _ in range(rnd.randint(1, 30))) for _ in range(40)]
BLOBS = [b"", b"\x00", b"\x00\xff\x10", bytes(range(256))] + [rnd.randbytes(rnd.randint(1, 64)) for _ in range(20)]
DATES = ["2024-01-31", "1999-12-31", "0001-01-01", "9999-12-31"]
DATETIMES = ["2024-01-31 10:20:30", "2024-01-31T10:20:30", "2024-01-31 10:20:30.123", "2024-01-31T10:20:30.123456Z",
             "2024-01-31T10:20:30+00:00", "2024-01-31 10:20", "2000-02-29 23:59:59"]

# (declared type, Postgres type syncd gives the column, spelling of instants, values the app stored)
CLASSES = [
    ("INTEGER", PgType.BIGINT, None, _ints()),
    ("REAL", PgType.DOUBLE, None, _floats() + [5, -3]),
    ("TEXT", PgType.TEXT, None, TEXTS + [42, 1.5]),
    ("BLOB", PgType.BYTEA, None, BLOBS),
    ("NUMERIC", PgType.NUMERIC, None, _ints() + [f for f in _floats() if math.isfinite(f)] + ["12.50", "7"]),
    ("DECIMAL(10,2)", PgType.NUMERIC, None, [19.99, 20, 0.05, -1234.5, 100]),
    ("BOOLEAN", PgType.BOOLEAN, None, [0, 1]),
    ("DATETIME", PgType.TEXT, None, DATETIMES + DATES + [1700000000, 1700000000.5, "not a date"]),
    ("JSON", PgType.TEXT, None, ['{"b": 1, "a": [1, 2.50]}', "[]", '"s"', "12"]),
    ("", PgType.BIGINT, None, _ints()),
    ("", PgType.DOUBLE, None, _floats()),
    ("", PgType.BYTEA, None, BLOBS),
    # overrides and schema parity: typed Postgres columns
    ("DATETIME", PgType.TIMESTAMP, "%Y-%m-%d %H:%M:%S", ["2024-01-31 10:20:30", "1970-01-01 00:00:00"]),
    ("DATETIME", PgType.TIMESTAMP, "%Y-%m-%dT%H:%M:%S.%3fZ", ["2024-01-31T10:20:30.123Z"]),
    ("TIMESTAMP", PgType.TIMESTAMPTZ, "%Y-%m-%dT%H:%M:%S%z", ["2024-01-31T10:20:30+00:00"]),
    ("DATETIME", PgType.TIMESTAMP, EPOCH_INT, [1700000000, 0, -86400]),
    ("DATETIME", PgType.TIMESTAMP, EPOCH_REAL, [1700000000.5, 1.25]),
    ("DATE", PgType.DATE, "%Y-%m-%d", DATES),
    ("TEXT", PgType.JSON, None, ['{"b": 1, "a": [1, 2.50]}', "[]"]),
]

# Where the original cannot be known from the value alone (documented in values.py);
# everywhere else the round trip must give back the very value.
SPELLING_ONLY = [
    ("", PgType.TEXT),  # a column without a declared type holding numbers and text: numbers come back as text
    ("", PgType.NUMERIC),  # ... holding integers and reals: a real of 1e16 or more comes back as an integer
]


async def _round_trip(pg: asyncpg.Connection, pgtype: PgType, vals: list) -> list:
    """Each value as Postgres stores it in a column of `pgtype` and asyncpg reads it."""
    table = f"rt_{next(_tables)}"  # a new name each time: asyncpg caches statements by their text
    await pg.execute(f"CREATE TABLE {table} (i int PRIMARY KEY, v {pgtype.value})")
    await pg.executemany(f"INSERT INTO {table} VALUES ($1, $2)", list(enumerate(vals)))
    return [r[0] for r in await pg.fetch(f"SELECT v FROM {table} ORDER BY i")]


_tables = iter(range(10**6))


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    return a == b


def _cases():
    for declared, pgtype, fmt, raw in CLASSES:
        aff = affinity(declared)
        stored_values = []
        for v in raw:
            s = stored(aff, v)
            try:
                converter(pgtype)(s)
            except ValueMismatch:
                continue  # not accepted forward (the audit holds such a table)
            stored_values.append(s)
        yield declared, pgtype, fmt, aff, stored_values
    yield "", PgType.TEXT, None, BLOB, [5, "5", 1.5, "abc"]
    yield "", PgType.NUMERIC, None, BLOB, [5, 1.5, 1e16, 2.0**70, -7]


async def test_forward_then_back_gives_every_stored_value_again(pg_dsn):
    pg = await asyncpg.connect(pg_dsn)
    try:
        for declared, pgtype, fmt, aff, stored_values in _cases():
            shape = ColumnShape("c", pgtype, aff, fmt)
            back = await _round_trip(pg, pgtype, [converter(pgtype)(v) for v in stored_values])
            exact = (declared, pgtype) not in SPELLING_ONLY
            for v, b in zip(stored_values, back):
                what = f"{declared or '(no type)'} as {pgtype.value}: {v!r} -> Postgres {b!r}"
                assert values.keeps(shape, v, b), what  # the applier leaves the stored value alone
                out = to_sqlite(shape, b)
                assert values.sqlite_token(pgtype, out) == values.sqlite_token(pgtype, v), what
                if exact:
                    assert _same(out, v), f"{what} -> SQLite {out!r}"
    finally:
        await pg.close()


async def test_values_the_application_writes_in_postgres_get_the_columns_shape(pg_dsn):
    """New values (no stored one to keep) take the shape the column's affinity gives."""
    pg = await asyncpg.connect(pg_dsn)
    try:
        num = await _round_trip(pg, PgType.NUMERIC, [Decimal("19.90"), Decimal("20.00"), Decimal("7"),
                                                      Decimal("-0.000001"), Decimal("100000000000000000000")])
        shape = ColumnShape("price", PgType.NUMERIC, NUMERIC)
        assert [to_sqlite(shape, v) for v in num] == [19.9, 20, 7, -0.000001, 1e20]
        assert [type(to_sqlite(shape, v)) for v in num] == [float, int, int, float, float]
        ts = ColumnShape("at", PgType.TIMESTAMPTZ, NUMERIC, "%Y-%m-%dT%H:%M:%S.%3fZ")
        aware = dt.datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
        assert to_sqlite(ts, aware) == "2026-03-01T10:00:00.250Z"
        assert to_sqlite(ColumnShape("d", PgType.DATE, NUMERIC), dt.date(2026, 3, 1)) == "2026-03-01"
        assert to_sqlite(ColumnShape("b", PgType.BOOLEAN, NUMERIC), True) == 1
        assert to_sqlite(ColumnShape("j", PgType.JSONB, BLOB), '{"a": 1}') == '{"a": 1}'
        import uuid
        u = uuid.UUID("12345678-1234-5678-1234-567812345678")
        assert to_sqlite(ColumnShape("u", values.family("uuid"), TEXT), u) == str(u)
    finally:
        await pg.close()


def test_a_spelling_that_cannot_hold_the_instant_gains_the_fraction():
    shape = ColumnShape("at", PgType.TIMESTAMP, NUMERIC, "%Y-%m-%d %H:%M:%S")
    assert to_sqlite(shape, dt.datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02 03:04:05"
    assert to_sqlite(shape, dt.datetime(2026, 1, 2, 3, 4, 5, 120000)) == "2026-01-02 03:04:05.120000"
    epoch = ColumnShape("at", PgType.TIMESTAMP, INTEGER, EPOCH_INT)
    assert to_sqlite(epoch, dt.datetime(1970, 1, 1, 0, 0, 10)) == 10
    assert to_sqlite(epoch, dt.datetime(2024, 5, 1, 10, 0, 0, 500000)) == 1714557600.5  # REAL seconds: exact here


@pytest.mark.parametrize("shape, value, why", [
    (ColumnShape("r", PgType.DOUBLE, REAL), math.nan, "NaN"),
    (ColumnShape("n", PgType.NUMERIC, NUMERIC), Decimal("NaN"), "NaN"),
    (ColumnShape("n", PgType.NUMERIC, NUMERIC), Decimal("0.12345678901234567890123"), "more precision"),
    # the REAL nearest 10^23 prints as 1e+23: the message shows what it holds
    (ColumnShape("n", PgType.NUMERIC, NUMERIC), Decimal("1E+23"), "read back as 99999999999999991611392"),
    (ColumnShape("t", PgType.TEXT, NUMERIC), "1.0", "NUMERIC affinity"),
    (ColumnShape("t", PgType.TEXT, INTEGER), "007", "INTEGER affinity"),
    (ColumnShape("t", PgType.TIMESTAMP, NUMERIC), OutOfRange("infinity"), "infinity has no SQLite spelling"),
    (ColumnShape("d", PgType.DATE, TEXT), OutOfRange("-infinity"), "-infinity has no SQLite spelling"),
    (ColumnShape("d", PgType.DATE, TEXT), OutOfRange("0044-03-15 BC"), "outside the years 1 to 9999"),
])
def test_values_sqlite_cannot_hold_are_refused_with_the_reason(shape, value, why):
    with pytest.raises(NotExpressible, match=why):
        to_sqlite(shape, value)


@pytest.mark.parametrize("shape, value, out", [
    (ColumnShape("d", PgType.DATE, NUMERIC), dt.date.max, "9999-12-31"),
    (ColumnShape("d", PgType.DATE, TEXT), dt.date.min, "0001-01-01"),
    (ColumnShape("t", PgType.TIMESTAMP, NUMERIC), dt.datetime.max, "9999-12-31 23:59:59.999999"),
    (ColumnShape("t", PgType.TIMESTAMP, TEXT, "%Y-%m-%d %H:%M:%S"), dt.datetime.min, "0001-01-01 00:00:00"),
])
def test_the_first_and_last_day_go_back_as_themselves(shape, value, out):
    """A date or instant read as a value is finite (the reader sends infinities apart):
    a "valid until 9999-12-31" goes back to SQLite as that day."""
    assert to_sqlite(shape, value) == out


def test_affinity_follows_sqlites_rules():
    declared = ("INTEGER", "BIGINT", "VARCHAR(20)", "CLOB", "BLOB", "", "REAL", "DOUBLE PRECISION", "FLOAT",
                "NUMERIC", "DECIMAL(10,2)", "BOOLEAN", "DATETIME", "JSON", "STRING", "POINT")
    assert [affinity(d) for d in declared] == \
        [INTEGER, INTEGER, TEXT, TEXT, BLOB, BLOB, REAL, REAL, REAL, NUMERIC, NUMERIC, NUMERIC, NUMERIC, NUMERIC,
         NUMERIC, INTEGER]  # SQLite: "STRING" is NUMERIC, "POINT" holds INT


def test_stored_is_what_sqlite_stores():
    assert stored(NUMERIC, "12") == 12 and stored(NUMERIC, "1.5") == 1.5 and stored(NUMERIC, "1.0") == 1
    assert stored(NUMERIC, 5.0) == 5 and type(stored(NUMERIC, 5.0)) is int
    assert stored(REAL, 5) == 5.0 and type(stored(REAL, 5)) is float
    assert stored(TEXT, 5) == "5" and stored(INTEGER, "5") == 5 and stored(INTEGER, "x") == "x"
    assert stored(BLOB, "5") == "5" and stored(TEXT, b"\x00") == b"\x00"


@pytest.mark.parametrize("text, fmt", [
    ("2024-01-31", "%Y-%m-%d"), ("2024-01-31 10:20:30", "%Y-%m-%d %H:%M:%S"),
    ("2024-01-31T10:20:30.123Z", "%Y-%m-%dT%H:%M:%S.%3fZ"), ("2024-01-31T10:20:30.123456", "%Y-%m-%dT%H:%M:%S.%f"),
    ("2024-01-31T10:20:30+00:00", "%Y-%m-%dT%H:%M:%S%z"), ("2024-01-31 10:20", "%Y-%m-%d %H:%M"),
    (1700000000, EPOCH_INT), (1700000000.25, EPOCH_REAL), ("31/01/2024", None), (b"x", None),
])
def test_spellings_are_recognised(text, fmt):
    assert detect_format(text) == fmt


@settings(max_examples=300, deadline=None)
@given(moment=st.datetimes(min_value=dt.datetime.min, max_value=dt.datetime.max),
       fmt=st.sampled_from(["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%S.%3f%z",
                            "%Y-%m-%d %H:%M", EPOCH_INT, EPOCH_REAL]))
def test_every_instant_goes_back_exactly_whatever_the_spelling(moment, fmt):
    shape = ColumnShape("at", PgType.TIMESTAMP, NUMERIC, fmt)
    out = to_sqlite(shape, moment)
    assert converter(PgType.TIMESTAMP)(out) == moment
    if detect_format(out) == fmt:  # written in the column's own spelling when that holds the instant
        assert format_instant(moment, fmt) == out


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1),
                 st.floats(allow_nan=False), st.decimals(allow_nan=False, places=4, min_value=-10**12,
                                                         max_value=10**12)))
def test_numbers_read_back_as_the_numeric_they_came_from_or_are_refused(n):
    d = Decimal(n) if isinstance(n, int) else (converter(PgType.NUMERIC)(n) if isinstance(n, float) else n)
    try:
        out = to_sqlite(ColumnShape("n", PgType.NUMERIC, NUMERIC), d)
    except NotExpressible:
        assert float(d) != d or Decimal(repr(float(d))) != d
        return
    back = converter(PgType.NUMERIC)(out)
    assert back == d


async def test_json_nested_too_deep_to_check_holds_its_table_on_the_way_back(tmp_path, make_config, pg_dsn):
    """A jsonb document the application writes in Postgres nested thousands of levels
    deep (Postgres takes it; syncd cannot compare it) holds its table on the way back,
    naming key and column, while the other tables follow Postgres; fixed, it is copied."""
    import sqlite3

    from tests.support.compare import compare_table
    from tests.support.daemon import DaemonProcess
    from tests.support.sync import eventually, pg_rows, table_states
    from tests.support.way_back import backup_and_config, cut_over, typeof, wait_back

    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO docs VALUES (1, '[]');"
                       "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);")
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db,
                            sources=[{"name": "app", "path": str(db), "columns": {"docs": {"body": "jsonb"}}}])
    deep = "[" * 3000 + "]" * 3000
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "UPDATE app.docs SET body = $1::jsonb WHERE id = 1", deep)
        await pg_rows(pg_dsn, "INSERT INTO app.docs VALUES (2, $1::jsonb)", deep)
        await pg_rows(pg_dsn, "INSERT INTO app.notes VALUES (1, 'the other tables go on')")

        async def held() -> bool:
            return (await table_states(pg_dsn, "app"))["docs"][0] == "held"

        await eventually(held, 30, "docs held", d)
        why = (await table_states(pg_dsn, "app"))["docs"][1]
        assert 'table "docs" key 1 column "body"' in why and "nested too deep" in why, why

        async def notes_followed() -> bool:
            return typeof(db, "SELECT body FROM notes") == [("the other tables go on",)]

        await eventually(notes_followed, 30, "notes following Postgres", d)
        await pg_rows(pg_dsn, "UPDATE app.docs SET body = '[[1]]'")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert "unexpected error" not in d.log()
        assert d.stop() == 0
    assert typeof(db, "SELECT id, body FROM docs ORDER BY id") == [(1, "[[1]]"), (2, "[[1]]")]
    assert await compare_table(str(db), pg_dsn, "app", "docs") == []
