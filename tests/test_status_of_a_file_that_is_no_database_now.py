"""A source's file that exists but is no database now (emptied, overwritten with
something else) while the daemon runs without an endpoint ([metrics] listen = ""):
`syncd status` cannot ask the daemon, and shows the file's state as what it is, not
'streaming'."""

from __future__ import annotations

import json

from tests.support.app import create_items
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import wait_caught_up


async def test_an_emptied_file_is_not_shown_streaming(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=10)
    cfg = make_config([{"name": "app", "path": str(db)}])  # no endpoint
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        db.write_bytes(b"")
        d.wait_log("is empty (0 bytes)")
        r = run_cli(cfg, "status", "--json")
        src = json.loads(r.stdout)["sources"][0]
        assert src["state"] == "source_missing", src
        assert "is empty (0 bytes)" in src["sqlite_error"]
        messages = [p["message"] for p in src["problems"]]
        assert not any(m.startswith("the daemon reports") for m in messages), messages  # it was not asked
        assert r.returncode == 2, r.stdout  # CRITICAL, as when the daemon says it
        assert d.stop() == 0


async def test_a_file_the_application_holds_locked_is_not_said_in_the_daemons_name(tmp_path, make_config, pg_dsn):
    """The application holds its file locked while `syncd status` cannot ask the daemon:
    the file's own word (locked) is shown as the file's, not as 'the daemon reports'."""
    import sqlite3

    db = tmp_path / "app.db"
    create_items(db, rows=10, journal="delete")
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"sqlite": {"read_busy_timeout_ms": 100}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        app = sqlite3.connect(db, timeout=30, isolation_level=None)
        app.execute("BEGIN EXCLUSIVE")  # the application's long write transaction
        try:
            r = run_cli(cfg, "status", "--json")
        finally:
            app.execute("ROLLBACK")
            app.close()
        src = json.loads(r.stdout)["sources"][0]
        assert src["state"] == "file_locked", src
        messages = [p["message"] for p in src["problems"]]
        assert not any(m.startswith("the daemon reports") for m in messages), messages  # it was not asked
        assert any("locked" in m for m in messages), messages
        assert d.stop() == 0
