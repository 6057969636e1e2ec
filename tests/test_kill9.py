"""kill -9 at random instants while the application writes: on restart nothing is lost,
nothing applied twice, and a snapshot resumes instead of starting over."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time

import asyncpg

from tests.support.app import Writer, create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import eventually, wait_caught_up

KILLS = 22


async def applied_but_unpruned(db, dsn) -> bool:
    """True if the changelog still holds entries Postgres has applied: a kill in the
    window between the Postgres commit and the SQLite prune."""
    conn = await asyncpg.connect(dsn)
    try:
        applied = await conn.fetchval("SELECT applied_seq FROM syncd.sources WHERE source = 'app'")
    finally:
        await conn.close()
    if not applied:
        return False
    # The application's writers keep this rollback-journal file busy (no fairness between
    # SQLite's readers and writers): a loaded machine can keep this read waiting for seconds.
    lite = sqlite3.connect(db, timeout=60)
    try:
        return lite.execute("SELECT count(*) FROM _syncd_changelog WHERE seq < ?", (applied,)).fetchone()[0] > 0
    finally:
        lite.close()


async def wait_loading(dsn, table, d, timeout: float = 60) -> None:
    """Until `table`'s snapshot has committed a chunk but not finished."""
    deadline = time.monotonic() + timeout
    conn = await asyncpg.connect(dsn)
    try:
        while time.monotonic() < deadline:
            try:
                row = await conn.fetchrow("SELECT state, snapshot_rows FROM syncd.tables WHERE source = 'app' "
                                          "AND table_name = $1", table)
            except asyncpg.UndefinedTableError:
                row = None
            if row is not None and row["state"] == "loading" and row["snapshot_rows"] > 0:
                return
            assert d.proc.poll() is None, d.log()[-2000:]
            await asyncio.sleep(0.05)  # a load of 40 chunks lasts seconds: no need to ask 500 times a second
    finally:
        await conn.close()
    raise AssertionError(f"{table} never seen mid-snapshot")


async def test_kill9_at_random_points(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=2000)
    create_items(db, table="bulk", rows=200_000)
    cfg = make_config([{"name": "app", "path": str(db)}],
                      sections={"stream": {"snapshot_chunk_rows": 5000, "batch_size": 500}})
    rnd = random.Random(20261123)
    writers = [Writer(db, seconds=40, seed=1, rate=150),
               Writer(db, seconds=40, seed=2, table="bulk", rate=100, ids=200_000)]
    windows = resumed = 0
    i = 0
    # Killed at random instants; the first kill lands mid-snapshot for certain, and kills
    # go on (while the application writes) until one lands between a commit and a prune,
    # aimed at that window once the random ones have all missed it (a slow machine).
    while i < KILLS or (windows == 0 and any(w.proc.poll() is None for w in writers) and i < 3 * KILLS):
        d = DaemonProcess(cfg, tmp_path / f"run{i}.log")
        with d:
            d.wait_log("syncd running", timeout=30)
            if i == 0:
                await wait_loading(pg_dsn, "bulk", d)
            elif i >= KILLS:  # none of the random kills landed in the window: aim for it
                with contextlib.suppress(AssertionError):  # not open in time: kill anyway, and count
                    await eventually(lambda: applied_but_unpruned(db, pg_dsn), timeout=15, daemon=d)
            else:
                time.sleep(rnd.uniform(0.05, 1.5))
            d.kill9()
        i += 1
        log = d.log()
        resumed += "snapshot resuming" in log
        windows += await applied_but_unpruned(db, pg_dsn)
    for w in writers:
        summary = w.result()
        # Each error: the step, the error, how long it waited; beside them, every write
        # lock syncd held for long (its log names the work).
        held = [line for p in sorted(tmp_path.glob("run*.log")) for line in p.read_text().splitlines()
                if "held the write lock" in line]
        assert summary["lock_errors"] == 0, (summary["errors"], held)
    with DaemonProcess(cfg, tmp_path / "final.log") as d:
        d.wait_log("syncd running")
        await wait_caught_up(db, pg_dsn, "app", timeout=120, daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "items") == []
    assert await compare_table(str(db), pg_dsn, "app", "bulk") == []
    assert resumed >= 1, "no kill landed during the snapshot"
    assert windows >= 1, "no kill landed between a Postgres commit and the prune"
