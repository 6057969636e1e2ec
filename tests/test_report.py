"""`syncd report`: the migration status document. A migration that meets every cutover
item is reported ready, item by item with its evidence; each item, broken in turn,
fails with the evidence that says why, in Markdown and in JSON."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.test_status_page import Page
from tests.support.sync import eventually, pg_rows, wait_caught_up
from tests.support.verifying import pg_execute, sync_and_stop, verify, verify_section

ITEMS = ["migrated", "dual_write", "lag", "halted", "capture", "backup", "performance", "foreign_keys",
         "rollback_rehearsed"]
TITLES = {
    "migrated": "All data migrated and validated",
    "dual_write": "Dual-write running for at least 14 days",
    "lag": "Replication lag below 30 s now",
    "halted": "No halted tables",
    "capture": "Capture installed on every table",
    "backup": "A recent SQLite backup exists",
    "performance": "PostgreSQL performance meets targets",
    "foreign_keys": "Foreign keys hold in the data",
    "rollback_rehearsed": "Rollback plan tested",
}


def report(cfg: Path) -> tuple[int, str, int, dict]:
    """(exit code, Markdown, exit code, JSON) of `syncd report` in both formats."""
    md = run_cli(cfg, "report")
    js = run_cli(cfg, "report", "--format", "json")
    assert md.returncode in (0, 1), md.stdout + md.stderr
    doc = json.loads(js.stdout)
    assert js.returncode == (0 if doc["ready"] else 1), (js.returncode, doc["ready"], js.stderr)  # 0 ready, 1 not
    return md.returncode, md.stdout, js.returncode, doc


def marks(md: str) -> dict[str, bool]:
    """Checklist item -> ✅ (True) or ❌ (False), from the Markdown headings."""
    found = {}
    for ok, title in re.findall(r"^### (✅|❌) (.+)$", md, re.M):
        for key, prefix in TITLES.items():
            if title.startswith(prefix):
                found[key] = ok == "✅"
    assert sorted(found) == sorted(ITEMS), found
    return found


def section(md: str, key: str) -> str:
    """The checklist section of one item."""
    start = md.index(f" {TITLES[key]}", md.index("## Cutover checklist"))
    end = md.find("\n### ", start)
    return md[start: end if end > 0 else None]


def item(doc: dict, key: str) -> dict:
    return next(i for i in doc["checklist"] if i["key"] == key)


def ago(**kw) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(**kw)


async def add_run(dsn: str, table: str, when: dt.datetime, rows: int, **counts) -> None:
    cols = {"missing": 0, "extra": 0, "different": 0, "pending": 0, "repaired": 0, **counts}
    await pg_execute(
        dsn,
        "INSERT INTO syncd.verify_runs (source, table_name, started_at, finished_at, rows_sqlite, rows_postgres, "
        "missing, extra, different, pending, repaired, error, full_check, table_state, detail) "
        "VALUES ('app', $1, $2, $2, $3, $3, $4, $5, $6, $7, $8, $9, $10, 'streaming', $11)",
        table, when, rows, cols["missing"], cols["extra"], cols["different"], cols["pending"], cols["repaired"],
        counts.get("error"), counts.get("error") is None,
        json.dumps({"reason": None, "differences": counts.get("differences", [])}),
    )


@pytest.fixture
async def ready(app_db, make_config, pg_dsn, tmp_path):
    return await ready_migration(app_db, make_config, pg_dsn, tmp_path)


async def ready_migration(app_db, make_config, pg_dsn, tmp_path) -> Path:
    """A migration that meets every item: 20 days of clean checks twice a day (never a day
    without one, [cutover] max_verify_gap_hours), a fresh backup, a recent rehearsal."""
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT, r REAL);
        CREATE TABLE notes (k TEXT PRIMARY KEY, body TEXT);
    """)
    conn.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"v{i}", i / 3) for i in range(1, 1001)])
    conn.executemany("INSERT INTO notes VALUES (?, ?)", [(f"n{i}", "x" * i) for i in range(50)])
    conn.commit()
    conn.close()
    backups = tmp_path / "backups"
    backups.mkdir()
    for name, days in (("app-old.db", 20), ("app-new.db", 2)):  # SQLite's online backup, as the runbook's job
        src, dst = sqlite3.connect(app_db), sqlite3.connect(backups / name)
        src.backup(dst)
        src.close(), dst.close()
        os.utime(backups / name, (time.time() - days * 86400,) * 2)
    cfg = make_config([{"name": "app", "path": str(app_db)}],
                      extra=verify_section() + '[cutover]\nbackup_glob = "backups/{source}-*.db"\n')
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_execute(pg_dsn, "UPDATE syncd.sources SET streaming_since = $1", ago(days=20))
    await pg_execute(pg_dsn, "UPDATE syncd.tables SET snapshot_finished_at = $1", ago(days=20))  # loaded then
    for half_day in range(40, 0, -1):
        await add_run(pg_dsn, "items", ago(hours=12 * half_day), 1000)
        await add_run(pg_dsn, "notes", ago(hours=12 * half_day), 50)
    assert verify(cfg).returncode == 0  # and today's real check
    # A rehearsal three days ago (tests/test_rollback_rehearsal.py runs real ones).
    await pg_execute(pg_dsn, "INSERT INTO syncd.rehearsals (source, started_at, finished_at, ok, rows_verified, "
                             "changes, cutover_downtime_seconds, rollback_downtime_seconds, detail) "
                             "VALUES ('app', $1, $1, true, 1050, 150, 0.2, 0.1, '{}')", ago(days=3))
    return cfg


