"""A `syncd rollback` killed (kill -9, the machine going down) after its last Postgres
transaction committed, the direction turned back to SQLite, but before it unfroze the
SQLite file: the file's unfreeze waits for its write lock, which an application
connection may hold a moment. Postgres stays frozen after a rollback, by design, so
until the file is unfrozen the application can write neither side. The rollback's
promise: the daemon (running, or started afterwards) unfreezes a file nobody is
switching within seconds, and the application's writes flow to Postgres again."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time

from tests.support.daemon import DaemonProcess, run_cli, syncd_cmd
from tests.support.sync import eventually, pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, orders_app, sqlite_write, wait_back




async def direction(dsn: str) -> str:
    return (await pg_rows(dsn, "SELECT direction FROM syncd.sources WHERE source = 'app'"))[0][0]


async def kill_rollback_after_its_turn(cfg, db, dsn: str, tmp_path) -> None:
    """`syncd rollback` run until Postgres recorded the turn, then killed while it waits
    for the file's write lock (an application connection holds it) to unfreeze it."""
    resume = tmp_path / "resume"
    errors = open(tmp_path / "rollback.err", "w")
    proc = subprocess.Popen(syncd_cmd(cfg, "rollback"), stdout=subprocess.PIPE, stderr=errors, text=True,
                            cwd=str(cfg.parent), env={**os.environ, "SYNCD_ROLLBACK_HOLD_AT": "finishing",
                                                      "SYNCD_ROLLBACK_RESUME_ON": str(resume)})
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        assert proc.stdout.readline().strip() == "holding at finishing"
        holder.execute("BEGIN IMMEDIATE")  # the application's connection, in a write transaction
        resume.write_text("")
        deadline = time.monotonic() + 30
        while await direction(dsn) != "to_postgres":
            assert proc.poll() is None and time.monotonic() < deadline, "the rollback did not reach its turn"
            time.sleep(0.05)
        time.sleep(0.3)
        assert proc.poll() is None  # still waiting for the write lock
    finally:
        proc.kill()
        proc.wait(10)
        errors.close()
        holder.execute("ROLLBACK") if holder.in_transaction else None
        holder.close()


async def written_back(cfg, db, dsn: str, d: DaemonProcess) -> None:
    """The file takes the application's writes again, and they reach Postgres."""
    async def writable() -> bool:
        return sqlite_write(db, "written in SQLite after the rollback") is None

    await eventually(writable, 30, "the SQLite file taking the application's writes again", d)
    await wait_caught_up(db, dsn, "app", daemon=d)
    assert await pg_rows(dsn, "SELECT item FROM app.orders ORDER BY id") == [
        ("a",), ("b",), ("written in Postgres",), ("written in SQLite after the rollback",)]
    assert run_cli(cfg, "verify").returncode == 0


async def test_the_running_daemon_unfreezes_the_file_of_a_rollback_killed_after_its_turn(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "INSERT INTO app.orders (item) VALUES ('written in Postgres')")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        await kill_rollback_after_its_turn(cfg, db, pg_dsn, tmp_path)
        assert await direction(pg_dsn) == "to_postgres"  # Postgres recorded the rollback
        await written_back(cfg, db, pg_dsn, d)
        assert d.stop() == 0


async def test_a_daemon_started_after_a_rollback_killed_after_its_turn_unfreezes_the_file(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "INSERT INTO app.orders (item) VALUES ('written in Postgres')")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    await kill_rollback_after_its_turn(cfg, db, pg_dsn, tmp_path)  # no daemon running
    assert await direction(pg_dsn) == "to_postgres"
    with DaemonProcess(cfg, tmp_path / "syncd-2.log") as d:
        await written_back(cfg, db, pg_dsn, d)
        assert d.stop() == 0
