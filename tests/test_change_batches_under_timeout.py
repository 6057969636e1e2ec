"""A batch of changes Postgres cannot take within the statement timeout (a slow server, a
slow trigger of the application's) makes the stream go on in smaller batches, said in the
log, instead of trying the same batch again for ever."""

from __future__ import annotations

import sqlite3

from tests.support.daemon import DaemonProcess
from tests.support.sync import pg_rows, pg_statements, wait_caught_up

# Postgres made slow for large statements: one that inserts more than 100 rows takes a
# second, longer than the statement timeout below; smaller ones go through at once.
SLOW_FOR_LARGE = """
CREATE FUNCTION app.slow_for_large() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT count(*) FROM inserted) > 100 THEN PERFORM pg_sleep(1); END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER slow_for_large AFTER INSERT ON app.items REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION app.slow_for_large();
ALTER TABLE app.items ENABLE ALWAYS TRIGGER slow_for_large;
"""


async def test_a_batch_over_the_statement_timeout_is_applied_in_smaller_batches(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    # Batches of 200 changes (800 for a backlog, read ahead): halved until one of 100 goes
    # through; the retries after each timeout a second apart at most.
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={
        "postgres": {"statement_timeout_seconds": 0.5}, "verify": {"interval_seconds": 0},
        "stream": {"batch_size": 200, "retry_max_backoff_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        await pg_statements(pg_dsn, SLOW_FOR_LARGE)
        conn.executemany("INSERT INTO items VALUES (?, 'x')", ((i,) for i in range(400)))
        conn.commit()
        conn.close()
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d, timeout=30)
        assert d.stop() == 0
    assert "event=stream_batches_smaller" in d.log(), d.log()
    assert await pg_rows(pg_dsn, "SELECT count(*) FROM app.items") == [(400,)]
