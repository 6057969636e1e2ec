"""Shared fixtures: a PostgreSQL server for the whole run, a fresh database per test."""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import subprocess
import sys
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.support.pgcluster import DEFAULT_DSN, Cluster, answers, with_database
from tests.support.proxy import FaultProxy


@pytest.fixture(scope="session", autouse=True)
def compiled_syncd(tmp_path_factory):
    """The syncd the tests' subprocesses import (from outside the checkout, as they run),
    compiled to bytecode once: with PYTHONDONTWRITEBYTECODE set and syncd installed
    editable, nothing wrote it, and each of the suite's thousands of syncd processes
    compiled syncd's source again (a third of a CLI command's start-up). compileall
    writes whatever that setting says and skips what is up to date."""
    subprocess.run([sys.executable, "-c", "import compileall, os, syncd; "
                    "compileall.compile_dir(os.path.dirname(syncd.__file__), quiet=2)"],
                   cwd=tmp_path_factory.getbasetemp(), timeout=300, check=True)


@pytest.fixture(scope="session", autouse=True)
def forked_syncd(compiled_syncd, tmp_path_factory):
    """The tests' `python -m syncd` processes forked from one that has imported syncd
    (tests/support/forked.py): real processes, without a quarter of a second of imports
    each. SYNCD_TEST_FORK=0 starts every one from a fresh interpreter instead."""
    from tests.support import forked

    if os.environ.get("SYNCD_TEST_FORK", "1") == "0":  # every process from a fresh interpreter
        yield
        return
    # One file for the run's workers (xdist gives each a folder in the run's own).
    run = tmp_path_factory.getbasetemp().parent if os.environ.get("PYTEST_XDIST_WORKER") else tmp_path_factory.getbasetemp()
    forked.install(tmp_path_factory.mktemp("forker"), run / "forker-modules.json")
    yield
    forked.uninstall()


@pytest.fixture(autouse=True)
def reaped_orphans(forked_syncd):
    """After each test, the exited processes the worker adopted (it is their subreaper for
    the forked syncd processes' sake) reaped, as init would have."""
    yield
    from tests.support import forked

    forked.reap_adopted()


@pytest.fixture(scope="session")
def pg_server():
    """The DSN of a server the tests may create databases in."""
    dsn = os.environ.get("SYNCD_TEST_DSN", DEFAULT_DSN)
    if answers(dsn):
        yield dsn
        return
    cluster = Cluster.create()
    cluster.start()
    try:
        yield cluster.dsn
    finally:
        cluster.destroy()


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class FreshDatabases:
    """Empty databases made one test ahead, and used ones dropped, on a thread of their
    own: a test waits for neither (about 0.1 s each way, a minute and a half of the
    suite's time in all)."""

    def __init__(self, server_dsn: str):
        self.server_dsn = server_dsn
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="test-databases")
        self._next = self._thread.submit(self._create)
        self._dropping: list[Future] = []

    def _create(self) -> str:
        name = f"syncd_test_{secrets.token_hex(6)}"
        asyncio.run(_admin(self.server_dsn, f'CREATE DATABASE "{name}"'))
        return name

    def _drop(self, name: str) -> None:
        asyncio.run(_admin(self.server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def take(self) -> str:
        name = self._next.result()
        self._next = self._thread.submit(self._create)
        return name

    def give_back(self, name: str) -> None:
        self._dropping = [f for f in self._dropping if not f.done() or f.exception()]
        self._dropping.append(self._thread.submit(self._drop, name))

    def close(self) -> None:
        self._dropping.append(self._thread.submit(self._drop, self._next.result()))
        self._thread.shutdown(wait=True)
        failed = [f.exception() for f in self._dropping if f.exception()]
        if failed:
            warnings.warn(f"{len(failed)} test database(s) not dropped: {failed[0]}")


@pytest.fixture(scope="session")
def fresh_databases(pg_server):
    databases = FreshDatabases(pg_server)
    yield databases
    databases.close()


@pytest.fixture
def pg_dsn(pg_server, fresh_databases):
    """A database of its own for one test, dropped afterwards."""
    name = fresh_databases.take()
    try:
        yield with_database(pg_server, name)
    finally:
        fresh_databases.give_back(name)


@pytest.fixture
def app_db(tmp_path) -> Path:
    """An empty application SQLite file in WAL mode."""
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=wal")
    conn.close()
    return path


FAST_FAILOVER = {"postgres": {"connect_timeout_seconds": 2, "statement_timeout_seconds": 3},
                 "stream": {"retry_max_backoff_seconds": 1}}


def write_config(path: Path, dsn: str, sources: list[dict], extra: str = "", metrics_listen: str = "",
                 sections: dict[str, dict] | None = None) -> Path:
    """Write a syncd.toml; `sources` are dicts of TOML-ready values, `sections` adds
    keys to [postgres], [stream], ... (e.g. FAST_FAILOVER)."""
    sections = {k: dict(v) for k, v in (sections or {}).items()}
    pg = {"dsn": dsn, **sections.pop("postgres", {})}
    stream = {"poll_interval_seconds": 0.2, "held_table_retry_seconds": 0.5, **sections.pop("stream", {})}
    lines = ["[postgres]", *(f"{k} = {_toml(v)}" for k, v in pg.items()), "",
             "[metrics]", f'listen = "{metrics_listen}"', "",
             "[stream]", *(f"{k} = {_toml(v)}" for k, v in stream.items()), ""]
    for name, values in sections.items():
        lines += [f"[{name}]", *(f"{k} = {_toml(v)}" for k, v in values.items()), ""]
    for s in sources:
        lines.append("[[sources]]")
        for k, v in s.items():
            if isinstance(v, dict):
                continue
            lines.append(f"{k} = {_toml(v)}")
        for k, v in s.items():
            if not isinstance(v, dict):
                continue
            flat = {sub: val for sub, val in v.items() if not isinstance(val, dict)}
            if flat:
                lines.append(f"[sources.{k}]")
                lines.extend(f"{_toml(sub)} = {_toml(val)}" for sub, val in flat.items())
            for sub, val in v.items():
                if isinstance(val, dict):
                    lines.append(f"[sources.{k}.{_toml(sub)}]")
                    lines.extend(f"{_toml(kk)} = {_toml(vv)}" for kk, vv in val.items())
        lines.append("")
    lines.append(extra)
    path.write_text("\n".join(lines))
    return path


def _toml(v) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)


@pytest.fixture
def outage(tmp_path, pg_dsn):
    """A fault proxy in front of the test's Postgres, and the DSN through it."""
    parts = urlsplit(pg_dsn)
    proxy = FaultProxy(parts.hostname, parts.port or 5432)
    yield proxy, pg_dsn.replace(f":{parts.port}/", f":{proxy.port}/")
    proxy.close()


@pytest.fixture
def make_config(tmp_path, pg_dsn):
    def make(sources: list[dict], extra: str = "", name: str = "syncd.toml", metrics_listen: str = "",
             sections: dict[str, dict] | None = None) -> Path:
        return write_config(tmp_path / name, pg_dsn, sources, extra, metrics_listen, sections)

    return make
