"""Wait for syncd to catch up, judged from outside: SQLite's changelog vs the
checkpoint and table states syncd keeps in Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

import asyncpg


def changelog_max(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT coalesce(max(seq), 0) FROM _syncd_changelog").fetchone()[0]
    except sqlite3.OperationalError:
        return -1
    finally:
        conn.close()


def schema_version(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("PRAGMA schema_version").fetchone()[0]
    finally:
        conn.close()


def capture_id(db: Path) -> str | None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT value FROM _syncd_meta WHERE key = 'capture_id'").fetchone()
        return row[0] if row else None
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()


async def bookkeeping(dsn: str, source: str, db: Path | None = None,
                      conn: asyncpg.Connection | None = None) -> tuple[int | None, dict[str, str]]:
    """(checkpoint, table states); with `db`, (None, {}) until syncd has reconciled the
    file's current schema version (an application's DDL is followed first). On `conn`,
    or a connection of its own."""
    own = conn is None
    if own:
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
        except Exception:
            return None, {}
    try:
        seq, followed, cid = await conn.fetchrow(
            "SELECT applied_seq, schema_version, capture_id FROM syncd.sources WHERE source = $1",
            source) or (None, None, None)
        if db is not None and (followed is not None and followed != schema_version(db) or cid != capture_id(db)):
            return None, {}  # syncd has not reconciled this file as it is now
        rows = await conn.fetch("SELECT table_name, state FROM syncd.tables WHERE source = $1", source)
        return seq, {r[0]: r[1] for r in rows}
    except asyncpg.UndefinedTableError:
        return None, {}
    finally:
        if own:
            await conn.close()


SETTLED = ("streaming", "refused")


async def caught_up(db: Path, dsn: str, source: str, settled: tuple[str, ...] = SETTLED,
                    conn: asyncpg.Connection | None = None) -> bool:
    """Every table settled (by default: streaming or refused) and the checkpoint at
    the end of the changelog."""
    seq, states = await bookkeeping(dsn, source, db, conn)
    if seq is None or not states:
        return False
    if any(s not in settled for s in states.values()):
        return False
    return seq >= changelog_max(db)


async def wait_caught_up(db: Path, dsn: str, source: str, timeout: float = 60, daemon=None,
                         settled: tuple[str, ...] = SETTLED) -> None:
    deadline = time.monotonic() + timeout
    # One connection for the wait's polls, not a backend started and ended ten times a
    # second; opened again if lost.
    conn = None
    try:
        while True:
            if conn is None:
                try:
                    conn = await asyncpg.connect(dsn, timeout=5)
                except Exception:
                    conn = None
            if conn is not None:
                try:
                    if await caught_up(db, dsn, source, settled, conn):
                        return
                except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError):
                    conn.terminate()
                    conn = None
            if daemon is not None and not daemon.alive():
                raise AssertionError(f"syncd exited ({daemon.proc.returncode}):\n{daemon.log()[-4000:]}")
            if time.monotonic() > deadline:
                seq, states = await bookkeeping(dsn, source)
                tail = daemon.log()[-3000:] if daemon else ""
                raise AssertionError(
                    f"syncd did not catch up in {timeout}s: applied {seq}, changelog max {changelog_max(db)}, "
                    f"tables {states}\n{tail}"
                )
            await asyncio.sleep(0.1)
    finally:
        if conn is not None:
            conn.terminate()


async def table_states(dsn: str, source: str) -> dict[str, tuple[str, str | None]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT table_name, state, reason FROM syncd.tables WHERE source = $1", source)
        return {r[0]: (r[1], r[2]) for r in rows}
    finally:
        await conn.close()


async def eventually(cond, timeout: float = 30, what: str = "condition", daemon=None) -> None:
    """Await an async predicate until it holds (a liveness bound, not a timing check)."""
    deadline = time.monotonic() + timeout
    while not await cond():
        if daemon is not None and not daemon.alive():
            raise AssertionError(f"syncd exited while waiting for {what}:\n{daemon.log()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


async def pg_statements(dsn: str, *sql: str) -> None:
    """Run statements in order on one connection (as the superuser the tests connect as)."""
    conn = await asyncpg.connect(dsn)
    try:
        for s in sql:
            await conn.execute(s)
    finally:
        await conn.close()


async def pg_rows(dsn: str, sql: str, *args) -> list[tuple]:
    """Run one query on its own connection; rows as plain tuples."""
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def first_source(cfg: Path):
    """The configuration's first source: its settings, the source, and its tables as
    SQLite describes them now (syncd.cutover.read_specs)."""
    from syncd.config import load_settings
    from syncd.cutover import read_specs

    settings = load_settings(cfg)
    source = settings.sources[0]
    return settings, source, read_specs(source)


@contextlib.asynccontextmanager
async def long_read(dsn: str, table: str):
    """Someone's long read of `table` ("schema.name", quoted as needed): the lock a SELECT
    takes, held until the block ends, which anything needing the table to itself waits for."""
    reader = await asyncpg.connect(dsn)
    try:
        async with reader.transaction():
            await reader.fetch(f"SELECT * FROM {table}")
            yield
    finally:
        await reader.close()
