"""Which way each source flows, and how the way back is doing, is shown everywhere an
operator looks: metrics carry a `direction` label, /status, `syncd status` and the
report name the direction, the daemon's continuous verification keeps comparing (and
repairs through the way back), and the report says until when a rollback stays
possible; after `[cutover] keep_sqlite_days` the way back ends and the file stays."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import time
import urllib.request

import asyncpg
import pytest

from syncd.config import load_settings
from syncd.rollback import drop_lookup_indexes

from tests.support.app import create_items
from tests.support.daemon import DaemonProcess, run_cli, syncd_cmd, wait_for
from tests.support.pgcluster import free_port
from tests.support.sync import eventually, long_read, pg_rows, wait_caught_up
from tests.support.way_back import (PgWriter, backup_and_config, cut_over, cut_over_and_stop, tamper_sqlite, typeof,
                                    wait_back)


def scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in body.splitlines() if line and not line.startswith("#")}


def live(port: int) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read())


async def test_every_view_shows_which_way_the_source_flows(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=300, journal="wal")
    port = free_port()
    cfg = backup_and_config(lambda sources, sections: make_config(sources, sections=sections,
                                                                  metrics_listen=f"127.0.0.1:{port}"),
                            tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        wait_for(lambda: live(port)["sources"]["app"]["direction"] == "to_sqlite", 30, "the way back running", d)
        PgWriter(pg_dsn, seconds=1, seed=1, rate=100, ids=300).result()
        await wait_back(cfg, db, pg_dsn, daemon=d)
        wait_for(lambda: scrape(port).get('syncd_pending_changes{direction="to_sqlite",source="app"}') == 0, 30,
                 "pending back to 0", d)
        m = scrape(port)
        applied = sum(v for k, v in m.items()
                      if k.startswith('syncd_changes_applied_total{direction="to_sqlite",') and 'table="items"' in k)
        assert applied > 0
        assert m['syncd_replication_lag_seconds{direction="to_sqlite",source="app"}'] == 0
        assert 'syncd_errors_total{direction="to_sqlite",kind="postgres",source="app"}' in m
        assert m['syncd_commit_to_apply_seconds_count{direction="to_sqlite",source="app"}'] >= 1
        # the forward direction's series stay, at rest
        assert m['syncd_pending_changes{direction="to_postgres",source="app"}'] == 0
        state = live(port)["sources"]["app"]
        assert state["health"] == "streaming" and state["pending_changes"] == 0
        status = json.loads(run_cli(cfg, "status", "--json").stdout)["sources"][0]
        assert status["direction"] == "to_sqlite" and status["state"] == "streaming"
        assert status["rollback_until"] is not None and status["pending_changes"] == 0
        report = run_cli(cfg, "report")
        assert "PostgreSQL → SQLite (after cutover)" in report.stdout and "Rollback possible until" in report.stdout
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read().decode()
        assert 'data-field="rollback_until"' in page and 'data-value="to_sqlite"' in page


async def test_continuous_verification_after_the_cutover_compares_and_repairs(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=500, journal="wal")
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "cutover.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    cfg = backup_and_config(make_config, tmp_path, db, verify={"interval_seconds": 1, "repair": True})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        writer = PgWriter(pg_dsn, seconds=4, seed=5, rate=80, ids=500)
        writer.result()  # about 4 verifications (interval 1 s) run during the writes
        await wait_back(cfg, db, pg_dsn, daemon=d)

        async def checked() -> bool:
            return (await pg_rows(pg_dsn, "SELECT count(*) FROM syncd.verify_runs WHERE table_name = 'items' "
                                          "AND finished_at > now() - interval '20 seconds'"))[0][0] >= 3

        await eventually(checked, 60, "verifications during the writes", d)
        # changes in flight from Postgres are not differences
        bad = await pg_rows(pg_dsn, "SELECT missing, extra, different, detail FROM syncd.verify_runs "
                                    "WHERE missing + extra + different > 0")
        assert bad == [], bad
        # SQLite changed behind syncd's back: found and repaired from Postgres, through the way back
        tamper_sqlite(db, "UPDATE items SET v = 'tampered' WHERE id = (SELECT min(id) FROM items)")
        wait_for(lambda: typeof(db, "SELECT count(*) FROM items WHERE v = 'tampered'") == [(0,)], 60,
                 "the tampered row repaired", d)
        d.wait_log("consistency check repaired 1 row(s)")
        assert run_cli(cfg, "verify").returncode == 0


async def test_a_rollback_after_keep_sqlite_days_with_no_daemon_running_is_refused_and_loses_nothing(
        tmp_path, make_config, pg_dsn):
    """The rollback window ended while no daemon ran, so nothing had ended the way back yet,
    and the application wrote Postgres meanwhile: `syncd rollback` refuses, naming the
    window, before anything freezes, instead of ending the way back itself halfway (its
    stream's first look) and switching the application back to a file without that write,
    "verified equal: 0 row(s) in 0 table(s)"."""
    db = tmp_path / "app.db"
    create_items(db, rows=5, journal="wal")
    cfg = backup_and_config(make_config, tmp_path, db)
    await cut_over_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    await pg_rows(pg_dsn, "UPDATE app.items SET n = n + 100")  # the application, on Postgres
    # The window over since (its days gone by, here its length set to a second): no daemon ended the way back.
    assert backup_and_config(make_config, tmp_path, db, cutover={"keep_sqlite_days": 1 / 86400}) == cfg
    assert (await pg_rows(pg_dsn, "SELECT retired_at FROM syncd.reverse WHERE source = 'app'")) == [(None,)]
    before = typeof(db, "SELECT sum(n) FROM items")
    await asyncio.sleep(1.5)  # the window's second over, however soon after its start the test got here
    r = run_cli(cfg, "rollback")
    assert r.returncode == 1 and "app: REFUSED: the rollback window is over" in r.stdout, r.stdout + r.stderr
    assert "keep_sqlite_days" in r.stdout, r.stdout
    assert (await pg_rows(pg_dsn, "SELECT direction FROM syncd.sources WHERE source = 'app'")) == [("to_sqlite",)]
    assert (await pg_rows(pg_dsn, "SELECT count(*) FROM syncd.switches WHERE kind = 'rollback'")) == [(0,)]
    assert typeof(db, "SELECT sum(n) FROM items") == before


async def test_a_rollback_whose_window_ends_before_it_could_end_is_refused(tmp_path, make_config, pg_dsn):
    """The way back ends with its window, also while a rollback drains: a rollback begun
    minutes before the end would switch the application back to a file without Postgres's
    last writes. It is refused, saying when the window ends, before anything freezes."""
    db = tmp_path / "app.db"
    create_items(db, rows=5, journal="wal")
    cfg = backup_and_config(make_config, tmp_path, db)
    await cut_over_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    backup_and_config(make_config, tmp_path, db, cutover={"keep_sqlite_days": 120 / 86400})  # two minutes in all
    r = run_cli(cfg, "rollback")
    assert r.returncode == 1 and "app: REFUSED: the rollback window ends before a rollback could end" in r.stdout, \
        r.stdout + r.stderr
    assert (await pg_rows(pg_dsn, "SELECT direction FROM syncd.sources WHERE source = 'app'")) == [("to_sqlite",)]
    assert (await pg_rows(pg_dsn, "SELECT count(*) FROM syncd.switches WHERE kind = 'rollback'")) == [(0,)]


async def test_a_way_back_ended_while_a_rollback_runs_undoes_the_rollback(tmp_path, make_config, pg_dsn):
    """The way back ended (its window closed) while a rollback ran, after its drain: SQLite
    may miss what Postgres took since, and nothing brings it any more. The switch's last
    transaction sees it and the rollback is undone, the application left on Postgres."""
    db = tmp_path / "app.db"
    create_items(db, rows=5, journal="wal")
    cfg = backup_and_config(make_config, tmp_path, db)
    await cut_over_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    resume = tmp_path / "resume"
    errors = open(tmp_path / "rollback.err", "w")
    proc = subprocess.Popen(syncd_cmd(cfg, "rollback"), stdout=subprocess.PIPE, stderr=errors, text=True,
                            cwd=str(cfg.parent), env={**os.environ, "SYNCD_ROLLBACK_HOLD_AT": "verified",
                                                      "SYNCD_ROLLBACK_RESUME_ON": str(resume)})
    try:
        assert proc.stdout.readline().strip() == "holding at verified"
        # As the daemon ends it at the window's end (rollback.end_way_back's mark).
        await pg_rows(pg_dsn, "UPDATE syncd.reverse SET retired_at = now(), retired_reason = 'the window closed' "
                              "WHERE source = 'app'")
        resume.write_text("")
        out = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
        errors.close()
    assert proc.returncode == 1 and "the way back ended while the rollback ran" in out, out
    assert "the SQLite file is kept as it was (the way back has ended)" in out, out
    assert (await pg_rows(pg_dsn, "SELECT direction FROM syncd.sources WHERE source = 'app'")) == [("to_sqlite",)]
    assert (await pg_rows(pg_dsn, "SELECT state FROM syncd.switches WHERE kind = 'rollback'")) == [("undone",)]
    await pg_rows(pg_dsn, "UPDATE app.items SET v = v WHERE id = 1")  # Postgres takes the application's writes again


async def test_after_keep_sqlite_days_the_way_back_ends_and_the_file_stays(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=50, journal="wal")
    app = sqlite3.connect(db)
    app.executescript("CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT UNIQUE); INSERT INTO tags VALUES (1, 'a');")
    app.close()
    lookup = "SELECT count(*) FROM pg_indexes WHERE schemaname = 'app' AND starts_with(indexname, '_syncd_uq_')"
    # 5 s of rollback window: the cutover's report and lookup check take about 1.5 s of it
    port = free_port()
    cfg = backup_and_config(lambda sources, sections: make_config(sources, sections=sections,
                                                                  metrics_listen=f"127.0.0.1:{port}"),
                            tmp_path, db, cutover={"keep_sqlite_days": 5 / 86400},
                            stream={"schema_check_interval_seconds": 1})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        report = run_cli(cfg, "report").stdout
        assert "Rollback possible until" in report
        assert (await pg_rows(pg_dsn, lookup))[0][0] == 1  # tags.name's, kept while a rollback may come
        d.wait_log("the way back ends", timeout=60)
        d.wait_log("dropped 1 index(es) syncd kept to apply SQLite's REPLACEs")
        assert (await pg_rows(pg_dsn, lookup))[0][0] == 0
        before = db.stat().st_size, typeof(db, "SELECT count(*), sum(n) FROM items")
        await pg_rows(pg_dsn, "UPDATE app.items SET n = n + 1")  # no longer followed, and not recorded
        time.sleep(1)
        assert (await pg_rows(pg_dsn, "SELECT count(*) FROM syncd.rlog_"
                                      + format(__import__("syncd.postgres.bookkeeping", fromlist=["x"]).lock_key("app"),
                                               "08x")))[0][0] == 0
        assert (db.stat().st_size, typeof(db, "SELECT count(*), sum(n) FROM items")) == before
        r = run_cli(cfg, "rollback")
        assert r.returncode == 1 and "the rollback window is over" in r.stdout
        status = run_cli(cfg, "status")
        assert "a rollback is no longer possible" in status.stdout
        # STATE as the daemon (its endpoint answers) or the database tells it; FLOW: none
        assert re.match(r"app +(cut over|rollback window over) +none ", status.stdout.splitlines()[1]), status.stdout
        # TABLES: nothing flows any more, so none of them is "streaming"
        assert "streaming" not in status.stdout.splitlines()[1] and "2 not followed" in status.stdout, status.stdout
        report = run_cli(cfg, "report").stdout
        assert "Rollback no longer possible" in report
        # Every other view tells the same: no table streams, nothing flows
        assert "| streaming |" not in report and report.count("| not followed |") == 2, report
        assert "PostgreSQL → SQLite (after cutover)" not in report, report
        tables = json.loads(run_cli(cfg, "status", "--json").stdout)["sources"][0]["tables"]
        assert sorted((t["name"], t["state"]) for t in tables) == [("items", "not followed"),
                                                                    ("tags", "not followed")], tables
        tables = json.loads(run_cli(cfg, "report", "--format", "json").stdout)["sources"][0]["tables"]
        assert sorted((t["table"], t["state"]) for t in tables) == [("items", "not followed"),
                                                                     ("tags", "not followed")], tables
        html = run_cli(cfg, "report", "--format", "html").stdout
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read().decode()
        for shown in (html, page):
            assert 'data-state="streaming"' not in shown and ">2 not followed<" in shown, shown
            assert shown.count('data-state="not followed"') == 2, shown
            assert "PostgreSQL → SQLite (after cutover)" not in shown, shown
            # the source's state coloured as syncd status judges it (a warning), not as an outage
            row = re.search(r'<tr data-source="app">.*?</tr>', shown, re.S).group(0)
            assert re.search(r'<td class="sev-warning">[a-z ]+</td>', row) and "sev-critical" not in row, row
            badge = re.search(r'<span class="badge (\w+)" data-field="state"', shown).group(1)
            assert badge == "warn", badge
        tables = live(port)["sources"]["app"]["tables"]  # the daemon's own /status
        assert {n: t["state"] for n, t in tables.items()} == {"items": "not followed", "tags": "not followed"}, tables


async def test_once_the_way_back_has_ended_sqlite_is_no_longer_compared_with_postgres(tmp_path, make_config,
                                                                                         pg_dsn):
    # Day 30: the application has written Postgres since the way back ended, the SQLite
    # file is kept as it was then. Comparing the two is no longer a consistency check:
    # a verification by hand (a nightly one) must not turn the migration red everywhere.
    db = tmp_path / "app.db"
    create_items(db, rows=50, journal="wal")
    other = tmp_path / "other.db"  # a source still in dual-write beside it
    conn = sqlite3.connect(other)
    conn.executescript("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes VALUES (1, 'a');")
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db, sources=[{"name": "app", "path": str(db)},
                                                                {"name": "other", "path": str(other)}],
                            cutover={"keep_sqlite_days": 5 / 86400}, stream={"schema_check_interval_seconds": 1})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(other, pg_dsn, "other", daemon=d)
        await cut_over(cfg, db, pg_dsn, daemon=d)
        d.wait_log("the way back ends", timeout=60)
        await pg_rows(pg_dsn, "UPDATE app.items SET n = n + 1 WHERE id <= 5")
        await pg_rows(pg_dsn, "DELETE FROM app.items WHERE id = 50")
        await pg_rows(pg_dsn, "INSERT INTO app.items (n) VALUES (7)")
        runs = "SELECT count(*) FROM syncd.verify_runs"
        before = (await pg_rows(pg_dsn, runs))[0][0]
        v = run_cli(cfg, "verify", "--source", "app")
        assert v.returncode == 0, v.stdout + v.stderr
        assert "app: not compared: SQLite no longer follows Postgres" in v.stdout, v.stdout
        assert "DIFFERS" not in v.stdout and "SQLite follows Postgres)" not in v.stdout, v.stdout
        assert (await pg_rows(pg_dsn, runs))[0][0] == before  # no consistency error recorded
        v = run_cli(cfg, "verify", "--table", "items")  # the table is found in it, and not compared
        assert v.returncode == 0, v.stdout + v.stderr
        assert "app: not compared: SQLite no longer follows Postgres" in v.stdout, v.stdout
        assert run_cli(cfg, "verify", "--table", "nosuch").returncode == 2
        status = run_cli(cfg, "status", "--source", "app")
        assert status.returncode == 1, status.stdout  # WARNING: the way back has ended, nothing worse
        assert "a rollback is no longer possible" in status.stdout
        assert "CRITICAL" not in status.stdout and "differed" not in status.stdout, status.stdout
        report = run_cli(cfg, "report", "--source", "app").stdout
        assert "### ✅ All data migrated" in report, report
        assert "### ✅ Dual-write running" in report, report
        assert "SQLite no longer follows Postgres" in report
        assert "`syncd rollback` is the way back now" not in report, report
        # The nightly backups of the frozen file stopped long ago: no backup item fails for it.
        old = time.time() - 40 * 86400
        for f in (tmp_path / "backups").iterdir():
            os.utime(f, (old, old))
        report = run_cli(cfg, "report", "--source", "app").stdout
        assert "### ✅ A recent SQLite backup exists" in report, report
        assert "### ✅ Replication lag below" in report, report  # nothing flows: no lag to judge
        assert "SQLite no longer follows Postgres" in report.split("A recent SQLite backup exists")[1], report


async def test_uninstall_after_a_cutover_removes_the_way_backs_capture_too(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=10, journal="wal")
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    triggers = "SELECT count(*) FROM pg_trigger WHERE tgname LIKE '_syncd_rcap_%'"
    assert (await pg_rows(pg_dsn, triggers))[0][0] == 4
    r = run_cli(cfg, "uninstall")
    assert r.returncode == 0, r.stdout
    assert "removed the way back's capture from 1 Postgres table(s): a rollback is no longer possible" in r.stdout
    assert (await pg_rows(pg_dsn, triggers))[0][0] == 0
    await pg_rows(pg_dsn, "UPDATE app.items SET n = 1")  # the application goes on, nothing recorded
    assert (await pg_rows(pg_dsn, "SELECT retired_reason FROM syncd.reverse"))[0][0] == \
        "capture uninstalled (syncd uninstall)"
    # The file stays frozen, and an application still pointed at it is told where its
    # data went (not "no such table: main._syncd_meta": uninstall removed that table).
    app = sqlite3.connect(db)
    try:
        for sql in ("UPDATE items SET n = n + 1", "INSERT INTO items (n) VALUES (1)", "DELETE FROM items"):
            with pytest.raises(sqlite3.IntegrityError, match="moved to PostgreSQL by syncd"):
                app.execute(sql)
        assert app.execute("SELECT count(*) FROM items").fetchone()[0] == 10  # readers as before
        names = [n for (n,) in app.execute("SELECT name FROM sqlite_master WHERE name LIKE '%syncd%'")]
        assert names and all(n.startswith("_syncd_freeze_") for n in names), names
    finally:
        app.close()
    assert "stays frozen" in r.stdout and "_syncd_freeze_" in r.stdout, r.stdout
    assert "no capture installed" in run_cli(cfg, "uninstall").stdout  # again: nothing left to remove


async def test_a_lookup_index_a_long_reader_holds_is_dropped_once_the_table_is_free(tmp_path, make_config, pg_dsn):
    # Dropping it waits a few seconds at most for its table (the application's queries
    # queue behind a waiting DROP); not dropped, it is said so and tried again later.
    db = tmp_path / "app.db"
    app = sqlite3.connect(db)
    app.executescript("CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT UNIQUE); INSERT INTO tags VALUES (1, 'a');")
    app.close()
    lookup = "SELECT count(*) FROM pg_indexes WHERE schemaname = 'app' AND starts_with(indexname, '_syncd_uq_')"
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"postgres": {"statement_timeout_seconds": 2}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    settings = load_settings(cfg)
    source = settings.source("app")
    pg = await asyncpg.connect(pg_dsn)
    try:
        async with long_read(pg_dsn, "app.tags"):
            assert await drop_lookup_indexes(pg, settings, source) is False  # gave up after 1 s, not the timeout
            assert (await pg_rows(pg_dsn, lookup))[0][0] == 1
        assert await drop_lookup_indexes(pg, settings, source) is True
        assert (await pg_rows(pg_dsn, lookup))[0][0] == 0
    finally:
        await pg.close()


async def test_once_the_way_back_has_ended_metrics_stop_showing_its_tables_as_checked_and_streaming(
        tmp_path, make_config, pg_dsn):
    # SyncdVerificationStale fires on a table's last check growing old, or on a streaming
    # table never checked: neither may hold a source nothing compares any more.
    db = tmp_path / "app.db"
    create_items(db, rows=50, journal="wal")
    port = free_port()
    cfg = backup_and_config(lambda sources, sections: make_config(sources, sections=sections,
                                                                  metrics_listen=f"127.0.0.1:{port}"),
                            tmp_path, db, cutover={"keep_sqlite_days": 20 / 86400},
                            stream={"schema_check_interval_seconds": 1}, verify={"interval_seconds": 1})

    def series(m: dict[str, float], name: str) -> list[str]:
        return [k for k in m if k.startswith(name + "{") and 'source="app"' in k and 'table="items"' in k]

    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        wait_for(lambda: series(scrape(port), "syncd_consistency_last_check_timestamp_seconds"), 30,
                 "a consistency check of the way back published", d)
        d.wait_log("the way back ends", timeout=60)

        def quiet() -> bool:
            m = scrape(port)
            return not series(m, "syncd_consistency_last_check_timestamp_seconds") and not any(
                'state="streaming"' in k and m[k] == 1 for k in series(m, "syncd_table_state"))

        wait_for(quiet, 30, "the ended way back's table series gone", d)
        time.sleep(3)  # a few more cycles and checks: they stay gone
        assert quiet(), [k for k in scrape(port) if 'source="app"' in k]
        assert scrape(port)['syncd_source_up{source="app"}'] == 1
    with DaemonProcess(cfg, tmp_path / "again.log") as d:  # nor does a restart bring them back
        def up() -> bool:
            try:
                return 'syncd_source_up{source="app"}' in scrape(port)
            except OSError:
                return False  # not listening yet

        wait_for(up, 30, "the source up", d)
        time.sleep(3)
        assert quiet(), [k for k in scrape(port) if 'source="app"' in k]


async def test_a_file_archived_after_the_way_back_ended_is_a_retired_source_in_the_report(tmp_path, make_config,
                                                                                            pg_dsn):
    """Once the way back has ended, the SQLite file is archived (moved away, as the 30-day
    retention after the cutover says): the report says the source is retired, its file
    archived, and judges the migration from what still applies, not failing its rows
    migrated, changes captured or query speed for a file that is meant to be gone; status
    says it is cut over with its file archived, not that a file is missing."""
    db = tmp_path / "app.db"
    create_items(db, rows=50, journal="wal")
    cfg = backup_and_config(make_config, tmp_path, db, cutover={"keep_sqlite_days": 5 / 86400},
                            stream={"schema_check_interval_seconds": 1})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        d.wait_log("the way back ends", timeout=60)
        assert d.stop() == 0
    (tmp_path / "archive").mkdir()
    for f in tmp_path.glob("app.db*"):
        f.rename(tmp_path / "archive" / f.name)
    r = run_cli(cfg, "report", "--format", "json")
    doc = json.loads(r.stdout)
    items = {i["key"]: i for i in doc["checklist"]}
    assert doc["not_done"] == [] and r.returncode == 0, (r.returncode, doc["not_done"], r.stderr)
    for key in ("migrated", "capture", "performance", "foreign_keys"):
        assert items[key]["ok"] and not items[key]["problems"], items[key]
    for key in ("capture", "performance", "foreign_keys"):
        assert any(line.startswith("app: retired; its SQLite file") and "archived" in line
                   for line in items[key]["evidence"]), items[key]
    [src] = doc["sources"]
    assert (src["file_archived"], src["error"], src["way_back_ended"] is not None) == (True, None, True), src
    text = run_cli(cfg, "report").stdout
    assert "Retired: the SQLite file is archived" in text and "does not exist" not in text, text
    row = next(line for line in text.splitlines() if line.startswith("| `items` |"))
    assert "the SQLite file is archived" in row and "❌" not in row and "could not be read" not in row, row
    page = run_cli(cfg, "report", "--format", "html").stdout
    assert "Retired: the SQLite file is archived" in page and "does not exist" not in page
    st = json.loads(run_cli(cfg, "status", "--json").stdout)["sources"][0]
    assert st["state"] == "cut_over" and not [p for p in st["problems"] if p["severity"] == "critical"], st
    assert any("its SQLite file is archived" in p["message"] for p in st["problems"]), st
    # A daemon running the retired source says so too: not a missing file it waits for.
    port = free_port()
    cfg.write_text(cfg.read_text().replace('listen = ""', f'listen = "127.0.0.1:{port}"'))
    with DaemonProcess(cfg, tmp_path / "again.log") as d:
        d.wait_log("syncd running")
        time.sleep(2)  # a few of the source's cycles
        st = json.loads(run_cli(cfg, "status", "--json").stdout)["sources"][0]
        assert st["state"] != "source_missing" and not [p for p in st["problems"] if p["severity"] == "critical"], st
        assert "source_missing" not in d.own_log() and 'syncd_source_up{source="app"} 0' not in \
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode(), d.own_log()
        assert d.stop() == 0


async def test_a_cut_over_files_folder_syncd_may_not_enter_is_no_postgres_outage(tmp_path, make_config, pg_dsn,
                                                                                  monkeypatch):
    """After the cutover, the SQLite file's folder becomes one syncd may not enter (its owner
    changed, mode 0700): the way back says the file cannot be reached and waits for it, as
    the forward stream does. Before, "Permission denied" was taken for Postgres failing:
    "Postgres unreachable", syncd_postgres_up 0, while Postgres was fine."""
    from tests.support import daemon as support

    (tmp_path / "app").mkdir()
    db = tmp_path / "app" / "app.db"
    create_items(db, rows=5)
    cfg = backup_and_config(make_config, tmp_path, db)
    # syncd as its unit runs it, held out by a folder's mode: root without the capabilities that pass over it.
    cmd = support.syncd_cmd
    monkeypatch.setattr(support, "syncd_cmd", lambda config, *args: [
        "setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd(config, *args)])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        os.chown(db.parent, 65534, 65534)
        os.chmod(db.parent, 0o700)
        try:
            d.wait_log("source=app event=source_missing")
        finally:
            os.chown(db.parent, 0, 0)
        assert "Postgres unreachable" not in d.own_log(), d.own_log()[-3000:]
        assert d.stop() == 0
