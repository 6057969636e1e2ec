"""A `character(n)` column in Postgres (one the application adds after the cutover, or a
column it retypes so) hands every client its values padded to n with spaces: 'ab' reads
as 'ab   '. The way back writes that padded text into SQLite, as the application read
it, and verification compares the same padded text on the Postgres side: the row is
equal, and `syncd rollback` goes through. (Postgres's `::text` drops the padding, and a
comparison through it called every such row different for good: the rollback refused,
and `syncd verify --repair` wrote the same value again.)"""

from __future__ import annotations

import sqlite3

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, typeof, wait_back


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("CREATE TABLE codes (id INTEGER PRIMARY KEY, name TEXT);"
                       "INSERT INTO codes VALUES (1, 'one'), (2, 'two');")
    conn.commit()
    conn.close()


async def test_padded_character_values_verify_equal_and_roll_back(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            await pg.execute("ALTER TABLE app.codes ADD COLUMN code char(5)")
            await pg.execute("UPDATE app.codes SET code = 'ab' WHERE id = 1")
            await pg.execute("INSERT INTO app.codes (name, code) VALUES ('three', 'x  ')")
            read = await pg.fetch("SELECT id, code FROM app.codes ORDER BY id")
        finally:
            await pg.close()
        assert [tuple(r) for r in read] == [(1, "ab   "), (2, None), (3, "x    ")]  # what the application reads

        async def followed() -> bool:
            return len(typeof(db, "PRAGMA table_info(codes)")) == 3

        await eventually(followed, 60, "the column added in SQLite too", d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT id, code FROM codes ORDER BY id") == [(1, "ab   "), (2, None), (3, "x    ")]

        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr
        assert '"codes" equal (3 rows' in v.stdout, v.stdout

        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        conn = sqlite3.connect(db)
        conn.execute("UPDATE codes SET name = 'one!' WHERE id = 1")
        conn.commit()
        conn.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr
        assert typeof(db, "SELECT code FROM codes WHERE id = 1") == [("ab   ",)]
