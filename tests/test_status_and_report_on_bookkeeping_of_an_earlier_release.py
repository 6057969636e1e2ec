"""`syncd status` and `syncd report` from an upgraded package, on the bookkeeping an
earlier release of syncd made (the package upgraded, the daemon not restarted yet, or
stopped for the upgrade): they read what is there. Postgres answers, so status must not
call it unreachable, and the report must not end in a traceback."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import pg_rows, wait_caught_up
from tests.support.verifying import pg_execute, sync_and_stop, verify, verify_section

# What the bookkeeping of earlier releases lacked, newest release first: each shape
# lacks what the one before it lacks, and more.
BEFORE_FAILING_NOTES = {  # a release of 2026-12-03, before the daemon noted FAILING in Postgres
    "columns": {"sources": ["failing", "failing_since", "failing_at", "caught_up_at"],
                "tables": ["behind_since"],
                "verify_runs": ["runs", "first_finished_at"]},
    "tables": ["rehearsals", "quieted_triggers"],
    "indexes": ["verify_runs_by_start"],
}
BEFORE_THE_SWITCH = {  # a release of 2026-12-01, before cutover and keyless tables
    "columns": {"sources": BEFORE_FAILING_NOTES["columns"]["sources"] + ["direction", "schema_version"],
                "tables": ["behind_since", "load_aside"],
                "verify_runs": ["runs", "first_finished_at"]},
    "tables": ["rehearsals", "quieted_triggers", "switches", "columns", "owned_tables"],
    "indexes": ["verify_runs_by_start"],
}


async def as_made_by(dsn: str, shape: dict) -> None:
    for table, columns in shape["columns"].items():
        for c in columns:
            await pg_execute(dsn, f"ALTER TABLE syncd.{table} DROP COLUMN {c}")
    for t in shape["tables"]:
        await pg_execute(dsn, f"DROP TABLE syncd.{t}")
    for i in shape["indexes"]:
        await pg_execute(dsn, f"DROP INDEX syncd.{i}")
    await pg_execute(dsn, "UPDATE syncd.meta SET value = 'earlier' WHERE key = 'version'")


@pytest.mark.parametrize("shape", [BEFORE_FAILING_NOTES, BEFORE_THE_SWITCH], ids=["before_failing_notes",
                                                                                 "before_the_switch"])
async def test_status_and_report_read_an_earlier_releases_bookkeeping(shape, app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db)
    conn.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE log (at TEXT, what TEXT);")
    conn.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"v{i}") for i in range(1, 301)])
    conn.executemany("INSERT INTO log VALUES (?, ?)", [(str(i), "w") for i in range(20)])
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    assert verify(cfg).returncode == 0
    await as_made_by(pg_dsn, shape)

    st = run_cli(cfg, "status", "--json")
    src = json.loads(st.stdout)["sources"][0]
    assert src["postgres_reachable"] and src["postgres_error"] is None, st.stdout
    assert src["state"] != "postgres_unreachable" and src["lag_seconds"] == 0, st.stdout
    assert {t["name"] if "name" in t else t.get("table") for t in src["tables"]} == {"items", "log"}, src["tables"]

    rep = run_cli(cfg, "report", "--format", "json")
    assert "Traceback" not in rep.stderr and rep.returncode == 1, rep.stderr[-2000:]
    doc = json.loads(rep.stdout)
    migrated = next(i for i in doc["checklist"] if i["key"] == "migrated")
    assert migrated["ok"], migrated

    # and the daemon of the upgraded package takes it from there, nothing lost
    conn.executemany("INSERT INTO items VALUES (?, ?)", [(i, "later") for i in range(301, 351)])
    conn.execute("DELETE FROM log WHERE at < '1'")
    conn.commit()
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert verify(cfg).returncode == 0
    assert await pg_rows(pg_dsn, "SELECT count(*) FROM app.items") == [(350,)]
