"""`syncd status`: state, lag, pending changes and Nagios exit codes, with and without
the daemon running."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import secrets
import sqlite3
import threading
import time
import urllib.request

import asyncpg

from syncd.config import StatusSettings
from syncd.status import CRITICAL, OK, UNKNOWN, WARNING, SourceStatus, TableStatus, evaluate
from tests.conftest import _admin, with_database, write_config
from tests.support.app import create_items
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.pgcluster import free_port
from tests.support.sync import eventually, pg_rows, wait_caught_up
from tests.test_kill9 import wait_loading


def metric(port: int, series: str) -> float | None:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return next((float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(series + " ")), None)

LIMITS = StatusSettings(warn_lag_seconds=30, crit_lag_seconds=300, verify_max_age_seconds=3600)
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.timezone.utc)


def checked(name: str, at: dt.datetime, **changes) -> TableStatus:
    """A streaming table whose last consistency check, at `at`, compared it."""
    return TableStatus(name, "streaming", last_verify_at=at.isoformat(), last_verify_differences=0,
                       last_compared_at=at.isoformat(), **changes)


def healthy(**changes) -> SourceStatus:
    st = SourceStatus(name="s", path="/x.db", state="streaming", daemon_running=True, sqlite_exists=True,
                      capture_installed=True, postgres_reachable=True, initialized=True, lag_seconds=0.5,
                      pending_changes=0,
                      tables=[checked("t", NOW - dt.timedelta(minutes=5))])
    for k, v in changes.items():
        setattr(st, k, v)
    return st


def test_evaluate_verdicts():
    assert evaluate(healthy(), LIMITS, NOW) == OK
    assert evaluate(healthy(lag_seconds=31), LIMITS, NOW) == WARNING
    assert evaluate(healthy(lag_seconds=301), LIMITS, NOW) == CRITICAL
    assert evaluate(healthy(postgres_reachable=False, postgres_error="refused"), LIMITS, NOW) == CRITICAL
    assert evaluate(healthy(daemon_running=False, pending_changes=3), LIMITS, NOW) == CRITICAL
    assert evaluate(healthy(daemon_running=False, pending_changes=0), LIMITS, NOW) == WARNING
    assert evaluate(healthy(tables=[TableStatus("t", "held", reason="bad value")]), LIMITS, NOW) == CRITICAL
    assert evaluate(healthy(tables=[TableStatus("t", "streaming")]), LIMITS, NOW) == WARNING  # never verified
    assert evaluate(healthy(tables=[checked("t", NOW - dt.timedelta(hours=2))]), LIMITS, NOW) == WARNING
    # Checked a minute ago, yet compared nothing (or failed): no evidence, and the last
    # comparison (two hours ago) is what ages.
    for why in ({"last_verify_uncompared": "the Postgres copy has columns SQLite lacks"},
                {"last_verify_error": "Postgres: timed out"}):
        st = healthy(tables=[checked("t", NOW - dt.timedelta(minutes=1), **why)])
        st.tables[0].last_compared_at = (NOW - dt.timedelta(hours=2)).isoformat()
        assert evaluate(st, LIMITS, NOW) == WARNING, why
        assert "compared nothing" in st.problems[0].message or "failed" in st.problems[0].message
    assert evaluate(healthy(tables=[TableStatus("t", "streaming", last_verify_at=NOW.isoformat(),
                                                last_verify_differences=4)]), LIMITS, NOW) == CRITICAL
    assert evaluate(healthy(sqlite_exists=False), LIMITS, NOW) == CRITICAL
    assert evaluate(healthy(sqlite_error="cannot read"), LIMITS, NOW) == UNKNOWN
    assert evaluate(healthy(step_seconds=2.5), LIMITS, NOW) == OK
    st = healthy(step_seconds=95)  # a step waiting on a server that does not answer
    assert evaluate(st, LIMITS, NOW) == WARNING and "current step has run for 95 s" in st.problems[0].message


def test_the_consistency_column_is_no_ok_from_a_check_made_before_a_tables_columns_changed():
    """A column added since the last check was never compared: the table of `syncd status`
    says so in its CONSISTENCY column, as the problem under it does, not "ok" from that check."""
    from syncd.cli.status import render
    st = healthy(tables=[checked("t", NOW - dt.timedelta(minutes=5), columns_changed='column "tag" added')])
    verdict = evaluate(st, LIMITS, NOW)
    assert verdict == WARNING
    text = render(verdict, [st])
    row = text.splitlines()[1]
    assert "ok (" not in row and row.endswith("1 changed since checked"), text


def test_the_consistency_column_counts_a_table_held_while_a_retry_copies_it_as_held():
    """A held table whose retry copies it again (loading, the hold's reason kept) is held
    all the same: the CONSISTENCY column of `syncd status` says "1 held", as the problem
    under it does, not "1 loading" (a table on its first copy, nothing wrong)."""
    from syncd.cli.status import render
    st = healthy(tables=[TableStatus("t", "loading", reason="value out of range for type integer")])
    verdict = evaluate(st, LIMITS, NOW)
    assert verdict == CRITICAL and "held, being copied again to retry" in st.problems[0].message
    row = render(verdict, [st]).splitlines()[1]
    assert row.endswith("1 held"), row


def test_the_rollback_deadline_reads_as_the_report_writes_it():
    """`syncd status` gives the rollback deadline as the report does (UTC, to the minute),
    and says so once it has passed (the daemon ends the way back at its next check)."""
    from syncd.cli.status import render
    ahead = healthy(rollback_until="2099-01-03T03:09:31+00:00")
    assert "  s: SQLite follows Postgres; `syncd rollback` possible until 2099-01-03 03:09 UTC\n" \
        in render(OK, [ahead])
    passed = healthy(rollback_until="2026-12-04T03:12:47+00:00")
    assert "`syncd rollback` possible until 2026-12-04 03:12 UTC, a time now passed: the daemon ends the way " \
           "back at its next check" in render(OK, [passed])


def test_a_time_a_moment_ahead_of_the_hosts_clock_reads_0s_ago():
    """LAST APPLIED stamped by Postgres's clock, read on a host whose clock is behind it,
    reads "0s ago" (as the report writes it), never "-3s ago"."""
    from syncd.cli.status import _ago
    now = dt.datetime.now(dt.timezone.utc)
    assert _ago((now + dt.timedelta(seconds=3)).isoformat()) == "0s ago"
    assert _ago((now - dt.timedelta(seconds=600)).isoformat()) == "10m ago"


def test_consistency_checks_are_behind_only_when_later_than_scheduling_explains():
    from syncd.cli.status import behind_note

    # the daemon starts due checks once a second, and a check takes its time
    assert behind_note(0.4, 60) is None and behind_note(5.0, 10) is None and behind_note(25, 300) is None
    note = behind_note(45, 60)
    assert note == ("the daemon's consistency checks are 45 s behind [verify] interval_seconds (60 s): "
                    "raise [verify] concurrency or the interval")
    assert behind_note(31, 300) is not None


def test_a_fleets_summary_lists_only_the_sources_it_shows():
    """Past LIST_ALL_UP_TO sources `syncd status` is a summary: a fleet loading its files,
    or cut over with the way back running, does not print a line for each of them."""
    from syncd.cli.status import LIST_ALL_UP_TO, render

    until = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=7)).isoformat()
    fleet = [healthy(name=f"t{i:03d}", lag_seconds=0.0, state="snapshotting", rollback_until=until,
                     tables=[TableStatus("items", "loading", snapshot_rows=5, snapshot_total=10)])
             for i in range(LIST_ALL_UP_TO * 5)]
    fleet[7].lag_seconds = 42.0  # the one furthest behind: shown
    out = render(OK, fleet, every=False)
    assert "t007" in out and "t008" not in out, out
    assert len(out.splitlines()) < 20, out
    assert f"SQLite follows Postgres for {len(fleet)} source(s): `syncd rollback` possible until" in out, out


def test_unreadable_config_is_unknown(tmp_path):
    cfg = tmp_path / "syncd.toml"
    cfg.write_text("[postgres\n")
    r = run_cli(cfg, "status")
    assert r.returncode == 3 and r.stdout.startswith("UNKNOWN: config")
    r = run_cli(cfg, "status", "--json")
    assert r.returncode == 3 and json.loads(r.stdout)["status"] == "UNKNOWN"


async def mark_verified(dsn, source, tables) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for t in tables:
            await conn.execute(
                "INSERT INTO syncd.verify_runs (source, table_name, started_at, rows_sqlite, rows_postgres) "
                "VALUES ($1, $2, now(), 1, 1)", source, t)
    finally:
        await conn.close()


async def test_status_with_and_without_the_daemon(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');")
    conn.commit()
    port = free_port()
    cfg = make_config([{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{port}")
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        await mark_verified(pg_dsn, "app", ["t"])
        r = run_cli(cfg, "status", "--json")
        doc = json.loads(r.stdout)
        assert r.returncode == 0, r.stdout
        src = doc["sources"][0]
        assert (doc["status"], src["state"], src["daemon_running"], src["pending_changes"]) == (
            "OK", "streaming", True, 0)
        assert src["lag_seconds"] == 0 and src["tables"][0]["state"] == "streaming"
        assert 0 <= src["step_seconds"] < 30  # the daemon's own figure: its step in progress
        assert d.stop() == 0
    # daemon gone, changes waiting: critical, and says why
    conn.execute("INSERT INTO t VALUES (2, 'b')")
    conn.commit()
    r = run_cli(cfg, "status")
    assert r.returncode == 2
    assert "daemon not running and 1 change(s) wait to be applied" in r.stdout
    assert r.stdout.splitlines()[0].split()[:2] == ["SOURCE", "STATE"]


async def test_status_reads_each_file_for_pending_changes_and_changelog_size(tmp_path, pg_dsn):
    """What status reads from a file itself, without the daemon: whether capture is
    installed, the changes past the checkpoint, and the changelog's size on disk."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');")
    conn.commit()
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(db)}])

    def facts() -> dict:
        return json.loads(run_cli(cfg, "status", "--json").stdout)["sources"][0]

    before = facts()
    assert (before["capture_installed"], before["pending_changes"]) == (False, None)
    assert "capture is not installed in the SQLite file" in run_cli(cfg, "status").stdout
    assert run_cli(cfg, "init").returncode == 0
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    idle = facts()
    assert (idle["capture_installed"], idle["pending_changes"], idle["changelog_bytes"]) == (True, 0, page)
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "x" * 50) for i in range(2, 2002)])
    conn.commit()
    busy = facts()
    assert busy["pending_changes"] == 2000
    measured = conn.execute("SELECT sum(pgsize) FROM dbstat WHERE name = '_syncd_changelog'").fetchone()[0]
    assert busy["changelog_bytes"] == measured > page
    conn.close()


