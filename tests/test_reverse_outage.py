"""A Postgres outage while SQLite follows Postgres (through a fault-injecting proxy):
the daemon stays up, says so once, shows the lag growing with the direction label, and
brings SQLite up to date by itself once Postgres answers again."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from urllib.parse import urlsplit

from tests.conftest import FAST_FAILOVER, write_config
from tests.support.app import create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.pgcluster import free_port
from tests.support.proxy import FaultProxy
from tests.support.way_back import PgWriter, backup_and_config, cut_over, wait_back

LAG = 'syncd_replication_lag_seconds{direction="to_sqlite",source="app"}'
APPLIED = 'syncd_changes_applied_total{direction="to_sqlite",op="update",source="app",table="items"}'


def metric(port: int, series: str) -> float | None:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_the_way_back_rides_out_a_postgres_outage(tmp_path, make_config, pg_dsn):
    parts = urlsplit(pg_dsn)
    proxy = FaultProxy(parts.hostname, parts.port or 5432)
    try:
        proxied = pg_dsn.replace(f":{parts.port}/", f":{proxy.port}/")
        port = free_port()
        db = tmp_path / "app.db"
        create_items(db, rows=500, journal="wal")
        def make(sources, sections):
            return write_config(tmp_path / "syncd.toml", proxied, sources, metrics_listen=f"127.0.0.1:{port}",
                                sections={**sections, **FAST_FAILOVER})

        cfg = backup_and_config(make, tmp_path, db)
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await cut_over(cfg, db, pg_dsn, daemon=d)
            d.wait_log("SQLite follows Postgres")
            await wait_back(cfg, db, pg_dsn, daemon=d)
            proxy.refuse()
            writer = PgWriter(pg_dsn, seconds=2, seed=3, rate=150)  # the application, straight to Postgres
            wait_for(lambda: "Postgres unreachable" in d.log(), 30, "outage logged", d)
            first = metric(port, LAG)
            # SQLite may be that far behind, and it is said
            wait_for(lambda: metric(port, LAG) > first, 10, "lag growing during the outage", d)
            assert writer.result()["transactions"] > 100
            assert d.alive()
            # status, with Postgres unreachable, still knows from the frozen file which way
            # the source flows, and does not count the forward changelog as pending
            doc = json.loads(run_cli(cfg, "status", "--json").stdout)["sources"][0]
            assert doc["direction"] == "to_sqlite" and doc["pending_changes"] is None, doc
            proxy.heal()
            await wait_back(cfg, db, pg_dsn, daemon=d)
            writer = PgWriter(pg_dsn, seconds=2.6, seed=4, rate=200)
            for _ in range(8):  # and connections reset in the middle of batches
                await asyncio.sleep(0.3)
                proxy.reset()
            writer.result()
            await wait_back(cfg, db, pg_dsn, daemon=d)
            wait_for(lambda: metric(port, LAG) == 0, 30, "lag back to 0", d)
            assert metric(port, APPLIED) > 0
            assert d.stop() == 0
            log = d.log()
        assert log.count("event=postgres_unreachable") >= 1
        assert "event=recovered" in log
        assert await compare_table(str(db), pg_dsn, "app", "items") == []
    finally:
        proxy.close()


async def test_a_way_back_statement_past_the_statement_timeout_says_what_it_waited_for(tmp_path, make_config,
                                                                                       pg_dsn):
    """A session keeps the way back's changelog in Postgres locked past [postgres]
    statement_timeout_seconds: the daemon's line says a statement ran over that setting
    and what may hold it, not a bare "Postgres unreachable: timed out"."""
    import asyncpg

    from tests.support.sync import eventually
    from tests.support.way_back import orders_app, way_back_changelog

    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db, postgres={"statement_timeout_seconds": 2})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        holder = await asyncpg.connect(pg_dsn)
        try:
            async with holder.transaction():
                await holder.execute(f"LOCK TABLE {await way_back_changelog(pg_dsn)} IN ACCESS EXCLUSIVE MODE")

                async def said() -> bool:
                    return "event=postgres_unreachable" in d.own_log()

                await eventually(said, 60, "the way back's timed-out statement", d)
        finally:
            await holder.close()
        [line] = [x for x in d.own_log().splitlines() if "event=postgres_unreachable" in x][:1]
        assert "a statement ran over [postgres] statement_timeout_seconds (2 s)" in line, line
        assert "Postgres unreachable: timed out" not in d.own_log()
        assert d.stop() == 0
