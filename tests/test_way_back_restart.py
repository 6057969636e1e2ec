"""A source cut over to Postgres that the running daemon starts again (added back to the
configuration by a reload, found by a glob): it starts with its way back, as at start-up,
never forward first; one started forward (Postgres not answering at start-up) is handed
to its way back once Postgres tells, even with its file archived."""

from __future__ import annotations

import json
import signal
import time

from tests.conftest import write_config
from tests.support.app import create_items
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.way_back import (back_up, backup_and_config, cut_over, order_in_sqlite, orders_app,
                                    postgres_write, wait_back)


async def test_a_cut_over_source_added_back_by_a_reload_starts_on_its_way_back(tmp_path, make_config, pg_dsn):
    """Taken out of the configuration and put back, each by a SIGHUP: the source started
    forward, logged that it was cut over to Postgres and turned around to the way back,
    as if a cutover had happened just then. It starts on its way back, saying nothing of
    a cutover, and SQLite keeps following Postgres."""
    db, other = tmp_path / "app.db", tmp_path / "other.db"
    orders_app(db)
    create_items(other, rows=3)
    both = [{"name": "app", "path": str(db)}, {"name": "other", "path": str(other)}]
    cfg = backup_and_config(make_config, tmp_path, db, sources=both)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        backup_and_config(make_config, tmp_path, db, sources=both[1:])
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("configuration reloaded: 1 source(s)")
        mark = len(d.own_log())
        backup_and_config(make_config, tmp_path, db, sources=both)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("configuration reloaded: 2 source(s)")
        assert await postgres_write(pg_dsn, "after the reload") is None
        wait_for(lambda: order_in_sqlite(db, "after the reload"), 30, "the way back to follow Postgres", d)
        since = d.own_log()[mark:]
        assert "source=app event=streaming: SQLite follows Postgres" in since, since
        assert "event=cut_over" not in since and "event=direction_switched" not in since, since
        assert d.stop() == 0


async def test_a_glob_source_retired_and_archived_is_run_as_such_by_a_daemon_started_again(
        tmp_path, make_config, pg_dsn):
    """The way back of a source from a glob has ended and its file is archived (moved away):
    a daemon started again found the source in bookkeeping and ran it forward, which never
    got past the file it could not open: it logged an error every retry that it waited for
    the file to come back, and held no lock, so `syncd status` said no daemon ran it. It
    runs the source as retired, as the daemon did for a source named in the configuration."""
    tenants = tmp_path / "tenants"
    tenants.mkdir()
    db = tenants / "app.db"
    create_items(db, rows=5, journal="wal")
    cfg = backup_and_config(make_config, tmp_path, db, sources=[{"name": "t_{stem}", "path": str(tenants / "*.db")}],
                            cutover={"keep_sqlite_days": 3 / 86400})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, source="t_app", daemon=d)
        d.wait_log("the way back ends", timeout=60)
        assert d.stop() == 0
    (tmp_path / "archive").mkdir()
    for f in tenants.glob("app.db*"):
        f.rename(tmp_path / "archive" / f.name)
    with DaemonProcess(cfg, tmp_path / "again.log") as d:
        d.wait_log("source=t_app event=discovered")

        def running() -> dict | None:
            st = json.loads(run_cli(cfg, "status", "--json").stdout)["sources"][0]
            return st if st["daemon_running"] else None

        st = wait_for(running, 30, "the daemon to run the retired source", d)
        time.sleep(1)  # a few of the source's cycles
        assert "event=source_missing" not in d.own_log(), d.own_log()
        assert st["state"] != "source_missing" and st["way_back_ended"] is not None, st
        assert d.stop() == 0


async def test_a_retired_source_whose_file_is_archived_is_run_as_such_after_a_start_without_postgres(
        tmp_path, outage):
    """A daemon started while Postgres did not answer yet (a host starting up) runs every
    source forward until Postgres tells which are cut over. A source whose way back had
    ended and whose file was archived never got that far: the forward pipeline waited for
    the file for good, saying so as an error, holding no lock (`syncd status`: no daemon
    runs it). Told by the daemon's look at Postgres that the source is cut over, it hands
    the source to the way back, which runs it as retired."""
    proxy, dsn = outage
    db = tmp_path / "app.db"
    create_items(db, rows=5, journal="wal")
    back_up(db, tmp_path / "backups")
    sections = {"cutover": {"min_days": 0, "backup_glob": str(tmp_path / "backups" / "*.db"),
                            "keep_sqlite_days": 3 / 86400}, "verify": {"interval_seconds": 0}}
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}], sections=sections)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, dsn, daemon=d)
        d.wait_log("the way back ends", timeout=60)
        assert d.stop() == 0
    (tmp_path / "archive").mkdir()
    for f in tmp_path.glob("app.db*"):
        f.rename(tmp_path / "archive" / f.name)
    proxy.refuse()
    with DaemonProcess(cfg, tmp_path / "again.log") as d:
        d.wait_log("source=app event=source_missing")  # forward, Postgres not asked yet
        proxy.heal()

        def running() -> dict | None:
            st = json.loads(run_cli(cfg, "status", "--json").stdout)["sources"][0]
            return st if st["daemon_running"] else None

        st = wait_for(running, 30, "the daemon to run the retired source", d)
        assert st["way_back_ended"] is not None, st
        assert d.stop() == 0
