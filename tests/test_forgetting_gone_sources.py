"""A fleet's file deleted for good: its source stays shown as missing (CRITICAL) until the
operator says so with `syncd uninstall --source NAME --forget`, which a running daemon
need not stop for. Its bookkeeping goes from Postgres, its tables there stay with their
rows, and a file that comes back under the name later is a new source, loaded again."""

from __future__ import annotations

import json
import signal
import sqlite3

from tests.conftest import write_config
from tests.support.app import create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.pgcluster import free_port
from tests.support.sync import pg_rows, pg_statements, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, wait_back, way_back_changelog
from tests.test_metrics import scrape


def tenant(path, body: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes VALUES (1, ?)", (body,))
    conn.commit()
    conn.close()


def fleet(tmp_path, pg_dsn, port: int | None = None):
    (tmp_path / "tenants").mkdir()
    for stem in ("acme", "globex"):
        tenant(tmp_path / "tenants" / f"{stem}.db", stem)
    return write_config(tmp_path / "syncd.toml", pg_dsn,
                        [{"name": "t_{stem}", "path": str(tmp_path / "tenants" / "*.db"), "schema": "tenant_{stem}"}],
                        metrics_listen=f"127.0.0.1:{port}" if port else "",
                        sections={"stream": {"discover_interval_seconds": 0.3}})


def sources(cfg) -> dict[str, str]:
    return {s["name"]: s["state"] for s in json.loads(run_cli(cfg, "status", "--json").stdout)["sources"]}


async def test_a_gone_file_is_forgotten_while_the_daemon_runs_and_its_rows_stay(tmp_path, pg_dsn):
    port = free_port()
    cfg = fleet(tmp_path, pg_dsn, port)
    gone = tmp_path / "tenants" / "globex.db"
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        for stem in ("acme", "globex"):
            await wait_caught_up(tmp_path / "tenants" / f"{stem}.db", pg_dsn, f"t_{stem}", daemon=d)
        gone.unlink()
        wait_for(lambda: sources(cfg).get("t_globex") == "source_missing", 30, "the file shown as missing", d)
        # A reload keeps the gone file's source, still shown as missing: nothing goes in silence.
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("configuration reloaded")
        assert "removed from the configuration" not in d.log()
        wait_for(lambda: scrape(port).get('syncd_source_up{source="t_globex"}') == 0, 30, "the source down", d)

        r = run_cli(cfg, "uninstall", "--source", "t_globex", "--forget")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "t_globex: forgot the source" in r.stdout and "1 table(s) in schema 'tenant_globex' stay" in r.stdout
        d.wait_log("no longer followed")
        wait_for(lambda: 'syncd_source_up{source="t_globex"}' not in scrape(port), 30, "its series gone", d)
        doc = json.loads(run_cli(cfg, "status", "--json").stdout)
        assert [s["name"] for s in doc["sources"]] == ["t_acme"] and doc["status"] == "OK", doc
        assert (await pg_rows(pg_dsn, "SELECT id, body FROM tenant_globex.notes")) == [(1, "globex")]
        assert (await pg_rows(pg_dsn, "SELECT kind FROM syncd.events WHERE source = 't_globex' "
                                      "ORDER BY id DESC LIMIT 1")) == [("source_forgotten",)]

        # The file comes back under the name: a new source, its rows loaded again.
        tenant(gone, "globex again")
        await wait_caught_up(gone, pg_dsn, "t_globex", daemon=d)
        assert await compare_table(str(gone), pg_dsn, "tenant_globex", "notes") == []
        assert d.stop() == 0


def test_forgetting_is_for_a_named_source_whose_file_is_gone(tmp_path, pg_dsn):
    cfg = fleet(tmp_path, pg_dsn)
    assert run_cli(cfg, "init").returncode == 0
    r = run_cli(cfg, "uninstall", "--forget")
    assert r.returncode == 2 and "--forget needs --source" in r.stderr, r.stdout + r.stderr
    r = run_cli(cfg, "uninstall", "--source", "t_acme", "--forget")
    assert r.returncode == 1 and "acme.db exists: --forget is for a source whose file is gone" in r.stdout, r.stdout
    assert sources(cfg) == {"t_acme": "daemon_not_running", "t_globex": "daemon_not_running"}
    (tmp_path / "tenants" / "globex.db").unlink()
    r = run_cli(cfg, "uninstall", "--source", "t_*", "--forget")  # the one whose file is there refused, by name
    assert r.returncode == 1 and "t_acme: ERROR" in r.stdout and "t_globex: forgot the source" in r.stdout, r.stdout
    assert sources(cfg) == {"t_acme": "daemon_not_running"}
    r = run_cli(cfg, "uninstall", "--source", "t_globex", "--forget")  # nothing left to forget: no such source
    assert r.returncode == 2 and "no source named 't_globex'" in r.stderr, r.stdout + r.stderr


async def test_forgetting_a_cut_over_source_ends_its_way_back(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=20)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    changelog = await way_back_changelog(pg_dsn)
    db.unlink()
    for side in db.parent.glob("app.db-*"):
        side.unlink()
    r = run_cli(cfg, "uninstall", "--source", "app", "--forget")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "removed the way back's capture from 1 Postgres table(s)" in r.stdout, r.stdout
    assert "remove its [[sources]] entry from the configuration too" in r.stdout, r.stdout
    # The application writes Postgres; nothing records its changes for a file that is gone.
    await pg_statements(pg_dsn, "INSERT INTO app.items (id, v, n) VALUES (1000, 'after', 1)",
                        "UPDATE app.items SET n = n + 1")
    assert (await pg_rows(pg_dsn, f"SELECT count(*) FROM {changelog}")) == [(0,)]
    assert (await pg_rows(pg_dsn, "SELECT count(*) FROM app.items")) == [(21,)]
    assert (await pg_rows(pg_dsn, "SELECT count(*) FROM syncd.sources")) == [(0,)]


def test_forgetting_with_postgres_unreachable_says_so(tmp_path):
    """Gone sources are known from Postgres's bookkeeping alone: with Postgres unreachable,
    --forget said "no source named 't_globex' in the configuration" (exit 2), sending the
    operator to a configuration that was right."""
    cfg = fleet(tmp_path, f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    (tmp_path / "tenants" / "globex.db").unlink()
    r = run_cli(cfg, "uninstall", "--source", "t_globex", "--forget")
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "no source named" not in out, out
    assert "t_globex" in out and "cannot connect" in out and "Traceback" not in out, out


async def test_a_file_gone_before_the_daemon_starts_can_be_forgotten_while_it_runs(tmp_path, make_config, pg_dsn):
    """A source's file deleted while no daemon ran: the daemon started since shows it missing
    and lets its lock go, as it does for a file deleted under it, so `syncd uninstall
    --forget` need not stop the daemon. Before, the lock the daemon took for every source at
    start was never let go: the forget said the source was "already being run"."""
    db = tmp_path / "app.db"
    tenant(db, "acme")
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    for f in tmp_path.glob("app.db*"):
        f.unlink()
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        d.wait_log("does not exist")
        wait_for(lambda: run_cli(cfg, "uninstall", "--source", "app", "--forget").returncode == 0, 30,
                 "the gone file's source forgotten while the daemon runs", d)
        assert d.stop() == 0


def test_a_file_in_a_folder_syncd_may_not_enter_is_not_forgotten_and_the_others_are(tmp_path, pg_dsn, monkeypatch):
    """A tenant's folder syncd may not enter (its owner changed, mode 0700): the file may
    be there still. `syncd uninstall --forget` ended in a traceback ("Permission denied")
    and forgot none; it refuses that source in one line saying its file cannot be reached,
    and forgets the one whose file is gone."""
    import os

    from tests.support import daemon as support

    d = tmp_path / "tenants"
    for stem in ("acme", "globex", "zeta"):
        (d / stem).mkdir(parents=True)
        tenant(d / stem / "app.db", stem)
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "t_{parent}", "path": str(d / "*" / "app.db")}])
    assert run_cli(cfg, "init").returncode == 0
    (d / "zeta" / "app.db").unlink()
    os.chown(d / "globex", 65534, 65534)
    os.chmod(d / "globex", 0o700)
    # syncd as its unit runs it, held out by a folder's mode: root without the capabilities that pass over it.
    cmd = support.syncd_cmd
    monkeypatch.setattr(support, "syncd_cmd", lambda config, *args: [
        "setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd(config, *args)])
    r = run_cli(cfg, "uninstall", "--source", "t_*", "--forget")
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out, out
    [line] = [x for x in r.stdout.splitlines() if x.startswith("t_globex: ")]
    assert line.startswith(f"t_globex: ERROR SQLite file {d / 'globex' / 'app.db'} cannot be reached: Permission "
                           "denied"), line
    assert "t_zeta: forgot the source" in r.stdout, r.stdout
    monkeypatch.setattr(support, "syncd_cmd", cmd)
    os.chmod(d / "globex", 0o755)
    assert sources(cfg) == {"t_acme": "daemon_not_running", "t_globex": "daemon_not_running"}


def test_a_resync_of_a_source_whose_file_is_gone_names_the_file(tmp_path, pg_dsn):
    """`syncd status` shows a glob's source whose file is gone as missing; `syncd resync`
    of it said "no source named 't_globex' in the configuration" (exit 2), sending the
    operator to a configuration that was right. It says the file is gone, naming it."""
    cfg = fleet(tmp_path, pg_dsn)
    assert run_cli(cfg, "init").returncode == 0
    gone = tmp_path / "tenants" / "globex.db"
    gone.unlink()
    assert sources(cfg)["t_globex"] == "source_missing"
    r = run_cli(cfg, "resync", "--source", "t_globex", "--table", "notes")
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "no source named" not in out and "Traceback" not in out, out
    assert f"SQLite file {gone} does not exist" in r.stderr, out
    r = run_cli(cfg, "resync", "--source", "t_acme", "--table", "notes")  # a file that is there: requested
    assert r.returncode == 0 and "resync of 'notes' requested" in r.stdout, r.stdout + r.stderr
