"""A PostgreSQL server for the tests: the one at SYNCD_TEST_DSN if it answers, else a
throwaway cluster started here (initdb + pg_ctl, as the `postgres` OS user when the
tests run as root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def answers(dsn: str, timeout: float = 3.0) -> bool:
    parts = urlsplit(dsn)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=timeout):
            pass
    except OSError:
        return False
    r = subprocess.run(["pg_isready", "-d", dsn, "-t", str(int(timeout))], capture_output=True)
    return r.returncode == 0 if shutil.which("pg_isready") else True


def find_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {name} is not installed; install PostgreSQL or set SYNCD_TEST_DSN")
    return candidates[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """A private PostgreSQL cluster a test owns: it can stop and start it at will."""

    datadir: Path
    port: int
    owner: str | None  # OS user to run as (when we are root)
    logfile: Path

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _cmd(self, *args: str) -> list[str]:
        if self.owner:
            return ["runuser", "-u", self.owner, "--", *args]
        return list(args)

    @classmethod
    def create(cls, base: Path | None = None) -> "Cluster":
        owner = None
        if os.geteuid() == 0:
            owner = "postgres"
            pwd.getpwnam(owner)  # raises KeyError if there is no such user
        base = Path(tempfile.mkdtemp(prefix="syncd-pg-", dir=base))
        datadir = base / "data"
        if owner:
            shutil.chown(base, owner)
        c = cls(datadir=datadir, port=free_port(), owner=owner, logfile=base / "server.log")
        subprocess.run(
            c._cmd(find_bin("initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                   "--locale=C.UTF-8" if _has_c_utf8() else "--locale=C"),
            check=True, capture_output=True,
        )
        with open(datadir / "postgresql.conf", "a") as f:
            f.write(f"\nport = {c.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{base}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n")
        return c

    def start(self, timeout: float = 30) -> None:
        subprocess.run(self._cmd(find_bin("pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile), "-w",
                                 "-t", str(int(timeout)), "start"), check=True, capture_output=True)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(self._cmd(find_bin("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"),
                       capture_output=True)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def _has_c_utf8() -> bool:
    r = subprocess.run(["locale", "-a"], capture_output=True, text=True)
    return any(l.lower() in ("c.utf8", "c.utf-8") for l in r.stdout.split())


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def wait_until_answers(dsn: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(dsn, 1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"PostgreSQL at {dsn} did not come up")
