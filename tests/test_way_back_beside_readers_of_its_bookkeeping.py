"""The way back's full checks take no lock that waits on a reader of syncd's own
bookkeeping in Postgres (a report, a monitoring query, an operator's open psql
transaction): they used to run ALTER TABLE ... ADD COLUMN IF NOT EXISTS on the way
back's registry each time, an ACCESS EXCLUSIVE lock that queued behind such a reader
and held every source's way back up behind it."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from tests.support.daemon import DaemonProcess
from tests.support.way_back import backup_and_config, cut_over, order_in_sqlite, orders_app, wait_back

CHECK_SECONDS = 1.0  # [stream] schema_check_interval_seconds: a full check of the source every second


async def test_full_checks_do_not_wait_on_a_reader_of_the_registry(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db, stream={"schema_check_interval_seconds": CHECK_SECONDS})
    reader = await asyncpg.connect(pg_dsn)
    pg = await asyncpg.connect(pg_dsn)
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await cut_over(cfg, db, pg_dsn, daemon=d)
            await wait_back(cfg, db, pg_dsn, daemon=d)
            tr = reader.transaction()
            await tr.start()
            await reader.fetch("SELECT * FROM syncd.reverse")  # its ACCESS SHARE lock held until the end
            try:
                await asyncio.sleep(4 * CHECK_SECONDS)  # full checks fall due meanwhile
                await pg.execute("INSERT INTO app.orders (item) VALUES ('while a reader reads')")
                deadline = time.monotonic() + 20
                while not order_in_sqlite(db, "while a reader reads"):
                    waiting = await pg.fetch("SELECT mode FROM pg_locks WHERE NOT granted "
                                             "AND relation = 'syncd.reverse'::regclass")
                    assert time.monotonic() < deadline, f"the way back stood still; locks waiting: {waiting}"
                    await asyncio.sleep(0.1)
                waiting = await pg.fetch("SELECT mode FROM pg_locks WHERE NOT granted "
                                         "AND relation = 'syncd.reverse'::regclass")
                assert waiting == [], waiting
            finally:
                await tr.rollback()
            assert d.stop() == 0
    finally:
        await reader.close()
        await pg.close()
