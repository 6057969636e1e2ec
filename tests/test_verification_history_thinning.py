"""The verification history stays small however long dual-write runs: the daemon merges
clean runs older than [verify] keep_every_run_days by table and hour (by day before the
cutover window), and the merged row counts them. Every run stays counted in the report,
and a run that found anything or failed is kept as written."""

from __future__ import annotations

import datetime as dt
import json

from tests.support.daemon import DaemonProcess, wait_for
from tests.support.verifying import pg_execute, pg_fetch
from tests.test_report import add_run, ago, item, ready, report  # noqa: F401 - `ready` is a fixture

CLEAN = "full_check AND error IS NULL AND missing + extra + different + pending = 0"


async def history(dsn: str) -> dict:
    rows = await pg_fetch(dsn, f"""
        SELECT count(*), sum(runs),
               count(*) FILTER (WHERE table_name = 'items' AND {CLEAN} AND finished_at < now() - interval '2 days'
                                AND finished_at > now() - interval '5 days 1 hour'),
               count(*) FILTER (WHERE table_name = 'notes' AND {CLEAN} AND finished_at < now() - interval '17 days')
        FROM syncd.verify_runs""")
    rows_, runs, items_old, notes_old = rows[0]
    kept = await pg_fetch(dsn, f"SELECT id, missing, error, detail FROM syncd.verify_runs WHERE NOT ({CLEAN}) "
                               "ORDER BY id")
    return {"rows": rows_, "runs": int(runs), "items_old": items_old, "notes_old": notes_old,
            "not_clean": [tuple(r) for r in kept]}


async def test_old_clean_runs_merge_and_stay_counted(ready, pg_dsn, tmp_path):  # noqa: F811
    # items: checked every 5 minutes for 5 days (1,440 runs), two that found rows missing
    # and one that failed among them; notes: hourly, 18 to 20 days ago (48 runs).
    await pg_execute(pg_dsn, """
        INSERT INTO syncd.verify_runs (source, table_name, started_at, finished_at, rows_sqlite, rows_postgres,
                                       full_check, table_state, detail)
        SELECT 'app', 'items', now() - n * interval '300 s' - interval '1 s', now() - n * interval '300 s',
               1000, 1000, true, 'streaming', '{"reason": null, "differences": []}'
        FROM generate_series(1, 1440) n""")
    await pg_execute(pg_dsn, """
        INSERT INTO syncd.verify_runs (source, table_name, started_at, finished_at, rows_sqlite, rows_postgres,
                                       full_check, table_state, detail)
        SELECT 'app', 'notes', now() - interval '18 days' - n * interval '1 hour',
               now() - interval '18 days' - n * interval '1 hour', 50, 50, true, 'streaming',
               '{"reason": null, "differences": []}'
        FROM generate_series(0, 47) n""")
    for minutes in (2, 7):
        await add_run(pg_dsn, "items", ago(days=4, minutes=minutes), 1000, missing=3,
                      differences=[{"key": [minutes], "kind": "missing"}])
    await add_run(pg_dsn, "items", ago(days=3, minutes=1), 1000, error="Postgres went away")
    before = await history(pg_dsn)
    _, _, _, doc_before = report(ready)
    assert before["items_old"] > 800 and before["notes_old"] >= 48
    assert len(before["not_clean"]) == 3

    with DaemonProcess(ready, tmp_path / "thinning.log") as d:
        wait_for(lambda: "merged into the runs" in d.log(), 60, "the daemon to thin the history", daemon=d)
        assert d.stop() == 0
    assert "clean run(s) older than 2 day(s) merged" in d.log()

    after = await history(pg_dsn)
    # One row per table per hour before two days ago; one per day before the window.
    assert after["items_old"] <= 3 * 24 + 2, after
    assert after["notes_old"] <= 5, after  # and the fixture's daily checks
    # Every run still counted; what found anything is kept as it was written.
    assert after["runs"] == before["runs"]
    assert after["not_clean"] == before["not_clean"]
    _, md, _, doc = report(ready)
    assert doc["verifications"] == doc_before["verifications"] == before["runs"]
    assert doc["consistency_errors"] == doc_before["consistency_errors"]
    assert item(doc, "dual_write") == item(doc_before, "dual_write")
    assert f"of {before['runs']:,} verification(s)" in md
    detail = json.loads(after["not_clean"][0][3])
    assert detail["differences"] == [{"key": [2], "kind": "missing"}] or detail["differences"] == [
        {"key": [7], "kind": "missing"}]


