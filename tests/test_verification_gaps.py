"""Dual-write is judged only where it was watched: a table left longer than `[cutover]
max_verify_gap_hours` without a verification in the window fails the item, the gap named
(a daemon stopped days ago, a hole in the middle), while checks every few minutes, or a
gap shorter than the bound, raise no alarm."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import asyncpg
import pytest

from syncd.report.checklist import unwatched
from syncd.verify.history import VerifyRun, thin
from tests.support.verifying import pg_execute, verify_section
from tests.test_report import ITEMS, html_report, item, ready_migration, report, section

GAP = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"
READY = "**Verdict: READY for cutover: every checklist item is met.**"
ONLY_DUAL_WRITE = f"**Verdict: NOT READY for cutover: 1 of {len(ITEMS)} checklist items are not done.**"


@pytest.fixture
async def ready(app_db, make_config, pg_dsn, tmp_path):
    """test_report's migration that meets every item; each test here replaces its history."""
    return await ready_migration(app_db, make_config, pg_dsn, tmp_path)


def config(make_config, app_db, cutover: str = "") -> Path:
    """The `ready` migration's configuration, judging verification age by the gaps alone:
    `[status] verify_max_age_seconds` raised (30 days), as by an operator who verifies by
    hand, so the `migrated` item does not catch a stopped daemon on its own."""
    return make_config([{"name": "app", "path": str(app_db)}], name="gaps.toml",
                       extra=verify_section() + "[status]\nverify_max_age_seconds = 2592000\n"
                       '[cutover]\nbackup_glob = "backups/{source}-*.db"\n' + cutover)


async def history(dsn: str, *spans: tuple[dt.timedelta, dt.timedelta], every=dt.timedelta(minutes=5),
                  tables=("items", "notes"), keep: bool = False) -> None:
    """Replace the verification history (`keep`: add to it) with clean checks of `tables`
    every `every`, from each span's start to its end (both as ages: how long ago)."""
    if not keep:
        await pg_execute(dsn, "DELETE FROM syncd.verify_runs")
    now = dt.datetime.now(dt.timezone.utc)
    for oldest, newest in spans:
        await pg_execute(dsn, """
            INSERT INTO syncd.verify_runs (source, table_name, started_at, finished_at, rows_sqlite, rows_postgres,
                                           full_check, table_state, detail)
            SELECT 'app', t, at, at, CASE t WHEN 'items' THEN 1000 ELSE 50 END,
                   CASE t WHEN 'items' THEN 1000 ELSE 50 END, true, 'streaming', '{"reason": null, "differences": []}'
            FROM unnest($1::text[]) t, generate_series($2::timestamptz, $3::timestamptz, $4::interval) at""",
                         list(tables), now - oldest, now - newest, every)


def days(n: float) -> dt.timedelta:
    return dt.timedelta(days=n)


async def test_a_daemon_stopped_days_ago_fails_dual_write(ready, make_config, app_db, pg_dsn):
    cfg = config(make_config, app_db)
    await history(pg_dsn, (days(20), days(10)))  # checks every 5 minutes, until 10 days ago
    rc, md, rc_json, doc = report(cfg)
    assert rc == rc_json == 1, md
    assert ONLY_DUAL_WRITE in md and doc["not_done"] == ["dual_write"]
    text = section(md, "dual_write")
    for table in ("items", "notes"):
        assert re.search(rf"❌ app\.{table}: not verified since {GAP} \(10\.0 days ago\), more than \[cutover\] "
                         r"max_verify_gap_hours \(24\.0 h\): errors since would not show \(is the daemon running\?\)",
                         text), text
    assert "not verified once" not in text
    problems = item(doc, "dual_write")["problems"]
    assert [p for p in problems if "is the daemon running?" in p] == [p for p in problems if "not verified" in p]
    assert len(problems) == 2 and doc["settings"]["max_verify_gap_hours"] == 24
    # the HTML report (the daemon's status page) names it too
    rc, _, page = html_report(cfg)
    assert rc == 1 and page.items == {**{k: True for k in ITEMS}, "dual_write": False}
    assert all(p in page.all_text for p in problems)


async def test_a_hole_in_the_middle_is_named(ready, make_config, app_db, pg_dsn):
    cfg = config(make_config, app_db)
    await history(pg_dsn, (days(20), days(9)), (days(4), days(0)), tables=["items"])
    await history(pg_dsn, (days(20), days(15)), tables=["notes"], keep=True)  # not once in the window
    rc, md, _, doc = report(cfg)
    assert rc == 1 and ONLY_DUAL_WRITE in md
    text = section(md, "dual_write")
    assert re.search(rf"❌ app\.items: not verified from {GAP} to {GAP} \(5 days\), more than \[cutover\] "
                     r"max_verify_gap_hours \(24\.0 h\): errors then would not show", text), text
    assert "app.items: not verified since" not in text
    # a table not verified once in the window is one line, not a gap besides
    assert "❌ app.notes: not verified once in the last 14 days, so errors there would not show" in text
    assert len(item(doc, "dual_write")["problems"]) == 2


