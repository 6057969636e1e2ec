"""A migration that rebuilds a table onto another key (create the new table, copy,
drop the old one, rename), leaving the old key's columns behind: a composite key
replaced by a surrogate `id`, or a key dropped altogether. Postgres still has the old
key's columns, NOT NULL as a primary key's columns are; the table is loaded again on
its new key and must stream on, equal to SQLite, without an operator."""

from __future__ import annotations

import sqlite3

import pytest

from tests.support.compare import compare_keyless, compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import table_states, wait_caught_up

CASES = {
    "composite key to a surrogate id": (
        "CREATE TABLE t (region TEXT, n INTEGER, name TEXT, PRIMARY KEY (region, n))",
        [("eu", i, f"name {i}") for i in range(5)],
        "CREATE TABLE t_new (id INTEGER PRIMARY KEY, name TEXT)",
        "INSERT INTO t_new (name) SELECT name FROM t"),
    "key dropped": (
        "CREATE TABLE t (code TEXT PRIMARY KEY, name TEXT)",
        [(f"c{i}", f"name {i}") for i in range(5)],
        "CREATE TABLE t_new (name TEXT, note TEXT)",
        "INSERT INTO t_new (name) SELECT name FROM t"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_table_rebuilt_onto_another_key_streams_on(app_db, make_config, pg_dsn, tmp_path, case):
    old, rows, new, copy = CASES[case]
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute(old)
    conn.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(rows[0]))})", rows)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.executescript(f"BEGIN; {new}; {copy}; DROP TABLE t; ALTER TABLE t_new RENAME TO t; COMMIT;")
        conn.execute("INSERT INTO t (name) VALUES ('after the rebuild')")
        try:
            await wait_caught_up(app_db, pg_dsn, "app", daemon=d, timeout=30, settled=("streaming",))
        except AssertionError:
            pass  # the assertions below say what went wrong
        state, reason = (await table_states(pg_dsn, "app"))["t"]
        assert state == "streaming", reason
        if "id INTEGER PRIMARY KEY" in new:
            assert await compare_table(str(app_db), pg_dsn, "app", "t") == []
        else:
            assert await compare_keyless(str(app_db), pg_dsn, "app", "t") == []
        assert d.stop() == 0
    v = run_cli(cfg, "verify")
    assert v.returncode == 0, v.stdout + v.stderr
