"""Column defaults: a SQLite default reaches Postgres only as a literal syncd writes
from its value, and then means exactly what it means in SQLite. Tokenizing follows
SQLite's rules (checked against SQLite itself); everything else is "not carried",
with the reason."""

from __future__ import annotations

import re
import sqlite3

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.identifiers import pg_string_literal, quote_literal
from syncd.sqlite_sql import (Constant, ConstKind, NotAConstant, SqlSyntaxError, added_column_value, affinity,
                              parse_constant, significant, stored_value, tokenize)
from syncd.types import PgType, converter, pg_default
from tests.conftest import write_config
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, pg_rows, wait_caught_up


def kinds(sql: str) -> list[tuple[str, str]]:
    return [(t.kind.value, t.text) for t in significant(tokenize(sql))]


def test_comments_follow_sqlite_not_postgres():
    # SQLite's /* */ does not nest: the first */ ends it, and "-- */" is a line comment.
    assert kinds("'a' /* /* */ -- */ x\n|| 'c'") == [("string", "'a'"), ("operator", "||"), ("string", "'c'")]
    assert kinds("5 /* never closed") == [("number", "5")]
    assert kinds("'a''b' x'00ff' \"id\"\"x\" [br] `bt`") == [
        ("string", "'a''b'"), ("blob", "x'00ff'"), ("quoted identifier", '"id""x"'),
        ("quoted identifier", "[br]"), ("quoted identifier", "`bt`")]
    assert kinds("0x1F 1_000 .5e-3 1. ?1 :a") == [("number", "0x1F"), ("number", "1_000"), ("number", ".5e-3"),
                                                  ("number", "1."), ("variable", "?1"), ("variable", ":a")]


@pytest.mark.parametrize("bad", ["'open", "x'0'", "x'zz'", "\"open", "[open", "1abc", "#", "\\"])
def test_text_sqlite_would_not_tokenize_is_refused(bad):
    with pytest.raises(SqlSyntaxError):
        tokenize(bad)


@pytest.mark.parametrize("sql, expected", [
    ("NULL", Constant(ConstKind.NULL)), ("(((7)))", Constant(ConstKind.INTEGER, 7)),
    ("- 5", Constant(ConstKind.INTEGER, -5)), ("+0x10", Constant(ConstKind.INTEGER, 16)),
    ("0xffffffffffffffff", Constant(ConstKind.INTEGER, -1)), ("TRUE", Constant(ConstKind.INTEGER, 1)),
    ("9223372036854775807", Constant(ConstKind.INTEGER, 2**63 - 1)),
    ("-9223372036854775808", Constant(ConstKind.INTEGER, -(2**63))),
    ("1e3", Constant(ConstKind.REAL, 1000.0)), ("'it''s'", Constant(ConstKind.TEXT, "it's")),
    ("x'4142'", Constant(ConstKind.BLOB, b"AB")), ("current_timestamp", Constant(ConstKind.CURRENT_TIMESTAMP)),
    ("(/* c */ 'a' -- d\n)", Constant(ConstKind.TEXT, "a")),
])
def test_one_literal_is_a_constant(sql, expected):
    assert parse_constant(sql) == expected


@pytest.mark.parametrize("sql, why", [
    ("1 + 1", "expression"), ("'a' || 'b'", "expression"), ("-'5'", "sign"), ("lower('A')", "expression"),
    ("abs", "name"), ('"text"', "quoted identifier"), ("?", "variable"), ("0x10000000000000000", "64 bits"),
    ("1.23456789012345678", "significant digits"), ("()", "empty"),
])
def test_anything_else_is_not_a_constant(sql, why):
    with pytest.raises(NotAConstant, match=why):
        parse_constant(sql)


literal_text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40)
filler = st.sampled_from(["", " ", "\n", "/* x */", "/* /* */", "-- */\n", "\t/**/ "])


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(literal_text, st.integers(-(2**63), 2**63 - 1), st.binary(max_size=20)),
       before=filler, after=filler, parens=st.integers(0, 3))
def test_constants_read_as_sqlite_reads_them(value, before, after, parens):
    if isinstance(value, str):
        literal = quote_literal(value)
    elif isinstance(value, bytes):
        literal = "x'" + value.hex() + "'"
    else:
        literal = str(value)
    sql = "(" * parens + before + literal + after + "\n" * bool(after) + ")" * parens
    conn = sqlite3.connect(":memory:")
    assert parse_constant(sql).value == conn.execute(f"SELECT {sql}").fetchone()[0] == value


