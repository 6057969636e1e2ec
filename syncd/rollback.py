"""`syncd rollback`: switch a cut-over source's application back from Postgres to SQLite.

The mirror of `syncd cutover` (syncd/cutover.py): check that SQLite follows Postgres
(every table streaming back, the rollback window open), freeze Postgres for the
application (its writes to the source's tables fail at once with a message, a
superuser's too; syncd's own sessions pass), drain the way back to the last change,
verify every row, then in one Postgres transaction turn the direction around (the
forward checkpoint set to the end of SQLite's changelog: both sides are equal there),
stop capturing in Postgres and record the switch, and last unfreeze SQLite. Anything
failing before the turn undoes the freeze: Postgres takes the application's writes
again and SQLite follows it while a daemon runs the source, exit 1.

Postgres stays frozen for the application afterwards, as SQLite stays frozen after a
cutover: a forgotten application instance still pointed at Postgres gets an error
instead of writing data nobody reads. The forward stream writes through it (its
sessions are syncd's), and the next `syncd cutover` lifts it: the freeze's function
reads the recorded direction at each statement, so the cutover's last transaction lifts
it as it commits, with no DDL there (capture.py); its triggers go afterwards.

Crash safety: the command holds the source's switch lock (cutover.SWITCH_CLASS) for
its whole run and records each step in `<bookkeeping>.switches` first. A Postgres left
frozen with the direction still to SQLite and nobody holding the lock (the command was
killed) is unfrozen by the daemon's reverse stream within seconds, or by the next run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field

import asyncpg

from syncd import collisions, in_process
from syncd.config import Settings, SourceSettings
from syncd.cutover import (MAX_ROWID, SETTLED, STARTED_SWITCHES, Refused, answering, hold_at, identity_sequence,
                           read_specs, record_step, recorded_direction, release_switch_lock, renumbered_unseen,
                           sequence_tops, switch_holder, take_switch_lock, undo_reason, who)
from syncd.identifiers import qualified, quote_ident, quote_literal, quote_pg_ident
from syncd.model import TO_POSTGRES, TO_SQLITE
from syncd.parity.apply import lock_wait_ms
from syncd.parity.plan import MARK
from syncd.postgres import app_triggers, ddl
from syncd.postgres import bookkeeping as bk
from syncd.postgres.bookkeeping import (Bookkeeping, SourceLocked, bookkeeping_exists, ensure_bookkeeping, source_key,
                                       try_lock_source, unlock_source)
from syncd.postgres.connect import (ASYNCPG_FAULT, READ_ONLY_DATABASE, PostgresUnavailable, close_quietly, connect,
                                    describe, takes_no_writes)
from syncd.printable import listed
from syncd.reverse import applier, capture, reader
from syncd.reverse.capture import Names
from syncd.reverse.checkpoint import META_KEY, ReverseCheckpoint, older
from syncd.sqlite import freeze
from syncd.sqlite.capture import CHANGELOG, META, LockTimeout, write_transaction
from syncd.sqlite.connection import SourceFileError, SqliteWorker, is_busy
from syncd.sqlite.reader import count_rows
from syncd.table_locks import TablesBusy, long_holders, table_holders, while_tables_busy
from syncd.verify.postgres_side import lock_holder
from syncd.verify.repair import CANNOT_CONNECT_SECONDS, StreamCannotConnect, cut_off

log = logging.getLogger("syncd")

DRAIN_SECONDS = 120.0
# A rollback is refused this close to the end of its window: the way back ends then, and
# one ended while the rollback drains would leave SQLite without Postgres's last writes.
WINDOW_MARGIN_SECONDS = 2 * DRAIN_SECONDS + 60.0
WRITABLE_WAIT_SECONDS = 5.0  # the pre-flight's wait for a write lock on the SQLite file
VERIFY_WAIT_SECONDS = 30.0
POLL_SECONDS = 0.05
# The freeze's message where the rollback's own (naming its time) is not at hand.
FROZEN_MESSAGE = "moved back to SQLite by syncd (syncd rollback); the application writes its SQLite file again"


@dataclass
class RollbackResult:
    source: str
    done: bool = False
    already: str | None = None  # not cut over: SQLite already is the application's database
    dry_run: bool = False
    problems: list[str] = field(default_factory=list)
    undone: bool = False
    unknown: bool = False  # Postgres could not be asked whether its last transaction committed
    undo_pending: bool = False  # not done, and the freeze not undone yet: the daemon undoes it
    still_frozen: str | None = None  # done, but SQLite could not be unfrozen yet: why, and who does it
    downtime_seconds: float | None = None
    plan: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.still_frozen is None


async def _hold(step: str) -> None:
    await hold_at("ROLLBACK", step)


# --- the way back's start, at a cutover --------------------------------------------------------


async def open_way_back(conn: asyncpg.Connection, settings: Settings, source: SourceSettings,
                        tables: dict[str, tuple[int, list[str]]]) -> None:
    """Inside the cutover's last transaction: capture every table in Postgres from this
    moment (a fresh changelog; SQLite equals Postgres here, as just verified). The freeze
    a rollback left on Postgres passes every write once the direction this transaction
    records commits: its triggers stay, dropped after the switch (lift_freeze), as
    DROP TRIGGER here would wait for every reader of the table. `tables`: name -> (tid,
    key columns)."""
    names = await capture.names_of(conn, settings.postgres.bookkeeping_schema, source.name)
    await capture.start_generation(conn, names, source.schema)
    for name, (tid, key) in sorted(tables.items()):
        await capture.arm(conn, names, source.schema, name, tid, key)
    # The triggers as armed here: one turned off and on again before the way back first
    # looks differs from this (its changes meanwhile never recorded).
    await capture.note_triggers(conn, names, await capture.trigger_marks(conn, source.schema))
    if await capture.frozen_tables(conn, names, source.schema):
        # A freeze an older syncd made refuses whatever the direction: its function
        # (no lock on the tables) reads the direction from now on too.
        await conn.execute(capture.freeze_function_sql(names, FROZEN_MESSAGE))


async def lift_freeze(conn: asyncpg.Connection, settings: Settings, source: SourceSettings) -> int:
    """After a cutover (the freeze a rollback left passes every write since): its triggers
    go where their tables are had at once (capture.drop_freeze); the daemon drops the
    others later. Not inside a transaction. Returns how many are left."""
    names = await capture.names_of(conn, settings.postgres.bookkeeping_schema, source.name)
    return await capture.drop_freeze(conn, names, source.schema)


class WayBackEnded(Refused):
    """The way back ended while the rollback ran: SQLite no longer follows Postgres."""


async def end_way_back(conn: asyncpg.Connection, settings: Settings, source: SourceSettings, reason: str) -> int:
    """Stop capturing the source's tables in Postgres for good (the rollback window is
    over, or capture is uninstalled): triggers and recorded entries go, the SQLite file
    stays as it is. Returns the tables that were captured. In one transaction."""
    names = await capture.names_of(conn, settings.postgres.bookkeeping_schema, source.name)
    gen = await capture.generation(conn, names)
    if gen is None or gen.retired_at is not None:
        return 0
    async with conn.transaction():
        # The way back's row first, as a rollback's last transaction locks it (then the
        # tables): one order, and a rollback that switched meanwhile is seen here.
        if await capture.retired_locked(conn, names):
            return 0
        n = await capture.disarm_all(conn, names, source.schema)
        await conn.execute(f"TRUNCATE {names.changelog}")
        await capture.retire(conn, names, reason)
        await conn.execute(f"INSERT INTO {Bookkeeping(names.bk, source.name).s}.events (source, kind, detail) "
                           "VALUES ($1, 'reverse_retired', $2)", source.name, reason)
    await drop_lookup_indexes(conn, settings, source)
    return n


async def drop_lookup_indexes(conn: asyncpg.Connection, settings: Settings, source: SourceSettings) -> bool:
    """Once the way back has ended: syncd's REPLACE lookup indexes (_syncd_uq_*) served
    the stream from SQLite, which cannot come back now; they go, a few seconds at most
    each, within a sixth of the statement timeout. Returns True when none is left (the
    retired way back's pipeline calls this again until then)."""
    owners = await Bookkeeping(settings.postgres.bookkeeping_schema, source.name).owners(conn, source.schema)
    timeout = settings.postgres.statement_timeout_seconds
    dropped, failed, left = await collisions.drop_indexes(
        conn, source.schema, [t for t, owner in owners.items() if owner == source.name],
        lock_wait_ms(timeout), timeout / 6)
    extra = {"source": source.name, "event": "lookup_indexes_dropped"}
    if dropped:
        log.info(f"dropped {dropped} index(es) syncd kept to apply SQLite's REPLACEs (_syncd_uq_*): the way back "
                 "ended", extra=extra)
    for line in failed:
        log.warning(f"could not drop syncd's lookup index {line}; tried again at the next schema check (every "
                    "five minutes at most)", extra=extra)
    return left == 0


# --- an abandoned rollback --------------------------------------------------------------------


async def undo_abandoned_unless_switching(settings: Settings, source: SourceSettings, conn: asyncpg.Connection,
                                          key: int) -> str | None:
    """undo_abandoned under the source's switch lock (`key`); None, nothing done, while a
    cutover or rollback holds it."""
    if not await take_switch_lock(conn, key):
        return None
    try:
        return await undo_abandoned(settings, source, conn)
    finally:
        await release_switch_lock(conn, key)


async def undo_abandoned(settings: Settings, source: SourceSettings, conn: asyncpg.Connection) -> str | None:
    """With the switch lock held: a rollback that froze Postgres and died (the direction
    still to SQLite) is undone: its record closed, which lifts the freeze, and the freeze's
    triggers dropped. Those a cutover left (they pass every write) are dropped too, each
    table in a short try (capture.drop_freeze): one busy is left for the next time."""
    b = Bookkeeping(settings.postgres.bookkeeping_schema, source.name)
    names = await capture.names_of(conn, b.schema, source.name)
    if await b.direction(conn) != TO_SQLITE:
        return None
    left = await conn.fetch(f"SELECT id FROM {b.s}.switches WHERE source = $1 AND kind = 'rollback' "
                            "AND state IN ('started', 'frozen')", source.name)
    frozen = await capture.frozen_tables(conn, names, source.schema)
    if not frozen and not left:
        return None
    if left:
        async with conn.transaction():
            for r in left:
                await record_step(conn, b, r[0], "undone", finished_at=dt.datetime.now(dt.timezone.utc),
                                  detail=json.dumps({"reason": "the rollback stopped before finishing; undone"}))
    if frozen:  # a freeze an older syncd made refuses whatever the record says: its function first (no table lock)
        await conn.execute(capture.freeze_function_sql(names, FROZEN_MESSAGE))
    kept = await capture.drop_freeze(conn, names, source.schema) if frozen else 0
    later = f" (its trigger left on {kept} table(s) kept busy, for later: it passes every write now)" if kept else ""
    if not left:
        if kept < len(frozen):  # said once something went, not at every try a busy table refuses
            log.info(f"dropped the freeze a rollback left on Postgres, which passes every write since the "
                     f"cutover{later}", extra={"source": source.name, "event": "rollback_freeze_dropped"})
        return None
    what = (f"unfroze Postgres, which a rollback left frozen when it stopped before finishing{later}" if frozen
            else "closed the record of a rollback that stopped before freezing")
    log.warning(what, extra={"source": source.name, "event": "rollback_undone"})
    return what


# --- draining --------------------------------------------------------------------------------


async def reverse_position(worker: SqliteWorker, conn: asyncpg.Connection, names: Names) -> tuple[int, int]:
    """(entries SQLite has not applied, tables waiting to be copied again)."""
    return await reverse_behind(conn, names, await worker.run(applier.read_meta, META_KEY),
                                len(await worker.run(applier.read_reload)))


async def reverse_behind(conn: asyncpg.Connection, names: Names, checkpoint: str | None,
                         reloads: int) -> tuple[int, int]:
    """reverse_position() from what the file holds: its way-back checkpoint (applier
    META_KEY's value) and how many tables wait to be copied into it again."""
    cp = ReverseCheckpoint.decode(checkpoint)
    gen = await capture.generation(conn, names)
    if gen is not None and older(cp, gen):
        # An older copy of the file put back (Postgres let go of changes it lacks, or it
        # holds no position of this cutover): the way back copies each table again (its
        # reconcile marks them all).
        reloads = max(reloads, await capture.tables_owed_to_an_older_copy(conn, names))
    if cp is None or gen is None or cp.generation != gen.id:
        cp = ReverseCheckpoint(gen.id if gen else "", "1:1:")
    pending, _age = await reader.pending(conn, names, cp)
    return pending, reloads


async def drain(settings: Settings, source: SourceSettings, conn: asyncpg.Connection, worker: SqliteWorker,
                timeout: float, until=None) -> str:
    """Until SQLite has applied every change Postgres's changelog holds (and copied
    every table marked for it): by the daemon if it runs the source, else by a reverse
    pipeline run here. `until(conn, worker)` replaces the condition when given."""
    names = await capture.names_of(conn, settings.postgres.bookkeeping_schema, source.name)

    async def drained() -> bool:
        if until is not None:
            return await until(conn, worker)
        pending, reloads = await reverse_position(worker, conn, names)
        if pending == 0 and reloads == 0:
            return True
        # A table the way back held or paused meanwhile (a value SQLite cannot hold, a
        # schema change) waits for a fix in Postgres, which is frozen for the application:
        # no wait brings SQLite up to date, so the table is named now, as the pre-flight would.
        for name, row in sorted((await Bookkeeping(names.bk, source.name).load_tables(conn)).items()):
            if row.state in (bk.HELD, bk.PAUSED):
                why = row.reason or row.state
                raise Refused(f'table "{name}" does not follow Postgres ({row.state}): '
                              f'{why if holder is not None else without_daemon(why)}')
        return False

    key = await source_key(conn, names.bk, source.name)
    holder = await lock_holder(conn, key)
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
        if not await _wait(drained, timeout):
            raise TimeoutError(f"the daemon ({holder}) did not bring SQLite up to date within {timeout:g} s")
        return f"by the running daemon, {holder}"
    from syncd.reverse.pipeline import ReversePipeline

    pipeline = ReversePipeline(settings, source)
    cannot_connect = cut_off(pipeline)
    task = in_process.start(pipeline, f"drain-{source.name}", "ROLLBACK")
    try:
        ok = await _wait(drained, timeout, task, cannot_connect)
        why = pipeline.detail.partition("; retrying with backoff")[0]  # given up on here, not retried
        gave_up = not ok and cannot_connect()
    finally:
        await in_process.stop(pipeline, task)
    if gave_up:
        raise StreamCannotConnect(f"syncd's reverse stream run in this process could not connect to Postgres for "
                                  f"{CANNOT_CONNECT_SECONDS:g} s ({why})")
    if not ok:
        detail = f": {pipeline.detail}" if pipeline.detail else ""
        raise TimeoutError(f"syncd's reverse stream did not bring SQLite up to date within {timeout:g} s "
                           f"({pipeline.health}{detail})")
    return "by syncd's reverse stream run in this process (no daemon was running the source)"


async def _after_the_turn(conn: asyncpg.Connection, worker: SqliteWorker, b: Bookkeeping, switch_id: int,
                          frozen_at: float, res: RollbackResult, busy: int) -> None:
    """Once Postgres recorded the rollback: SQLite takes the application's writes again,
    and the downtime is recorded. Neither failing undoes the rollback, or is said as a
    refusal: a file still frozen is said (the daemon unfreezes it), a downtime not recorded
    is noted."""
    try:
        await worker.run(freeze.unfreeze, busy)
    except (LockTimeout, sqlite3.Error) as e:
        res.still_frozen = (f"{describe(e)}; the daemon unfreezes it at its next check ([stream] "
                            "held_table_retry_seconds), or run `syncd rollback` again")
        log.warning(f"rolled back to SQLite, but the file is still frozen: {res.still_frozen}",
                    extra={"source": b.source, "event": "rollback_done"})
        return
    res.downtime_seconds = time.monotonic() - frozen_at
    log.info(f"rolled back to SQLite: write downtime {res.downtime_seconds:.2f} s",
             extra={"source": b.source, "event": "rollback_done"})
    try:
        await conn.execute(f"UPDATE {b.s}.switches SET downtime_seconds = $2 WHERE id = $1", switch_id,
                           res.downtime_seconds)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ASYNCPG_FAULT, OSError) as e:
        res.plan.append(f"the write downtime is not in Postgres's record of the rollback: {describe(e)}")


