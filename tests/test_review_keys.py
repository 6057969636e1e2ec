"""Review: key handling in capture and apply.

1. INSERT OR REPLACE through a key with a non-BINARY collation (NOCASE, RTRIM), with
   the application's recursive_triggers off: SQLite deletes the row whose key is
   equal under the collation without firing delete triggers, and nothing records its
   (binary-different) key, so Postgres keeps it.
2. A table held for a NULL key or a key value Postgres cannot take stays held after
   the application fixes the row as the hold message says: the fix records a delete
   of the bad key, and the delete's key is judged like a row (NULL / misfit).
"""

from __future__ import annotations

import sqlite3

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.sync import table_states, wait_caught_up


async def test_replace_through_nocase_and_rtrim_key(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE tags (name TEXT PRIMARY KEY COLLATE NOCASE, uses INTEGER);
        CREATE TABLE codes (code TEXT PRIMARY KEY COLLATE RTRIM, v INTEGER);
        INSERT INTO tags VALUES ('python', 1), ('rust', 2);
        INSERT INTO codes VALUES ('A1', 1), ('B2', 2);
    """)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("PRAGMA recursive_triggers = OFF")  # SQLite's default
        conn.execute("INSERT OR REPLACE INTO tags VALUES ('Python', 10)")  # replaces 'python'
        conn.execute("REPLACE INTO codes VALUES ('A1  ', 11)")  # replaces 'A1'
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert conn.execute("SELECT name FROM tags ORDER BY 1").fetchall() == [("Python",), ("rust",)]
    problems = await compare_table(str(app_db), pg_dsn, "app", "tags")
    problems += await compare_table(str(app_db), pg_dsn, "app", "codes")
    assert problems == []


async def test_null_key_hold_resumes_once_the_row_gets_a_key(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    # A TEXT PRIMARY KEY of a rowid table accepts NULL (SQLite's legacy quirk).
    conn.executescript("""
        CREATE TABLE accounts (code TEXT PRIMARY KEY, owner TEXT);
        INSERT INTO accounts VALUES ('a1', 'ann');
    """)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO accounts VALUES (NULL, 'bob')")
        wait_for(lambda: "table held" in d.log(), 30, "the hold", d)
        assert "Give those rows a key in SQLite" in d.log()
        # Do what the message says.
        conn.execute("UPDATE accounts SET code = 'b1' WHERE code IS NULL")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d, timeout=30)
        assert d.stop() == 0
    assert await compare_table(str(app_db), pg_dsn, "app", "accounts") == []


async def test_misfit_key_hold_resumes_once_the_key_is_fixed(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE lines (region TEXT, num INTEGER, item TEXT, PRIMARY KEY (region, num));
        INSERT INTO lines VALUES ('eu', 1, 'x');
    """)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO lines VALUES ('eu', 'two', 'y')")  # INTEGER affinity keeps the text
        wait_for(lambda: "table held" in d.log(), 30, "the hold", d)
        conn.execute("UPDATE lines SET num = 2 WHERE num = 'two'")  # fix the row in SQLite
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d, timeout=30)
        assert d.stop() == 0
    states = await table_states(pg_dsn, "app")
    assert states["lines"][0] == "streaming", states
    assert await compare_table(str(app_db), pg_dsn, "app", "lines") == []
