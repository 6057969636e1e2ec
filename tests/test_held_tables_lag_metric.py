"""A held table's changes wait in the changelog while the stream's checkpoint moves on.
The lag operators alert on (`syncd_replication_lag_seconds`, SyncdLagHigh and
SyncdLagCritical) is the age of the oldest change not applied, held ones included, on
every scrape: not only in the instant after a step of the pipeline, before the next poll
of the file sets it back to the stream's own lag."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request

from tests.support.daemon import DaemonProcess, wait_for
from tests.support.pgcluster import free_port
from tests.support.sync import wait_caught_up

LAG = 'syncd_replication_lag_seconds{direction="to_postgres",source="app"}'
PENDING = 'syncd_pending_changes{direction="to_postgres",source="app"}'


def metric(port: int, series: str) -> float | None:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return next((float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(series + " ")), None)


async def test_lag_metric_counts_a_held_tables_waiting_change(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER); INSERT INTO t VALUES (1, 1);"
                       "CREATE TABLE other (id INTEGER PRIMARY KEY, v TEXT);")
    conn.commit()
    port = free_port()
    # The shipped retry interval of a held table (10 s), not the tests' fast one: between
    # retries the pipeline has nothing to do but poll the file.
    cfg = make_config([{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{port}",
                      sections={"stream": {"held_table_retry_seconds": 10}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO t VALUES (2, 'lots of people')")  # Postgres's integer column refuses it
        conn.commit()
        written = time.time()
        wait_for(lambda: "table held" in d.log(), 30, "hold", d)
        # Another table keeps streaming: the checkpoint moves past the held change.
        conn.execute("INSERT INTO other VALUES (1, 'x')")
        conn.commit()
        wait_for(lambda: metric(port, PENDING) == 1, 30, "the held change counted as pending", d)
        time.sleep(2.5)
        live = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read())
        assert live["sources"]["app"]["lag_seconds"] >= 2, live  # the daemon's /status knows
        # Every scrape over a few seconds: the held change is at least 2 s old throughout.
        seen = []
        for _ in range(8):
            seen.append(metric(port, LAG))
            time.sleep(0.25)
        assert metric(port, PENDING) == 1
        assert all(v is not None and 2 <= v <= time.time() - written + 2 for v in seen), (
            f"{LAG} over 2 s with a held change {time.time() - written:.1f} s old waiting: {seen}")
        assert d.stop() == 0
