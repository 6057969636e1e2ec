"""Sources found by a path glob with a name template: every file is a source of its
own, a file whose name makes no valid source name is named (never skipped in silence),
per-source commands take globs, and a fleet can drop its per-table metric series."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
import urllib.request

import asyncpg

from syncd.config import load_settings
from syncd.metrics import ROLLUPS
from tests.conftest import write_config
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.sync import wait_caught_up
from tests.support.pgcluster import free_port, with_database
from tests.test_metrics import scrape


def tenant(path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes VALUES (1, ?)", (path.stem,))
    conn.commit()
    conn.close()


def test_a_glob_names_every_file_and_says_which_it_cannot_take(tmp_path, pg_dsn):
    (tmp_path / "tenants").mkdir()
    for stem in ("acme", "globex", "bad name"):
        tenant(tmp_path / "tenants" / f"{stem}.db")
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn,
                       [{"name": "t_{stem}", "path": str(tmp_path / "tenants" / "*.db"), "schema": "tenant_{stem}"}])
    r = run_cli(cfg, "schema")
    assert '-- source t_acme:' in r.stdout and 'CREATE SCHEMA IF NOT EXISTS "tenant_globex"' in r.stdout
    assert any(line.startswith("-- ") and "bad name.db (from" in line and "is not picked up" in line
               for line in r.stdout.splitlines()), r.stdout  # the file left out is named, as a comment
    r = run_cli(cfg, "init", "--source", "t_*")
    assert r.returncode == 0, r.stdout + r.stderr
    status = run_cli(cfg, "status", "--json")
    doc = json.loads(status.stdout)
    assert sorted(s["name"] for s in doc["sources"]) == ["t_acme", "t_globex"]
    assert any("bad name.db" in p and "is not picked up" in p for p in doc["not_picked_up"])
    assert status.returncode >= 1  # at least WARNING while a file is not picked up
    assert run_cli(cfg, "verify", "--source", "t_nobody*").returncode == 2  # a glob matching nothing
    # the file not picked up holds rows Postgres does not have: verify and the report say so
    v = run_cli(cfg, "verify")
    assert v.returncode == 1 and "NOT REPLICATED:" in v.stdout and "bad name.db" in v.stdout, v.stdout
    migrated = next(i for i in json.loads(run_cli(cfg, "report", "--format", "json").stdout)["checklist"]
                    if i["key"] == "migrated")
    assert not migrated["ok"] and any("bad name.db" in p and "not replicated" in p for p in migrated["problems"])
    # ...and a fleet's cutover names it among those not cut over
    c = run_cli(cfg, "cutover", "--dry-run")
    assert c.returncode == 1 and any("bad name.db (from" in line and "not cut over" in line
                                     for line in c.stdout.splitlines()), c.stdout + c.stderr
    # a file syncd ran is gone: the glob no longer matches it, status still shows it
    (tmp_path / "tenants" / "globex.db").unlink()
    doc = json.loads(run_cli(cfg, "status", "--json").stdout)
    states = {s["name"]: s["state"] for s in doc["sources"]}
    assert sorted(states) == ["t_acme", "t_globex"] and states["t_globex"] == "source_missing"
    assert doc["status"] == "CRITICAL"
    # ...and so does the report, which judges it instead of leaving it out
    r = run_cli(cfg, "report", "--format", "json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and not doc["ready"], r.stdout[-2000:]
    gone = next(s for s in doc["sources"] if s["source"] == "t_globex")
    assert "globex.db does not exist" in gone["error"]
    # ...and so does verify, fleet-wide or for that source alone
    for args in ((), ("--source", "t_globex")):
        v = run_cli(cfg, "verify", *args)
        assert v.returncode == 2 and "t_globex: ERROR" in v.stdout and "globex.db" in v.stdout, v.stdout + v.stderr


def test_a_file_whose_path_is_not_utf8_is_named_and_not_picked_up(tmp_path, pg_dsn):
    """A file name, or a folder's, of bytes that are not UTF-8 (Postgres keeps each
    source's path, SQLite opens a file by a URI: neither holds one) is not picked up, and
    said with those bytes as escapes; the glob's other files are sources as ever."""
    root = os.fsencode(tmp_path / "tenants")
    for folder, stem in ((b"ok", b"acme"), (b"ok", b"bad\xff"), (b"x\xff", b"globex")):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        tenant(tmp_path / "made.db")  # SQLite is given a UTF-8 name: the file is renamed after
        os.rename(tmp_path / "made.db", os.path.join(root, folder, stem + b".db"))
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn,
                       [{"name": "t_{stem}", "path": str(tmp_path / "tenants" / "*" / "*.db")}])
    status = run_cli(cfg, "status")
    assert "Traceback" not in status.stderr, status.stderr
    for shown in ("ok/bad\\xff.db", "x\\xff/globex.db"):
        assert f"{tmp_path}/tenants/{shown} (from {tmp_path}/tenants/*/*.db) is not picked up: its path is not " \
               "valid UTF-8" in status.stdout, status.stdout
    assert "t_acme" in status.stdout and "t_globex" not in status.stdout, status.stdout
    report = run_cli(cfg, "report")
    assert "matched by a glob and not replicated: " + f"{tmp_path}/tenants/ok/bad\\xff.db" in report.stdout, \
        report.stdout


def test_a_file_is_one_source_however_many_ways_it_is_named(tmp_path, pg_dsn):
    """A file configured by itself and matched by a glob, or reached through a symlink,
    is one source; a directory or a dangling link the glob matches is no source."""
    d = tmp_path / "tenants"
    d.mkdir()
    for stem in ("acme", "globex"):
        tenant(d / f"{stem}.db")
    (d / "alias.db").symlink_to(d / "globex.db")
    (d / "dangling.db").symlink_to(d / "gone.db")
    (d / "folder.db").mkdir()
    (d / "acme.db-journal").write_bytes(b"")
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [
        {"name": "main", "path": str(d / "acme.db")},
        {"name": "t_{stem}", "path": str(d / "*.db")}])
    settings = load_settings(cfg)
    assert sorted((s.name, s.path.name) for s in settings.sources) == [
        ("main", "acme.db"), ("t_globex", "globex.db")]  # its own name, though alias.db sorts before it
    assert settings.discovery_problems == []


def test_a_file_under_two_names_is_one_source_and_the_other_name_is_said(tmp_path, pg_dsn):
    """Hard links (one file, two directory entries) are one source, not two carrying the
    same file into two schemas: the configured name, or the name a running daemon
    carries, or else the first the glob finds, keeps it; the other is named as not
    picked up. Once that name is gone, the other is found as a source of its own."""
    import os

    from syncd.discovery import expand

    d, elsewhere = tmp_path / "tenants", tmp_path / "elsewhere"
    d.mkdir()
    elsewhere.mkdir()
    tenant(elsewhere / "main.db")
    os.link(elsewhere / "main.db", d / "main-link.db")  # the configured file, matched by the glob too
    tenant(d / "b.db")
    os.link(d / "b.db", d / "c.db")  # two matches of the glob
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [
        {"name": "main", "path": str(elsewhere / "main.db")},
        {"name": "t_{stem}", "path": str(d / "*.db")}])
    settings = load_settings(cfg)
    assert sorted((s.name, s.path.name) for s in settings.sources) == [("main", "main.db"), ("t_b", "b.db")]
    problems = settings.discovery_problems
    assert len(problems) == 2, problems
    assert any(f"{d / 'main-link.db'} (from" in p and f"same file as {elsewhere / 'main.db'}" in p for p in problems)
    assert any(f"{d / 'c.db'} (from" in p and f"same file as {d / 'b.db'}" in p for p in problems)
    doc = json.loads(run_cli(cfg, "status", "--json").stdout)
    assert sorted(s["name"] for s in doc["sources"]) == ["main", "t_b"]
    assert sum("hard links" in p for p in doc["not_picked_up"]) == 2

    # A running daemon carries t_c (c.db), and a.db appears as another name of it: t_c keeps it.
    os.unlink(d / "b.db")
    carried = expand(settings)
    assert sorted(s.name for s in carried.sources) == ["main", "t_c"]
    os.link(d / "c.db", d / "a.db")
    again = expand(carried)
    assert sorted(s.name for s in again.sources) == ["main", "t_c"]
    assert [p for p in again.discovery_problems if "a.db" in p and f"same file as {d / 'c.db'}" in p]


