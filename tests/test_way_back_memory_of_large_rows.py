"""After a cutover the daemon keeps the SQLite file current from Postgres, and its memory
stays bounded there too whatever a row weighs: a batch of the way back counts changelog
entries, and the rows of a batch are read from Postgres within a budget of bytes, not
all at once before the batch is cut for SQLite. The application inserting 200 rows of
1 MB in one Postgres transaction, then rewriting all of them in one UPDATE, keeps the
daemon's peak RSS well under what those rows weigh together, and every row comes back
to SQLite as Postgres holds it. A table copied again on the way back (emptied with
TRUNCATE in Postgres, and refilled) is read in chunks within the same budget of bytes."""

from __future__ import annotations

import hashlib
import sqlite3

import asyncpg

from tests.support.daemon import DaemonProcess, peak_rss_mb
from tests.support.sync import pg_rows
from tests.support.way_back import backup_and_config, cut_over, wait_back

ROWS = 200
SIZE = 1024 * 1024  # 200 x 1 MB: 200 MB of values in one table
PEAK_RSS_MB = 180  # a daemon holding every row at once is far above this (255 MB; twice, 460 MB)
PG_DIGESTS = "SELECT id, name, md5(data) FROM app.attachments ORDER BY id"


def sqlite_app(db) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE attachments (id INTEGER PRIMARY KEY, name TEXT, data BLOB)")
    conn.execute("INSERT INTO attachments VALUES (0, 'empty', x'00')")
    conn.close()


def digests(db) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return [(i, name, hashlib.md5(data).hexdigest())
                for i, name, data in conn.execute("SELECT id, name, data FROM attachments ORDER BY id")]
    finally:
        conn.close()


async def test_large_rows_written_in_postgres_come_back_with_bounded_memory(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    sqlite_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        before = peak_rss_mb(d.pid)
        pg = await asyncpg.connect(pg_dsn)
        try:
            await pg.execute("INSERT INTO app.attachments SELECT g, 'file ' || g, "  # one transaction, 200 MB
                             f"decode(repeat(md5(g::text), {SIZE // 16}), 'hex') FROM generate_series(1, $1) AS g", ROWS)
            await wait_back(cfg, db, pg_dsn, daemon=d, timeout=120)
            inserted_peak = peak_rss_mb(d.pid)
            assert digests(db) == await pg_rows(pg_dsn, PG_DIGESTS)

            await pg.execute(f"UPDATE app.attachments SET name = name || ' v2', "
                             f"data = decode(repeat(md5('v2' || id), {SIZE // 16}), 'hex') WHERE id > 0")
            await wait_back(cfg, db, pg_dsn, daemon=d, timeout=120)
            updated_peak = peak_rss_mb(d.pid)
            assert digests(db) == await pg_rows(pg_dsn, PG_DIGESTS)
        finally:
            await pg.close()
        assert d.stop() == 0
    peaks = (f"peak RSS {before:.0f} MB after the cutover, {inserted_peak:.0f} MB after the INSERT came back, "
             f"{updated_peak:.0f} MB after the UPDATE came back")
    print(peaks)
    assert inserted_peak < PEAK_RSS_MB and updated_peak < PEAK_RSS_MB, peaks


async def test_a_table_of_large_rows_copied_again_comes_back_with_bounded_memory(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    sqlite_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        before = peak_rss_mb(d.pid)
        pg = await asyncpg.connect(pg_dsn)
        try:
            async with pg.transaction():  # emptied and refilled at once: SQLite's copy is made again from Postgres
                await pg.execute("TRUNCATE app.attachments")
                await pg.execute("INSERT INTO app.attachments SELECT g, 'file ' || g, "
                                 f"decode(repeat(md5(g::text), {SIZE // 16}), 'hex') "
                                 "FROM generate_series(1, $1) AS g", ROWS)
            await wait_back(cfg, db, pg_dsn, daemon=d, timeout=120)
            copied_peak = peak_rss_mb(d.pid)
            assert digests(db) == await pg_rows(pg_dsn, PG_DIGESTS)
            assert "reload_done" in d.log()  # copied again, not streamed
        finally:
            await pg.close()
        assert d.stop() == 0
    peaks = f"peak RSS {before:.0f} MB after the cutover, {copied_peak:.0f} MB after the table was copied again"
    print(peaks)
    assert copied_peak < PEAK_RSS_MB, peaks
