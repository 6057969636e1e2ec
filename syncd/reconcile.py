"""Bring capture (SQLite) and the replica tables (Postgres) in line with the source's
current schema. Run by `init`, at daemon start, whenever SQLite's schema_version
moves, and when the file is replaced.

Rules: capture first (so no change goes unrecorded), never drop anything in Postgres
on syncd's own initiative, and when capture had a gap, re-snapshot.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncpg

from syncd import collisions, parity, table_locks
from syncd.identifiers import qualified, quote_literal, quote_pg_ident
from syncd.model import TO_POSTGRES, SourceSchema, TableSpec
from syncd.postgres import bookkeeping as bk
from syncd.postgres import ddl, ownership
from syncd.postgres.bookkeeping import TableRow
from syncd.postgres.connect import QUERY_CANCELED, describe, is_transient, plan_outdated, sqlstate
from syncd.rows import RowConverter, RowMisfit
from syncd.session import SourceSession, TableRuntime, changed, new_row
from syncd.sqlite import capture, leftout, reader
from syncd.sqlite.capture import CaptureState, trigger_names
from syncd.sqlite.connection import another_name_there, damaged, registered_under_another_name
from syncd.sqlite.hold import RowsPerHold
from syncd.sqlite.introspect import introspect, journal_mode, schema_version
from syncd.types import NO_VALUES_YET, PgType, canonical


@dataclass
class CaptureResult:
    schema: SourceSchema
    state: CaptureState
    gaps: dict[str, str] = field(default_factory=dict)  # tables to re-snapshot -> why (a capture gap, ...)
    renamed: dict[str, str] = field(default_factory=dict)  # old name -> table its triggers now sit on


def capture_gap(state: CaptureState, tid: int, spec: TableSpec) -> bool:
    """True if a trigger every change depends on was missing (or sat on another
    table): changes may have gone unrecorded. A trigger whose text merely differs
    (an older syncd, a renamed column) recorded everything; it is re-armed in place."""
    names = trigger_names(tid)
    for kind in ("ins", "upd", "key", "del"):
        have = state.triggers.get(names[kind])
        if have is None or have[0] != spec.name:
            return True
    return False


ARM_ROUNDS = 5
ANOTHER_TABLE_REASON = ("a new table took the name of one renamed in SQLite, whose rows Postgres holds under that "
                        "name: loading the new table in their place")


async def install_capture(session: SourceSession, sticky: dict[str, dict[str, PgType]] | None = None,
                          retyped: dict[str, dict[str, tuple[PgType, str | None]]] | None = None) -> CaptureResult:
    """SQLite side only: capture objects and triggers on every wanted table. Works
    while Postgres is down, so changes are recorded from the first moment.

    Arming a trigger changes the schema, and so may the application while syncd waits
    for the write lock: after arming, the schema is read again (with its version, in
    one transaction) until a read needs no more arming. The specs returned are then
    exactly those of the version syncd will compare batch reads against."""
    busy = session.settings.sqlite.write_busy_timeout_ms
    w = session.worker
    state = await w.run(capture.install_base, busy)
    session.journal_mode = await w.run(journal_mode)
    renamed: dict[str, str] = {}
    for _round in range(ARM_ROUNDS):
        schema = await w.run(introspect, session.source, sticky, retyped)
        # Capture read after the schema, never before: a table renamed in between would
        # look new (its triggers where they were), be registered anew and lose its id.
        # Read after, what moved since is armed against a version that moved, and read again.
        state = await w.run(capture.read_state)
        # Where do each registered table's triggers sit now? They follow an ALTER TABLE
        # RENAME: the registry follows too, so the table keeps its id and its queued
        # changes, and Postgres renames its copy (see _follow_renames).
        moved = retyped_moved = False
        for name, (tid, _key) in list(state.registry.items()):
            owner = capture.describe_trigger_owner(state, tid)
            # The name may be a dropped table's (its triggers went with it): renamed onto it.
            dropped = (owner in state.registry
                       and capture.describe_trigger_owner(state, state.registry[owner][0]) is None)
            # The name may have a new table already (renamed and created again in one
            # transaction): the triggers did not move to it, the renamed table has them.
            if (owner is not None and owner != name and owner in schema.tables
                    and (owner not in state.registry or dropped)):
                await w.run(capture.rename_registered, tid, owner, busy)
                renamed[name] = owner
                moved = True
                if retyped and name in retyped:
                    # Its typed columns go with it: a table under its old name now is another.
                    retyped = {**{t: c for t, c in retyped.items() if t != name}, owner: retyped[name]}
                    retyped_moved = True
        if _round == 0 and await w.run(capture.note_rebuilt, busy):
            moved = True  # rebuilt tables are marked for a re-snapshot, as a capture gap is
        if moved:
            state = await w.run(capture.read_state)
        if retyped_moved:
            continue  # read again with the types where they are now
        armed = False
        version: int | None = schema.version
        for name, spec in schema.tables.items():
            tid = state.tid_of(name)
            if tid is not None and state.triggers_match(tid, spec):
                continue
            gap = tid is not None and capture_gap(state, tid, spec)
            # An application trigger that can end a change's triggers (RAISE(IGNORE)) fired
            # before syncd's: syncd's are made anew to fire first, and the table is loaded
            # again (changes it ended until now may not have been recorded).
            outrun = tid is not None and name in state.outrun
            if outrun:
                gap = capture.outrun_reason(state.outrun[name])
            elif tid is not None and capture.missed_generated_key(state, tid, spec):
                gap = capture.GENERATED_KEY_REASON
            armed = True
            version = await w.run(capture.arm_table, spec, busy, gap, version, outrun)
            if version is None:
                break  # the application changed the schema meanwhile: read it again
        for name, (tid, _key) in state.registry.items():
            if version is None:
                break
            if name not in schema.tables and any(n in state.triggers for n in trigger_names(tid).values()):
                armed = True
                version = await w.run(capture.disarm_table, tid, busy, version)
        if not armed:
            break  # the state read above is the schema's
        state = await w.run(capture.read_state)
    keyless = sorted(n for n, spec in schema.tables.items() if spec.rowid_keyed)
    if await w.run(capture.note_schema, keyless, busy):
        state = await w.run(capture.read_state)

    result = CaptureResult(schema=schema, state=state, renamed=renamed)
    result.gaps = {n: why for n, why in state.rearmed.items() if n in schema.tables}
    session.capture = state
    session.schema_version = schema.version
    session.refused = {n: r.reason for n, r in schema.refused.items()}
    for name, lo in schema.left_out.items():
        if name not in session.skipped:
            log = session.warning if lo.holds_data else session.info
            log(f"not replicated: {lo.describe()}", table=name, event="table_skipped")
    session.skipped = dict(schema.skipped)
    unmatched = session.source.unmatched_tables(schema.names)
    for line in unmatched:
        if line not in session.unmatched:  # once, not at every recheck
            session.warning(line, event="setting_unused")
    session.unmatched = unmatched
    return result


def _resume_target(row: TableRow, applied_seq: int) -> tuple[str, int | None]:
    """Where a table picks up after a pause, and from which changelog position."""
    if row.state == bk.STREAMING:
        return bk.CATCHUP, applied_seq
    if row.state == bk.CATCHUP:
        return bk.CATCHUP, row.from_seq
    if row.state in (bk.HELD, bk.PAUSED):
        return row.resume_to or bk.PENDING, row.from_seq
    return bk.PENDING, None


def _paused(row: TableRow, reason: str, applied_seq: int, force_reload: bool = False) -> TableRow:
    if row.state == bk.PAUSED:
        resume_to, from_seq = row.resume_to, row.from_seq
    else:
        resume_to, from_seq = _resume_target(row, applied_seq)
    if force_reload or resume_to == bk.LOADING:
        resume_to = bk.PENDING
    return changed(row, state=bk.PAUSED, resume_to=resume_to, from_seq=from_seq, reason=reason)


def _pending(row: TableRow, reason: str | None) -> TableRow:
    return changed(row, state=bk.PENDING, resume_to=None, from_seq=None, snapshot_key=None, snapshot_rows=0,
                   reason=reason, load_aside=False)


async def sticky_types(session: SourceSession) -> dict[str, dict[str, PgType]]:
    """Postgres column types already chosen, so value-inferred types do not flip."""
    assert session.pg is not None
    return ddl.kept_types(await ddl.read_tables(session.pg, session.target_schema))


async def reconcile(session: SourceSession) -> CaptureResult:
    """Full reconciliation; needs Postgres. Leaves session.tables current."""
    conn = session.pg
    assert conn is not None
    # What install_capture and the checks below need of Postgres, in one read-only
    # snapshot: a quiet source's full check costs Postgres few transactions.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        sticky = await sticky_types(session)
        requested = await _resync_requests(session)
        retyped = await parity.retyped_columns(conn, session.bk.schema, session.name)
    result = await install_capture(session, sticky, retyped)
    # Before the transaction: checking a table reads every page of it, which may take
    # longer than Postgres lets a transaction sit idle.
    tables = result.schema.tables
    checked = {name: await _unreadable(session, tables[name]) for name in requested if name in tables}
    try:
        async with conn.transaction():
            runtimes = await _reconcile_postgres(session, result, checked)
    except sqlite3.OperationalError as e:
        # A table or column renamed or dropped in SQLite since its schema was read, while its
        # rows were read here (to tell a rename from a drop): nothing of this transaction
        # stays; the schema is read again, and the change followed.
        if not _schema_moved(e) or await session.worker.run(schema_version) == result.schema.version:
            raise
        return await reconcile(session)
    session.tables = runtimes
    if retyped and await parity.retyped_columns(conn, session.bk.schema, session.name) != retyped:
        # a typed column (or its table) followed a rename, or is another column now: read it with its type
        return await reconcile(session)
    if result.state.rearmed and session.direction == TO_POSTGRES:
        # Postgres now has those tables scheduled for a re-snapshot (committed above).
        # Cut over, nothing was scheduled: the marks stay for the way back (a keyless
        # table's rowids renumbered, see reverse.pipeline) and for after a rollback.
        await session.worker.run(capture.clear_rearmed, sorted(result.state.rearmed),
                                 session.settings.sqlite.write_busy_timeout_ms)
    # Indexes and constraints the application's schema has, in their dual-write form.
    if await parity.ensure(session, result.schema):
        return await reconcile(session)  # columns were retyped: read them with their new types
    return result


def _schema_moved(e: sqlite3.OperationalError) -> bool:
    """SQLite's error for a statement naming a table or column its schema no longer has."""
    return str(e).startswith(("no such table", "no such column"))


