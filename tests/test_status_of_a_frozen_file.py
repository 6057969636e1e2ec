"""`syncd status` while the application's SQLite file refuses its writes: frozen by a
cutover that is running (said, as the switch it is), or left frozen by one that stopped
before finishing with no daemon running to undo it (CRITICAL, named: the application
cannot write its database, and "daemon not running" alone does not say so)."""

from __future__ import annotations

import json

from tests.support.daemon import DaemonProcess, held_at, run_cli
from tests.support.sync import eventually, pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, orders_app, postgres_write, sqlite_write

CRITICAL, WARNING = 2, 1


async def test_a_file_left_frozen_by_a_killed_cutover_is_critical(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        assert d.stop() == 0
    with held_at(cfg, "cutover", "verified") as proc:
        running = run_cli(cfg, "status")
        proc.kill()
        proc.wait(10)
    assert sqlite_write(db, "c") is not None
    assert await pg_rows(pg_dsn, "SELECT direction FROM syncd.sources") == [("to_postgres",)]

    # While the cutover ran, status said so rather than alarm, and that the application's
    # writes fail meanwhile (they are refused, not held until it ends).
    assert "cutover or rollback of this source is running" in running.stdout, running.stdout
    assert "fail at once" in running.stdout and "wait until it ends" not in running.stdout, running.stdout
    assert running.returncode != CRITICAL, running.stdout

    left = run_cli(cfg, "status")
    assert left.returncode == CRITICAL, left.stdout
    assert "refuses the application's writes" in left.stdout, left.stdout

    # The daemon undoes the abandoned freeze; status says nothing of it then.
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        async def unfrozen() -> bool:
            return sqlite_write(db, "c") is None

        await eventually(unfrozen, 30, "the abandoned freeze undone", d)
        after = run_cli(cfg, "status")
        assert "refuses the application's writes" not in after.stdout, after.stdout
        assert d.stop() == 0


async def test_postgres_left_frozen_by_a_killed_rollback_is_critical(tmp_path, make_config, pg_dsn):
    """A rollback killed after it froze Postgres, with no daemon running to undo it: the
    application can write neither database (the file stays frozen, the source is still cut
    over). Status said only that the daemon was not running (WARNING)."""
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    with held_at(cfg, "rollback", "verified") as proc:
        running = run_cli(cfg, "status")
        proc.kill()
        proc.wait(10)
    assert await postgres_write(pg_dsn, "c") is not None and sqlite_write(db, "c") is not None
    assert await pg_rows(pg_dsn, "SELECT direction FROM syncd.sources") == [("to_sqlite",)]

    # While the rollback ran, status said so rather than alarm.
    assert "cutover or rollback of this source is running" in running.stdout, running.stdout
    assert running.returncode != CRITICAL, running.stdout

    left = run_cli(cfg, "status")
    assert left.returncode == CRITICAL, left.stdout
    assert "Postgres refuses the application's writes" in left.stdout, left.stdout
    # and the report does not call the source cut over with every item met
    report = run_cli(cfg, "report", "--format", "json")
    halted = next(i for i in json.loads(report.stdout)["checklist"] if i["key"] == "halted")
    assert report.returncode == 1 and not halted["ok"], halted
    assert any(p.startswith("app: Postgres refuses the application's writes, left frozen by a rollback") for p in
               halted["problems"]), halted

    # The daemon undoes the abandoned freeze; status says nothing of it then.
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        async def unfrozen() -> bool:
            return await postgres_write(pg_dsn, "c") is None

        await eventually(unfrozen, 30, "the abandoned freeze undone", d)
        after = run_cli(cfg, "status")
        assert "refuses the application's writes" not in after.stdout, after.stdout
        assert d.stop() == 0
