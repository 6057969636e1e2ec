"""A column declared without a type keeps integer 1 and real 1.0 as SQLite stored them,
and its UNIQUE constraint holds them for one value (SQLite compares numbers by value):
an INSERT OR REPLACE of 1.0 deletes the row holding 1, firing no delete trigger. Postgres
carries such a column as text, '1' and '1.0', so syncd's lookup of the rows a REPLACE
removed compares the numbers among that text by value, as SQLite does: the removed row
leaves Postgres with the batch, not at the next verification."""

from __future__ import annotations

import sqlite3

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import pg_rows, wait_caught_up


async def test_replace_through_numbers_spelled_apart_removes_the_old_row(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute("CREATE TABLE tags (id INTEGER PRIMARY KEY, code UNIQUE, label TEXT)")
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO tags VALUES (1, 1, 'integer'), (2, 'x', 'text'), (3, 1000000000000000000, 'large')")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT OR REPLACE INTO tags VALUES (4, 1.0, 'real')")  # replaces row 1
        conn.execute("INSERT OR REPLACE INTO tags VALUES (5, 1e18, 'real, large')")  # replaces row 3
        assert [r[0] for r in conn.execute("SELECT id FROM tags ORDER BY id")] == [2, 4, 5]
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, code FROM app.tags ORDER BY id") == [
            (2, "x"), (4, "1.0"), (5, "1.0e+18")]
        assert await compare_table(str(app_db), pg_dsn, "app", "tags") == []
        assert d.stop() == 0


async def test_replace_through_a_key_without_a_type_removes_the_old_key(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE codes (code PRIMARY KEY, label TEXT);
        CREATE TABLE pairs (code PRIMARY KEY, label TEXT) WITHOUT ROWID;
    """)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        for table in ("codes", "pairs"):
            conn.execute(f"INSERT INTO {table} VALUES (1, 'integer'), (2, 'two'), ('x', 'text')")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        for table in ("codes", "pairs"):
            conn.execute(f"INSERT OR REPLACE INTO {table} VALUES (1.0, 'real')")  # replaces key 1
            conn.execute(f"UPDATE OR REPLACE {table} SET code = 2.0 WHERE code = 'x'")  # replaces key 2
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 2
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        for table in ("codes", "pairs"):
            assert await pg_rows(pg_dsn, f"SELECT code, label FROM app.{table} ORDER BY code") == [
                ("1.0", "real"), ("2.0", "text")], table
        assert d.stop() == 0
