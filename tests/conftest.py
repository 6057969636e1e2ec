"""Shared fixtures: a PostgreSQL server for the whole run, a fresh database per test."""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.support.pgcluster import DEFAULT_DSN, Cluster, answers, with_database
from tests.support.proxy import FaultProxy


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


@pytest.fixture
def pg_dsn(pg_server):
    """A database of its own for one test, dropped afterwards."""
    name = f"syncd_test_{secrets.token_hex(6)}"
    asyncio.run(_admin(pg_server, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(pg_server, name)
    finally:
        asyncio.run(_admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


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
