"""Apply changelog batches to Postgres, exactly once in effect.

Data and checkpoint commit in one Postgres transaction; the SQLite changelog is
pruned only after that commit. A table whose row Postgres (or the converter)
rejects is held: its changes stay queued while every other table goes on.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from syncd import collisions, metrics, parity, table_locks
from syncd.identifiers import qualified
from syncd.postgres import app_triggers
from syncd.postgres import bookkeeping as bk
from syncd.postgres.apply import locate_bad_row
from syncd.postgres.bookkeeping import TableRow
from syncd.postgres.connect import (LOCK_NOT_AVAILABLE, describe, is_data_error, is_shape_error, is_transient,
                                    lock_given_up, sqlstate)
from syncd.rows import RowMisfit
from syncd.session import SourceSession, TableRuntime, changed
from syncd.sqlite import key_identity, reader
from syncd.sqlite.audit import format_key
from syncd.sqlite.reader import ChangeBatch


@dataclass
class Converted:
    t: TableRuntime
    records: list[tuple]
    deletes: list[tuple]


# A change waiting this long for a lock another session holds (LOCK TABLE in an open
# transaction, a long ALTER TABLE) holds its table, named with who holds the lock: the
# source's other tables go on, not the whole source waiting out the statement timeout.
LOCK_WAIT = "2s"

LARGE_BATCH_FACTOR = 4  # a backlog is read in batches this many times [stream] batch_size


def batch_limit(backlog: int, batch_size: int, journal_mode: str = "wal") -> int:
    """Changelog entries to read next. In WAL mode a backlog larger than one batch is
    read in larger ones, so the fixed costs of a batch (bookkeeping, stage merge,
    round trips) are paid less often; bounded, because two batches may be in memory
    at once. The bound is the same however little of the backlog is left: a wide
    table's batch is cut to a share of it (reader.read_changes), which must not shrink
    batch after batch as the backlog drains. In rollback-journal mode a read
    transaction holds back the application's commits, so it stays as short as
    [stream] batch_size makes it."""
    if backlog <= batch_size or journal_mode != "wal":
        return batch_size
    return LARGE_BATCH_FACTOR * batch_size


class ReadAhead:
    """The next stream batch, read and converted on the SQLite thread while the
    current one is applied in Postgres. It is used only if it starts exactly where
    the checkpoint now stands and was read for the same tables, specs and schema;
    anything else (a table held, a reconcile, a failed apply) discards it, and the
    batch is read again. Order and the checkpoint-in-the-same-transaction rule are
    unchanged: batches are still applied one at a time, in seq order."""

    def __init__(self) -> None:
        self.future: asyncio.Future | None = None
        self.key: Any = None

    @staticmethod
    def key_for(after: int, tables: dict[int, TableRuntime], streaming: dict, schema_version: int | None) -> Any:
        return (after, schema_version, tuple(sorted((tid, id(spec), id(tables[tid])) for tid, spec in streaming.items())))

    def start(self, coro, key: Any) -> None:
        self.discard()
        self.future = asyncio.ensure_future(coro)
        self.key = key

    async def take(self, key: Any):
        """The batch read ahead for `key`, or None (a stale one is discarded)."""
        fut, self.future = self.future, None
        if fut is None:
            return None
        if key != self.key:
            fut.cancel()
            await asyncio.gather(fut, return_exceptions=True)
            return None
        try:
            return await fut
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
            return None

    def discard(self) -> None:
        """Forget the batch read ahead; callable from synchronous code (a read still
        running on the SQLite thread finishes there and is dropped)."""
        fut, self.future = self.future, None
        if fut is not None:
            fut.cancel()
            fut.add_done_callback(_consume)

    async def drop(self) -> None:
        fut, self.future = self.future, None
        if fut is not None:
            fut.cancel()
            await asyncio.gather(fut, return_exceptions=True)


def _consume(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved, so asyncio does not log it as never retrieved


def hold_row(t: TableRuntime, reason: str, from_seq: int | None, resume_to: str) -> TableRow:
    return changed(t.row, state=bk.HELD, reason=reason, from_seq=from_seq, resume_to=resume_to)


def read_and_convert(conn: sqlite3.Connection, after: int, limit: int, streaming: dict, tables: dict[int, TableRuntime],
                     only_tid: int | None = None, schema_version: int | None = None, upto: int | None = None):
    """Worker-thread half of a batch: read it and convert every value."""
    batch = reader.read_changes(conn, after, limit, streaming, only_tid=only_tid, upto_seq=upto,
                                schema_version=schema_version)
    converted: dict[int, Converted] = {}
    misfits: dict[int, str] = {}
    for tid, ch in batch.tables.items():
        t = tables[tid]
        if ch.null_keys:
            misfits[tid] = (
                f'table "{t.name}": {ch.null_keys} change(s) to rows whose key ({", ".join(t.spec.key)}) is NULL; '
                "Postgres cannot hold a NULL key. Give those rows a key in SQLite"
                + ("" if (rowid := reader.rowid_key_name(t.spec)) is None else ", or key the table on its rowid "
                   f'(as a table without a key) with [sources.keys] "{t.name}" = ["{rowid}"]')
            )
            continue
        if ch.duplicate is not None:
            misfits[tid] = key_identity.duplicate_reason(t.spec, *ch.duplicate)
            continue
        kept, gone = key_identity.survivors(conn, t.spec, ch.deletes)
        if kept:
            # A row another spelling leads to may be one the batch upserts already (1
            # deleted, '1' written): sent twice, Postgres would refuse the batch.
            idx = t.spec.key_indexes
            have = {reader.exact_key(r[i] for i in idx) for r in ch.upserts}
            for row in kept:
                exact = reader.exact_key(row[i] for i in idx)
                if exact not in have:
                    have.add(exact)
                    ch.upserts.append(row)
            ch.deletes = gone
        ch.deletes.extend(key_identity.older_texts(conn, t.spec, ch.upserts, ch.deletes))
        try:
            converted[tid] = Converted(t, t.conv.rows(ch.upserts), t.conv.deleted_keys(ch.deletes))
        except RowMisfit as m:
            misfits[tid] = str(m)
            continue
        clash = key_identity.stream_collision(conn, t.spec, ch.upserts)
        if clash is not None:
            misfits[tid] = clash
            del converted[tid]
    return batch, converted, misfits


async def apply(session: SourceSession, batch: ChangeBatch, converted: dict[int, Converted],
                misfits: dict[int, str], catchup: TableRuntime | None = None,
                caught_up_at: float | None = None) -> dict[int, str]:
    """Apply one batch. Main stream: advances the source checkpoint, and records
    `caught_up_at` with it (the changelog held nothing past the batch then). Catch-up
    of one table: advances that table's from_seq. Returns tid -> reason for tables held."""
    conn = session.pg
    assert conn is not None
    started = time.monotonic()
    await _add_replaced(session, converted, misfits, batch.after_seq)
    held = dict(misfits)
    quieted: list[app_triggers.Trigger] = []
    waiting: list[int] = []  # the tables the statement under way takes locks on
    try:
        async with conn.transaction():
            prior, role_s = await _short_lock_waits(conn)
            waiting = list(converted)
            quieted = await session.quiet_triggers([c.t.name for c in converted.values()])
            for tid, c in converted.items():
                waiting = [tid]
                w = session.writer(c.t)
                await w.delete(conn, c.deletes)
                await w.upsert(conn, c.records)
            waiting = []
            # Deferred UNIQUE constraints (schema parity) are checked here, not at COMMIT,
            # so a violation is this batch's and is narrowed to its table below.
            await parity.check_deferred(conn, session, [c.t.name for c in converted.values()])
            await conn.execute("SELECT set_config('lock_timeout', $1, true)", prior)  # syncd's own tables: as before
            updates = await _bookkeep(session, batch, held, catchup, caught_up_at)
    except Exception as e:
        if not (_table_specific(e) or sqlstate(e) == LOCK_NOT_AVAILABLE):
            raise
        # Find which table(s) Postgres refuses, or another session keeps locked, each in its own savepoint.
        # A table the lock wait was for is not waited for again (a held table's retry would
        # stall the other tables twice as long): held at once, or, of several the statement
        # locked, those another session keeps locked now are.
        if sqlstate(e) != LOCK_NOT_AVAILABLE:
            waiting = []
        held = dict(misfits)
        quieted = []
        async with conn.transaction():
            prior, role_s = await _short_lock_waits(conn)
            for tid, c in converted.items():
                w = session.writer(c.t)
                if waiting == [tid]:
                    held[tid] = await _locked(session, c.t.name, e, role_s)
                    continue
                try:
                    async with conn.transaction():
                        if tid in waiting:
                            await conn.execute(f"LOCK TABLE {qualified(session.target_schema, c.t.name)} "
                                               "IN ROW EXCLUSIVE MODE NOWAIT")
                        quieted += await session.quiet_triggers([c.t.name])
                except Exception as e2:
                    if sqlstate(e2) == LOCK_NOT_AVAILABLE:
                        held[tid] = await _locked(session, c.t.name, e if tid in waiting else e2, role_s)
                        continue
                    if not _table_specific(e2):
                        raise
                    why = str(e2) if isinstance(e2, app_triggers.TriggersKept) else \
                        f"Postgres rejected the change: {describe(e2)}"
                    held[tid] = f'table "{c.t.name}": {why}'
                    continue
                for attempt in (1, 2, 3):
                    try:
                        async with conn.transaction():
                            await parity.defer(conn, session, c.t.name)
                            await w.delete(conn, c.deletes)
                            await w.upsert(conn, c.records)
                            await parity.check_deferred(conn, session, [c.t.name])
                        break
                    except Exception as e2:
                        if sqlstate(e2) == LOCK_NOT_AVAILABLE:
                            held[tid] = await _locked(session, c.t.name, e2, role_s)
                            break
                        if not _table_specific(e2):
                            raise
                        violated = await parity.violated(conn, session, c.t.spec, e2) if attempt < 3 else None
                        # A UNIQUE constraint of schema parity: the batch's rows and those read
                        # again were read at different moments of a busy file; read them all
                        # again at one moment. Still broken: SQLite's rows cannot meet it.
                        if violated and attempt == 1 and await _reread_together(session, c, batch.after_seq):
                            continue
                        if violated:
                            await parity.release(conn, session, c.t.spec, violated, e2)
                            continue
                        bad = await locate_bad_row(conn, w, c.records, c.deletes)
                        where = f" key {format_key(bad.key)}" if bad else ""
                        msg = bad.message if bad else describe(e2)
                        held[tid] = f'table "{c.t.name}"{where}: Postgres rejected the change: {msg}'
                        break
            await conn.execute("SELECT set_config('lock_timeout', $1, true)", prior)
            updates = await _bookkeep(session, batch, held, catchup, caught_up_at)
    app_triggers.say(session.name, quieted, disabled=True)
    _adopt(session, batch, updates, catchup)
    _count(session, batch, converted, held, time.monotonic() - started)
    return held