async def _wait(cond, timeout: float, task: asyncio.Task | None = None, given_up=None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await cond():
                return True
        except sqlite3.OperationalError as e:
            if not is_busy(e):
                raise  # busy: the application holds the file a moment; not drained yet, look again
        if task is not None and task.done() or given_up is not None and given_up():
            return False
        await asyncio.sleep(POLL_SECONDS)
    return False


# --- pre-flight ---------------------------------------------------------------------------------


def without_daemon(reason: str) -> str:
    """A held table's reason where no daemon runs the source: nothing copies the table
    again once the row fits (the daemon's retry does), and the rollback does not."""
    return reason.replace(applier.ONCE_IT_FITS, "(no daemon runs this source, so nothing copies the table again "
                                                "once it fits: then start the daemon, `syncd run`, and run the "
                                                "rollback again once `syncd status` shows the table streaming)")


async def preflight(settings: Settings, source: SourceSettings, conn: asyncpg.Connection, worker: SqliteWorker,
                    b: Bookkeeping) -> list[str]:
    """Every reason not to switch this source back now."""
    names = await capture.names_of(conn, b.schema, source.name)
    problems = []
    gen = await capture.generation(conn, names)
    if gen is None:
        problems.append("Postgres has no capture for the way back (the cutover predates it); start the daemon "
                        "once so SQLite catches up from Postgres, then run the rollback again")
    elif gen.retired_at is not None:
        problems.append(f"the rollback window is over: {gen.retired_reason}")
    elif (until := gen.started_at + dt.timedelta(days=settings.cutover.keep_sqlite_days)) \
            <= (now := max(await conn.fetchval("SELECT now()"), dt.datetime.now(dt.timezone.utc))) \
            + dt.timedelta(seconds=WINDOW_MARGIN_SECONDS):
        # Over while no daemon ran: the way back ends at its next look (this rollback's own
        # stream's first), and SQLite would miss what Postgres took since the daemon stopped.
        # Or over before this rollback could end (its drain and checks): ended by a stream
        # halfway, it would switch the application back to a file without Postgres's last
        # writes. Judged by the later of Postgres's clock (which dated the window's start) and
        # this host's (by which a stream here ends the way back).
        days = settings.cutover.keep_sqlite_days
        at = f"{until.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
        problems.append(f"the rollback window is over: it ended at {at} ([cutover] keep_sqlite_days = {days:g} after "
                        "the cutover; the SQLite file is kept as it is)" if until <= now else
                        f"the rollback window ends before a rollback could end: at {at}, within "
                        f"{WINDOW_MARGIN_SECONDS / 60:g} minutes ([cutover] keep_sqlite_days = {days:g} after the "
                        "cutover; a longer keep_sqlite_days, the daemon reloaded, keeps the way back going)")
    if await worker.run(freeze.frozen) is None:
        problems.append("the SQLite file is not frozen: something else writes it (it must only follow Postgres "
                        "after a cutover); find that writer first")
    followed = {name: row for name, row in (await b.load_tables(conn)).items() if row.state != bk.REFUSED}
    for name, row in sorted(followed.items()):
        if row.state != bk.STREAMING:
            what = row.reason or {bk.LOADING: "being copied again from Postgres; run the rollback again once "
                                              "`syncd status` shows it streaming"}.get(row.state, row.state)
            if applier.ONCE_IT_FITS in what and await lock_holder(conn, b.key) is None:
                what = without_daemon(what)
            problems.append(f'table "{name}" does not follow Postgres ({row.state}): {what}')
    problems += await not_followed_yet(conn, source, b)
    problems += await differences_found(settings, source, conn, b, list(followed))
    problems += await long_holders(conn, source.schema, list(followed))
    if not problems:
        try:
            await worker.run(probe_write, settings.sqlite.write_busy_timeout_ms)
        except LockTimeout:
            problems.append(
                f"the SQLite file {source.path} stayed locked by another connection for {WRITABLE_WAIT_SECONDS:g} s "
                "(in a rollback-journal file an open read transaction holds off every write): the rollback must "
                "write it while Postgres is frozen for the application, so it would freeze Postgres that long; "
                "try again once the file is free")
    return problems


async def differences_found(settings: Settings, source: SourceSettings, conn: asyncpg.Connection, b: Bookkeeping,
                            tables: list[str]) -> list[str]:
    """Tables whose latest comparison since the cutover (the one begun last, as status
    and the report take it) found rows differing (some
    left unrepaired; a check that failed or could not compare the table since says
    nothing of them) and that still differ, verified again now: the rollback's own
    verification would find them too and undo the switch, after Postgres had been
    frozen for the application for nothing. A table fixed since (in Postgres, or by a
    repair) passes, and so do rows still in flight to SQLite (with no daemon running, the
    rollback's own drain brings them, and its verification compares them); the check is
    recorded like any other."""
    from syncd.verify import verify_source

    rows = await conn.fetch(
        f"""SELECT DISTINCT ON (table_name) table_name, missing + extra + different - repaired
            FROM {b.s}.verify_runs
            WHERE source = $1 AND table_name = ANY($2::text[]) AND full_check AND started_at > (
                SELECT max(finished_at) FROM {b.s}.switches WHERE source = $1 AND kind = 'cutover' AND state = 'done')
            ORDER BY table_name, started_at DESC, finished_at DESC, id DESC""", b.source, tables)
    differed = [name for name, left in rows if left > 0]
    if not differed:
        return []
    # With no daemon running the source nothing brings rows in flight back before the drain: not waited for.
    running = await lock_holder(conn, b.key) is not None
    checked = await verify_source(settings, source, differed, record=True,
                                  wait_seconds=VERIFY_WAIT_SECONDS if running else 0.0)
    if checked.error:
        return [f"the last verification found rows that differ in {listed([repr(t) for t in differed])}, and checking "
                f"them again failed: {checked.error}"]
    remedy = ("which the rollback's own verification would find too: make SQLite match Postgres with "
              "`syncd verify --repair` (or fix what changed it), then roll back")
    return [f'table "{t.table}": the last verification found {t.missing + t.extra + t.different} row(s) that differ '
            f"between Postgres and SQLite, still there when checked again now, {remedy}"
            if t.compared and not t.error and t.missing + t.extra + t.different else
            f'table "{t.table}": the last verification found rows that differ, and checking it again did not '
            f"settle it ({t.error or t.reason or f'{t.pending} row(s) still being brought back'}): run the rollback "
            "again in a moment"
            for t in checked.tables if not t.equal and not (t.compared and not t.error
                                                             and t.missing + t.extra + t.different == 0)]


async def not_followed_yet(conn: asyncpg.Connection, source: SourceSettings, b: Bookkeeping) -> list[str]:
    """Tables in Postgres the way back would follow but has not taken up yet (made by
    the application moments ago, or while no daemon ran): SQLite has none of their rows,
    and verification, which compares SQLite's tables, would not see them missing."""
    from syncd.reverse import tables

    out = []
    for name in await tables.not_taken_up(conn, source, b):
        out.append(f'table "{name}" exists in Postgres and SQLite does not follow it yet (made there after the '
                   "cutover; the daemon takes it up within seconds once it runs): run the rollback again once it does")
    return out


async def _columns(conn: asyncpg.Connection, schema: str, condition: str) -> list:
    """(table, column) of the schema's tables whose pg_attribute row `a` meets `condition`."""
    return await conn.fetch(
        "SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') "
        f"AND a.attnum > 0 AND NOT a.attisdropped AND {condition} ORDER BY 1, 2", schema)


async def stricter_in_postgres(conn: asyncpg.Connection, schema: str, specs: dict) -> list[str]:
    """NOT NULL columns of Postgres whose SQLite column takes NULL, and constraints and
    unique indexes syncd did not make (the application's, made in Postgres after the
    cutover): after the rollback, the first row SQLite stores that breaks one holds its
    table. Said before the switch, not refused: a rollback may be the way out of an
    emergency."""
    rows = await _columns(conn, schema, "a.attnotnull")
    out = []
    for table, column in rows:
        spec = specs.get(table)
        if spec is None or column in spec.key or column not in spec.column_names or spec.column(column).notnull:
            continue
        out.append(f'warning: Postgres refuses NULL in "{table}"."{column}" (NOT NULL, set in Postgres) and SQLite '
                   "does not: after the rollback a row the application writes without a value there holds the "
                   f'table; drop it in Postgres (ALTER TABLE ... ALTER COLUMN "{column}" DROP NOT NULL) or have the '
                   "application always write the column")
    # CHECK, UNIQUE, FOREIGN KEY and EXCLUDE constraints, and unique indexes, that syncd did
    # not make (each of its own carries the parity comment): the application's, in Postgres
    # only. A row SQLite takes that breaks one holds its table after the rollback.
    made = await conn.fetch(
        "SELECT c.relname, con.conname, pg_get_constraintdef(con.oid), "
        "con.contype = 'f' AND (con.confdeltype IN ('c', 'n', 'd') OR con.confupdtype IN ('c', 'n', 'd')) "
        "FROM pg_constraint con "
        "JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND con.contype IN ('c', 'u', 'f', 'x') "
        "AND coalesce(obj_description(con.oid, 'pg_constraint'), '') NOT LIKE $2 "
        "UNION ALL "
        "SELECT c.relname, i.relname, pg_get_indexdef(i.oid), false FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND x.indisunique AND NOT x.indisprimary "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.oid AND k.contype IN ('p', 'u', 'x')) "
        "AND coalesce(obj_description(i.oid, 'pg_class'), '') NOT LIKE $2 ORDER BY 1, 2",
        schema, MARK + "%")
    for table, name, definition, acts in made:
        if table not in specs:
            continue
        # A foreign key with an action (CASCADE, SET NULL, SET DEFAULT) breaks nothing when a
        # row it points at goes: Postgres changes the rows pointing at it, there only.
        also = ("; deleting or re-keying in SQLite a row it points at deletes or changes the rows pointing at it in "
                "Postgres only (its ON DELETE/ON UPDATE action), which then differ from SQLite's" if acts else "")
        out.append(f'warning: Postgres holds "{name}" on "{table}" ({definition}), which SQLite does not: '
                   f"after the rollback a row the application writes to SQLite that breaks it holds the table{also}; "
                   "drop it in Postgres or keep the application within it")
    # Foreign keys of tables outside the schema (another application's) pointing at the
    # source's tables: SQLite knows nothing of them, nor of the rows they guard.
    elsewhere = await conn.fetch(
        "SELECT t.relname, con.conname, cn.nspname, c.relname, pg_get_constraintdef(con.oid), "
        "con.confdeltype IN ('c', 'n', 'd') OR con.confupdtype IN ('c', 'n', 'd') "
        "FROM pg_constraint con JOIN pg_class t ON t.oid = con.confrelid "
        "JOIN pg_namespace n ON n.oid = t.relnamespace JOIN pg_class c ON c.oid = con.conrelid "
        "JOIN pg_namespace cn ON cn.oid = c.relnamespace "
        "WHERE con.contype = 'f' AND n.nspname = $1 AND cn.nspname <> $1 ORDER BY 1, 2", schema)
    for table, name, holder_schema, holder, definition, acts in elsewhere:
        if table not in specs:
            continue
        what = ("deletes or changes the rows pointing at it in Postgres only (its ON DELETE/ON UPDATE action)"
                if acts else "is refused by Postgres while a row points at it, and holds the table")
        out.append(f'warning: Postgres holds "{name}" of "{holder_schema}"."{holder}" ({definition}), which points at '
                   f'"{table}" and which SQLite does not: after the rollback deleting or re-keying in SQLite a row it '
                   f"points at {what}; drop it in Postgres or keep the application within it")
    return out


