"""Logs: one line per event, human-readable or JSON, never a password."""

from __future__ import annotations

import json
import sqlite3

from tests.conftest import write_config
from tests.support.daemon import DaemonProcess
from tests.support.sync import wait_caught_up


async def test_json_log_lines(tmp_path, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');"
                       "CREATE VIEW v AS SELECT * FROM t;")
    conn.commit()
    secret_dsn = pg_dsn.replace("postgres@", "postgres:hunter2@")
    cfg = write_config(tmp_path / "syncd.toml", secret_dsn, [{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log", args=("--log-format", "json")) as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        text = d.log()
    assert "hunter2" not in text
    lines = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    assert all({"ts", "level", "msg"} <= set(line) for line in lines)
    events = {(line.get("event"), line.get("table")): line for line in lines}
    started = events[("snapshot_started", "t")]
    assert started["source"] == "app" and "1 rows" in started["msg"]
    finished = events[("snapshot_finished", "t")]
    assert "rows/s" in finished["msg"]
    assert events[("table_skipped", "v")]["msg"] == ("not replicated: a view (no stored data); recreate it in "
                                                     "Postgres from its SQL, rewriting SQLite-only functions")
    assert events[("stopped", None)]["level"] == "info"


def test_unretrieved_errors_reach_the_log_as_one_line(caplog):
    """asyncio's "never retrieved" reports go through syncd's log: asyncpg's
    cancelled-connect leftover at debug level, anything else (other network errors
    included) as an error."""
    import asyncio
    import gc
    import logging

    from syncd.log import loop_exception_handler

    async def orphan(exc: BaseException) -> None:
        asyncio.get_running_loop().set_exception_handler(loop_exception_handler)
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(exc)
        del fut
        gc.collect()

    with caplog.at_level(logging.DEBUG, logger="syncd"):
        asyncio.run(orphan(ConnectionError("unexpected connection_lost() call")))
        asyncio.run(orphan(ValueError("a bug")))
        asyncio.run(orphan(ConnectionResetError("reset by peer")))
    got = [(r.levelno, r.getMessage()) for r in caplog.records if getattr(r, "event", None) == "asyncio"]
    assert got == [
        (logging.DEBUG, "Future exception was never retrieved: ConnectionError('unexpected connection_lost() call')"),
        (logging.ERROR, "Future exception was never retrieved: ValueError('a bug')"),
        (logging.ERROR, "Future exception was never retrieved: ConnectionResetError('reset by peer')"),
    ]
