"""syncd through PgBouncer in transaction mode: with [postgres] pooler = "transaction"
(no named prepared statements) and lock_dsn (a direct connection for the session-level
locks), a source snapshots, streams and verifies equal, the daemon's connections going
through the pooler. In session mode it works as against Postgres itself, with the
parameters syncd sets at connect listed in ignore_startup_parameters as they were before
syncd set statement_timeout too."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.conftest import write_config
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.pgcluster import free_port
from tests.support.sync import wait_caught_up

# asyncpg sends these at connect; PgBouncer passes only what it knows.
IGNORED = "tcp_keepalives_idle,tcp_keepalives_interval,tcp_keepalives_count,idle_in_transaction_session_timeout"


@pytest.fixture
def pgbouncer(pg_dsn):
    yield from _pgbouncer(pg_dsn, "transaction")


@pytest.fixture
def pgbouncer_in_session_mode(pg_dsn):
    yield from _pgbouncer(pg_dsn, "session")


def _pgbouncer(pg_dsn: str, mode: str):
    # In session mode a client keeps its server connection for its whole life, and the
    # daemon keeps up to [postgres] max_connections (8) open for a minute after their last
    # use: a smaller pool makes a `syncd` command wait that minute for a server connection.
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    assert Path(binary).exists(), "pgbouncer is not installed: apt-get install pgbouncer"
    parts = urlsplit(pg_dsn)
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="syncd-pgbouncer-"))
    home.chmod(0o755)
    (home / "users.txt").write_text('"postgres" ""\n')
    (home / "pgbouncer.ini").write_text(f"""[databases]
* = host={parts.hostname} port={parts.port or 5432}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {home / 'users.txt'}
pool_mode = {mode}
default_pool_size = {4 if mode == "transaction" else 16}
max_client_conn = 100
ignore_startup_parameters = {IGNORED}
logfile = {home / 'pgbouncer.log'}
pidfile = {home / 'pgbouncer.pid'}
""")
    cmd = [binary, str(home / "pgbouncer.ini")]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]  # PgBouncer refuses to run as root
        for f in (home, *home.iterdir()):
            shutil.chown(f, "postgres")  # its log and pid file are written there
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            log = (home / "pgbouncer.log").read_text() if (home / "pgbouncer.log").exists() else ""
            assert proc.poll() is None and time.monotonic() < deadline, f"pgbouncer did not start: {log[-2000:]}"
            time.sleep(0.1)
    try:
        yield pg_dsn.replace(f":{parts.port}/", f":{port}/"), home
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(home, ignore_errors=True)


async def test_syncd_streams_through_pgbouncer_in_transaction_mode(tmp_path, pg_dsn, pgbouncer):
    pooled, home = pgbouncer
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE log (line TEXT);")
    conn.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"v{i}") for i in range(2000)])
    conn.commit()
    cfg = write_config(tmp_path / "syncd.toml", pooled, [{"name": "app", "path": str(db)}],
                       sections={"postgres": {"pooler": "transaction", "lock_dsn": pg_dsn}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        for i in range(50):
            conn.execute("UPDATE items SET v = ? WHERE id = ?", (f"changed {i}", i))
            conn.execute("INSERT INTO log VALUES (?)", (f"line {i}",))
            conn.commit()
        conn.executemany("INSERT INTO items VALUES (?, ?)", [(i, "bulk") for i in range(5000, 8000)])
        conn.commit()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await compare_table(str(db), pg_dsn, "app", "items") == []
        r = run_cli(cfg, "verify")
        assert r.returncode == 0, r.stdout + r.stderr
        # the daemon's steps ran through the pooler: its server connections served them
        pg = await asyncpg.connect(pg_dsn)
        try:
            through = await pg.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                        "AND application_name LIKE 'syncd%' AND client_port IS NOT NULL")
        finally:
            await pg.close()
        assert through >= 1
        assert d.stop() == 0
        assert "prepared statement" not in d.log()


def test_transaction_pooling_needs_a_direct_lock_connection(tmp_path, pg_dsn):
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(tmp_path / "x.db")}],
                       sections={"postgres": {"pooler": "transaction"}})
    r = run_cli(cfg, "status")
    assert r.returncode == 3 and "lock_dsn" in r.stdout


async def test_syncd_streams_through_pgbouncer_in_session_mode_that_refuses_statement_timeout(
        tmp_path, pg_dsn, pgbouncer_in_session_mode):
    """PgBouncer refuses a startup parameter it is not told to ignore: syncd's own
    statement_timeout (a backstop against the role's) is left out where it is refused,
    and the daemon's connections are made through the pooler all the same."""
    pooled, home = pgbouncer_in_session_mode
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT);")
    conn.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"v{i}") for i in range(2000)])
    conn.commit()
    cfg = write_config(tmp_path / "syncd.toml", pooled, [{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute("UPDATE items SET v = 'changed' WHERE id < 100")
        conn.commit()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await compare_table(str(db), pg_dsn, "app", "items") == []
        assert run_cli(cfg, "verify").returncode == 0
        # row_security = off refused too: said once, as what a policy could then hide.
        assert d.log().count("event=row_security_refused") == 1, d.log()[-3000:]
        assert d.stop() == 0