async def not_computed_in_postgres(conn: asyncpg.Connection, schema: str, specs: dict) -> list[str]:
    """Generated columns of SQLite that Postgres holds as plain columns (the expression
    is not carried at the cutover): rows the application wrote in Postgres since hold
    what it wrote there, and the rollback's verification refuses any that differ from
    what SQLite computes."""
    rows = await _columns(conn, schema, "a.attgenerated = ''")
    out = []
    for table, column in rows:
        spec = specs.get(table)
        if spec is None or column not in spec.column_names or not spec.column(column).generated:
            continue
        out.append(f'warning: "{table}"."{column}" is computed by SQLite (GENERATED) and not by Postgres: a row the '
                   "application wrote in Postgres holds the value it wrote there (NULL if none), and the rollback's "
                   "verification refuses the switch where that differs from SQLite's; set it in Postgres to what "
                   "SQLite computes first (or make it GENERATED ALWAYS AS (...) STORED there)")
    return out


async def computed_only_in_postgres(conn: asyncpg.Connection, schema: str, specs: dict) -> list[str]:
    """Generated columns of Postgres (GENERATED ALWAYS AS (...) STORED, the application's,
    made there after the cutover) that SQLite holds as plain columns: after the rollback
    a row the application writes to SQLite holds what it writes there (NULL if none),
    where Postgres computes its own value, and each such row differs."""
    out = []
    for table, column in await _columns(conn, schema, "a.attgenerated <> ''"):
        spec = specs.get(table)
        if spec is None or column not in spec.column_names or spec.column(column).generated:
            continue
        out.append(f'warning: Postgres computes "{table}"."{column}" (GENERATED, set in Postgres) and SQLite does '
                   "not: after the rollback a row the application writes to SQLite holds what it writes there (NULL "
                   "if none), and differs wherever that is not what Postgres computes; have the application write "
                   "the same value, or drop the expression in Postgres (ALTER TABLE ... ALTER COLUMN "
                   f'"{column}" DROP EXPRESSION)')
    return out