async def test_postgres_down_is_critical_and_redacted(tmp_path):
    db = tmp_path / "app.db"
    sqlite3.connect(db).execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    cfg = write_config(tmp_path / "syncd.toml", f"postgresql://syncd:hunter2@127.0.0.1:{free_port()}/x",
                       [{"name": "app", "path": str(db)}])
    r = run_cli(cfg, "status")
    assert r.returncode == 2
    assert "Postgres unreachable" in r.stdout and "syncd:***@" in r.stdout
    assert "hunter2" not in r.stdout + r.stderr
    [row] = [line for line in r.stdout.splitlines() if line.startswith("app ")]
    assert "unknown" in row and "never" not in row, row  # Postgres away: when it last applied is unknown


async def test_postgres_lost_part_way_leaves_no_half_read_tables_judged(tmp_path, outage, pg_dsn):
    """The connection drops while status reads the consistency checks, after it read the
    tables: Postgres unreachable, CRITICAL, and nothing said of the tables' checks, which
    were not read; it said the streaming table had not been checked since it was copied."""
    proxy, dsn = outage
    db = tmp_path / "app.db"
    sqlite3.connect(db).execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}])
    assert run_cli(cfg, "init").returncode == 0
    pg = await asyncpg.connect(pg_dsn)
    try:  # as the daemon leaves it once the table is copied
        await pg.execute("UPDATE syncd.tables SET state = 'streaming', snapshot_finished_at = now()")
    finally:
        await pg.close()
    proxy.lose_reply_after(b"verify_runs", then=b"verify_runs", refuse_after=True)
    r = run_cli(cfg, "status")
    assert proxy.reply_lost.is_set()
    assert r.returncode == CRITICAL, r.stdout + r.stderr
    problems = [x for x in r.stdout.splitlines() if x.startswith(("CRITICAL: app:", "WARNING: app:"))]
    assert len(problems) == 1 and "Postgres unreachable" in problems[0], r.stdout
    [row] = [x for x in r.stdout.splitlines() if x.startswith("app ")]
    assert "streaming" not in row and "unchecked" not in row, row