async def test_ready_migration_every_item_met(ready):
    rc, md, rc_json, doc = report(ready)
    assert rc == rc_json == 0, md
    assert "**Verdict: READY for cutover: every checklist item is met.**" in md and "## Not done" not in md
    assert marks(md) == {k: True for k in ITEMS}
    assert "app.items: 1,000 rows on both sides; verified equal" in section(md, "migrated")
    assert "app.notes: 50 rows on both sides; verified equal" in section(md, "migrated")
    assert re.search(r"app: dual-write since \S+ \S+ UTC, 20\.0 days", section(md, "dual_write"))
    # 27 checks per table within the last 14 days (the one 14 days ago is just outside), and today's real one
    assert "app: 56 verification(s) in the last 14 days, all clean, no table unverified for more than 24.0 h " \
        "([cutover] max_verify_gap_hours)" in section(md, "dual_write")
    assert "app: lag 0.0 s, from computed: every captured change is applied" in section(md, "lag")
    assert "none of the 2 table(s) is held or paused" in section(md, "halted")
    assert "2 table(s) captured" in section(md, "capture")
    assert re.search(r"app: newest \S+app-new\.db \(36\.0 KB\), 2\.0 days old; 2 file\(s\), oldest 20\.0 days old",
                     section(md, "backup"))
    assert "None: " in md.split("## Consistency-error history")[1] and "all clean" in md
    assert "| `items` | streaming | 1,000 | 1,000 | ✅ |" in md

    assert doc["ready"] is True and doc["not_done"] == []
    # READY covers what syncd measures; what it cannot is named beside the verdict
    not_judged = md.split("**Verdict:")[1].split("## Cutover checklist")[0]
    assert "not judged here, to confirm before the switch: the application's code moved to Postgres" in not_judged
    assert "team training and stakeholder approval" in not_judged
    assert any("tests passing against Postgres" in n for n in doc["not_judged"]) and len(doc["not_judged"]) == 4
    # the backup item sees that a recent backup exists, not that backups are kept long enough
    assert "SQLite backups kept for 30 days after the switch (the backup item sees only the newest backup's age)" \
        in not_judged
    assert [i["key"] for i in doc["checklist"]] == ITEMS
    # every threshold the items are judged by, as the Markdown states each beside its item
    assert {k: doc["settings"][k] for k in ("max_query_ms", "rehearsal_max_age_days")} == \
        {"max_query_ms": 50, "rehearsal_max_age_days": 30}, doc["settings"]
    assert all(i["ok"] and not i["problems"] and i["evidence"] for i in doc["checklist"])
    src = doc["sources"][0]
    assert src["postgres_schema"] == "app" and "objects" in src["schema"]  # the schema's name, its parity
    assert round(src["dual_write_days"]) == 20 and src["lag"]["seconds"] == 0
    tables = {t["table"]: t for t in src["tables"]}
    assert tables["items"]["rows_sqlite"] == tables["items"]["rows_postgres"] == 1000
    assert tables["items"]["last_verification"]["clean"] and tables["notes"]["captured"]
    assert doc["consistency_errors"] == []


async def test_a_target_that_cannot_be_reached_leaves_the_other_sources_measured(ready, tmp_path):
    """Sources on two Postgres targets, one down: the report is still made, the sources on
    the target that answers measured, the other named as not measured (and not ready)."""
    from tests.support.ports import free_port

    shutil.copyfile(tmp_path / "app.db", tmp_path / "other.db")
    down = f"postgresql://syncd:hunter2@127.0.0.1:{free_port()}/db"
    ready.write_text(ready.read_text() + f'\n[[sources]]\nname = "other"\npath = "{tmp_path / "other.db"}"\n'
                                         f'dsn = "{down}"\n')
    code, md, jcode, doc = report(ready)
    assert (code, jcode) == (1, 1), md
    assert "app.items: 1,000 rows on both sides; verified equal" in section(md, "migrated")
    assert "other: its Postgres cannot be measured now: cannot connect to postgresql://syncd:***@127.0.0.1:" in \
        section(md, "migrated")
    assert not item(doc, "migrated")["ok"] and "hunter2" not in md + json.dumps(doc)


async def test_a_source_not_measured_passes_no_item_and_fails_each_for_that_reason(ready, tmp_path):
    """A source whose Postgres cannot be reached was measured in nothing: no item is met for
    it ("no halted tables", "foreign keys hold", lookups under the limit), and where an item
    fails it says why, not that dual-write never started or that nobody rehearsed. A source
    whose file is gone was not timed or checked for orphans either."""
    from tests.support.ports import free_port

    shutil.copyfile(tmp_path / "app.db", tmp_path / "other.db")
    down = f"postgresql://syncd:hunter2@127.0.0.1:{free_port()}/db"
    ready.write_text(ready.read_text() + f'\n[[sources]]\nname = "other"\npath = "{tmp_path / "other.db"}"\n'
                                         f'dsn = "{down}"\n')
    _, md, _, doc = report(ready)
    for i in doc["checklist"]:
        if i["key"] == "backup":  # the backups are files, measured without Postgres
            continue
        theirs = [p for p in i["problems"] if p.startswith("other")]
        assert not i["ok"] and theirs, i
        assert all("its Postgres cannot be measured now" in p for p in theirs), i
    assert "never rehearsed" not in md and "has not started" not in md

    (tmp_path / "other.db").unlink()
    ready.write_text(ready.read_text().replace(down, "").replace('dsn = ""\n', ""))
    _, md, _, doc = report(ready)
    for key in ("performance", "foreign_keys"):
        theirs = [p for p in item(doc, key)["problems"] if p.startswith("other")]
        assert not item(doc, key)["ok"] and theirs and "other.db" in theirs[0], item(doc, key)

async def test_too_short_and_a_consistency_error_in_the_window(ready, pg_dsn):
    await pg_execute(pg_dsn, "UPDATE syncd.sources SET streaming_since = $1", ago(days=3))
    await add_run(pg_dsn, "items", ago(days=2), 1000, different=2, repaired=2,
                  differences=[{"kind": "different", "key": [17], "columns": ["v"], "note": None}])
    await add_run(pg_dsn, "notes", ago(days=30), 50, missing=5)  # outside the 14-day window
    rc, md, rc_json, doc = report(ready)
    assert rc == rc_json == 1
    assert marks(md) == {**{k: True for k in ITEMS}, "dual_write": False}
    assert "**Verdict: NOT READY for cutover: 1 of 9 checklist items are not done.**" in md
    not_done = md.split("## Not done")[1].split("## Cutover checklist")[0]
    assert "❌ **Dual-write running for at least 14 days" in not_done
    assert re.search(r"app: dual-write since \S+ \S+ UTC, 3\.0 days; 14 days required \(11\.0 days to go\)", not_done)
    assert re.search(r"app\.items: consistency error \S+ \S+ UTC \(2\.0 days ago\): 2 different; 2 repaired", not_done)
    assert "5 missing" not in section(md, "dual_write")
    history = md.split("## Consistency-error history")[1]
    assert "2 of " in history and "different (17)" in history and "5 missing in Postgres" in history

    dw = item(doc, "dual_write")
    assert not dw["ok"] and doc["not_done"] == ["dual_write"] and len(dw["problems"]) == 2
    assert {(e["table"], e["different"], e["missing"]) for e in doc["consistency_errors"]} == \
        {("items", 2, 0), ("notes", 0, 5)}


async def test_rows_missing_in_postgres_and_a_stale_check(ready, pg_dsn):
    await pg_execute(pg_dsn, "DELETE FROM app.items WHERE id > 880")  # 12% gone
    await pg_execute(pg_dsn, "DELETE FROM syncd.verify_runs WHERE table_name = 'notes' AND finished_at > $1",
                     ago(hours=2))
    rc, md, _, doc = report(ready)
    assert rc == 1
    assert marks(md)["migrated"] is False
    text = section(md, "migrated")
    assert "❌ app.items: 1,000 rows in SQLite, 880 in Postgres (88.0% in Postgres)" in text
    assert re.search(r"❌ app\.notes: last verification is 12\.0 h old, more than \[status\] "
                     r"verify_max_age_seconds \(60 min\)", text)
    assert "| `items` | streaming | 1,000 | 880 ❌ |" in md
    tables = {t["table"]: t for t in doc["sources"][0]["tables"]}
    assert tables["items"]["counts_match"] is False and tables["items"]["rows_postgres"] == 880
    assert item(doc, "migrated")["ok"] is False


