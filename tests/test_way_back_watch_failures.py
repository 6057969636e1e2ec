"""The daemon's way back watch (one query per target database every 2 s) says once when
it cannot look at Postgres, naming the database with its password hidden, and once when
it works again; the sources follow Postgres afterwards."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from tests.conftest import FAST_FAILOVER, write_config
from tests.support.app import create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.proxy import FaultProxy
from tests.support.way_back import PgWriter, backup_and_config, cut_over, wait_back

PASSWORD = "watch-secret-9f3"  # trust auth ignores it; it must never be printed
FAILED = "the daemon's watch of"


async def test_the_way_back_watch_says_once_that_it_fails_and_once_that_it_works_again(tmp_path, pg_dsn):
    parts = urlsplit(pg_dsn)
    proxy = FaultProxy(parts.hostname, parts.port or 5432)
    try:
        proxied = pg_dsn.replace(f"@{parts.hostname}:{parts.port}/",
                                 f":{PASSWORD}@{parts.hostname}:{proxy.port}/")
        assert PASSWORD in proxied
        db = tmp_path / "app.db"
        create_items(db, rows=50, journal="wal")

        def make(sources, sections):
            return write_config(tmp_path / "syncd.toml", proxied, sources, sections={**sections, **FAST_FAILOVER})

        cfg = backup_and_config(make, tmp_path, db)
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await cut_over(cfg, db, pg_dsn, daemon=d)
            d.wait_log("SQLite follows Postgres")
            await wait_back(cfg, db, pg_dsn, daemon=d)
            proxy.refuse()
            wait_for(lambda: "event=way_back_watch_failed" in d.own_log(), 30, "the watch's failure logged", d)
            # several more polls of the watch (one every 2 s) fail while Postgres stays away
            await asyncio.sleep(9)
            assert d.alive()
            assert d.own_log().count("event=way_back_watch_failed") == 1, d.own_log()[-4000:]
            proxy.heal()
            wait_for(lambda: "event=way_back_watch_recovered" in d.own_log(), 30, "the watch's recovery logged", d)
            PgWriter(pg_dsn, seconds=1, seed=5, rate=100).result()  # the application, straight to Postgres
            await wait_back(cfg, db, pg_dsn, daemon=d)
            await asyncio.sleep(4)  # more polls that work: nothing more to say
            assert d.stop() == 0
            log = d.own_log()
        failed = [line for line in log.splitlines() if "event=way_back_watch_failed" in line]
        recovered = [line for line in log.splitlines() if "event=way_back_watch_recovered" in line]
        assert len(failed) == 1 and len(recovered) == 1, log[-4000:]
        for line in failed + recovered:
            assert FAILED in line and parts.hostname in line and f":{proxy.port}/" in line, line
        assert " WARNING " in failed[0] and " INFO " in recovered[0], (failed, recovered)
        assert PASSWORD not in log
        assert await compare_table(str(db), pg_dsn, "app", "items") == []
    finally:
        proxy.close()
