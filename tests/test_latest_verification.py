"""A table's latest verification is the one that began last: its comparison is the
newest. A run that began earlier (waiting for a change in flight) may finish after one
begun later; `syncd report` and `syncd status` must not then call the table verified
equal while that later run found it different.

The scene: a verification compares the rows, sees a change in flight (the daemon is not
running) and waits for it. Postgres is changed behind syncd's back meanwhile; a second
`syncd verify`, begun later, finds the difference and records it. Then the daemon
applies the change in flight and the first run ends clean, after the second."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time

from tests.support.daemon import DaemonProcess, run_cli, syncd_cmd
from tests.support.sync import wait_caught_up
from tests.support.verifying import pg_execute, pg_fetch, sync_and_stop, tables, verify_json, verify_section


async def _a_verify_is_polling_the_checkpoint(dsn: str) -> bool:
    """Whether some session keeps asking for the checkpoint (verify's wait for the stream)."""
    sql = ("SELECT pid, query_start FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
           "AND query LIKE '%applied_seq FROM%sources%'")
    first = {r[0]: r[1] for r in await pg_fetch(dsn, sql)}
    await asyncio.sleep(0.6)
    second = {r[0]: r[1] for r in await pg_fetch(dsn, sql)}
    return any(pid in first and second[pid] != first[pid] for pid in second)


async def test_report_does_not_call_a_table_equal_that_a_later_started_verify_found_different(
        app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db)
    conn.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT);")
    conn.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"v{i}") for i in range(1, 101)])
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")

    # A change the application makes while the daemon is down: in flight.
    conn = sqlite3.connect(app_db)
    conn.execute("UPDATE items SET v = 'changed' WHERE id = 1")
    conn.commit()
    conn.close()

    # Run A: compares, sees key 1 in flight, waits for the stream.
    a = subprocess.Popen(syncd_cmd(cfg, "verify", "--json", "--wait", "90"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=str(cfg.parent))
    try:
        deadline = time.monotonic() + 60
        while not await _a_verify_is_polling_the_checkpoint(pg_dsn):
            assert a.poll() is None, a.communicate()
            assert time.monotonic() < deadline, "verify A never started waiting for the stream"

        # Postgres changed behind syncd's back, after A compared the rows.
        await pg_execute(pg_dsn, "UPDATE app.items SET v = 'tampered' WHERE id = 2")

        # Run B, started later, finds it.
        rc_b, doc_b = verify_json(cfg, "--wait", "1")
        assert rc_b == 1
        b_items = tables(doc_b)["items"]
        assert b_items["different"] >= 1, b_items
        assert a.poll() is None, "verify A ended before B: nothing was tested"

        # The daemon applies key 1: A ends (clean, for the rows it compared).
        with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
            await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
            out, err = a.communicate(timeout=120)
            assert d.stop() == 0
    finally:
        if a.poll() is None:
            a.kill()
            a.wait(10)
    assert a.returncode == 0 and tables(json.loads(out))["items"]["different"] == 0, out

    [(a_began, a_ended), (b_began, b_ended)] = await pg_fetch(
        pg_dsn, "SELECT started_at, finished_at FROM syncd.verify_runs WHERE table_name = 'items' "
                "ORDER BY different")
    assert a_began < b_began and b_ended < a_ended, "the runs did not overlap as the scene needs"
    # The two sides differ at key 2 (read directly, neither changed since).
    pg_v = (await pg_fetch(pg_dsn, "SELECT v FROM app.items WHERE id = 2"))[0][0]
    conn = sqlite3.connect(app_db)
    sq_v = conn.execute("SELECT v FROM items WHERE id = 2").fetchone()[0]
    conn.close()
    assert (sq_v, pg_v) == ("v2", "tampered")

    doc = json.loads(run_cli(cfg, "report", "--format", "json").stdout)
    items = {t["table"]: t for t in doc["sources"][0]["tables"]}["items"]
    migrated = next(i for i in doc["checklist"] if i["key"] == "migrated")
    assert not items["last_verification"]["clean"], items["last_verification"]
    assert not any(e.startswith("app.items:") and "verified equal" in e for e in migrated["evidence"]), migrated
    assert any(p.startswith("app.items:") and "1 different" in p for p in migrated["problems"]), migrated
    status = run_cli(cfg, "status")
    assert 'table "items": 1 row(s) differed at the last consistency check' in status.stdout, status.stdout