class WideningTooSlow(Exception):
    """Turning a column type back in place rewrote the table past the statement timeout:
    the table pauses, saying so (str), instead of the source trying it for good."""


async def _widen_in_place(session: SourceSession, target: str, name: str,
                          retyped: list[tuple[str, str, str]]) -> bool:
    """A column type the application narrowed in Postgres after a cutover (varchar(10),
    numeric(12,2), or an integer column of a table it made there) turned back into syncd's
    own in place, every value staying as it is (ddl.widens_in_place): no reload,
    which would replace rows the application's own foreign keys may point at. False
    (reload as for any other type change) when a column is not such a case, the table
    stays busy past the lock wait, or Postgres refuses (a view uses the column).
    WideningTooSlow when the rewrite ran over the statement timeout (the table pauses)."""
    if not all(ddl.widens_in_place(have, want) for _c, have, want in retyped):
        return False
    conn = session.pg
    assert conn is not None
    table = qualified(target, name)
    what = ", ".join(f"{c}: {have} -> {want}" for c, have, want in retyped)
    timed_out = session.rewrite_timed_out.get(name)
    if timed_out is not None and timed_out[0] == what:
        raise WideningTooSlow(timed_out[1])
    prior = await conn.fetchval("SELECT current_setting('lock_timeout')")
    wait_ms = parity.lock_wait_ms(session.settings.postgres.statement_timeout_seconds)
    await conn.execute(f"SET LOCAL lock_timeout = '{wait_ms}ms'")
    over: str | None = None
    try:
        async with conn.transaction():
            for c, _have, want in retyped:
                await ddl.run_ddl(conn, f"ALTER TABLE {table} ALTER COLUMN {quote_pg_ident(c)} TYPE {want}")
    except TimeoutError:
        if conn.is_closed():
            raise  # an outage: the step ends and is retried
        over = f"[postgres] statement_timeout_seconds ({session.settings.postgres.statement_timeout_seconds:g} s)"
    except asyncpg.PostgresError as e:  # busy past the lock wait, or refused (a view uses the column, say)
        if sqlstate(e) != QUERY_CANCELED or "statement timeout" not in str(e):
            return False
        over = f"the statement_timeout Postgres has for syncd's role or database ({describe(e)})"
    finally:
        await conn.execute("SELECT set_config('lock_timeout', $1, true)", prior)
    if over is not None:
        # The rewrite (the table under an exclusive lock all along) would run as long, and
        # over, at every try: tried again after a restart of the daemon (a longer timeout).
        alters = "; ".join(f"ALTER TABLE {table} ALTER COLUMN {quote_pg_ident(c)} TYPE {want}"
                           for c, _have, want in retyped)
        reason = (f"column types changed in Postgres ({what}): turning them back in place rewrites the table, and "
                  f"that ran over {over}; its changes stay queued. Raise the timeout and restart the daemon, or run "
                  f"{alters} in Postgres: the table resumes")
        session.rewrite_timed_out[name] = (what, reason)
        raise WideningTooSlow(reason)
    session.info(f"column types changed in Postgres ({what}): turned back in place, every value as it was",
                 table=name, event="table_retyped")
    return True