async def test_a_symlink_appearing_beside_a_streamed_file_starts_no_second_source(tmp_path, make_config, pg_dsn):
    """A symlink to a file the daemon streams, appearing in the glob while it runs
    (sorting before it), is no second source: two on one file would each prune its
    changelog at their own pace, and the one behind would lose changes. The daemon goes
    on with the file's own source, finds a new file meanwhile, and `syncd status` names
    the sources it runs."""
    d = tmp_path / "tenants"
    d.mkdir()
    first, second = d / "globex.db", d / "initech.db"
    tenant(first)
    tenant(second)
    cfg = make_config([{"name": "t_{stem}", "path": str(d / "*.db")}],
                      sections={"stream": {"discover_interval_seconds": 0.2}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as dp:
        await wait_caught_up(first, pg_dsn, "t_globex", daemon=dp)
        await wait_caught_up(second, pg_dsn, "t_initech", daemon=dp)
        (d / "alias.db").symlink_to(first)
        (d / "aaa.db").symlink_to(second)
        tenant(d / "zeta.db")  # found on the same look as the links, or after it
        await wait_caught_up(d / "zeta.db", pg_dsn, "t_zeta", daemon=dp)
        conn = sqlite3.connect(second)
        conn.executemany("INSERT INTO notes VALUES (?, 'written after the links')", [(i,) for i in range(2, 52)])
        conn.commit()
        conn.close()
        await wait_caught_up(second, pg_dsn, "t_initech", daemon=dp)
        doc = json.loads(run_cli(cfg, "status", "--json").stdout)
        assert sorted(s["name"] for s in doc["sources"]) == ["t_globex", "t_initech", "t_zeta"], doc["sources"]
        assert "t_alias" not in dp.log() and "t_aaa" not in dp.log()
        assert await compare_table(str(second), pg_dsn, "t_initech", "notes") == []
        assert dp.stop() == 0


async def test_a_file_with_another_name_elsewhere_is_warned_about(tmp_path, make_config, pg_dsn):
    """A file syncd reads by one name while it has another (a hard link no glob of syncd
    matches): SQLite keeps the -wal and -journal beside the name a file is opened by,
    so an application writing through the other name is out of syncd's sight. syncd
    cannot tell which name the application uses; the log and `syncd status` say it."""
    import os

    (tmp_path / "app").mkdir()
    tenant(tmp_path / "app" / "data.db")
    os.link(tmp_path / "app" / "data.db", tmp_path / "data-for-syncd.db")
    cfg = make_config([{"name": "app", "path": str(tmp_path / "data-for-syncd.db")}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("every table is streaming")
        d.wait_log("has 2 names (hard links)")
        status = run_cli(cfg, "status", "--json")
        problems = [p["message"] for p in json.loads(status.stdout)["sources"][0]["problems"]]
        assert any("data-for-syncd.db has 2 names (hard links)" in p for p in problems), problems
        assert d.stop() == 0
    os.unlink(tmp_path / "app" / "data.db")
    status = run_cli(cfg, "status", "--json")
    assert not any("hard links" in p["message"] for p in json.loads(status.stdout)["sources"][0]["problems"])


def test_templates_need_a_glob_and_a_glob_needs_a_template(tmp_path, pg_dsn):
    cfg = write_config(tmp_path / "a.toml", pg_dsn, [{"name": "t_{stem}", "path": str(tmp_path / "one.db")}])
    r = run_cli(cfg, "status")
    assert r.returncode == 3 and "need a path glob" in r.stdout
    cfg = write_config(tmp_path / "b.toml", pg_dsn, [{"name": "t", "path": str(tmp_path / "*.db")}])
    r = run_cli(cfg, "status")
    assert r.returncode == 3 and "needs a name template" in r.stdout


async def test_a_fleet_can_keep_only_per_source_series(tmp_path, pg_dsn):
    (tmp_path / "tenants").mkdir()
    tenant(tmp_path / "tenants" / "acme.db")
    port = free_port()
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "t_{stem}", "path": str(tmp_path / "tenants/*.db")}],
                       metrics_listen=f"127.0.0.1:{port}", extra="")
    text = cfg.read_text().replace('[metrics]\n', '[metrics]\nper_table = false\n')
    cfg.write_text(text)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("every table is streaming")
        wait_for(lambda: 'syncd_pending_changes{direction="to_postgres",source="t_acme"}' in scrape(port), 30,
                 "per-source series", d)
        assert not any('table="' in name for name in scrape(port))
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert all(f"# TYPE {name} gauge" in page for name, _fold, _doc in ROLLUPS.values())
        # Its tables loaded (the changelog alert's exception for a load), repairs counted from 0.
        wait_for(lambda: scrape(port).get('syncd_source_tables_on_the_way{source="t_acme"}') == 0, 30,
                 "no table on its way", d)
        # A held table still shows, rolled up per source (the halted alert fires on it).
        conn = sqlite3.connect(tmp_path / "tenants" / "acme.db")
        conn.execute("INSERT INTO notes VALUES (2, x'00ff')")  # a BLOB where Postgres has text
        conn.commit()
        conn.close()
        wait_for(lambda: scrape(port).get('syncd_source_tables_halted{source="t_acme"}') == 1, 30,
                 "the held table counted", d)
        assert d.stop() == 0


async def test_a_sighup_keeps_the_name_a_running_source_has_for_its_file(tmp_path, make_config, pg_dsn):
    """A hard link to a file the daemon streams, appearing in the glob under a name that
    sorts first, stays "not picked up" through a SIGHUP: the reload keeps the source
    on the name it runs under. Taken up under the new name, the source would be stopped
    as removed from the configuration, its replica left behind unfollowed, and the file
    read through a name the application does not write by (its -wal beside the other)."""
    import os
    import signal

    d = tmp_path / "tenants"
    d.mkdir()
    tenant(d / "initech.db")
    conn = sqlite3.connect(d / "initech.db")
    conn.execute("PRAGMA journal_mode=wal")
    conn.close()
    cfg = make_config([{"name": "t_{stem}", "path": str(d / "*.db")}],
                      sections={"stream": {"discover_interval_seconds": 0.2}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as dp:
        await wait_caught_up(d / "initech.db", pg_dsn, "t_initech", daemon=dp)
        os.link(d / "initech.db", d / "aaa.db")
        dp.wait_log(f"{d / 'aaa.db'} (from")
        dp.proc.send_signal(signal.SIGHUP)
        dp.wait_log("configuration reloaded")
        conn = sqlite3.connect(d / "initech.db")
        conn.executemany("INSERT INTO notes VALUES (?, 'written after the reload')", [(i,) for i in range(2, 52)])
        conn.commit()
        conn.close()
        await wait_caught_up(d / "initech.db", pg_dsn, "t_initech", daemon=dp)
        assert "source removed from the configuration" not in dp.log()
        assert "t_aaa" not in dp.log()
        assert await compare_table(str(d / "initech.db"), pg_dsn, "t_initech", "notes") == []
        assert dp.stop() == 0


async def test_a_restart_keeps_the_name_a_source_was_registered_under(tmp_path, make_config, pg_dsn):
    """A hard link to a streamed file, under a name that sorts first, made while the
    daemon was stopped: the restarted daemon and `syncd status` keep the source on the
    name it was registered under, and say the link is not picked up. Taken by sort
    order, the registered source was left out of both (its file exists, so it was not
    even shown as missing) and its replica was no longer followed."""
    import os

    d = tmp_path / "tenants"
    d.mkdir()
    tenant(d / "initech.db")
    cfg = make_config([{"name": "t_{stem}", "path": str(d / "*.db")}],
                      sections={"stream": {"discover_interval_seconds": 0.2}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as dp:
        await wait_caught_up(d / "initech.db", pg_dsn, "t_initech", daemon=dp)
        assert dp.stop() == 0
    os.link(d / "initech.db", d / "aaa.db")
    conn = sqlite3.connect(d / "initech.db")
    conn.executemany("INSERT INTO notes VALUES (?, 'written while syncd was stopped')", [(i,) for i in range(2, 52)])
    conn.commit()
    conn.close()
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as dp:
        await wait_caught_up(d / "initech.db", pg_dsn, "t_initech", daemon=dp)
        doc = json.loads(run_cli(cfg, "status", "--json").stdout)
        assert [s["name"] for s in doc["sources"]] == ["t_initech"], doc["sources"]
        assert any(f"{d / 'aaa.db'} (from" in p and "hard links" in p for p in doc["not_picked_up"])
        assert "t_aaa" not in dp.log()
        assert await compare_table(str(d / "initech.db"), pg_dsn, "t_initech", "notes") == []
        assert dp.stop() == 0


async def test_a_file_created_in_the_tick_the_daemon_last_looked_in_is_found(tmp_path, make_config, pg_dsn):
    """A directory's modification time moves in ticks (coarse ones on older kernels and
    some network filesystems): a file created in the tick the daemon last looked in leaves the time where
    it was then. While a directory's time is that recent, the daemon looks again, so
    such a file is found all the same."""
    tenants = tmp_path / "tenants"
    tenants.mkdir()
    tenant(tenants / "acme.db")
    cfg = make_config([{"name": "t_{stem}", "path": str(tenants / "*.db")}],
                      sections={"stream": {"discover_interval_seconds": 0.1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(tenants / "acme.db", pg_dsn, "t_acme", daemon=d)
        tenant(tenants / "globex.db")
        await wait_caught_up(tenants / "globex.db", pg_dsn, "t_globex", daemon=d)
        await asyncio.sleep(0.3)  # the daemon looks at the directory (every 0.1 s) as it is now
        tick = tenants.stat().st_mtime_ns
        tenant(tenants / "initech.db")
        os.utime(tenants, ns=(tenants.stat().st_atime_ns, tick))  # a coarse clock: the same tick
        await wait_caught_up(tenants / "initech.db", pg_dsn, "t_initech", daemon=d, timeout=30)
        assert await compare_table(str(tenants / "initech.db"), pg_dsn, "t_initech", "notes") == []
        assert d.stop() == 0


def test_a_file_whose_schema_would_be_reserved_is_not_picked_up(tmp_path, pg_dsn):
    """A file whose name makes a schema of Postgres's own (pg_*, information_schema) or
    syncd's bookkeeping schema is not picked up, and says so, as a configured source
    with that schema is refused: nothing is replicated there, and the other files are."""
    d = tmp_path / "tenants"
    d.mkdir()
    for stem in ("acme", "acme.rehearsal", "syncd", "syncd_rehearsal", "pg_temp", "information_schema"):
        tenant(d / f"{stem}.db")
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn,
                       [{"name": "t_{stem}", "path": str(d / "*.db"), "schema": "{stem}"}])
    r = run_cli(cfg, "init")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    doc = json.loads(run_cli(cfg, "status", "--json").stdout)
    assert [s["name"] for s in doc["sources"]] == ["t_acme"]
    for stem, why in (("acme.rehearsal", "the name `syncd rehearse` gives the copy of source 't_acme'"),
                      ("syncd", "bookkeeping schema"), ("syncd_rehearsal", "`syncd rehearse` keeps its bookkeeping"),
                      ("pg_temp", "reserved by Postgres"),
                      ("information_schema", "reserved by Postgres")):
        assert any(f"{stem}.db (from" in p and "is not picked up" in p and why in p for p in doc["not_picked_up"]), \
            doc["not_picked_up"]

    async def schemas_holding_notes() -> list[str]:
        pg = await asyncpg.connect(pg_dsn)
        try:
            return [r[0] for r in await pg.fetch("SELECT n.nspname FROM pg_class c JOIN pg_namespace n "
                                                 "ON n.oid = c.relnamespace WHERE c.relname = 'notes'")]
        finally:
            await pg.close()

    assert asyncio.run(schemas_holding_notes()) == ["acme"]


async def test_a_gone_file_is_shown_missing_when_postgres_was_away_at_the_start(tmp_path, outage, pg_dsn):
    """The daemon learns from Postgres which of a glob's sources have lost their file; away
    when the daemon starts, it is asked once it is back: the gone file's source is shown
    as missing (/status, syncd_source_up 0), not left out until the next restart."""
    proxy, dsn = outage
    d_ = tmp_path / "tenants"
    d_.mkdir()
    for stem in ("acme", "globex"):
        tenant(d_ / f"{stem}.db")
    port = free_port()
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "t_{stem}", "path": str(d_ / "*.db")}],
                       metrics_listen=f"127.0.0.1:{port}",
                       sections={"postgres": {"connect_timeout_seconds": 2},
                                 "stream": {"discover_interval_seconds": 0.5, "retry_max_backoff_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        for stem in ("acme", "globex"):
            await wait_caught_up(d_ / f"{stem}.db", pg_dsn, f"t_{stem}", daemon=d)
        assert d.stop() == 0
    (d_ / "globex.db").unlink()
    proxy.refuse()
    with DaemonProcess(cfg, tmp_path / "again.log") as d:
        d.wait_log("syncd running")
        wait_for(lambda: "Postgres unreachable" in d.own_log(), 30, "the outage seen", d)
        proxy.heal()
        tenant_status = lambda: json.loads(  # noqa: E731
            urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read())["sources"]
        wait_for(lambda: tenant_status().get("t_acme", {}).get("health") == "streaming", 30, "t_acme streaming", d)
        wait_for(lambda: tenant_status().get("t_globex", {}).get("health") == "source_missing", 30,
                 "t_globex shown missing", d)
        assert scrape(port).get('syncd_source_up{source="t_globex"}') == 0
        assert d.stop() == 0


def test_a_gone_file_of_another_configurations_glob_is_not_taken_for_ours(tmp_path, pg_dsn):
    """Two configurations (two daemons, two hosts) sharing a database, one glob in a
    folder of the other's: a file gone from the inner one is the inner configuration's
    missing source, not a source of the outer one's, whose glob does not match it (`*`
    matches no '/') and whose name template does not make its name."""
    d_ = tmp_path / "tenants"
    (d_ / "eu").mkdir(parents=True)
    tenant(d_ / "a.db")
    tenant(d_ / "eu" / "b.db")
    outer = write_config(tmp_path / "outer.toml", pg_dsn, [{"name": "t_{stem}", "path": str(d_ / "*.db")}])
    inner = write_config(tmp_path / "inner.toml", pg_dsn, [{"name": "eu_{stem}", "path": str(d_ / "eu" / "*.db")}])
    for cfg in (outer, inner):
        r = run_cli(cfg, "init")
        assert r.returncode == 0, r.stdout + r.stderr
    (d_ / "eu" / "b.db").unlink()
    doc = json.loads(run_cli(outer, "status", "--json").stdout)
    assert [s["name"] for s in doc["sources"]] == ["t_a"], doc["sources"]
    doc = json.loads(run_cli(inner, "status", "--json").stdout)
    assert [(s["name"], s["state"]) for s in doc["sources"]] == [("eu_b", "source_missing")]


def globex_gone_here(tmp_path, pg_dsn):
    """A glob's two tenants set up (acme, globex), then globex.db gone from this host: the configuration."""
    d_ = tmp_path / "tenants"
    d_.mkdir()
    for stem in ("acme", "globex"):
        tenant(d_ / f"{stem}.db")
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "t_{stem}", "path": str(d_ / "*.db")}])
    assert run_cli(cfg, "init").returncode == 0
    (d_ / "globex.db").unlink()
    return cfg


async def holding_lock(pg_dsn: str, source: str, **server_settings: str) -> asyncpg.Connection:
    """A session holding `source`'s lock, as a daemon running it does (its connection, to close)."""
    from syncd.postgres.bookkeeping import LOCK_CLASS

    conn = await asyncpg.connect(pg_dsn, server_settings=server_settings or None)
    key = await conn.fetchval("SELECT key FROM syncd.source_keys WHERE source = $1", source)
    assert await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_CLASS, key)
    return conn


async def test_a_source_another_daemon_runs_is_not_missing_here(tmp_path, pg_dsn):
    """Two hosts run one configuration against one database, each with its own files in
    the same folder: a source the other host's daemon runs (its lock held) has no file
    here, and is that daemon's, not a missing source of this host's."""
    cfg = globex_gone_here(tmp_path, pg_dsn)  # on the other host only
    elsewhere = await holding_lock(pg_dsn, "t_globex")  # the other host's daemon, running t_globex
    try:
        doc = json.loads(run_cli(cfg, "status", "--json").stdout)
        assert [s["name"] for s in doc["sources"]] == ["t_acme"], doc["sources"]
    finally:
        await elsewhere.close()
    doc = json.loads(run_cli(cfg, "status", "--json").stdout)  # nobody runs it: missing, as ever
    assert {s["name"]: s["state"] for s in doc["sources"]}["t_globex"] == "source_missing"


async def test_a_file_given_the_name_of_a_gone_files_source_is_said_and_taken_once_that_is_forgotten(
        tmp_path, make_config, pg_dsn):
    """x.db streams as source x and is deleted (x is missing); x.sqlite, whose name the
    template makes x too, appears. Source x is still x.db's (shown as missing) for the
    daemon and for `syncd status`: the new file is not followed, and the daemon says so
    once, naming the file, the reason and what to do. Once x is forgotten, x.sqlite is
    picked up as a new source."""
    d = tmp_path / "tenants"
    d.mkdir()
    tenant(d / "x.db")
    cfg = make_config([{"name": "{stem}", "path": str(d / "*")}],
                      sections={"stream": {"discover_interval_seconds": 0.2}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as dp:
        await wait_caught_up(d / "x.db", pg_dsn, "x", daemon=dp)
        (d / "x.db").unlink()
        dp.wait_log("waiting for it to come back")
        tenant(d / "x.sqlite")
        dp.wait_log(f"{d / 'x.sqlite'} (from")
        said = [line for line in dp.own_log().splitlines() if f"{d / 'x.sqlite'} (from" in line]
        assert len(said) == 1 and "not picked up" in said[0] and "uninstall --forget --source x" in said[0], said
        doc = json.loads(run_cli(cfg, "status", "--json").stdout)
        assert [(s["name"], s["path"], s["state"]) for s in doc["sources"]] == [
            ("x", str(d / "x.db"), "source_missing")], doc["sources"]
        assert any(f"{d / 'x.sqlite'} (from" in p for p in doc["not_picked_up"]), doc["not_picked_up"]
        assert dp.stop() == 0
    with DaemonProcess(cfg, tmp_path / "again.log") as dp:  # a restart: the same
        dp.wait_log(f"{d / 'x.sqlite'} (from")
        wait_for(lambda: "waiting for it to come back" in dp.own_log(), 30, "x shown missing", dp)
        assert "source found at" not in dp.own_log() and "snapshot" not in dp.own_log(), dp.own_log()
        r = run_cli(cfg, "uninstall", "--source", "x", "--forget")
        assert r.returncode == 0, r.stdout + r.stderr
        await wait_caught_up(d / "x.sqlite", pg_dsn, "x", daemon=dp)
        assert await compare_table(str(d / "x.sqlite"), pg_dsn, "x", "notes") == []
        assert dp.stop() == 0


async def test_files_not_picked_up_are_counted_for_alerting(tmp_path, pg_dsn):
    """A file a glob matches but syncd does not pick up is counted, by reason, in
    syncd_files_not_picked_up (SyncdFilesNotPickedUp fires on it), from the daemon's
    start and as files come and go."""
    d_ = tmp_path / "tenants"
    d_.mkdir()
    for stem in ("acme", "bad name"):
        tenant(d_ / f"{stem}.db")
    port = free_port()
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "t_{stem}", "path": str(d_ / "*.db"),
                                                          "schema": "{stem}"}],
                       metrics_listen=f"127.0.0.1:{port}", sections={"stream": {"discover_interval_seconds": 0.2}})
    counted = lambda: {r: scrape(port).get(f'syncd_files_not_picked_up{{reason="{r}"}}')  # noqa: E731
                       for r in ("name", "schema", "same_file")}
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("syncd running")
        wait_for(lambda: counted() == {"name": 1, "schema": 0, "same_file": 0}, 30, "the bad name counted", d)
        tenant(d_ / "pg_x.db")
        os.link(d_ / "acme.db", d_ / "zeta.db")
        wait_for(lambda: counted() == {"name": 1, "schema": 1, "same_file": 1}, 30, "each reason counted", d)
        for stem in ("bad name", "pg_x", "zeta"):
            (d_ / f"{stem}.db").unlink()
        wait_for(lambda: counted() == {"name": 0, "schema": 0, "same_file": 0}, 30, "none left", d)
        assert d.stop() == 0


async def test_a_sighup_keeps_a_gone_files_source_on_its_own_glob(tmp_path, make_config, pg_dsn):
    """Two globs, one in a folder of the other's: a source of the inner one whose file is
    gone stays that glob's through a SIGHUP that changes nothing (its settings, its
    target database), not taken for the outer glob's (whose `*` matches no '/')."""
    import signal

    d_ = tmp_path / "tenants"
    (d_ / "eu").mkdir(parents=True)
    tenant(d_ / "a.db")
    tenant(d_ / "eu" / "b.db")
    cfg = make_config([{"name": "t_{stem}", "path": str(d_ / "*.db")},
                       {"name": "eu_{stem}", "path": str(d_ / "eu" / "*.db"), "exclude": ["secrets"]}],
                      sections={"stream": {"discover_interval_seconds": 0.2}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as dp:
        await wait_caught_up(d_ / "eu" / "b.db", pg_dsn, "eu_b", daemon=dp)
        (d_ / "eu" / "b.db").unlink()
        dp.wait_log("waiting for it to come back")
        dp.proc.send_signal(signal.SIGHUP)
        dp.wait_log("configuration reloaded")
        assert "restarted with new settings" not in dp.own_log(), dp.own_log()
        assert dp.stop() == 0


async def test_a_gone_file_whose_lock_a_daemon_of_this_host_still_holds_is_missing(tmp_path, pg_dsn):
    """The file of a source this host's daemon runs is deleted: until the daemon notices
    and lets the source's lock go, the lock is held, but by a daemon of this host, where
    the file is gone. Status (and a fleet's cutover or rollback, which read the same) shows
    the source missing in that moment too, instead of leaving it out without a word."""
    from syncd.postgres.bookkeeping import application_name

    cfg = globex_gone_here(tmp_path, pg_dsn)
    # this host's daemon, not yet aware: its session named as every syncd session is
    daemon = await holding_lock(pg_dsn, "t_globex", application_name=application_name() + "0")
    try:
        doc = json.loads(run_cli(cfg, "status", "--json").stdout)
        assert {s["name"]: s["state"] for s in doc["sources"]}.get("t_globex") == "source_missing", doc["sources"]
    finally:
        await daemon.close()


async def test_a_file_replaced_by_a_symlink_loop_leaves_discovery_running(tmp_path, make_config, pg_dsn):
    """A streamed file replaced by a symlink that leads back to itself (a link made
    wrong): the daemon's look at the glob ended in a traceback nobody saw, and no file
    that appeared from then on was picked up. The link's source is shown as missing;
    new files are found."""
    d = tmp_path / "tenants"
    d.mkdir()
    tenant(d / "acme.db")
    tenant(d / "globex.db")
    cfg = make_config([{"name": "t_{stem}", "path": str(d / "*.db")}],
                      sections={"stream": {"discover_interval_seconds": 0.2}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as dp:
        await wait_caught_up(d / "acme.db", pg_dsn, "t_acme", daemon=dp)
        await wait_caught_up(d / "globex.db", pg_dsn, "t_globex", daemon=dp)
        (d / "globex.db").unlink()
        (d / "globex.db").symlink_to("globex.db")
        dp.wait_log("source=t_globex event=source_missing")
        tenant(d / "zeta.db")
        await wait_caught_up(d / "zeta.db", pg_dsn, "t_zeta", timeout=15, daemon=dp)
        assert "Traceback" not in dp.log(), dp.log()[-3000:]
        assert dp.stop() == 0
def test_a_fleets_command_waits_for_a_postgres_that_does_not_answer_once(tmp_path, outage):
    """Postgres drops every packet (a firewall, a host gone): `syncd status` and `syncd
    verify` of a glob's sources wait [postgres] connect_timeout_seconds once, then say in a
    line per source that Postgres did not answer. They waited once for the lookup of the
    names syncd registered, again for the gone files' sources, and again for each source."""
    proxy, dsn = outage
    d_ = tmp_path / "tenants"
    d_.mkdir()
    for stem in ("acme", "globex", "initech"):
        tenant(d_ / f"{stem}.db")
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "t_{stem}", "path": str(d_ / "*.db")}],
                       sections={"postgres": {"connect_timeout_seconds": 1}})
    proxy.stall()
    for verb, says in (("status", "CRITICAL: t_{}: Postgres unreachable: cannot connect to"),
                       ("verify", "t_{}: ERROR cannot connect to")):
        started = time.monotonic()
        r = run_cli(cfg, verb)
        took = time.monotonic() - started
        assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
        for stem in ("acme", "globex", "initech"):
            [line] = [x for x in r.stdout.splitlines() if x.startswith(says.format(stem))]
            assert line.endswith("timed out"), line
        assert took < 3.2, f"{verb} took {took:.1f} s"  # one timeout and the command's own start


def test_a_glob_whose_files_are_all_gone_with_postgres_unreachable_is_critical(tmp_path, outage):
    """Every file of a glob syncd ran is gone (a volume not mounted) and Postgres, which
    knows their sources, is unreachable: status is CRITICAL and says Postgres is
    unreachable, as with a single missing file; it said only that the glob matches no
    file, a WARNING, with no word of Postgres."""
    proxy, dsn = outage
    d_ = tmp_path / "tenants"
    d_.mkdir()
    for stem in ("acme", "globex"):
        tenant(d_ / f"{stem}.db")
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "t_{stem}", "path": str(d_ / "*.db")}])
    assert run_cli(cfg, "init").returncode == 0
    for stem in ("acme", "globex"):
        (d_ / f"{stem}.db").unlink()
    proxy.refuse()
    r = run_cli(cfg, "status")
    assert r.returncode == 2, r.stdout + r.stderr
    assert any(x.startswith("CRITICAL: fleet: Postgres unreachable: cannot connect to") for x in r.stdout.splitlines()), \
        r.stdout
    doc = json.loads(run_cli(cfg, "status", "--json").stdout)
    assert doc["exit_code"] == 2, doc
    assert doc["postgres_unreachable"][0].startswith("Postgres unreachable: cannot connect to"), doc