# Values moved along a chain of later transactions (a permutation of unique values, say)
# make a chain of collisions as long as the chain; a batch following more links than
# this are read again together when the batch breaks a deferred constraint (_reread_together).
COLLISION_LINKS = 64


async def _add_replaced(session: SourceSession, converted: dict[int, Converted], misfits: dict[int, str],
                        after_seq: int) -> None:
    """Rows a REPLACE removed through a unique index (no trigger tells of them): found
    by their collision with an upserted row, read again from SQLite, and added to the
    batch as the upserts or deletes they now are (see collisions.py). A unique set the
    application has dropped counts for a batch starting before the drop (`after_seq`:
    where the batch starts, a held table's own position in its catch-up)."""
    assert session.pg is not None
    for tid, c in list(converted.items()):
        spec = c.t.spec
        sets = spec.unique_sets + tuple(u for u, until in c.t.retired_unique if after_seq < until)
        if not sets or not c.records:
            continue
        # A row read again may collide in turn with another stale one (values that moved
        # along a chain of later transactions): follow the chain.
        key_idx = spec.key_indexes
        seen = {tuple(r[i] for i in key_idx) for r in c.records}
        fresh = c.records
        role_s = False
        try:
            async with session.pg.transaction():  # its reads wait for another session's lock as the writes do
                _prior, role_s = await _short_lock_waits(session.pg)
                for _link in range(COLLISION_LINKS):
                    stale = await collisions.stale_keys(session.pg, session.target_schema, spec, fresh, sets) - seen
                    if not stale:
                        break
                    seen |= stale
                    rows, gone = await session.worker.run(collisions.read_current, spec, sorted(stale, key=repr))
                    try:
                        fresh = c.t.conv.rows(rows)
                    except RowMisfit as m:
                        misfits[tid] = str(m)
                        del converted[tid]
                        break
                    c.records.extend(fresh)
                    c.deletes.extend(gone)
        except Exception as e:
            if sqlstate(e) != LOCK_NOT_AVAILABLE:
                raise
            misfits[tid] = await _locked(session, spec.name, e, role_s)
            converted.pop(tid, None)


