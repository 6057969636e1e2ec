"""Snapshot -> stream handoff while the application keeps writing, and restarts from
the checkpoint: nothing lost, nothing applied twice."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from tests.support.app import Writer, create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import wait_caught_up


@pytest.mark.parametrize("journal", ["wal", "delete"])
async def test_snapshot_handoff_under_concurrent_writes(tmp_path, make_config, pg_dsn, journal):
    db = tmp_path / "app.db"
    create_items(db, rows=30_000, journal=journal)
    cfg = make_config([{"name": "app", "path": str(db)}])
    writer = Writer(db, seconds=4, seed=7)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        # the snapshot starts while the writer is mid-flight
        assert writer.result()["transactions"] > 0
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "items") == []
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == journal


async def test_restart_from_checkpoint(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=1000)
    cfg = make_config([{"name": "app", "path": str(db)}])
    writer = Writer(db, seconds=6, seed=3, rate=300)
    for i in range(4):  # stop and start the daemon while the application writes
        with DaemonProcess(cfg, tmp_path / f"syncd{i}.log") as d:
            d.wait_log("every table is streaming" if i == 0 else "syncd running", timeout=60)
            await asyncio.sleep(0.7)
            assert d.stop() == 0
    writer.result()
    with DaemonProcess(cfg, tmp_path / "final.log") as d:
        d.wait_log("syncd running")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        log = d.log()
    assert "snapshot started" not in log  # resumed from the checkpoint, no reload
    assert await compare_table(str(db), pg_dsn, "app", "items") == []
