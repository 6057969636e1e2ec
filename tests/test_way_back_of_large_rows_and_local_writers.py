"""After a cutover, a table the source does not replicate (`exclude`) stays writable in
SQLite (docs/cutover.md, step 2), and the application keeps writing it: the way back
must not hold SQLite's write lock long enough for such a writer's busy_timeout of 2 s
to run out, even when one Postgres transaction writes many large rows (100 attachments
of 8 MB), or empties a large table (its copy again then deletes every row SQLite holds).
A batch of the way back was once sized by its number of values, whatever their size,
and written in one transaction, and the copy again deleted every row Postgres no longer
has in its last one: the lock was held for seconds and the application's writes failed
with "database is locked"."""

from __future__ import annotations

import sqlite3
import threading
import time

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.way_back import backup_and_config, cut_over, wait_back

BUSY_TIMEOUT = 2.0


def local_writer_beside(db, make_config, tmp_path, table_sql: str, rows_sql: str = ""):
    """A file with one replicated table and one the application keeps writing after the
    cutover (local_sessions, excluded), and its configuration."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(table_sql)
    conn.execute("CREATE TABLE local_sessions (id INTEGER PRIMARY KEY, seen REAL)")  # not replicated
    if rows_sql:
        conn.execute(rows_sql)
    conn.close()
    return backup_and_config(make_config, tmp_path, db,
                             sources=[{"name": "app", "path": str(db), "exclude": ["local_sessions"]}])


async def writes_beside(db, cfg, dsn, d, postgres_sql: str) -> tuple[list, list]:
    """`postgres_sql` run in Postgres while the application writes local_sessions every
    50 ms with a busy_timeout of BUSY_TIMEOUT, until the way back has brought it to SQLite:
    (writes, failures)."""
    stop, failures, writes = threading.Event(), [], []

    def application_writer():
        app = sqlite3.connect(db, isolation_level=None, timeout=BUSY_TIMEOUT)
        while not stop.is_set():
            try:
                app.execute("INSERT INTO local_sessions (seen) VALUES (?)", (time.time(),))
                writes.append(1)
            except sqlite3.OperationalError as e:
                failures.append(f"{str(e)} at {time.time():.3f}")
            time.sleep(0.05)
        app.close()

    writer = threading.Thread(target=application_writer)
    writer.start()
    pg = await asyncpg.connect(dsn)
    try:
        await pg.execute(postgres_sql)
        await wait_back(cfg, db, dsn, daemon=d, timeout=400)
    finally:
        await pg.close()
        stop.set()
        writer.join()
    return writes, failures


async def test_local_writers_are_not_held_off_while_large_rows_come_back(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    cfg = local_writer_beside(db, make_config, tmp_path, "CREATE TABLE attachments (id INTEGER PRIMARY KEY, data BLOB)",
                              "INSERT INTO attachments VALUES (0, x'00')")
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        writes, failures = await writes_beside(
            db, cfg, pg_dsn, d, "INSERT INTO app.attachments SELECT g, decode(repeat(md5(g::text), 8 * 1024 * 1024 / 32), "
                                "'hex') FROM generate_series(1, 100) AS g")  # one transaction, 800 MB
        verify = run_cli(cfg, "verify", timeout=600)
        assert d.stop() == 0
    assert writes, "the application never wrote"
    assert failures == [], f"{len(failures)} application write(s) failed: {failures[0]}"
    assert verify.returncode == 0, verify.stdout


async def test_local_writers_are_not_held_off_while_a_table_emptied_in_postgres_is_emptied_in_sqlite(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    # 250k rows: deleted in one transaction, they hold the file for several busy timeouts
    cfg = local_writer_beside(db, make_config, tmp_path, "CREATE TABLE events (id INTEGER PRIMARY KEY, note TEXT)",
                              "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 250000) "
                              "INSERT INTO events SELECT i, 'event ' || i FROM n")
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        writes, failures = await writes_beside(db, cfg, pg_dsn, d, "TRUNCATE app.events")
        assert d.stop() == 0
    left = sqlite3.connect(db).execute("SELECT count(*) FROM events").fetchone()[0]
    assert left == 0, f"{left} row(s) Postgres no longer has are still in SQLite"
    assert writes, "the application never wrote"
    assert failures == [], f"{len(failures)} application write(s) failed: {failures[0]}"
