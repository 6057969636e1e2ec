"""`syncd verify --repair` with no daemon running replays the differing rows through
syncd's own pipeline, which first applies every change queued while the daemon was
stopped. If one of those holds the table (a value Postgres cannot take), the replayed
rows stay queued behind the hold: nothing was repaired, and neither the command's
output nor the verification history (read by `syncd report`) may say otherwise."""

from __future__ import annotations

import json
import sqlite3

from tests.support.daemon import run_cli
from tests.support.sync import table_states
from tests.support.verifying import pg_execute, pg_fetch, sync_and_stop, verify


async def test_a_replay_held_behind_a_bad_value_is_not_reported_as_repaired(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
    conn.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"v{i}", i) for i in range(1, 101)])
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"verify": {"interval_seconds": 0}})
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    # Drift in Postgres, and (the daemon stopped) the application writes a value bigint cannot hold.
    await pg_execute(pg_dsn, "UPDATE app.items SET v = 'drift' WHERE id IN (10, 11); DELETE FROM app.items WHERE id = 12")
    conn.execute("UPDATE items SET n = 'not a number' WHERE id = 50")
    conn.commit()
    conn.close()

    out = verify(cfg, "--repair", "--wait", "3")
    assert (await table_states(pg_dsn, "app"))["items"][0] == "held", out.stdout + out.stderr
    rows = await pg_fetch(pg_dsn, "SELECT id, v FROM app.items WHERE id IN (10, 11, 12) ORDER BY id")
    assert [tuple(r) for r in rows] == [(10, "drift"), (11, "drift")]  # nothing was repaired
    assert out.returncode == 1

    runs = await pg_fetch(pg_dsn, "SELECT missing, different, repaired FROM syncd.verify_runs "
                                  "WHERE table_name = 'items' ORDER BY id")
    assert runs[0]["missing"] == 1 and runs[0]["different"] == 2
    repair_line = next(line for line in out.stdout.splitlines() if line.startswith("app: repair:"))
    assert "applied by" not in repair_line, repair_line
    assert all(r["repaired"] == 0 for r in runs), [dict(r) for r in runs]
    report = json.loads(run_cli(cfg, "report", "--format", "json").stdout)
    dual = next(i for i in report["checklist"] if i["key"] == "dual_write")
    assert not any("repaired" in p for p in dual["problems"]), dual["problems"]