async def _reread_together(session: SourceSession, c: Converted, after_seq: int) -> bool:
    """Read the table's rows of the batch, and every row they collide with in Postgres,
    again in one SQLite read transaction each round, until no new collision appears: the
    rows then all come from one moment. False when that does not settle."""
    assert session.pg is not None
    spec = c.t.spec
    sets = spec.unique_sets + tuple(u for u, until in c.t.retired_unique if after_seq < until)
    key_idx = spec.key_indexes
    keys = {tuple(r[i] for i in key_idx) for r in c.records} | set(c.deletes)
    for _link in range(COLLISION_LINKS):
        rows, gone = await session.worker.run(collisions.read_current, spec, sorted(keys, key=repr))
        try:
            records = c.t.conv.rows(rows)
        except RowMisfit:
            return False
        stale = await collisions.stale_keys(session.pg, session.target_schema, spec, records, sets) - keys
        if not stale:
            c.records, c.deletes = records, gone
            return True
        keys |= stale
    return False


async def _short_lock_waits(conn) -> tuple[str, bool]:
    """For the application's tables, in the caller's transaction: each lock waited for
    LOCK_WAIT at most, or less where the session's own lock_timeout (syncd's role's)
    already says so. Returns the lock_timeout it had (to be set back for syncd's own
    tables), and whether the session's own is the one in force."""
    row = await conn.fetchrow(
        "SELECT prior, shorter, set_config('lock_timeout', CASE WHEN shorter THEN prior ELSE $1::text END, true) "
        "FROM (SELECT prior, prior::interval > interval '0' AND prior::interval < $1::text::interval AS shorter "
        "FROM (SELECT current_setting('lock_timeout') AS prior) p) q", LOCK_WAIT)
    return row[0], row[1]


