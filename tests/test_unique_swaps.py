"""UNIQUE constraints never hold up streaming: during dual-write they are DEFERRABLE
INITIALLY DEFERRED, so a batch carrying two rows that swapped a value (or any
permutation) commits; a table being loaded has none (its chunks come from several
moments); and a constraint SQLite's data cannot meet in Postgres (values SQLite keeps
apart that Postgres calls equal) is dropped and reported, never left holding the table."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading

import asyncpg

from tests.support.daemon import DaemonProcess
from tests.support.sync import long_read, pg_rows, table_states, wait_caught_up


async def unique_constraints(dsn: str) -> dict[str, bool]:
    return {r[0]: r[1] for r in await pg_rows(
        dsn, "SELECT conname, condeferrable FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
             "WHERE n.nspname = 'app' AND contype = 'u'")}


async def test_swapping_unique_values_while_the_daemon_streams(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE seat (id INTEGER PRIMARY KEY, place TEXT NOT NULL UNIQUE, who TEXT);
        CREATE TABLE pair (a INTEGER, b INTEGER, label TEXT, PRIMARY KEY (a), UNIQUE (b, label));
    """)
    conn.executemany("INSERT INTO seat VALUES (?, ?, ?)", [(i, f"P{i}", f"w{i}") for i in range(1, 41)])
    conn.executemany("INSERT INTO pair VALUES (?, ?, 'x')", [(i, i) for i in range(1, 21)])
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"stream": {"batch_size": 7}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log("created seat: UNIQUE constraint on (place)")
        assert (await unique_constraints(pg_dsn)) == {"seat_place_key": True, "pair_b_label_key": True}

        def writer() -> None:
            w = sqlite3.connect(app_db, isolation_level=None, timeout=30)
            rnd = random.Random(7)
            for _ in range(150):
                a, b = rnd.sample(range(1, 41), 2)
                # What an application does to swap two unique values: through a free one.
                w.execute("BEGIN IMMEDIATE")
                pa = w.execute("SELECT place FROM seat WHERE id = ?", (a,)).fetchone()[0]
                pb = w.execute("SELECT place FROM seat WHERE id = ?", (b,)).fetchone()[0]
                w.execute("UPDATE seat SET place = 'tmp' WHERE id = ?", (a,))
                w.execute("UPDATE seat SET place = ? WHERE id = ?", (pa, b))
                w.execute("UPDATE seat SET place = ? WHERE id = ?", (pb, a))
                # a three-way rotation on a composite unique
                x, y, z = rnd.sample(range(1, 21), 3)
                bx, by, bz = (w.execute("SELECT b FROM pair WHERE a = ?", (k,)).fetchone()[0] for k in (x, y, z))
                w.execute("UPDATE pair SET b = -1 WHERE a = ?", (x,))
                w.execute("UPDATE pair SET b = ? WHERE a = ?", (bx, y))
                w.execute("UPDATE pair SET b = ? WHERE a = ?", (by, z))
                w.execute("UPDATE pair SET b = ? WHERE a = ?", (bz, x))
                w.execute("COMMIT")
            w.close()

        t = threading.Thread(target=writer)
        t.start()
        while t.is_alive():
            await asyncio.sleep(0.2)
            states = await table_states(pg_dsn, "app")
            assert all(s == "streaming" for s, _ in states.values()), states
        t.join()
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert (await table_states(pg_dsn, "app")) == {"seat": ("streaming", None), "pair": ("streaming", None)}
        expect = conn.execute("SELECT id, place FROM seat ORDER BY id").fetchall()
        assert await pg_rows(pg_dsn, "SELECT id, place FROM app.seat ORDER BY id") == expect
        expect = conn.execute("SELECT a, b FROM pair ORDER BY a").fetchall()
        assert await pg_rows(pg_dsn, "SELECT a, b FROM app.pair ORDER BY a") == expect
        # still there and still enforced at commit
        assert (await unique_constraints(pg_dsn)) == {"seat_place_key": True, "pair_b_label_key": True}
        assert "dropped" not in d.log() and "held" not in d.log()
        assert d.stop() == 0


async def test_a_unique_constraint_the_data_cannot_meet_is_dropped_not_holding_the_table(
        app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    # No declared type: SQLite keeps integer 2 and text '2' apart; Postgres holds both as text '2'.
    conn.executescript("CREATE TABLE tag (id INTEGER PRIMARY KEY, v UNIQUE); "
                       "INSERT INTO tag VALUES (1, 'a'), (2, 2);")
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log("created tag: UNIQUE constraint on (v)")
        conn.execute("INSERT INTO tag VALUES (3, '2')")
        conn.execute("INSERT INTO tag VALUES (4, 'b')")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log('UNIQUE constraint "tag_v_key" dropped')
        assert await pg_rows(pg_dsn, "SELECT id, v FROM app.tag ORDER BY id") == [(1, "a"), (2, "2"), (3, "2"),
                                                                               (4, "b")]
        assert (await table_states(pg_dsn, "app"))["tag"] == ("streaming", None)
        assert await unique_constraints(pg_dsn) == {}
        assert d.stop() == 0


async def test_a_constraint_to_drop_waits_for_a_long_reader_a_few_seconds_at_a_time(
        app_db, make_config, pg_dsn, tmp_path):
    # Dropping the constraint needs the table to itself; queries queue behind a waiting
    # DROP. With someone's long read open on the table, the drop gives up after 5 s and
    # is tried again with backoff (said in the log), so other queries on the table wait
    # seconds, not a whole statement timeout; once the reader is done, the drop goes through.
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE tag (id INTEGER PRIMARY KEY, v UNIQUE); "
                       "INSERT INTO tag VALUES (1, 'a'), (2, 2);")
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={
        "postgres": {"statement_timeout_seconds": 120}, "stream": {"retry_max_backoff_seconds": 2}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log("created tag: UNIQUE constraint on (v)")
        other = await asyncpg.connect(pg_dsn)
        try:
            async with long_read(pg_dsn, "app.tag"):
                conn.execute("INSERT INTO tag VALUES (3, '2')")
                d.wait_log('another Postgres session holds the table', timeout=60)
                for _ in range(3):  # a liveness bound: each wait behind the DROP is 5 s at most
                    assert await other.fetchval("SELECT count(*) FROM app.tag", timeout=30) == 2
                    await asyncio.sleep(1)
        finally:
            await other.close()
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log('UNIQUE constraint "tag_v_key" dropped')
        assert await pg_rows(pg_dsn, "SELECT id, v FROM app.tag ORDER BY id") == [(1, "a"), (2, "2"), (3, "2")]
        assert (await table_states(pg_dsn, "app"))["tag"] == ("streaming", None)
        assert d.stop() == 0