async def test_lag_halted_table_and_capture(ready, app_db, pg_dsn):
    conn = sqlite3.connect(app_db)
    conn.execute("UPDATE items SET v = 'changed' WHERE id <= 3")  # captured, not applied: no daemon runs
    tid = conn.execute("SELECT tid FROM _syncd_tables WHERE name = 'notes'").fetchone()[0]
    conn.execute(f'DROP TRIGGER "_syncd_t{tid}_del"')  # notes: deletes would go unrecorded
    conn.commit()
    # Postgres last held every captured change 5 minutes ago; a later apply left changes behind.
    await pg_execute(pg_dsn, "UPDATE syncd.sources SET caught_up_at = now() - interval '5 minutes', applied_at = now()")
    await pg_execute(pg_dsn, "UPDATE syncd.tables SET state = 'held', reason = 'a value does not fit' "
                             "WHERE table_name = 'notes'")
    rc, md, _, doc = report(ready)
    assert rc == 1
    assert marks(md) == {"migrated": False, "dual_write": True, "lag": False, "halted": False, "capture": False,
                         "backup": True, "performance": True, "foreign_keys": True,
                         "rollback_rehearsed": True}
    assert re.search(r"❌ app: lag 30\d\.\d s, from computed: at most the time since Postgres last held every captured "
                     r"change "
                     r"\(3 change\(s\) pending; no daemon endpoint is configured\); 3 change\(s\) pending", section(md, "lag"))
    assert "❌ app.notes: held: a value does not fit" in section(md, "halted")
    assert "❌ app.notes: held (a value does not fit)" in section(md, "migrated")
    assert "❌ app.notes: capture triggers missing or not the ones this syncd version installs" in \
        section(md, "capture")
    assert "1 table(s) captured" in section(md, "capture")
    assert doc["not_done"] == ["migrated", "lag", "halted", "capture"]
    assert doc["sources"][0]["lag"]["pending_changes"] == 3


async def test_backup_too_old_or_not_configured(ready, tmp_path, make_config, app_db):
    os.utime(tmp_path / "backups" / "app-new.db", (time.time() - 31 * 86400,) * 2)
    os.utime(tmp_path / "backups" / "app-old.db", (time.time() - 45 * 86400,) * 2)
    rc, md, _, doc = report(ready)
    assert rc == 1 and doc["not_done"] == ["backup"]
    assert re.search(r"❌ app: too old: newest \S+app-new\.db \([\d.]+ KB\), 31\.0 days old; 2 file\(s\), "
                     r"oldest 45\.0 days old", section(md, "backup"))

    bare = make_config([{"name": "app", "path": str(app_db)}], name="nobackup.toml")
    rc, md, _, doc = report(bare)
    assert rc == 1 and doc["not_done"] == ["backup"]
    assert "❌ not evidenced: no [cutover] backup_glob is configured" in section(md, "backup")


async def test_an_empty_file_or_the_live_database_is_no_backup(ready, tmp_path, make_config, app_db):
    os.utime(tmp_path / "backups" / "app-new.db", (time.time() - 31 * 86400,) * 2)
    os.utime(tmp_path / "backups" / "app-old.db", (time.time() - 45 * 86400,) * 2)
    (tmp_path / "backups" / "app-today.db").write_bytes(b"")  # a backup job that failed half-way
    rc, md, _, doc = report(ready)
    assert rc == 1 and doc["not_done"] == ["backup"]
    assert re.search(r"❌ app: too old: newest \S+app-new\.db .*not counted: \S+app-today\.db \(empty\)",
                     section(md, "backup"))

    itself = make_config([{"name": "app", "path": str(app_db)}], name="itself.toml",
                         extra=verify_section() + '[cutover]\nbackup_glob = "*.db*"\n')
    rc, md, _, doc = report(itself)
    assert rc == 1 and "backup" in doc["not_done"]
    # app.db and its -wal and -shm: one reason, one entry
    assert re.search(r"❌ app: no backup matches \S+; not counted: \d files \(\S+app\.db(,| and) \S+app\.db-.*\): "
                     r"the live database", section(md, "backup")), section(md, "backup")


async def test_a_backup_or_rehearsal_dated_in_the_future_is_not_recent(ready, tmp_path, pg_dsn):
    """A backup file dated a year ahead (written by a host whose clock runs ahead, or
    unpacked with another's dates) is no recent backup: when it was taken is not known.
    It is named as not counted, and the next newest decides (45 days old here: too old).
    So is a rehearsal Postgres dated a year ahead."""
    os.utime(tmp_path / "backups" / "app-new.db", (time.time() + 365 * 86400,) * 2)
    os.utime(tmp_path / "backups" / "app-old.db", (time.time() - 45 * 86400,) * 2)
    await pg_execute(pg_dsn, "UPDATE syncd.rehearsals SET started_at = $1, finished_at = $1", ago(days=-365))
    rc, md, _, doc = report(ready)
    assert rc == 1 and doc["ready"] is False and sorted(doc["not_done"]) == ["backup", "rollback_rehearsed"], doc
    assert re.search(r"❌ app: too old: newest \S+app-old\.db .*not counted: \S+app-new\.db \(dated in the future, "
                     r"\d{4}-\d\d-\d\d \d\d:\d\d UTC: a clock ahead\?\)", section(md, "backup")), section(md, "backup")
    assert re.search(r"❌ app: the last rehearsal is dated \S+ \S+ UTC, in the future", section(md, "rollback_rehearsed")), \
        section(md, "rollback_rehearsed")


async def test_a_rehearsal_of_an_empty_copy_is_no_test_of_the_data_there_now(ready, pg_dsn):
    """A rehearsal that verified no row (the file was empty then, before its data came) cut
    over and rolled back none of the rows the file holds now: no value of theirs went
    through the switch and back, so the item is not met on it."""
    await pg_execute(pg_dsn, "UPDATE syncd.rehearsals SET rows_verified = 0")
    out = run_cli(ready, "report", "--format", "json")
    doc = json.loads(out.stdout)
    assert out.returncode == 1 and doc["not_done"] == ["rollback_rehearsed"], doc["not_done"]
    problems = item(doc, "rollback_rehearsed")["problems"]
    assert len(problems) == 1 and re.match(r"app: the last rehearsal, \S+ \S+ UTC \(3\.0 days ago\), verified no row "
                                           r"\(its copy was empty\); the file holds 1,050 row\(s\) now: run `syncd "
                                           r"rehearse --source app` again$", problems[0]), problems


async def test_a_file_left_frozen_for_the_application_is_a_halt(ready, app_db):
    """A cutover stopped before finishing (killed, say; tests/test_status_of_a_frozen_file.py)
    leaves the file refusing the application's writes while SQLite is still its database.
    The report does not call that ready with every table streaming: the halted item fails,
    saying so and what undoes it."""
    from syncd.sqlite import freeze

    conn = sqlite3.connect(app_db)
    freeze.freeze(conn, "frozen by a cutover", 5000, lambda table: True)
    conn.close()
    out = run_cli(ready, "report", "--format", "json")
    doc = json.loads(out.stdout)
    assert out.returncode == 1 and doc["not_done"] == ["halted"], doc["not_done"]
    assert item(doc, "halted")["problems"] == [
        "app: the SQLite file refuses the application's writes, left frozen by a cutover or rollback that stopped "
        "before finishing (Postgres is not the application's database): a running daemon undoes it, as does "
        "`syncd cutover` or `syncd rollback` run again"]