async def _reconcile_postgres(session: SourceSession, result: CaptureResult,
                              checked: dict[str, str | None]) -> dict[str, TableRuntime]:
    """The Postgres half of reconcile; the caller runs it in one transaction, so a
    crash leaves either the old state or the new one, never half of a reset. `checked`:
    each table with a resync request, and why its pages cannot be read (None: they can)."""
    conn = session.pg
    assert conn is not None
    state, schema = result.state, result.schema
    assert state.capture_id is not None
    target = session.target_schema

    # The direction first, its row locked until this transaction ends: `syncd cutover`
    # locks it before reshaping Postgres, so a reconcile either finishes before the
    # cutover's transaction or sees its new direction (and never reloads over its types).
    session.direction = await conn.fetchval(
        f"SELECT direction FROM {session.bk.s}.sources WHERE source = $1 FOR SHARE", session.name) or TO_POSTGRES
    if session.direction == TO_POSTGRES:
        await _registered_file_still_there(session)
    # Before anything else is locked: another source's reconcile may hold the id's lock.
    cloned = session.direction == TO_POSTGRES and await _own_capture_id(session, state)
    await bk.ensure_schema(conn, target)
    src = await session.bk.load_source(conn)
    if session.direction != TO_POSTGRES:
        # Cut over: the application owns Postgres's tables now and the way back follows
        # them (syncd/reverse); nothing here may reshape, pause or reset them.
        return dict(session.tables)
    if src is None:
        await session.bk.upsert_source(conn, state.capture_id, str(session.source.path), target)
        session.applied_seq = 0
    else:
        session.applied_seq = await _resume_position(session, src, state, cloned=cloned)
        path = str(session.source.path)
        if another_name_there(src.sqlite_path, path):
            # Moved to another name of its file (hard links: a fleet flattened with `cp -al`):
            # followed by this one, registered at the other while it is there, and said.
            session.warning(registered_under_another_name(path, src.sqlite_path, session.name), event="same_file")
            path = src.sqlite_path
        if (src.sqlite_path, src.target_schema) != (path, target):  # written only when moved
            await session.bk.upsert_source(conn, state.capture_id, path, target)
        if src.applied_at is not None:
            session.applied_at = src.applied_at.timestamp()
        session.lag_from = src.lag_from.timestamp()

    rows = await session.bk.load_tables(conn)
    requests = await _resync_requests(session)
    pg_tables = await ddl.read_tables(conn, target)
    renamed = await _follow_renames(session, state, schema, rows, pg_tables)
    # Columns schema parity typed in a renamed table: introspection read them untyped
    # (bookkeeping named the old table; reconcile reads them again with their types).
    typed = await parity.retyped_columns(conn, session.bk.schema, session.name) if renamed else {}
    followed = src.schema_version if src is not None else None
    moved = followed is not None and followed != schema.version  # the application changed the schema
    if followed != schema.version:
        await session.bk.followed_schema(conn, schema.version)
    runtimes: dict[str, TableRuntime] = {}
    # A Postgres relation of the same name that syncd did not create is left alone.
    session.refused.update(await ownership.not_ours(conn, session.bk, target, schema.tables))
    # Every table's lookup indexes in one query, read after the renames above; a table
    # whose shape changes below, or that is dropped or created, has its own read again.
    indexes = await collisions.lookup_indexes(conn, target)

    for name, spec in schema.tables.items():
        if name in session.refused:
            continue
        if name in renamed:
            spec = _typed_as(spec, {c: t for c, t in typed.get(name, {}).items()
                                    if session.source.column_override(name, c) is None})
        tid = state.tid_of(name)
        assert tid is not None
        row = rows.get(name)
        pgt = pg_tables.get(name)
        if row is not None and row.tid is not None and row.tid != tid and name not in result.gaps:
            # Postgres's copy is of another table: one renamed away (whose new name Postgres
            # could not give it); the table under its old name now is a new one, loaded anew.
            result.gaps[name] = ANOTHER_TABLE_REASON
        if name in requests and pgt is not None:
            problem = checked.get(name)
            if name not in checked:  # requested since the check: the next recheck takes it up
                requests.discard(name)
            elif problem is not None:
                # The Postgres copy may be the only whole one left: kept, and the request
                # stays pending until the file reads whole (restored from a backup).
                requests.discard(name)
                if session.resync_held.get(name) != problem:  # once, not every recheck
                    session.error(f"resync requested but not done: {problem}; the Postgres copy is kept and the "
                                  "request stays pending until the table reads whole", table=name,
                                  event="resync_held")
                session.resync_held[name] = problem
        if name in requests and pgt is not None and name in session.resync_blockers:
            # The transactions that kept the drop waiting at the last recheck keep the table
            # still: not waited for again (each wait stalls the source's stream), said already.
            still = await table_locks.holding(conn, target, name, session.resync_blockers.pop(name))
            if still:
                requests.discard(name)
                session.resync_blockers[name] = still
        if name in requests and pgt is not None:
            # Waited for a while at most: a session keeping the table (an open transaction
            # that used it) would otherwise hold up the whole source for a statement timeout.
            wait_ms = parity.lock_wait_ms(session.settings.postgres.statement_timeout_seconds)
            try:
                async with conn.transaction():  # a savepoint
                    prior = await conn.fetchval("SELECT current_setting('lock_timeout')")
                    await table_locks.shorten_lock_waits(conn, f"{wait_ms}ms")
                    await conn.execute(f"DROP TABLE IF EXISTS {qualified(target, name)}")
                    await conn.execute("SELECT set_config('lock_timeout', $1, true)", prior)
            except asyncpg.LockNotAvailableError:
                requests.discard(name)
                session.resync_blockers[name] = await table_locks.holding(conn, target, name)
                holders = await table_locks.table_holders(conn, target, [name])
                problem = f"{table_locks.LOCK_HELD[1]}{wait_ms} ms: {holders}"
                # Once while the lock lasts, not at every recheck (whoever holds it, in whatever state).
                if table_locks.said_once(session.resync_held.get(name)) != table_locks.said_once(problem):
                    session.error(f"resync requested but not done: {problem}; the Postgres copy is kept and the "
                                  "request stays pending until the lock is gone", table=name, event="resync_held")
                session.resync_held[name] = problem
            except asyncpg.DependentObjectsStillExistError as e:
                # A view (or a foreign key) of someone's over the table: kept, and the request
                # stays pending until nothing depends on the table.
                requests.discard(name)
                what = "; ".join(" ".join(x.split()) for x in (e.detail or "").splitlines() if x.strip())
                problem = f"Postgres keeps the table while other objects depend on it ({what or describe(e)})"
                if session.resync_held.get(name) != problem:  # once, not every recheck
                    session.error(f"resync requested but not done: {problem}; the Postgres copy streams on as it is "
                                  "and the request stays pending until they are dropped", table=name,
                                  event="resync_held")
                session.resync_held[name] = problem
        if name in requests and pgt is not None:
            session.resync_held.pop(name, None)
            await conn.execute(f"DROP TABLE IF EXISTS {qualified(session.bk.schema, session.bk.aside_table(tid))}")
            session.info("resync requested: Postgres table dropped, rebuilding it from SQLite", table=name,
                         event="resync")
            pgt = None
            row = _pending(row or new_row(name, tid), "resync requested")
        retired: tuple = ()
        try:
            async with conn.transaction():  # a savepoint: one table that cannot follow stops only itself
                new = await _reconcile_table(session, spec, tid, row, pgt, result.gaps.get(name), moved)
                if new != row:
                    await session.save_row(conn, new)
                if new.state != bk.PAUSED:
                    # What was read before this table's DDL, if it had none: a column dropped
                    # (an index over it goes with it) or a table created reads its own again.
                    have = indexes.get(name, {}) if pgt is not None and ddl.diff_shape(spec, pgt).same else None
                    columns = None
                    if have is None and pgt is not None:  # reshaped: one to be loaded again may lack columns yet
                        now = (await ddl.read_tables(conn, target)).get(name)
                        columns = frozenset(c.name for c in now.columns) if now is not None else frozenset()
                    # A held or catching-up table applies changes from its own position: a unique
                    # set dropped since stays while that is behind the drop too.
                    position = session.applied_seq if new.from_seq is None else min(session.applied_seq,
                                                                                   new.from_seq)
                    retired = await collisions.ensure_indexes(conn, target, spec, position,
                                                              state.max_seq, have, columns)
                    pgt = pg_tables.get(name) or (await ddl.read_tables(conn, target)).get(name)
                    if pgt is not None:
                        await ddl.ensure_identity(conn, target, spec, pgt)
        except asyncpg.PostgresError as e:
            if is_transient(e) or plan_outdated(e):  # the latter prepared anew, the step goes through
                raise
            reason = (f"could not follow the table's schema in Postgres ({describe(e)}); its changes stay queued: "
                      "`syncd resync` rebuilds it from SQLite")
            if row is None or row.state != bk.PAUSED or row.reason != reason:  # once, not every recheck
                session.error(f"table paused: {reason}", table=name, event="table_paused")
            # A capture gap's mark is cleared below: the pause keeps the reload it asked for.
            new = _paused(row or new_row(name, tid), reason, session.applied_seq, force_reload=name in result.gaps)
            await session.save_row(conn, new)
        runtimes[name] = _runtime(session, spec, tid, new, await _computed(conn, target, spec, pgt))
        runtimes[name].retired_unique = retired
    if requests:
        await conn.execute(
            f"UPDATE {session.bk.s}.tables SET request = NULL WHERE source = $1 AND table_name = ANY($2::text[])",
            session.name, list(requests),
        )

    for name, reason in session.refused.items():
        row = rows.get(name)
        if row is None or row.state != bk.REFUSED or row.reason != reason:
            await session.save_row(conn, changed(row or new_row(name, None), state=bk.REFUSED, reason=reason))
            session.warning(f"table not replicated: {reason}", table=name, event="table_refused")

    for name, row in rows.items():
        if name in schema.tables or name in session.refused:
            continue
        left = schema.left_out.get(name)
        # A view or virtual table under its name now is no table of the configured set: the
        # table was dropped (kept aside below), and the name is free for what took it.
        if (left.kind == leftout.EXCLUDED) if left is not None else await _exists_in_sqlite(session, name):
            # Left the configured set: stop tracking; Postgres copy stays.
            await conn.execute(
                f"DELETE FROM {session.bk.s}.tables WHERE source = $1 AND table_name = $2", session.name, name
            )
            session.info("table is no longer configured for replication; its Postgres copy is left as is",
                         table=name, event="table_removed")
            continue
        # Only a copy syncd made is moved: a refused table never had one.
        ours = (await session.bk.owners(conn, target)).get(name) == session.name
        await _keep_dropped_aside(session, name, name in pg_tables and row.state != bk.REFUSED and ours)

    return runtimes