async def test_recent_runs_stay_one_by_one(ready, pg_dsn, tmp_path, make_config, app_db):  # noqa: F811
    # Every 5 minutes for the last 16 hours, and for 8 hours ending 40 hours ago.
    await pg_execute(pg_dsn, """
        INSERT INTO syncd.verify_runs (source, table_name, started_at, finished_at, rows_sqlite, rows_postgres,
                                       full_check, table_state, detail)
        SELECT 'app', 'items', now() - n * interval '300 s', now() - n * interval '300 s', 1000, 1000, true,
               'streaming', '{"reason": null, "differences": []}'
        FROM generate_series(1, 192) n UNION ALL
        SELECT 'app', 'items', now() - interval '40 hours' - n * interval '300 s',
               now() - interval '40 hours' - n * interval '300 s', 1000, 1000, true,
               'streaming', '{"reason": null, "differences": []}'
        FROM generate_series(0, 95) n""")
    recent = "SELECT count(*) FROM syncd.verify_runs WHERE finished_at > now() - interval '17 hours'"
    older = ("SELECT count(*) FROM syncd.verify_runs WHERE finished_at < now() - interval '39 hours' "
             "AND finished_at > now() - interval '49 hours'")
    recent_before, older_before = (await pg_fetch(pg_dsn, recent))[0][0], (await pg_fetch(pg_dsn, older))[0][0]
    assert recent_before >= 192 and older_before >= 96
    before = await history(pg_dsn)
    # Kept one by one for 1.5 days here (the 2-day default would keep the older ones too).
    cfg = make_config([{"name": "app", "path": str(app_db)}],
                      extra="[verify]\ninterval_seconds = 0\nkeep_every_run_days = 1.5\n")
    with DaemonProcess(cfg, tmp_path / "recent.log") as d:
        wait_for(lambda: "merged into the runs" in d.log(), 60, "a thinning pass", daemon=d)
        assert d.stop() == 0
    assert (await pg_fetch(pg_dsn, recent))[0][0] == recent_before
    # An hour's runs are one row (and the fixture's daily checks of both tables 2 days ago).
    assert (await pg_fetch(pg_dsn, older))[0][0] <= 9 + 2
    assert (await history(pg_dsn))["runs"] == before["runs"]


async def test_two_thinnings_at_once_count_every_run_once(pg_dsn):
    """Two thinnings of one history at once (a pass still running when the next hour's
    begins, or a daemon's statement left running in Postgres when it was killed and
    started again): one merges a day's runs while the other merges them by hour, and
    neither overwrites what the other counted."""
    import asyncio

    import asyncpg

    from syncd.postgres.bookkeeping import ensure_bookkeeping
    from syncd.verify.history import thin

    setup = await asyncpg.connect(pg_dsn)
    await ensure_bookkeeping(setup, "syncd")
    await setup.execute("""
        INSERT INTO syncd.verify_runs (source, table_name, started_at, finished_at, rows_sqlite, rows_postgres,
                                       full_check, table_state, detail)
        SELECT 'app', 'items', t, t, 1000, 1000, true, 'streaming', '{"reason": null, "differences": []}'
        FROM (SELECT date_trunc('day', now() - interval '10 days') + n * interval '300 s' AS t
              FROM generate_series(0, 287) n) s""")
    day_kept = await setup.fetchval("SELECT max(id) FROM syncd.verify_runs")
    hold = await asyncpg.connect(pg_dsn)
    daily, hourly = await asyncpg.connect(pg_dsn), await asyncpg.connect(pg_dsn)
    try:
        tx = hold.transaction()
        await tx.start()
        await hold.execute("SELECT 1 FROM syncd.verify_runs WHERE id = $1 FOR UPDATE", day_kept)
        now = await setup.fetchval("SELECT now()")
        five_days, long_ago = now - dt.timedelta(days=5), now - dt.timedelta(days=100)

        async def waiting(n: int) -> None:
            for _ in range(200):
                if await setup.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                        "AND wait_event_type = 'Lock'") >= n:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"{n} thinning(s) not waiting")

        by_day = asyncio.create_task(thin(daily, "syncd", ["app"], five_days, five_days))
        await waiting(1)
        by_hour = asyncio.create_task(thin(hourly, "syncd", ["app"], five_days, long_ago))
        await waiting(2)
        await tx.rollback()
        await asyncio.wait_for(asyncio.gather(by_day, by_hour), 60)
        rows, runs = await setup.fetchrow("SELECT count(*), sum(runs) FROM syncd.verify_runs")
        assert runs == 288 and rows == 1, (rows, runs)
    finally:
        for c in (setup, hold, daily, hourly):
            await c.close()


async def test_thinning_keeps_when_the_last_run_of_an_hour_finished(pg_dsn):
    """Runs recorded out of the order they finished in (two verifications at once): the
    row an hour's clean runs merge into says when the last of them finished, as `syncd
    status` and the report read a table's last check, not an earlier one."""
    import asyncpg

    from syncd.postgres.bookkeeping import ensure_bookkeeping
    from syncd.verify.history import thin

    conn = await asyncpg.connect(pg_dsn)
    try:
        await ensure_bookkeeping(conn, "syncd")
        hour = await conn.fetchval("SELECT date_trunc('hour', now() - interval '3 days')")
        for minutes in (50, 10, 30):  # recorded in this order
            at = hour + dt.timedelta(minutes=minutes)
            await conn.execute(
                "INSERT INTO syncd.verify_runs (source, table_name, started_at, finished_at, rows_sqlite, "
                "rows_postgres, full_check, table_state, detail) VALUES ('app', 'items', $1, $1, 5, 5, true, "
                "'streaming', '{\"reason\": null, \"differences\": []}')", at)
        now = await conn.fetchval("SELECT now()")
        assert await thin(conn, "syncd", ["app"], now - dt.timedelta(days=2), now - dt.timedelta(days=30)) == 2
        row = await conn.fetchrow("SELECT finished_at, first_finished_at, runs FROM syncd.verify_runs")
        assert tuple(row) == (hour + dt.timedelta(minutes=50), hour + dt.timedelta(minutes=10), 3), row
    finally:
        await conn.close()
