"""Bring capture (SQLite) and the replica tables (Postgres) in line with the source's
current schema. Run by `init`, at daemon start, whenever SQLite's schema_version
moves, and when the file is replaced.

Rules: capture first (so no change goes unrecorded), never drop anything in Postgres
on syncd's own initiative, and when capture had a gap, re-snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from syncd.identifiers import qualified
from syncd.model import SourceSchema, TableSpec
from syncd.postgres import bookkeeping as bk
from syncd.postgres import ddl, ownership
from syncd.postgres.bookkeeping import TableRow
from syncd.session import SourceSession, TableRuntime, changed, new_row
from syncd.sqlite import capture, reader
from syncd.sqlite.capture import CaptureState, trigger_names
from syncd.sqlite.introspect import introspect, journal_mode
from syncd.types import PgType


@dataclass
class CaptureResult:
    schema: SourceSchema
    state: CaptureState
    gaps: set[str] = field(default_factory=set)  # tables whose capture had a gap: re-snapshot
    renamed: dict[str, str] = field(default_factory=dict)  # old name -> table its triggers now sit on


def capture_gap(state: CaptureState, tid: int, spec: TableSpec) -> bool:
    """True if a trigger every change depends on was missing (or sat on another
    table): changes may have gone unrecorded. A trigger whose text merely differs
    (an older syncd, a renamed column) recorded everything; it is re-armed in place."""
    names = trigger_names(tid)
    for kind in ("ins", "upd", "del"):
        have = state.triggers.get(names[kind])
        if have is None or have[0] != spec.name:
            return True
    return False


ARM_ROUNDS = 5


async def install_capture(session: SourceSession, sticky: dict[str, dict[str, PgType]] | None = None) -> CaptureResult:
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
        schema = await w.run(introspect, session.source, sticky)
        # Where do each registered table's triggers sit now? (They follow a RENAME.)
        for name, (tid, _key) in state.registry.items():
            owner = capture.describe_trigger_owner(state, tid)
            if owner is not None and owner != name:
                renamed[name] = owner
        armed = False
        for name, spec in schema.tables.items():
            tid = state.tid_of(name)
            if tid is not None and state.triggers_match(tid, spec):
                continue
            gap = tid is not None and capture_gap(state, tid, spec)
            await w.run(capture.arm_table, spec, busy, gap)
            armed = True
        for name, (tid, _key) in state.registry.items():
            if name not in schema.tables and any(n in state.triggers for n in trigger_names(tid).values()):
                await w.run(capture.disarm_table, tid, busy)
                armed = True
        state = await w.run(capture.read_state)
        if not armed:
            break

    result = CaptureResult(schema=schema, state=state, renamed=renamed)
    result.gaps = {n for n in state.rearmed if n in schema.tables}
    session.capture = state
    session.schema_version = schema.version
    session.refused = {n: r.reason for n, r in schema.refused.items()}
    for name, why in schema.skipped.items():
        if name not in session.skipped:
            session.info(f"not replicated: {why}", table=name, event="table_skipped")
    session.skipped = dict(schema.skipped)
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
                   reason=reason)


async def sticky_types(session: SourceSession) -> dict[str, dict[str, PgType]]:
    """Postgres column types already chosen, so value-inferred types do not flip."""
    assert session.pg is not None
    out: dict[str, dict[str, PgType]] = {}
    for name, table in (await ddl.read_tables(session.pg, session.target_schema)).items():
        out[name] = {c.name: c.pgtype for c in table.columns if c.pgtype is not None}
    return out


async def reconcile(session: SourceSession) -> CaptureResult:
    """Full reconciliation; needs Postgres. Leaves session.tables current."""
    conn = session.pg
    assert conn is not None
    sticky = await sticky_types(session)
    result = await install_capture(session, sticky)
    async with conn.transaction():
        runtimes = await _reconcile_postgres(session, result)
    session.tables = runtimes
    if result.state.rearmed:
        # Postgres now has those tables scheduled for a re-snapshot (committed above).
        await session.worker.run(capture.clear_rearmed, sorted(result.state.rearmed),
                                 session.settings.sqlite.write_busy_timeout_ms)
    return result


async def _reconcile_postgres(session: SourceSession, result: CaptureResult) -> dict[str, TableRuntime]:
    """The Postgres half of reconcile; the caller runs it in one transaction, so a
    crash leaves either the old state or the new one, never half of a reset."""
    conn = session.pg
    assert conn is not None
    state, schema = result.state, result.schema
    assert state.capture_id is not None
    target = session.target_schema

    await bk.ensure_schema(conn, target)
    src = await session.bk.load_source(conn)
    if src is None:
        await session.bk.upsert_source(conn, state.capture_id, str(session.source.path), target)
        session.applied_seq = 0
    else:
        session.applied_seq = await _resume_position(session, src, state)
        await session.bk.upsert_source(conn, state.capture_id, str(session.source.path), target)
        if src.applied_at is not None:
            session.applied_at = src.applied_at.timestamp()

    rows = await session.bk.load_tables(conn)
    requests = await _resync_requests(session)
    pg_tables = await ddl.read_tables(conn, target)
    runtimes: dict[str, TableRuntime] = {}
    # A Postgres relation of the same name that syncd did not create is left alone.
    session.refused.update(await ownership.not_ours(conn, session.bk, target, schema.tables))

    for name, spec in schema.tables.items():
        if name in session.refused:
            continue
        tid = state.tid_of(name)
        assert tid is not None
        row = rows.get(name)
        pgt = pg_tables.get(name)
        if name in requests and pgt is not None:
            await conn.execute(f"DROP TABLE IF EXISTS {qualified(target, name)}")
            session.info("resync requested: Postgres table dropped, rebuilding it from SQLite", table=name,
                         event="resync")
            pgt = None
            row = _pending(row or new_row(name, tid), "resync requested")
        new = await _reconcile_table(session, spec, tid, row, pgt, name in result.gaps)
        if new != row:
            await session.save_row(conn, new)
        runtimes[name] = _runtime(session, spec, tid, new)
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
        if name in schema.skipped or await _exists_in_sqlite(session, name):
            # Left the configured set (or became a view): stop tracking; Postgres copy stays.
            await conn.execute(
                f"DELETE FROM {session.bk.s}.tables WHERE source = $1 AND table_name = $2", session.name, name
            )
            session.info("table is no longer configured for replication; its Postgres copy is left as is",
                         table=name, event="table_removed")
            continue
        where = result.renamed.get(name)
        reason = (
            f'table was renamed to "{where}" in SQLite' if where else "table no longer exists in SQLite (dropped)"
        ) + "; its Postgres copy is kept and its queued changes stay queued. Recreate it, or remove the " \
            "Postgres table if it is gone for good"
        if row.state != bk.PAUSED or row.reason != reason:
            row = _paused(row, reason, session.applied_seq)
            await session.save_row(conn, row)
            session.warning(reason, table=name, event="table_paused")

    return runtimes


async def _resume_position(session: SourceSession, src, state: CaptureState) -> int:
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
        session.warning(
            "capture in the SQLite file is a new installation (capture id changed): re-snapshotting every table",
            event="capture_reset",
        )
        await session.bk.reset_source(conn, state.capture_id, 0)
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
    if diverged:
        session.warning(
            f"the SQLite file's changelog (noted position {noted}, ending at {top}) is not the one Postgres "
            f"applied (up to {applied}, noted {seen}): the file was restored or replaced; "
            "re-snapshotting every table",
            event="capture_reset",
        )
        await session.bk.reset_source(conn, state.capture_id, top)
        return top
    if applied > noted and not covered:
        await session.bk.rewind(conn, noted)
        return noted
    return applied


def _runtime(session: SourceSession, spec: TableSpec, tid: int, row: TableRow) -> TableRuntime:
    old = session.tables.get(spec.name)
    t = TableRuntime(spec=spec, tid=tid, row=row)
    if old is not None and old.spec == spec:
        t.writer, t.logged_reason, t.retry_at = old.writer, old.logged_reason, old.retry_at
    return t


async def _exists_in_sqlite(session: SourceSession, name: str) -> bool:
    def check(c) -> bool:
        return c.execute("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() \
            is not None

    return await session.worker.run(check)


async def _resync_requests(session: SourceSession) -> set[str]:
    assert session.pg is not None
    rows = await session.pg.fetch(
        f"SELECT table_name FROM {session.bk.s}.tables WHERE source = $1 AND request = 'resync'", session.name
    )
    return {r[0] for r in rows}


async def _reconcile_table(
    session: SourceSession, spec: TableSpec, tid: int, row: TableRow | None, pgt: ddl.PgTable | None, gap: bool
) -> TableRow:
    conn = session.pg
    assert conn is not None
    target = session.target_schema
    name = spec.name
    if pgt is None:
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
    if diff.extra_in_pg:
        reason = _extra_reason(diff.extra_in_pg)
        if gap and row.state != bk.PAUSED:
            session.warning("capture triggers were missing (table rebuilt?): re-armed them", table=name,
                            event="capture_rearmed")
        return _paused(row, reason, session.applied_seq, force_reload=gap)
    if gap:
        session.warning(
            "capture triggers were missing (table rebuilt?): re-armed them and re-snapshotting the table so "
            "changes made in between are not lost",
            table=name, event="capture_rearmed",
        )
        return _pending(row, None)
    if diff.retyped or diff.key_changed:
        what = ", ".join(f"{c}: {have} -> {want}" for c, have, want in diff.retyped) or "primary key changed"
        session.info(f"column types changed ({what}): reloading the table", table=name, event="table_retyped")
        return _pending(row, None)
    if diff.missing_in_pg:
        exact = True
        for col in diff.missing_in_pg:
            await ddl.run_ddl(conn, ddl.add_column_sql(target, spec, col))
            if ddl.column_default(col).not_carried is not None:
                exact = False
        _log_default_notes(session, spec, diff.missing_in_pg)
        added = ", ".join(c.name for c in diff.missing_in_pg)
        session.info(f"column(s) added in SQLite, added in Postgres too: {added}", table=name, event="column_added")
        if not exact and row.state not in (bk.PENDING, bk.LOADING):
            session.info("an added column's default has no exact Postgres form: reloading the table", table=name)
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
    for col in columns:
        note = ddl.default_note(col)
        if note is not None:
            session.info(f'column "{col.name}": {note}', table=spec.name, event="default_not_carried")


def _extra_reason(extra: list[str]) -> str:
    cols = ", ".join(f'"{c}"' for c in extra)
    return (
        f"column(s) {cols} exist in Postgres but no longer in SQLite (dropped or renamed); changes stay queued. "
        "Make the same change in Postgres, or run `syncd resync` for this table to rebuild it from SQLite"
    )