async def _follow_renames(session: SourceSession, state: CaptureState, schema: SourceSchema,
                          rows: dict[str, TableRow], pg_tables: dict[str, ddl.PgTable]) -> set[str]:
    """A table renamed in SQLite keeps its id in the registry (install_capture moves
    it), so a bookkeeping row under the old name with that id is the same table:
    rename the Postgres copy and the row, and it streams on without a reload. Derived
    from what both sides hold durably, so a crash in between is simply redone. Returns
    the new names of the tables renamed."""
    followed: set[str] = set()
    conn = session.pg
    assert conn is not None
    by_tid = {row.tid: name for name, row in rows.items() if row.tid is not None}
    owners = await session.bk.owners(conn, session.target_schema)
    for name in schema.tables:
        old = by_tid.get(state.tid_of(name))
        if old is not None and old != name and name in rows \
                and rows[name].tid is not None and capture.dropped_name(rows[name].tid) in state.registry:
            # Renamed onto the name of a table dropped meanwhile: that one is kept aside first.
            ours = owners.get(name) == session.name
            aside = name in pg_tables and rows[name].state != bk.REFUSED and ours
            await _keep_dropped_aside(session, name, aside)
            del rows[name]
            if aside:  # a relation not syncd's keeps the name: the rename below then stops, as ever
                pg_tables.pop(name, None)
        if old is None or old == name or name in rows:
            continue  # (a table under the old name again is a new one: the registry gave it another id)
        if name in pg_tables or old not in pg_tables or owners.get(old) != session.name:
            continue  # something else already holds the new name: the old copy is kept aside below
        await conn.execute(f"ALTER TABLE {qualified(session.target_schema, old)} RENAME TO {quote_pg_ident(name)}")
        await session.bk.record_renamed(conn, session.target_schema, old, name)
        await conn.execute(f"UPDATE {session.bk.s}.tables SET table_name = $3 WHERE source = $1 AND table_name = $2",
                           session.name, old, name)
        # Its typed columns too (any left under the new name are a dropped table's).
        await conn.execute(f"DELETE FROM {session.bk.s}.columns WHERE source = $1 AND table_name = $2",
                           session.name, name)
        await conn.execute(f"UPDATE {session.bk.s}.columns SET table_name = $3 WHERE source = $1 AND table_name = $2",
                           session.name, old, name)
        followed.add(name)
        # The same table: its verification history (errors found under the old name too)
        # goes on under the new one, as the report's dual-write window judges it.
        await conn.execute(f"UPDATE {session.bk.s}.verify_runs SET table_name = $3 "
                           "WHERE source = $1 AND table_name = $2", session.name, old, name)
        await session.bk.event(conn, "table_renamed", name, f'renamed from "{old}" in SQLite')
        rows[name] = changed(rows.pop(old), table_name=name)
        pg_tables[name] = pg_tables.pop(old)
        session.info(f'table "{old}" was renamed to "{name}" in SQLite: renamed in Postgres too, streaming on',
                     table=name, event="table_renamed")
    return followed


async def _keep_dropped_aside(session: SourceSession, name: str, in_postgres: bool) -> None:
    """A table dropped in SQLite: its Postgres copy is kept under another name, never
    destroyed, and syncd stops tracking it."""
    conn = session.pg
    assert conn is not None
    where = ""
    if in_postgres:
        taken = {r[0] for r in await conn.fetch("SELECT c.relname FROM pg_class c JOIN pg_namespace n "
                                               "ON n.oid = c.relnamespace WHERE n.nspname = $1",
                                               session.target_schema)}
        aside = ddl.aside_name(name, dt.datetime.now(dt.timezone.utc), taken)
        await conn.execute(f"ALTER TABLE {qualified(session.target_schema, name)} RENAME TO {quote_pg_ident(aside)}")
        await session.bk.record_renamed(conn, session.target_schema, name, aside)
        where = f'; its Postgres copy is kept as "{aside}" (drop it there once nothing needs it)'
    await conn.execute(f"DELETE FROM {session.bk.s}.tables WHERE source = $1 AND table_name = $2", session.name, name)
    # Its typed columns too: a table created later under its name is another table.
    await conn.execute(f"DELETE FROM {session.bk.s}.columns WHERE source = $1 AND table_name = $2", session.name, name)
    await session.bk.event(conn, "table_dropped", name, f"dropped in SQLite{where}")
    session.warning(f"table was dropped in SQLite{where}", table=name, event="table_dropped")


class SameFileAsAnotherSource(Exception):
    """The source's file is another running source's file (a symlink or hard link that
    appeared after the configuration was checked, or a second daemon's configuration):
    taking a capture id of its own would make the other take one back, re-snapshotting
    both forever. The source that runs it keeps it."""


async def _registered_file_still_there(session: SourceSession) -> None:
    """A glob's source whose file is another file than the one it is registered for,
    while that one is there and the glob gives it this name too (two tenants' files the
    template names alike, the daemon started while Postgres was away, which left it to
    the globs' own order): loading this file would put its rows in place of the other's."""
    if session.name in {c.name for c in session.settings.configured}:
        return  # configured by itself: a path changed in the configuration is the operator's
    registered = await session.pg.fetchval(f"SELECT sqlite_path FROM {session.bk.s}.sources WHERE source = $1",
                                           session.name)
    if not registered or registered == str(session.source.path) or not os.path.isfile(registered):
        return
    try:
        if os.path.samefile(registered, session.source.path):
            return
    except OSError:
        return
    if _globbed_as(session, registered, session.name):
        raise SameFileAsAnotherSource(
            f"source {session.name!r} is registered for {registered}, which is there still: "
            f"{session.source.path} (given the same name by the glob) is not loaded in its place; restart "
            f"syncd to follow {registered} again, and rename the other file to carry it")


def _globbed_as(session: SourceSession, path: str, name: str) -> bool:
    """Whether a glob of the configuration matches the file at `path` and gives it `name`."""
    from syncd.discovery import _fill, glob_matches

    return any(glob_matches(path, g.path) and _fill(g.name, Path(path)) == name
               for g in session.settings.patterns)


def _configured_here(session: SourceSession, other: str, path: str) -> bool:
    """Whether `other`, registered for the file at `path`, is a source of this
    configuration: configured by that name, or a glob matching `path` gives it that name."""
    return other in {c.name for c in session.settings.configured} or _globbed_as(session, path, other)


async def _same_file_as_running(session: SourceSession, other: str) -> bool:
    row = await session.pg.fetchrow(f"SELECT sqlite_path FROM {session.bk.s}.sources WHERE source = $1", other)
    try:
        if row is None or not row[0] or not os.path.samefile(row[0], session.source.path):
            return False
    except OSError:
        return False  # the other's file is gone or moved: this is a copy, or the file renamed
    from syncd.verify.postgres_side import lock_holder  # a rare path: a file carrying another's capture id

    keys = await bk.source_keys(session.pg, session.bk.schema, [other], assign=False)
    return await lock_holder(session.pg, keys[other]) is not None  # a source renamed in the config: not running


