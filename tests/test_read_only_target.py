"""A target database that takes no writes (a standby, default_transaction_read_only) is
named as such, and syncd carries on by itself once it takes writes again: its pooled
connections, opened read-only, are replaced rather than failing for ever. An OS error
about the SQLite file or its directory is the file's, not a Postgres outage."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import asyncpg

from syncd.sqlite.connection import is_sqlite_file_error
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.pgcluster import free_port
from tests.support.sync import pg_rows, wait_caught_up


def state(cfg) -> tuple[str, str]:
    src = json.loads(run_cli(cfg, "status", "--json").stdout)["sources"][0]
    return src["state"], src["daemon_detail"] or ""


def one_row_app(tmp_path) -> Path:
    """app.db, `t` of one row."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');")
    conn.commit()
    conn.close()
    return db


@contextlib.asynccontextmanager
async def read_only_database(pg_dsn: str):
    """The test's database takes no writes (default_transaction_read_only) until the block ends."""
    name = pg_dsn.rsplit("/", 1)[1]
    await pg_rows(pg_dsn, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    try:
        yield
    finally:
        admin = await asyncpg.connect(pg_dsn.rsplit("/", 1)[0] + "/postgres")
        try:
            await admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        finally:
            await admin.close()


async def test_a_read_only_target_is_named_and_left_behind_once_writable(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');")
    conn.commit()
    name = pg_dsn.rsplit("/", 1)[1]
    # With the endpoint: a read-only database cannot hold the daemon's own note either.
    cfg = make_config([{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{free_port()}")
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        await pg_rows(pg_dsn, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        # The daemon's sessions end; the new ones open read-only.
        await pg_rows(pg_dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        conn.execute("INSERT INTO t VALUES (2, 'b')")
        conn.commit()
        wait_for(lambda: state(cfg)[0] == "failing", 60, "the daemon failing on a read-only target", daemon=d)
        assert "Postgres takes no writes in this database" in state(cfg)[1]
        admin = await asyncpg.connect(pg_dsn.rsplit("/", 1)[0] + "/postgres")
        try:
            await admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        finally:
            await admin.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=90)
        assert await pg_rows(pg_dsn, "SELECT id, v FROM app.t ORDER BY id") == [(1, "a"), (2, "b")]
        wait_for(lambda: state(cfg)[0] == "streaming", 60, "the daemon streaming again", daemon=d)
    conn.close()


def test_os_errors_about_the_file_or_its_directory_are_the_files():
    db = Path("/srv/app/data/app.db")
    assert is_sqlite_file_error(PermissionError(13, "Permission denied", "/srv/app/data/app.db"), db)
    assert is_sqlite_file_error(PermissionError(13, "Permission denied", "/srv/app/data/app.db-wal"), db)
    assert is_sqlite_file_error(PermissionError(13, "Permission denied", "/srv/app/data"), db)
    assert not is_sqlite_file_error(ConnectionRefusedError(111, "Connection refused"), db)
    assert not is_sqlite_file_error(OSError(113, "No route to host"), db)
    assert not is_sqlite_file_error(PermissionError(13, "Permission denied", "/etc/ssl/key.pem"), db)


async def test_every_verb_that_writes_names_a_read_only_target_in_one_line(tmp_path, make_config, pg_dsn):
    """`syncd init`, `syncd resync` and `syncd uninstall` on a database that takes no
    writes: one line saying so (a standby, or default_transaction_read_only), exit 1; they
    printed asyncpg's traceback, as for a bug."""
    db = one_row_app(tmp_path)
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    async with read_only_database(pg_dsn):
        for verb in (["init"], ["resync", "--source", "app", "--table", "t"], ["uninstall"]):
            r = run_cli(cfg, *verb)
            out = r.stdout + r.stderr
            assert r.returncode == 1 and "Traceback" not in out, (verb, out)
            assert "Postgres takes no writes in this database" in out, (verb, out)
            assert len(r.stderr.splitlines()) <= 1, (verb, out)


async def test_a_cutover_dry_run_on_a_read_only_target_is_refused(tmp_path, make_config, pg_dsn):
    """`syncd cutover --dry-run` on a database that takes no writes (a standby,
    default_transaction_read_only): refused, saying so; it said "ready to cut over", and
    the application would have been switched to a database it cannot write."""
    from tests.support.way_back import backup_and_config

    db = one_row_app(tmp_path)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        assert d.stop() == 0
    async with read_only_database(pg_dsn):
        for args in (["--dry-run"], []):
            r = run_cli(cfg, "cutover", *args)
            out = r.stdout + r.stderr
            assert r.returncode == 1 and "ready to cut over" not in out, out
            assert "app: REFUSED: Postgres takes no writes in this database" in out, out


async def test_a_rollback_dry_run_on_a_read_only_target_is_refused(tmp_path, make_config, pg_dsn):
    """`syncd rollback --dry-run` once Postgres takes no writes: refused, saying so (the
    rollback freezes Postgres and records the switch there, neither of which it can do);
    it said "ready to roll back"."""
    from tests.support.way_back import backup_and_config, cut_over

    db = one_row_app(tmp_path)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    async with read_only_database(pg_dsn):
        for args in (["--dry-run"], []):
            r = run_cli(cfg, "rollback", *args)
            out = r.stdout + r.stderr
            assert r.returncode == 1 and "ready to roll back" not in out, out
            assert "app: REFUSED: Postgres takes no writes in this database" in out, out
