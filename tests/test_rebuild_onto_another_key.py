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


async def test_a_table_rebuilt_onto_another_key_that_a_foreign_key_points_at_holds_only_itself(
        app_db, make_config, pg_dsn, tmp_path):
    """A table of someone's in Postgres has a foreign key onto the table's old key, which
    keeps Postgres from dropping that key: the table is held, naming the foreign key,
    and the others stream on; once the foreign key is dropped the table loads on its new
    key. Before, the source failed ("unexpected error") and retried for good, every table
    of it stopped."""
    from tests.support.sync import eventually, pg_rows, pg_statements

    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, code TEXT NOT NULL); "
                       "CREATE TABLE notes (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO items VALUES (1, 'a');")
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        await pg_statements(pg_dsn, "CREATE TABLE public.refs (item_id bigint REFERENCES app.items)")
        conn.executescript("BEGIN; CREATE TABLE items_new (id INTEGER NOT NULL, code TEXT PRIMARY KEY) WITHOUT ROWID; "
                           "INSERT INTO items_new SELECT id, code FROM items; DROP TABLE items; "
                           "ALTER TABLE items_new RENAME TO items; COMMIT;")
        conn.execute("INSERT INTO notes VALUES (1, 'still streaming')")

        async def held() -> bool:
            return (await table_states(pg_dsn, "app")).get("items", ("",))[0] == "held"

        await eventually(held, 60, "the table held", d)
        reason = (await table_states(pg_dsn, "app"))["items"][1]
        assert "refs_item_id_fkey" in reason, reason

        async def streamed() -> bool:
            return await pg_rows(pg_dsn, "SELECT v FROM app.notes") == [("still streaming",)]

        await eventually(streamed, 30, "the other table streamed", d)
        await pg_statements(pg_dsn, "ALTER TABLE public.refs DROP CONSTRAINT refs_item_id_fkey")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, code FROM app.items") == [(1, "a")]
        assert d.stop() == 0
    conn.close()
    assert "unexpected error" not in d.log(), d.log()
