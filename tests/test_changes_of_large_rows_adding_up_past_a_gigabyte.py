"""A batch whose rows together hold more than Postgres takes in one protocol message
(1 GB) still arrives: each row is far below any limit (8 MB here), so an application
that rewrites 130 such attachments in one UPDATE sees every one of them in Postgres,
never a daemon that retries the same batch forever while reporting Postgres as
unreachable (Postgres closes the connection on a message over 1 GB and logs
"invalid message length")."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import caught_up, pg_rows, wait_caught_up

ROWS = 130  # fewer than a batch's COPY threshold: the rows go out as one statement
SIZE = 8 * 1024 * 1024  # 130 x 8 MB = 1.04 GiB together


async def test_an_update_of_many_large_blobs_reaches_postgres(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    # The application's commit need not survive a power cut: its gigabyte is written and
    # checkpointed without waiting for the disk (syncd reads the same file either way).
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("CREATE TABLE attachments (id INTEGER PRIMARY KEY, name TEXT, data BLOB)")
    conn.executemany("INSERT INTO attachments VALUES (?, ?, x'00')", [(i, f"file {i}") for i in range(1, ROWS + 1)])
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute("UPDATE attachments SET data = randomblob(?)", (SIZE,))  # one transaction
        deadline = time.monotonic() + 240
        while not await caught_up(db, pg_dsn, "app"):
            assert "Postgres unreachable" not in d.log(), d.log()[-1500:]  # the batch failed and is retried
            assert d.alive() and time.monotonic() < deadline, d.log()[-1500:]
            await asyncio.sleep(0.5)
        sizes = await pg_rows(pg_dsn, "SELECT count(*), min(octet_length(data)) FROM app.attachments")
        assert sizes == [(ROWS, SIZE)]
        verify = run_cli(cfg, "verify", timeout=600)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert d.stop() == 0
    conn.close()