async def test_postgres_lost_part_way_during_a_cutover_still_warns_that_the_application_s_writes_fail(
        tmp_path, outage, pg_dsn):
    """A cutover or rollback runs (it holds the source's switch lock) and the connection
    drops while status reads the consistency checks: Postgres unreachable, and status still
    says the switch runs and that the application's writes fail at once meanwhile, which it
    had read before the failure; it dropped that warning with everything else it had read."""
    from syncd.cutover import take_switch_lock
    from syncd.postgres import bookkeeping as bk

    proxy, dsn = outage
    db = tmp_path / "app.db"
    sqlite3.connect(db).execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}])
    assert run_cli(cfg, "init").returncode == 0
    pg = await asyncpg.connect(pg_dsn, server_settings={"application_name": "syncd cutover"})
    try:  # as a running cutover holds it
        key = (await bk.recorded_keys(pg, "syncd")).get("app") or bk.lock_key("app")
        assert await take_switch_lock(pg, key)
        proxy.lose_reply_after(b"verify_runs", then=b"verify_runs", refuse_after=True)
        r = run_cli(cfg, "status")
    finally:
        await pg.close()
    assert proxy.reply_lost.is_set()
    assert r.returncode == CRITICAL, r.stdout + r.stderr
    assert "Postgres unreachable" in r.stdout, r.stdout
    assert "a cutover or rollback of this source is running (syncd cutover)" in r.stdout, r.stdout
    assert "fail at once" in r.stdout, r.stdout


