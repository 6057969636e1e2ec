"""A table without a key through a cutover and a rollback: Postgres numbers the rows the
application inserts there (`_syncd_rowid`, an identity syncd made), SQLite numbers them
again after the rollback (its rowid). The rollback says nothing false about that column,
and the rows the application then writes to SQLite reach Postgres under their rowid."""

from __future__ import annotations

import sqlite3

from tests.support.compare import compare_keyless
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, wait_back


async def test_a_rollback_warns_of_nothing_about_the_rowid_column(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE log (at TEXT, what TEXT)")
    conn.executemany("INSERT INTO log VALUES (?, ?)", [("t1", "dup"), ("t1", "dup"), ("t2", "other")])
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        # the application on Postgres leaves syncd's column out, as it never knew of it
        await pg_rows(pg_dsn, "INSERT INTO app.log (at, what) VALUES ('t3', 'dup'), ('t3', 'dup')")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "_syncd_rowid" not in r.stdout, r.stdout
        assert "warning" not in r.stdout, r.stdout
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("INSERT INTO log (at, what) VALUES ('t4', 'from sqlite')")
        conn.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await compare_keyless(str(db), pg_dsn, "app", "log") == []
        assert await pg_rows(pg_dsn, "SELECT count(*) FROM app.log WHERE _syncd_rowid IS NULL") == [(0,)]
        assert d.stop() == 0