async def test_lag_from_the_running_daemon(ready, app_db, make_config, pg_dsn, tmp_path):
    port = 19000 + os.getpid() % 1000
    cfg = make_config([{"name": "app", "path": str(app_db)}], name="live.toml", metrics_listen=f"127.0.0.1:{port}",
                      extra='[cutover]\nbackup_glob = "backups/{source}-*.db"\n')
    with DaemonProcess(cfg, tmp_path / "live.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        time.sleep(1.5)  # the endpoint's status refreshes every second
        rc, md, _, doc = report(cfg)
        _, text, page = html_report(cfg)
        assert d.stop() == 0
    # the file carries the running daemon's charts too
    assert text.count('<figure data-chart="') == 2 and "No lag or apply-rate history" not in page.all_text
    assert rc == 0, md
    assert "from the running daemon (streaming)" in section(md, "lag")
    assert doc["sources"][0]["lag"]["source"] == "the running daemon (streaming)"


def test_postgres_unreachable_is_one_line(tmp_path, app_db):
    toml = tmp_path / "down.toml"
    toml.write_text(f'[postgres]\ndsn = "postgresql://syncd:s3cret-pw@127.0.0.1:9/x"\nconnect_timeout_seconds = 2\n'
                    f'[metrics]\nlisten = ""\n[[sources]]\nname = "app"\npath = "{app_db}"\n')
    out = run_cli(toml, "report")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("syncd: cannot connect to postgresql://syncd:***@127.0.0.1:9/x")
    assert len(out.stderr.strip().splitlines()) == 1 and "s3cret" not in out.stderr


def test_a_connection_postgres_drops_part_way_is_an_error_not_a_migration_not_ready(tmp_path, app_db, outage):
    """Postgres goes away while the report reads the verification history: one line saying
    the connection was lost, and exit 2 (the report could not be made), never exit 1,
    which tells a script the migration is not ready."""
    proxy, dsn = outage
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.close()
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(app_db)}])
    assert run_cli(cfg, "init").returncode == 0
    proxy.lose_reply_after(b"verify_runs", then=b"verify_runs", refuse_after=True)
    out = run_cli(cfg, "report")
    assert proxy.reply_lost.is_set()
    assert out.returncode == 2 and out.stdout == "", out.stdout[-2000:] + out.stderr
    [line] = out.stderr.splitlines()
    assert line.startswith("syncd: Postgres: the connection was lost"), line


def test_a_glob_whose_files_are_all_gone_with_postgres_unreachable_is_no_report(tmp_path, outage):
    """Every file of a glob syncd ran is gone and Postgres, which knows their sources, is
    unreachable: one line saying Postgres cannot be reached, exit 2, as with the files
    there; it wrote a report of no source at all, "nothing measured", with no word of
    Postgres, and exit 1."""
    proxy, dsn = outage
    d_ = tmp_path / "tenants"
    d_.mkdir()
    for stem in ("acme", "globex"):
        conn = sqlite3.connect(d_ / f"{stem}.db")
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.close()
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "t_{stem}", "path": str(d_ / "*.db")}])
    assert run_cli(cfg, "init").returncode == 0
    for stem in ("acme", "globex"):
        (d_ / f"{stem}.db").unlink()
    proxy.refuse()
    out = run_cli(cfg, "report")
    assert out.returncode == 2 and out.stdout == "", out.stdout[-2000:] + out.stderr
    [line] = out.stderr.splitlines()
    assert line.startswith("syncd: Postgres unreachable: cannot connect to"), line

def html_report(cfg: Path) -> tuple[int, str, Page]:
    r = run_cli(cfg, "report", "--format", "html")
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return r.returncode, r.stdout, Page(r.stdout)


def _no_ages(text: str) -> str:
    """Without what two measurements cannot share: ages, and lookup timings."""
    text = re.sub(r"\d+\.\d\d ms in (Postgres|SQLite)", r"_ ms in \1", text)
    return re.sub(r" \(\d+(?:\.\d+)? (?:s|min|h|days?) ago\)", "", text)


async def test_html_report_is_the_status_page_and_agrees_with_the_report(ready, pg_dsn):
    rc, text, page = html_report(ready)
    md_rc, md, _, doc = report(ready)
    assert rc == md_rc == 0
    assert page.items == {i["key"]: i["ok"] for i in doc["checklist"]} == {k: True for k in ITEMS}
    assert 'id="verdict" data-ready="true"' in text and "READY for cutover" in page.all_text
    assert "<title>syncd: READY for cutover</title>" in text
    assert all(n in page.all_text for n in doc["not_judged"]) and 'id="not-judged"' in text
    assert '<html lang="en" data-refresh="0"' in text  # a file does not ask for itself again
    assert "No lag or apply-rate history" in page.all_text  # no daemon answered
    assert page.outside_references() == []  # one self-contained file
    shown = _no_ages(page.all_text)
    for i in doc["checklist"]:
        for line in i["evidence"]:
            assert _no_ages(line) in shown, line
    assert page.tables == {"app/items": "streaming", "app/notes": "streaming"}

    await pg_execute(pg_dsn, "UPDATE syncd.sources SET streaming_since = $1", ago(days=3))
    await add_run(pg_dsn, "items", ago(days=2), 1000, different=2, repaired=2)
    rc, text, page = html_report(ready)
    md_rc, md, _, doc = report(ready)
    assert rc == md_rc == 1
    assert page.items == {i["key"]: i["ok"] for i in doc["checklist"]} == {**{k: True for k in ITEMS},
                                                                           "dual_write": False}
    assert "NOT READY for cutover: 1 of 9 checklist items are not done." in page.all_text
    assert "<title>syncd: NOT READY for cutover</title>" in text
    shown = _no_ages(page.all_text)
    for line in item(doc, "dual_write")["problems"]:
        assert _no_ages(line) in shown, line
    assert 'data-errors="1"' in text  # the items table's verification history shows the error


def test_html_report_postgres_unreachable_is_one_line(tmp_path, app_db):
    toml = tmp_path / "down.toml"
    toml.write_text(f'[postgres]\ndsn = "postgresql://syncd:s3cret-pw@127.0.0.1:9/x"\nconnect_timeout_seconds = 2\n'
                    f'[metrics]\nlisten = ""\n[[sources]]\nname = "app"\npath = "{app_db}"\n')
    out = run_cli(toml, "report", "--format", "html")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("syncd: cannot connect to postgresql://syncd:***@127.0.0.1:9/x")
    assert len(out.stderr.strip().splitlines()) == 1 and "s3cret" not in out.stderr


