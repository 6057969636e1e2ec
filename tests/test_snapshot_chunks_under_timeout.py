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


async def test_a_reload_whose_rows_replace_the_live_ones_over_the_statement_timeout_holds_its_table(
        tmp_path, make_config, pg_dsn):
    """A table reloaded aside (a keyless table after a VACUUM) whose reloaded rows take
    longer to replace the live ones, in one transaction, than [postgres]
    statement_timeout_seconds: the table is held, saying so, its rows in Postgres as they
    were, while the source's other tables stream on; restarted (with a longer timeout),
    the reload ends. It was the same replacement started again for ever, "Postgres
    unreachable" each time, the whole source stalled, and its "chunks" halved for nothing."""
    from tests.support.compare import compare_keyless, compare_table
    from tests.support.daemon import wait_for
    from tests.support.sync import eventually

    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE a_free (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE z_log (host TEXT, v INTEGER)")
    conn.executemany("INSERT INTO z_log VALUES (?, ?)", [(f"h{i % 3}", i) for i in range(600)])
    sections = {"verify": {"interval_seconds": 0}, "stream": {"retry_max_backoff_seconds": 1}}
    cfg = make_config([{"name": "app", "path": str(db)}],
                      sections={**sections, "postgres": {"statement_timeout_seconds": 2}})
    with DaemonProcess(cfg, tmp_path / "one.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        # Postgres made slow for the whole table: each row's check takes 10 ms (600 rows: 6 s).
        await pg_rows(pg_dsn, "CREATE FUNCTION public.slow_ok(bigint) RETURNS boolean LANGUAGE sql AS "
                              "'SELECT pg_sleep(0.01) IS NOT NULL'")
        await pg_rows(pg_dsn, "ALTER TABLE app.z_log ADD CONSTRAINT slow CHECK (public.slow_ok(v)) NOT VALID")
        conn.execute("VACUUM")  # renumbers the rowids: reloaded aside
        wait_for(lambda: "table held" in d.log(), 30, "the held table in the log", d)
        conn.execute("INSERT INTO a_free VALUES (1, 'meanwhile')")

        async def free_streamed():
            return await pg_rows(pg_dsn, "SELECT v FROM app.a_free WHERE id = 1") == [("meanwhile",)]

        await eventually(free_streamed, 30, "the other table's change, while the table is held", d)
        assert await pg_rows(pg_dsn, "SELECT count(*) FROM app.z_log") == [(600,)]  # as they were
        assert d.stop() == 0
        log = d.log()
    held = next(line for line in log.splitlines() if "table held" in line)
    assert "table=z_log" in held and "statement_timeout_seconds (2 s)" in held, held
    assert "unreachable" not in log and "snapshot_chunks_smaller" not in log, log
    cfg = make_config([{"name": "app", "path": str(db)}],
                      sections={**sections, "postgres": {"statement_timeout_seconds": 30}})
    with DaemonProcess(cfg, tmp_path / "two.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "a_free") == []
    assert await compare_keyless(str(db), pg_dsn, "app", "z_log") == []
