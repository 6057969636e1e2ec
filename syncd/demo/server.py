"""The PostgreSQL server the demo lands in: one that already answers, else a private
throwaway cluster (initdb + pg_ctl in a temporary directory, as the `postgres` OS user
when run as root). The test suite starts its clusters the same way."""

from __future__ import annotations

import asyncio
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
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from syncd.identifiers import quote_pg_ident
from syncd.postgres.connect import describe
from syncd.redact import scrub

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


class ServerError(Exception):
    """The demo cannot get a server or its databases; the message is one line."""


def answers(dsn: str, timeout: float = 3.0) -> bool:
    """Something accepts connections at the DSN's host and port (and pg_isready, when
    installed, says it is a PostgreSQL server ready for them)."""
    parts = urlsplit(dsn)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=timeout):
            pass
    except OSError:
        return False
    if not shutil.which("pg_isready"):
        return True
    # Host and port only: a command line is every local user's to read (ps), and a
    # server says whether it accepts connections before anyone authenticates.
    r = subprocess.run(["pg_isready", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432),
                        "-t", str(max(1, int(timeout)))], capture_output=True)
    return r.returncode == 0


def find_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if not candidates:
        raise ServerError(f"PostgreSQL's {name} is not installed: install the PostgreSQL server package, "
                          "or point SYNCD_POSTGRES__DSN at a server")
    return candidates[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT_TRIES = 3  # ports a private cluster tries on its first start


def port_taken(port: int) -> bool:
    """Something holds `port` on 127.0.0.1 (a listener, or a connection's local end)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def without_password(dsn: str) -> tuple[str, str | None]:
    """The DSN with its password taken out (from its user part or its query), and the
    password (None if it had none)."""
    parts = urlsplit(dsn)
    kept, password = [], None
    for param in parts.query.split("&") if parts.query else []:
        key, _, value = param.partition("=")
        if unquote(key).strip().lower() == "password":
            password = unquote(value)
        else:
            kept.append(param)
    netloc = parts.netloc
    if parts.password is not None:
        password = unquote(parts.password)
        host = parts.hostname or ""
        netloc = (parts.username or "") + "@" + (f"[{host}]" if ":" in host else host)
        if parts.port:
            netloc += f":{parts.port}"
    if password is None:
        return dsn, None
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(kept), parts.fragment)), password


@dataclass
class Cluster:
    """A private PostgreSQL cluster: its owner can stop and start it at will, and
    destroy() removes every file it made."""

    datadir: Path
    port: int
    owner: str | None  # OS user to run as (when we are root)
    logfile: Path
    started_once: bool = False

    @property
    def base(self) -> Path:
        return self.datadir.parent

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
            owner = "postgres"  # initdb refuses to run as root
            try:
                pwd.getpwnam(owner)
            except KeyError:
                raise ServerError("running as root, and there is no `postgres` OS user to run a private "
                                  "PostgreSQL cluster as") from None
        initdb = find_bin("initdb")
        top = Path(tempfile.mkdtemp(prefix="syncd-pg-", dir=base))
        datadir = top / "data"
        if owner:
            shutil.chown(top, owner)
        c = cls(datadir=datadir, port=free_port(), owner=owner, logfile=top / "server.log")
        r = subprocess.run(
            c._cmd(initdb, "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                   "--locale=C.UTF-8" if _has_c_utf8() else "--locale=C"),
            capture_output=True, text=True,
        )
        if r.returncode != 0:
            shutil.rmtree(top, ignore_errors=True)
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise ServerError(f"initdb failed in {datadir}: {last}")
        with open(datadir / "postgresql.conf", "a") as f:
            f.write(f"\nport = {c.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{top}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n")
        return c

    def start(self, timeout: float = 30) -> None:
        for _ in range(PORT_TRIES):
            # A session of its own: a Ctrl-C meant for the caller must not stop the server
            # under it while it shuts down.
            r = subprocess.run(self._cmd(find_bin("pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile), "-w",
                                         "-t", str(int(timeout)), "start"),
                               capture_output=True, text=True, start_new_session=True)
            if r.returncode == 0:
                self.started_once = True
                return
            if self.started_once or not port_taken(self.port):
                break
            # The port was free when the cluster was made, and something took it before its
            # first start (initdb takes seconds): any program, or the local end of any
            # outgoing connection. Nothing connects to a cluster never started: another port.
            self.port = free_port()
            with open(self.datadir / "postgresql.conf", "a") as f:
                f.write(f"port = {self.port}\n")  # the last setting of a name is the one used
        raise ServerError(f"the private PostgreSQL cluster in {self.datadir} did not start "
                          f"(see {self.logfile})")

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(self._cmd(find_bin("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"),
                       capture_output=True)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def _has_c_utf8() -> bool:
    r = subprocess.run(["locale", "-a"], capture_output=True, text=True)
    return any(l.lower() in ("c.utf8", "c.utf-8") for l in r.stdout.split())


def wait_until_answers(dsn: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(dsn, 1):
            return
        time.sleep(0.2)
    raise ServerError(f"PostgreSQL at {dsn} did not come up")


async def create_databases(dsn: str, names: tuple[str, ...], existing: str = "keep",
                           password: str | None = None) -> list[str]:
    """Create the databases that do not exist yet; returns those created. With
    existing="refuse", a database that is already there is an error and nothing is
    created (the demo never writes into a database it did not make)."""
    try:
        conn = await asyncpg.connect(dsn, password=password)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        # It answered, then refused: no such database or user, a wrong password.
        raise ServerError(f"cannot connect to {scrub(dsn)}: {describe(e)}") from None
    try:
        have = {r[0] for r in await conn.fetch("SELECT datname FROM pg_database")}
        there = [n for n in names if n in have]
        if there and existing == "refuse":
            raise ServerError(f"database {there[0]} already exists on {_where(dsn)}; the demo only uses "
                              f"databases it creates (drop it with `dropdb {there[0]}`, or point "
                              "SYNCD_POSTGRES__DSN at another server)")
        created = []
        for name in names:
            if name not in have:
                await conn.execute(f"CREATE DATABASE {quote_pg_ident(name)}")
                created.append(name)
        return created
    finally:
        await conn.close()


async def drop_databases(dsn: str, names: list[str], password: str | None = None) -> None:
    conn = await asyncpg.connect(dsn, password=password)
    try:
        for name in names:
            await conn.execute(f"DROP DATABASE IF EXISTS {quote_pg_ident(name)} WITH (FORCE)")
    finally:
        await conn.close()


def _where(dsn: str) -> str:
    parts = urlsplit(dsn)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 5432}"