async def test_a_glob_whose_sources_cannot_be_looked_up_is_said_by_every_command(tmp_path, pg_dsn, pg_server,
                                                                              fresh_databases):
    """A glob loading into a database of its own whose files are all gone, and the lookup
    of the sources syncd registered there failing (the table locked past the statement
    timeout; a privilege refused or a connection lost alike): every command left those
    sources out as if none were registered, and `syncd status` said only the other
    source's state, `syncd rollback` "nothing to do" with exit 0. Each says in a line
    naming the database (no password) that it could not look them up, and none succeeds;
    a command about a source with its file (--source main) does not look them up."""
    other = fresh_databases.take()
    try:
        glob_dsn = with_database(pg_server, other).replace("://postgres@", "://postgres:hunter2@")
        tenant(tmp_path / "app.db")
        d_ = tmp_path / "tenants"
        d_.mkdir()
        for stem in ("acme", "globex"):
            tenant(d_ / f"{stem}.db")
        cfg = write_config(tmp_path / "syncd.toml", pg_dsn,
                           [{"name": "main", "path": str(tmp_path / "app.db")},
                            {"name": "t_{stem}", "path": str(d_ / "*.db"), "dsn": glob_dsn}],
                           sections={"postgres": {"statement_timeout_seconds": 0.5}})
        assert run_cli(cfg, "init").returncode == 0
        for stem in ("acme", "globex"):
            (d_ / f"{stem}.db").unlink()
        locker = await asyncpg.connect(with_database(pg_server, other))
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE syncd.sources IN ACCESS EXCLUSIVE MODE")
                for verb, code in ((("status",), 2), (("verify",), 2), (("report",), 2), (("rollback", "--dry-run"), 1),
                                   (("uninstall", "--forget", "--source", "t_globex"), 1)):
                    r = run_cli(cfg, *verb)
                    out = r.stdout + r.stderr
                    assert r.returncode == code and "Traceback" not in out, (verb, out)
                    [line] = [x for x in out.splitlines() if "could not look up the glob's registered sources in" in x]
                    assert f"/{other}" in line and "hunter2" not in out and "timed out" in line, (verb, line)
                r = run_cli(cfg, "status", "--source", "main")  # a source with its file: no lookup concerns it
                assert r.returncode == 1 and "could not look up" not in r.stdout, r.stdout
        finally:
            await locker.close()
    finally:
        fresh_databases.give_back(other)