async def test_a_table_name_cannot_forge_cells_of_the_markdown_tables(app_db, make_config, pg_dsn, tmp_path):
    """A name holding '|' and '`' stays in its one cell: GitHub splits table rows on '|'
    even in code, so such a name could render a held table as 'streaming | ... | ✅'."""
    name = "t` | streaming | 5 | 5 | ✅ | today | equal | `x"
    q = '"' + name.replace('"', '""') + '"'
    conn = sqlite3.connect(app_db)
    conn.executescript(f"CREATE TABLE {q} (id INTEGER PRIMARY KEY, n REAL); INSERT INTO {q} VALUES (1, 1);")
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    _, md, _, _ = report(cfg)
    cells = lambda line: len(re.split(r"(?<!\\)\|", line.strip().strip("|")))  # noqa: E731
    header = next(line for line in md.splitlines() if line.startswith("| Table | State |"))
    rows = [line for line in md.splitlines() if line.startswith("| ``t`")]
    assert len(rows) == 1, md
    assert cells(rows[0]) == cells(header), (header, rows[0])


async def test_a_table_name_is_no_markup_in_the_markdown(app_db, make_config, pg_dsn, tmp_path):
    """The Markdown goes into tickets and mails, rendered to HTML by whatever renders it:
    a table named as an HTML element or a link is text there, in the checklist's lines as
    in the tables' code spans, whatever the renderer lets through."""
    conn = sqlite3.connect(app_db)
    for name in ("<script>alert(1)</script>", "[x](javascript:alert(1))"):
        q = '"' + name.replace('"', '""') + '"'
        conn.executescript(f"CREATE TABLE {q} (id INTEGER PRIMARY KEY); INSERT INTO {q} VALUES (1);")
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    md = run_cli(cfg, "report").stdout
    assert r"app.\<script>alert(1)\</script>: never verified" in section(md, "migrated"), section(md, "migrated")
    assert r"app.[x]\(javascript:alert(1)): never verified" in section(md, "migrated"), section(md, "migrated")
    for line in md.splitlines():
        text = re.sub(r"(`+).*?\1", "", line)  # code spans hold names as they are, as text
        assert not re.search(r"(?<!\\)<[a-z/]|(?<!\\)\]\(", text), line


def test_short_spans_are_not_rounded_to_zero_days():
    """`[cutover] min_days = 0.001` (a trial run) must not read as "0.0 days" required."""
    from syncd.report.checklist import days
    assert days(0.001) == "1.4 min" and days(0.05) == "1.2 h"
    assert days(0) == "0 days" and days(1) == "1 day" and days(14) == "14 days" and days(2.5) == "2.5 days"


def test_a_time_a_moment_ahead_of_the_report_reads_0_s_ago():
    """A checkpoint Postgres stamped a moment after the report took its time (the
    daemon applying meanwhile) is "0 s ago", never "-0 s ago" or "-1 s ago"."""
    from syncd.report.checklist import when
    now = dt.datetime(2026, 12, 4, 3, 8, tzinfo=dt.timezone.utc)
    assert when(now + dt.timedelta(seconds=0.3), now) == "2026-12-04 03:08 UTC (0 s ago)"
    assert when(now + dt.timedelta(seconds=1.2), now) == "2026-12-04 03:08 UTC (0 s ago)"
    assert when(now - dt.timedelta(seconds=5), now) == "2026-12-04 03:07 UTC (5 s ago)"


def test_the_headline_after_cutovers_says_where_sqlite_still_follows():
    from syncd.report.checklist import headline, not_judged_text
    from syncd.report.facts import TO_SQLITE, MigrationFacts, SourceFacts
    now = dt.datetime(2026, 12, 3, tzinfo=dt.timezone.utc)

    def facts(*sources):
        return MigrationFacts(now, None, list(sources), [], 14, 30, 3600, None, 7)

    until = now + dt.timedelta(days=30)
    a = SourceFacts("a", "a.db", "a", direction=TO_SQLITE, rollback_until=until)
    b = SourceFacts("b", "b.db", "b", direction=TO_SQLITE, rollback_until=until, way_back_ended="the window is over")
    c = SourceFacts("c", "c.db", "c")
    assert headline(facts(c), []) == "READY for cutover: every checklist item is met"
    assert headline(facts(a), []).startswith("CUT OVER: PostgreSQL is the source of truth for the 1 source(s), "
                                             "SQLite follows it, rollback possible until 2027-01-02")
    assert "SQLite follows it for 1 of them (rollback possible until 2027-01-02" in headline(facts(a, b), [])
    assert "no longer for 1" in headline(facts(a, b), [])
    assert headline(facts(b), []).startswith("CUT OVER: PostgreSQL is the source of truth for the 1 source(s), "
                                             "SQLite no longer follows it")
    assert headline(facts(a, c), []).startswith("PARTLY CUT OVER: PostgreSQL is the source of truth for 1 of 2 "
                                                "sources (a)")
    # what syncd cannot judge is said until every source is cut over
    assert not_judged_text(facts(c)) and not_judged_text(facts(a, c)) and not_judged_text(facts(a)) == ""


async def test_a_month_of_checks_every_five_minutes(ready, pg_dsn, tmp_path):
    """The daemon checks every table every 5 minutes: a month of it is 8,640 runs a
    table (here the history of 40 tables). The report counts every run and names every
    error, while loading the history in stretches of time (runs alike in one stretch
    are one line), so it stays small in memory however long dual-write runs."""
    tables = [f"t{i}" for i in range(40)]
    await pg_execute(pg_dsn, """
        INSERT INTO syncd.verify_runs (source, table_name, started_at, finished_at, rows_sqlite, rows_postgres,
                                       full_check, table_state, detail)
        SELECT 'app', t, now() - n * interval '300 s' - interval '1 s', now() - n * interval '300 s', 1, 1,
               true, 'streaming', '{"reason": null, "differences": []}'
        FROM unnest($1::text[]) t, generate_series(1, 8640) n""", tables)
    # Two errors three days ago, and a table held for 50 checks (not compared) on day 20.
    for minutes in (0, 5):
        await add_run(pg_dsn, "items", ago(days=3, minutes=minutes), 1000, missing=3)
    await pg_execute(pg_dsn, """
        INSERT INTO syncd.verify_runs (source, table_name, started_at, finished_at, rows_sqlite, rows_postgres,
                                       full_check, table_state, detail)
        SELECT 'app', 'notes', now() - interval '20 days' - n * interval '300 s', now() - interval '20 days'
               - n * interval '300 s', 50, 50, false, 'held', '{"reason": "a value Postgres refuses"}'
        FROM generate_series(1, 50) n""")
    recorded = await pg_rows_count(pg_dsn)
    # The report's whole process, as an operator runs it, measured by a parent of its own.
    rss, out = run_cli_rss(ready, "report", "--format", "json")
    doc = json.loads(out)  # the JSON report is the run measured
    md = run_cli(ready, "report")
    assert md.returncode in (0, 1), md.stdout + md.stderr
    md = md.stdout
    assert doc["verifications"] == recorded
    errors = doc["consistency_errors"]
    assert sum(e["runs"] for e in errors) == 2 + 50
    assert {(e["table"], e["missing"], e["full_check"]) for e in errors} == {("items", 3, True), ("notes", 0, False)}
    assert len(errors) <= 2 + 5  # the held stretch is a few lines, not fifty
    dw = item(doc, "dual_write")
    assert not dw["ok"] and any("app.items: consistency error" in p and "3 missing in Postgres" in p
                                for p in dw["problems"]), dw
    history = md.split("## Consistency-error history")[1]
    assert f"52 of {recorded:,} verification(s)" in history, history[:300]
    assert "alike since" in history
    assert rss < 300 * 1024, f"syncd report peaked at {rss // 1024} MB"


