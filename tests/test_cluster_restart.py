"""A Postgres server this test owns is stopped and started under a running syncd."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg
import pytest

from tests.conftest import FAST_FAILOVER, write_config
from tests.support.app import Writer, create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.pgcluster import Cluster, with_database
from tests.support.sync import wait_caught_up


@pytest.fixture
def cluster(tmp_path):
    c = Cluster.create()
    c.start()
    yield c
    c.destroy()


async def make_db(cluster: Cluster) -> str:
    conn = await asyncpg.connect(cluster.dsn)
    await conn.execute("CREATE DATABASE target")
    await conn.close()
    return with_database(cluster.dsn, "target")


async def test_server_stopped_and_started(cluster, tmp_path):
    dsn = await make_db(cluster)
    db = tmp_path / "app.db"
    create_items(db, rows=2000)
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}], sections=FAST_FAILOVER)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, dsn, "app", daemon=d)
        writer = Writer(db, seconds=6, seed=5, rate=200)
        await asyncio.sleep(1)
        cluster.stop("fast")
        wait_for(lambda: "Postgres unreachable" in d.log(), 30, "outage noticed", d)
        await asyncio.sleep(2)
        assert d.alive()
        cluster.start()
        assert writer.result()["lock_errors"] == 0
        await wait_caught_up(db, dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), dsn, "app", "items") == []


async def test_daemon_started_while_postgres_is_down(cluster, tmp_path):
    dsn = await make_db(cluster)
    db = tmp_path / "app.db"
    create_items(db, rows=100)
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}], sections=FAST_FAILOVER)
    cluster.stop("fast")
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("syncd running")
        # capture is installed even though Postgres is away: nothing written now is lost
        wait_for(lambda: _has_triggers(db), 30, "triggers installed", d)
        Writer(db, seconds=1, seed=6).result()
        cluster.start()
        await wait_caught_up(db, dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), dsn, "app", "items") == []


def _has_triggers(db) -> bool:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0] == 4
    finally:
        conn.close()
