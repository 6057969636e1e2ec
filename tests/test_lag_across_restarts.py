"""The lag is the age of the oldest change not yet in Postgres, across a restart of the
daemon too. A daemon restarted while it works through a backlog (an upgrade after an
outage, systemd restarting a crashed or wedged daemon, a crash loop) finds changes older
than its last apply still waiting: the time of the last apply is no bound on their age,
only the time Postgres last held every captured change is."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import time
import urllib.request
from urllib.parse import urlsplit

import asyncpg

from tests.conftest import write_config
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.pgcluster import free_port
from tests.support.proxy import FaultProxy
from tests.support.sync import wait_caught_up


async def _checkpoint(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT applied_seq FROM syncd.sources WHERE source = 'app'") or 0
    finally:
        await conn.close()


async def test_lag_after_a_restart_in_the_middle_of_a_backlog_is_the_backlogs_age(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE b (id INTEGER PRIMARY KEY, v TEXT);"
                       "INSERT INTO a VALUES (0, 'x'); INSERT INTO b VALUES (0, 'x');")
    conn.commit()
    port = free_port()
    cfg = make_config([{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{port}",
                      sections={"stream": {"batch_size": 100}, "verify": {"interval_seconds": 0},
                                "status": {"warn_lag_seconds": 5, "crit_lag_seconds": 3600}})
    with DaemonProcess(cfg, tmp_path / "first.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0

    # While syncd is stopped the application writes a backlog: 300 rows of a, then 300 of b.
    conn.executemany("INSERT INTO a VALUES (?, 'x')", [(i,) for i in range(1, 301)])
    conn.commit()
    conn.executemany("INSERT INTO b VALUES (?, 'x')", [(i,) for i in range(1, 301)])
    conn.commit()
    written = time.time()
    # A session in Postgres holds table b (a long report, a migration): b's changes wait.
    locker = await asyncpg.connect(pg_dsn)
    tx = locker.transaction()
    await tx.start()
    await locker.execute('LOCK TABLE "app"."b" IN ACCESS EXCLUSIVE MODE')
    try:
        await asyncio.sleep(6)  # b's changes are at least 6 s old from here on
        with DaemonProcess(cfg, tmp_path / "second.log") as d:
            # The daemon applies a's first batches, then waits on b's; then it dies.
            deadline = time.monotonic() + 30
            while await _checkpoint(pg_dsn) < 100:
                assert d.alive() and time.monotonic() < deadline, d.log()[-3000:]
                await asyncio.sleep(0.1)
            d.kill9()
        with DaemonProcess(cfg, tmp_path / "third.log") as d:
            def health() -> bool:
                try:
                    doc = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read())
                except OSError:
                    return False
                return doc["sources"].get("app", {}).get("health") == "streaming"  # listed once it starts

            wait_for(health, 30, "the restarted daemon streaming", d)
            r = run_cli(cfg, "status", "--json")
            code, src = r.returncode, json.loads(r.stdout)["sources"][0]
            age = time.time() - written
            assert src["pending_changes"] >= 300, src  # b's 300 changes wait, as the file says
            assert src["lag_seconds"] >= 6, (
                f"lag {src['lag_seconds']} s after the restart, while b's changes, written {age:.1f} s ago, "
                f"still wait: {src}")
            assert code >= 1 and any(p["message"].startswith("lag ") for p in src["problems"]), src  # warn_lag_seconds
    finally:
        await tx.rollback()
        await locker.close()


async def test_lag_of_a_source_not_started_yet_is_unknown_not_0(tmp_path, make_config, pg_dsn):
    """A daemon that cannot read its bookkeeping yet (Postgres away at its start, a fleet's
    sources waiting their turn) does not know since when changes wait: it says so, and
    `syncd status` bounds their age from Postgres instead of showing 0."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO a VALUES (0, 'x');")
    conn.commit()
    port = free_port()
    cfg = make_config([{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{port}",
                      sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "first.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    conn.executemany("INSERT INTO a VALUES (?, 'x')", [(i,) for i in range(1, 11)])
    conn.commit()
    written = time.time()
    await asyncio.sleep(3)

    parts = urlsplit(pg_dsn)
    proxy = FaultProxy(parts.hostname, parts.port or 5432)
    proxy.refuse()
    try:
        away = write_config(tmp_path / "away.toml", pg_dsn.replace(f":{parts.port}/", f":{proxy.port}/"),
                            [{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{port}")
        with DaemonProcess(away, tmp_path / "second.log") as d:
            def live() -> dict | None:
                try:
                    doc = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read())
                except OSError:
                    return None
                return doc["sources"].get("app")

            mine = wait_for(live, 30, "the source in the daemon's /status", d)
            assert mine["lag_seconds"] is None, mine
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            gauge = [line for line in body.splitlines()
                     if line.startswith('syncd_replication_lag_seconds{direction="to_postgres",source="app"}')]
            assert gauge and math.isnan(float(gauge[0].rsplit(" ", 1)[1])), gauge
            r = run_cli(cfg, "status", "--json")  # Postgres as the daemon cannot reach it yet
            src = json.loads(r.stdout)["sources"][0]
            assert src["pending_changes"] == 10, src
            assert src["lag_seconds"] >= time.time() - written - 1 >= 2, src
    finally:
        proxy.close()
