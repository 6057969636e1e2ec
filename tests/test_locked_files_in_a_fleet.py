"""A fleet where some applications hold their file under a long exclusive lock
(rollback-journal mode, `BEGIN EXCLUSIVE`): the other files keep streaming as before,
and the locked ones catch up once their locks are gone. syncd's SQLite threads are
shared by every source, so a locked file must give its thread back instead of waiting
on it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import asyncpg

from tests.support.daemon import DaemonProcess
from tests.support.sync import wait_caught_up

THREADS = 2
LOCKED = 5  # more locked files than threads
HEALTHY = 3
HOLD_SECONDS = 12

HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("INSERT INTO items (v) VALUES ('written under the lock')")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def make_file(path) -> None:
    import sqlite3
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = delete")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO items (v) VALUES (?)", [(f"{path.stem}-{i}",) for i in range(5)])
    conn.commit()
    conn.close()


def write(path, value: str) -> None:
    import sqlite3
    conn = sqlite3.connect(path, timeout=5)
    conn.execute("INSERT INTO items (v) VALUES (?)", (value,))
    conn.commit()
    conn.close()


async def test_files_locked_by_their_applications_do_not_stall_the_others(tmp_path, make_config, pg_dsn):
    files = tmp_path / "files"
    files.mkdir()
    locked = [files / f"locked{i}.db" for i in range(LOCKED)]
    healthy = [files / f"healthy{i}.db" for i in range(HEALTHY)]
    for p in locked + healthy:
        make_file(p)
    cfg = make_config([{"name": "{stem}", "path": str(files / "*.db")}],
                      sections={"sqlite": {"threads": THREADS}, "verify": {"interval_seconds": 0}})
    pg = await asyncpg.connect(pg_dsn)
    holders: list[subprocess.Popen] = []
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            for p in locked + healthy:
                await wait_caught_up(p, pg_dsn, p.stem, daemon=d)
            holders = [subprocess.Popen([sys.executable, "-c", HOLDER, str(p), str(HOLD_SECONDS)],
                                        stdout=subprocess.PIPE, text=True) for p in locked]
            for h in holders:
                assert h.stdout.readline().strip() == "locked"
            # Each locked file now costs the daemon a read that cannot succeed; the
            # healthy files' changes must still show up promptly.
            waits = []
            for i in range(12):
                p = healthy[i % HEALTHY]
                marker = f"change {i}"
                write(p, marker)
                written = time.monotonic()
                while not await pg.fetchval(f'SELECT count(*) FROM "{p.stem}".items WHERE v = $1', marker):
                    assert time.monotonic() - written < 60, f"{marker} of {p.name} never reached Postgres"
                    assert d.alive(), d.log()[-3000:]
                    await asyncio.sleep(0.02)
                waits.append(time.monotonic() - written)
            # A generous bound: waiting on a locked file costs seconds per read (its busy
            # timeout); polls and batch reads of healthy files take milliseconds.
            assert max(waits) < 2.0, waits
            assert all(h.poll() is None for h in holders), "a lock ended before the healthy files were measured"
            for h in holders:
                h.wait(HOLD_SECONDS + 30)
            # Once their locks are gone, the locked files' own changes arrive too.
            for p in locked:
                await wait_caught_up(p, pg_dsn, p.stem, daemon=d)
                assert await pg.fetchval(f'SELECT count(*) FROM "{p.stem}".items '
                                         "WHERE v = 'written under the lock'") == 1
            assert d.stop() == 0
    finally:
        for h in holders:
            h.kill()
        await pg.close()
