"""A daemon stopped (SIGSTOP) or wedged holds its sources' locks but answers nothing:
`syncd status` says its endpoint did not answer, never a plain OK."""

from __future__ import annotations

import json
import signal

from tests.support.app import create_items
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.pgcluster import free_port
from tests.support.sync import wait_caught_up


async def test_status_of_a_daemon_that_does_not_answer(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=10)
    port = free_port()
    cfg = make_config([{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{port}")
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        d.wait_log("syncd running")
        d.proc.send_signal(signal.SIGSTOP)
        try:
            r = run_cli(cfg, "status", "--json")
        finally:
            d.proc.send_signal(signal.SIGCONT)
        doc = json.loads(r.stdout)
        src = doc["sources"][0]
        messages = [p["message"] for p in src["problems"]]
        assert src["daemon_running"] is True, src
        assert any(f"127.0.0.1:{port} did not answer" in m for m in messages), messages
        assert r.returncode == 1 and doc["status"] == "WARNING", r.stdout
        assert d.stop() == 0
