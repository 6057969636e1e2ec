"""Drift found is drift fixed: with `[verify] repair = true` (the default) the daemon's
periodic check replays the rows it finds different through the stream, as `syncd
verify --repair` does; each repair is logged, counted in syncd_repaired_rows_total and
kept in the verification history, where the cutover report still sees it as a
consistency error. With `repair = false` the rows are reported and left alone."""

from __future__ import annotations

import json
import signal
import time

from tests.conftest import write_config
from tests.support.app import create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.pgcluster import free_port
from tests.support.sync import eventually, wait_caught_up
from tests.support.verifying import pg_execute, pg_fetch
from tests.test_metrics import scrape

DRIFT = """
    UPDATE app.items SET v = 'drifted' WHERE id IN (10, 11);
    DELETE FROM app.items WHERE id = 20;
    INSERT INTO app.items (id, v) VALUES (9999, 'extra');
"""
REPAIRED = 'syncd_repaired_rows_total{source="app",table="items"}'
CHECKED = 'syncd_consistency_last_check_timestamp_seconds{source="app",table="items"}'


def start(tmp_path, dsn, repair: bool | None) -> tuple:
    db = tmp_path / "app.db"
    create_items(db, rows=500)
    port = free_port()
    verify = {"interval_seconds": 1, **({} if repair is None else {"repair": repair})}
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}],
                       metrics_listen=f"127.0.0.1:{port}", sections={"verify": verify})
    return db, port, cfg


async def test_the_periodic_check_repairs_drift_and_keeps_it_on_record(tmp_path, pg_dsn):
    db, port, cfg = start(tmp_path, pg_dsn, repair=None)  # the default
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        wait_for(lambda: scrape(port).get(CHECKED), 30, "a first consistency check", d)
        assert scrape(port)[REPAIRED] == 0  # nothing repaired while nothing drifted

        await pg_execute(pg_dsn, DRIFT)

        async def fixed() -> bool:
            return await compare_table(str(db), pg_dsn, "app", "items") == []

        await eventually(fixed, 60, "the daemon to repair the drifted rows", d)
        wait_for(lambda: scrape(port).get(REPAIRED) == 4, 30, "the repair to be counted", d)
        d.wait_log('consistency check repaired 4 row(s) of "items" (1 missing in Postgres, 1 extra in Postgres, '
                   "2 different): keys 10, 11, 20, 9999; now equal")
        assert d.stop() == 0

    runs = await pg_fetch(pg_dsn, "SELECT missing, extra, different, repaired, full_check FROM syncd.verify_runs "
                                  "WHERE table_name = 'items' ORDER BY id")
    found = [r for r in runs if r["repaired"]]
    assert len(found) == 1 and (found[0]["missing"], found[0]["extra"], found[0]["different"]) == (1, 1, 2)
    assert found[0]["repaired"] == 4 and found[0]["full_check"]
    after = runs[runs.index(found[0]) + 1]
    assert (after["missing"], after["extra"], after["different"], after["repaired"]) == (0, 0, 0, 0)

    # The cutover report's 14-day gate still counts the repaired difference as an error.
    out = run_cli(cfg, "report", "--format", "json")
    doc = json.loads(out.stdout)
    dual = next(i for i in doc["checklist"] if i["key"] == "dual_write")
    assert not dual["ok"]
    assert any("app.items: consistency error" in p and
               "1 missing in Postgres, 1 extra in Postgres, 2 different; 4 repaired" in p for p in dual["problems"])


async def test_with_repair_off_drift_is_reported_and_left(tmp_path, pg_dsn):
    db, port, cfg = start(tmp_path, pg_dsn, repair=False)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        await pg_execute(pg_dsn, DRIFT)
        mismatched = 'syncd_consistency_mismatched_rows{source="app",table="items"}'
        wait_for(lambda: scrape(port).get(mismatched) == 4, 30, "the check to find the drifted rows", d)
        first = scrape(port)[CHECKED]
        wait_for(lambda: scrape(port)[CHECKED] > first, 30, "another check", d)
        assert scrape(port)[mismatched] == 4 and scrape(port)[REPAIRED] == 0
        d.wait_log("consistency check: 1 table(s) differ (items)")
        assert "repaired" not in d.log()
        assert d.stop() == 0
    assert len(await compare_table(str(db), pg_dsn, "app", "items")) == 4


# Loaded by the daemon's interpreter (sitecustomize): the check's replay waits a moment
# for the stream (as behind a busy one), having said so in the file SYNCD_REPLAYING names.
SLOW_REPLAY = '''
import asyncio
import os
import syncd.verify.repair

_apply = syncd.verify.repair.apply_through_stream


async def apply_through_stream(*args, **kwargs):
    open(os.environ["SYNCD_REPLAYING"], "w").close()
    await asyncio.sleep(0.5)
    return await _apply(*args, **kwargs)


syncd.verify.repair.apply_through_stream = apply_through_stream
'''


async def test_a_stop_while_the_check_replays_its_repair_keeps_the_repair_on_record(tmp_path, pg_dsn):
    """SIGTERM while the periodic check waited for the stream to apply its replay: the
    check was cancelled at once, and the run that found the rows was left without its
    repair, though the stream applied the replay. A check in its repair is given a
    moment at the stop to see it applied and keep it on record; the stop stays quick."""
    db, port, cfg = start(tmp_path, pg_dsn, repair=True)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_REPLAY)
    replaying = tmp_path / "replaying"
    env = {"PYTHONPATH": str(tmp_path / "site"), "SYNCD_REPLAYING": str(replaying)}
    with DaemonProcess(cfg, tmp_path / "syncd.log", env=env) as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        wait_for(lambda: scrape(port).get(CHECKED), 30, "a first consistency check", d)
        await pg_execute(pg_dsn, DRIFT)
        wait_for(replaying.exists, 30, "the check to replay its repair", d)
        started = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(15) == 0, d.log()[-3000:]
        took = time.monotonic() - started
    assert await compare_table(str(db), pg_dsn, "app", "items") == []
    runs = await pg_fetch(pg_dsn, "SELECT missing, extra, different, repaired FROM syncd.verify_runs "
                                  "WHERE table_name = 'items' AND missing + extra + different > 0")
    assert [(r["missing"], r["extra"], r["different"], r["repaired"]) for r in runs] == [(1, 1, 2, 4)], \
        d.log()[-3000:]
    assert took < 4, f"{took:.1f} s to stop"