async def test_checks_every_few_minutes_raise_no_alarm(ready, make_config, app_db, pg_dsn):
    cfg = config(make_config, app_db)
    await history(pg_dsn, (days(20), days(0)))
    rc, md, _, doc = report(cfg)
    assert rc == 0 and READY in md, section(md, "dual_write")
    assert "no table unverified for more than 24.0 h" in section(md, "dual_write")


async def test_a_gap_shorter_than_the_bound_passes(ready, make_config, app_db, pg_dsn):
    cfg = config(make_config, app_db)
    hours = dt.timedelta(hours=1)
    await history(pg_dsn, (days(20), days(5)), (days(5) - 20 * hours, days(0)))  # 20 h without a check
    rc, md, _, doc = report(cfg)
    assert rc == 0 and READY in md, section(md, "dual_write")
    assert "no table unverified for more than 24.0 h" in section(md, "dual_write")


async def test_max_verify_gap_hours_from_the_config_changes_the_verdict(ready, make_config, app_db, pg_dsn):
    hours = dt.timedelta(hours=1)
    await history(pg_dsn, (days(20), days(5)), (days(5) - 20 * hours, days(0)))  # 20 h without a check
    cfg = config(make_config, app_db, "max_verify_gap_hours = 12\n")
    rc, md, _, doc = report(cfg)
    assert rc == 1 and ONLY_DUAL_WRITE in md
    assert re.search(rf"❌ app\.items: not verified from {GAP} to {GAP} \(20\.0 h\), more than \[cutover\] "
                     r"max_verify_gap_hours \(12\.0 h\)", section(md, "dual_write")), section(md, "dual_write")
    assert doc["settings"]["max_verify_gap_hours"] == 12

    # A bound finer than the history's stretches (an hour over 14 days): checks every 5
    # minutes still pass, and a 40-minute hole is still seen.
    cfg = config(make_config, app_db, "max_verify_gap_hours = 0.5\n")
    await history(pg_dsn, (days(20), days(0)))
    rc, md, _, _ = report(cfg)
    assert rc == 0 and READY in md, section(md, "dual_write")
    await history(pg_dsn, (days(20), days(3)), (days(3) - 40 * dt.timedelta(minutes=1), days(0)))
    rc, md, _, _ = report(cfg)
    assert rc == 1 and ONLY_DUAL_WRITE in md
    assert re.search(rf"app\.items: not verified from {GAP} to {GAP} \(40 min\), more than \[cutover\] "
                     r"max_verify_gap_hours \(30 min\)", section(md, "dual_write")), section(md, "dual_write")


async def test_a_history_the_daemon_thinned_is_judged_by_the_hour(ready, make_config, app_db, pg_dsn):
    """The daemon merges clean runs older than [verify] keep_every_run_days by the hour
    (verify/history.thin): gaps between hours are still seen; a bound under the hour
    cannot be judged inside a merged hour, and the item says so instead of guessing."""
    await history(pg_dsn, (days(20), days(9)), (days(6), days(0)))  # 3 days without a check
    conn = await asyncpg.connect(pg_dsn)
    try:
        now = dt.datetime.now(dt.timezone.utc)
        assert await thin(conn, "syncd", ["app"], now - days(2), now - days(17)) > 0
    finally:
        await conn.close()
    rc, md, _, doc = report(config(make_config, app_db))
    assert rc == 1 and ONLY_DUAL_WRITE in md
    problems = item(doc, "dual_write")["problems"]
    assert len(problems) == 2 and all(re.fullmatch(rf"app\.(items|notes): not verified from {GAP} to {GAP} "
                                                   r"\(3 days\), more than .*", p) for p in problems), problems

    await history(pg_dsn, (days(20), days(0)))
    conn = await asyncpg.connect(pg_dsn)
    try:
        await thin(conn, "syncd", ["app"], now - days(2), now - days(17))
    finally:
        await conn.close()
    rc, md, _, _ = report(config(make_config, app_db))
    assert rc == 0 and READY in md, section(md, "dual_write")
    rc, md, _, doc = report(config(make_config, app_db, "max_verify_gap_hours = 0.5\n"))
    problems = item(doc, "dual_write")["problems"]
    assert rc == 1 and len(problems) == 1, problems
    assert re.fullmatch(rf"app: items, notes: runs between {GAP} and {GAP} are merged in the history into "
                        r"stretches wider than 30 min \(\[cutover\] max_verify_gap_hours\), so a longer gap "
                        r"between them cannot be ruled out; keep every run for the window \(\[verify\] "
                        r"keep_every_run_days\) or raise the bound", problems[0]), problems[0]