async def test_a_fleets_command_waits_once_for_a_lookup_of_its_sources_that_gets_no_answer(tmp_path, pg_dsn):
    """Three globs into one database whose bookkeeping does not answer (a lock held on it,
    a busy server): `syncd report` waited [postgres] statement_timeout_seconds for the
    names syncd registered, then again for the gone files' sources. It waits once (one
    lookup per database, however many globs), then says it could not look them up."""
    timeout = 5  # two waits take 10 s: a command starting slowly on a loaded machine still tells one from two
    globs = []
    for g in ("eu", "us", "ap"):
        (tmp_path / g).mkdir()
        tenant(tmp_path / g / "acme.db")
        globs.append({"name": g + "_{stem}", "path": str(tmp_path / g / "*.db")})
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, globs,
                       sections={"postgres": {"statement_timeout_seconds": timeout}})
    assert run_cli(cfg, "init").returncode == 0
    locker = await asyncpg.connect(pg_dsn)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE syncd.sources IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            r = run_cli(cfg, "report")
            took = time.monotonic() - started
    finally:
        await locker.close()
    assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    [line] = r.stderr.splitlines()
    assert "could not look up the glob's registered sources in" in line and "timed out" in line, line
    assert took < 2 * timeout, f"report took {took:.1f} s"  # one wait and the command's own start


