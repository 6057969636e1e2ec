"""Repair through the normal apply path: SQLite is the source of truth.

Nothing is written to Postgres here. For every differing key, a changelog entry is
recorded in SQLite, as if the application had touched the row; the stream then reads
the key's current row and upserts it, or deletes the key when SQLite has no such row.
So a repair can never write a stale value behind the daemon's back: whoever applies
the entry reads the row at that moment, in order with every other change.

Who applies: the daemon, if one runs the source (it holds the source's advisory
lock); otherwise syncd's own pipeline, run here until the checkpoint passes the
entries, holding the lock like the daemon would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from syncd import in_process
from syncd.config import Settings, SourceSettings
from syncd.health_note import POSTGRES_DOWN, POSTGRES_LOGIN_REFUSED
from syncd.postgres.bookkeeping import SourceLocked, source_key, try_lock_source, unlock_source
from syncd.postgres.connect import close_quietly, connect
from syncd.sqlite.capture import OP_DELETE, OP_UPDATE
from syncd.sqlite.connection import not_utf8
from syncd.verify import sqlite_side
from syncd.verify.postgres_side import checkpoint, lock_holder
from syncd.verify.result import EXTRA, Difference
from syncd.types import PgType, converter

POLL_SECONDS = 0.1
# The pipeline run here failing to reach Postgres this long (while the caller's own
# connection works: a CONNECTION LIMIT reached, say) is given up on: waiting on is no use.
CANNOT_CONNECT_SECONDS = 5.0


class StreamCannotConnect(TimeoutError):
    """The pipeline run here could not connect to Postgres for CANNOT_CONNECT_SECONDS."""


def cut_off(stream) -> Callable[[], bool]:
    """Asked as a stream run here is waited for: whether it has not reached Postgres
    (its health an outage, its last try failing to connect) for CANNOT_CONNECT_SECONDS
    on end."""
    since: list[float] = []

    def gone() -> bool:
        # Only a connection not opened: a statement timing out on an open one (a slow
        # server, a lock) is waited for as long as the drain may take.
        if stream.health not in (POSTGRES_DOWN, POSTGRES_LOGIN_REFUSED) or not stream.cannot_connect:
            since.clear()
            return False
        since[:] = since or [time.monotonic()]
        return time.monotonic() - since[0] >= CANNOT_CONNECT_SECONDS

    return gone


def changelog_entries(differences: list[Difference]) -> tuple[list[tuple[int, tuple]], list[Difference]]:
    """(op, SQLite key) entries for the differences a replay can fix, and the rest:
    keys whose SQLite form is unknown and rows whose value does not fit (replaying
    those would hold the table; fixing the row in SQLite is the way)."""
    entries, skipped = [], []
    for d in differences:
        if (not d.repairable or d.raw_key is None or any(v is None for v in d.raw_key)
                or (d.note and "does not fit" in d.note)):
            skipped.append(d)
            continue
        entries.append((OP_DELETE if d.kind == EXTRA else OP_UPDATE, d.raw_key))
    return entries, skipped


def way_back_keys(differences: list[Difference], key_types: list[PgType]) -> tuple[list[tuple], list[Difference]]:
    """After a cutover: the Postgres keys of the differences the way back can replay, and
    the rest. The way back looks each key up in Postgres and writes SQLite's row from what
    it finds there, so a key known in either form will do (a SQLite key is converted as
    the stream converts it), and a SQLite value that does not fit is overwritten like any
    other; only rows a replay cannot fix (SQLite rows that are one key in Postgres) and
    keys Postgres cannot hold (text that is not UTF-8 among them) are left."""
    keys, skipped = [], []
    for d in differences:
        key = d.pg_key
        if key is None and d.raw_key is not None and None not in d.raw_key and not any(map(not_utf8, d.raw_key)):
            try:
                key = tuple(converter(t)(v) for t, v in zip(key_types, d.raw_key))
            except ValueError:
                key = None
        if not d.repairable or key is None:
            skipped.append(d)
            continue
        keys.append(key)
    return keys, skipped


async def enqueue(run: Callable[..., Awaitable[Any]], settings: Settings, tid: int,
                  entries: list[tuple[int, tuple]]) -> int:
    """Record the entries; returns the changelog position the stream must pass."""
    return await run(sqlite_side.enqueue, tid, entries, settings.sqlite.write_busy_timeout_ms)


async def apply_through_stream(settings: Settings, source: SourceSettings, pg: asyncpg.Connection,
                               target_seq: int, timeout: float, own_pipeline: bool = True) -> str:
    """Make sure the stream applies everything up to `target_seq`; returns who did it.
    Raises TimeoutError if the checkpoint does not get there in time. Without
    `own_pipeline` (the caller is the daemon running the source) only wait for it."""
    bk_schema = settings.postgres.bookkeeping_schema
    if not own_pipeline:
        if not await _wait_checkpoint(pg, bk_schema, source.name, target_seq, timeout):
            raise TimeoutError(f"the daemon's stream did not apply the repair within {timeout:g} s; "
                               "it stays queued in the changelog and is applied when the stream moves again")
        return "applied by this daemon's stream"
    key = await source_key(pg, bk_schema, source.name)
    holder = await lock_holder(pg, key)
    if holder is None:
        probe = await connect(settings.direct_dsn_for(source), settings.password(), settings.postgres)
        try:
            await try_lock_source(probe, source.name, key)
        except SourceLocked:
            holder = "the daemon that just took the source"
        else:
            await unlock_source(probe, key)
        finally:
            await close_quietly(probe)
    if holder is not None:
        if not await _wait_checkpoint(pg, bk_schema, source.name, target_seq, timeout):
            raise TimeoutError(f"the daemon ({holder}) did not apply the repair within {timeout:g} s")
        return f"applied by the running daemon, {holder}"
    await _run_pipeline_until(settings, source, pg, target_seq, timeout)
    return "applied by syncd's pipeline run in this process (no daemon was running the source)"


async def _wait_checkpoint(pg: asyncpg.Connection, bk_schema: str, source: str, target: int, timeout: float,
                           task: asyncio.Task | None = None, given_up: Callable[[], bool] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        applied = await checkpoint(pg, bk_schema, source)
        if applied is not None and applied >= target:
            return True
        if task is not None and task.done() or given_up is not None and given_up():
            return False
        await asyncio.sleep(POLL_SECONDS)
    return False


async def _run_pipeline_until(settings: Settings, source: SourceSettings, pg: asyncpg.Connection, target: int,
                              timeout: float) -> None:
    from syncd.pipeline import Pipeline  # the daemon's own apply path

    pipeline = Pipeline(settings, source)
    cannot_connect = cut_off(pipeline)
    task = in_process.start(pipeline, f"repair-{source.name}", "CUTOVER")
    try:
        ok = await _wait_checkpoint(pg, settings.postgres.bookkeeping_schema, source.name, target, timeout, task,
                                    cannot_connect)
        why = pipeline.detail.partition("; retrying with backoff")[0]  # given up on here, not retried
        gave_up = not ok and cannot_connect()
    finally:
        await in_process.stop(pipeline, task)
    if gave_up:
        raise StreamCannotConnect(f"syncd's pipeline run in this process could not connect to Postgres for "
                                  f"{CANNOT_CONNECT_SECONDS:g} s ({why})")
    if not ok:
        detail = f": {pipeline.detail}" if pipeline.detail else ""
        raise TimeoutError(f"syncd's pipeline did not apply the repair within {timeout:g} s ({pipeline.health}{detail})")
