"""The way back's start while the application keeps its cut-over SQLite file locked: the
step that finds no record of Postgres capture (a source cut over by an older syncd, or
whose record was lost) marks every table to be copied again in SQLite, with the new
capture's position, then starts capture in Postgres. With syncd's writes into the file
bounded to a second while a step holds a pooled connection, that write can fail on the
application's lock: the copy must still happen once the lock is gone, or the changes
made in Postgres before capture started never reach SQLite. Without the position the
file held none of this capture, the way back's position was unknown (`syncd status`),
and the next periodic check took the file for an older copy put back."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from urllib.parse import urlsplit

import asyncpg

from tests.support.daemon import DaemonProcess
from tests.support.proxy import FaultProxy
from tests.support.sync import eventually
from tests.support.way_back import backup_and_config, cut_over_and_stop, typeof, wait_back

HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")  # the file is frozen: the application only holds its write lock
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"seed {i}") for i in range(1, 6)])
    conn.commit()
    conn.close()


async def cut_over_and_lose_the_record(tmp_path, make_config, pg_dsn):
    """A source cut over, then changed in Postgres with its record of capture gone: the
    database file and the configuration, no daemon running."""
    db = tmp_path / "app.db"
    make_app(db)
    # No periodic check while the test runs: the copies and the position come from the
    # way back's start alone.
    cfg = backup_and_config(make_config, tmp_path, db, stream={"schema_check_interval_seconds": 3600})
    await cut_over_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    pg = await asyncpg.connect(pg_dsn)
    try:
        # Changes Postgres's record of capture no longer covers: the record is gone.
        await pg.execute("UPDATE app.items SET v = 'changed in Postgres' WHERE id = 1")
        await pg.execute("DELETE FROM app.items WHERE id = 2")
        await pg.execute("DELETE FROM syncd.reverse WHERE source = 'app'")
    finally:
        await pg.close()
    return db, cfg


async def test_changes_made_before_capture_started_reach_sqlite_although_the_file_was_locked(
        tmp_path, make_config, pg_dsn):
    db, cfg = await cut_over_and_lose_the_record(tmp_path, make_config, pg_dsn)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), "6"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
            d.wait_log("syncd running", 30)
            await asyncio.sleep(2)  # the way back's first steps meet the lock, a second each at most
            assert holder.poll() is None, "the application's lock ended too early for the test"
            assert holder.wait(30) == 0
            await wait_back(cfg, db, pg_dsn, daemon=d)

            async def copied() -> bool:
                return typeof(db, "SELECT id, v FROM items ORDER BY id") == \
                    [(1, "changed in Postgres"), (3, "seed 3"), (4, "seed 4"), (5, "seed 5")]

            await eventually(copied, 30, "the tables copied again from Postgres", d)
            assert "no record of Postgres capture for the way back" in d.log()
            assert "event=reverse_file_older" not in d.log()
    finally:
        if holder.poll() is None:
            holder.kill()


async def test_a_capture_start_whose_reply_is_lost_leaves_the_file_at_the_new_capture(tmp_path, make_config, pg_dsn):
    """The connection drops after Postgres committed the new capture, before syncd heard:
    the file already holds that capture's position (written with the copies, before
    capture starts), so the next step does not take it for an older copy put back (a
    false warning, and a lineage of its own that made every backup of the file older)."""
    db, cfg = await cut_over_and_lose_the_record(tmp_path, make_config, pg_dsn)
    parts = urlsplit(pg_dsn)
    proxy = FaultProxy(parts.hostname, parts.port or 5432)
    try:
        # The INSERT of the new capture's record, then its transaction's COMMIT: Postgres
        # commits it and the reply never reaches the daemon.
        proxy.lose_reply_after(b"lineage = NULL")
        via = {"SYNCD_POSTGRES__DSN": pg_dsn.replace(f":{parts.port}/", f":{proxy.port}/")}
        with DaemonProcess(cfg, tmp_path / "syncd2.log", env=via) as d:
            async def lost() -> bool:
                return proxy.reply_lost.is_set()

            await eventually(lost, 30, "the capture start's COMMIT", d)

            async def copied() -> bool:
                return typeof(db, "SELECT id, v FROM items WHERE id = 1") == [(1, "changed in Postgres")]

            await eventually(copied, 30, "the tables copied again from Postgres", d)
            pg = await asyncpg.connect(pg_dsn)
            try:
                await pg.execute("INSERT INTO app.items VALUES (6, 'after the drop')")
            finally:
                await pg.close()

            async def followed() -> bool:
                return typeof(db, "SELECT id, v FROM items WHERE id = 6") == [(6, "after the drop")]

            await eventually(followed, 30, "a change made in Postgres after the drop", d)
            assert "event=reverse_file_older" not in d.log()
            assert "copied again: capture started late" in d.log()
    finally:
        proxy.close()
