"""One active syncd per source: a second `syncd run` refuses to start."""

from __future__ import annotations

import socket

from tests.support.app import create_items
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.ports import free_port
from tests.support.sync import wait_caught_up


async def test_second_run_refuses_naming_the_holder(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=10)
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "first.log") as first:
        await wait_caught_up(db, pg_dsn, "app", daemon=first)
        second = run_cli(cfg, "run", timeout=60)
        assert second.returncode == 1
        message = second.stderr.strip()
        assert message.count("\n") == 0
        assert "source 'app' is already being run by syncd" in message
        assert f"{socket.gethostname()[:40]} pid {first.pid}" in message
        assert first.alive()
        assert first.stop() == 0
    # once the first is gone, a new one starts fine
    with DaemonProcess(cfg, tmp_path / "third.log") as third:
        third.wait_log("syncd running")
        assert third.stop() == 0


async def test_a_second_run_with_the_metrics_listener_refuses_naming_the_holder(tmp_path, make_config, pg_dsn):
    """A second `syncd run` of the same configuration, its status page on the same address
    as the first's (the default): it refused with "cannot listen on ...: Address already in
    use", which says nothing of the syncd that runs the sources, instead of naming it."""
    db = tmp_path / "app.db"
    create_items(db, rows=10)
    cfg = make_config([{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{free_port()}")
    with DaemonProcess(cfg, tmp_path / "first.log") as first:
        await wait_caught_up(db, pg_dsn, "app", daemon=first)
        second = run_cli(cfg, "run", timeout=60)
        assert second.returncode == 1
        message = second.stderr.strip()
        assert "source 'app' is already being run by syncd" in message, message
        assert f"pid {first.pid}" in message, message
        assert first.alive()
        assert first.stop() == 0