async def _own_capture_id(session: SourceSession, state: CaptureState) -> bool:
    """A capture id stands for one source's file. A file copied from another source's
    (a tenant provisioned with `cp acme.db globex.db`) arrives with capture installed
    and that source's id: were it kept, the file overwritten later by a newer copy of
    the original would look like this source's own history, and its changes would
    stream on over this source's rows. Such a file gets an id of its own (syncd's meta
    row, nothing of the application's) and, to this source, is a new file: every table
    is loaded from it. True when that happened (said here, in one line)."""
    other = await session.bk.capture_id_of_another(session.pg, state.capture_id)
    if other is None:
        return False
    if await _same_file_as_running(session, other):
        raise SameFileAsAnotherSource(
            f"{session.source.path} is the SQLite file of source {other!r} too, which runs: one file is one source; "
            f"{session.name} is not streamed (nor re-snapshotted) until its path names another file")
    row = await session.pg.fetchrow(f"SELECT sqlite_path FROM {session.bk.s}.sources WHERE source = $1", other)
    try:
        same = bool(row and row[0]) and os.path.samefile(row[0], session.source.path)
    except OSError:
        same = False
    if same and session.name not in {c.name for c in session.settings.configured} \
            and _configured_here(session, other, row[0]):
        # Not running here (yet): the daemon started while Postgres was away, and the globs'
        # order gave the file another of its names. The file is still the source's that
        # syncd registered it under, whose capture id it keeps: it is no copy.
        raise SameFileAsAnotherSource(
            f"{session.source.path} is the SQLite file of source {other!r} too (another name of it), "
            f"which syncd registered it under: one file is one source; {session.name} is not streamed (nor "
            f"re-snapshotted); restart syncd to follow the file as {other!r} again")
    state.capture_id = await session.worker.run(capture.new_capture_id, session.settings.sqlite.write_busy_timeout_ms)
    from syncd.discovery import _run_elsewhere  # a rare path: a file carrying another's capture id

    how, after = " (a copy of its file)", ""
    # Not there on this host, and no other host's daemon runs it (a fleet of hosts sharing
    # the database: there it may be where it was).
    if (row is not None and row[0] and not os.path.exists(row[0])
            and other not in await _run_elsewhere(session.pg, session.bk.schema, [other])):
        # The other's file is gone: most likely this very file, renamed or moved, which
        # leaves the other source missing, where "a copy" sent the operator looking for it.
        how = f", whose file {row[0]} is gone (renamed or moved to this name, or copied here and deleted)"
        after = (f"; {other} stays shown as missing: if its file is gone for good, "
                 f"`syncd uninstall --forget --source {other}`")
    session.warning(
        f"the SQLite file of {session.name} carries the capture id of source {other}{how}: "
        f"gave it a capture id of its own; re-snapshotting every table of {session.name} from this file{after}",
        event="capture_cloned",
    )
    return True


async def _resume_position(session: SourceSession, src, state: CaptureState, cloned: bool = False) -> int:
    """Where the stream resumes, proven by the file itself.

    The pruner notes in the SQLite file (`pruned_seq`) each position Postgres has
    applied, and Postgres remembers the newest note it saw (`confirmed_seq`) plus a
    fingerprint of every batch it applied since. In the file Postgres followed, the
    note is never behind what Postgres saw and the entries of those batches are still
    there, unchanged. A file restored from a backup fails one of these checks, even
    when the application has written to it since (reusing positions): then every
    table is snapshotted again. Without fingerprints for the whole tail (an older
    syncd), the stream resumes from the note and replays the tail, which is harmless.
    """
    conn = session.pg
    noted, seen, applied, top = state.pruned_seq, src.confirmed_seq, src.applied_seq, state.max_seq
    if src.capture_id != state.capture_id:
        if not cloned:  # a copy of another source's file: _own_capture_id said so
            session.warning(
                "capture in the SQLite file is a new installation (capture id changed): re-snapshotting every table",
                event="capture_reset",
            )
        await session.bk.reset_source(conn, state.capture_id, 0)
        # Another installation numbers its tables afresh: a table id of the old one says
        # nothing of a table in this file (no rename to follow, see _follow_renames).
        await conn.execute(f"UPDATE {session.bk.s}.tables SET tid = NULL WHERE source = $1", session.name)
        src.caught_up_at = None  # as reset: the old history's says nothing of this one
        return 0
    diverged = noted < seen or noted > applied or top < applied
    covered = False
    if not diverged and applied > noted:
        position = noted
        for after, last, digest in await session.bk.applied_batches(conn):
            if last <= noted:
                continue
            if after != position:
                break  # a gap: the tail is not fully fingerprinted
            if await session.worker.run(reader.fingerprint_range, after, last) != digest:
                diverged = True
                break
            position = last
        covered = position == applied
    if diverged and any(r.startswith(capture.SUSPENDED_RELOAD) for r in state.rearmed.values()):
        # Capture was suspended to protect the disk, which deleted the entries queued past the
        # checkpoint the daemon knew, those Postgres had applied with them where it knew none
        # (started while Postgres was away): every table is snapshotted again, as said then.
        await session.bk.reset_source(conn, state.capture_id, top)
        src.caught_up_at = None
        return top
    if diverged:
        if seen <= noted and top >= applied and noted > applied:
            # The file is the one Postgres followed, and noted as applied what Postgres lacks.
            why = ("Postgres went back to an older copy of itself (restored from a backup, or it lost "
                   "transactions it had confirmed, as with synchronous_commit = off), or the file is a copy that "
                   "went further than this Postgres; the file's changelog no longer holds the changes in between")
        else:
            why = "the file was restored or replaced"
        session.warning(
            f"the SQLite file's changelog (noted position {noted}, ending at {top}) is not the one Postgres "
            f"applied (up to {applied}, noted {seen}): {why}; re-snapshotting every table",
            event="capture_reset",
        )
        await session.bk.reset_source(conn, state.capture_id, top)
        src.caught_up_at = None  # as reset: the old history's says nothing of this one
        return top
    if applied > noted and not covered:
        await session.bk.rewind(conn, noted)
        return noted
    return applied


def _runtime(session: SourceSession, spec: TableSpec, tid: int, row: TableRow,
             computed: frozenset[str]) -> TableRuntime:
    old = session.tables.get(spec.name)
    t = TableRuntime(spec=spec, tid=tid, row=row, computed=computed)
    if old is not None and old.spec == spec:
        t.logged_reason, t.retry_at = old.logged_reason, old.retry_at
        if old.computed == computed:
            t.writer = old.writer
    return t


async def _computed(conn: asyncpg.Connection, target: str, spec: TableSpec,
                    pgt: ddl.PgTable | None) -> frozenset[str]:
    """The columns of `spec` Postgres computes (the application made them GENERATED
    ALWAYS AS (...) STORED there after a cutover): the forward stream writes none of
    them. `pgt` was read before the table was reconciled: read again where one of its
    computed columns is no longer SQLite's (followed a rename, or kept aside)."""
    if pgt is not None and not pgt.generated <= set(spec.column_names):
        pgt = (await ddl.read_tables(conn, target)).get(spec.name)
    return ddl.computed(pgt, spec)