async def filled_only_in_postgres(conn: asyncpg.Connection, schema: str, specs: dict) -> list[str]:
    """Columns Postgres fills when a row leaves them out (a DEFAULT or an identity the
    application gave them there) and SQLite does not (no default; the rowid fills an
    INTEGER PRIMARY KEY): after the rollback the application's rows get NULL there."""
    out = []
    for table, column, _notnull, what in await ddl.column_fills(conn, schema):
        spec = specs.get(table)
        if what is None or spec is None or column not in spec.column_names:
            continue
        col = spec.column(column)
        # An INTEGER PRIMARY KEY, or syncd's column of a table without a key: the rowid fills it
        # (not an INTEGER PRIMARY KEY DESC, nor a key INTEGER UNIQUE: ordinary columns there)
        rowid = (spec.rowid_alias and spec.key == (column,)) or col.sqlite_expr is not None
        if col.default_sql is not None or col.generated or rowid:
            continue
        gets = "SQLite refuses such a row (NOT NULL there)" if col.notnull else "such a row gets NULL there"
        out.append(f'warning: Postgres fills "{table}"."{column}" in a row that leaves it out ({what}, set in '
                   f"Postgres) and SQLite does not: after the rollback {gets}; have the "
                   "application always write the column")
    return out


async def generated_always(conn: asyncpg.Connection, schema: str, specs: dict) -> list[tuple[str, str]]:
    """(table, column) of the identity columns the application made GENERATED ALWAYS in
    Postgres outside a table's key: Postgres takes no value but DEFAULT there on UPDATE
    (OVERRIDING SYSTEM VALUE covers an INSERT only), so once SQLite is the application's
    again, the first row changed there would hold the table. The rollback makes each
    GENERATED BY DEFAULT: the sequence goes on as it is, and values come from SQLite."""
    return [(table, column) for table, column in await _columns(conn, schema, "a.attidentity = 'a'")
            if table in specs and column in specs[table].column_names and column not in specs[table].key]


