"""Helpers for the verify, repair and report tests: sync with the real daemon, run the
CLI, read its JSON, change Postgres behind syncd's back."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import wait_caught_up


def verify_section(**settings) -> str:
    """A [verify] section for test configs: the daemon's periodic check is off (it would
    add runs to syncd.verify_runs, and load, at moments the test does not choose)."""
    lines = ["[verify]", "interval_seconds = 0"] + [f"{k} = {v}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


# Tests here also make tables that end up held or refused on purpose.
SETTLED = ("streaming", "refused", "held", "paused")


async def sync_and_stop(cfg: Path, db: Path, dsn: str, log: Path, source: str = "app") -> None:
    """Run the daemon until every table has settled and the checkpoint has reached the
    end of `db`'s changelog, then stop it."""
    with DaemonProcess(cfg, log) as d:
        await wait_caught_up(db, dsn, source, daemon=d, settled=SETTLED)
        assert d.stop() == 0


def verify(cfg: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return run_cli(cfg, "verify", *args, timeout=timeout)


def verify_json(cfg: Path, *args: str, timeout: float = 180) -> tuple[int, dict]:
    out = verify(cfg, "--json", *args, timeout=timeout)
    assert out.returncode in (0, 1, 2), out.stderr
    try:
        return out.returncode, json.loads(out.stdout)
    except ValueError:
        raise AssertionError(f"not JSON (exit {out.returncode}):\n{out.stdout}\n{out.stderr}") from None


def tables(doc: dict, source: str = "app") -> dict[str, dict]:
    for s in doc["sources"]:
        if s["source"] == source:
            return {t["table"]: t for t in s["tables"]}
    raise AssertionError(f"no source {source!r} in {doc}")


def found(doc: dict, table: str, source: str = "app") -> set[tuple]:
    """(kind, key, columns) of every difference listed for `table`."""
    return {(d["kind"], tuple(_key(v) for v in d["key"]), tuple(d["columns"]))
            for d in tables(doc, source)[table]["differences"]}


def _key(v):
    return bytes.fromhex(v["blob"]) if isinstance(v, dict) and "blob" in v else v


async def pg_execute(dsn: str, sql: str, *args) -> None:
    """Tamper with Postgres behind syncd's back. A running daemon may be applying to the
    same rows: a deadlock Postgres resolves against this statement is tried again."""
    conn = await asyncpg.connect(dsn)
    try:
        for attempt in range(5):
            try:
                await conn.execute(sql, *args)
                return
            except asyncpg.DeadlockDetectedError:
                if attempt == 4:
                    raise
    finally:
        await conn.close()


async def pg_fetch(dsn: str, sql: str, *args) -> list:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()
