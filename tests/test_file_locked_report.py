"""A file its application keeps locked is reported as file_locked, and no longer once
the lock is gone, also when the application wrote nothing under it (a ROLLBACK) and
the file then has nothing for the daemon to do but give its connection back."""

from __future__ import annotations

import subprocess
import sys
import time

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.ports import free_port
from tests.support.sync import wait_caught_up
from tests.test_locked_files_in_a_fleet import make_file, write

HOLD_SECONDS = 15  # past the daemon's 10 s before it reports a locked file

HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("INSERT INTO items (v) VALUES ('never committed')")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
print("released", flush=True)
"""


async def test_a_lock_given_up_without_a_change_is_no_longer_reported(tmp_path, make_config, pg_dsn):
    path = tmp_path / "app.db"
    make_file(path)
    cfg = make_config([{"name": "app", "path": str(path)}], metrics_listen=f"127.0.0.1:{free_port()}",
                      sections={"sqlite": {"idle_close_seconds": 3}, "verify": {"interval_seconds": 0}})
    pg = await asyncpg.connect(pg_dsn)
    holder = None
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await wait_caught_up(path, pg_dsn, "app", daemon=d)
            write(path, "applied just now")
            await wait_caught_up(path, pg_dsn, "app", daemon=d)
            # The daemon's next step is its idle close, a few seconds on: under the lock.
            holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(HOLD_SECONDS)],
                                      stdout=subprocess.PIPE, text=True)
            assert holder.stdout.readline().strip() == "locked"
            d.wait_log("is locked by its application", timeout=HOLD_SECONDS + 5)
            assert holder.stdout.readline().strip() == "released"
            holder.wait(10)
            released = time.monotonic()
            d.wait_log("recovered: the SQLite file is no longer locked", timeout=20)
            assert time.monotonic() - released < 10
            status = run_cli(cfg, "status", "--all", timeout=60).stdout
            line = next((ln for ln in status.splitlines() if ln.split()[:1] == ["app"]), status[-2000:])
            assert "streaming" in line and "locked" not in status, status[-2000:]
            assert d.stop() == 0
    finally:
        if holder is not None:
            holder.kill()
        await pg.close()
