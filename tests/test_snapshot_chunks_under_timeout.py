"""A snapshot chunk Postgres cannot take within the statement timeout (a slow server,
wide rows) makes the load go on in smaller chunks, said in the log, instead of starting
the same chunk again for ever."""

from __future__ import annotations

import sqlite3

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import pg_rows, wait_caught_up

ROWS = 20_000
# Postgres made slow for large statements: one that inserts more than 1,000 rows takes
# a second, longer than the statement timeout below; smaller ones go through at once.
SLOW_FOR_LARGE = """
CREATE FUNCTION app.slow_for_large() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT count(*) FROM inserted) > 1000 THEN PERFORM pg_sleep(1); END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER slow_for_large AFTER INSERT ON app.wide REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION app.slow_for_large();
ALTER TABLE app.wide ENABLE ALWAYS TRIGGER slow_for_large;
"""
# ENABLE ALWAYS: syncd disables the application's own triggers on the tables it writes
# while SQLite is the application's database, except one asked to run on every row.


async def test_a_chunk_over_the_statement_timeout_is_loaded_in_smaller_chunks(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE wide (id INTEGER PRIMARY KEY, a TEXT, b TEXT)")
    conn.executemany("INSERT INTO wide VALUES (?, ?, ?)", ((i, "a" * 50, "b" * 50) for i in range(ROWS)))
    conn.commit()
    conn.close()
    # Chunks of 8,000 rows to start with: halved three times (4,000, 2,000, 1,000) before
    # one goes through; the retries after each timeout a second apart at most.
    cfg = make_config([{"name": "app", "path": str(db)}], sections={
        "postgres": {"statement_timeout_seconds": 0.5},
        "stream": {"snapshot_chunk_rows": 8000, "retry_max_backoff_seconds": 1}})
    assert run_cli(cfg, "init").returncode == 0
    pg = await asyncpg.connect(pg_dsn)
    try:
        await pg.execute(SLOW_FOR_LARGE)
    finally:
        await pg.close()
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=240)
        assert "event=snapshot_chunks_smaller" in d.log()
        assert "a statement ran over [postgres] statement_timeout_seconds (0.5 s)" in d.log()
    assert await pg_rows(pg_dsn, "SELECT count(*) FROM app.wide") == [(ROWS,)]
