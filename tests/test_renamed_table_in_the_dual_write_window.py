"""A table the application renames in SQLite during dual-write is followed under its new
name (renamed in Postgres too, streaming on without a reload): it is the same table, with
the same rows and the same history. A consistency error its checks found under the old
name inside the `[cutover] min_days` window is still an error of that table in the
window: the checklist's "zero consistency errors" must not turn true because the table
changed its name, nor `syncd cutover` go ahead on it."""

from __future__ import annotations

import datetime as dt
import sqlite3

import pytest

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, table_states, wait_caught_up
from tests.support.verifying import pg_execute, verify
from tests.test_report import add_run, item, ready_migration, report, section


@pytest.fixture
async def ready(app_db, make_config, pg_dsn, tmp_path):
    """test_report's migration that meets every item (tables items and notes)."""
    return await ready_migration(app_db, make_config, pg_dsn, tmp_path)


def ago(days: float) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)


async def test_an_error_found_before_a_rename_still_counts_for_the_renamed_table(ready, app_db, pg_dsn, tmp_path):
    # The history as syncd wrote it: checks twice a day for 20 days; 13.8 days ago (the
    # window is 14 days) one found 5 rows of notes missing in Postgres, repaired.
    await pg_execute(pg_dsn, "DELETE FROM syncd.verify_runs")
    for at in (20, 19.5, 19, 18.5, 18, 17.5, 17, 16.5, 16, 15.5, 15, 14.5, 14, 13.7):
        await add_run(pg_dsn, "notes", ago(at), 50)
    await add_run(pg_dsn, "notes", ago(13.8), 50, missing=5, repaired=5,
                  differences=[{"kind": "missing", "key": [f"n{i}"]} for i in range(5)])
    # Then (13.6 days ago) the application renamed the table, and syncd followed it.
    with DaemonProcess(ready, tmp_path / "rename.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn = sqlite3.connect(app_db, isolation_level=None)
        conn.execute("ALTER TABLE notes RENAME TO memos")
        conn.close()

        async def followed() -> bool:
            return (await table_states(pg_dsn, "app")).get("memos", ("",))[0] == "streaming"

        await eventually(followed, 30, "the renamed table streaming", d)
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert "renamed in Postgres too" in d.log()
        assert d.stop() == 0
    await pg_execute(pg_dsn, "UPDATE syncd.events SET at = $1 WHERE kind = 'table_renamed'", ago(13.6))
    # The checks went on twice a day, under the table's new name from then on.
    for half_days in range(40, 0, -1):
        await add_run(pg_dsn, "items", ago(half_days / 2), 1000)
    for half_days in range(27, 0, -1):  # 13.5 days ago on
        await add_run(pg_dsn, "memos", ago(half_days / 2), 50)
    assert verify(ready).returncode == 0  # and today's real check

    rc, md, rc_json, doc = report(ready)
    assert rc == rc_json == 1 and doc["ready"] is False, section(md, "dual_write")
    problems = item(doc, "dual_write")["problems"]
    assert any("consistency error" in p and "5 missing" in p for p in problems), problems

    dry = run_cli(ready, "cutover", "--dry-run")
    assert dry.returncode == 1 and "app: REFUSED" in dry.stdout, dry.stdout