async def pg_rows_count(dsn: str) -> int:
    from tests.support.verifying import pg_fetch
    return (await pg_fetch(dsn, "SELECT count(*) FROM syncd.verify_runs"))[0][0]


def run_cli_rss(cfg: Path, *args: str) -> tuple[int, str]:
    """Peak RSS (KB) of one syncd command, read by a parent process that runs nothing
    else, and the command's output."""
    import subprocess
    import sys
    from tests.support.daemon import syncd_cmd
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True); "
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
             "sys.stdout.write(r.stdout.decode())")
    out = subprocess.run([sys.executable, "-c", probe, *syncd_cmd(cfg, *args)], capture_output=True, text=True,
                         timeout=300, cwd=str(cfg.parent))
    head, _, output = out.stdout.partition("\n")
    rc, rss = head.split()
    assert rc in ("0", "1"), out.stdout + out.stderr
    return int(rss), output


HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode = delete")
conn.execute("BEGIN EXCLUSIVE")  # rollback-journal mode: no reader gets in
print("locked", flush=True)
time.sleep(120)
"""


async def test_a_file_its_application_holds_locked_is_named_locked_after_read_busy_timeout_ms(ready, app_db):
    """The report waits for a locked file as long as [sqlite] read_busy_timeout_ms says,
    then names it as locked: its tables are not called uncaptured, nor left out."""
    with ready.open("a") as f:
        f.write("[sqlite]\nread_busy_timeout_ms = 200\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(app_db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        js = run_cli(ready, "report", "--format", "json")
        took = time.monotonic() - started
        md = run_cli(ready, "report")
    finally:
        holder.kill()
        holder.wait(10)
    assert took < 4, f"{took:.1f} s"  # one wait of 0.2 s per read, where 5 s each were waited before
    assert js.returncode == md.returncode == 1, js.stderr + md.stderr
    assert "Traceback" not in js.stderr + md.stderr
    src = json.loads(js.stdout)["sources"][0]
    assert src["error"] == f"cannot read SQLite file {app_db}: database is locked", src["error"]
    assert {t["table"] for t in src["tables"]} == {"items", "notes"}
    assert {t["capture_note"] for t in src["tables"]} == {"unknown: the SQLite file could not be read"}
    assert f"- **{src['error']}**" in md.stdout.splitlines()
    assert "not in the SQLite file" not in md.stdout
    assert "lag unknown, unknown (the SQLite file could not be read)" in md.stdout


async def test_a_report_on_bookkeeping_an_older_syncd_made(ready, pg_dsn):
    """`syncd report` from a newer syncd than the daemon that made the bookkeeping (the
    package upgraded, the daemon not restarted yet) reads the tables' states before it
    completes the bookkeeping: no column the older one lacked is needed for that."""
    await pg_execute(pg_dsn, "ALTER TABLE syncd.tables DROP COLUMN behind_since")
    await pg_execute(pg_dsn, "ALTER TABLE syncd.sources DROP COLUMN caught_up_at")
    await pg_execute(pg_dsn, "UPDATE syncd.meta SET value = 'older' WHERE key = 'version'")
    st = run_cli(ready, "status", "--json")
    src = json.loads(st.stdout)["sources"][0]
    assert src["postgres_error"] is None and src["lag_seconds"] == 0, st.stdout + st.stderr
    js = run_cli(ready, "report", "--format", "json")
    assert js.returncode == 0 and json.loads(js.stdout)["ready"] is True, js.stdout + js.stderr


async def test_runs_that_found_different_things_in_one_stretch_are_each_named(ready, pg_dsn):
    """Within one stretch of the history (an hour here), a check that found rows
    missing and, minutes later, one that failed are not alike: the report names both,
    the rows missing too, instead of one line for the failure that counts the other."""
    await add_run(pg_dsn, "items", ago(hours=5, seconds=20), 1000, missing=3,
                  differences=[{"kind": "missing", "key": [5]}])
    await add_run(pg_dsn, "items", ago(hours=5, seconds=10), 1000, error="SQLite file app.db: database is locked")
    rc, md, _, doc = report(ready)
    assert rc == 1
    errors = doc["consistency_errors"]
    assert {(e["table"], e["missing"], e["error"], e["runs"]) for e in errors} == {
        ("items", 3, None, 1), ("items", 0, "SQLite file app.db: database is locked", 1)}, errors
    problems = item(doc, "dual_write")["problems"]
    assert any("app.items: consistency error" in p and "3 missing in Postgres" in p for p in problems), problems
    assert any("check failed: SQLite file app.db: database is locked" in p for p in problems), problems
    history = md.split("## Consistency-error history")[1]
    assert "3 missing in Postgres" in history and "database is locked" in history and "alike" not in history


async def test_the_latest_run_of_a_table_is_the_one_that_finished_last(ready, pg_dsn):
    """Runs recorded out of the order they finished in (two verifications at once, one
    recording later): the table's state now is the run that finished last, a failure
    here, not a clean run that finished before it, also when the history is loaded in
    stretches."""
    await asyncio.sleep(3.5)  # after the fixture's own check
    await add_run(pg_dsn, "items", ago(seconds=1), 1000, error="Postgres went away")
    await add_run(pg_dsn, "items", ago(seconds=3), 1000, error="Postgres went away")
    await add_run(pg_dsn, "items", ago(seconds=2), 1000)
    rc, md, _, doc = report(ready)
    assert rc == 1
    migrated = item(doc, "migrated")
    assert not migrated["ok"] and any("app.items: last verification" in p and "check failed: Postgres went away" in p
                                      for p in migrated["problems"]), migrated
    tables = {t["table"]: t for t in doc["sources"][0]["tables"]}
    assert tables["items"]["last_verification"]["error"] == "Postgres went away"


async def test_a_consistency_error_in_a_table_dropped_since_still_counts(ready, app_db, pg_dsn, tmp_path):
    """A consistency error in the window stays one when the application drops the table
    afterwards: replication failed then, and dropping the table does not undo that."""
    conn = sqlite3.connect(app_db)
    conn.executescript("CREATE TABLE scratch (id INTEGER PRIMARY KEY, v TEXT); "
                       "INSERT INTO scratch VALUES (1, 'a'), (2, 'b');")
    conn.close()
    await sync_and_stop(ready, app_db, pg_dsn, tmp_path / "scratch.log")
    await pg_execute(pg_dsn, "DELETE FROM app.scratch WHERE id = 2")
    assert verify(ready, "--table", "scratch").returncode != 0  # a row missing in Postgres, on record
    conn = sqlite3.connect(app_db)
    conn.execute("DROP TABLE scratch")
    conn.close()
    await sync_and_stop(ready, app_db, pg_dsn, tmp_path / "scratch.log")
    rc, md, _, doc = report(ready)
    assert rc == 1 and "dual_write" in doc["not_done"], md
    assert any(p.startswith("app.scratch: consistency error") and "1 missing" in p
               for p in item(doc, "dual_write")["problems"]), item(doc, "dual_write")


async def test_changes_pending_with_no_daemon_running_are_never_caught_up(ready, app_db, pg_dsn, tmp_path):
    """The daemon stopped a moment ago with changes still in the changelog: its last word
    (Postgres held every captured change just now) bounds the lag at a few seconds, yet
    nothing will apply them. The report does not call the source caught up: the lag item
    fails naming the pending changes and that no daemon runs. With a daemon running (no
    endpoint configured: the same computed figure), the item passes."""
    conn = sqlite3.connect(app_db)
    conn.execute("UPDATE items SET v = 'changed' WHERE id <= 2")  # captured, not applied: no daemon runs
    conn.commit()
    conn.close()
    await pg_execute(pg_dsn, "UPDATE syncd.sources SET caught_up_at = now(), applied_at = now()")
    rc, md, js_rc, doc = report(ready)
    assert rc == 1 and js_rc == 1, md
    assert "READY for cutover: every checklist item is met" not in md
    assert marks(md)["lag"] is False, section(md, "lag")
    assert "2 change(s) pending" in section(md, "lag") and "no daemon runs to apply them" in section(md, "lag")
    assert "lag" in doc["not_done"]
    with DaemonProcess(ready, tmp_path / "again.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn = sqlite3.connect(app_db)
        conn.execute("UPDATE items SET v = 'changed again' WHERE id <= 2")
        conn.commit()
        conn.close()
        _, md, _, _ = report(ready)  # pending or applied by now: a daemon runs either way
        assert "no daemon runs" not in md and marks(md)["lag"] is True, section(md, "lag")
        assert d.stop() == 0


async def hold_items(app_db, pg_dsn, d) -> sqlite3.Connection:
    """Caught up, then `items` held by a value Postgres's real column refuses; returns the
    application's connection to the file, for what the test writes next."""
    await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
    conn = sqlite3.connect(app_db)
    conn.execute("UPDATE items SET r = 'not a number' WHERE id = 1")
    conn.commit()
    wait_for(lambda: "table held" in d.log(), 30, "hold", d)
    return conn


