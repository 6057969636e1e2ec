"""`syncd status` without the daemon's endpoint still sees a daemon that fails a step
again and again: the daemon notes it in Postgres, with the reason and since when, and
status trusts the note only while that daemon holds the source."""

from __future__ import annotations

import json
import signal
import sqlite3

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.sync import wait_caught_up

BLOCK = ("CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
         "$$BEGIN RAISE EXCEPTION 'bookkeeping refused by a test trigger'; END$$; "
         "CREATE TRIGGER refuse BEFORE INSERT ON syncd.applied_batches FOR EACH ROW EXECUTE FUNCTION refuse()")
UNBLOCK = "DROP TRIGGER refuse ON syncd.applied_batches"


def status(cfg) -> tuple[int, dict]:
    r = run_cli(cfg, "status", "--json")
    return r.returncode, json.loads(r.stdout)["sources"][0]


async def pg(dsn: str, sql: str):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql) if sql.lstrip().upper().startswith("SELECT") else await conn.execute(sql)
    finally:
        await conn.close()


def write(db, key: int) -> None:
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO t VALUES (?, 'x')", (key,))
    conn.commit()
    conn.close()


async def test_a_failing_daemon_is_reported_without_its_endpoint(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');")
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db)}])  # no metrics listener: no endpoint to ask
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        await pg(pg_dsn, BLOCK)
        write(db, 2)
        wait_for(lambda: status(cfg)[1]["state"] == "failing", 60, "status to see the daemon failing", daemon=d)
        code, src = status(cfg)
        assert code == 2 and src["daemon_running"] is True
        assert "bookkeeping refused by a test trigger" in src["daemon_detail"]
        assert any("the daemon reports failing: " in p["message"] and "refused by a test trigger" in p["message"]
                   for p in src["problems"]), src["problems"]
        text = run_cli(cfg, "status").stdout
        assert "the daemon reports failing: unexpected error: bookkeeping refused by a test trigger" in text

        await pg(pg_dsn, UNBLOCK)  # the step succeeds again: the note is withdrawn
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        wait_for(lambda: status(cfg)[1]["state"] == "streaming", 60, "status to see the daemon recovered", daemon=d)
        assert status(cfg)[1]["daemon_detail"] is None
        assert await pg(pg_dsn, "SELECT failing FROM syncd.sources WHERE source = 'app'") is None

        await pg(pg_dsn, BLOCK)
        write(db, 3)
        wait_for(lambda: status(cfg)[1]["state"] == "failing", 60, "the daemon failing again", daemon=d)
        d.kill9()
    # The note outlives the daemon killed while failing; status does not show it as today's.
    assert await pg(pg_dsn, "SELECT failing FROM syncd.sources WHERE source = 'app'") is not None
    code, src = status(cfg)
    assert (code, src["state"], src["daemon_detail"]) == (2, "daemon_not_running", None)
    await pg(pg_dsn, UNBLOCK)
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await pg(pg_dsn, "SELECT failing FROM syncd.sources WHERE source = 'app'") is not None
        code, src = status(cfg)
        assert (src["state"], src["daemon_detail"], src["daemon_running"]) == ("streaming", None, True)
        assert not any("failing" in p["message"] for p in src["problems"]), src["problems"]


async def test_a_file_damaged_while_streamed_is_reported_without_the_endpoint(tmp_path, make_config, pg_dsn):
    """Pages of the file overwritten while the daemon streams it (a bad disk): the daemon
    stops streaming the file and waits for it, which status could not see for itself (the
    file is there, its changelog reads): it said the source was streaming."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, timeout=10)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "x" * 200) for i in range(2000)])
    conn.commit()
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    cfg = make_config([{"name": "app", "path": str(db)}])  # no metrics listener: no endpoint to ask
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        d.proc.send_signal(signal.SIGSTOP)  # the changes are met only once the pages are damaged
        try:
            conn.execute("UPDATE t SET v = 'y'")
            conn.commit()
            conn.close()
            with open(db, "r+b") as f:  # leaf pages of t, past sqlite_master (page 1) and t's root
                f.seek(page * 5)
                f.write(b"\xff" * page * 3)
        finally:
            d.proc.send_signal(signal.SIGCONT)
        d.wait_log(f"SQLite file {db} is damaged")
        wait_for(lambda: status(cfg)[1]["state"] != "streaming", 30, "status to see the file not streamed", daemon=d)
        code, src = status(cfg)
        assert code == 2 and src["state"] == "failing", src
        assert f"SQLite file {db} is damaged" in src["daemon_detail"], src
        assert d.stop() == 0
