"""A fleet: hundreds of small SQLite files (one per tenant) in one daemon, found by a
path glob, on a bounded number of Postgres connections: far more files than that bound,
the SQLite threads, the sources started at once or the sources `syncd status` lists one
by one (bench/fleet.py measures 1,000 and 5,000 files). All catch up, writes to a
random tenth stream, files added at runtime are picked up, files removed stay visible
as missing, and the connections syncd holds never exceed the bound."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
import urllib.request

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.pgcluster import free_port

FILES = 200  # six times the largest bound it must pass: the sources started at once (32)
BOUND = 6  # [postgres] max_connections: one lock holder and five pooled


def make_tenant(path, rows: int = 3) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"{path.stem}-{i}") for i in range(rows)])
    conn.commit()
    conn.close()


def changelog_tops(paths) -> dict[str, int]:
    out = {}
    for p in paths:
        conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        try:
            out[f"tenant_{p.stem}"] = conn.execute("SELECT coalesce(max(seq), 0) FROM _syncd_changelog").fetchone()[0]
        except sqlite3.OperationalError:
            out[f"tenant_{p.stem}"] = -1
        finally:
            conn.close()
    return out


async def caught_up(pg: asyncpg.Connection, paths) -> bool:
    try:
        rows = await pg.fetch("SELECT s.source, s.applied_seq, bool_and(t.state = 'streaming') "
                              "FROM syncd.sources s JOIN syncd.tables t USING (source) GROUP BY 1, 2")
    except asyncpg.UndefinedTableError:
        return False
    seen = {r[0]: (r[1], r[2]) for r in rows}
    for name, top in changelog_tops(paths).items():
        if name not in seen or not seen[name][1] or seen[name][0] < top or top < 0:
            return False
    return True


async def test_hundreds_of_files_on_a_bounded_number_of_connections(tmp_path, make_config, pg_dsn):
    tenants = tmp_path / "tenants"
    tenants.mkdir()
    paths = [tenants / f"{i:04d}.db" for i in range(FILES)]
    for p in paths:
        make_tenant(p)
    port = free_port()
    cfg = make_config([{"name": "tenant_{stem}", "path": str(tenants / "*.db")}], metrics_listen=f"127.0.0.1:{port}",
                      sections={
        "postgres": {"max_connections": BOUND},
        "stream": {"discover_interval_seconds": 1, "held_table_retry_seconds": 2},
        "verify": {"interval_seconds": 0}})
    pg = await asyncpg.connect(pg_dsn)
    peak = 0
    stop = asyncio.Event()

    async def watch_connections() -> None:
        nonlocal peak
        watcher = await asyncpg.connect(pg_dsn)
        try:
            while not stop.is_set():
                n = await watcher.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                           "AND application_name LIKE 'syncd%'")
                peak = max(peak, n)
                await asyncio.sleep(0.05)
        finally:
            await watcher.close()

    watching = asyncio.create_task(watch_connections())
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            started = time.monotonic()
            deadline = started + 600
            while not await caught_up(pg, paths):
                assert d.alive(), d.log()[-3000:]
                assert time.monotonic() < deadline, "the fleet did not catch up in 600 s"
                await asyncio.sleep(1)
            assert await pg.fetchval("SELECT count(*) FROM syncd.sources") == FILES

            # writes to a random tenth of the tenants
            rnd = random.Random(7)
            touched = rnd.sample(paths, FILES // 10)
            for p in touched:
                conn = sqlite3.connect(p)
                conn.execute("INSERT INTO items VALUES (100, 'written later')")
                conn.execute("UPDATE items SET v = 'changed' WHERE id = 1")
                conn.commit()
                conn.close()
            while not await caught_up(pg, paths):
                assert time.monotonic() < deadline + 300, "the writes did not stream"
                await asyncio.sleep(0.5)
            for p in touched[:20]:
                rows = await pg.fetch(f'SELECT id, v FROM "tenant_{p.stem}".items ORDER BY id')
                assert [tuple(r) for r in rows] == [(0, f"{p.stem}-0"), (1, "changed"), (2, f"{p.stem}-2"),
                                                    (100, "written later")]

            # files appear and disappear while it runs
            added = [tenants / f"new{i}.db" for i in range(20)]
            for p in added:
                make_tenant(p, rows=5)
            for p in paths[:5]:
                p.unlink()
            alive = added + paths[5:]
            while not await caught_up(pg, alive):
                assert time.monotonic() < deadline + 600, "the new files were not picked up"
                await asyncio.sleep(0.5)
            for p in added:
                assert await pg.fetchval(f'SELECT count(*) FROM "tenant_{p.stem}".items') == 5

            # The removed files are no longer matched by the glob; the running daemon and
            # `syncd status` still show them, as missing.
            # (each as the poller next looks at its files: hundreds of idle sources at a bounded rate)
            def all_missing() -> bool:
                live = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30).read())
                return all(live["sources"][f"tenant_{p.stem}"]["health"] == "source_missing" for p in paths[:5])

            wait_for(all_missing, 120, "the removed files reported missing", d, interval=1.0)
            t = time.monotonic()
            status = run_cli(cfg, "status", timeout=120)
            took = time.monotonic() - t
            summary = status.stdout.splitlines()[0]
            assert summary.startswith(f"{FILES + 20} sources:"), status.stdout[:500]
            assert all(f"tenant_{p.stem}" in status.stdout for p in paths[:5]), status.stdout[:3000]
            assert "--all lists every source" in status.stdout
            assert took < 60  # a liveness bound; bench/fleet.py measures it
            assert d.stop() == 0
    finally:
        stop.set()
        await watching
        await pg.close()
    assert 0 < peak <= BOUND, f"syncd held {peak} connections at once, more than its bound of {BOUND}"


