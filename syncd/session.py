"""One source's live handles: its SQLite connection, its Postgres connection, and the
in-memory mirror of its tables' bookkeeping."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg

from syncd.config import Settings, SourceSettings
from syncd.log import ctx
from syncd.model import TO_POSTGRES, TableSpec, UniqueSet
from syncd.postgres import app_triggers
from syncd.postgres import bookkeeping as bkmod
from syncd.postgres.apply import TableWriter
from syncd.postgres.bookkeeping import Bookkeeping, TableRow
from syncd.postgres.pool import Target
from syncd.postgres.target import check_target
from syncd.rows import RowConverter
from syncd.sqlite.capture import CaptureState, LockTimeout, wait_write_lock
from syncd.sqlite.connection import SqliteWorker

log = logging.getLogger("syncd")

# How long syncd's writes into the file (its notes, arming capture, the way back's
# batches) wait for the file's write lock while a pipeline's step holds a pooled Postgres
# connection: an application keeping a write transaction open would otherwise keep the
# connection from the whole fleet for each write's full wait. A step that could not
# write ends, and the next one waits for the lock before it borrows a connection.
STEP_WRITE_SECONDS = 1.0


@dataclass
class TableRuntime:
    spec: TableSpec
    tid: int
    row: TableRow
    conv: RowConverter = field(init=False)
    writer: TableWriter | None = None
    # The columns Postgres computes (ddl.PgTable.generated), read when the table was last
    # reconciled or its load started: its writer writes none of them.
    computed: frozenset[str] = frozenset()
    retry_at: float = 0.0  # monotonic time a held table is tried again
    logged_reason: str | None = None  # the hold/pause reason last logged, to log each once
    # Unique sets SQLite no longer has, looked up until the stream passes the position
    # (see collisions.ensure_indexes).
    retired_unique: tuple[tuple[UniqueSet, int], ...] = ()
    # The note of the last passed audit when it found every value already sent as stored
    # (audit.passed_note): a load reading the table unchanged since skips the per-chunk
    # conversion check (snapshot.TableLoad).
    plain_audit: dict | None = None
    # Held or paused: its changes the checkpoint moved past (counted now and then), and
    # when the oldest of them was first seen (a lower bound after a restart).
    queued: int = 0
    queued_since: float | None = None
    # Held mid-load: its "snapshot resuming" said for this hold (each retry reopens the load).
    resume_said: bool = False

    def __post_init__(self) -> None:
        self.conv = RowConverter(self.spec)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> str:
        return self.row.state


def new_row(name: str, tid: int | None, state: str = bkmod.PENDING, reason: str | None = None) -> TableRow:
    return TableRow(
        table_name=name, tid=tid, state=state, resume_to=None, from_seq=None, snapshot_key=None,
        snapshot_rows=0, snapshot_total=None, snapshot_started_at=None, snapshot_finished_at=None,
        reason=reason, updated_at=None,  # type: ignore[arg-type]
    )


class SourceSession:
    def __init__(self, settings: Settings, source: SourceSettings, target: Target | None = None):
        self.settings = settings
        self.source = source
        self.name = source.name
        self.target_schema = source.schema
        self.worker = SqliteWorker(source.path, source.name, settings.sqlite.read_busy_timeout_ms)
        # The daemon shares one Target (pool and lock holder) between every source of a
        # database; a command running one source alone gets a small one of its own.
        self.target = target or Target(settings, settings.dsn_for(source), max_connections=3,
                                       lock_dsn=settings.direct_dsn_for(source))
        self._own_target = target is None
        # Closed to hand the source to the pipeline of the other direction: the lock stays
        # held for it (status never sees the source unheld meanwhile), to be confirmed by it.
        self.handing_over = False
        self.pg: asyncpg.Connection | None = None  # the connection of the step in progress
        self.bk = Bookkeeping(settings.postgres.bookkeeping_schema, source.name)
        self.tables: dict[str, TableRuntime] = {}
        self.refused: dict[str, str] = {}
        self.resync_held: dict[str, str] = {}  # a resync request left pending: why, as last logged
        # A resync request left pending for a lock: the transactions holding the table then
        # (backend pid, virtual transaction), not waited for again while they keep it.
        self.resync_blockers: dict[str, set[tuple[int, str]]] = {}
        # A table's column types rewritten past the statement timeout: (the change, why the table
        # stopped), not tried again by this daemon (reconcile._widen_in_place, snapshot._finish)
        self.rewrite_timed_out: dict[str, tuple[str, str]] = {}
        # A reload's rows replacing a table's live ones past the statement timeout: why the table
        # stopped, not tried again by this daemon (snapshot._finish)
        self.replace_timed_out: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.unmatched: list[str] = []  # [sources.keys]/[sources.columns] lines for tables the file lacks
        self.capture: CaptureState | None = None
        self.applied_seq = 0
        self.applied_at: float | None = None
        self.lag_from: float | None = None  # changes past the checkpoint are younger (bookkeeping's lag_from)
        self.journal_mode = "delete"
        self.schema_version: int | None = None
        self.direction = TO_POSTGRES  # from bookkeeping at each reconcile (the cutover flips it)
        self.write_locked = False  # a pipeline step could not write into the file: the next waits for its lock first

    # --- logging -------------------------------------------------------------------

    def debug(self, msg: str, table: str | None = None, event: str | None = None) -> None:
        log.debug(msg, extra=ctx(self.name, table, event))

    def info(self, msg: str, table: str | None = None, event: str | None = None) -> None:
        log.info(msg, extra=ctx(self.name, table, event))

    def warning(self, msg: str, table: str | None = None, event: str | None = None, exc_info=None) -> None:
        log.warning(msg, extra=ctx(self.name, table, event), exc_info=exc_info)

    def error(self, msg: str, table: str | None = None, event: str | None = None, exc_info=None) -> None:
        log.error(msg, extra=ctx(self.name, table, event), exc_info=exc_info)

    # --- connections -----------------------------------------------------------------

    @property
    def dsn(self) -> str:
        return self.settings.dsn_for(self.source)

    async def connect_postgres(self, lock: bool = True) -> bool:
        """Make sure this source's advisory lock is held (one active syncd per source) and
        the target is fit and has bookkeeping. Returns True when the lock was (re)taken:
        whatever syncd knew about the source may have changed meanwhile."""
        fresh = False
        if not self.target.prepared:  # first: the lock's key is recorded in the bookkeeping
            await self._prepare_target()
        if lock and not self.target.holds(self.name, self):
            await self.target.lock(self.name, self)
            fresh = True
            if not self.target.prepared:  # the lock's session is new: the database may be too (pool.py)
                await self._prepare_target()
        if lock:
            self.bk.key = self.target.key(self.name)
        return fresh

    async def _prepare_target(self) -> None:
        async with self.target.connection() as conn:
            await check_target(conn)
            await bkmod.ensure_bookkeeping(conn, self.bk.schema)
        self.target.prepared = True

    @property
    def key(self) -> int:
        """The source's key (bookkeeping.source_keys): its locks, its objects' names."""
        assert self.bk.key is not None, "the source's key is taken with its lock (connect_postgres)"
        return self.bk.key

    @contextlib.asynccontextmanager
    async def step(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection borrowed for one step (`self.pg` meanwhile), given back after."""
        async with self.target.connection() as conn:
            self.pg = conn
            try:
                yield conn
            finally:
                self.pg = None

    @contextlib.asynccontextmanager
    async def pipeline_step(self) -> AsyncIterator[asyncpg.Connection]:
        """A pipeline's step (step()): one of the few connections the fleet shares. While
        it is borrowed, syncd's writes into the file wait at most STEP_WRITE_SECONDS for the
        write lock, and one that could not get it ends the step (LockTimeout); the next
        step then waits for the lock first, with no connection borrowed, so an application
        keeping a write transaction open (reads still work) holds up its own file alone."""
        if self.write_locked:
            await self.worker.run(wait_write_lock, self.settings.sqlite.write_busy_timeout_ms, STEP_WRITE_SECONDS)
            self.write_locked = False
        async with self.step() as conn:
            self.worker.write_wait = STEP_WRITE_SECONDS
            try:
                yield conn
            except LockTimeout:
                self.write_locked = True
                raise
            finally:
                self.worker.write_wait = None

    async def let_go_if_gone(self) -> None:
        """The source's file is gone: so is its lock, which `syncd uninstall --forget` takes
        (nothing runs until the file is back, and the lock is taken again first)."""
        try:
            gone = not self.source.path.exists()
        except OSError:  # in a folder syncd may not enter: not known to be gone, the lock is kept
            return
        if gone and self.target.holds(self.name):
            await self.target.unlock(self.name, self)  # unless a session of the source after this one took it

    def drop_postgres(self) -> None:
        """After a failure that may mean the lock is gone (or held by another process):
        take it again before the next step. The step's connection ends with the step."""
        self.target.forget(self.name)

    async def close(self) -> None:
        if self._own_target:
            await self.target.close()
        elif self.handing_over:
            self.target.forget(self.name)  # still held: the next pipeline's lock() finds it its own
        else:
            await self.target.unlock(self.name, self)  # unless the source's next session took it over
        await self.worker.close()
        self.worker.shutdown()

    # --- tables ----------------------------------------------------------------------

    def by_tid(self) -> dict[int, TableRuntime]:
        return {t.tid: t for t in self.tables.values()}

    def streaming_specs(self) -> dict[int, TableSpec]:
        return {t.tid: t.spec for t in self.tables.values() if t.state == bkmod.STREAMING}

    def keep_map(self) -> dict[int, int]:
        """tid -> from_seq for tables whose queued changes must survive pruning."""
        keep = {}
        for t in self.tables.values():
            if t.state != bkmod.STREAMING and t.row.from_seq is not None and t.state != bkmod.PENDING:
                keep[t.tid] = t.row.from_seq
        return keep

    async def quiet_triggers(self, tables: list[str]) -> list[app_triggers.Trigger]:
        """Inside the transaction about to write `tables` from SQLite: the application's
        own Postgres triggers on them do not run again on rows SQLite's triggers already
        shaped (postgres/app_triggers.py)."""
        assert self.pg is not None
        return await app_triggers.quiet(self.pg, self.bk.schema, self.name, self.target_schema, tables)

    def writer(self, t: TableRuntime) -> TableWriter:
        if t.writer is None:
            t.writer = TableWriter(self.target_schema, t.spec, t.tid, t.computed)
        return t.writer

    async def save_row(self, conn: asyncpg.Connection, row: TableRow, applied: bool = False) -> None:
        await self.bk.save_table(conn, row, applied)

    def loaded(self, table: str) -> None:
        """Snapshot rows of `table` just committed in Postgres: that is an apply too."""
        self.applied_at = time.time()

def changed(row: TableRow, **updates) -> TableRow:
    return dataclasses.replace(row, **updates)