@settings(max_examples=200, deadline=None)
@given(text=st.sampled_from(["5", " 5", "5.0", "3.0e+5", "+7", "-0", "1e400", "0x10", "abc", "1.5", "", "1e2"]),
       declared=st.sampled_from(["INTEGER", "TEXT", "REAL", "NUMERIC", "BLOB", ""]))
def test_stored_value_is_what_sqlite_stores(text, declared):
    """Affinity applied to a text default, against SQLite's own result."""
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE TABLE t (v {declared})")
    conn.execute("INSERT INTO t VALUES (?)", (text,))
    stored = conn.execute("SELECT v FROM t").fetchone()[0]
    try:
        mine = stored_value(Constant(ConstKind.TEXT, text), affinity(declared))
    except NotAConstant:
        return  # syncd declines to guess; the default is then not carried
    assert type(mine) is type(stored) and mine == stored


ADDED_DEFAULTS = ["0x7fffffffffffffff", "0xffffffffffffffff", "0x7fffffff", "0x80000000", "-0x10", "0x10", "1.50",
                  "1e2", "2.5e-3", "007", "+5", "-5", "-0", "-0.0", "0.0", "1.0", "3000000000", "2147483647",
                  "2147483648", "-2147483648", "9223372036854775807", "-9223372036854775808", "'abc'", "' 5'",
                  "'1e2'", "X'00'", "TRUE", "FALSE", "NULL", "(-(1))", "1e400"]


@pytest.mark.parametrize("declared", ["TEXT", "REAL", "FLOAT", "INTEGER", "NUMERIC", "BOOLEAN", "DATETIME", ""])
def test_rows_a_column_was_added_to_read_what_sqlite_reads(declared):
    """ALTER TABLE ADD COLUMN: SQLite computes the old rows' value from the literal's
    text, which is not always what a row inserted since stores; both against SQLite."""
    conn = sqlite3.connect(":memory:")
    checked = 0
    for default in ADDED_DEFAULTS:
        conn.execute("DROP TABLE IF EXISTS t")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute(f"ALTER TABLE t ADD COLUMN v {declared} DEFAULT {default}")
        conn.execute("INSERT INTO t (id) VALUES (2)")
        old, new = [r[0] for r in conn.execute("SELECT v FROM t ORDER BY id")]
        for got, model in ((old, added_column_value), (new, lambda d, a: stored_value(parse_constant(d), a))):
            try:
                mine = model(default, affinity(declared))
            except NotAConstant:
                continue  # syncd declines to guess; the default is then not carried
            assert (type(mine), repr(mine)) == (type(got), repr(got)), (default, declared)
            checked += 1
    assert checked >= len(ADDED_DEFAULTS)


@pytest.mark.parametrize("value", ["plain", "it's", "back\\slash", "new\nline", "tab\t", "\u2028 sep",
                                   "\x1b[31m", "$$", "'; DROP TABLE x; --", "ünï 表 🚀"])
def test_pg_string_literals_are_one_printable_line(value):
    lit = pg_string_literal(value)
    assert lit.isprintable() and "\n" not in lit
    assert lit.startswith("E'") == any(c in value for c in "\\\n\t\u2028\x1b")


def test_not_carried_says_why():
    assert pg_default("(random())", PgType.BIGINT, "INTEGER").not_carried == "an expression, not one literal"
    assert "does not fit" in pg_default("1.5", PgType.BIGINT, "INTEGER").not_carried
    assert "not valid SQLite" in pg_default("'open", PgType.TEXT, "TEXT").not_carried
    assert pg_default("NULL", PgType.TEXT, "TEXT") == pg_default(None, PgType.TEXT, "TEXT")  # nothing to carry