async def test_a_role_postgres_does_not_know_is_named_as_refused_with_the_files_pending_changes(tmp_path, pg_dsn):
    """Postgres answers and refuses the DSN's role (none of that name): status says the role
    was refused, naming it and never its password, not that Postgres is unreachable; the
    changes waiting in the SQLite file, which only the file tells, are still shown."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.commit()
    assert run_cli(write_config(tmp_path / "admin.toml", pg_dsn, [{"name": "app", "path": str(db)}]),
                   "init").returncode == 0
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(3)])
    conn.commit()
    conn.close()
    role = f"no_such_role_{secrets.token_hex(4)}"
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn.replace("postgres@", f"{role}:hunter2@"),
                       [{"name": "app", "path": str(db)}])
    r = run_cli(cfg, "status")
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in out and "hunter2" not in out, out
    assert "unreachable" not in out.lower(), out
    line = next(x for x in out.splitlines() if x.startswith("CRITICAL: app:"))
    assert f"refused syncd's role {role}" in line and f'role "{role}" does not exist' in line, out
    [row] = [x for x in r.stdout.splitlines() if x.startswith("app ")]
    assert row.split()[1:3] == ["postgres", "refused"] and row.split()[6] == "3", row  # PENDING, from the file
    doc = json.loads(run_cli(cfg, "status", "--json").stdout)["sources"][0]
    assert (doc["state"], doc["postgres_refused"], doc["pending_changes"]) == ("postgres_refused", True, 3), doc


async def test_halted_table_is_critical_with_reason(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER); INSERT INTO t VALUES (1, 1);")
    conn.commit()
    port = free_port()
    cfg = make_config([{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{port}")
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO t VALUES (2, 'lots of people')")
        conn.commit()
        written = time.time()
        wait_for(lambda: "table held" in d.log(), 30, "hold", d)
        r = run_cli(cfg, "status")
        assert r.returncode == 2
        assert 'CRITICAL: app: table "t" held: table "t" key 2 column "n"' in r.stdout
        # The table is replicated, its changes queued: the CONSISTENCY cell says held, not
        # "not replicated" (that is for tables Postgres does not have at all).
        row = next(line for line in r.stdout.splitlines() if line.startswith("app "))
        assert row.rstrip().endswith("1 held"), r.stdout
        # The held table's changes queue behind the checkpoint, which moves on: pending all the same.
        conn.executemany("UPDATE t SET n = n + 1 WHERE id = ?", [(1,)] * 5)
        conn.commit()
        doc = json.loads(run_cli(cfg, "status", "--json").stdout)
        assert doc["sources"][0]["pending_changes"] >= 6, doc["sources"][0]
        # The daemon's own figures (its metrics, its /status the report reads) count them
        # too, and its lag is the held change's age, not the stream's.
        wait_for(lambda: metric(port, 'syncd_pending_changes{direction="to_postgres",source="app"}') == 6, 30,
                 "the daemon counting the held table's queue", d)
        time.sleep(1.5)
        live = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read())
        assert live["sources"]["app"]["pending_changes"] == 6, live
        assert live["sources"]["app"]["lag_seconds"] >= 1.5, live
        assert live["sources"]["app"]["lag_seconds"] <= time.time() - written + 2, live
        assert d.stop() == 0


async def test_checks_that_compare_nothing_are_no_evidence_of_consistency(tmp_path, make_config, pg_dsn):
    """Someone adds a column to the Postgres copy: the periodic checks are recorded but
    compare nothing. Status says so (not "ok", not exit 0) instead of taking each such
    run as a fresh check."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');")
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            await pg.execute("ALTER TABLE app.t ADD COLUMN note text")
            await pg.execute("UPDATE app.t SET v = 'drift'")
            seen = await pg.fetchval("SELECT max(id) FROM syncd.verify_runs")

            async def uncompared_run() -> bool:
                return await pg.fetchval("SELECT count(*) FROM syncd.verify_runs WHERE id > $1 AND NOT full_check",
                                         seen or 0) > 0

            for _ in range(300):
                if await uncompared_run():
                    break
                await asyncio.sleep(0.1)
            assert await uncompared_run(), d.log()[-3000:]
        finally:
            await pg.close()
        r = run_cli(cfg, "status")
        assert r.returncode != 0, r.stdout
        assert 'table "t": last consistency check compared nothing' in r.stdout, r.stdout
        assert "1 not compared" in r.stdout and "ok (" not in r.stdout, r.stdout
        assert d.stop() == 0


