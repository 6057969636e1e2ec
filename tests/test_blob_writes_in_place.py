"""A BLOB written in place through SQLite's incremental I/O (`sqlite3_blob_write`,
Python's `Connection.blobopen`) changes the row without an UPDATE, so no trigger fires
and capture never hears of it: Postgres keeps the old bytes. `syncd verify` finds the
row by key and column (exit 1, never "equal"), the daemon's periodic check repairs it
and says so in the log, and `syncd verify --repair` does the same by hand."""

from __future__ import annotations

import sqlite3

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, pg_rows, wait_caught_up

SCHEMA = """
PRAGMA journal_mode=wal;
CREATE TABLE files (id INTEGER PRIMARY KEY, name TEXT, data BLOB);
INSERT INTO files VALUES (1, 'a', zeroblob(8)), (2, 'b', x'0102030405060708');
"""


def write_in_place(db, rowid: int, data: bytes) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        with conn.blobopen("files", "data", rowid) as blob:
            blob.write(data)
    finally:
        conn.close()


async def test_a_blob_written_in_place_is_found_by_verify_and_repaired(app_db, make_config, pg_dsn, tmp_path):
    sqlite3.connect(app_db, isolation_level=None).executescript(SCHEMA)
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        write_in_place(app_db, 1, b"ABCDEFGH")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        # No trigger fired: Postgres still holds the old bytes.
        assert await pg_rows(pg_dsn, "SELECT data FROM app.files WHERE id = 1") == [(b"\0" * 8,)]
        found = run_cli(cfg, "verify")
        assert found.returncode == 1, found.stdout
        assert '"files" different: key 1: column "data"' in found.stdout, found.stdout
        fixed = run_cli(cfg, "verify", "--repair")
        assert fixed.returncode == 0, fixed.stdout
        assert await compare_table(str(app_db), pg_dsn, "app", "files") == []
        assert d.stop() == 0


async def test_the_periodic_check_repairs_a_blob_written_in_place(app_db, make_config, pg_dsn, tmp_path):
    sqlite3.connect(app_db, isolation_level=None).executescript(SCHEMA)
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"verify": {"interval_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        write_in_place(app_db, 2, b"\xff" * 8)

        async def fixed() -> bool:
            return await compare_table(str(app_db), pg_dsn, "app", "files") == []

        await eventually(fixed, 60, "the periodic check to repair the blob", d)
        d.wait_log('consistency check repaired 1 row(s) of "files" (1 different): keys 2')
        assert d.stop() == 0
