"""One source's live handles: its SQLite connection, its Postgres connection, and the
in-memory mirror of its tables' bookkeeping."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import asyncpg

from syncd.config import Settings, SourceSettings
from syncd.log import ctx
from syncd.model import TO_POSTGRES, TableSpec
from syncd.postgres import bookkeeping as bkmod
from syncd.postgres.apply import TableWriter
from syncd.postgres.bookkeeping import Bookkeeping, TableRow
from syncd.postgres.connect import close_quietly, connect
from syncd.postgres.target import check_target
from syncd.rows import RowConverter
from syncd.sqlite.capture import CaptureState
from syncd.sqlite.connection import SqliteWorker

log = logging.getLogger("syncd")


@dataclass
class TableRuntime:
    spec: TableSpec
    tid: int
    row: TableRow
    conv: RowConverter = field(init=False)
    writer: TableWriter | None = None
    retry_at: float = 0.0  # monotonic time a held table is tried again
    logged_reason: str | None = None  # the hold/pause reason last logged, to log each once

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
    def __init__(self, settings: Settings, source: SourceSettings):
        self.settings = settings
        self.source = source
        self.name = source.name
        self.target_schema = source.schema
        self.worker = SqliteWorker(source.path, source.name, settings.sqlite.read_busy_timeout_ms)
        self.pg: asyncpg.Connection | None = None
        self.bk = Bookkeeping(settings.postgres.bookkeeping_schema, source.name)
        self.tables: dict[str, TableRuntime] = {}
        self.refused: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.capture: CaptureState | None = None
        self.applied_seq = 0
        self.applied_at: float | None = None
        self.journal_mode = "delete"
        self.schema_version: int | None = None
        self.direction = TO_POSTGRES  # from bookkeeping at each reconcile (the cutover flips it)

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

    async def connect_postgres(self, lock: bool = True) -> asyncpg.Connection:
        """Connect, take the source's advisory lock, make sure bookkeeping exists."""
        if self.pg is not None and not self.pg.is_closed():
            return self.pg
        conn = await connect(self.dsn, self.settings.password(), self.settings.postgres)
        try:
            await check_target(conn)
            if lock:
                await bkmod.try_lock_source(conn, self.name)
            await bkmod.ensure_bookkeeping(conn, self.bk.schema)
        except BaseException:
            await close_quietly(conn)
            raise
        self.pg = conn
        for t in self.tables.values():
            t.writer = None  # temp stage tables lived in the old session
        return conn

    def drop_postgres(self) -> None:
        """Abandon the connection without waiting on it (it may be the thing that hangs)."""
        conn, self.pg = self.pg, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        await close_quietly(self.pg)
        self.pg = None
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

    def writer(self, t: TableRuntime) -> TableWriter:
        if t.writer is None:
            t.writer = TableWriter(self.target_schema, t.spec, t.tid)
        return t.writer

    async def save_row(self, conn: asyncpg.Connection, row: TableRow) -> None:
        await self.bk.save_table(conn, row)

    def loaded(self, table: str) -> None:
        """Snapshot rows of `table` just committed in Postgres: that is an apply too."""
        self.applied_at = time.time()

def changed(row: TableRow, **updates) -> TableRow:
    return dataclasses.replace(row, **updates)