async def test_another_configurations_daemon_on_the_port_is_not_taken_for_ours(tmp_path, pg_dsn, pg_server):
    """Two configurations on one host, one [metrics] listen: B's daemon is stopped and A's
    answers on the port, with a source of the same name. B's status takes nothing from
    A's daemon: its source's daemon is not running, with B's changes waiting."""
    port = free_port()
    dbs = {}
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        dbs[side] = tmp_path / side / "app.db"
        conn = sqlite3.connect(dbs[side])
        conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');")
        conn.commit()
        conn.close()
    cfg_a = write_config(tmp_path / "a" / "syncd.toml", pg_dsn, [{"name": "app", "path": str(dbs["a"]),
                                                                   "schema": "side_a"}],
                         metrics_listen=f"127.0.0.1:{port}")
    other = f"syncd_test_{secrets.token_hex(6)}"  # B's own database, as a second application's
    await _admin(pg_server, f'CREATE DATABASE "{other}"')
    cfg_b = write_config(tmp_path / "b" / "syncd.toml", with_database(pg_server, other),
                         [{"name": "app", "path": str(dbs["b"]), "schema": "side_b"}],
                         metrics_listen=f"127.0.0.1:{port}")
    assert run_cli(cfg_b, "init").returncode == 0
    with DaemonProcess(cfg_a, tmp_path / "a.log") as d:
        await wait_caught_up(dbs["a"], pg_dsn, "app", daemon=d)
        conn = sqlite3.connect(dbs["b"])
        conn.execute("INSERT INTO t VALUES (2, 'waiting')")
        conn.commit()
        conn.close()
        mine = json.loads(run_cli(cfg_a, "status", "--json").stdout)["sources"][0]
        assert mine["daemon_running"] is True and mine["state"] == "streaming"
        theirs = json.loads(run_cli(cfg_b, "status", "--json").stdout)["sources"][0]
        assert theirs["state"] != "streaming" and theirs["pending_changes"] >= 1, theirs
        assert d.stop() == 0
    await _admin(pg_server, f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')


async def test_a_check_made_before_a_table_was_copied_again_is_not_its_consistency(tmp_path, make_config, pg_dsn):
    """After a reload (`syncd resync`) the rows a consistency check compared are gone:
    `syncd status` says the table is not checked since its copy, not "ok" from before,
    and the report does not count that check as the table's validation, until a check
    compares the new copy."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');")
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 86400}})

    def table_t():
        r = run_cli(cfg, "status", "--json")
        src = json.loads(r.stdout)["sources"][0]
        return next(t for t in src["tables"] if t["name"] == "t"), [p["message"] for p in src["problems"]]

    def migrated():  # the report's "all data migrated and validated" item
        doc = json.loads(run_cli(cfg, "report", "--format", "json").stdout)
        return next(i for i in doc["checklist"] if i["key"] == "migrated")

    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        t, problems = table_t()
        first_copy = t["copied_at"]
        assert t["last_compared_at"] is not None and t["last_verify_differences"] == 0, t
        assert not any("consistency" in m for m in problems), problems
        assert migrated()["ok"]

        time.sleep(1.1)  # the copy's time, to the second, after the check's
        r = run_cli(cfg, "resync", "--source", "app", "--table", "t")
        assert r.returncode == 0, r.stdout + r.stderr
        wait_for(lambda: (lambda t: t["state"] == "streaming" and t["copied_at"] != first_copy)(table_t()[0]),
                 60, "t copied again")
        t, problems = table_t()
        assert (t["last_compared_at"], t["last_verify_at"]) == (None, None), t
        assert f'table "t": consistency not checked since the table was copied ({t["copied_at"]})' \
            in problems, problems
        item = migrated()
        assert not item["ok"] and len(item["problems"]) == 1, item
        assert item["problems"][0].startswith("app.t: not verified since the table was copied again at "), \
            item
        for form in ("markdown", "html"):  # the table's row shows that check as older than the copy
            assert "equal (before the table was copied again, " in run_cli(cfg, "report", "--format", form).stdout

        assert run_cli(cfg, "verify").returncode == 0
        t, problems = table_t()
        assert t["last_compared_at"] is not None and not any("consistency" in m for m in problems), problems
        assert migrated()["ok"]
        assert "before the table was copied again" not in run_cli(cfg, "report").stdout


async def test_a_check_made_before_a_tables_columns_changed_is_not_its_consistency(tmp_path, make_config, pg_dsn):
    """A column added since the last consistency check was never compared: its values
    may all differ in Postgres. `syncd status` says the table is not checked since its
    columns changed, as the report does, not "ok" from the check before, until a check
    compares the table as it is. A table without a key, whose check compares the rowid
    column syncd keys it on in Postgres, changed nothing."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');"
                       "CREATE TABLE events (msg TEXT); INSERT INTO events VALUES ('started');")
    conn.close()
    # Checked by `syncd verify` alone: no check of the daemon's repairs the column meanwhile.
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})

    def status():
        r = run_cli(cfg, "status", "--json")
        return r.returncode, [p["message"] for p in json.loads(r.stdout)["sources"][0]["problems"]]

    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        assert status() == (0, [])

        conn = sqlite3.connect(db)
        conn.execute("ALTER TABLE t ADD COLUMN tag TEXT")
        conn.execute("UPDATE t SET tag = 'x'")
        conn.commit()
        conn.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            await pg.execute("UPDATE app.t SET tag = 'not what SQLite holds'")  # the column never compared
        finally:
            await pg.close()
        code, problems = status()
        assert 'table "t": consistency not checked since its columns changed (column "tag" added)' in problems, \
            problems
        assert code == WARNING, problems

        assert run_cli(cfg, "verify").returncode != 0  # compared as it is now: the difference shows
        code, problems = status()
        assert code == CRITICAL and any('table "t": 1 row(s) differed' in m for m in problems), problems
        assert not any("columns changed" in m for m in problems), problems


