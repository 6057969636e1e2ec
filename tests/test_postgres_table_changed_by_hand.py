"""Before the cutover, a replicated table changed by hand in Postgres (a column dropped or
added there): the daemon follows SQLite's schema, not Postgres's, so `syncd verify` must not
promise that it reconciles the table "within seconds"; it names `syncd resync`, which does.
A change made in SQLite that the daemon has not followed yet is still the daemon's to follow."""

from __future__ import annotations

import sqlite3

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import pg_rows, wait_caught_up
from tests.support.verifying import sync_and_stop, verify, verify_section


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE dropped (id INTEGER PRIMARY KEY, v TEXT);
        CREATE TABLE added (id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO dropped VALUES (1, 'a'), (2, 'b');
        INSERT INTO added VALUES (1, 'a');
    """)
    conn.commit()
    conn.close()


async def test_a_table_changed_in_postgres_by_hand_is_named_for_a_resync(app_db, make_config, pg_dsn, tmp_path):
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_rows(pg_dsn, "ALTER TABLE app.dropped DROP COLUMN v")
    await pg_rows(pg_dsn, "ALTER TABLE app.added ADD COLUMN note text")

    out = verify(cfg)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith(('app: "dropped"', 'app: "added"'))]
    assert len(lines) == 2, out.stdout
    for line in lines:
        assert "within seconds" not in line, line
        assert "changed in Postgres outside syncd" in line and "syncd resync --source app --table" in line, line

    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        for table in ("dropped", "added"):
            assert run_cli(cfg, "resync", "--source", "app", "--table", table).returncode == 0
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        out = verify(cfg)
        assert out.returncode == 0, out.stdout + out.stderr


async def test_a_change_in_sqlite_not_followed_yet_is_the_daemons_to_follow(app_db, make_config, pg_dsn, tmp_path):
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    conn = sqlite3.connect(app_db)
    conn.execute("ALTER TABLE added ADD COLUMN note TEXT")
    conn.close()

    out = verify(cfg)
    assert out.returncode == 1, out.stdout + out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith('app: "added"'))
    assert "the daemon reconciles schema changes within seconds" in line and "syncd resync" not in line, line
