"""A verification dated in the future is no evidence of the present. syncd stamps each
run with Postgres's clock as it records it (earlier releases, with the clock of the host
that ran it); a clock that ran ahead for a while (a VM resumed with a wrong time, an RTC
set wrong, NTP stepping it back later) leaves runs dated ahead in `syncd.verify_runs`. The report and `syncd cutover` already refuse a
backup or a rehearsal dated in the future ("when it ran is not known"); a verification so
dated must not count as the latest check of a table either: here the daemon stopped ten
hours ago, its last check stamped by a clock that ran 20 hours ahead, and the report
would call the tables "verified equal (0 s ago)" and the migration READY, though
nothing compared them for ten hours, ten times `[status] verify_max_age_seconds`."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from tests.support.daemon import run_cli
from tests.support.verifying import pg_execute, verify, verify_section
from tests.test_report import html_report, item, ready_migration, report, section
from tests.test_verification_gaps import days, history


@pytest.fixture
async def ready(app_db, make_config, pg_dsn, tmp_path):
    return await ready_migration(app_db, make_config, pg_dsn, tmp_path)


async def test_a_check_stamped_by_a_clock_ahead_is_not_the_recent_check_the_checklist_wants(
        ready, make_config, app_db, pg_dsn):
    cfg = make_config([{"name": "app", "path": str(app_db)}], name="ahead.toml",
                      extra=verify_section() + '[cutover]\nbackup_glob = "backups/{source}-*.db"\n')
    hours = dt.timedelta(hours=1)
    # Checks every five minutes until the daemon stopped, ten hours ago ...
    await history(pg_dsn, (days(20), 10 * hours))
    # ... the last of them made while the host's clock ran 20 hours ahead: a real check
    # by syncd, stamped ten hours past now.
    before = dt.datetime.now(dt.timezone.utc)
    assert verify(cfg).returncode == 0
    await pg_execute(pg_dsn, "UPDATE syncd.verify_runs SET started_at = started_at + interval '10 hours', "
                             "finished_at = finished_at + interval '10 hours' WHERE finished_at >= $1", before)

    rc, md, rc_json, doc = report(cfg)
    assert rc == rc_json == 1 and doc["ready"] is False, section(md, "migrated")
    migrated = item(doc, "migrated")
    assert not migrated["ok"] and {p.split(":")[0] for p in migrated["problems"]} == {"app.items", "app.notes"}, \
        migrated
    assert all("in the future" in p for p in migrated["problems"]), migrated["problems"]
    assert "verified equal" not in section(md, "migrated")
    # The tables' rows, in the Markdown and on the page, date that run as in the future, not "0 s ago".
    row = next(line for line in md.splitlines() if line.startswith("| `items` |"))
    assert "(in the future by 10.0 h" in row and "0 s ago" not in row, row
    _, text, page = html_report(cfg)
    cells = re.search(r'<tr data-table="items".*?</tr>', text, re.S).group(0)
    assert "(in the future by 10.0 h" in cells and "0 s ago" not in cells, cells

    dry = run_cli(cfg, "cutover", "--dry-run")
    assert dry.returncode == 1 and "app: REFUSED" in dry.stdout, dry.stdout


async def test_status_does_not_take_a_check_dated_ahead_for_the_latest(app_db, make_config, pg_dsn, tmp_path):
    """`syncd status` judges a table by its latest check too: a clean one stamped by a clock
    ahead would stand as the latest (and as fresh) until that time came, hiding the checks
    made since, one of which found a row missing."""
    import sqlite3

    from tests.support.daemon import DaemonProcess
    from tests.support.pgcluster import free_port
    from tests.support.sync import wait_caught_up

    conn = sqlite3.connect(app_db)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'b');")
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}], metrics_listen=f"127.0.0.1:{free_port()}",
                      extra="[verify]\ninterval_seconds = 0\n")
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert verify(cfg).returncode == 0
        await pg_execute(pg_dsn, "UPDATE syncd.verify_runs SET started_at = started_at + interval '10 hours', "
                                 "finished_at = finished_at + interval '10 hours'")  # its host's clock ran ahead
        await pg_execute(pg_dsn, "DELETE FROM app.t WHERE id = 2")
        assert verify(cfg).returncode != 0  # a check now, on a clock that is right: a row missing
        r = run_cli(cfg, "status")
        assert r.returncode == 2, r.stdout
        assert 'table "t": 1 row(s) differed at the last consistency check' in r.stdout, r.stdout
        assert d.stop() == 0


async def test_a_check_run_on_a_host_whose_clock_is_behind_is_not_dated_into_the_past(ready, pg_dsn, tmp_path):
    """A `syncd verify` on a host whose clock runs a month behind found a row different. Dated
    by that clock, its finding fell before the dual-write window and below the day's clean
    checks, and the report said READY; stamped by Postgres's clock, where every run is
    recorded, it is the latest check, and the migration is not ready."""
    behind = tmp_path / "clock_behind"
    behind.mkdir()
    (behind / "sitecustomize.py").write_text(  # the host's wall clock 30 days behind; nothing else changed
        "import time\n_wall = time.time\ntime.time = lambda: _wall() - 30 * 86400\n")
    await pg_execute(pg_dsn, "UPDATE app.items SET v = 'changed in Postgres' WHERE id = 7")  # counts still match
    out = run_cli(ready, "verify", env={"PYTHONPATH": str(behind)})
    assert out.returncode != 0 and "1 different" in out.stdout, out.stdout + out.stderr
    rc, md, _, doc = report(ready)
    assert rc == 1 and doc["ready"] is False, md
    assert any(p.startswith("app.items:") and "1 different" in p for p in item(doc, "migrated")["problems"]), \
        item(doc, "migrated")
    assert any(p.startswith("app.items: consistency error") for p in item(doc, "dual_write")["problems"])


def _clock_behind(tmp_path, hours: float) -> dict:
    """An environment whose host clock (time.time and datetime.now) runs `hours` behind."""
    behind = tmp_path / f"clock_behind_{hours}"
    behind.mkdir(exist_ok=True)
    (behind / "sitecustomize.py").write_text(
        "import datetime, time\n"
        f"_off = {hours} * 3600\n"
        "_wall = time.time\n"
        "time.time = lambda: _wall() - _off\n"
        "class _Behind(datetime.datetime):\n"
        "    __slots__ = ()\n"
        "    @classmethod\n"
        "    def now(cls, tz=None):\n"
        "        return datetime.datetime.fromtimestamp(_wall() - _off, tz)\n"
        "    @classmethod\n"
        "    def utcnow(cls):\n"
        "        return datetime.datetime.utcfromtimestamp(_wall() - _off)\n"
        "datetime.datetime = _Behind\n")
    return {"PYTHONPATH": str(behind)}


async def test_checks_dated_by_postgres_are_not_in_the_future_on_a_host_whose_clock_is_behind(ready, tmp_path):
    """Runs are dated by Postgres's clock: on a host whose clock runs an hour behind, every
    check made today, by that host too, was taken for one 'in the future' (the report
    took the last check for 11 hours old, a later one 'in the future', and was not ready;
    `syncd status` warned 'last consistency check is 11.0 h old')."""
    env = _clock_behind(tmp_path, 1)
    assert run_cli(ready, "verify", env=env).returncode == 0
    md = run_cli(ready, "report", env=env)
    assert md.returncode == 0 and "in the future" not in md.stdout, section(md.stdout, "migrated")
    st = run_cli(ready, "status", env=env)
    assert "last consistency check is" not in st.stdout and "consistency not checked" not in st.stdout, st.stdout


async def test_a_load_by_a_daemon_whose_clock_is_ahead_does_not_hide_the_checks_made_after_it(
        app_db, make_config, pg_dsn, tmp_path):
    """A table's copy is dated by Postgres's clock, as the checks are: a daemon on a host
    whose clock ran an hour ahead dated its load an hour on, and every check made after
    it counted as made before the copy (`syncd status`: "consistency not checked since the
    table was copied") until that hour had passed."""
    import sqlite3

    from tests.support.daemon import DaemonProcess
    from tests.support.sync import wait_caught_up

    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"v{i}") for i in range(100)])
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log", env=_clock_behind(tmp_path, -1)) as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert verify(cfg).returncode == 0
    st = run_cli(cfg, "status")
    assert "consistency not checked" not in st.stdout and " ok (" in st.stdout, st.stdout


