"""Initial load of a table: audit, then COPY in chunks, resumable, then catch up.

A first load COPYs straight into the new, empty Postgres table. A reload of a table
Postgres already holds rows of (a re-snapshot after a capture gap, a keyless table
whose rowids VACUUM may have renumbered, a retyped column) fills an aside table in
the bookkeeping schema instead and replaces the live rows with it in one transaction
at the end: a Postgres reader sees the old rows, then the new ones, never an empty or
half-loaded table.

Position: before the first row is read, the changelog's max seq P0 is fixed (in WAL
mode inside the one read transaction the whole table is read in). Every change
after P0 is replayed afterwards with current values, so rows read at any later
moment still converge: no gap, and replaying a change twice is harmless.

In rollback-journal mode a long read transaction would block application writers,
so each chunk gets its own short read transaction instead; the replay from P0
makes that equally correct.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time

from syncd.model import SIZED_FOR_COLUMNS
from syncd import table_locks
from syncd.parity import LockNotHad
from syncd.parity.apply import lock_wait_ms
from syncd.postgres import bookkeeping as bk
from syncd.postgres import app_triggers, ddl, ownership
from syncd.postgres.apply import locate_bad_row
from syncd.postgres.connect import (INSUFFICIENT_PRIVILEGE, LOCK_NOT_AVAILABLE, QUERY_CANCELED, describe, is_data_error,
                                    is_shape_error, plan_outdated, sqlstate)
from syncd.rows import RowConverter, RowMisfit
from syncd.session import SourceSession, TableRuntime, changed
from syncd.sqlite import introspect, key_identity, reader
from syncd.sqlite.audit import (audit_position, audit_scan, audit_still_holds, misfits_text, note_audit_passed,
                                passed_note, unchanged_since)
from syncd.sqlite.connection import SqliteWorker
from syncd.sqlite.hold import RowsPerHold

PROGRESS_EVERY_SECONDS = 5.0

MIN_CHUNK_ROWS = 100  # chunks made smaller after a statement timeout stop here


class TableLoad:
    """The reading side of one table's load. A table of more than one chunk in a WAL file
    is read in one read transaction on a connection of its own; anything else on the
    source's own connection, a short transaction per chunk (a fleet of small files then
    opens no second connection per table)."""

    def __init__(self, session: SourceSession, t: TableRuntime):
        self.session = session
        self.t = t
        self.worker = session.worker
        self.own_worker = False
        self.single_txn = False
        self.total: int | None = None
        self.started = time.monotonic()
        self.rows_at_start = t.row.snapshot_rows
        self.last_progress = self.started
        self.prefetch: asyncio.Future | None = None
        self.prefetch_after: tuple | None = None
        self.schema_version = session.schema_version
        self.plain = False  # every row is sent as read, without the per-chunk check (see open)
        self.divisor = 1  # chunks this many times smaller: one ran over the statement timeout
        # Rows per read in rollback-journal mode, where a read holds the writers back
        # (sqlite/hold.py); None in WAL mode, where a reader holds no writer back.
        self.reads = self._reads(session.journal_mode)
        # A load walked by a rowid VACUUM may renumber ([sources.keys]) in a transaction per
        # chunk: a row it passed, deleted and written again under its key, comes back at a new
        # rowid ahead of it. Rows of keys changed since the load's position (`since`) are
        # left to the catch-up, which replays every such key with its current row.
        self.since: int | None = None
        self.changed_keys: set[tuple] = set()

    def _reads(self, journal_mode: str) -> RowsPerHold | None:
        return None if journal_mode == "wal" else RowsPerHold(self.session.settings.stream.snapshot_chunk_rows)

    @property
    def chunk_rows(self) -> int:
        """Rows per chunk: [stream] snapshot_chunk_rows, fewer for a table wider than
        model.SIZED_FOR_COLUMNS columns. A chunk of heavy rows is also cut at
        model.BATCH_VALUE_BYTES (reader.read_snapshot_chunk)."""
        configured = self.session.settings.stream.snapshot_chunk_rows
        width = max(1, len(self.t.spec.columns))
        rows = max(min(configured, 100), min(configured, configured * SIZED_FOR_COLUMNS // width))
        rows = max(min(rows, MIN_CHUNK_ROWS), rows // self.divisor)
        return rows if self.reads is None else min(rows, self.reads.rows)

    async def open(self) -> int:
        """Open the read side; returns the changelog position the read starts at."""
        mode = await self.session.worker.run(introspect.journal_mode)
        if mode != self.session.journal_mode:
            # Switched by the application since syncd last looked (it can only while syncd has
            # the file closed, idle): a read of the whole table would hold its writers off.
            self.session.journal_mode = mode
            self.reads = self._reads(mode)
        if self.session.journal_mode == "wal" and \
                await self.session.worker.run(reader.has_more_rows, self.t.name, self.chunk_rows):
            self.worker = SqliteWorker(self.session.source.path, f"{self.session.name}-snapshot",
                                       self.session.settings.sqlite.read_busy_timeout_ms)
            self.own_worker = self.single_txn = True

        def begin(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN")
            try:
                pos = reader.max_seq(conn)
                # Read in one transaction, a table the audit found holding only values sent as
                # stored, with no change since, holds only such values in this snapshot too.
                noted = self.t.plain_audit
                self.plain = (self.single_txn and noted is not None
                              and unchanged_since(conn, self.t.tid, self.t.spec, noted))
            except BaseException:
                conn.execute("ROLLBACK")  # a busy file: tried again from BEGIN
                raise
            if not self.single_txn:
                conn.execute("COMMIT")
            return pos

        return await self.worker.run(begin)

    async def count(self) -> int:
        """The table's rows, counted on the source's own connection: with the read side
        on a connection of its own, while that one reads the first chunk."""
        if self.total is None:
            self.total = await self.session.worker.run(reader.count_rows, self.t.name)
        return self.total

    def _read(self, conn: sqlite3.Connection, after: tuple | None, limit: int, conv: RowConverter):
        began = time.monotonic()
        if not self.single_txn:
            conn.execute("BEGIN")
        try:
            if conn.execute("PRAGMA main.schema_version").fetchone()[0] != self.schema_version:
                return None, after, SchemaMoved()
            rows, pos = reader.read_snapshot_chunk(conn, self.t.spec, after, limit)
            # Asked of the rows read: fewer than `limit` when their bytes cut the chunk short.
            unchanged = bool(rows) and (self.plain or
                                        not reader.snapshot_chunk_needs_conversion(conn, self.t.spec, after, len(rows)))
            if self.since is not None and rows:
                self.since = reader.changed_keys_since(conn, self.t.tid, len(self.t.spec.key), self.since,
                                                       self.changed_keys)
                if self.changed_keys:
                    idx = self.t.spec.key_indexes
                    rows = [r for r in rows if reader.exact_key(r[i] for i in idx) not in self.changed_keys]
        finally:
            if not self.single_txn:
                conn.execute("COMMIT")
                if self.reads is not None:
                    self.reads.held(time.monotonic() - began, limit)
        if unchanged:
            return rows, pos, None
        # Convert on this thread too: keeps the event loop free while COPY runs.
        try:
            return conv.rows(rows), pos, None
        except RowMisfit as m:
            return None, pos, m

    def read_ahead(self, after: tuple | None) -> None:
        limit = self.chunk_rows
        self.prefetch_after = after
        self.prefetch = asyncio.ensure_future(self.worker.run(self._read, after, limit, self.t.conv))

    async def next_chunk(self, after: tuple | None):
        if self.prefetch is not None and self.prefetch_after != after:
            # The chunk before did not commit: what was read ahead starts at the wrong place.
            stale, self.prefetch = self.prefetch, None
            await asyncio.gather(stale, return_exceptions=True)
        if self.prefetch is None:
            self.read_ahead(after)
        assert self.prefetch is not None
        fut, self.prefetch = self.prefetch, None
        return await fut

    async def close(self) -> None:
        if self.prefetch is not None:
            self.prefetch.cancel()
            try:
                await self.prefetch
            except (asyncio.CancelledError, Exception):
                pass
            self.prefetch = None
        if self.own_worker:
            await self.worker.close()
            self.worker.shutdown()


async def audit(session: SourceSession, t: TableRuntime, note: bool = False) -> str | None:
    """Run the value audit; returns the hold reason, or None when every value fits.
    With `note`, a pass is noted in the file, and the next audit of the table (the
    daemon's, after `syncd init`) is skipped while nothing it checked has changed."""
    w = session.worker
    t.plain_audit = None
    if not note:
        noted = await w.run(audit_still_holds, t.tid, t.spec)
        if noted is not None:
            t.plain_audit = noted if noted.get("plain") else None
            session.debug("audit skipped: the table was audited as it is now (by syncd init)", table=t.name,
                          event="audit_skipped")
            return None
    position = await w.run(audit_position)
    began = time.monotonic()
    misfits, plain = await w.run(audit_scan, t.spec, w.inode)
    session.debug(f"values audited in {time.monotonic() - began:.3f} s: "
                  + (f"{len(misfits)} column(s) with values that do not fit" if misfits else "every value fits"),
                  table=t.name, event="audited")
    if not misfits:
        clash = await w.run(key_identity.audit_collisions, t.spec)
        if clash is not None:
            return "audit before load: " + clash
        t.plain_audit = passed_note(t.spec, position, plain) if plain else None
        if note:
            await w.run(note_audit_passed, t.tid, t.spec, position, session.settings.sqlite.write_busy_timeout_ms,
                        plain)
        return None
    return "audit before load: " + misfits_text(t.name, misfits)


async def start(session: SourceSession, t: TableRuntime, load: TableLoad) -> None:
    """PENDING -> LOADING: fix the position, empty and reshape the Postgres table."""
    conn = session.pg
    assert conn is not None
    from_seq = await load.open()
    if not load.single_txn and reader.snapshot_position_kind(t.spec) == "rowid-unstable":
        load.since = from_seq
    if load.plain:
        session.debug("loading rows as read: the table is as its audit found it, every value already of its "
                      "column's storage class", table=t.name, event="load_as_read")
    # The first chunk is read (at the position just fixed) while SQLite counts the rows
    # and Postgres creates or empties the table; load_chunk takes it as read ahead.
    load.read_ahead(None)
    total = await load.count()
    target = session.target_schema
    try:
        async with conn.transaction():
            pgt = (await ddl.read_tables(conn, target)).get(t.name)
            if pgt is None:
                await ddl.run_ddl(conn, ddl.create_table_sql(target, t.spec))
                await session.bk.record_created(conn, target, t.name)
            elif not await ownership.owns(conn, session.bk, target, t.name):
                raise SchemaMoved()  # not syncd's table (any more): reconcile refuses it
            aside = pgt is not None and bool(
                await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {ddl.qualified(target, t.name)})"))
            name = session.bk.aside_table(t.tid)
            await conn.execute(f"DROP TABLE IF EXISTS {ddl.qualified(session.bk.schema, name)}")  # an earlier try's
            if aside:
                await ddl.run_ddl(conn, ddl.create_aside_sql(session.bk.schema, name, t.spec))
            else:
                # Empty as it is: a DELETE, which Postgres runs also on a table another table's
                # foreign key points at (a TRUNCATE it refuses there).
                await conn.execute(f"DELETE FROM {ddl.qualified(target, t.name)}")
                if pgt is not None:
                    await ddl.follow_nullable(conn, ddl.qualified(target, t.name), t.spec, pgt)
                if pgt is not None and not ddl.diff_shape(t.spec, pgt).same:
                    slow = session.rewrite_timed_out.get(t.name)
                    pgt = await ddl.retype_linked_columns(
                        conn, target, t.spec, pgt, slow[0] if slow else None,
                        lock_wait_ms(session.settings.postgres.statement_timeout_seconds))
                if pgt is not None and not ddl.diff_shape(t.spec, pgt).same:
                    set_aside = await ddl.reshape_empty_table(conn, target, t.spec, pgt)
                    await _say_set_aside(session, conn, t.name, set_aside)
            row = changed(
                t.row, state=bk.LOADING, resume_to=None, from_seq=from_seq, snapshot_key=None, snapshot_rows=0,
                snapshot_total=total, snapshot_started_at=dt.datetime.now(dt.timezone.utc), snapshot_finished_at=None,
                reason=None, load_aside=aside,
            )
            await session.save_row(conn, row)
    except ddl.RewriteTooSlow as e:
        raise SnapshotRejected(t.name, None, _too_slow(
            session, t.name, e, "a foreign key links its columns to another table's, so both ends are retyped "
                                "together before it is loaded"), row=False) from None
    except LockNotHad:
        raise await _waits_for_lock(session, t.name) from None
    except Exception as e:
        # The table is held, to be loaded from the start once what stops it is changed.
        if not _fails_again(e):
            raise
        raise SnapshotRejected(t.name, None, f"the table could not be made ready to be loaded: {describe(e)}",
                               row=False) from None
    t.row = row
    t.writer = None
    # The driver keeps each COPY's column types by the table's name: a table (or its aside
    # table) made anew since with another type under a column's name would be written as
    # the old one's. Read again: once per load.
    await conn.reload_schema_state()
    t.computed = ddl.computed(pgt, t.spec)
    load.started = time.monotonic()
    load.rows_at_start = 0
    where = " into a table aside; the rows Postgres holds stay until it is done" if aside else ""
    session.info(f"snapshot started: {total} rows, changelog position {from_seq}{where}", table=t.name,
                 event="snapshot_started")


async def load_chunk(session: SourceSession, t: TableRuntime, load: TableLoad) -> bool:
    """Load the next chunk. Returns True when the table is fully loaded (now CATCHUP).
    Raises RowMisfit or a Postgres data error for the caller to hold the table."""
    from syncd.stream import LOCK_WAIT  # the stream's wait for a table's lock (not imported by `syncd init`)

    conn = session.pg
    assert conn is not None
    records, pos, misfit = await load.next_chunk(t.row.snapshot_key)
    if misfit is not None:
        raise misfit
    if not records and pos == t.row.snapshot_key:
        return await _finish(session, t, load)
    load.read_ahead(pos)
    writer = session.writer(t)
    into = (session.bk.schema, session.bk.aside_table(t.tid)) if t.row.load_aside else None
    quieted = []
    try:
        async with conn.transaction():
            if into is None:
                # A lock another session holds on the table (a CREATE INDEX, a LOCK TABLE) is
                # waited for LOCK_WAIT at most: the table is held by name, the others go on.
                prior = await table_locks.shorten_lock_waits(conn, LOCK_WAIT)
                quieted = await session.quiet_triggers([t.name])
            if records:  # none: every row read was of a key changed since (TableLoad.since)
                await writer.copy_in(conn, records, into)
            if into is None:
                await conn.execute("SELECT set_config('lock_timeout', $1, true)", prior)  # syncd's own tables
            row = changed(t.row, snapshot_key=pos, snapshot_rows=t.row.snapshot_rows + len(records), reason=None)
            await session.save_row(conn, row, applied=into is None)
    except app_triggers.TriggersKept as e:
        raise SnapshotRejected(t.name, None, str(e)) from None
    except Exception as e:
        if sqlstate(e) == LOCK_NOT_AVAILABLE:
            raise await _locked_by_another(session, t.name, e) from None
        # (A table syncd's role may not write, its grant revoked: held as a row refused is.)
        if not (is_data_error(e) or is_shape_error(e) or sqlstate(e) == INSUFFICIENT_PRIVILEGE):
            raise
        async with conn.transaction():
            bad = await locate_bad_row(conn, writer, records, [], copy_into=into or (session.target_schema, t.name))
        raise SnapshotRejected(t.name, bad.key if bad else None, bad.message if bad else describe(e)) from None
    app_triggers.say(session.name, quieted, disabled=True)
    t.row = row
    if into is None:
        session.loaded(t.name)
    _count_loaded(session, t)
    _progress(session, t, load)
    return False


def _count_loaded(session: SourceSession, t: TableRuntime) -> None:
    # Only a load sets it: `syncd init` (which audits) never imports the metrics.
    from syncd import metrics

    metrics.snapshot_rows_loaded.labels(session.name, t.name).set(t.row.snapshot_rows)


def _progress(session: SourceSession, t: TableRuntime, load: TableLoad) -> None:
    now = time.monotonic()
    if now - load.last_progress < PROGRESS_EVERY_SECONDS:
        return
    load.last_progress = now
    done = t.row.snapshot_rows
    rate = (done - load.rows_at_start) / max(now - load.started, 1e-6)
    total = t.row.snapshot_total or done
    left = max(total - done, 0)
    eta = f"{left / rate:.0f}s" if rate > 0 else "unknown"
    pct = f" ({100 * done / total:.0f}%)" if total else ""
    session.info(f"snapshot progress: {done}/{total} rows{pct}, {rate:.0f} rows/s, ETA {eta}", table=t.name,
                 event="snapshot_progress")


async def _finish(session: SourceSession, t: TableRuntime, load: TableLoad) -> bool:
    from syncd.stream import LOCK_WAIT  # as in load_chunk

    conn = session.pg
    assert conn is not None
    # Dated by Postgres's clock, as the checks are (a check begun before it judged rows now gone).
    if t.row.load_aside and t.name in session.replace_timed_out:
        raise SnapshotRejected(t.name, None, session.replace_timed_out[t.name], row=False)
    row = changed(t.row, state=bk.CATCHUP, snapshot_finished_at=await bk.postgres_clock(conn), reason=None,
                  load_aside=False)
    quieted = []
    try:
        async with conn.transaction():
            if t.row.load_aside:
                # As a chunk's: another session's lock on the live table holds it by name (load_chunk).
                prior = await table_locks.shorten_lock_waits(conn, LOCK_WAIT)
                quieted = await session.quiet_triggers([t.name])
                slow = session.rewrite_timed_out.get(t.name)
                set_aside = await ddl.replace_rows(conn, session.target_schema, t.spec, session.bk.schema,
                                                   session.bk.aside_table(t.tid), slow[0] if slow else None,
                                                   lock_wait_ms(session.settings.postgres.statement_timeout_seconds))
                await conn.execute("SELECT set_config('lock_timeout', $1, true)", prior)  # syncd's own tables
                await _say_set_aside(session, conn, t.name, set_aside)
            await session.save_row(conn, row, applied=True)
            await session.bk.event(conn, "snapshot_finished", t.name, f"{row.snapshot_rows} rows")
    except app_triggers.TriggersKept as e:
        raise SnapshotRejected(t.name, None, str(e)) from None
    except ddl.RetypeRefused as e:
        # Emptied to be reshaped, the other table's rows would go with its foreign key's action.
        raise SnapshotRejected(t.name, None, f"another table's foreign key points at its rows, so they are retyped "
                                             f"as they are before the reloaded ones replace them, and Postgres "
                                             f"refused: {e}; the load goes on once that is changed", row=False) \
            from None
    except ddl.ReshapeRefused as e:
        raise SnapshotRejected(t.name, None, f"another table's foreign key points at its rows, and its shape changed "
                                             f"in a way they cannot follow as they are ({e}): emptied to be reshaped, "
                                             f"that foreign key's action (ON DELETE CASCADE, SET NULL) would reach the "
                                             f"other table's rows; change the table in Postgres as SQLite has it, or "
                                             f"drop that foreign key: the load goes on once that is changed",
                               row=False) from None
    except ddl.RewriteTooSlow as e:
        raise SnapshotRejected(t.name, None, _too_slow(
            session, t.name, e, ("another table's foreign key points at its rows" if e.referenced else
                                 "its foreign key points at another table's rows")
            + f", so {_changed_as_they_are(e)} before the reloaded ones replace them"), row=False) from None
    except LockNotHad:
        raise await _waits_for_lock(session, t.name) from None
    except Exception as e:
        if sqlstate(e) == LOCK_NOT_AVAILABLE:
            raise await _locked_by_another(session, t.name, e) from None
        if t.row.load_aside and (isinstance(e, TimeoutError) or sqlstate(e) == QUERY_CANCELED
                                 and "statement timeout" in str(e)):
            if conn.is_closed():
                raise  # an outage, not a slow replacement: retried as one
            # The same replacement would run as long, and over, at every try (a large table, a
            # slow server): the table waits, its rows in Postgres as they were, the others go on.
            why = (f"its reloaded rows replace the live ones in one transaction, which ran over [postgres] "
                   f"statement_timeout_seconds ({session.settings.postgres.statement_timeout_seconds:g} s) or the "
                   f"statement_timeout Postgres has for syncd's role ({describe(e)}); the rows Postgres holds stay "
                   f"as they were: raise the timeout and restart the daemon, the reload then ends")
            session.replace_timed_out[t.name] = why
            raise SnapshotRejected(t.name, None, why, row=False) from None
        if not _fails_again(e):
            raise
        # The reloaded rows do not fit the live table (a key Postgres holds once that
        # SQLite holds twice, say): the old rows stay, the table is held until it fits.
        # A refusal of the table itself (a view over a column its reshape retypes, say)
        # rejected no row.
        raise SnapshotRejected(t.name, None, f"the reloaded rows could not replace the live ones: {describe(e)}",
                               row=is_data_error(e)) from None
    app_triggers.say(session.name, quieted, disabled=True)
    t.row = row
    session.loaded(t.name)
    elapsed = time.monotonic() - load.started
    loaded = row.snapshot_rows - load.rows_at_start
    rate = f"{loaded / max(elapsed, 1e-6):.0f} rows/s"
    # A load resumed (after a restart or a failed chunk) was timed from the resume only.
    took = (f"{row.snapshot_rows} rows, the last {loaded} of them in {elapsed:.1f}s since it resumed ({rate})"
            if load.rows_at_start else f"{row.snapshot_rows} rows in {elapsed:.1f}s ({rate})")
    session.info(f"snapshot finished: {took}; catching up from changelog position {row.from_seq}",
                 table=t.name, event="snapshot_finished")
    _count_loaded(session, t)
    return True


def _changed_as_they_are(e: ddl.RewriteTooSlow) -> str:
    """What is done to the table's rows as they are before its reload, as the statements
    that ran over the timeout do it."""
    if e.retyped and e.keyed_anew:
        return "they are retyped and keyed anew as they are"
    return "they are keyed anew as they are" if e.keyed_anew else "they are retyped as they are"


async def _locked_by_another(session: SourceSession, table: str, exc: BaseException) -> SnapshotRejected:
    """The table is held (tried again every [stream] held_table_retry_seconds, the
    source's other tables going on): another Postgres session kept a lock on it past the
    load's wait (LOCK_WAIT); those holding one are named."""
    assert session.pg is not None
    holders = await table_locks.table_holders(session.pg, session.target_schema, [table],
                                              table_locks.IN_THE_WAY_OF_WRITES)
    return SnapshotRejected(table, None, f"{table_locks.LOCK_HELD[0]}{holders} (an open transaction, a long ALTER "
                                         f"TABLE or CREATE INDEX); its load goes on where it is once the lock is gone "
                                         f"({describe(exc)})", row=False)


async def _waits_for_lock(session: SourceSession, table: str) -> SnapshotRejected:
    """The table is held (tried again every [stream] held_table_retry_seconds, the
    source's other tables going on): its rows are retyped as they are before its load
    (ddl.replace_rows, ddl.retype_linked_columns), and another session kept a lock on
    it past the retype's lock wait; those holding one are named."""
    assert session.pg is not None
    holders = await table_locks.table_holders(session.pg, session.target_schema, [table])
    wait = lock_wait_ms(session.settings.postgres.statement_timeout_seconds)
    return SnapshotRejected(table, None, f"its rows are changed in place before it is loaded again, and another "
                                         f"Postgres session holds the table past {wait} ms: {holders} (a long query "
                                         "or transaction); tried again until the lock is gone", row=False)


def _too_slow(session: SourceSession, table: str, e: ddl.RewriteTooSlow, why: str) -> str:
    """Why the table is held: its retype (`why` it is done), a rewrite of the table under
    an exclusive lock all along, would run as long, and over, at every try: tried again
    after a restart of the daemon (a longer timeout)."""
    slow = session.rewrite_timed_out.get(table)
    if slow is None or slow[0] != e.alters:
        over = (f"the statement_timeout Postgres has for syncd's role or database ({e.server})" if e.server else
                f"[postgres] statement_timeout_seconds ({session.settings.postgres.statement_timeout_seconds:g} s)")
        change = "a rewrite of the table" if e.retyped else "a change of the table under an exclusive lock"
        slow = (e.alters, f"{why}, {change} that ran over {over}; raise the timeout and restart the "
                          f"daemon, or run {e.alters} in Postgres: the load then goes on")
        session.rewrite_timed_out[table] = slow
    return slow[1]


async def _say_set_aside(session: SourceSession, conn, table: str, set_aside: list[tuple[str, str]]) -> None:
    for col, aside in set_aside:
        session.warning(f'column "{col}" is no longer in SQLite\'s table (rebuilt without it): kept aside in Postgres '
                        f'as "{aside}", empty (the table was loaded again); drop it there once nothing needs it',
                        table=table, event="column_dropped")
        await session.bk.event(conn, "column_dropped", table, f'"{col}" kept aside as "{aside}"')


DEPENDENT_OBJECTS = "2BP01"  # dependent_objects_still_exist


def _fails_again(e: BaseException) -> bool:
    """Whether Postgres's refusal to make a table ready for its load, or to take the loaded
    rows in, comes again at every try until the application changes something there: a
    row or shape that does not fit; a column the reshape retypes used by a view or a
    generated column of the application's (FEATURE_NOT_SUPPORTED, but not a statement
    prepared before a table changed: tried again, that goes through); a foreign key of its
    on the key the reshape drops (DEPENDENT_OBJECTS); a table syncd's role may not write."""
    return (is_data_error(e) or is_shape_error(e) or sqlstate(e) == "0A000" and not plan_outdated(e)
            or sqlstate(e) in (DEPENDENT_OBJECTS, INSUFFICIENT_PRIVILEGE))


class SchemaMoved(Exception):
    """The table's schema changed under the load: reconcile, then load again."""


class SnapshotRejected(Exception):
    """The table is held: Postgres rejected a row of the load, or (`row` False) the table
    itself, as `message` says (a retype Postgres refused or that ran too long)."""

    def __init__(self, table: str, key: tuple | None, message: str, row: bool = True):
        from syncd.sqlite.audit import format_key

        self.table, self.key, self.message = table, key, message
        where = f" key {format_key(key)}" if key is not None else ""
        super().__init__(f'table "{table}"{where}: {"Postgres rejected the row: " if row else ""}{message}')