def generated_always_note(table: str, column: str, done: bool) -> str:
    return (f'"{table}"."{column}" is GENERATED ALWAYS AS IDENTITY in Postgres, outside the key, and takes no value '
            f"from SQLite on UPDATE: {'made' if done else 'the switch makes it'} GENERATED BY DEFAULT (its sequence "
            "goes on as it is; set it back after a later cutover if the application relies on it)")


def _said_by_default(res: RollbackResult, source: SourceSettings, columns: list[tuple[str, str]]) -> None:
    """The identities the switch made GENERATED BY DEFAULT, in its output and the log."""
    for table, column in columns:
        note = generated_always_note(table, column, True)
        res.plan.append(note)
        log.info(note, extra={"source": source.name, "event": "identity_by_default"})


async def _by_default(conn: asyncpg.Connection, schema: str, columns: list[tuple[str, str]], timeout: float) -> None:
    """Each column GENERATED BY DEFAULT, inside the switch's last transaction, waiting
    for a table's lock no longer than the lock wait (the switch is undone then)."""
    if not columns:
        return
    prior = await conn.fetchval("SELECT current_setting('lock_timeout')")
    await conn.execute(f"SET LOCAL lock_timeout = '{lock_wait_ms(timeout)}ms'")
    for table, column in columns:
        await conn.execute(f"ALTER TABLE {quote_pg_ident(schema)}.{quote_pg_ident(table)} "
                           f"ALTER COLUMN {quote_pg_ident(column)} SET GENERATED BY DEFAULT")
    await conn.execute("SELECT set_config('lock_timeout', $1, true)", prior)


