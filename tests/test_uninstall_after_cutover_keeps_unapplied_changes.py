"""`syncd uninstall` on a source that was cut over: the way back (Postgres -> SQLite)
still has changes the application made in Postgres that the SQLite file has not
received. Uninstall refuses then, as it refuses when SQLite's own changes are
unapplied, rather than throwing them away in silence (unless --force)."""

from __future__ import annotations

import sqlite3

from tests.support.app import create_items
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import pg_rows
from tests.support.way_back import backup_and_config, cut_over, wait_back


async def test_uninstall_refuses_while_postgres_changes_have_not_reached_the_file(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=10, journal="wal")
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    # The application, now on Postgres, writes while syncd is stopped: the way back's
    # capture records these for the SQLite file.
    await pg_rows(pg_dsn, "UPDATE app.items SET v = 'written in postgres' WHERE id = 1")
    await pg_rows(pg_dsn, "INSERT INTO app.items (id, v, n) VALUES (1001, 'new in postgres', 7)")
    r = run_cli(cfg, "uninstall")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        in_sqlite = conn.execute("SELECT v FROM items WHERE id IN (1, 1001) ORDER BY id").fetchall()
    finally:
        conn.close()
    assert r.returncode == 1 and "not yet" in r.stdout, (
        f"uninstall discarded Postgres changes the SQLite file never received (rc {r.returncode}; "
        f"SQLite holds {in_sqlite} for ids 1 and 1001): {r.stdout.strip()}")
    # What --force would do, said as it is: the changes stay in Postgres, only the file never gets them.
    assert "stay in Postgres" in r.stdout and "never reach the SQLite file" in r.stdout, r.stdout
    assert "discard" not in r.stdout, r.stdout
    # Nothing was removed: the daemon can still bring the file up to date.
    assert (await pg_rows(pg_dsn, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE '_syncd_rcap_%'"))[0][0] == 4
    # Once the daemon has written them into the file, uninstall goes ahead.
    with DaemonProcess(cfg, tmp_path / "again.log") as d:
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    r = run_cli(cfg, "uninstall")
    assert r.returncode == 0, r.stdout + r.stderr
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT id, v FROM items WHERE id IN (1, 1001) ORDER BY id").fetchall() == \
            [(1, "written in postgres"), (1001, "new in postgres")]
    finally:
        conn.close()