async def test_a_held_tables_queued_change_is_pending_in_the_lag_item(ready, app_db, pg_dsn, tmp_path):
    """A held table's changes wait in the changelog behind the checkpoint, which moves on
    with the other tables. The daemon stopped, the report counts them pending (as `syncd
    status` does): not "every captured change is applied" at lag 0."""
    with DaemonProcess(ready, tmp_path / "again.log") as d:
        conn = await hold_items(app_db, pg_dsn, d)
        conn.execute("INSERT INTO notes VALUES ('later', 'x')")  # another table moves the checkpoint on
        conn.commit()
        conn.close()
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d, settled=("streaming", "held"))
        assert d.stop() == 0
    _, md, _, doc = report(ready)
    lag = section(md, "lag")
    assert "every captured change is applied" not in lag, lag
    assert marks(md)["lag"] is False, lag
    assert "1 change(s) pending" in lag and "no daemon runs to apply them" in lag, lag
    assert doc["sources"][0]["lag"]["pending_changes"] == 1


async def test_a_change_held_for_minutes_is_no_lag_below_30_s(ready, app_db, pg_dsn, tmp_path):
    """The daemon runs (no endpoint to ask) and a table has been held for ten minutes with
    a change queued, while the other tables stream: the checkpoint's own lag is a moment,
    the held change is ten minutes old. The lag item fails, naming the held table."""
    with DaemonProcess(ready, tmp_path / "again.log") as d:
        conn = await hold_items(app_db, pg_dsn, d)

        async def hold_recorded() -> bool:  # the daemon records its events after logging them
            return (await pg_rows(pg_dsn, "SELECT count(*) FROM syncd.events WHERE kind = 'held' "
                                          "AND table_name = 'items'"))[0][0] > 0

        await eventually(hold_recorded, 30, "the hold recorded in syncd.events", d)
        await pg_execute(pg_dsn, "UPDATE syncd.events SET at = at - interval '10 minutes' "
                                 "WHERE kind = 'held' AND table_name = 'items'")
        await pg_execute(pg_dsn, "UPDATE syncd.tables SET updated_at = updated_at - interval '10 minutes' "
                                 "WHERE table_name = 'items'")
        conn.execute("INSERT INTO notes VALUES ('later', 'x')")  # another table moves the checkpoint on
        conn.commit()
        conn.close()
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d, settled=("streaming", "held"))
        _, md, _, doc = report(ready)
        lag = section(md, "lag")
        assert marks(md)["lag"] is False, lag
        assert doc["sources"][0]["lag"]["seconds"] >= 600, lag
        assert "items" in lag and "1 change(s) pending" in lag, lag
        assert d.stop() == 0


async def test_the_glance_row_flags_tables_whose_counts_differ_though_the_totals_agree(ready, pg_dsn):
    """A row gone from one table in Postgres and a row only Postgres has in another: the
    source's totals agree (1,050 on each side), its tables' counts do not. The page's
    at-a-glance row and the source's own figure show the counts as a mismatch, as the
    migrated item fails."""
    await pg_execute(pg_dsn, "DELETE FROM app.items WHERE id = 1")
    await pg_execute(pg_dsn, "INSERT INTO app.notes VALUES ('only in postgres', 'x')")
    rc, text, _ = html_report(ready)
    assert rc == 1
    row = re.search(r'<tr data-source="app">.*?</tr>', text, re.S).group(0)
    assert "1,050 / 1,050" in row, row
    assert '<span class="mismatch">1,050 / 1,050</span>' in row, row
    source = re.search(r'<article class="source" id="source-0".*?</article>', text, re.S).group(0)
    figure = re.search(r"<dt>Rows \(SQLite / Postgres\)</dt><dd>.*?</dd>", source).group(0)
    assert '<span class="mismatch">1,050 / 1,050</span>' in figure, figure


async def test_a_verification_from_before_a_column_was_added_is_no_evidence_for_it(ready, app_db, pg_dsn,
                                                                                  tmp_path):
    """A column added in SQLite (and by the daemon in Postgres) after the table's last
    verification was never compared: that run does not make the table verified equal,
    the more so as Postgres holds other values in it."""
    conn = sqlite3.connect(app_db)
    conn.execute("ALTER TABLE notes ADD COLUMN tag TEXT DEFAULT 'x'")
    conn.commit()
    conn.close()
    await sync_and_stop(ready, app_db, pg_dsn, tmp_path / "again.log")
    await pg_execute(pg_dsn, "UPDATE app.notes SET tag = 'not what SQLite holds'")
    rc, md, _, doc = report(ready)
    assert rc == 1, md
    assert marks(md)["migrated"] is False
    text = section(md, "migrated")
    assert re.search(r'❌ app\.notes: not verified since its columns changed \(column "tag" added\): the last '
                     r"verification, \S+ \S+ UTC \(\d+ s ago\), compared the columns it had then", text), text
    assert "app.items: 1,000 rows on both sides; verified equal" in text
    assert not any(e.startswith("app.notes:") for e in item(doc, "migrated")["evidence"])
    # The table's row says which columns its last verification did not compare, in both forms.
    row = next(line for line in md.splitlines() if line.startswith("| `notes` |"))
    assert 'equal (before its columns changed: column "tag" added)' in row, row
    _, _, page = html_report(ready)
    assert 'equal (before its columns changed: column "tag" added)' in page.all_text, page.all_text


