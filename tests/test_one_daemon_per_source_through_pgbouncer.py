"""One active syncd per source, also for a source with a target database of its own
behind PgBouncer in transaction mode ([postgres] pooler = "transaction", the plan's
second server behind the same pooler). Its session-level lock must not be taken
through the pooler, where it stays on whichever server connection PgBouncer picked,
and where a second daemon's "take the lock" lands on that same server connection and
succeeds: either the configuration is refused, naming the source, or the second
daemon refuses to run the source, as it does for every other source."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import _admin, write_config
from tests.support.app import create_items
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.pgcluster import free_port, with_database
from tests.support.sync import wait_caught_up
from tests.test_pgbouncer import IGNORED


@pytest.fixture
def one_server_connection_pgbouncer(pg_dsn):
    """PgBouncer in transaction mode with one server connection per database: every
    client of a database shares it (the pooler's choice made deterministic)."""
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
pool_mode = transaction
default_pool_size = 1
max_client_conn = 100
ignore_startup_parameters = {IGNORED}
logfile = {home / 'pgbouncer.log'}
pidfile = {home / 'pgbouncer.pid'}
""")
    cmd = [binary, str(home / "pgbouncer.ini")]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
        for f in (home, *home.iterdir()):
            shutil.chown(f, "postgres")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "pgbouncer did not start"
            time.sleep(0.1)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def business(pg_server):
    name = f"syncd_test_business_{secrets.token_hex(4)}"
    asyncio.run(_admin(pg_server, f'CREATE DATABASE "{name}"'))
    yield name
    asyncio.run(_admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def test_a_second_daemon_never_runs_a_source_whose_own_target_is_pooled(
        tmp_path, pg_dsn, pg_server, business, one_server_connection_pgbouncer):
    port = one_server_connection_pgbouncer
    core_port = urlsplit(pg_dsn).port
    core_pooled = pg_dsn.replace(f":{core_port}/", f":{port}/")
    business_direct = with_database(pg_server, business)
    business_pooled = business_direct.replace(f":{urlsplit(business_direct).port}/", f":{port}/")
    crm = tmp_path / "synapse_business_crm.db"
    create_items(crm, rows=16)
    source = {"name": "crm", "path": str(crm), "dsn": business_pooled}
    pooled = {"postgres": {"pooler": "transaction", "lock_dsn": pg_dsn}}
    cfg = write_config(tmp_path / "syncd.toml", core_pooled, [source], sections=pooled)
    with DaemonProcess(cfg, tmp_path / "first.log") as first:
        wait_for(lambda: "syncd running" in first.log() or not first.alive(), 60, "the first daemon's start")
        if first.alive():
            await a_second_daemon_refuses(cfg, tmp_path, first, crm, business_direct)
            return
        # Refused at start: the line names the source and what it lacks.
        line = first.log().strip().splitlines()[-1]
        assert first.proc.returncode != 0 and "sources[0].lock_dsn" in line, line
    # Given a direct connection for its locks, the source runs, once.
    cfg = write_config(tmp_path / "syncd.toml", core_pooled, [{**source, "lock_dsn": business_direct}],
                       sections=pooled)
    with DaemonProcess(cfg, tmp_path / "first-again.log") as first:
        await a_second_daemon_refuses(cfg, tmp_path, first, crm, business_direct)


async def a_second_daemon_refuses(cfg, tmp_path, first, crm, business_direct) -> None:
    await wait_caught_up(crm, business_direct, "crm", daemon=first)
    with DaemonProcess(cfg, tmp_path / "second.log") as second:
        wait_for(lambda: not second.alive() or "event=streaming" in second.log(), 60, "the second daemon")
        assert not second.alive(), f"a second daemon runs source crm too:\n{second.log()[-1500:]}"
        assert "source 'crm' is already being run by syncd" in second.log()
    assert first.stop() == 0
