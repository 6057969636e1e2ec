"""`syncd init` audits every table before its load; the daemon started right after does
not scan the same rows again. It trusts that audit only while the table is exactly as
audited: a change to it since (every change is captured), or another schema, and the
daemon audits again, so a value that no longer fits is still held before the load."""

from __future__ import annotations

import sqlite3

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.sync import table_states, wait_caught_up


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE companies (id INTEGER PRIMARY KEY, name TEXT, employees INTEGER)")
    conn.executemany("INSERT INTO companies VALUES (?, ?, ?)", ((i, f"c{i}", i * 10) for i in range(1, 3001)))
    conn.commit()
    conn.close()


async def test_daemon_does_not_audit_again_what_init_audited(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = make_config([{"name": "a", "path": str(db)}])
    out = run_cli(cfg, "init")
    assert out.returncode == 0, out.stdout + out.stderr
    with DaemonProcess(cfg, tmp_path / "run.log", args=("--log-level", "debug")) as d:
        await wait_caught_up(db, pg_dsn, "a", timeout=60, daemon=d)
        assert "audit skipped" in d.log()
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "a", "companies") == []


async def test_a_change_after_init_makes_the_daemon_audit_again(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = make_config([{"name": "a", "path": str(db)}])
    out = run_cli(cfg, "init")
    assert out.returncode == 0, out.stdout + out.stderr
    conn = sqlite3.connect(db)
    conn.execute("UPDATE companies SET employees = 'lots' WHERE id = 2777")  # no longer fits bigint
    conn.commit()
    conn.close()
    with DaemonProcess(cfg, tmp_path / "run.log", args=("--log-level", "debug")) as d:
        wait_for(lambda: "table held" in d.log(), 60, "the hold", d)
        assert "audit skipped" not in d.log()
        state, reason = (await table_states(pg_dsn, "a"))["companies"]
        assert state == "held"
        assert reason.startswith("audit before load") and "2777" in reason
        assert d.stop() == 0
