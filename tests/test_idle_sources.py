"""Idle sources: a file with nothing to do gives its SQLite connection back, and still
gets its periodic full check on time: a table dropped in Postgres behind syncd's back
comes back while the file stays untouched. (Its idle CPU is measured by bench/fleet.py.)"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from tests.support.daemon import DaemonProcess
from tests.test_fleet import caught_up, make_tenant

FILES = 2
CHECK_SECONDS = 3.0  # [stream] schema_check_interval_seconds: above the fleet's 1 s a source (2 s)


async def test_a_source_closed_for_idleness_still_gets_its_full_check(tmp_path, make_config, pg_dsn):
    d = tmp_path / "tenants"
    d.mkdir()
    paths = [d / f"{i:02d}.db" for i in range(FILES)]
    for p in paths:
        make_tenant(p)
    cfg = make_config([{"name": "tenant_{stem}", "path": str(d / "*.db")}],
                      sections={"stream": {"schema_check_interval_seconds": CHECK_SECONDS},
                                "sqlite": {"idle_close_seconds": 1}})
    pg = await asyncpg.connect(pg_dsn)
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as daemon:
            deadline = time.monotonic() + 120
            while not await caught_up(pg, paths):
                assert daemon.alive() and time.monotonic() < deadline, "fleet did not catch up"
                await asyncio.sleep(0.5)
            # Every source closes its file for idleness, then its full check falls due.
            await asyncio.sleep(CHECK_SECONDS + 2)
            await pg.execute('DROP TABLE "tenant_01".items')
            deadline = time.monotonic() + 4 * CHECK_SECONDS
            while True:
                try:
                    if await pg.fetchval('SELECT count(*) FROM "tenant_01".items') == 3:
                        break
                except asyncpg.UndefinedTableError:
                    pass
                assert time.monotonic() < deadline, "the full check did not run while the file was closed"
                await asyncio.sleep(0.5)
            assert daemon.stop() == 0
    finally:
        await pg.close()