# Columns with every kind of default; Postgres must fill in what SQLite fills in.
DEFAULT_COLUMNS = {
    "i": "INTEGER DEFAULT -42", "ih": "INTEGER DEFAULT 0x7fffffffffffffff", "iq": "INTEGER DEFAULT '17'",
    "r": "REAL DEFAULT 2.5e-3", "rw": "REAL DEFAULT 3", "rinf": "REAL DEFAULT 1e999",
    "n": "NUMERIC DEFAULT '3.0e+5'", "nf": "DECIMAL(10,2) DEFAULT 12.75",
    "t": "TEXT DEFAULT 'it''s'", "tb": "TEXT DEFAULT 'back\\slash'", "tn": "TEXT DEFAULT 'two\nlines'",
    "ti": "TEXT DEFAULT 12", "tu": "TEXT DEFAULT ('ünï 表')", "b": "BLOB DEFAULT x'00ff41'",
    "bool": "BOOLEAN DEFAULT TRUE", "boolf": "BOOLEAN DEFAULT 0", "j": "JSON DEFAULT '{\"a\": [1, 2]}'",
    "dt": "DATETIME DEFAULT CURRENT_TIMESTAMP", "d": "DATE DEFAULT CURRENT_DATE",
    "none": "TEXT DEFAULT NULL", "expr": "TEXT DEFAULT (upper('x'))", "misfit": "INTEGER DEFAULT 'lots'",
    # the time of the insert as applications spell it with SQLite's date functions
    "dtf": "TEXT DEFAULT (datetime('now'))", "df": "DATE DEFAULT (date('NOW'))",
    "ep": "INTEGER DEFAULT (strftime('%s', 'now'))", "ept": "TEXT DEFAULT (strftime('%s','now'))",
    "ue": "INTEGER DEFAULT (unixepoch())", "local": "TEXT DEFAULT (datetime('now', 'localtime'))",
}
NOT_CARRIED = {"expr", "misfit", "local"}
AT_INSERT = {"dt", "d", "dtf", "df"}  # text of the time of the insert
EPOCHS = {"ep", "ept", "ue"}