async def test_a_daemon_failing_every_step_fails_the_lag_item(ready, app_db, pg_dsn, tmp_path):
    """The daemon runs (no endpoint to ask) and fails every step, as `syncd status` says
    from the note it leaves in Postgres: the change it cannot apply is pending, its lag
    only beginning to grow. The report names the failure in the lag item rather than
    count a lag under the limit as replication keeping up."""
    from tests.test_status_failing_daemon import BLOCK, UNBLOCK

    with DaemonProcess(ready, tmp_path / "again.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        await pg_execute(pg_dsn, BLOCK)
        conn = sqlite3.connect(app_db)
        conn.execute("INSERT INTO notes VALUES ('later', 'x')")
        conn.commit()
        conn.close()

        async def noted() -> bool:
            return (await pg_rows(pg_dsn, "SELECT failing IS NOT NULL FROM syncd.sources"))[0][0]

        await eventually(noted, 60, "the failing note", d)
        _, md, _, doc = report(ready)
        await pg_execute(pg_dsn, UNBLOCK)
        assert d.stop() == 0
    lag = section(md, "lag")
    assert marks(md)["lag"] is False, lag
    assert re.search(r"❌ app: the daemon reports failing: unexpected error: bookkeeping refused by a test trigger "
                     r".*\(since \S+ \S+ UTC\); changes wait until the failing step succeeds", lag), lag
    assert "bookkeeping refused by a test trigger" in doc["sources"][0]["daemon_failing"]


async def test_a_first_load_killed_part_way_has_no_lag_figure(tmp_path, make_config, pg_dsn):
    """The daemon killed (kill -9) during the first copy of a table, its changelog empty:
    the report's lag is unknown, naming the table not copied in full, not 0.0 s "every
    captured change is applied" while Postgres lacks most of the rows."""
    from tests.support.app import create_items
    from tests.test_kill9 import wait_loading

    db = tmp_path / "app.db"
    create_items(db, rows=20_000)
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"stream": {"snapshot_chunk_rows": 100}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_loading(pg_dsn, "items", d)
        d.kill9()
    md = run_cli(cfg, "report")
    assert md.returncode == 1, md.stdout + md.stderr
    [line] = [x for x in md.stdout.splitlines() if x.startswith("- Lag now: ")]
    assert line.startswith("- Lag now: unknown, from unknown: 1 table(s) not copied in full yet (items)"), line
    assert "every captured change is applied" not in md.stdout, md.stdout


async def test_the_pages_last_verification_does_not_count_a_run_of_a_table_changed_since_as_equal(ready, app_db,
                                                                                                pg_dsn, tmp_path):
    """The source's "Last verification" figure says a table whose last run compared
    columns it no longer has, or a table no longer in the SQLite file, is not verified
    as it is now, rather than counting that run among the tables found equal."""
    def figure() -> str:
        rc, text, _ = html_report(ready)
        assert rc == 1, text
        source = re.search(r'<article class="source" id="source-0".*?</article>', text, re.S).group(0)
        return re.search(r"<dt>Last verification</dt><dd>(.*?)</dd>", source).group(1)

    conn = sqlite3.connect(app_db)
    conn.execute("ALTER TABLE notes ADD COLUMN tag TEXT DEFAULT 'x'")
    conn.commit()
    await sync_and_stop(ready, app_db, pg_dsn, tmp_path / "again.log")
    shown = figure()
    assert "equal (1 table(s)); 1 not verified since it changed" in shown and "sev-warning" in shown, shown
    conn.execute("DROP TABLE items")  # no daemon runs: syncd still tracks it
    conn.commit()
    conn.close()
    shown = figure()
    assert "2 of 2 table(s) not verified since they changed" in shown and "equal" not in shown, shown


async def test_a_table_left_out_after_it_was_replicated_is_no_table_missing_from_postgres(ready, app_db, pg_dsn,
                                                                                         tmp_path):
    """`notes`, replicated for weeks, is taken out of the source's configuration (`exclude`)
    and the daemon started again: it stops following the table, and Postgres keeps its
    copy as it was then. After a switch the application would read that copy, and its
    writes to the SQLite table since would be missing there: the report says so, as data
    not migrated, not that the application will not find the table in Postgres, and the
    cutover refuses for it."""
    ready.write_text(ready.read_text().replace('path = "', 'exclude = ["notes", "drafts"]\npath = "', 1))
    await sync_and_stop(ready, app_db, pg_dsn, tmp_path / "again.log")
    conn = sqlite3.connect(app_db)
    conn.execute("INSERT INTO notes VALUES ('late', 'written to SQLite once syncd no longer followed the table')")
    conn.execute("CREATE TABLE drafts (id INTEGER PRIMARY KEY, body TEXT)")  # never replicated
    conn.execute("INSERT INTO drafts VALUES (1, 'x')")
    conn.commit()
    conn.close()
    # made in Postgres by hand, as the report says to for a table left out: the operator's, no stale copy
    await pg_execute(pg_dsn, "CREATE TABLE app.drafts (id bigint PRIMARY KEY, body text)")
    assert verify(ready).returncode == 0  # the tables still replicated are equal
    rc, md, rc_json, doc = report(ready)
    assert rc == rc_json == 1, md
    migrated = item(doc, "migrated")
    assert not migrated["ok"], migrated
    notes = [p for p in migrated["problems"] if p.startswith("app.notes:")]
    assert len(notes) == 1 and "51 row(s) in SQLite" in notes[0] and "50 in Postgres" in notes[0], migrated
    assert not any("app.notes" in e for e in migrated["evidence"]), migrated
    assert not any("app.drafts" in p for p in migrated["problems"]), migrated
    assert "app.drafts: 1 row(s) not migrated: the source's include/exclude settings leave it out" in \
        migrated["evidence"], migrated
    left = [lo for lo in doc["sources"][0]["not_migrated"] if lo["name"] == "notes"]
    assert len(left) == 1 and "will not find it in Postgres" not in left[0]["todo"], left
    row = next(line for line in md.splitlines() if line.startswith("| `notes` | a table the source's include"))
    assert "the application will not find it in Postgres" not in row and "keeps a copy" in row, row
    out = run_cli(ready, "cutover", "--dry-run")
    assert out.returncode == 1 and "app: REFUSED: " in out.stdout and "app.notes:" in out.stdout, out.stdout