async def test_status_waits_for_a_locked_file_as_long_as_read_busy_timeout_ms(tmp_path, pg_dsn):
    """A file its application holds locked is read again after the first look, waited for
    [sqlite] read_busy_timeout_ms as every syncd reader waits: a lock let go within it is
    waited out and the file read; one held past it is said in one line, naming the file."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = delete")  # BEGIN EXCLUSIVE keeps every reader out
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');")

    def status_while_locked(wait_ms: int, held_seconds: float | None) -> dict:
        """`syncd status --json`'s source while the file is held locked, let go after
        `held_seconds` (None: once status has answered)."""
        cfg = write_config(tmp_path / f"syncd-{wait_ms}.toml", pg_dsn, [{"name": "app", "path": str(db)}],
                           sections={"sqlite": {"read_busy_timeout_ms": wait_ms}})
        conn.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(held_seconds, conn.execute, ("ROLLBACK",)) if held_seconds else None
        try:
            if release is not None:
                release.start()
            return json.loads(run_cli(cfg, "status", "--json").stdout)["sources"][0]
        finally:
            if release is not None:
                release.join()
            else:
                conn.execute("ROLLBACK")

    assert run_cli(write_config(tmp_path / "init.toml", pg_dsn, [{"name": "app", "path": str(db)}]),
                   "init").returncode == 0
    # Let go after 6 s (status has taken its first look by then), within a wait of 20 s:
    # read, as when no lock was held.
    waited = status_while_locked(20_000, 6)
    assert (waited["capture_installed"], waited["pending_changes"]) == (True, 0), waited
    # Held past a wait of 0.2 s: said, not waited out.
    refused = status_while_locked(200, None)
    assert any(f"cannot read {db}: database is locked" in p["message"] for p in refused["problems"]), refused
    conn.close()


async def test_a_last_check_that_could_not_confirm_rows_in_flight_is_no_clean_check(tmp_path, make_config, pg_dsn):
    """A check that found rows differing and gave up waiting for the change that explains
    them (the daemon stopped) compared those rows to nothing: status warns of it as of a
    check that compared nothing, as the report counts it not clean, until a check confirms
    the table."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'b');")
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{free_port()}",
                      extra="[verify]\ninterval_seconds = 0\n")
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    conn = sqlite3.connect(db)
    conn.execute("UPDATE t SET v = 'changed' WHERE id = 1")  # captured; no daemon applies it
    conn.commit()
    conn.close()
    out = run_cli(cfg, "verify", "--wait", "1")
    assert out.returncode != 0 and "pending" in out.stdout, out.stdout + out.stderr

    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)  # the change is applied now; nothing confirmed it
        r = run_cli(cfg, "status")
        assert r.returncode == 1, r.stdout
        assert 'table "t": last consistency check could not confirm 1 row(s) still changing' in r.stdout, r.stdout
        assert run_cli(cfg, "verify").returncode == 0
        r = run_cli(cfg, "status")
        assert r.returncode == 0, r.stdout
        assert d.stop() == 0


