"""`syncd demo`: one command from a fresh install to the live status page. With no
PostgreSQL server answering it starts a private throwaway cluster, replicates the
Synapse demo files while an application writes to them, and on Ctrl-C or SIGTERM
stops everything and removes what it made."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncpg
import pytest

from syncd.demo.data import SOURCES
from tests.support.daemon import ROOT, wait_for
from tests.support.pgcluster import Cluster, free_port
from tests.test_status_page import Page, get


class DemoProcess:
    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None):
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}, **(env or {})}
        self.stderr = open(tmp_path / f"demo-{time.monotonic_ns()}.err", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "syncd", "demo", *args], stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, env=env, cwd=str(tmp_path))
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def line(self, pattern: str, timeout: float = 180) -> re.Match:
        def found():
            if self.proc.poll() is not None and not any(re.search(pattern, x) for x in self.lines):
                raise AssertionError(f"syncd demo exited ({self.proc.returncode}):\n" + "\n".join(self.lines)
                                     + Path(self.stderr.name).read_text(errors="replace")[-3000:])
            return next((m for x in self.lines if (m := re.search(pattern, x))), None)
        return wait_for(found, timeout, f"a line matching {pattern!r}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.stderr.close()


def alive(pid: int) -> bool:
    """Running: not gone, nor exited and waiting to be reaped (a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def epic7_rows_in_postgres(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch("SELECT table_name FROM information_schema.tables "
                                  "WHERE table_schema = 'epic7_sales_automation'")
        return sum([await conn.fetchval(f'SELECT count(*) FROM epic7_sales_automation."{t[0]}"') for t in tables])
    finally:
        await conn.close()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_runs_on_a_private_cluster_and_removes_everything(tmp_path, stop):
    nobody = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    port = free_port()
    demo = DemoProcess(tmp_path, "--local-server", nobody, "--listen", f"127.0.0.1:{port}")
    try:
        assert demo.line(r"no PostgreSQL answers at " + re.escape(nobody))
        workdir = Path(demo.line(r"demo files: .* in (\S+)$").group(1))
        m = demo.line(r"PostgreSQL: a private cluster in (\S+) at (postgresql://\S+/)postgres;")
        cluster, server = Path(m.group(1)), m.group(2)
        url = demo.line(r"status page: (http://\S+)/$").group(1)
        assert url == f"http://127.0.0.1:{port}"
        postmaster = int((cluster / "data" / "postmaster.pid").read_text().split()[0])
        assert workdir.is_dir() and alive(postmaster)

        def every_source_streaming():
            text, headers = get(url + "/")
            p = Page(text)
            return headers["content-type"].startswith("text/html") and \
                set(p.sources) == {s.name for s in SOURCES} and \
                all(f["state"] == "streaming" for f in p.sources.values()) and p
        page = wait_for(every_source_streaming, 120, "every demo source streaming on the page", interval=1)
        assert 'weird "name"; DROP TABLE x;--' in {t.split("/", 1)[1] for t in page.tables}
        assert asyncio.run(epic7_rows_in_postgres(server + "synapse_business")) == 134
        # the application writes, and the page follows what streams
        wait_for(lambda: Page(get(url + "/")[0]).sources["synapse_system_infrastructure"]["last_applied_at"], 60,
                 "a streamed change from the demo application", interval=1)

        demo.proc.send_signal(stop)
        assert demo.proc.wait(60) == 0, "\n".join(demo.lines)
        time.sleep(0.5)  # the reader thread takes the last lines
        out = "\n".join(demo.lines)
        assert f"stopped and removed the private cluster in {cluster}" in out and f"removed {workdir}" in out
        assert not workdir.exists() and not cluster.exists() and not listening(port)
        wait_for(lambda: not alive(postmaster), 10, "the private server's exit")  # pg_ctl has stopped it
    finally:
        demo.close()


def test_readme_first_command_is_the_demo():
    text = (ROOT / "README.md").read_text()
    first = re.search(r"```sh\n(.*?)```", text, re.S).group(1).strip()
    assert first == "pip install -c constraints.txt . && syncd demo"


async def databases(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return {r[0] for r in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()


def test_demo_uses_the_server_it_is_given_and_only_databases_it_makes(tmp_path):
    cluster = Cluster.create()
    cluster.start()
    try:
        given = cluster.dsn.replace("postgres@", "postgres:s3cret-pw@")  # trust auth: never used, never shown
        port = free_port()
        demo = DemoProcess(tmp_path, "--listen", f"127.0.0.1:{port}", env={"SYNCD_POSTGRES__DSN": given})
        try:
            assert demo.line(r"PostgreSQL: the server SYNCD_POSTGRES__DSN names at postgresql://postgres@127.0.0.1:")
            url = demo.line(r"status page: (http://\S+)/$").group(1)
            assert {"synapse_core", "synapse_business", "synapse_analytics"} <= asyncio.run(databases(cluster.dsn))
            wait_for(lambda: "epic7_sales_automation" in Page(get(url + "/")[0]).sources, 60, "the page", interval=1)
            demo.proc.send_signal(signal.SIGTERM)
            assert demo.proc.wait(60) == 0
            time.sleep(0.5)
            out = "\n".join(demo.lines) + Path(demo.stderr.name).read_text()
            assert "dropped databases synapse_core, synapse_business, synapse_analytics" in out
            assert "s3cret-pw" not in out
        finally:
            demo.close()
        assert not {"synapse_core", "synapse_business", "synapse_analytics"} & asyncio.run(databases(cluster.dsn))

        # a database of that name that the demo did not make is left alone, and said so
        asyncio.run(_create(cluster.dsn, "synapse_business"))
        refused = DemoProcess(tmp_path, "--listen", f"127.0.0.1:{port}", "--local-server", cluster.dsn)
        try:
            assert refused.proc.wait(60) == 2
            err = Path(refused.stderr.name).read_text().strip()
            assert err.startswith("syncd: database synapse_business already exists on 127.0.0.1:")
            assert len(err.splitlines()) == 1
            workdir = Path(refused.line(r"demo files: .* in (\S+)$").group(1))
            assert not workdir.exists()
        finally:
            refused.close()
        assert "synapse_business" in asyncio.run(databases(cluster.dsn))
        assert "synapse_core" not in asyncio.run(databases(cluster.dsn))
    finally:
        cluster.destroy()


async def _create(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def test_a_given_server_that_refuses_the_connection_is_one_line(tmp_path, pg_dsn):
    """SYNCD_POSTGRES__DSN naming a database that does not exist (or a user that does not):
    the server answers, then refuses. One line naming it, its password hidden, exit 2,
    and the demo's files removed; never a traceback."""
    given = pg_dsn.rsplit("/", 1)[0].replace("postgres@", "postgres:s3cret-pw@") + "/no_such_database_here"
    r = subprocess.run([sys.executable, "-m", "syncd", "demo", "--listen", f"127.0.0.1:{free_port()}"],
                       capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
                       env={**os.environ, "SYNCD_POSTGRES__DSN": given})
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1, r.stdout + r.stderr
    assert err.startswith("syncd: cannot connect to ") and 'database "no_such_database_here" does not exist' in err
    assert "s3cret-pw" not in r.stdout + r.stderr
    workdir = Path(re.search(r"demo files: .* in (\S+)$", r.stdout, re.M).group(1))
    assert not workdir.exists()
