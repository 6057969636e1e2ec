"""`syncd verify` says "equal" exactly when an independent row-by-row comparison does
(tests/support/rowcompare.py, which shares no code with syncd's hashing).

Hypothesis builds a SQLite table with random column types and keys (single and
composite; INTEGER, INT, REAL, TEXT, NOCASE, no declared type, a `timestamp`
override on a TEXT key; rowid and WITHOUT ROWID), random values of every storage
class (unicode and odd text, blobs, NULL, mixed classes in untyped columns), loads
Postgres as the stream would, then tampers: rows deleted, added or changed in
Postgres, rows added to SQLite behind the changelog's back (often a second spelling
of a key Postgres already holds). Each case runs syncd's table check in-process
against a fresh schema of one module-wide database."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import sqlite3

import asyncpg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from syncd.model import ROWID_COLUMN, Column, TableSpec
from syncd.types import PgType, ValueMismatch, converter
from syncd.verify import table as table_module
from tests.support import inprocess_verify as iv
from tests.support.pgcluster import with_database
from tests.support.rowcompare import pair_off, same_rows

# --- the database, one per module ---------------------------------------------------------


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def pg(loop, pg_server):
    name = f"syncd_test_property_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_server)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    loop.run_until_complete(admin(f'CREATE DATABASE "{name}"'))
    conn = loop.run_until_complete(asyncpg.connect(with_database(pg_server, name)))
    loop.run_until_complete(iv.prepare(conn))
    yield conn
    loop.run_until_complete(conn.close())
    loop.run_until_complete(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


_schemas = itertools.count()


def fresh_schema() -> str:
    return f"case_{next(_schemas)}"


# --- what a table looks like ------------------------------------------------------------------

# Key values chosen to collide: 1 / '1' / 1.0, 'a' / 'A' / 'a ', composed and decomposed é.
KEY_POOL = [None, -2, 0, 1, 2, 3, 2**62, -0.0, 0.5, 1.0, 2.5, "0", "1", "1.0", "a", "A", "a ", "é", "e\u0301", "",
            "b", "B", "漢", "1.5", b"", b"\x01", b"a"]
INSTANTS = ["2024-01-01 00:00:00", "2024-01-01T00:00:00", "2024-01-01 00:00:00Z", "2024-01-01T01:00:00+01:00",
            "2024-01-02 00:00:00", "2024-01-02T00:00:00.000", "2024-01-01 12:00:00", "not a time", 1704067200]

# kind -> (column declaration, storage classes the application mostly writes)
KEY_KINDS = {
    "integer": ("INTEGER", "int"),  # alone: the rowid
    "int": ("INT", "int"),
    "real": ("REAL", "real"),
    "text": ("TEXT", "text"),
    "nocase": ("TEXT COLLATE NOCASE", "text"),
    "untyped": ("", "any"),
    "timestamp": ("TEXT", "instant"),  # with a `timestamp` override
}
VALUE_TYPES = ["INTEGER", "REAL", "TEXT", "BLOB", "", "NUMERIC"]
ODD_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6)


def any_value() -> st.SearchStrategy:
    return st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), ODD_TEXT,
                     st.binary(max_size=4))


def value_for(declared: str) -> st.SearchStrategy:
    """Mostly the class the column is declared for, sometimes anything at all."""
    usual = {
        "INTEGER": st.integers(-(2**63), 2**63 - 1),
        "REAL": st.floats(allow_nan=False),
        "TEXT": ODD_TEXT,
        "BLOB": st.binary(max_size=4),
        "NUMERIC": st.one_of(st.integers(-(10**6), 10**6), st.floats(-1e6, 1e6)),
        "": any_value(),
    }[declared]
    return st.one_of(usual, usual, usual, st.none(), any_value())


def key_for(kind: str) -> st.SearchStrategy:
    if kind == "timestamp":
        return st.sampled_from(INSTANTS)
    pool = {
        "int": [v for v in KEY_POOL if isinstance(v, int)] + ["a", 1.5],
        "integer": [v for v in KEY_POOL if isinstance(v, int)],
        "real": [v for v in KEY_POOL if isinstance(v, (int, float))] + ["x"],
        "text": [v for v in KEY_POOL if isinstance(v, str)] + [1, None],
        "nocase": [v for v in KEY_POOL if isinstance(v, str)],
        "untyped": KEY_POOL,
    }[kind]
    return st.sampled_from(pool)


@st.composite
def tables(draw):
    n_key = draw(st.sampled_from([1, 1, 2]))
    kinds = draw(st.lists(st.sampled_from([k for k in KEY_KINDS if n_key == 1 or k != "integer"]),
                          min_size=n_key, max_size=n_key))
    values = draw(st.lists(st.sampled_from(VALUE_TYPES), min_size=0, max_size=3))
    without_rowid = "integer" not in kinds and draw(st.booleans())
    cols = [(f"k{i}", KEY_KINDS[k][0]) for i, k in enumerate(kinds)] + [(f"v{i}", t) for i, t in enumerate(values)]
    key = ", ".join(f"k{i}" for i in range(n_key))
    ddl = (f"CREATE TABLE t ({', '.join(f'{n} {d}'.strip() for n, d in cols)}, PRIMARY KEY ({key}))"
           + (" WITHOUT ROWID" if without_rowid else ""))
    if kinds == ["integer"]:
        ddl = ddl.replace("k0 INTEGER", "k0 INTEGER PRIMARY KEY").replace(", PRIMARY KEY (k0))", ")")
    row = st.tuples(*[key_for(k) for k in kinds], *[value_for(t) for t in values])
    rows = draw(st.lists(row, max_size=24))
    overrides = {f"k{i}": "timestamp" for i, k in enumerate(kinds) if k == "timestamp"}
    return {"ddl": ddl, "kinds": kinds, "values": values, "rows": rows, "overrides": overrides}


TAMPERINGS = ["pg_delete", "pg_add", "pg_change", "sqlite_add"]


def insert_sqlite(conn: sqlite3.Connection, row: tuple) -> None:
    try:
        conn.execute(f"INSERT OR IGNORE INTO t VALUES ({', '.join('?' * len(row))})", row)
    except sqlite3.IntegrityError:
        pass  # e.g. NULL or text for an INTEGER PRIMARY KEY: the application could not either
    except sqlite3.OperationalError:
        pass


async def tamper(pg: asyncpg.Connection, conn: sqlite3.Connection, schema: str, spec: TableSpec, what: str,
                 data, table: dict) -> None:
    rows = await pg.fetch(f'SELECT ctid FROM "{schema}".t ORDER BY ctid')
    new_row = st.tuples(*[key_for(k) for k in table["kinds"]], *[value_for(t) for t in table["values"]])
    if what == "sqlite_add":  # no changelog entry: this row is settled, and Postgres has never seen it
        insert_sqlite(conn, data.draw(new_row, label="sqlite row"))
        return
    if what == "pg_add":
        values = iv.convert(spec, data.draw(new_row, label="postgres row"))
        if values is not None:
            cols = ", ".join(f'"{c}"' for c in spec.column_names)
            marks = ", ".join(f"${i + 1}::{c.pgtype.value}" for i, c in enumerate(spec.columns))
            await pg.execute(f'INSERT INTO "{schema}".t ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING', *values)
        return
    if not rows:
        return
    ctid = rows[data.draw(st.integers(0, len(rows) - 1), label="row")][0]
    if what == "pg_delete":
        await pg.execute(f'DELETE FROM "{schema}".t WHERE ctid = $1', ctid)
        return
    i = data.draw(st.integers(0, len(spec.columns) - 1), label="column")
    col = spec.columns[i]
    kind = table["kinds"][i] if i < len(table["kinds"]) else None
    raw = data.draw(key_for(kind) if kind else value_for(table["values"][i - len(table["kinds"])]), label="value")
    try:
        value = converter(col.pgtype)(raw)
    except ValueMismatch:
        return
    try:
        await pg.execute(f'UPDATE "{schema}".t SET "{col.name}" = $1::{col.pgtype.value} WHERE ctid = $2',
                         value, ctid)
    except (asyncpg.UniqueViolationError, asyncpg.NotNullViolationError):
        pass


def run_case(loop, pg, table: dict, tamperings: list[str], data, chunk_rows: int):
    conn = iv.sqlite_file()
    conn.execute(table["ddl"])
    for row in table["rows"]:
        insert_sqlite(conn, row)
    spec = iv.spec_of(conn, "t", table["overrides"] or None)
    schema = fresh_schema()

    async def go():
        await iv.load(pg, schema, spec, iv.sqlite_rows(conn, spec))
        for what in tamperings:
            await tamper(pg, conn, schema, spec, what, data, table)
        try:
            result = await iv.check(conn, pg, schema, spec, chunk_rows=chunk_rows)
            theirs = await iv.postgres_rows(pg, schema, spec)
        finally:
            await pg.execute(f'DROP SCHEMA "{schema}" CASCADE')
        return result, theirs

    result, theirs = loop.run_until_complete(go())
    mine = iv.sqlite_rows(conn, spec)
    return spec, result, mine, theirs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(table=tables(), tamperings=st.lists(st.sampled_from(TAMPERINGS), max_size=3),
       chunk_rows=st.sampled_from([4, 16, 100_000]), data=st.data())
def test_verify_is_equal_exactly_when_the_rows_are(loop, pg, table, tamperings, chunk_rows, data):
    spec, result, mine, theirs = run_case(loop, pg, table, tamperings, data, chunk_rows)
    equal = same_rows(mine, theirs)
    event(f"equal: {equal}")
    lone_s, lone_p = pair_off(mine, theirs)
    assert result.error is None
    assert result.equal == equal, (
        f"verify says {'equal' if result.equal else 'different'}: {result.summary()} "
        f"{[d.text() for d in result.differences]}; rows without a partner: SQLite {lone_s}, Postgres {lone_p}; "
        f"types {[(c.name, c.pgtype.value) for c in spec.columns]}")
    assert (result.rows_sqlite, result.rows_postgres) == (len(mine), len(theirs))
    if not equal:  # and what it found is at least what the row counts say
        assert result.missing + result.different >= len(mine) - len(theirs)
        assert result.extra + result.different >= len(theirs) - len(mine)


# --- the two examples of the report, and the keyless table's rowid -----------------------------


def test_integer_one_and_text_one_are_two_rows(loop, pg):
    conn = iv.sqlite_file()
    conn.execute("CREATE TABLE k (id PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO k VALUES (?, ?)", [(1, "alice-balance=100"), ("2", "x"), ("1", "bob-balance=0")])
    spec = iv.spec_of(conn, "k")
    assert spec.column("id").pgtype is PgType.TEXT
    schema = fresh_schema()

    async def go():
        await iv.load(pg, schema, spec, iv.sqlite_rows(conn, spec))  # '1' overwrites 1: alice's row is gone
        assert len(await iv.postgres_rows(pg, schema, spec)) == 2
        return await iv.check(conn, pg, schema, spec)

    r = loop.run_until_complete(go())
    assert not r.equal and (r.rows_sqlite, r.rows_postgres) == (3, 2)
    assert [(d.kind, d.key) for d in r.differences] == [("missing", (1,)), ("missing", ("1",))]
    assert all("2 SQLite rows, keys 1, '1', are one key in Postgres" in d.note for d in r.differences)
    assert not any(d.repairable for d in r.differences)


def test_spellings_of_one_instant_are_as_many_rows(loop, pg):
    conn = iv.sqlite_file()
    conn.execute("CREATE TABLE ev (at TEXT PRIMARY KEY, v TEXT)")
    spellings = ["2024-01-01 00:00:00", "2024-01-01T00:00:00", "2024-01-01 00:00:00Z", "2024-01-02 00:00:00",
                 "2024-01-02T00:00:00"]
    conn.executemany("INSERT INTO ev VALUES (?, ?)", [(s, f"v{i}") for i, s in enumerate(spellings)])
    spec = iv.spec_of(conn, "ev", {"at": "timestamp"})
    schema = fresh_schema()

    async def go():
        await iv.load(pg, schema, spec, iv.sqlite_rows(conn, spec))
        return await iv.check(conn, pg, schema, spec)

    r = loop.run_until_complete(go())
    assert not r.equal and (r.rows_sqlite, r.rows_postgres, r.missing) == (5, 2, 5)
    assert {d.key for d in r.differences} == {(s,) for s in spellings}


def test_keyless_table_is_compared_by_rowid(loop, pg):
    """A keyless table's key is syncd's rowid column, read in SQLite through the rowid
    alias: every SQLite statement of verify reaches it with spec.sqlite_ref."""
    conn = iv.sqlite_file()
    conn.execute('CREATE TABLE "log lines" (at TEXT, "weird ""name""" TEXT, n INTEGER)')
    conn.executemany('INSERT INTO "log lines" VALUES (?, ?, ?)', [(f"t{i % 7}", "é" * (i % 3), i % 5) for i in range(300)])
    spec = TableSpec("log lines", (Column(ROWID_COLUMN, "", PgType.BIGINT, True, None, sqlite_expr="_rowid_"),
                                   Column("at", "TEXT", PgType.TEXT, False, None),
                                   Column('weird "name"', "TEXT", PgType.TEXT, False, None),
                                   Column("n", "INTEGER", PgType.BIGINT, False, None)),
                     (ROWID_COLUMN,), False, "rowid")
    schema = fresh_schema()

    async def go():
        await iv.load(pg, schema, spec, iv.sqlite_rows(conn, spec))
        equal = await iv.check(conn, pg, schema, spec)
        await pg.execute(f'''DELETE FROM "{schema}"."log lines" WHERE "{ROWID_COLUMN}" = 17;
                             UPDATE "{schema}"."log lines" SET n = -1 WHERE "{ROWID_COLUMN}" = 200''')
        conn.execute('DELETE FROM "log lines" WHERE _rowid_ = 250')
        return equal, await iv.check(conn, pg, schema, spec, chunk_rows=16)

    equal, differs = loop.run_until_complete(go())
    assert equal.equal and (equal.rows_sqlite, equal.rows_postgres) == (300, 300)
    assert sorted((d.kind, d.key, d.columns) for d in differs.differences) == [
        ("different", (200,), ("n",)), ("extra", (250,), ()), ("missing", (17,), ())]


def test_totals_keep_the_verdict_honest_when_the_key_comparison_misses_rows(loop, pg, monkeypatch):
    """Were the key-by-key comparison to lose rows (as it did when it kept one row per
    key), the totals taken at one checkpoint still stop the table from reading equal."""
    conn = iv.sqlite_file()
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(1, 41)])
    spec = iv.spec_of(conn, "t")
    schema = fresh_schema()

    async def blind(self, ranges):  # compares nothing key by key
        return None

    monkeypatch.setattr(table_module.TableCheck, "_leaves", blind)

    async def go():
        await iv.load(pg, schema, spec, iv.sqlite_rows(conn, spec))
        await pg.execute(f'DELETE FROM "{schema}".t WHERE id IN (3, 30)')
        return await iv.check(conn, pg, schema, spec)

    r = loop.run_until_complete(go())
    assert not r.equal and r.missing == 2 and (r.rows_sqlite, r.rows_postgres) == (40, 38)
    assert "yet no key was found to differ" in r.reason