async def test_carried_defaults_mean_in_postgres_what_they_mean_in_sqlite(tmp_path, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    cols = ", ".join(f'"{n}" {d}' for n, d in DEFAULT_COLUMNS.items())
    conn.execute(f"CREATE TABLE defaults (id INTEGER PRIMARY KEY, {cols})")
    conn.execute("INSERT INTO defaults(id) VALUES (1)")
    conn.commit()
    cursor = conn.execute("SELECT * FROM defaults")
    names = [d[0] for d in cursor.description]
    sqlite_row = dict(zip(names, cursor.fetchone()))
    conn.close()
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(db)}])
    r = run_cli(cfg, "init")
    # Row 1 holds the misfit default ('lots' in an INTEGER column): the table is held, exit 1
    assert r.returncode == 1 and 'held "defaults"' in r.stdout, r.stdout + r.stderr
    logged = [line for line in r.stderr.splitlines() if "event=default_not_carried" in line]
    assert sorted(re.search(r'column "(\w+)"', line).group(1) for line in logged) == sorted(NOT_CARRIED)
    pg = await asyncpg.connect(pg_dsn)
    try:
        types = {r[0]: r[1] for r in await pg.fetch(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'app'")}
        tr = pg.transaction()
        await tr.start()
        pg_row = dict(await pg.fetchrow("INSERT INTO app.defaults(id) VALUES (2) RETURNING *"))
        await tr.rollback()
    finally:
        await pg.close()
    pgtypes = {"bigint": PgType.BIGINT, "double precision": PgType.DOUBLE, "numeric": PgType.NUMERIC,
               "text": PgType.TEXT, "bytea": PgType.BYTEA, "boolean": PgType.BOOLEAN}
    for name in DEFAULT_COLUMNS:
        expected = None if name in NOT_CARRIED else converter(pgtypes[types[name]])(sqlite_row[name])
        if name in AT_INSERT:  # the time of the insert: same format, same day
            assert len(pg_row[name]) == len(sqlite_row[name]) and pg_row[name][:10] == sqlite_row[name][:10]
        elif name in EPOCHS:  # the same storage class, seconds apart at most
            assert type(pg_row[name]) is type(sqlite_row[name]), name
            assert abs(int(pg_row[name]) - int(sqlite_row[name])) < 600, name
        else:
            assert pg_row[name] == expected, name
    r = run_cli(cfg, "schema")
    notes = {n.split(":")[0].strip("- "): n for n in r.stdout.splitlines() if "not carried" in n}
    assert sorted(notes) == sorted(NOT_CARRIED)
    assert "an expression, not one literal" in notes["expr"] and "does not fit bigint" in notes["misfit"]


async def test_a_key_syncd_numbers_as_identity_keeps_no_default(tmp_path, pg_dsn):
    """Postgres takes no DEFAULT beside an identity column: the identity wins."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE numbered (id INTEGER PRIMARY KEY DEFAULT 5, v TEXT DEFAULT 'x')")
    conn.commit()
    conn.close()
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(db)}])
    r = run_cli(cfg, "init")
    assert r.returncode == 0, r.stdout + r.stderr
    pg = await asyncpg.connect(pg_dsn)
    try:
        rows = await pg.fetch("SELECT column_name, is_identity, column_default FROM information_schema.columns "
                              "WHERE table_schema = 'app' AND table_name = 'numbered' ORDER BY ordinal_position")
    finally:
        await pg.close()
    assert [tuple(r) for r in rows] == [("id", "YES", None), ("v", "NO", "'x'::text")]



def rebuild(conn: sqlite3.Connection, columns: str) -> None:
    """Table deals made anew with `columns`, the way SQLite changes a column's DEFAULT:
    create the new table, copy the rows, drop the old, rename."""
    conn.executescript(f"""
        BEGIN;
        CREATE TABLE deals_new ({columns});
        INSERT INTO deals_new SELECT * FROM deals;
        DROP TABLE deals;
        ALTER TABLE deals_new RENAME TO deals;
        COMMIT;
    """)


async def inserted_in_postgres(pg_dsn: str, insert: str) -> asyncpg.Record:
    """What an INSERT ... RETURNING gives in Postgres, rolled back."""
    pg = await asyncpg.connect(pg_dsn)
    try:
        tr = pg.transaction()
        await tr.start()
        row = await pg.fetchrow(insert)
        await tr.rollback()
    finally:
        await pg.close()
    return row


async def test_defaults_a_rebuilt_table_gained_reach_postgres(tmp_path, make_config, pg_dsn):
    """SQLite gives a column a DEFAULT only by rebuilding its table (create the new one,
    copy the rows, drop the old, rename): Postgres's copy, kept through the reload that
    follows, takes them as a fresh load would. It kept the NOT NULL and lost the DEFAULT,
    so that after a cutover an INSERT leaving the column out failed, or stored NULL, where
    SQLite stored the default."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("CREATE TABLE deals (id INTEGER PRIMARY KEY, owner TEXT, stage TEXT, amount INTEGER);"
                       "INSERT INTO deals VALUES (1, 'ann', 'won', 5);")
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        rebuild(conn, "id INTEGER PRIMARY KEY, owner TEXT NOT NULL DEFAULT 'nobody', stage TEXT DEFAULT 'new', "
                      "amount INTEGER DEFAULT 0")
        sqlite_row = conn.execute("INSERT INTO deals (id) VALUES (2) RETURNING *").fetchone()

        async def reloaded() -> bool:
            return await pg_rows(pg_dsn, "SELECT id, owner FROM app.deals ORDER BY id") == [(1, "ann"), (2, "nobody")]

        await eventually(reloaded, 30, "the rebuilt table in Postgres", d)
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    conn.close()
    pg_row = await inserted_in_postgres(pg_dsn, "INSERT INTO app.deals (id) VALUES (3) RETURNING owner, stage, amount")
    assert tuple(pg_row) == sqlite_row[1:] == ("nobody", "new", 0)


async def test_defaults_a_rebuilt_table_changed_follow_in_postgres(tmp_path, make_config, pg_dsn):
    """A rebuild that changes a column's DEFAULT is followed as one that adds a DEFAULT
    is: Postgres kept the old one, so that after a cutover an INSERT leaving the column
    out stored the value SQLite no longer gives. A DEFAULT set by hand in Postgres where
    SQLite's is not carried (as the cutover asks) stays through the reload."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("CREATE TABLE deals (id INTEGER PRIMARY KEY, stage TEXT DEFAULT 'lead', "
                       "token TEXT DEFAULT (lower(hex(randomblob(4)))), owner TEXT DEFAULT 'ann');"
                       "INSERT INTO deals (id) VALUES (1);")
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            await pg.execute("ALTER TABLE app.deals ALTER COLUMN token SET DEFAULT 'by hand'")
        finally:
            await pg.close()
        rebuild(conn, "id INTEGER PRIMARY KEY, stage TEXT DEFAULT 'new', "
                      "token TEXT DEFAULT (lower(hex(randomblob(4)))), owner TEXT DEFAULT 'ann'")
        sqlite_row = conn.execute("INSERT INTO deals (id) VALUES (2) RETURNING stage, owner").fetchone()

        async def reloaded() -> bool:
            return await pg_rows(pg_dsn, "SELECT id, stage FROM app.deals ORDER BY id") == [(1, "lead"), (2, "new")]

        await eventually(reloaded, 30, "the rebuilt table in Postgres", d)
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    conn.close()
    pg_row = await inserted_in_postgres(pg_dsn, "INSERT INTO app.deals (id) VALUES (3) RETURNING stage, owner, token")
    assert tuple(pg_row)[:2] == sqlite_row == ("new", "ann")
    assert pg_row["token"] == "by hand"
