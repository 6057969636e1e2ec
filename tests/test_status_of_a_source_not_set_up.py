"""`syncd status` of a source syncd has not set up in Postgres says what it does not
know (`-`), and only what is wrong, once."""

from __future__ import annotations

import sqlite3

from tests.conftest import _admin, write_config
from tests.support.daemon import run_cli


async def test_a_source_not_initialized_shows_no_lag_or_pending_figures(tmp_path, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO items (v) VALUES ('a')")
    conn.commit()
    conn.close()
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(db)}])
    assert run_cli(cfg, "init").returncode == 0
    # The target database is recreated empty: capture stays in the file, Postgres knows nothing of it.
    await _admin(pg_dsn, "DROP SCHEMA syncd CASCADE; DROP SCHEMA app CASCADE")
    r = run_cli(cfg, "status")
    assert r.returncode == 2, r.stdout + r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("app "))
    cols = row.split()
    assert cols[1:3] == ["not", "initialized"] and cols[5:7] == ["-", "-"], r.stdout  # LAG, PENDING
    assert "not initialized in Postgres" in r.stdout


async def test_a_wrong_postgres_role_is_the_one_problem_of_a_source_never_set_up(tmp_path, pg_dsn):
    # syncd could not set the source up (Postgres refused its role), so capture is not in the
    # file either: that follows from the role, and `syncd init` with the right one installs it.
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    conn.close()
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn.replace("postgres@", "no_such_syncd_role@"),
                       [{"name": "app", "path": str(db)}])
    r = run_cli(cfg, "status")
    assert r.returncode == 2, r.stdout + r.stderr
    critical = [line for line in r.stdout.splitlines() if line.startswith("CRITICAL: app:")]
    assert len(critical) == 1 and "no_such_syncd_role" in critical[0], r.stdout
    assert "capture is not installed" not in r.stdout, r.stdout
