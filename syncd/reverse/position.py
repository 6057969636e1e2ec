"""Where the way back stands, read from both sides without the daemon: for `syncd
status` and the report (what is pending, since when, and until when a rollback stays
possible)."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from dataclasses import dataclass

from syncd.config import Settings, SourceSettings
from syncd.postgres.connect import close_quietly, connect
from syncd.reverse import applier, capture, reader
from syncd.reverse.checkpoint import META_KEY, NOTHING, ReverseCheckpoint, older
from syncd.sqlite.connection import open_readonly


@dataclass
class WayBack:
    pending: int | None = None  # changes Postgres holds and SQLite does not
    lag_seconds: float | None = None  # age of the oldest of them (0 when none)
    started_at: dt.datetime | None = None  # the cutover this way back began with
    rollback_until: dt.datetime | None = None  # [cutover] keep_sqlite_days after it
    retired: str | None = None  # why the way back has ended, once it has
    copies_owed: int = 0  # tables to copy again into an older copy of the file put back


def _checkpoint_text(source: SourceSettings, busy_timeout_ms: int) -> str | None:
    conn = open_readonly(source.path, busy_timeout_ms)
    try:
        return applier.read_meta(conn, META_KEY)
    finally:
        conn.close()


async def position(settings: Settings, source: SourceSettings, conn=None) -> WayBack:
    """The way back's figures for a cut-over source (empty where unknown)."""
    out = WayBack()
    own = conn is None
    if own:
        conn = await connect(settings.dsn_for(source), settings.password(), settings.postgres)
    try:
        names = await capture.names_of(conn, settings.postgres.bookkeeping_schema, source.name)
        gen = await capture.generation(conn, names)
        if gen is None:
            return out
        out.started_at = gen.started_at
        out.rollback_until = gen.started_at + dt.timedelta(days=settings.cutover.keep_sqlite_days)
        out.retired = gen.retired_reason if gen.retired_at else None
        if out.retired:
            return out
        try:
            cp = ReverseCheckpoint.decode(await asyncio.to_thread(
                _checkpoint_text, source, settings.sqlite.read_busy_timeout_ms))
        except (sqlite3.Error, ValueError):
            return out
        if older(cp, gen):
            # An older copy of the file put back: it lacks changes Postgres has let go of,
            # which no count of the changelog shows; every table is copied into it again.
            out.copies_owed = await capture.tables_owed_to_an_older_copy(conn, names)
            return out
        cp = cp if cp is not None and cp.generation == gen.id else ReverseCheckpoint(gen.id, NOTHING)
        out.pending, out.lag_seconds = await reader.pending(conn, names, cp)
        # A held or paused table's changes wait for it to be copied again, uncounted.
        out.lag_seconds = max(out.lag_seconds, await reader.behind_seconds(conn, names))
        return out
    finally:
        if own:
            await close_quietly(conn)