# Loaded by the daemon's interpreter (sitecustomize): its look at the globs fails while
# the file SYNCD_LOOK_FAILS names exists, as an error syncd did not foresee would.
FAILING_LOOK = '''
import os
import syncd.discovery

_signature = syncd.discovery.signature


def signature(settings):
    if os.path.exists(os.environ["SYNCD_LOOK_FAILS"]):
        raise RuntimeError("the look at the globs went wrong")
    return _signature(settings)


syncd.discovery.signature = signature
'''


async def test_discovery_that_fails_is_said_and_started_again(tmp_path, make_config, pg_dsn):
    """An unexpected error in the daemon's discovery loop ended it without a word (its
    exception was read only at the stop), and no file that appeared from then on was
    picked up. It is logged once as an error naming the loop, the loop is started again
    after a short pause, and `syncd status` warns meanwhile."""
    d = tmp_path / "tenants"
    d.mkdir()
    tenant(d / "acme.db")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(FAILING_LOOK)
    fails = tmp_path / "fail"
    port = free_port()
    cfg = make_config([{"name": "t_{stem}", "path": str(d / "*.db")}], metrics_listen=f"127.0.0.1:{port}",
                      sections={"stream": {"discover_interval_seconds": 0.2}})
    env = {"PYTHONPATH": str(tmp_path / "site"), "SYNCD_LOOK_FAILS": str(fails)}
    with DaemonProcess(cfg, tmp_path / "syncd.log", env=env) as dp:
        await wait_caught_up(d / "acme.db", pg_dsn, "t_acme", daemon=dp)
        fails.touch()
        tenant(d / "globex.db")  # the directory changed: discovery looks again, and fails
        dp.wait_log("the daemon's discovery loop failed: the look at the globs went wrong; started again in 1 s")
        wait_for(lambda: 'syncd_daemon_loop_restarts_total{loop="discovery"} 2.0'
                 in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode(), 10,
                 "a second failure", dp)
        r = run_cli(cfg, "status", "--json")
        doc = json.loads(r.stdout)
        assert r.returncode >= 1 and doc["loops_failed"]["discovery"]["error"] == "the look at the globs went wrong"
        assert dp.own_log().count("discovery loop failed") == 1, dp.own_log()  # the same error, said once
        fails.unlink()
        await wait_caught_up(d / "globex.db", pg_dsn, "t_globex", timeout=15, daemon=dp)
        assert dp.stop() == 0


async def test_a_file_not_picked_up_is_said_once_across_a_restart_of_discovery(tmp_path, make_config, pg_dsn):
    """A file found but not picked up (its source name not allowed) was said again each
    time the discovery loop was started again after an unexpected error, though the file
    had not changed: it is said once, as discovery says it at each look."""
    d = tmp_path / "tenants"
    d.mkdir()
    tenant(d / "acme.db")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(FAILING_LOOK)
    fails = tmp_path / "fail"
    cfg = make_config([{"name": "t_{stem}", "path": str(d / "*.db")}],
                      sections={"stream": {"discover_interval_seconds": 0.2}})
    env = {"PYTHONPATH": str(tmp_path / "site"), "SYNCD_LOOK_FAILS": str(fails)}
    with DaemonProcess(cfg, tmp_path / "syncd.log", env=env) as dp:
        await wait_caught_up(d / "acme.db", pg_dsn, "t_acme", daemon=dp)
        tenant(d / "bad name.db")
        said = "bad name.db (from"
        dp.wait_log(said)
        fails.touch()
        dp.wait_log("the daemon's discovery loop failed: the look at the globs went wrong")
        fails.unlink()
        tenant(d / "globex.db")  # found by the discovery started again
        await wait_caught_up(d / "globex.db", pg_dsn, "t_globex", timeout=15, daemon=dp)
        assert dp.own_log().count(said) == 1, dp.own_log()[-3000:]
        assert dp.stop() == 0


