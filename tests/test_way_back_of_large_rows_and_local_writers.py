"""After a cutover, a table the source does not replicate (`exclude`) stays writable in
SQLite (docs/cutover.md, step 2), and the application keeps writing it: the way back
must not hold SQLite's write lock long enough for such a writer's busy_timeout of 2 s
to run out, even when one Postgres transaction writes many large rows (150 attachments
of 8 MB). Today a batch of the way back is sized by its number of values, whatever
their size, and written in one transaction: the lock is held for seconds and the
application's writes fail with "database is locked"."""

from __future__ import annotations

import sqlite3
import threading
import time

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.way_back import backup_and_config, cut_over, wait_back

BUSY_TIMEOUT = 2.0


async def test_local_writers_are_not_held_off_while_large_rows_come_back(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE attachments (id INTEGER PRIMARY KEY, data BLOB)")
    conn.execute("CREATE TABLE local_sessions (id INTEGER PRIMARY KEY, seen REAL)")  # not replicated
    conn.execute("INSERT INTO attachments VALUES (0, x'00')")
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db,
                            sources=[{"name": "app", "path": str(db), "exclude": ["local_sessions"]}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        stop, failures, writes = threading.Event(), [], []

        def application_writer():
            app = sqlite3.connect(db, isolation_level=None, timeout=BUSY_TIMEOUT)
            while not stop.is_set():
                try:
                    app.execute("INSERT INTO local_sessions (seen) VALUES (?)", (time.time(),))
                    writes.append(1)
                except sqlite3.OperationalError as e:
                    failures.append(str(e))
                time.sleep(0.05)
            app.close()

        writer = threading.Thread(target=application_writer)
        writer.start()
        pg = await asyncpg.connect(pg_dsn)
        try:
            await pg.execute("INSERT INTO app.attachments SELECT g, decode(repeat(md5(g::text), 8 * 1024 * 1024 / 32), "
                             "'hex') FROM generate_series(1, 150) AS g")  # one transaction, 1.2 GB
            await wait_back(cfg, db, pg_dsn, daemon=d, timeout=400)
        finally:
            await pg.close()
            stop.set()
            writer.join()
        verify = run_cli(cfg, "verify", timeout=600)
        assert d.stop() == 0
    assert writes, "the application never wrote"
    assert failures == [], f"{len(failures)} application write(s) failed: {failures[0]}"
    assert verify.returncode == 0, verify.stdout