def probe_write(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """Whether syncd can write the file now: one short write transaction that changes
    nothing of the application's (syncd's own meta row rewritten as it is), tried
    politely (short lock waits, stepping aside between tries) for WRITABLE_WAIT_SECONDS."""
    write_transaction(conn, lambda c: c.execute(f"UPDATE main.{quote_ident(META)} SET value = value "
                                                "WHERE key = 'capture_id'"),
                      busy_timeout_ms=busy_timeout_ms, deadline_seconds=WRITABLE_WAIT_SECONDS)


def _sqlite_sequence(conn: sqlite3.Connection) -> dict[str, int]:
    if not conn.execute("SELECT 1 FROM main.sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
        return {}
    return {name: int(seq or 0) for name, seq in conn.execute("SELECT name, seq FROM main.sqlite_sequence")}


def _autoincrement(conn: sqlite3.Connection, name: str) -> bool:
    sql = conn.execute("SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return bool(sql and sql[0] and "AUTOINCREMENT" in sql[0].upper())


def autoincrement_tables(conn: sqlite3.Connection, names: list[str]) -> list[str]:
    """Those of `names` SQLite numbers AUTOINCREMENT."""
    have = _sqlite_sequence(conn)
    return [name for name in names if name in have or _autoincrement(conn, name)]


# A sequence set back to one table's highest id would hand out again the ids of another table
# that draws from it too.
SHARED_SEQUENCE = "; where other tables draw from the same sequence, set it back to the highest id among them all"


def _setval_back(seq: str, top: str) -> str:
    """SQL setting `seq` back to `top` (a query of one number), so its next is past it; where
    `top` is NULL (no row), back to its start, as setval of NULL would change nothing."""
    return f"SELECT setval({quote_literal(seq)}, coalesce({top}, 1), {top} IS NOT NULL)"


async def autoincrement_topped(conn: asyncpg.Connection, worker: SqliteWorker, schema: str,
                               specs: dict) -> list[str]:
    """Tables SQLite numbers AUTOINCREMENT where Postgres holds a row at SQLite's largest
    id, or its sequence handed that id out: the rollback would take the table's
    sqlite_sequence entry there, and every INSERT without an id would fail after it
    (SQLITE_FULL; past the largest rowid only a table without AUTOINCREMENT picks an
    unused one). As the cutover refuses such a table (cutover.topped)."""
    out = []
    for name in await worker.run(autoincrement_tables, sorted(specs)):
        col = ddl.identity_column(specs[name])
        table = qualified(schema, name)
        if col is None or await conn.fetchval("SELECT to_regclass($1)", table) is None:
            continue
        q = quote_pg_ident(col)
        seq = await identity_sequence(conn, table, col)
        then = (f'after a rollback SQLite numbers the table AUTOINCREMENT past it, and every INSERT there without '
                f'a value for "{col}" would fail ("database or disk is full")')
        handed_out = (await sequence_tops(conn, schema, {name: specs[name]})).get(name, 0)
        if await conn.fetchval(f"SELECT max({q}) FROM {table}") == MAX_ROWID:
            fix = (f"UPDATE {table} SET {q} = nextval({quote_literal(seq)}) WHERE {q} = {MAX_ROWID}" if seq else
                   f"UPDATE {table} SET {q} = ... WHERE {q} = {MAX_ROWID}")
            if seq and handed_out >= MAX_ROWID:  # the sequence gave that id: nextval has none left to give
                fix = f"{_setval_back(seq, f'(SELECT max({q}) FROM {table} WHERE {q} < {MAX_ROWID})')}; {fix}"
            out.append(f'table "{name}": Postgres holds a row with "{col}" {MAX_ROWID}, the largest id SQLite has: '
                       f"{then}; give that row a smaller \"{col}\" in Postgres ({fix}, and whatever points at it), "
                       "then roll back once SQLite follows (`syncd status`)"
                       + (SHARED_SEQUENCE if seq and handed_out >= MAX_ROWID else ""))
        elif handed_out >= MAX_ROWID:
            out.append(f'table "{name}": Postgres\'s sequence {seq} for "{col}" has handed out {MAX_ROWID}, the '
                       f"largest id SQLite has: {then}; set the sequence back to the table's highest \"{col}\" "
                       f"({_setval_back(seq, f'(SELECT max({q}) FROM {table})')}), then roll back{SHARED_SEQUENCE}")
    return out


def keep_autoincrement_past(conn: sqlite3.Connection, tops: dict[str, int], busy_timeout_ms: int,
                            carried: frozenset[str]) -> dict[str, int]:
    """An AUTOINCREMENT table never hands out a number twice: its sqlite_sequence entry
    goes past every number Postgres handed out while the application wrote there (a
    row deleted since, or a transaction rolled back, left no row to carry it back).
    An entry at SQLite's largest id (a row the way back brought there, given a smaller
    id in Postgres since, as the rollback's refusal says) comes back to the highest id
    Postgres handed out or holds: left there, no INSERT without an id would work. Only
    the `carried` tables' entries are brought back so: a table syncd does not carry is
    the application's own, its ids never in Postgres."""
    have = _sqlite_sequence(conn)
    raise_to = {name: top for name, top in tops.items()
                if top > int(have.get(name) or 0) and (name in have or _autoincrement(conn, name))}
    for name, seq in have.items():
        if seq >= MAX_ROWID and name in carried and name not in raise_to and conn.execute(
                "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone():
            rows = conn.execute(f"SELECT max(rowid) FROM main.{quote_ident(name)}").fetchone()[0] or 0
            high = max(tops.get(name, 0), int(rows))
            if high < MAX_ROWID:
                raise_to[name] = high
    if not raise_to:
        return {}

    def write(c: sqlite3.Connection) -> None:
        for name, top in raise_to.items():
            if name in have:
                c.execute("UPDATE main.sqlite_sequence SET seq = ? WHERE name = ?", (top, name))
            else:
                c.execute("INSERT INTO main.sqlite_sequence(name, seq) VALUES (?, ?)", (name, top))

    write_transaction(conn, write, busy_timeout_ms=busy_timeout_ms)
    return raise_to


def _row_count(conn: sqlite3.Connection, tables: list[str]) -> int:
    return sum(count_rows(conn, t) for t in tables)  # a window at a time, as cutover._row_count


def _changelog_top(conn: sqlite3.Connection) -> int:
    return conn.execute(f"SELECT coalesce(max(seq), 0) FROM main.{quote_ident(CHANGELOG)}").fetchone()[0]


def _estimate(rows: int, pending: int) -> float:
    # Like cutover._estimate: verify reads ~300k rows/s per side; the way back applies
    # several thousand changes/s (bench/reverse_stream.py); plus fixed costs.
    return 0.5 + rows / 300_000 + pending / 5_000


# --- the command ----------------------------------------------------------------------------------


async def rollback(settings: Settings, source: SourceSettings, *, dry_run: bool = False) -> RollbackResult:
    res = RollbackResult(source=source.name, dry_run=dry_run)
    b = Bookkeeping(settings.postgres.bookkeeping_schema, source.name)
    conn = await connect(settings.direct_dsn_for(source), settings.password(), settings.postgres)
    worker = SqliteWorker(source.path, f"{source.name}-rollback", settings.sqlite.read_busy_timeout_ms)
    locked = False
    try:
        try:
            await worker.open()
            gone = None
        except SourceFileError as e:
            # A file gone from a source not cut over (a tenant given up): SQLite was the
            # application's database all along, nothing to roll back; said so, not refused.
            # An open switch is met as with the file there (below). Only a file that is not
            # there: one unreadable or being replaced may still be frozen, its switch's
            # guard in Postgres the one thing keeping the application out.
            if not await bookkeeping_exists(conn, b.schema) or os.path.exists(source.path):
                raise
            gone = e
        await ensure_bookkeeping(conn, b.schema)
        known = await b.load_source(conn) is not None
        if gone is not None and not known:
            raise gone
        b.key = await source_key(conn, b.schema, source.name)
        await capture.ensure_registry(conn, Names(b.schema, source.name, b.key))
        if not known:
            raise Refused("syncd has not set this source up in Postgres yet; there is nothing to roll back")
        if not await take_switch_lock(conn, b.key):
            raise Refused(f"a cutover or rollback of this source is already running: "
                          f"{await switch_holder(conn, b.key) or 'another session'}")
        locked = True
        direction = await b.direction(conn)
        if gone is not None and direction != TO_POSTGRES:
            raise gone
        if direction == TO_POSTGRES:
            from syncd import cutover
            # SQLite left frozen (nothing of it to unfreeze when the file is gone)
            undone = await cutover.undo_abandoned(settings, source, conn, None if gone else worker)
            res.already = await _not_cut_over(conn, b)
            if undone:
                res.plan.append(undone)
            return res
        if await takes_no_writes(conn):
            raise Refused(f"{READ_ONLY_DATABASE}: a rollback freezes it for the application and records the switch "
                          "there; roll back once it takes writes")
        undone = await undo_abandoned(settings, source, conn)
        if undone:
            res.plan.append(undone)
        problems = await preflight(settings, source, conn, worker, b)
        if problems:
            res.problems = problems
            return res
        tables = [n for n, r in (await b.load_tables(conn)).items() if r.state == bk.STREAMING]
        specs = await asyncio.to_thread(read_specs, source)
        await worker.run(renumbered_unseen, specs, "roll back")
        topped = await autoincrement_topped(conn, worker, source.schema, specs)
        if topped:
            res.problems = topped
            return res
        stricter = await stricter_in_postgres(conn, source.schema, specs)
        stricter += await not_computed_in_postgres(conn, source.schema, specs)
        stricter += await filled_only_in_postgres(conn, source.schema, specs)
        stricter += await computed_only_in_postgres(conn, source.schema, specs)
        stricter += [generated_always_note(t, c, False) for t, c in await generated_always(conn, source.schema, specs)]
        rows = await worker.run(_row_count, tables)
        pending, _ = await reverse_position(worker, conn, Names(b.schema, source.name, b.key))
        res.plan.append(f"{len(tables)} table(s), {rows} row(s) to verify, {pending} change(s) to bring back")
        res.plan += stricter
        if dry_run:
            res.plan.append(f"expected write downtime: about {_estimate(rows, pending):.1f} s "
                            "(drain, a full verification, then one Postgres and one SQLite transaction)")
            return res
        await _run(settings, source, conn, worker, b, tables, res)
        return res
    except Refused as e:
        res.problems.append(str(e))
        return res
    finally:
        if locked and not conn.is_closed():
            await release_switch_lock(conn, b.key)
        await close_quietly(conn)
        await worker.close()
        worker.shutdown()


async def _not_cut_over(conn: asyncpg.Connection, b: Bookkeeping) -> str:
    """Why a source whose direction is to Postgres has nothing to roll back: when it was
    rolled back last (UTC), or that it was never cut over."""
    at = await conn.fetchval(f"SELECT max(finished_at) FROM {b.s}.switches WHERE source = $1 "
                             f"AND kind = 'rollback' AND state = 'done'", b.source)
    return f"rolled back {at.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC" if at else "never cut over"


async def _run(settings: Settings, source: SourceSettings, conn: asyncpg.Connection, worker: SqliteWorker,
               b: Bookkeeping, tables: list[str], res: RollbackResult) -> None:
    from syncd.verify import verify_source
    from syncd.cutover import _judge

    names = Names(b.schema, source.name, b.key)
    busy = settings.sqlite.write_busy_timeout_ms
    switch_id = await conn.fetchval(f"INSERT INTO {b.s}.switches (source, kind, state, who) "
                                    f"VALUES ($1, 'rollback', 'started', $2) RETURNING id", source.name, who())
    STARTED_SWITCHES.append(switch_id)
    await _hold("started")
    stamp = dt.datetime.now(dt.timezone.utc)
    # Told while the rollback runs too (and after one killed there, until it is undone),
    # while the file still refuses the application: said as the cutover's freeze says it.
    message = (f"moved back to SQLite by syncd, or being moved (`syncd rollback` begun at {stamp:%Y-%m-%d %H:%M:%S} "
               "UTC): the application writes its SQLite file once `syncd rollback` has finished, not before (the "
               "file refuses its writes until then)")
    try:
        async with conn.transaction():
            await capture.freeze(conn, names, source.schema, tables, message)
    except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):  # rolled back: nothing frozen
        holders = await table_holders(conn, source.schema, tables)
        await record_step(conn, b, switch_id, "undone", finished_at=dt.datetime.now(dt.timezone.utc),
                          detail=json.dumps({"reason": "tables busy"}))
        raise Refused(f"Postgres could not be frozen for the application: {holders} kept a table busy past the lock "
                      f"wait (an open transaction that used it); nothing changed: try again once it is free") from None
    frozen_at = time.monotonic()
    always: list[tuple[str, str]] = []  # GENERATED ALWAYS identities the last transaction makes BY DEFAULT
    turned = False
    committing = False  # the turn's transaction is being committed: its outcome is Postgres's to tell
    try:  # from the freeze on, anything stopping the switch (an error, Ctrl-C) undoes it
        await record_step(conn, b, switch_id, "frozen", frozen_at=dt.datetime.now(dt.timezone.utc))
        await _hold("frozen")
        try:
            how = await drain(settings, source, conn, worker, DRAIN_SECONDS)
        except (StreamCannotConnect, PostgresUnavailable) as e:  # the drain's own connections
            raise Refused(f"the last changes cannot reach SQLite: {e}; find why syncd cannot connect (a CONNECTION "
                          "LIMIT of its role or database reached, max_connections, the network), then run "
                          "`syncd rollback` again") from None
        except TimeoutError as e:
            if not str(e):
                raise  # a statement Postgres did not answer in time, not the drain's wait
            raise Refused(f"the last changes did not reach SQLite: {e}; find what holds the way back up "
                          "(`syncd status`, the daemon's log), then run `syncd rollback` again") from None
        late = await not_followed_yet(conn, source, b)  # made while Postgres was frozen for the old ones
        if late:
            raise Refused(late[0])
        res.plan.append(f"drained: SQLite holds every change Postgres recorded ({how})")
        await _hold("drained")
        checked = await verify_source(settings, source, record=True, wait_seconds=VERIFY_WAIT_SECONDS)
        _judge(checked)
        res.plan.append(f"verified equal: {sum(t.rows_sqlite or 0 for t in checked.tables)} row(s) in "
                        f"{len(checked.tables)} table(s)")
        await _hold("verified")
        specs = await asyncio.to_thread(read_specs, source)
        # Read before the check below: a sequence set to SQLite's largest id after this read
        # is refused there, and one set after the check is not in what SQLite takes.
        tops = await sequence_tops(conn, source.schema, specs)
        topped = await autoincrement_topped(conn, worker, source.schema, specs)  # a row written since the pre-flight
        if topped:
            raise Refused("; ".join(topped))
        raised = await worker.run(keep_autoincrement_past, tops, busy, frozenset(specs))
        res.plan += [f"{name}: AUTOINCREMENT continues after {n}, the highest id Postgres handed out or holds"
                     for name, n in sorted(raised.items())]
        top = await worker.run(_changelog_top)
        always = await generated_always(conn, source.schema, specs)

        quieted: list[app_triggers.Trigger] = []
        planned = len(res.plan)

        async def turn() -> None:
            nonlocal committing, quieted
            del res.plan[planned:]
            async with conn.transaction():
                # The way back ended meanwhile (its window closed while this rollback ran): SQLite
                # may miss what Postgres took since, and nothing brings it any more. The row is
                # locked first, as end_way_back locks it: an end from now waits for this switch.
                if await capture.retired_locked(conn, names):
                    raise WayBackEnded("the way back ended while the rollback ran (the rollback window closed): "
                                       "SQLite may miss Postgres's last writes")
                await _by_default(conn, source.schema, always, settings.postgres.statement_timeout_seconds)
                # The application's own Postgres triggers would run again on the rows the
                # forward stream brings, which SQLite's triggers shaped already.
                try:
                    quieted = await app_triggers.quiet(conn, b.schema, source.name, source.schema, tables)
                except app_triggers.TriggersKept as e:
                    raise Refused(str(e)) from None
                res.plan += [app_triggers.line(t, disabled=True) for t in quieted]
                # Dual-write begins anew: the checklist's [cutover] min_days, and its window of
                # zero consistency errors, count from here for the next cutover.
                await conn.execute(f"UPDATE {b.s}.sources SET direction = $2, applied_seq = $3, "
                                   "streaming_since = now() WHERE source = $1", source.name, TO_POSTGRES, top)
                await conn.execute(f"DELETE FROM {b.s}.applied_batches WHERE source = $1", source.name)
                await capture.disarm_all(conn, names, source.schema)
                await _hold("finishing")
                await record_step(conn, b, switch_id, "done", finished_at=dt.datetime.now(dt.timezone.utc),
                                  downtime_seconds=time.monotonic() - frozen_at,
                                  detail=json.dumps({"steps": res.plan}))
                committing = True

        await while_tables_busy(turn, conn, source, tables, "the switch's last transaction",
                                 settings.postgres.statement_timeout_seconds)
        turned = True
        res.done = True
        app_triggers.say(source.name, quieted, disabled=True)
        _said_by_default(res, source, always)
        res.plan.append(f"the forward stream resumes after change {top} of SQLite's changelog")
        await _hold("turned")
        await _after_the_turn(conn, worker, b, switch_id, frozen_at, res, busy)
    except BaseException as e:
        if turned:
            # Past the turn there is no way back to undo to: the daemon (or the next run)
            # unfreezes SQLite, whose freeze nobody holds any more.
            raise
        reason = undo_reason(e)
        pg, own = await answering(settings, source, conn)
        try:
            went = await recorded_direction(pg, b) if committing else TO_SQLITE
            if went == TO_POSTGRES:  # the turn committed: only its reply was lost; finish as after it
                res.done = True
                res.plan.append(f"Postgres recorded the rollback; its confirmation did not reach syncd ({reason})")
                _said_by_default(res, source, always)
                await _after_the_turn(pg, worker, b, switch_id, frozen_at, res, busy)
            elif went is None:
                res.unknown = True
                res.problems.append(
                    f"{reason}; whether Postgres recorded the rollback is unknown (it cannot be asked now), so both "
                    "sides stay frozen for the application and no write can be lost either way: once Postgres "
                    "answers, the daemon finishes the rollback or undoes it, whichever Postgres recorded "
                    "(`syncd rollback` again settles it too)")
            elif pg is not None:
                async def undo() -> None:
                    async with pg.transaction():
                        await capture.unfreeze(pg, names, source.schema)
                        await record_step(pg, b, switch_id, "undone", finished_at=dt.datetime.now(dt.timezone.utc),
                                          detail=json.dumps({"reason": reason}))

                try:
                    # After the turn waited in vain, the same transaction is not waited for twice.
                    await while_tables_busy(undo, pg, source, tables, "the undo of the freeze",
                                             0 if isinstance(e, TablesBusy)
                                             else settings.postgres.statement_timeout_seconds)
                except TablesBusy as busy:
                    res.undo_pending = True
                    res.problems.append(f"{reason}; not undone yet: {busy}. Postgres stays frozen for the "
                                        "application until that transaction ends; the daemon then undoes the "
                                        "rollback (`syncd rollback` again settles it too)")
                else:
                    res.undone = True
                    # The way back is the daemon's: with none running the source, SQLite misses
                    # Postgres's writes until one starts (it brings them then, nothing lost).
                    try:
                        running = await lock_holder(pg, b.key) is not None
                    except Exception:  # noqa: BLE001 - not known: the undo is said all the same
                        running = None
                    follows = ("the SQLite file is kept as it was (the way back has ended)"
                               if isinstance(e, WayBackEnded) else "SQLite keeps following it"
                               if running else
                               "no daemon holds this source now (one reconnecting after a Postgres restart takes "
                               "it back), so SQLite does not follow Postgres's writes until one runs it: if none "
                               "runs, start it (`syncd run`), which brings them to SQLite" if running is False else
                               "SQLite follows it while the daemon runs this source (start it, `syncd run`, if none "
                               "does)")
                    res.problems.append(f"{reason}; undone: Postgres takes the application's writes again and "
                                        f"{follows}")
            else:  # Postgres cannot be reached to undo the freeze: it stays frozen until someone can
                res.undo_pending = True
                res.problems.append(f"{reason}; not undone yet: Postgres cannot be reached now, and stays frozen for "
                                    "the application until the daemon undoes the rollback once it answers (start "
                                    "it, `syncd run`, if none runs this source; `syncd rollback` again settles it "
                                    "too)")
        finally:
            if own:
                await close_quietly(pg)
        if isinstance(e, SETTLED):
            return
        raise