async def test_a_table_left_half_loaded_is_no_consistency_ok(tmp_path, make_config, pg_dsn):
    """The daemon killed while it loads a table: the tables checked before are equal, the
    half-loaded one was never compared. The CONSISTENCY column names it, not "ok"."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');")
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(db)}],
                      sections={"verify": {"interval_seconds": 86400}, "stream": {"snapshot_chunk_rows": 100}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        conn.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO big VALUES (?, ?)", ((i, "x" * 50) for i in range(300_000)))
        conn.commit()
        pg = await asyncpg.connect(pg_dsn)
        try:
            async def loading() -> bool:
                return await pg.fetchval("SELECT count(*) FROM syncd.tables WHERE table_name = 'big' "
                                         "AND state = 'loading' AND snapshot_rows > 0") == 1
            for _ in range(600):
                if await loading():
                    break
                await asyncio.sleep(0.05)
            assert await loading(), d.log()[-3000:]
            d.kill9()
            assert await loading(), "the load finished before the kill; make the table bigger"
        finally:
            await pg.close()
    r = run_cli(cfg, "status")
    row = next(line for line in r.stdout.splitlines() if line.startswith("app "))
    assert "ok (" not in row and "1 loading" in row, r.stdout


async def test_a_change_held_for_minutes_is_the_lag_without_the_daemons_figure(tmp_path, make_config, pg_dsn):
    """No endpoint to ask the daemon: the lag is computed from the bookkeeping and the file.
    A table held for ten minutes with a change queued, while another table moves the
    checkpoint on: the lag is at least those ten minutes, not the checkpoint's moment."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER); INSERT INTO t VALUES (1, 1);"
                       "CREATE TABLE other (id INTEGER PRIMARY KEY, v TEXT);")
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO t VALUES (2, 'lots of people')")  # Postgres's integer column refuses it
        conn.commit()
        wait_for(lambda: "table held" in d.log(), 30, "hold", d)

        async def hold_recorded() -> bool:  # the daemon records its events after logging them
            return (await pg_rows(pg_dsn, "SELECT count(*) FROM syncd.events WHERE kind = 'held'"))[0][0] > 0

        await eventually(hold_recorded, 30, "the hold recorded in syncd.events", d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            await pg.execute("UPDATE syncd.events SET at = at - interval '10 minutes' WHERE kind = 'held'")
            await pg.execute("UPDATE syncd.tables SET updated_at = updated_at - interval '10 minutes' "
                             "WHERE table_name = 't'")
        finally:
            await pg.close()
        conn.execute("INSERT INTO other VALUES (1, 'x')")  # the checkpoint moves past the held change
        conn.commit()
        await wait_caught_up(db, pg_dsn, "app", daemon=d, settled=("streaming", "held"))
        src = json.loads(run_cli(cfg, "status", "--json").stdout)["sources"][0]
        assert src["pending_changes"] == 1 and src["daemon_running"] is True, src
        assert src["lag_seconds"] >= 600, src
        assert d.stop() == 0


async def test_a_status_query_postgres_answers_too_slowly_is_not_called_unreachable(tmp_path, pg_dsn):
    """Postgres accepts status's connection and holds its reading of syncd's bookkeeping
    past [postgres] statement_timeout_seconds (another session locks the table): status
    says Postgres answered and what it waited for, UNKNOWN, not that Postgres is unreachable."""
    db = tmp_path / "app.db"
    sqlite3.connect(db).execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(db)}],
                       sections={"postgres": {"statement_timeout_seconds": 1}})
    assert run_cli(cfg, "init").returncode == 0
    pg = await asyncpg.connect(pg_dsn)
    try:
        async with pg.transaction():
            await pg.execute("LOCK TABLE syncd.sources IN ACCESS EXCLUSIVE MODE")
            r = await asyncio.to_thread(run_cli, cfg, "status")
    finally:
        await pg.close()
    out = r.stdout + r.stderr
    assert r.returncode == UNKNOWN and "unreachable" not in out.lower(), out
    line = next(x for x in out.splitlines() if x.startswith("UNKNOWN: app:"))
    assert "Postgres answered" in line and "statement_timeout_seconds (1 s)" in line, line
    [row] = [x for x in r.stdout.splitlines() if x.startswith("app ")]
    assert row.split()[1:4] == ["postgres", "timed", "out"], row