async def test_many_gaps_are_the_last_ten_and_a_count(ready, make_config, app_db, pg_dsn):
    cfg = config(make_config, app_db)
    await history(pg_dsn, (days(20), days(0)), every=dt.timedelta(hours=30), tables=["items"])
    await history(pg_dsn, (days(20), days(0)), tables=["notes"], keep=True)
    rc, md, _, doc = report(cfg)
    problems = item(doc, "dual_write")["problems"]
    gaps = [p for p in problems if p.startswith("app.items: not verified from")]
    assert len(gaps) == 10, problems
    earlier = [p for p in problems if "earlier gap(s)" in p]
    assert len(earlier) == 1 and re.fullmatch(r"app: \d earlier gap\(s\) longer than 24\.0 h \(\[cutover\] "
                                              r"max_verify_gap_hours\) without a verification in the window",
                                              earlier[0]), earlier


def run(began: dt.datetime, last: dt.datetime, count: int) -> VerifyRun:
    return VerifyRun(1, "app", "items", last, last, 1, 1, 0, 0, 0, 0, 0, None, True, "streaming", {},
                     count=count, first_at=began)


def test_a_stretch_wider_than_the_bound_is_too_coarse_to_judge():
    """A history row stands for `count` runs from `began` to `finished_at`: one no wider
    than the bound covers its span; a wider one may hide a longer gap between its runs,
    so it is returned as too coarse to judge, and the gaps named are only real ones."""
    t0 = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    h = dt.timedelta(hours=1)
    bound = 2 * h
    narrow = [run(t0 + i * h, t0 + i * h + 1.5 * h, 10) for i in (0, 1.5, 3, 4.5)]
    assert unwatched(narrow, t0, t0 + 6 * h, bound) == ([], [])
    assert unwatched(narrow, t0, t0 + 9 * h, bound) == ([(t0 + 6 * h, t0 + 9 * h)], [])  # the trailing one
    assert unwatched(narrow, t0 - 3 * h, t0 + 6 * h, bound) == ([(t0 - 3 * h, t0)], [])  # the leading one
    wide = run(t0, t0 + 3 * h, 10)
    assert unwatched([wide], t0, t0 + 3 * h, bound) == ([], [wide])
    assert unwatched([wide, run(t0 + 6 * h, t0 + 6 * h, 1)], t0, t0 + 6 * h, bound) == \
        ([(t0 + 3 * h, t0 + 6 * h)], [wide])
    before = [run(t0 - 5 * h, t0 - 4 * h, 3)]  # before the window: it watched none of it
    assert unwatched(before, t0, t0 + 3 * h, bound) == ([(t0, t0 + 3 * h)], [])


async def test_a_table_created_in_the_window_is_judged_from_when_it_was_first_copied(ready, make_config, app_db,
                                                                                    pg_dsn, tmp_path):
    """A table the application created yesterday was not left unverified for the thirteen
    days before it existed: the item fails for it because its dual-write is a day old, said
    so, not for a gap in its checks before it was replicated; watched since, no gap is named."""
    import sqlite3

    from tests.support.verifying import sync_and_stop, verify

    cfg = config(make_config, app_db)
    await history(pg_dsn, (days(20), days(0)))
    conn = sqlite3.connect(app_db)
    conn.executescript("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL); INSERT INTO invoices VALUES (1, 2.5);")
    conn.close()
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "invoices.log")
    assert verify(cfg).returncode == 0
    rc, md, _, doc = report(cfg)
    assert rc == 1 and doc["not_done"] == ["dual_write"], md
    problems = item(doc, "dual_write")["problems"]
    assert len(problems) == 1 and problems[0].startswith("app.invoices: replicated since "), problems
    assert "14 days of dual-write required" in problems[0] and "not verified" not in problems[0], problems


async def test_a_table_syncd_refuses_is_named_for_that_not_for_gaps_in_its_checks(ready, make_config, app_db,
                                                                                  pg_dsn, tmp_path):
    """A table syncd does not replicate (refused: a name syncd reserves) cannot be verified,
    so no stretch of the window "went without a verification" for it: the report names the
    refusal (migrated, capture) and the checks that could not compare it, not gaps."""
    import sqlite3

    from tests.support.verifying import sync_and_stop, verify

    cfg = config(make_config, app_db)
    await history(pg_dsn, (days(20), days(0)))
    conn = sqlite3.connect(app_db)
    conn.executescript("CREATE TABLE _syncd_mine (id INTEGER PRIMARY KEY); INSERT INTO _syncd_mine VALUES (1);")
    conn.close()
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "refused.log")
    verify(cfg)
    rc, md, _, doc = report(cfg)
    assert rc == 1 and {"migrated", "capture", "dual_write"} <= set(doc["not_done"]), md
    assert any("refused" in p for p in item(doc, "migrated")["problems"])
    problems = item(doc, "dual_write")["problems"]
    assert problems and all("not verified" not in p for p in problems), problems
