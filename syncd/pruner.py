"""Prune applied changelog entries, in the background, on a connection of its own.

Only entries Postgres has committed are deleted, in short write transactions that
yield the lock between chunks; running on its own thread keeps that politeness from
slowing the batch reads down.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

from syncd.log import ctx
from syncd.sqlite import capture, reader
from syncd.sqlite.connection import SqliteWorker, is_busy

log = logging.getLogger("syncd")

# Each prune is a commit into the application's file, and an application transaction
# that read before it and writes after it fails at once with SQLITE_BUSY, whatever its
# busy_timeout (SQLite cannot move a read snapshot forward into a write). So pruning is
# rare: every 10 s at most, sooner only when 10,000 entries wait (a busy file, whose
# changelog would otherwise grow by that much).
PRUNE_EVERY_SECONDS = 10.0
PRUNE_MIN_ENTRIES = 10_000
# Prunes failed in a row, for a reason other than the application's lock, before syncd
# says so: one alone may be a file being replaced, which the stream notices by itself.
SAY_FAILING_AFTER = 2


def prune(conn: sqlite3.Connection, below_seq: int, keep: dict[int, int], size: int, busy_ms: int) -> int:
    """Delete applied changelog entries (seq < below_seq, except `keep`'s) in short
    write transactions over bounded windows of positions, noting below_seq in the file
    in the first one. Between windows syncd steps aside for twice as long as it held
    the lock, so application writers waiting in their busy handler get it first; it
    stops early (returning what it did) if the application keeps the file locked."""
    total = 0
    position = reader.min_seq(conn)
    first = True
    while first or position < below_seq:
        started = time.monotonic()

        def window(c: sqlite3.Connection) -> tuple[int, int]:
            if first:
                capture.record_pruned(c, below_seq)
            return reader.prune_window(c, position, size, below_seq, keep)

        try:
            n, position = capture.write_transaction(conn, window, busy_timeout_ms=busy_ms, deadline_seconds=1.0)
        except capture.LockTimeout:
            if first:
                raise  # nothing recorded: not confirmed
            return total
        first = False
        total += n
        time.sleep(max(0.005, 2 * (time.monotonic() - started)))
    return total


class Pruner:
    """At most one prune in flight per source; `maybe` starts one when it is worth it.

    Safe to run alongside the stream: `below_seq` is the checkpoint when the prune
    starts, and any table that stops streaming later gets a from_seq at or above the
    checkpoint of that moment, so nothing it still needs lies below `below_seq`."""

    def __init__(self, path: Path, name: str, window: int, busy_ms: int, read_busy_ms: int):
        self.worker = SqliteWorker(path, f"{name}-prune", read_busy_ms)
        self.window = window
        self.busy_ms = busy_ms
        self.task: asyncio.Task | None = None
        self.pruned_upto = 0
        self.last_start = 0.0
        self.confirmed: int | None = None
        self.on_done = None  # called when a prune finishes (the pipeline wakes to record its note)
        self.name = name
        self.failed = 0  # prunes failed in a row (not for the application's lock)
        self.said: str | None = None  # the failure logged, until a prune succeeds

    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def owed(self, applied_seq: int) -> bool:
        return applied_seq > self.pruned_upto

    def maybe(self, applied_seq: int, keep: dict[int, int], now: bool = False) -> None:
        """`now`: whatever the pace (the source has gone idle: nobody writes to collide with)."""
        if self.task is not None:
            if not self.task.done():
                return
            if not self.task.cancelled():
                # A failed prune is retried later: the file busy, or replaced, says nothing.
                # One that keeps failing (syncd may read the file, not write it: its
                # permissions, a read-only mount, a full disk) leaves every applied entry in
                # the application's file, which grows with each write: said once.
                self._failed(self.task.exception())
            self.task = None
        behind = applied_seq - self.pruned_upto
        due = now or time.monotonic() - self.last_start >= PRUNE_EVERY_SECONDS
        if behind <= 0 or not (due or behind >= PRUNE_MIN_ENTRIES):
            return
        self.last_start = time.monotonic()
        self.task = asyncio.ensure_future(self._run(applied_seq, dict(keep)))
        if self.on_done is not None:
            self.task.add_done_callback(lambda _t: self.on_done())  # the note goes to Postgres next

    async def _run(self, below_seq: int, keep: dict[int, int]) -> None:
        try:
            await self.worker.run(prune, below_seq, keep, self.window, self.busy_ms)
        finally:
            # Open only while pruning: a SQLite connection costs ~120 KB, and a fleet of
            # idle sources should not keep a second one each.
            await self.worker.close()
        self.pruned_upto = below_seq
        self.confirmed = below_seq

    def _failed(self, e: BaseException | None) -> None:
        if e is None:
            if self.said is not None:
                log.info("the changelog is pruned again", extra=ctx(self.name, event="prune_recovered"))
            self.failed, self.said = 0, None
            return
        if isinstance(e, capture.LockTimeout) or is_busy(e):
            return
        self.failed += 1
        if self.failed >= SAY_FAILING_AFTER and self.said is None:
            self.said = str(e)
            log.warning(f"applied changelog entries cannot be pruned from {self.worker.path}: {e}; they stay in the "
                        "application's file, which grows with every write, until syncd can write to it (its "
                        "permissions, a read-only mount, the disk full?)", extra=ctx(self.name, event="prune_failing"))

    def take_confirmed(self) -> int | None:
        """The position a finished prune recorded in the file, once, for Postgres to note."""
        seq, self.confirmed = self.confirmed, None
        return seq

    def rewind(self, applied_seq: int) -> None:
        """The checkpoint moved back (a new capture generation): prune from there."""
        self.pruned_upto = min(self.pruned_upto, applied_seq)

    async def stop(self) -> None:
        """Wait for the prune in flight (it is short) and close the connection."""
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        await self.worker.close()

    def shutdown(self) -> None:
        self.worker.shutdown()