async def _exists_in_sqlite(session: SourceSession, name: str) -> bool:
    def check(c) -> bool:
        return c.execute("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() \
            is not None

    return await session.worker.run(check)


async def _unreadable(session: SourceSession, spec: TableSpec) -> str | None:
    """Why the table's pages in the SQLite file cannot be read whole (damage), in one line
    naming the file, or None. Checked before a resync drops the Postgres copy. In WAL mode
    by PRAGMA quick_check; in rollback-journal mode, where one read of the whole table
    would hold the application's commits back for as long as it reads, by reading its rows
    as the rebuild will, a short transaction at a time."""
    path = session.source.path

    def unread(e: sqlite3.DatabaseError) -> str:
        return str(damaged(e, path) or f"SQLite file {path} could not be read to check it ({e})")

    if session.journal_mode != "wal":
        reads = RowsPerHold(session.settings.stream.snapshot_chunk_rows)

        def step(c, after: tuple | None) -> tuple[bool, tuple | None, str | None]:
            """(more to read, the position read up to, the damage met)"""
            try:
                more, pos = reader.read_chunk_apart(c, spec, after, reads)
            except sqlite3.DatabaseError as e:
                if damaged(e, path) is None:
                    raise  # busy, or the schema moved: reconcile is run again
                return False, after, unread(e)
            return more, pos, None

        more, after, problem = True, None, None
        while more:
            more, after, problem = await session.worker.run(step, after)
        return problem

    def check(c) -> str | None:
        try:
            found = c.execute(f"PRAGMA main.quick_check({quote_literal(spec.name)})").fetchone()[0]
        except sqlite3.DatabaseError as e:
            return unread(e)
        if found == "ok":
            return None
        return f"SQLite file {path} is damaged: {' '.join(found.split())} (PRAGMA quick_check); restore it from a backup"

    return await session.worker.run(check)


async def _resync_requests(session: SourceSession) -> set[str]:
    assert session.pg is not None
    rows = await session.pg.fetch(
        f"SELECT table_name FROM {session.bk.s}.tables WHERE source = $1 AND request = 'resync'", session.name
    )
    return {r[0] for r in rows}


async def _reconcile_table(
    session: SourceSession, spec: TableSpec, tid: int, row: TableRow | None, pgt: ddl.PgTable | None,
    gap: str | None, moved: bool = False
) -> TableRow:
    """The table's next state. `gap` says why it must be re-snapshotted, if it must;
    `moved`: the application changed the file's schema since syncd last followed it."""
    conn = session.pg
    assert conn is not None
    target = session.target_schema
    name = spec.name
    if pgt is None:
        # A table created a moment ago may have given its primary key index this name.
        await ownership.make_room(conn, session.bk, target, name)
        await ddl.run_ddl(conn, ddl.create_table_sql(target, spec))
        await session.bk.record_created(conn, target, name)
        _log_default_notes(session, spec, spec.columns)
        if row is not None and row.state not in (bk.PENDING,):
            session.warning("Postgres table was missing: created it again, re-snapshotting", table=name,
                            event="table_recreated")
        return _pending(changed(row, tid=tid) if row else new_row(name, tid), None)
    diff = ddl.diff_shape(spec, pgt)
    if row is None:
        row = new_row(name, tid)
        if diff.extra_in_pg:
            return _paused(row, _extra_reason(diff.extra_in_pg), session.applied_seq, force_reload=True)
        return row  # PENDING; the load reshapes the empty table
    row = changed(row, tid=tid)
    if await _move_rowid_column(session, spec, pgt):
        pgt = (await ddl.read_tables(conn, target))[name]
        diff = ddl.diff_shape(spec, pgt)
    if diff.key_changed and spec.rowid_keyed != (ddl.rowid_key(spec, pgt) is not None):
        # A keyless table given a key, or a keyed one that lost it: rows are told apart
        # another way now, and nothing of Postgres's copy can be followed column by column.
        if row.state != bk.PENDING:
            session.info(f"the table's key changed in SQLite ({', '.join(pgt.key) or 'none'} -> "
                         f"{', '.join(spec.key)}): reloading the table", table=name, event="table_retyped")
        return _pending(row, None)
    if diff.extra_in_pg:
        try:
            async with conn.transaction():  # a savepoint
                followed = await _follow_columns(session, spec, pgt, _position(row, session.applied_seq))
        except asyncpg.PostgresError as e:
            if is_transient(e) or not diff.key_changed:
                raise
            # Its key changed as well (a rebuild on another key): rows are told apart
            # another way, and Postgres would not follow column by column (an identity
            # column kept aside, say): SQLite's table is loaded again instead.
            session.info(f"the table's key changed in SQLite ({', '.join(pgt.key)} -> {', '.join(spec.key)}) "
                         f"and its columns cannot be followed ({describe(e)}): reloading the table", table=name,
                         event="table_retyped")
            return _pending(row, None)
        if followed is None:
            reason = _extra_reason(diff.extra_in_pg)
            if gap and row.state != bk.PAUSED:
                session.warning(gap, table=name, event="capture_rearmed")
            return _paused(row, reason, session.applied_seq, force_reload=gap is not None)
        # A typed column renamed: introspection read it untyped (reconcile reads the table
        # again with its type); compared as typed here, it is not taken for a type change.
        spec = _typed_as(spec, followed)
        pgt = (await ddl.read_tables(conn, target))[name]
        if await _move_rowid_column(session, spec, pgt):
            pgt = (await ddl.read_tables(conn, target))[name]
        diff = ddl.diff_shape(spec, pgt)
    if gap:
        if row.state != bk.PENDING:
            session.warning(gap, table=name,
                            event="capture_rearmed" if gap == capture.GAP_REASON else "table_reloading")
        return _pending(row, None)
    try:
        widened = diff.retyped and not diff.key_changed and await _widen_in_place(session, target, name, diff.retyped)
    except WideningTooSlow as e:
        return _paused(row, str(e), session.applied_seq)
    if widened:
        pgt = (await ddl.read_tables(conn, target))[name]
        diff = ddl.diff_shape(spec, pgt)
    if diff.retyped or diff.key_changed:
        what = ", ".join(f"{c}: {have} -> {want}" for c, have, want in diff.retyped)
        key = f"primary key changed ({', '.join(pgt.key) or 'none'} in Postgres -> {', '.join(spec.key)})"
        said = (f"column types changed ({what}) and {key}" if what and diff.key_changed else
                f"column types changed ({what})" if what else key)
        session.info(f"{said}: reloading the table", table=name, event="table_retyped")
        return _pending(row, None)
    since = _position(row, session.applied_seq)
    if moved and since is not None:
        strangers = await _columns_changed_meaning(session, spec, pgt, since)
        if strangers:
            cols = ", ".join(f'"{c}"' for c in strangers)
            session.warning(f"column(s) {cols} no longer hold what Postgres holds for the same rows (renamed, "
                            "swapped, or dropped and added again in SQLite): reloading the table", table=name,
                            event="table_reloading")
            # Another column under a typed one's name: read as its own type (reconcile reads it again)
            await conn.execute(f"DELETE FROM {session.bk.s}.columns "
                               "WHERE source = $1 AND table_name = $2 AND column_name = ANY($3::text[])",
                               session.name, name, strangers)
            return _pending(row, None)
    if diff.missing_in_pg:
        inexact = []
        for col in diff.missing_in_pg:
            why = ddl.added_rows_note(col)
            # A NOT NULL column whose rows cannot take their value from the Postgres
            # default is added nullable: the reload below fills it (Postgres would refuse
            # NOT NULL over the rows already there).
            loose = why is not None and col.notnull and row.state not in (bk.PENDING, bk.LOADING)
            await ddl.run_ddl(conn, ddl.add_column_sql(target, spec, replace(col, notnull=False) if loose else col))
            if why is not None:
                inexact.append(f'"{col.name}": {why}')
        _log_default_notes(session, spec, diff.missing_in_pg)
        added = ", ".join(c.name for c in diff.missing_in_pg)
        session.info(f"column(s) added in SQLite, added in Postgres too: {added}", table=name, event="column_added")
        if inexact and row.state not in (bk.PENDING, bk.LOADING):
            session.info("the rows already in the table cannot take an added column's value from its Postgres "
                         f"default ({'; '.join(inexact)}): reloading the table", table=name, event="table_reloading")
            return _pending(row, None)
        if row.state == bk.LOADING:
            return _pending(row, None)  # chunks already loaded lack the new column
    if row.state == bk.PAUSED:
        session.info("table matches Postgres again: resuming", table=name, event="table_resumed")
        resume = row.resume_to or bk.PENDING
        if resume == bk.PENDING:
            return _pending(row, None)
        return changed(row, state=resume, reason=None)
    if row.state == bk.REFUSED:
        return _pending(row, None)
    return row


def _log_default_notes(session: SourceSession, spec: TableSpec, columns) -> None:
    """Defaults not carried, and a column created as text because it had neither a
    declared type nor values to choose one from (parity/numbers.py types it at cutover)."""
    for col in columns:
        note = ddl.default_note(col)
        if note is not None:
            session.info(f'column "{col.name}": {note}', table=spec.name, event="default_not_carried")
        if col.type_note is not None and col.type_note.endswith(NO_VALUES_YET):
            session.info(f'column "{col.name}": {col.pgtype.value} <- {col.type_note}', table=spec.name,
                         event="type_from_no_values")


async def _follow_columns(session: SourceSession, spec: TableSpec, pgt: ddl.PgTable,
                          since: int | None = None) -> bool | None:
    """Make Postgres follow SQLite's RENAME COLUMN (a column keeps its place; at the end
    of the table, where a rename and a drop followed by an add look alike, the data
    decides, from rows unchanged since `since`, the position the table's rows in Postgres
    are at) and DROP COLUMN (the Postgres column is kept aside under a new name, its
    values intact). A column schema parity typed keeps its type under its new name
    (bookkeeping follows). Returns those columns with their types (column -> (type,
    SQLite spelling)), or None when the change cannot be told for sure (the table then
    pauses)."""
    conn = session.pg
    assert conn is not None
    pg_names = {c.name for c in pgt.columns}
    # Columns schema parity typed that SQLite no longer names: SQLite's renamed column
    # reads as its untyped self (bookkeeping knows the old name only), so its type tells
    # nothing; its values, read as the typed column reads them, tell.
    typed = (await parity.retyped_columns(conn, session.bk.schema, session.name)).get(spec.name, {})
    gone = {n: t for n, t in typed.items()
            if n in pg_names and n not in {c.name for c in spec.stored_columns}}
    # A keyless table's rowid column in Postgres, under the name it had: a column of SQLite's
    # that held the name the rowid column takes now ("_syncd_rowid", renamed or dropped since)
    # is the application's, and follows as any other (_move_rowid_column gives the name back).
    rowid = ddl.rowid_key(spec, pgt) if spec.rowid_keyed else None
    plan = ddl.plan_columns([(c.name, c.pgtype) for c in spec.stored_columns],
                            [(c.name, None if c.name in gone else c.pgtype) for c in pgt.columns
                             if not ddl.is_aside(c.name)
                             and not (c.name == rowid if rowid is not None else _synthetic(spec, c.name))])
    if plan is None:
        return None
    for old, new, must in plan.guesses:
        # Postgres's name for each key column, should the key be among the renamed
        renamed = {**{n: o for o, n in plan.renames}, new: old}
        told = _typed_as(spec, {new: gone[old]}) if old in gone else spec
        pg_key = (rowid,) if rowid is not None else tuple(renamed.get(k, k) for k in spec.key)
        if await _looks_renamed(session, told, old, new, pg_key, pg_names, since):
            plan.renames.append((old, new))
        elif must:
            return None  # mid-table it can only be a rename, yet the data says otherwise
        else:
            plan.drops.append(old)  # dropped, and `new` added at the end: the caller adds it
    table = qualified(session.target_schema, spec.name)
    kept: dict[str, tuple[PgType, str | None]] = {}
    for old, new in plan.renames:
        await conn.execute(f"ALTER TABLE {table} RENAME COLUMN {quote_pg_ident(old)} TO {quote_pg_ident(new)}")
        session.info(f'column "{old}" was renamed to "{new}" in SQLite: renamed in Postgres too', table=spec.name,
                     event="column_renamed")
        if old in gone:  # typed under its new name from now on
            await conn.execute(f"UPDATE {session.bk.s}.columns SET column_name = $4 "
                               "WHERE source = $1 AND table_name = $2 AND column_name = $3",
                               session.name, spec.name, old, new)
            kept[new] = gone[old]
    taken = {c.name for c in pgt.columns}
    for col in plan.drops:
        aside = ddl.aside_name(col, dt.datetime.now(dt.timezone.utc), taken)
        taken.add(aside)
        await conn.execute(f"ALTER TABLE {table} ALTER COLUMN {quote_pg_ident(col)} DROP NOT NULL")
        await conn.execute(f"ALTER TABLE {table} RENAME COLUMN {quote_pg_ident(col)} TO {quote_pg_ident(aside)}")
        session.warning(f'column "{col}" was dropped in SQLite: kept aside in Postgres as "{aside}" with the values '
                        "it had (new rows leave it empty); drop it there once nothing needs it", table=spec.name,
                        event="column_dropped")
        await session.bk.event(conn, "column_dropped", spec.name, f'"{col}" kept aside as "{aside}"')
        if col in typed:  # a column added later under its name is another column, typed as its own
            await conn.execute(f"DELETE FROM {session.bk.s}.columns "
                               "WHERE source = $1 AND table_name = $2 AND column_name = $3",
                               session.name, spec.name, col)
    return kept


def _typed_as(spec: TableSpec, types: dict[str, tuple[PgType, str | None]]) -> TableSpec:
    """`spec` with `types` (column -> (type, SQLite spelling)) given the columns it names."""
    return replace(spec, columns=tuple(replace(c, pgtype=types[c.name][0], sqlite_format=types[c.name][1])
                                       if c.name in types else c for c in spec.columns))


EVIDENCE_ROWS = 200


async def _evidence(session: SourceSession, spec: TableSpec, pairs: list[tuple[str, str]],
                    pg_key: tuple[str, ...], pg_names: set[str], since: int | None = None) -> list[float | None] | None:
    """For each (Postgres column, SQLite column) pair, the share of up to EVIDENCE_ROWS
    rows (sampled across the table, rows changed since Postgres last saw them left out;
    where those leave too few, the first rows by key that were not changed; every row
    of a table too small to sample) where the two hold the same value, counting only rows where either holds one (a
    mostly-NULL column dropped and added again agrees on its NULLs and says nothing by
    them): None for a pair no such row tells; None for all when there is no evidence
    (no row, or a key SQLite does not store or Postgres does not have). `pg_key`:
    Postgres's names of spec.key; `since`: the position the table's rows are at (the
    stream's by default)."""
    conn = session.pg
    assert conn is not None
    if any(k not in {c.name for c in spec.stored_columns} for k in spec.key) and not spec.rowid_keyed:
        return None
    if any(k not in pg_names for k in pg_key):
        return None
    keys = ", ".join(quote_pg_ident(k) for k in pg_key)
    wanted = ", ".join(quote_pg_ident(p) for p, _ in pairs)
    nkey = len(spec.key)
    table = qualified(session.target_schema, spec.name)
    # Rows from all over the table, not its first ones by key: a column dropped and
    # another added can agree on a run of rows (an old default) and nowhere else.
    # The planner's estimate, not pg_class.reltuples: that is -1 for a table no ANALYZE
    # has counted yet (one syncd has just loaded), and stale for one grown since.
    plan = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {table}"))
    estimate = plan[0]["Plan"]["Plan Rows"]
    pg_rows = []
    if estimate > 4 * EVIDENCE_ROWS:
        # BERNOULLI picks rows, not pages (SYSTEM's few pages sit together): about
        # 1.5 x EVIDENCE_ROWS of them, spread over the whole table.
        pg_rows = await conn.fetch(f"SELECT {keys}, {wanted} FROM {table} TABLESAMPLE BERNOULLI ($1) "
                                   f"LIMIT {2 * EVIDENCE_ROWS}", min(100.0, 150.0 * EVIDENCE_ROWS / estimate))
    tid = session.capture.tid_of(spec.name) if session.capture else None
    looked = await session.worker.run(reader.max_seq) if tid is not None else 0  # the changelog read up to
    moving = set() if tid is None else await session.worker.run(reader.changed_keys, tid, nkey,
                                                                   session.applied_seq if since is None else since)
    conv = RowConverter(spec)
    idx = [spec.column_names.index(sq) for _, sq in pairs]
    types = [spec.column(sq).pgtype for _, sq in pairs]
    seen: dict[tuple, tuple] = {}

    async def unchanged(rows) -> None:
        """Add to `seen` the rows of `rows` not changed since `since`, with SQLite's values."""
        nonlocal looked
        current, _gone = await session.worker.run(collisions.read_current, spec, [tuple(r)[:nkey] for r in rows])
        if tid is not None:
            # Read after the rows too: a row the application wrote since the look above
            # holds its new value here, and its change is in the changelog by now.
            top = await session.worker.run(reader.max_seq)
            moving.update(await session.worker.run(reader.changed_keys, tid, nkey, looked))
            looked = top
        mine = {}
        for row in current:
            if tuple(row[i] for i in spec.key_indexes) in moving:
                continue  # changed since Postgres last saw it: no evidence either way
            try:
                converted = conv.row(row)
            except RowMisfit:
                continue
            mine[tuple(converted[i] for i in spec.key_indexes)] = [converted[i] for i in idx]
        for r in rows:
            if tuple(r)[:nkey] in mine:
                seen[tuple(r)[:nkey]] = (mine[tuple(r)[:nkey]], tuple(r)[nkey:])

    if len(pg_rows) >= EVIDENCE_ROWS // 4:
        await unchanged(pg_rows)
    if len(seen) < EVIDENCE_ROWS // 4:
        # The first rows by key, past those changed since (a bulk UPDATE before the
        # migration, queued behind it): the rows left alone are the ones that tell.
        after: tuple | None = None
        scanned = 0
        # A table too small to sample is read whole: a run of its first rows by key may
        # agree where the rest does not.
        enough = EVIDENCE_ROWS if estimate > 4 * EVIDENCE_ROWS else 4 * EVIDENCE_ROWS
        while True:
            if after is None:
                page = await conn.fetch(f"SELECT {keys}, {wanted} FROM {table} ORDER BY {keys} LIMIT {EVIDENCE_ROWS}")
            else:
                marks = ", ".join(f"${i + 1}" for i in range(nkey))
                page = await conn.fetch(f"SELECT {keys}, {wanted} FROM {table} WHERE ({keys}) > ({marks}) "
                                        f"ORDER BY {keys} LIMIT {EVIDENCE_ROWS}", *after)
            await unchanged(page)
            scanned += len(page)
            if len(page) < EVIDENCE_ROWS or len(seen) >= enough or \
                    scanned >= len(moving) + max(enough, 2 * EVIDENCE_ROWS):
                break
            after = tuple(page[-1])[:nkey]
    if not seen:
        return None
    shares: list[float | None] = []
    for j in range(len(pairs)):
        told = [(ours[j], theirs[j]) for ours, theirs in seen.values()
                if ours[j] is not None or theirs[j] is not None]
        shares.append(sum(1 for a, b in told if _same(types[j], a, b)) / len(told) if told else None)
    return shares


async def _emptied(session: SourceSession, spec: TableSpec, pg_col: str, sqlite_col: str) -> bool:
    """Whether SQLite's `sqlite_col` holds no value at all while Postgres's `pg_col` still
    holds one: a column dropped and added again, its values erased in SQLite, that a
    sample of rows too sparse in values could not tell."""
    conn = session.pg
    assert conn is not None
    table = qualified(session.target_schema, spec.name)
    if await conn.fetchval(f"SELECT 1 FROM {table} WHERE {quote_pg_ident(pg_col)} IS NOT NULL LIMIT 1") is None:
        return False
    return not await session.worker.run(reader.holds_values, spec.name, spec.sqlite_ref(sqlite_col))


def _same(pgtype: PgType, ours, theirs) -> bool:
    """One value, as verify tells values apart (types.canonical: jsonb by its value, a
    numeric without its trailing zeros); plain equality where the two do not take the
    column's type's shape (a column renamed onto another type). A real zero is one value
    whatever its sign: a REAL column of SQLite holds Postgres's -0.0 as 0.0."""
    if pgtype is PgType.DOUBLE and isinstance(ours, float) and isinstance(theirs, float):
        ours, theirs = ours + 0.0, theirs + 0.0
    try:
        return canonical(pgtype, ours) == canonical(pgtype, theirs)
    except (TypeError, ValueError, AttributeError, struct.error):
        return ours == theirs


async def _looks_renamed(session: SourceSession, spec: TableSpec, old: str, new: str, pg_key: tuple[str, ...],
                         pg_names: set[str], since: int | None = None) -> bool:
    """At the end of a table a rename and a drop followed by an add look alike; the data
    tells them apart: after a rename, SQLite's `new` holds what Postgres's `old` holds
    for the same keys (bar the rows changed since `since`, which Postgres has yet to
    see: a table held or catching up is behind the stream). An empty table has nothing
    to lose."""
    share = await _evidence(session, spec, [(old, new)], pg_key, pg_names, since)
    if share is None:
        return True
    if share[0] is None:  # no value in the rows sampled: renamed, unless SQLite's column holds none anywhere
        return not await _emptied(session, spec, old, new)
    return share[0] >= 0.9


def _position(row: TableRow, applied_seq: int) -> int | None:
    """The changelog position up to which the rows Postgres holds for the table are
    SQLite's (changes after it are still to be applied), or None when the table is to be
    loaded from scratch anyway, or is loading aside (its live rows are older still). A
    table held, paused or catching up holds rows as they were at its own position."""
    state = row.resume_to if row.state in (bk.HELD, bk.PAUSED) else row.state
    if state == bk.STREAMING:
        return applied_seq
    if state == bk.CATCHUP or (state == bk.LOADING and not row.load_aside):
        return row.from_seq  # None for a load not started: nothing to compare
    return None


async def _columns_changed_meaning(session: SourceSession, spec: TableSpec, pgt: ddl.PgTable,
                                   since: int) -> list[str]:
    """Columns both sides name alike whose values no longer agree: a name alone does not
    say a column is the one Postgres copied (renamed away and added again, two names
    swapped, dropped and added back: the shapes can look unchanged). The data says, from
    rows unchanged since `since`, the position the table's rows in Postgres are at."""
    have = {c.name for c in pgt.columns}
    shared = [c.name for c in spec.stored_columns if c.name in have and c.name not in spec.key]
    if not shared:
        return []
    share = await _evidence(session, spec, [(c, c) for c in shared], spec.key, have, since)
    if share is None:
        return []
    changed = []
    for c, s in zip(shared, share):
        if s is None:  # no value in the rows sampled: changed if SQLite's column holds none anywhere
            if await _emptied(session, spec, c, c):
                changed.append(c)
        elif s < 1.0:  # the column Postgres copied agrees on every row unchanged since: one that does not tells
            changed.append(c)
    return changed


async def _move_rowid_column(session: SourceSession, spec: TableSpec, pgt: ddl.PgTable) -> bool:
    """A keyless table one of whose columns took the name of syncd's rowid column in
    Postgres (ALTER TABLE ... RENAME COLUMN ... TO "_syncd_rowid"): the rowid column
    moves to the free name syncd keys the table on now (`_syncd_rowid_1`), so the
    application's column can follow under its new name, values and all. True if moved."""
    if not spec.rowid_keyed or len(pgt.key) != 1 or pgt.key[0] == spec.key[0]:
        return False
    old, new = pgt.key[0], spec.key[0]
    pg_names = {c.name for c in pgt.columns}
    if not ddl.is_rowid_name(old) or new in pg_names:
        return False
    if ddl.rowid_key(spec, pgt) == old:
        # The column of SQLite's that held the name was renamed or dropped (followed in
        # Postgres already): the rowid column takes its usual name again.
        said = (f'no column of SQLite\'s table is named "{new}" any more: the column syncd keeps this keyless '
                f'table\'s rowids in is "{new}" in Postgres again (it was "{old}")')
    elif old in {c.name for c in spec.stored_columns}:
        said = (f'a column of SQLite\'s table is named "{old}" now, the name of the column syncd keeps this keyless '
                f'table\'s rowids in: that column is "{new}" in Postgres now')
    else:
        return False
    conn = session.pg
    assert conn is not None
    await conn.execute(f"ALTER TABLE {qualified(session.target_schema, spec.name)} RENAME COLUMN "
                       f"{quote_pg_ident(old)} TO {quote_pg_ident(new)}")
    session.info(said, table=spec.name, event="column_renamed")
    return True


def _synthetic(spec: TableSpec, name: str) -> bool:
    return any(c.name == name and c.sqlite_expr is not None for c in spec.columns)


def _extra_reason(extra: list[str]) -> str:
    cols = ", ".join(f'"{c}"' for c in extra)
    return (
        f"column(s) {cols} exist in Postgres but no longer in SQLite (dropped or renamed); changes stay queued. "
        "Make the same change in Postgres, or run `syncd resync` for this table to rebuild it from SQLite"
    )