async def test_a_first_load_killed_part_way_is_critical_with_the_rows_copied(tmp_path, make_config, pg_dsn):
    """The daemon killed (kill -9) during the first copy of a table, its changelog empty:
    status says the load did not finish and how many rows were copied, CRITICAL, with no
    lag figure, not a lag of 0 and a mere "daemon not running"."""
    db = tmp_path / "app.db"
    create_items(db, rows=20_000)
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"stream": {"snapshot_chunk_rows": 100}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_loading(pg_dsn, "items", d)
        d.kill9()
    r = run_cli(cfg, "status")
    assert r.returncode == CRITICAL, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("CRITICAL: app:"))
    assert "the load did not finish" in line and re.search(r'"items" \d+ of 20000 row\(s\) copied', line), line
    [row] = [x for x in r.stdout.splitlines() if x.startswith("app ")]
    assert row.split()[6:8] == ["-", "0"], row  # LAG unknown, PENDING: no change waits in the changelog


def test_a_load_not_begun_yet_is_a_warning_not_a_load_that_did_not_finish(tmp_path, make_config):
    """Right after `syncd init`, before the daemon first runs, no copy has begun: status
    says the daemon is not running and the load begins when it does, a WARNING, not the
    CRITICAL "the load did not finish" of a copy stopped part-way."""
    db = tmp_path / "app.db"
    create_items(db, rows=10)
    cfg = make_config([{"name": "app", "path": str(db)}])
    assert run_cli(cfg, "init").returncode == 0
    r = run_cli(cfg, "status")
    assert r.returncode == WARNING, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("WARNING: app:"))
    assert "not copied yet, the load begins when it runs" in line and "did not finish" not in r.stdout, r.stdout


async def test_a_role_at_its_connection_limit_is_named_as_refused_not_unreachable(tmp_path, pg_dsn):
    """Postgres answers and refuses the login of a role whose CONNECTION LIMIT is reached:
    status names the refusal and the limit, never "Postgres unreachable"."""
    db = tmp_path / "app.db"
    sqlite3.connect(db).execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    role = f"syncd_limited_{secrets.token_hex(4)}"
    await _admin(pg_dsn, f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    try:
        cfg = write_config(tmp_path / "syncd.toml", pg_dsn.replace("postgres@", f"{role}:hunter2@"),
                           [{"name": "app", "path": str(db)}])
        r = run_cli(cfg, "status")
    finally:
        await _admin(pg_dsn, f"DROP ROLE {role}")
    out = r.stdout + r.stderr
    assert r.returncode == CRITICAL and "unreachable" not in out.lower() and "hunter2" not in out, out
    line = next(x for x in out.splitlines() if x.startswith("CRITICAL: app:"))
    assert f"refused syncd's role {role} at login" in line and "too many connections" in line, line


async def test_a_file_gone_under_the_running_daemon_shows_no_lag_of_0(tmp_path, make_config, pg_dsn):
    """The daemon cannot read a source whose file is gone: what the application writes
    meanwhile (to a file moved elsewhere, say) is not seen. Its lag is not known: NaN in
    syncd_replication_lag_seconds, none in `syncd status` (as without the daemon), and the
    report's lag item names it, where all three said 0.0 s, and the report counted it met."""
    import math

    db = tmp_path / "app.db"
    create_items(db, rows=3)
    port = free_port()
    cfg = make_config([{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{port}")
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        db.rename(tmp_path / "moved.db")
        d.wait_log("event=source_missing")
        lag = 'syncd_replication_lag_seconds{direction="to_postgres",source="app"}'
        wait_for(lambda: math.isnan(metric(port, lag)), 10, "the lag not known", d)
        st = json.loads(run_cli(cfg, "status", "--json").stdout)["sources"][0]
        assert st["state"] == "source_missing" and st["lag_seconds"] is None, st
        doc = json.loads(run_cli(cfg, "report", "--format", "json").stdout)
        item = next(i for i in doc["checklist"] if i["key"] == "lag")
        assert not item["ok"] and any(p.startswith("app: lag unknown") for p in item["problems"]), item
        assert d.stop() == 0