async def _locked(session: SourceSession, table: str, exc: BaseException, role_s: bool) -> str:
    """Why a table whose change waited LOCK_WAIT (or, `role_s`, the shorter lock_timeout
    of syncd's role) for a lock another session holds is held: the table, and the
    sessions holding a lock on it, as a user finds them in pg_stat_activity."""
    assert session.pg is not None
    holders = await table_locks.table_holders(session.pg, session.target_schema, [table],
                                              table_locks.IN_THE_WAY_OF_WRITES)
    said = (lock_given_up(exc, session.settings.dsn_for(session.source)) if role_s else None) \
        or f"tried again until the lock is gone ({describe(exc)})"
    return (f'table "{table}": {table_locks.LOCK_HELD[0]}{holders} (an open transaction, '
            f"a long ALTER TABLE); {said}")


def _table_specific(exc: BaseException) -> bool:
    """An error one table's statements caused: hold that table, let the rest go on.
    Anything Postgres itself reported that is not transient counts, so an
    unforeseen error in one table cannot stall every other table."""
    if is_data_error(exc) or is_shape_error(exc):
        return True
    return sqlstate(exc) is not None and not is_transient(exc)


async def _bookkeep(session: SourceSession, batch: ChangeBatch, held: dict[int, str],
                    catchup: TableRuntime | None, caught_up_at: float | None) -> dict[int, TableRow]:
    """Inside the batch transaction: holds, and the checkpoint or table position."""
    conn = session.pg
    assert conn is not None
    by_tid = session.by_tid()
    updates: dict[int, TableRow] = {}
    for tid, reason in held.items():
        t = by_tid[tid]
        from_seq = batch.after_seq if catchup is None else t.row.from_seq
        updates[tid] = hold_row(t, reason, from_seq, bk.CATCHUP)
    if catchup is None:
        await session.bk.advance(conn, batch.after_seq, batch.last_seq, batch.fingerprint, caught_up_at)
    elif catchup.tid not in held:
        updates[catchup.tid] = changed(catchup.row, state=bk.CATCHUP, from_seq=batch.last_seq, reason=None)
        await session.bk.touch_applied(conn)
    for row in updates.values():
        await session.save_row(conn, row)
    return updates


def _adopt(session: SourceSession, batch: ChangeBatch, updates: dict[int, TableRow],
           catchup: TableRuntime | None) -> None:
    by_tid = session.by_tid()
    for tid, row in updates.items():
        by_tid[tid].row = row
    if catchup is None:
        session.applied_seq = batch.last_seq
    session.applied_at = time.time()


def _count(session: SourceSession, batch: ChangeBatch, converted: dict[int, Converted], held: dict[int, str],
           elapsed: float) -> None:
    metrics.apply_duration_seconds.labels(session.name).observe(elapsed)
    metrics.last_applied_timestamp_seconds.labels(session.name).set(time.time())
    for tid, ch in batch.tables.items():
        if tid in held or tid not in converted:
            continue
        for op, n in ch.ops.items():
            metrics.count_applied(session.name, ch.spec.name, op, n)