async def test_a_tenant_folder_syncd_may_not_enter_leaves_the_daemon_running(tmp_path, make_config, pg_dsn,
                                                                           monkeypatch):
    """A tenant's folder syncd may not enter any more (its owner changed, mode 0700): the
    daemon's look at whether the file was still there raised "Permission denied", which
    ended its discovery (no file found from then on) and, when the source restarted,
    its housekeeping too (failed sources no longer restarted, the watchdog no longer
    pinged). The source is shown as missing, waiting for its file to be readable again;
    new files are found, the other sources stream on, nothing ends in a traceback."""
    from tests.support import daemon as support

    d = tmp_path / "tenants"
    for stem in ("acme", "globex"):
        (d / stem).mkdir(parents=True)
        tenant(d / stem / "app.db")
    cfg = make_config([{"name": "t_{parent}", "path": str(d / "*" / "app.db")}],
                      sections={"stream": {"discover_interval_seconds": 0.2}})
    # syncd as its unit runs it, held out by a folder's mode: root without the capabilities that pass over it.
    cmd = support.syncd_cmd
    monkeypatch.setattr(support, "syncd_cmd", lambda config, *args: [
        "setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd(config, *args)])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as dp:
        await wait_caught_up(d / "acme" / "app.db", pg_dsn, "t_acme", daemon=dp)
        await wait_caught_up(d / "globex" / "app.db", pg_dsn, "t_globex", daemon=dp)
        os.chown(d / "globex", 65534, 65534)
        os.chmod(d / "globex", 0o700)
        dp.wait_log("source=t_globex event=source_missing")
        (d / "zeta").mkdir()
        tenant(d / "zeta" / "app.db")
        await wait_caught_up(d / "zeta" / "app.db", pg_dsn, "t_zeta", timeout=15, daemon=dp)
        assert "Traceback" not in dp.own_log() and "ended unexpectedly" not in dp.own_log(), dp.own_log()[-3000:]
        assert dp.stop() == 0


def test_a_tenant_folder_syncd_may_not_enter_is_named_by_the_commands(tmp_path, pg_dsn, monkeypatch):
    """A tenant's folder syncd may not enter (mode 0700, another owner): `syncd verify`
    said "ERROR Postgres: Permission denied", sending the operator to a Postgres that was
    fine, and `syncd cutover` refused with a bare "Permission denied". Each names the file
    in the daemon's words (cannot be reached), and carries on with the other tenant."""
    from tests.support import daemon as support

    d = tmp_path / "tenants"
    for stem in ("acme", "globex"):
        (d / stem).mkdir(parents=True)
        tenant(d / stem / "app.db")
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "t_{parent}", "path": str(d / "*" / "app.db")}])
    assert run_cli(cfg, "init").returncode == 0
    os.chown(d / "globex", 65534, 65534)
    os.chmod(d / "globex", 0o700)
    cmd = support.syncd_cmd  # root without the capabilities that pass over a folder's mode, as its unit runs it
    monkeypatch.setattr(support, "syncd_cmd", lambda config, *args: [
        "setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd(config, *args)])
    says = f"SQLite file {d / 'globex' / 'app.db'} cannot be reached: Permission denied"
    for verb, code in ((("verify",), 2), (("cutover", "--dry-run"), 1), (("report",), 1)):
        r = run_cli(cfg, *verb)
        out = r.stdout + r.stderr
        assert r.returncode == code and "Traceback" not in out, (verb, out[-3000:])
        assert any(x.startswith("t_acme") or "- t_acme" in x for x in out.splitlines()), (verb, out[-3000:])
        [line] = [x for x in out.splitlines() if "t_globex" in x and "Permission denied" in x][:1]
        assert says in line and "Postgres: Permission denied" not in line, (verb, line)


async def test_a_file_given_a_running_sources_name_in_another_folder_does_not_take_it_over(
        tmp_path, make_config, pg_dsn):
    """A glob over several folders whose template gives two files one name: the file the
    daemon streams keeps its source, and the one that appeared since (another tenant's,
    in a folder that sorts first) is the one said as not picked up, by the daemon, by
    `syncd status` and across a restart. Before, the daemon named the file it streamed as
    not picked up, status read the newcomer as the source (no capture installed), and a
    restart loaded the newcomer's rows in place of the streamed tenant's."""
    d = tmp_path / "regions"
    (d / "eu").mkdir(parents=True)
    (d / "asia").mkdir()
    tenant(d / "eu" / "acme.db")
    cfg = make_config([{"name": "t_{stem}", "path": str(d / "*" / "*.db")}],
                      sections={"stream": {"discover_interval_seconds": 0.2}})
    newcomer = f"{d / 'asia' / 'acme.db'} (from {d / '*' / '*.db'}) is not picked up: its source name 't_acme' is " \
               f"already taken by {d / 'eu' / 'acme.db'}"
    with DaemonProcess(cfg, tmp_path / "syncd.log") as dp:
        await wait_caught_up(d / "eu" / "acme.db", pg_dsn, "t_acme", daemon=dp)
        tenant(d / "asia" / "acme.db")
        dp.wait_log(newcomer)
        assert f"{d / 'eu' / 'acme.db'} (from" not in dp.log()
        doc = json.loads(run_cli(cfg, "status", "--json").stdout)
        assert [(s["name"], s["path"]) for s in doc["sources"]] == [("t_acme", str(d / "eu" / "acme.db"))], doc
        assert doc["not_picked_up"] == [newcomer]
        assert dp.stop() == 0
    conn = sqlite3.connect(d / "eu" / "acme.db")
    conn.executemany("INSERT INTO notes VALUES (?, 'eu')", [(i,) for i in range(2, 22)])
    conn.commit()
    conn.close()
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as dp:
        await wait_caught_up(d / "eu" / "acme.db", pg_dsn, "t_acme", daemon=dp)
        assert "re-snapshotting" not in dp.own_log()
        assert await compare_table(str(d / "eu" / "acme.db"), pg_dsn, "t_acme", "notes") == []
        assert dp.stop() == 0


async def test_a_file_given_a_registered_sources_name_does_not_take_it_over_while_postgres_is_away(
        tmp_path, outage, pg_dsn):
    """Another tenant's file that the glob's template gives a registered source's name,
    appearing while the daemon is stopped, with Postgres away when the daemon starts (the
    names registered cannot be read, and the globs' own order decides): the source is
    refused on the newcomer once Postgres answers, in one line naming both files, and its
    rows in Postgres stay the registered file's. Before, the newcomer's rows were loaded
    in their place."""
    proxy, dsn = outage
    d = tmp_path / "regions"
    (d / "eu").mkdir(parents=True)
    (d / "asia").mkdir()
    tenant(d / "eu" / "acme.db")
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "t_{stem}", "path": str(d / "*" / "*.db")}],
                       sections={"postgres": {"connect_timeout_seconds": 2},
                                 "stream": {"discover_interval_seconds": 0.5, "retry_max_backoff_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as dp:
        await wait_caught_up(d / "eu" / "acme.db", pg_dsn, "t_acme", daemon=dp)
        assert dp.stop() == 0
    tenant(d / "asia" / "acme.db")
    conn = sqlite3.connect(d / "asia" / "acme.db")
    conn.executemany("INSERT INTO notes VALUES (?, 'asia')", [(i,) for i in range(2, 22)])
    conn.commit()
    conn.close()
    proxy.refuse()
    with DaemonProcess(cfg, tmp_path / "again.log") as dp:
        dp.wait_log("syncd running")
        wait_for(lambda: "Postgres unreachable" in dp.own_log(), 30, "the outage seen", dp)
        proxy.heal()
        dp.wait_log(f"source 't_acme' is registered for {d / 'eu' / 'acme.db'}, which is there still: "
                    f"{d / 'asia' / 'acme.db'} (given the same name by the glob) is not loaded in its place")
        await asyncio.sleep(2)
        assert "re-snapshotting" not in dp.own_log()
        assert await compare_table(str(d / "eu" / "acme.db"), pg_dsn, "t_acme", "notes") == []
        assert dp.stop() == 0


async def test_a_source_in_a_folder_named_with_brackets_keeps_its_name(tmp_path, make_config, pg_dsn):
    """A tenant's folder whose name holds '[' (`eu[1]`): the file the daemon streams from
    it is a file, not a pattern, and keeps its source's name when another tenant's file
    that the template names alike appears. Its path was taken for a glob, so the newcomer
    took the name and the streamed file was said as not picked up."""
    d = tmp_path / "regions"
    (d / "eu[1]").mkdir(parents=True)
    (d / "asia").mkdir()
    tenant(d / "eu[1]" / "acme.db")
    cfg = make_config([{"name": "t_{stem}", "path": str(d / "*" / "*.db")}],
                      sections={"stream": {"discover_interval_seconds": 0.2}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as dp:
        await wait_caught_up(d / "eu[1]" / "acme.db", pg_dsn, "t_acme", daemon=dp)
        tenant(d / "asia" / "acme.db")
        dp.wait_log(f"{d / 'asia' / 'acme.db'} (from {d / '*' / '*.db'}) is not picked up: its source name 't_acme' "
                    f"is already taken by {d / 'eu[1]' / 'acme.db'}")
        assert f"{d / 'eu[1]' / 'acme.db'} (from" not in dp.log()
        assert dp.stop() == 0


async def test_a_hard_link_sorting_first_takes_no_file_from_its_source_while_postgres_is_away(tmp_path, outage, pg_dsn):
    """A hard link to a streamed file, under a name that sorts first, made while the
    daemon was stopped, and Postgres away when it starts (the name registered cannot be
    read, and the globs' own order decides): once Postgres answers, the link's source is
    refused in one line naming the registered one, and the file keeps its capture id.
    Before, the link's source took the file for a copy, wrote a capture id of its own into
    it and loaded it again, leaving the registered source's replica unfollowed."""
    from tests.support.sync import capture_id

    proxy, dsn = outage
    d = tmp_path / "tenants"
    d.mkdir()
    tenant(d / "initech.db")
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "t_{stem}", "path": str(d / "*.db")}],
                       sections={"postgres": {"connect_timeout_seconds": 2},
                                 "stream": {"discover_interval_seconds": 0.5, "retry_max_backoff_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as dp:
        await wait_caught_up(d / "initech.db", pg_dsn, "t_initech", daemon=dp)
        assert dp.stop() == 0
    registered = capture_id(d / "initech.db")
    os.link(d / "initech.db", d / "aaa.db")
    proxy.refuse()
    with DaemonProcess(cfg, tmp_path / "again.log") as dp:
        dp.wait_log("syncd running")
        wait_for(lambda: "Postgres unreachable" in dp.own_log(), 30, "the outage seen", dp)
        proxy.heal()
        dp.wait_log(f"{d / 'aaa.db'} is the SQLite file of source 't_initech' too (another name of it), which syncd "
                    "registered it under: one file is one source; t_aaa is not streamed (nor re-snapshotted); "
                    "restart syncd to follow the file as 't_initech' again")
        assert capture_id(d / "initech.db") == registered
        assert "re-snapshotting" not in dp.own_log()
        assert dp.stop() == 0
    with DaemonProcess(cfg, tmp_path / "third.log") as dp:  # Postgres there: the registered name keeps the file
        await wait_caught_up(d / "initech.db", pg_dsn, "t_initech", daemon=dp)
        assert "re-snapshotting" not in dp.own_log()
        assert dp.stop() == 0


def test_status_of_a_gone_files_source_named_on_the_command_line_shows_it_missing(tmp_path, pg_dsn):
    """A monitoring check per tenant (`syncd status --source t_globex`) of a glob's source
    whose file is gone: `syncd status` alone shows it missing (CRITICAL), and `--source
    't_*'` too, but named by itself it was 'UNKNOWN: no source named 't_globex' in the
    configuration', as if it had never been one. Named, it is shown missing, as the
    others show it."""
    cfg = globex_gone_here(tmp_path, pg_dsn)
    for args in (("--source", "t_globex"), ("--source", "t_acme", "--source", "t_globex")):
        r = run_cli(cfg, "status", *args)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "no source named" not in r.stdout and "t_globex: SQLite file" in r.stdout, r.stdout
    doc = json.loads(run_cli(cfg, "status", "--json", "--source", "t_globex").stdout)
    assert [(s["name"], s["state"]) for s in doc["sources"]] == [("t_globex", "source_missing")], doc


def test_a_glob_with_a_double_star_is_refused_not_taken_for_one_folder(tmp_path, pg_dsn):
    """`path = "/srv/tenants/**/*.db"` reads as every file at any depth (as shells with
    globstar, and [cutover] backup_glob, read it), but a source's glob matched one folder
    level with it: of tenants/a.db, tenants/eu/b.db and tenants/eu/de/c.db only b was
    picked up, the other two left out without a word. Refused naming the key, exit 2."""
    d_ = tmp_path / "tenants"
    (d_ / "eu" / "de").mkdir(parents=True)
    for f in (d_ / "a.db", d_ / "eu" / "b.db", d_ / "eu" / "de" / "c.db"):
        tenant(f)
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "t_{stem}", "path": str(d_ / "**" / "*.db")}])
    r = run_cli(cfg, "init")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"syncd: config {cfg}: sources[0].path: '**'"), r.stderr
    assert not [f for f in d_.rglob("*.db") if "_syncd_changelog" in f.read_bytes().decode("latin-1")]