async def test_dual_write_on_a_host_whose_clock_is_ahead_is_not_counted_longer_than_it_ran(ready, pg_dsn, tmp_path):
    """Dual-write began 13 days ago, by Postgres's clock, which stamped it: on a host whose
    clock runs two days ahead the report counted 15 days (that host's now less Postgres's
    stamp) and met the 14-day item, and `syncd cutover` would have gone ahead. Read on the
    host's clock, as the checks are, it began 13 days ago: 1 day to go."""
    await pg_execute(pg_dsn, "UPDATE syncd.sources SET streaming_since = now() - interval '13 days'")
    env = _clock_behind(tmp_path, -48)
    rc, md, rc_json, doc = report_with(ready, env)
    dual = item(doc, "dual_write")
    assert not dual["ok"] and rc == rc_json == 1, dual
    assert any(re.search(r"app: dual-write since \S+ \S+ UTC, 13\.0 days; 14 days required \(1\.0 days to go\)", p)
               for p in dual["problems"]), dual
    assert round(doc["sources"][0]["dual_write_days"]) == 13, doc["sources"][0]

    # A rehearsal Postgres stamped a moment ago, read on a host whose clock runs an hour
    # behind: made now, not "in the future".
    await pg_execute(pg_dsn, "UPDATE syncd.rehearsals SET finished_at = now()")
    doc = json.loads(run_cli(ready, "report", "--format", "json", env=_clock_behind(tmp_path, 1)).stdout)
    assert item(doc, "rollback_rehearsed")["ok"], item(doc, "rollback_rehearsed")


def report_with(cfg, env: dict) -> tuple[int, str, int, dict]:
    """`syncd report` in Markdown and JSON, run with `env`."""
    md, js = run_cli(cfg, "report", env=env), run_cli(cfg, "report", "--format", "json", env=env)
    return md.returncode, md.stdout, js.returncode, json.loads(js.stdout)


async def test_the_last_apply_is_read_on_the_hosts_clock(ready, pg_dsn, tmp_path):
    """Postgres stamps the last apply: on a host whose clock runs an hour behind, `syncd
    status` read an apply ten minutes old as "0s ago" (a moment ahead of that host's now),
    and the status page as "in the future by 50 min"."""
    await pg_execute(pg_dsn, "UPDATE syncd.sources SET applied_at = now() - interval '10 minutes'")
    env = _clock_behind(tmp_path, 1)
    st = run_cli(ready, "status", env=env).stdout
    row = next(line for line in st.splitlines() if line.startswith("app "))
    assert " 10m ago " in row, st
    text = run_cli(ready, "report", "--format", "html", env=env).stdout
    assert "Last apply" in text and "in the future" not in text, re.findall(r".{80}in the future.{80}", text)