async def test_a_file_not_picked_up_is_no_problem_of_the_source_status_is_asked_about(tmp_path, pg_dsn):
    """A monitoring check per tenant (`syncd status --source t_acme`) went WARNING for a
    file of the fleet syncd does not pick up (its name makes no source name), a problem
    of no source of it: every tenant's check raised the same alert, and t_acme, streaming
    and checked, was never OK. The file is the fleet's problem, said by `syncd status`
    over the fleet (as syncd verify and cutover say it only without --source)."""
    d_ = tmp_path / "tenants"
    d_.mkdir()
    for stem in ("acme", "bad name"):
        tenant(d_ / f"{stem}.db")
    port = free_port()
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "t_{stem}", "path": str(d_ / "*.db")}],
                       metrics_listen=f"127.0.0.1:{port}", sections={"verify": {"interval_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("consistency check: equal", 60)
        r = run_cli(cfg, "status", "--source", "t_acme")
        assert r.returncode == 0 and "bad name.db" not in r.stdout, r.stdout + r.stderr
        doc = json.loads(run_cli(cfg, "status", "--json", "--source", "t_acme").stdout)
        assert doc["status"] == "OK" and doc["not_picked_up"] == [], doc
        r = run_cli(cfg, "status")  # the fleet's: the file not picked up is said, a warning
        assert r.returncode == 1 and "bad name.db" in r.stdout and "is not picked up" in r.stdout, r.stdout
        assert d.stop() == 0


def test_the_report_of_a_source_named_is_not_failed_by_a_file_of_the_fleet_not_picked_up(tmp_path, pg_dsn):
    """`syncd report --source t_acme` judges t_acme's cutover, which `syncd cutover --source
    t_acme` would make without a word of another file: the 'migrated' item failed on a file
    of the fleet syncd does not pick up (its name makes no source name), data of no source
    reported on. The report over the fleet still fails on it."""
    d_ = tmp_path / "tenants"
    d_.mkdir()
    for stem in ("acme", "bad name"):
        tenant(d_ / f"{stem}.db")
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "t_{stem}", "path": str(d_ / "*.db")}])
    assert run_cli(cfg, "init").returncode == 0

    def migrated(*args):
        doc = json.loads(run_cli(cfg, "report", "--format", "json", *args).stdout)
        return next(i for i in doc["checklist"] if i["key"] == "migrated")["problems"]

    assert not [p for p in migrated("--source", "t_acme") if "bad name.db" in p]
    assert [p for p in migrated() if "bad name.db" in p and "not replicated" in p]


def test_status_of_named_sources_while_the_gone_files_lookup_fails_keeps_those_that_match(tmp_path, pg_dsn):
    """Postgres unreachable, the sources of a glob's gone files cannot be looked up:
    `syncd status --source t_acme --source t_typo` dropped t_acme without a word and said
    the glob matches no file (it matches acme.db), and so did `--source t_globex` (a gone
    file's source). Each name is matched by itself: t_acme is shown, and a name matching
    no file is said not known because the gone files' lookup failed."""
    globex_gone_here(tmp_path, pg_dsn)
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    d_ = tmp_path / "tenants"
    cfg = write_config(tmp_path / "syncd.toml", dead, [{"name": "t_{stem}", "path": str(d_ / "*.db")}])
    r = run_cli(cfg, "status", "--source", "t_acme", "--source", "t_typo")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "t_acme" in r.stdout and "matches no file" not in r.stdout, r.stdout
    assert "source 't_typo' not known" in r.stdout, r.stdout
    r = run_cli(cfg, "status", "--source", "t_globex")
    assert r.returncode == 2 and "matches no file" not in r.stdout, r.stdout + r.stderr
    assert "source 't_globex' not known" in r.stdout, r.stdout
    doc = json.loads(run_cli(cfg, "status", "--json", "--source", "t_acme", "--source", "t_typo").stdout)
    assert [s["name"] for s in doc["sources"]] == ["t_acme"] and "no_sources" not in doc, doc


def test_status_of_a_source_named_says_another_name_of_its_file(tmp_path, pg_dsn):
    """`syncd status --source t_acme` where tenants/acme_link.db is a hard link of acme.db:
    the warning that the application must open the file as acme.db (or syncd may miss its
    changes) is t_acme's own, and is said with --source, as syncd report and cutover say
    it; a file of the fleet no source has is left to the fleet's status."""
    import os

    d_ = tmp_path / "tenants"
    d_.mkdir()
    for stem in ("acme", "globex", "bad name"):
        tenant(d_ / f"{stem}.db")
    os.link(d_ / "acme.db", d_ / "acme_link.db")
    os.link(d_ / "globex.db", d_ / "globex_link.db")
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "t_{stem}", "path": str(d_ / "*.db")}])
    assert run_cli(cfg, "init").returncode == 0
    r = run_cli(cfg, "status", "--source", "t_acme")
    assert "acme_link.db" in r.stdout and f"must open it as {d_ / 'acme.db'}" in r.stdout, r.stdout + r.stderr
    assert "globex_link.db" not in r.stdout and "bad name.db" not in r.stdout, r.stdout
    assert r.returncode >= 1, r.stdout
    doc = json.loads(run_cli(cfg, "status", "--json", "--source", "t_acme").stdout)
    assert [p for p in doc["not_picked_up"] if "acme_link.db" in p] == doc["not_picked_up"] != [], doc


def test_a_fleet_flattened_by_hard_links_keeps_its_sources_in_the_new_glob(tmp_path, pg_dsn):
    """A fleet in tenant folders (tenants/*/*.db) moved up one level with hard links
    (`cp -al`, the old folders not yet removed) and the glob changed to tenants/*.db:
    with a file of the fleet not picked up (its name makes no source name), `syncd
    status` dropped t_acme without a word and said tenants/acme.db "is not picked up: it
    is the same file as tenants/eu/acme.db, which syncd carries", which no glob matches
    now: the registered path was matched by the new glob with its * spanning a '/'. A
    file in a folder is not the glob's: t_acme is tenants/acme.db."""
    import os

    d_ = tmp_path / "tenants"
    (d_ / "eu").mkdir(parents=True)
    tenant(d_ / "eu" / "acme.db")
    before = write_config(tmp_path / "before.toml", pg_dsn, [{"name": "t_{stem}", "path": str(d_ / "*" / "*.db")}])
    r = run_cli(before, "init")
    assert r.returncode == 0, r.stdout + r.stderr
    os.link(d_ / "eu" / "acme.db", d_ / "acme.db")
    tenant(d_ / "bad name.db")
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "t_{stem}", "path": str(d_ / "*.db")}])
    doc = json.loads(run_cli(cfg, "status", "--json").stdout)
    assert [(s["name"], s.get("path")) for s in doc["sources"]] == [("t_acme", str(d_ / "acme.db"))], doc
    assert not [p for p in doc["not_picked_up"] if "acme.db" in p and "bad name" not in p], doc["not_picked_up"]


async def test_a_sighup_after_a_fleet_is_flattened_by_hard_links_follows_the_new_glob(tmp_path, make_config, pg_dsn):
    """The daemon streams tenants/eu/acme.db (glob tenants/*/*.db); the fleet is moved up
    a level with hard links and the glob changed to tenants/*.db, then SIGHUP: the reload
    kept the running source as one the new glob matched (its * spanning a '/'), so
    tenants/acme.db was taken for a second name of a file syncd carries: t_acme was
    stopped as removed from the configuration, the reload said 0 source(s), and the
    tenant went unstreamed until the next look for files found it. Now the reload moves
    t_acme to tenants/acme.db."""
    import os
    import signal

    d = tmp_path / "tenants"
    (d / "eu").mkdir(parents=True)
    tenant(d / "eu" / "acme.db")
    cfg = make_config([{"name": "t_{stem}", "path": str(d / "*" / "*.db")}],
                      sections={"stream": {"discover_interval_seconds": 0.2}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as dp:
        await wait_caught_up(d / "eu" / "acme.db", pg_dsn, "t_acme", daemon=dp)
        os.link(d / "eu" / "acme.db", d / "acme.db")
        make_config([{"name": "t_{stem}", "path": str(d / "*.db")}],
                    sections={"stream": {"discover_interval_seconds": 0.2}})
        dp.proc.send_signal(signal.SIGHUP)
        dp.wait_log("configuration reloaded")
        conn = sqlite3.connect(d / "acme.db")
        conn.executemany("INSERT INTO notes VALUES (?, 'written after the reload')", [(i,) for i in range(2, 52)])
        conn.commit()
        conn.close()
        await wait_caught_up(d / "acme.db", pg_dsn, "t_acme", daemon=dp)
        assert "configuration reloaded: 1 source(s)" in dp.log(), dp.log()
        assert "source removed from the configuration" not in dp.log(), dp.log()
        assert await compare_table(str(d / "acme.db"), pg_dsn, "t_acme", "notes") == []
        assert dp.stop() == 0


async def test_a_source_moved_to_another_name_of_its_file_says_which_name_the_application_must_open(
        tmp_path, make_config, pg_dsn):
    """A fleet flattened with `cp -al` (tenants/eu/acme.db hard-linked as tenants/acme.db,
    the old folders not yet removed) and the glob changed to tenants/*.db: t_acme moves to
    tenants/acme.db. While the name syncd registered it at is there, one file under two
    names, the application may write it by the old name, its -wal beside that one, out of
    syncd's sight: `syncd status` and the log say both names and which one to open."""
    import os

    d = tmp_path / "tenants"
    (d / "eu").mkdir(parents=True)
    tenant(d / "eu" / "acme.db")
    cfg = make_config([{"name": "t_{stem}", "path": str(d / "*" / "*.db")}])
    with DaemonProcess(cfg, tmp_path / "before.log") as dp:
        await wait_caught_up(d / "eu" / "acme.db", pg_dsn, "t_acme", daemon=dp)
        assert dp.stop() == 0
    os.link(d / "eu" / "acme.db", d / "acme.db")
    cfg = make_config([{"name": "t_{stem}", "path": str(d / "*.db")}])
    said = (f"{d / 'acme.db'} is the same file as {d / 'eu' / 'acme.db'}, which syncd registered t_acme at "
            f"(hard links: one file, two names)")
    doc = json.loads(run_cli(cfg, "status", "--json").stdout)
    assert [(s["name"], s["path"]) for s in doc["sources"]] == [("t_acme", str(d / "acme.db"))], doc
    assert any(said in p["message"] for p in doc["sources"][0]["problems"]), doc["sources"][0]["problems"]
    with DaemonProcess(cfg, tmp_path / "syncd.log") as dp:
        conn = sqlite3.connect(d / "acme.db")
        conn.execute("INSERT INTO notes VALUES (2, 'after the move')")
        conn.commit()
        conn.close()
        await wait_caught_up(d / "acme.db", pg_dsn, "t_acme", daemon=dp)
        assert said in dp.log(), dp.log()
        doc = json.loads(run_cli(cfg, "status", "--json").stdout)
        assert any(said in p["message"] for p in doc["sources"][0]["problems"]), doc["sources"][0]["problems"]
        assert dp.stop() == 0
    # The old name removed: one name, nothing to say, and the source registered where it is.
    os.unlink(d / "eu" / "acme.db")
    doc = json.loads(run_cli(cfg, "status", "--json").stdout)
    assert not any("same file as" in p["message"] or "hard links" in p["message"]
                   for p in doc["sources"][0]["problems"]), doc["sources"][0]["problems"]
    assert await compare_table(str(d / "acme.db"), pg_dsn, "t_acme", "notes") == []
