"""`syncd cutover`: switch a source's application from SQLite to Postgres, safely.

The order online-migration tools share, for SQLite: check everything the report's
checklist demands, freeze the SQLite file for the application (its writes fail at once
with a message saying where the data went; readers are untouched), drain the stream to
the last change, verify every row, then in one Postgres transaction set every identity
past SQLite's high mark, finish schema parity, try an INSERT without an id per table
(rolled back), and record the switch. Anything failing after the freeze undoes it: the
file is unfrozen and everything is as before.

Crash safety: the command holds a per-source switch lock for its whole run, and every
step is recorded in `<bookkeeping>.switches` before it is taken. A file left frozen
with nobody holding the lock (the command was killed) is unfrozen again by the next
`syncd cutover` of that source, and by the daemon within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import getpass
import json
import logging
import os
import socket
import sqlite3
import time
from dataclasses import dataclass, field
from urllib.parse import quote

import asyncpg

from syncd import parity
from syncd.config import Settings, SourceSettings
from syncd.identifiers import PG_MAX_IDENTIFIER_BYTES, qualified, quote_ident, quote_pg_ident, sqlite_folded
from syncd.model import TO_POSTGRES, TO_SQLITE, TableSpec
from syncd.postgres import app_triggers, cutover_guard, ddl
from syncd.postgres.bookkeeping import (HELD, PAUSED, SWITCH_CLASS, Bookkeeping, bookkeeping_exists, ensure_bookkeeping,
                                       shared_key_line, sharing, source_key)
from syncd.postgres.connect import (ASYNCPG_FAULT, READ_ONLY_DATABASE, PostgresUnavailable, close_quietly, connect,
                                    describe, postgres_lost, takes_no_writes)
from syncd.printable import listed, shorten, text_repr
from syncd.reverse.capture import FREEZE_LOCK_STEP
from syncd.reverse.capture import LOCK_TIMEOUT as TRIGGER_LOCK_WAIT
from syncd.sqlite import capture, freeze, reader
from syncd.sqlite.capture import LockTimeout
from syncd.sqlite.connection import SourceFileError, SqliteWorker, not_utf8
from syncd.sqlite.introspect import introspect
from syncd.table_locks import (TablesBusy, blockers_named, long_holders, shorten_lock_waits, table_holders,
                               take_tables, while_tables_busy)
from syncd.types import PgType

log = logging.getLogger("syncd")

DRAIN_SECONDS = 120.0
VERIFY_WAIT_SECONDS = 30.0


class Refused(Exception):
    """The cutover cannot go ahead (or had to be undone); the message says why."""


@dataclass
class CutoverResult:
    source: str
    done: bool = False
    already: str | None = None  # cut over earlier: when
    dry_run: bool = False
    problems: list[str] = field(default_factory=list)  # why it was refused or undone
    undone: bool = False
    unknown: bool = False  # Postgres could not be asked whether its last transaction committed
    downtime_seconds: float | None = None
    plan: list[str] = field(default_factory=list)  # what it did (or, dry run, would do)

    @property
    def ok(self) -> bool:
        return not self.problems


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} (pid {os.getpid()})"


# The switches this process started (`syncd cutover`, `syncd rollback`): what a Ctrl-C
# report looks up (cli/interrupted.py).
STARTED_SWITCHES: list[int] = []


async def hold_at(verb: str, step: str) -> None:
    """Tests' hook: with SYNCD_<VERB>_HOLD_AT=<step>, the switch stops at that step, says
    so, and waits to be killed, interrupted, or (with SYNCD_<VERB>_RESUME_ON=<path>) for
    that file to exist. Several steps, comma-separated: each holds, the file removed as
    each goes on (the next waits for it to be created again)."""
    steps = os.environ.get(f"SYNCD_{verb}_HOLD_AT", "").split(",")
    if step not in steps:
        return
    resume_on = os.environ.get(f"SYNCD_{verb}_RESUME_ON")
    print(f"holding at {step}", flush=True)
    while not (resume_on and os.path.exists(resume_on)):
        # until killed, or interrupted (Ctrl-C cancels the command's task here)
        await asyncio.sleep(0.1 if resume_on else 1)
    if len(steps) > 1:
        os.remove(resume_on)


async def _hold(step: str) -> None:
    await hold_at("CUTOVER", step)


def on_postgres(e: BaseException) -> bool:
    """`e` is Postgres's, or its connection's (lost, no answer in time): not a file's."""
    from syncd.report.facts import SourceNotMeasured

    if isinstance(e, OSError) and e.filename is not None or isinstance(e, SourceNotMeasured):
        return False  # a file's; or a measure of the report's, which names Postgres itself
    if isinstance(e, TimeoutError):
        return not str(e)  # a statement's (asyncpg's, unworded); syncd's own waits say what they waited for
    return isinstance(e, (asyncpg.PostgresError, asyncpg.InterfaceError, ASYNCPG_FAULT, OSError))


def undo_reason(e: BaseException) -> str:
    """Why a switch (cutover or rollback) was undone, for its record and the operator."""
    if isinstance(e, (Refused, TablesBusy, SourceFileError)) or isinstance(e, TimeoutError) and str(e):
        return str(e)  # each says what it is (syncd's own waits, what they waited for)
    if isinstance(e, (asyncio.CancelledError, KeyboardInterrupt)):
        return "interrupted (Ctrl-C or a stop signal) before the switch was done"
    if on_postgres(e):
        # the connection lost, no answer in time (what was waited for), or Postgres's refusal
        return postgres_lost(e) or f"Postgres: {describe(e)}"
    if isinstance(e, (sqlite3.Error, LockTimeout)):
        return f"the SQLite file: {describe(e)}"
    return f"{type(e).__name__}: {describe(e)}"


# --- the switch lock and record ------------------------------------------------------


async def take_switch_lock(conn: asyncpg.Connection, key: int) -> bool:
    """The switch lock of the source whose key (bookkeeping.source_key) is `key`."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", SWITCH_CLASS, key))


async def release_switch_lock(conn: asyncpg.Connection, key: int) -> None:
    await conn.fetchval("SELECT pg_advisory_unlock($1, $2)", SWITCH_CLASS, key)


async def switch_holder(conn: asyncpg.Connection, key: int) -> str | None:
    row = await conn.fetchrow(
        """SELECT a.application_name, a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.classid = $1::oid AND l.objid = $2::oid AND l.granted
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
        SWITCH_CLASS, key)
    return None if row is None else f"{row[0] or 'a client'} (Postgres backend {row[1]})"


ASK_SECONDS = 5.0  # how long a switch that failed waits for Postgres to say what it recorded
# Failures a switch reports in its result (settled: done, undone or unknown, said in one
# line); anything else (Ctrl-C, a bug) is raised after the switch is settled.
SETTLED = (Refused, TablesBusy, asyncpg.PostgresError, asyncpg.InterfaceError, ASYNCPG_FAULT, OSError, sqlite3.Error,
           LockTimeout, SourceFileError, TimeoutError)


async def answering(settings: Settings, source: SourceSettings,
                    conn: asyncpg.Connection) -> tuple[asyncpg.Connection | None, bool]:
    """A connection that answers after a switch failed: `conn` while it does, else a new
    one (then True: the caller closes it); None when Postgres cannot be reached."""
    if not conn.is_closed():
        try:
            await asyncio.wait_for(conn.fetchval("SELECT 1"), ASK_SECONDS)
            return conn, False
        except Exception:  # noqa: BLE001 - dropped, hung: a new connection is the answer
            conn.terminate()
    try:
        return await asyncio.wait_for(connect(settings.direct_dsn_for(source), settings.password(),
                                              settings.postgres), ASK_SECONDS * 2), True
    except Exception:  # noqa: BLE001 - Postgres cannot be asked now
        return None, False


async def recorded_direction(conn: asyncpg.Connection | None, b: Bookkeeping) -> str | None:
    """Which way Postgres says the source goes; None when it cannot be asked. After a
    switch's last transaction failed, its COMMIT may have taken place all the same (the
    connection dropped before the reply came back): this, not the error, says whether
    the switch happened."""
    if conn is None:
        return None
    try:
        # FOR SHARE waits for a transaction still holding the row (a COMMIT the server is
        # still writing, its session cut off from syncd): its outcome, not the row before it.
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{int(ASK_SECONDS * 1000)}ms'")
            return await asyncio.wait_for(conn.fetchval(
                f"SELECT direction FROM {b.s}.sources WHERE source = $1 FOR SHARE", b.source), ASK_SECONDS * 2)
    except Exception:  # noqa: BLE001 - not known: the caller keeps what is frozen frozen
        return None


async def record_step(conn: asyncpg.Connection, b: Bookkeeping, switch_id: int, state: str, **fields) -> None:
    # The switch's steps are dated by Postgres's clock, as its start and every verification
    # run are (the rollback takes the checks begun after the cutover's end), not by the
    # clock of the host that ran it, which may be ahead or behind.
    stamped = [f"{k} = clock_timestamp()" for k in ("frozen_at", "finished_at") if fields.pop(k, None) is not None]
    sets = ["state = $2", *stamped] + [f"{k} = ${i + 3}" for i, k in enumerate(fields)]
    await conn.execute(f"UPDATE {b.s}.switches SET {', '.join(sets)} WHERE id = $1", switch_id, state,
                       *fields.values())


async def close_abandoned(conn: asyncpg.Connection, b: Bookkeeping, why: str) -> int:
    """Close the record of each cutover or rollback of the source that stopped before
    finishing (`why` in its detail); returns how many there were."""
    left = await conn.fetch(f"SELECT id, kind FROM {b.s}.switches WHERE source = $1 AND state IN ('started', 'frozen')",
                            b.source)
    for r in left:
        await record_step(conn, b, r[0], "undone", finished_at=dt.datetime.now(dt.timezone.utc),
                          detail=json.dumps({"reason": f"the {r[1]} stopped before finishing; {why}"}))
    return len(left)


async def undo_abandoned(settings: Settings, source: SourceSettings, conn: asyncpg.Connection,
                         worker: SqliteWorker | None) -> str | None:
    """With the switch lock held: a cutover that froze the file and died is undone
    (the file unfrozen, its record closed); a file a rollback switched back and left
    frozen is unfrozen. Without `worker` (the file is gone) only the record is closed.
    Returns what was done, or None."""
    b = Bookkeeping(settings.postgres.bookkeeping_schema, source.name)
    if await b.direction(conn) != TO_POSTGRES:
        return None
    message = await worker.run(freeze.frozen) if worker is not None else None
    if message is None and not await b.switch_open(conn):
        return None
    if message is not None:
        await worker.run(freeze.unfreeze, settings.sqlite.write_busy_timeout_ms)
    left = await close_abandoned(conn, b, "undone")
    # Its record closed, the cutover's guard passes the application's writes: its triggers go.
    b.key = await source_key(conn, b.schema, source.name, assign=False)
    await _unguard(conn, b, source)
    if worker is None:
        what = ("closed the record of a cutover or rollback that stopped before finishing (the SQLite file is "
                "gone: nothing there to unfreeze)")
    elif message is None:
        what = "closed the record of a cutover that stopped before freezing"
    elif left:
        what = "unfroze the SQLite file a cutover left frozen when it stopped before finishing"
    else:  # no switch open: a rollback that turned and could not unfreeze the file, or was killed before
        what = "unfroze the SQLite file a rollback left frozen after it switched back"
    log.warning(what, extra={"source": source.name, "event": "cutover_undone"})
    return what


# --- pre-flight -----------------------------------------------------------------------


async def preflight(settings: Settings, source: SourceSettings, allow_orphans: bool = False) -> list[str]:
    """Every reason the report's checklist gives not to switch this source now (orphan
    rows are no reason with `allow_orphans`: their foreign keys are made NOT VALID)."""
    from syncd.report import evaluate, gather

    # This source's own checklist: a file a glob matches and syncd does not pick up is
    # another's (the fleet's cutover names it as not cut over), no reason to refuse this
    # one; unless it is this source's own file under a second name (a hard link), whose
    # changes the application may make where syncd does not look.
    one = settings.model_copy(update={"sources": [source], "discovery_problems": settings.problems_of([source])})
    facts = await gather(one, peers=settings.sources)
    for s in facts.sources:
        # Changes waiting with no daemon to apply them are no reason to refuse: the switch
        # freezes the file and drains them itself (the report still calls the source behind).
        s.lag.no_daemon = False
    problems = []
    for item in evaluate(facts):
        if allow_orphans and item.key == "foreign_keys":
            continue
        if item.key == "rollback_rehearsed":  # the people's sign-off, not the switch's: see docs/cutover.md
            continue
        if not item.ok:
            problems += [f"{item.title}: {p}" for p in (item.problems or ["not met"])]
    return problems


# --- the steps after the freeze -------------------------------------------------------


def read_specs(source: SourceSettings, sticky: dict[str, dict[str, PgType]] | None = None
               ) -> dict[str, TableSpec]:
    """The source's tables as SQLite describes them now, read through a read-only connection.
    `sticky`: the types Postgres has (ddl.kept_types), kept for columns typed from their
    values as the daemon keeps them: a column first seen with no values is text there,
    whatever it holds now, and schema parity types it from what it holds (parity/numbers.py)."""
    conn = sqlite3.connect(f"file:{quote(str(source.path))}?mode=ro", uri=True, timeout=10)
    try:
        return introspect(conn, source, sticky).tables
    finally:
        conn.close()


async def kept_types(conn: asyncpg.Connection, source: SourceSettings) -> dict[str, dict[str, PgType]]:
    """The types of the source's tables in Postgres, as introspection keeps them."""
    return ddl.kept_types(await ddl.read_tables(conn, source.schema))


def high_marks(conn: sqlite3.Connection, specs: dict[str, TableSpec]) -> dict[str, int]:
    """The highest number SQLite has handed out per identity table: the largest rowid,
    and for AUTOINCREMENT the sqlite_sequence entry (it never reuses a deleted high id)."""
    seq: dict[str, int] = {}
    if conn.execute("SELECT 1 FROM main.sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
        seq = dict(conn.execute("SELECT name, seq FROM main.sqlite_sequence").fetchall())
    out = {}
    for name, spec in specs.items():
        col = ddl.identity_column(spec)
        if col is None:
            continue
        top = conn.execute(f"SELECT max({spec.sqlite_ref(col)}) FROM main.{quote_ident(name)}").fetchone()[0] or 0
        out[name] = max(int(top), int(seq.get(name) or 0))
    return out


# SQLite's largest rowid: past it SQLite picks unused rowids at random, which no Postgres
# identity can do (its next number fails).
MAX_ROWID = 2 ** 63 - 1


def topped(specs: dict[str, TableSpec], marks: dict[str, int]) -> None:
    """Refuse, before the freeze, a table whose identity could number no row in Postgres."""
    for name, top in sorted(marks.items()):
        if top < MAX_ROWID:
            continue
        if specs[name].rowid_keyed:
            rid, table = specs[name].sqlite_ref(specs[name].key[0]), quote_ident(name)
            raise Refused(f'table "{name}": its highest rowid is {top}, the largest SQLite has, and Postgres could '
                          "number no row the application adds after it: give that row a smaller rowid in SQLite "
                          f"({table} has no key; syncd follows the move): UPDATE {table} SET {rid} = (SELECT CASE "
                          f"WHEN coalesce(max({rid}), 0) < {top - 1} THEN coalesce(max({rid}), 0) + 1 "
                          f"WHEN NOT EXISTS (SELECT 1 FROM {table} WHERE {rid} = 1) THEN 1 "
                          f"ELSE (SELECT min(a.{rid}) + 1 FROM {table} AS a WHERE a.{rid} > 0 AND NOT EXISTS "
                          f"(SELECT 1 FROM {table} AS b WHERE b.{rid} = a.{rid} + 1)) END "
                          f"FROM {table} WHERE {rid} < {top}) WHERE {rid} = {top}; or VACUUM the SQLite file if "
                          "the table has no index (VACUUM renumbers the rowids only of a table without any); then "
                          "cut over again")
        col = ddl.identity_column(specs[name])
        raise Refused(f'table "{name}": its highest "{col}" is {top}, the largest SQLite has, and Postgres could '
                      f'number no row the application adds without a "{col}": give that row a smaller "{col}" in '
                      "SQLite and cut over again")


def renumbered_unseen(conn: sqlite3.Connection, specs: dict[str, TableSpec], switch: str = "cut over") -> None:
    """Refuse, before the freeze, while tables without a key may be under other rowids in
    SQLite than in Postgres: the file's schema moved since syncd last followed it (a VACUUM
    renumbers their rowids; capture.note_schema), or such a table is marked for the copy
    that follows, not yet begun. Frozen, the drain would start that copy and the final
    verification could only undo the switch. `switch`: the command's verb, as said."""
    keyless = sorted(n for n, spec in specs.items() if spec.rowid_keyed)
    if not keyless:
        return
    state = capture.read_state(conn)
    version = conn.execute("PRAGMA main.schema_version").fetchone()[0]
    moved = keyless if state.schema_seen is not None and state.schema_seen != version else \
        [n for n in keyless if state.rearmed.get(n) == capture.ROWIDS_MOVED_REASON]
    if moved:
        raise Refused(f"{listed([f'table {quote_pg_ident(n)}' for n in moved])}: SQLite's schema changed since syncd "
                      "last followed it (the application's DDL, or a VACUUM, which renumbers the rowids a table "
                      "without a key is kept by in Postgres): the daemon copies such a table again on seeing that; "
                      f"start it if it is not running, and {switch} once the table streams again")


def writes_refused(conn: sqlite3.Connection, specs: dict[str, TableSpec]) -> None:
    """Refuse, before the freeze, a table the way back could write no row of: SQLite
    compiles a statement only with every collation it compares by, and syncd's connections
    lack one the application defines for itself (create_collation) that a CHECK constraint,
    a trigger or the key compares by. Each write compiled, not run (EXPLAIN)."""
    for name, spec in sorted(specs.items()):
        q = f"main.{quote_ident(name)}"
        where = " AND ".join(f"{spec.key_sql(k)} = ?" for k in spec.key)
        cols = [spec.sqlite_ref(c.name) for c in spec.columns if c.sqlite_expr is None and not c.generated]
        nkey = len(spec.key)
        writes = [("a lookup by key", f"SELECT 1 FROM {q} WHERE {where}", nkey),
                  ("a DELETE", f"DELETE FROM {q} WHERE {where}", nkey)]
        if cols:
            writes += [("an INSERT", f"INSERT INTO {q} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                        len(cols)),
                       ("an UPDATE", f"UPDATE {q} SET {', '.join(f'{c} = ?' for c in cols)} WHERE {where}",
                        len(cols) + nkey)]
        for what, sql, n in writes:
            try:
                conn.execute(f"EXPLAIN {sql}", [None] * n).close()
            except sqlite3.OperationalError as e:
                if not str(e).startswith("no such collation sequence: "):
                    continue  # not this check's to say: the way back names what it meets
                raise Refused(
                    f"table {quote_pg_ident(name)}: SQLite compiles {what} of it only with the collation "
                    f"{str(e).split(': ', 1)[1]}, which the application defines for itself (create_collation) and "
                    "syncd's connections lack (a CHECK constraint, a trigger or the key compares by it): after the "
                    "cutover the way back could write none of its rows; compare by one of SQLite's collations "
                    "(BINARY, NOCASE, RTRIM) there, or leave the table out with exclude in its [[sources]]") from None


def created_since(conn: sqlite3.Connection, known: list[str], wanted) -> list[str]:
    """The file's tables the source replicates that are none of `known` (matched as SQLite
    matches names): created since `known` was read."""
    seen = {sqlite_folded(t) for t in known}
    return [t for t in freeze._user_tables(conn) if wanted(t) and not not_utf8(t) and sqlite_folded(t) not in seen]


async def drain(settings: Settings, source: SourceSettings, conn: asyncpg.Connection, target: int) -> str:
    """Until the forward checkpoint covers every change up to `target` (the frozen
    file's last one): by the daemon if it runs the source, else by a pipeline here."""
    from syncd.verify import repair

    try:
        return await repair.apply_through_stream(settings, source, conn, target, DRAIN_SECONDS)
    except (repair.StreamCannotConnect, PostgresUnavailable) as e:  # the drain's own connections
        raise Refused(f"the last changes cannot reach Postgres: {e}; find why syncd cannot connect (a CONNECTION "
                      "LIMIT of its role or database reached, max_connections, the network), then cut over "
                      "again") from None
    except TimeoutError as e:
        if not str(e):
            raise  # a statement Postgres did not answer in time, not the drain's wait
        raise Refused(f"the last changes did not reach Postgres within {DRAIN_SECONDS:g} s "
                      f"({str(e).replace('the repair', 'them')})") from None


async def identity_sequence(conn: asyncpg.Connection, table: str, col: str) -> str | None:
    """The sequence behind `table`.`col`'s identity (a quoted regclass text), or None.
    The identity's own first: a `serial` column the application made in Postgres still
    owns its old sequence once syncd has made it an identity (after a rollback), and
    pg_get_serial_sequence may name that one, which no INSERT draws from any more. Then
    the one its DEFAULT draws from (nextval), owned by the column or not: a sequence the
    application shares between tables numbers this one's rows too."""
    own = await conn.fetchval(
        "SELECT format('%I.%I', n.nspname, s.relname) FROM pg_depend d JOIN pg_class s ON s.oid = d.objid "
        "JOIN pg_namespace n ON n.oid = s.relnamespace JOIN pg_attribute a ON a.attrelid = d.refobjid "
        "AND a.attnum = d.refobjsubid WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass "
        "AND d.deptype = 'i' AND s.relkind = 'S' AND d.refobjid = $1::regclass AND a.attname = $2", table, col)
    return own or await ddl.default_sequence(conn, table, col) \
        or await conn.fetchval("SELECT pg_get_serial_sequence($1, $2)", table, col)


async def sequence_tops(conn: asyncpg.Connection, schema: str, specs: dict[str, TableSpec]) -> dict[str, int]:
    """Per identity table, the highest number Postgres's sequence has handed out (rows
    deleted since and transactions rolled back included), or the one below the number it
    gives next where none was drawn since its setval or START; tables whose sequence has
    handed out none are left out."""
    out = {}
    for name, spec in specs.items():
        col = ddl.identity_column(spec)
        if col is None:
            continue
        seq = await identity_sequence(conn, qualified(schema, name), col)
        if seq is None:
            continue
        last, called = await conn.fetchrow(f"SELECT last_value, is_called FROM {seq}")
        if called:
            out[name] = int(last)
        elif last > 1:
            # Not called: `last` is the next number it gives (setval(..., false), a START WITH),
            # so the cutover moves it no lower than that.
            out[name] = int(last) - 1
    return out


async def identity_highs(conn: asyncpg.Connection, schema: str, specs: dict[str, TableSpec],
                         marks: dict[str, int], handed_out: dict[str, int]) -> dict[str, tuple[str, str | None, int]]:
    """Per identity table: its column, its sequence (None where it has none) and the number
    the sequence continues after: past SQLite's high mark, Postgres's rows and `handed_out`
    of every table drawing from that sequence, so a sequence several tables share is set
    once, past the highest of them all, never back below one table's ids for another's."""
    found = {}
    for name, top in sorted(marks.items()):
        col = ddl.identity_column(specs[name])
        table = qualified(schema, name)
        pg_top = await conn.fetchval(f"SELECT max({quote_pg_ident(col)}) FROM {table}") or 0
        # Never backwards: a number Postgres handed out before (an earlier cutover) stays used.
        found[name] = (col, await identity_sequence(conn, table, col), max(top, int(pg_top), handed_out.get(name, 0)))
    by_seq: dict[str, int] = {}
    for col, seq, high in found.values():
        if seq is not None:
            key = await conn.fetchval("SELECT $1::regclass::oid", seq)
            by_seq[key] = max(by_seq.get(key, 0), high)
    out = {}
    for name, (col, seq, high) in found.items():
        if seq is not None:
            high = by_seq[await conn.fetchval("SELECT $1::regclass::oid", seq)]
        out[name] = (col, seq, high)
    return out


async def set_identities(conn: asyncpg.Connection, schema: str, specs: dict[str, TableSpec],
                         marks: dict[str, int], handed_out: dict[str, int]) -> list[str]:
    """Each identity past SQLite's high mark, Postgres's rows, and `handed_out` (what
    `sequence_tops` read before the trial inserts, whose numbers are taken back); a
    sequence several tables draw from is set once, past the highest of them."""
    done = []
    set_already = set()
    for name, (col, seq, high) in (await identity_highs(conn, schema, specs, marks, handed_out)).items():
        table = qualified(schema, name)
        if seq is None:
            raise Refused(f'table "{name}": column "{col}" is not an identity column in Postgres; start the '
                          "daemon once (it adds it) and run the cutover again")
        oid = await conn.fetchval("SELECT $1::regclass::oid", seq)
        if oid not in set_already:
            set_already.add(oid)
            if high > 2**31 - 1 and await conn.fetchval(
                    "SELECT seqtypid <> 'bigint'::regtype FROM pg_sequence WHERE seqrelid = $1::regclass", seq):
                # A serial's sequence (the application's, kept through a rollback) stays 32-bit
                # when its column is widened to bigint, as SQLite's integers are 64-bit.
                await conn.execute(f"ALTER SEQUENCE {seq} AS bigint")
            if high > 0:
                await conn.fetchval("SELECT setval($1::regclass, $2, true)", seq, high)
            else:
                await conn.fetchval("SELECT setval($1::regclass, 1, false)", seq)
        shared = await _drawn_by_default(conn, table, col)
        if shared is not None:
            line = (f"{name}.{col} keeps its DEFAULT {shared} (a sequence the column does not own, or shares with "
                    f"another column: neither made an identity nor dropped), moved to continue after {high}")
            done.append(line)
            continue
        done.append(f"{name}.{col} continues after {high}")
    return done


async def _drawn_by_default(conn: asyncpg.Connection, table: str, col: str) -> str | None:
    """`table`.`col`'s DEFAULT (as Postgres prints it) where it draws from a sequence the
    column does not own alone: one no column owns, another column owns, or another
    column's DEFAULT draws from too. None otherwise (an identity, a serial of its own)."""
    seq = await ddl.default_sequence(conn, table, col)
    if seq is None:
        return None
    owned = await conn.fetchval("SELECT pg_get_serial_sequence($1, $2)", table, col)
    if owned is not None and await conn.fetchval("SELECT $1::regclass = $2::regclass", owned, seq):
        users = await conn.fetchval(
            "SELECT count(*) FROM pg_depend WHERE classid = 'pg_attrdef'::regclass AND refclassid = "
            "'pg_class'::regclass AND refobjid = $1::regclass", seq)
        if users <= 1:
            return None
    return await conn.fetchval(
        "SELECT pg_get_expr(ad.adbin, ad.adrelid) FROM pg_attrdef ad JOIN pg_attribute a ON a.attrelid = ad.adrelid "
        "AND a.attnum = ad.adnum WHERE ad.adrelid = $1::regclass AND a.attname = $2", table, col)


async def filled_only_in_sqlite(conn: asyncpg.Connection, schema: str, specs: dict[str, TableSpec]) -> list[str]:
    """Columns SQLite fills when a row leaves them out (a DEFAULT syncd does not carry, an
    expression) and Postgres does not (no DEFAULT there, none set by hand, no identity):
    once the application writes Postgres, such an INSERT stores NULL there, or fails on a
    NOT NULL column. The rollback's filled_only_in_postgres, the other way."""
    out = []
    for table, column, notnull, filled in await ddl.column_fills(conn, schema):
        spec = specs.get(table)
        if filled is not None or spec is None or column not in spec.column_names:
            continue
        col = spec.column(column)
        why = None if col.generated else ddl.column_default(col).not_carried
        if why is None:
            continue
        then = ("fails there (the column is NOT NULL in Postgres)" if notnull
                else "stores NULL there, where SQLite stores the default")
        if _insert_time_call(col):
            then += (" unless the cutover types the column from its values in the spelling of this DEFAULT "
                     "(then it sets the same time of the insert as the column's DEFAULT)")
        out.append(f'warning: SQLite fills "{table}"."{column}" in a row that leaves it out '
                   f"(DEFAULT {shorten(col.default_sql or '', 80)}) and Postgres does not (not carried: {why}): "
                   f"after the cutover such an INSERT {then}; set the column's DEFAULT in Postgres, or have "
                   "the application always write the column")
    return out


def null_taken_in_sqlite(conn: sqlite3.Connection, specs: dict[str, TableSpec]) -> list[str]:
    """NOT NULL columns whose ON CONFLICT clause has SQLite take a NULL written there
    without an error (REPLACE stores the column's DEFAULT, IGNORE skips the row), where
    Postgres refuses the statement: said before the switch, as filled_only_in_sqlite."""
    from syncd.parity.objects import parse_create_table
    from syncd.sqlite_sql import SqlSyntaxError

    out = []
    for table in sorted(specs):
        spec = specs[table]
        try:
            row = conn.execute("SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = ?",
                               (table,)).fetchone()
            parsed = parse_create_table(row[0]) if row and row[0] else None
        except (sqlite3.Error, SqlSyntaxError):
            continue  # text syncd cannot read: schema parity names the table's CREATE TABLE already
        if parsed is None:
            continue
        names = {sqlite_folded(c): c for c in spec.column_names}
        for written, action in sorted(parsed.null_conflicts.items()):
            column = names.get(sqlite_folded(written))
            if column is None:
                continue
            col = spec.column(column)
            if action == "REPLACE" and col.default_sql is not None:
                what = f"stores its DEFAULT ({shorten(col.default_sql, 80)}) instead"
            elif action == "IGNORE":
                what = "skips the row (INSERT) or leaves it as it was (UPDATE), without an error"
            else:
                continue  # REPLACE without a DEFAULT, ABORT, FAIL, ROLLBACK: SQLite refuses it too
            out.append(f'warning: a NULL written in "{table}"."{column}" is taken by SQLite without an error '
                       f"(NOT NULL ON CONFLICT {action}: it {what}) and refused by Postgres (NOT NULL): after "
                       "the cutover such an INSERT or UPDATE fails; have the application write a value there")
        for cols, kind, action in parsed.key_conflicts:
            if action == "REPLACE":
                what = "deletes the other row and writes this one"
            elif action == "IGNORE":
                what = "skips the row (INSERT) or leaves it as it was (UPDATE)"
            else:
                continue  # ABORT, FAIL, ROLLBACK: SQLite refuses it too
            shown = ", ".join(names.get(sqlite_folded(c), c) for c in cols)
            out.append(f'warning: a row written in "{table}" with the ({shown}) of another row is taken by SQLite '
                       f"without an error ({kind} ON CONFLICT {action}: it {what}) and refused by Postgres: after "
                       "the cutover such an INSERT or UPDATE fails; have the application say what it means (INSERT "
                       "... ON CONFLICT DO UPDATE, or DO NOTHING)")
    return out


def _insert_time_call(col) -> bool:
    """Whether a date column's SQLite DEFAULT is a call of SQLite's date functions on
    'now', which the cutover carries where it types the column in that spelling
    (parity.dates.now_default)."""
    from syncd import sqlite_sql
    from syncd.parity import dates

    if not dates.is_candidate(col.declared or "") or col.default_sql is None:
        return False
    try:
        call = sqlite_sql.date_call(col.default_sql)
    except sqlite_sql.SqlSyntaxError:
        return False
    # Only those now_default carries: strftime(spelling, 'now') and unixepoch(); a modifier
    # ('localtime', '+1 day') has no Postgres form, whatever the column is typed as.
    return call is not None and (call[0] == "strftime" and call[1][1:] == ("now",)
                                 or call in (("unixepoch", ()), ("unixepoch", ("now",))))


async def trial_inserts(conn: asyncpg.Connection, schema: str, specs: dict[str, TableSpec],
                        marks: dict[str, int]) -> list[str]:
    """An INSERT without an id per identity table, as the application will run it, each
    rolled back: it must get a number above SQLite's high mark. Raises Refused if not."""
    notes = []
    await conn.execute("SET CONSTRAINTS ALL DEFERRED")
    for name in sorted(marks):
        spec = specs[name]
        col = ddl.identity_column(spec)
        table = qualified(schema, name)
        # A column Postgres computes (the application made it GENERATED there) takes no value.
        computed = {r[0] for r in await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped "
            "AND attgenerated <> ''", table)}
        others = [quote_pg_ident(c) for c in spec.column_names if c != col and c not in computed]
        if others:
            sql = (f"INSERT INTO {table} ({', '.join(others)}) SELECT {', '.join(others)} FROM {table} "
                   f"ORDER BY {quote_pg_ident(col)} DESC LIMIT 1 RETURNING {quote_pg_ident(col)}")
        else:
            sql = f"INSERT INTO {table} DEFAULT VALUES RETURNING {quote_pg_ident(col)}"
        try:
            async with conn.transaction():  # a savepoint, always rolled back
                got = await conn.fetchval(sql)
                raise _RollBack(got)
        except _RollBack as r:
            got = r.value
            if got is None:
                got = await _next_identity(conn, table, col)
                notes.append(f"{name}: empty, nothing to copy for a trial INSERT; its identity gives {got} next")
        except asyncpg.UniqueViolationError as e:
            got = await _next_identity(conn, table, col, taken=True)
            notes.append(f"{name}: trial INSERT met unique index {e.constraint_name} (expected for a copied row) "
                         f"after its identity gave it {got}")
        except asyncpg.ExclusionViolationError as e:  # the application's EXCLUDE, kept through a rollback
            got = await _next_identity(conn, table, col, taken=True)
            notes.append(f"{name}: trial INSERT met exclusion constraint {e.constraint_name} (expected for a copied "
                         f"row) after its identity gave it {got}")
        except asyncpg.ForeignKeyViolationError as e:  # the newest row, copied, is an orphan (--allow-orphans)
            got = await _next_identity(conn, table, col, taken=True)
            notes.append(f"{name}: trial INSERT copied an orphan row (foreign key {e.constraint_name}, NOT VALID) "
                         f"after its identity gave it {got}")
        except parity.CONTENTION:
            raise  # a lock not had in time, a deadlock: the switch's transaction is tried again
        except asyncpg.PostgresError as e:
            raise Refused(f'table "{name}": an INSERT without "{col}" fails in Postgres: {describe(e)}') from None
        if got <= marks[name]:
            raise Refused(f'table "{name}": an INSERT without "{col}" got {got}, not above SQLite\'s '
                          f"{marks[name]}")
    return notes


async def _next_identity(conn: asyncpg.Connection, table: str, col: str, taken: bool = False) -> int:
    """The number an INSERT without `col` takes next (`taken`: the one it just took),
    read from its identity's sequence where a trial INSERT cannot show it (an empty
    table; a unique column copied, refused after the number was drawn)."""
    seq = await identity_sequence(conn, table, col)
    if seq is None:
        return 0
    last, called, step = await conn.fetchrow(
        f"SELECT s.last_value, s.is_called, q.seqincrement FROM {seq} AS s, pg_sequence AS q "
        "WHERE q.seqrelid = $1::regclass", seq)
    if taken and called:
        return int(last)
    return int(last) + int(step) if called else int(last)


class _RollBack(Exception):
    def __init__(self, value):
        self.value = value


# --- the command ----------------------------------------------------------------------


async def cutover(settings: Settings, source: SourceSettings, *, dry_run: bool = False,
                  allow_orphans: bool = False) -> CutoverResult:
    res = CutoverResult(source=source.name, dry_run=dry_run)
    b = Bookkeeping(settings.postgres.bookkeeping_schema, source.name)
    # Direct (past any pooler): the switch lock is held by this session for the whole run.
    conn = await connect(settings.direct_dsn_for(source), settings.password(), settings.postgres)
    worker = SqliteWorker(source.path, f"{source.name}-cutover", settings.sqlite.read_busy_timeout_ms)
    locked = False
    try:
        try:
            await worker.open()
        except SourceFileError:
            # A file gone after its cutover (archived once the way back ended) is cut over
            # already: said so, as for any other, not refused for the file.
            if not await bookkeeping_exists(conn, b.schema) or await b.load_source(conn) is None:
                raise
            res.already = await _cut_over_at(conn, b)
            if res.already is None:
                raise
            return res
        await ensure_bookkeeping(conn, b.schema)
        if await b.load_source(conn) is None:
            raise Refused("syncd has not set this source up in Postgres yet; run `syncd init` or start the daemon")
        res.already = await _cut_over_at(conn, b)
        if res.already is not None:
            await _undo_abandoned_rollback(settings, source, conn, b, res)
            return res
        if await takes_no_writes(conn):
            raise Refused(f"{READ_ONLY_DATABASE}: the application could not write it after a cutover; cut over once "
                          "it takes writes")
        b.key = await source_key(conn, b.schema, source.name)
        await _not_sharing_a_way_back(conn, b)
        if not await take_switch_lock(conn, b.key):
            raise Refused(f"a cutover or rollback of this source is already running: "
                          f"{await switch_holder(conn, b.key) or 'another session'}")
        locked = True
        undone = await undo_abandoned(settings, source, conn, worker)
        if undone:
            res.plan.append(undone)
        problems = await preflight(settings, source, allow_orphans)
        # A report run in Postgres during dual-write that keeps a table would make the
        # switch's last transaction wait for it while SQLite is frozen for the application.
        problems += await long_holders(conn, source.schema, list(await b.load_tables(conn)))
        if problems:
            res.problems = problems
            if not dry_run:
                return res
            # A dry run refused still shows what the switch will do (the downtime to expect):
            # the change ticket is written before the checklist is met.
            res.plan.append("the plan once every reason above is met (dry run, nothing changed):")
        try:
            specs = await asyncio.to_thread(read_specs, source, await kept_types(conn, source))
            marks = await worker.run(high_marks, specs)
            topped(specs, marks)
            await worker.run(renumbered_unseen, specs)
            await worker.run(writes_refused, specs)
            pending = await worker.run(_pending, (await b.load_source(conn)).applied_seq)
            rows = await worker.run(_row_count, list(specs))
            res.plan.append(f"{len(specs)} table(s), {rows} row(s) to verify, {pending} change(s) to drain")
            left = await worker.run(freeze.left_writable, source.wants_table)
            if left:
                res.plan.append(f"left writable in SQLite, not frozen: {listed([text_repr(t) for t in left])} "
                                "(not replicated by this source's tables/exclude, so not in Postgres)")
            res.plan += await filled_only_in_sqlite(conn, source.schema, specs)
            res.plan += await worker.run(null_taken_in_sqlite, specs)
            if dry_run:
                # The run itself says where each identity continues, from the high marks after the drain;
                # never below a number Postgres's sequence handed out already (before a rollback), as it sets.
                tables_there = {r[0] for r in await conn.fetch(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')", source.schema)}
                handed_out = await sequence_tops(conn, source.schema,
                                                 {name: specs[name] for name in marks if name in tables_there})
                # As set_identities does: a sequence several tables draw from continues past the highest of them.
                highs = await identity_highs(conn, source.schema, specs,
                                             {name: top for name, top in marks.items() if name in tables_there},
                                             handed_out)
                for name, top in sorted(marks.items()):
                    col = ddl.identity_column(specs[name])
                    kept = await _drawn_by_default(conn, qualified(source.schema, name), col) \
                        if name in tables_there else None
                    what = f"identity {name}.{col}" if kept is None else f"{name}.{col} keeps its DEFAULT {kept}:"
                    high = highs[name][2] if name in highs else max(top, handed_out.get(name, 0))
                    res.plan.append(f"{what} would continue after {high} (today's high mark; the drain may raise it)")
                objects = await parity.read_pg_objects(conn, source.schema)
                present = {key[2]: obj.comment for key, obj in objects.items() if key[0] == "relation"}
                res.plan += await asyncio.to_thread(parity.preview, settings, source, specs, present)
                res.plan += [f"would enable {t} again (syncd disabled it while it wrote the rows from SQLite)"
                             for t in await app_triggers.quieted(conn, b.schema, source.name)]
                res.plan.append(f"expected write downtime: about {_estimate(rows, pending):.1f} s "
                                "(drain, a full verification, then one Postgres transaction that also creates "
                                "the constraints and types listed above)")
                return res
        except (Refused, asyncpg.PostgresError, sqlite3.Error, OSError) as e:
            if not res.problems:
                raise
            res.plan.append(f"no plan to show: {describe(e)}")  # the reasons above come first
            return res
        await _writable(settings, source, worker)
        await _run(settings, source, conn, worker, b, specs, res, allow_orphans)
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


async def _undo_abandoned_rollback(settings: Settings, source: SourceSettings, conn: asyncpg.Connection,
                                   b: Bookkeeping, res: CutoverResult) -> None:
    """Cut over already: a rollback that froze Postgres and stopped before finishing is
    undone, as the daemon or `syncd rollback` would, so that Postgres takes the
    application's writes again; left alone while a cutover or rollback runs."""
    from syncd.rollback import undo_abandoned_unless_switching

    b.key = await source_key(conn, b.schema, source.name)
    undone = await undo_abandoned_unless_switching(settings, source, conn, b.key)
    if undone:
        res.plan.append(undone)


async def _cut_over_at(conn: asyncpg.Connection, b: Bookkeeping) -> str | None:
    """When the source was cut over (UTC, or "earlier" where no switch is recorded), or
    None where SQLite is still the application's database."""
    if await b.direction(conn) != TO_SQLITE:
        return None
    at = await conn.fetchval(f"SELECT max(finished_at) FROM {b.s}.switches WHERE source = $1 "
                             f"AND kind = 'cutover' AND state = 'done'", b.source)
    return f"{at.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC" if at else "earlier"


async def _not_sharing_a_way_back(conn: asyncpg.Connection, b: Bookkeeping) -> None:
    """Refused where the source shares its key with a source already cut over (two an
    older syncd set up whose names hash alike): their way back would be one changelog."""
    assert b.key is not None
    others = (await sharing(conn, b.schema, {b.source: b.key})).get(b.source)
    if others:
        cut = [r[0] for r in await conn.fetch(f"SELECT source FROM {b.s}.sources WHERE source = ANY($1::text[]) "
                                              "AND direction = $2 ORDER BY source", others, TO_SQLITE)]
        if cut:
            raise Refused(f"{shared_key_line(b.source, others, b.key)}; {listed([repr(c) for c in cut])} "
                          "is cut over already")


def _locked_line(source: SourceSettings, seconds: float) -> str:
    return (f"the SQLite file {source.path} stayed locked by another connection for {seconds:g} s (its "
            "application's open write transaction, or in a rollback-journal file any open transaction): the cutover "
            "must write it to freeze it; try again once the file is free")


async def _writable(settings: Settings, source: SourceSettings, worker: SqliteWorker) -> None:
    """Refused, nothing changed, where the file cannot be written now: its freeze would
    wait for the lock (with Postgres refusing the application meanwhile), then give up."""
    from syncd.rollback import WRITABLE_WAIT_SECONDS, probe_write

    try:
        await worker.run(probe_write, settings.sqlite.write_busy_timeout_ms)
    except LockTimeout:
        raise Refused(_locked_line(source, WRITABLE_WAIT_SECONDS)) from None


# Counted a window at a time in rollback-journal mode, each its own read: one count(*)
# of a large table (or a long backlog) held the application's writers back while it ran.
def _pending(conn: sqlite3.Connection, applied: int) -> int:
    return reader.entries_after(conn, applied)


def _row_count(conn: sqlite3.Connection, tables: list[str]) -> int:
    return sum(reader.count_rows(conn, t) for t in tables)


def _estimate(rows: int, pending: int) -> float:
    # Measured on the 2-core development machine (bench/cutover_downtime.py): verify
    # reads ~300k rows/s per side, the stream applies ~20k changes/s; plus fixed costs.
    return 0.5 + rows / 300_000 + pending / 20_000


async def _run(settings: Settings, source: SourceSettings, conn: asyncpg.Connection, worker: SqliteWorker,
               b: Bookkeeping, specs: dict[str, TableSpec], res: CutoverResult, allow_orphans: bool) -> None:
    from syncd.verify import verify_source

    busy = settings.sqlite.write_busy_timeout_ms
    switch_id = await conn.fetchval(f"INSERT INTO {b.s}.switches (source, kind, state, who) "
                                    f"VALUES ($1, 'cutover', 'started', $2) RETURNING id", source.name, who())
    STARTED_SWITCHES.append(switch_id)
    await _hold("started")
    stamp = dt.datetime.now(dt.timezone.utc)
    # The file stays frozen after the switch: the message holds then too. Written to
    # Postgres before the switch's last transaction, a write would be lost (cutover_guard).
    message = (f"this database was moved to PostgreSQL by syncd, or is being moved (`syncd cutover` begun at "
               f"{stamp:%Y-%m-%d %H:%M:%S} UTC): write to PostgreSQL (schema \"{source.schema}\") once "
               "`syncd cutover` has finished, not before (PostgreSQL refuses the application's writes until then)")
    guard_message = (f"syncd cutover in progress (begun at {stamp:%Y-%m-%d %H:%M:%S} UTC): the application writes "
                     "PostgreSQL once `syncd cutover` has finished, not before; until then neither PostgreSQL nor "
                     "the SQLite file takes its writes")
    frozen_at = time.monotonic()
    committing = False  # the switch's transaction is being committed: its outcome is Postgres's to tell
    never_frozen = False  # the freeze's write transaction never got the file's lock
    unchanged = False  # refused before the freeze took (Postgres not guarded, or the file not had): nothing changed
    still_frozen = None  # why an undo could not unfreeze the file
    try:  # from the freeze on (it may be waiting for the file), anything stopping the switch undoes it
        try:
            await _guard(conn, b, source, list(specs), guard_message)
        except Refused:  # rolled back: nothing guarded, nothing frozen, nothing to undo
            never_frozen = unchanged = True
            raise
        try:
            await worker.run(freeze.freeze, message, busy, source.wants_table)
        except LockTimeout as e:  # locked since the check before: nothing frozen (the guard is lifted below)
            never_frozen = unchanged = True
            raise Refused(f"the SQLite file {source.path}: {e}; nothing frozen, nothing changed: try again once the "
                          "file is free") from None
        await record_step(conn, b, switch_id, "frozen", frozen_at=dt.datetime.now(dt.timezone.utc))
        await _hold("frozen")
        target = await worker.run(lambda c: c.execute("SELECT coalesce(max(seq), 0) FROM main._syncd_changelog")
                                  .fetchone()[0])
        how = await drain(settings, source, conn, target)
        res.plan.append(f"drained to change {target} ({how})")
        await _hold("drained")
        checked = await verify_source(settings, source, record=True, wait_seconds=VERIFY_WAIT_SECONDS)
        _judge(checked)
        verified = [t.table for t in checked.tables]

        async def none_created_since() -> None:
            """Refused where the application created a table in the file since the verification
            (the freeze's triggers cannot stop a CREATE TABLE): its rows verified nowhere, no
            freeze trigger on it."""
            unseen = await worker.run(created_since, verified, source.wants_table)
            if unseen:
                long = [t for t in unseen if len(t.encode()) > PG_MAX_IDENTIFIER_BYTES]
                raise Refused(f"{listed([f'table {quote_ident(t)}' for t in unseen])} created in the SQLite "
                              "file during the cutover's freeze, after its verification: its rows were not "
                              "verified and the freeze does not cover it; cut over again once the daemon "
                              "streams it (and nothing creates tables in the file meanwhile)"
                              + (f"; {listed([quote_ident(t) for t in long])} it never streams under a name longer "
                                 f"than Postgres's {PG_MAX_IDENTIFIER_BYTES} bytes: rename it first" if long else ""))

        res.plan.append(f"verified equal: {sum(t.rows_sqlite or 0 for t in checked.tables)} row(s) in "
                        f"{len(checked.tables)} table(s)")
        await _hold("verified")
        specs = await asyncio.to_thread(read_specs, source, await kept_types(conn, source))
        await none_created_since()
        marks = await worker.run(high_marks, specs)
        planned = len(res.plan)
        enabled: list[app_triggers.Trigger] = []

        async def last() -> None:
            """The switch's last transaction: one try (a try that could not take a table is
            rolled back whole, and its steps are said by the one that commits)."""
            nonlocal committing, enabled
            committing = False
            del res.plan[planned:]
            async with conn.transaction():
                # The source's row first: a daemon's schema-parity pass (which locks it too)
                # then either finished before or sees the new direction after (parity._direction).
                await conn.execute(f"SELECT 1 FROM {b.s}.sources WHERE source = $1 FOR UPDATE", source.name)
                # Then each table as the capture triggers created last take it: a session
                # writing one (or holding more) ends this try now, not after schema parity's work.
                await take_tables(conn, source.schema, list(specs), "SHARE ROW EXCLUSIVE", TRIGGER_LOCK_WAIT)
                # Every other lock of the try is waited for as briefly: a report reading a
                # table schema parity changes ends the try, and the next begins once it has
                # ended, with no lock request of syncd's queued ahead of its readers meanwhile.
                # Each for a moment only (below Postgres's deadlock_timeout): a report reading
                # two tables, one taken by this try and one it waits for, would otherwise
                # meet a deadlock, which Postgres may settle by failing the report.
                await shorten_lock_waits(conn, FREEZE_LOCK_STEP)
                # The application's constraints, indexes, views and typed columns first, so
                # the trial inserts face the database the application will write to.
                try:
                    parity_done = await parity.finalize(conn, settings, source, specs, allow_orphans)
                except parity.ParityRefused as e:
                    raise Refused(str(e)) from None
                res.plan += parity_done.lines()
                res.plan += [f"foreign key left NOT VALID (orphan rows, --allow-orphans): {fk}"
                             for fk in parity_done.not_valid]
                res.plan.append(f"schema parity in {parity_done.seconds:.2f} s")
                # The application's own Postgres triggers syncd kept from running on the rows
                # from SQLite run from here on, the trial inserts' too (the application's are next).
                enabled = await app_triggers.restore(conn, b.schema, source.name, source.schema)
                res.plan += [app_triggers.line(t, disabled=False) for t in enabled]
                await _hold("finalized")
                handed_out = await sequence_tops(conn, source.schema, {name: specs[name] for name in marks})
                res.plan += await set_identities(conn, source.schema, specs, marks, handed_out)
                res.plan += await trial_inserts(conn, source.schema, specs, marks)
                await set_identities(conn, source.schema, specs, marks, handed_out)  # the trials took a number each
                await _hold("finishing")
                await _open_way_back(settings, source, conn, worker, specs)
                await none_created_since()  # last before the switch is recorded
                await conn.execute(f"UPDATE {b.s}.sources SET direction = $2 WHERE source = $1", source.name, TO_SQLITE)
                res.downtime_seconds = time.monotonic() - frozen_at
                await record_step(conn, b, switch_id, "done", finished_at=dt.datetime.now(dt.timezone.utc),
                                  downtime_seconds=res.downtime_seconds, detail=json.dumps({"steps": res.plan}))
                await _hold("turned")  # everything written, SQLite's way-back checkpoint too; not committed
                committing = True

        # Waiting for a table another session keeps (a report's open transaction, say): each
        # try gives up at a short lock wait, the next begins once those sessions let go, for
        # [postgres] statement_timeout_seconds in all, as the rollback's last transaction.
        async with blockers_named(settings, source, conn, "the switch's last transaction") as blocking:
            await while_tables_busy(last, conn, source, list(specs), "the switch's last transaction",
                                    settings.postgres.statement_timeout_seconds, blocking)
        res.done = True
        await _hold("done")
        await _unguard(conn, b, source)
        await _drop_rollback_freeze(conn, settings, source)
        app_triggers.say(source.name, enabled, disabled=False)
        for line in res.plan:
            if " keeps its DEFAULT " in line:
                log.info(line, extra={"source": source.name, "event": "cutover_default_kept"})
        log.info(f"cut over to Postgres: write downtime {res.downtime_seconds:.2f} s",
                 extra={"source": source.name, "event": "cutover_done"})
    except BaseException as e:
        reason = undo_reason(e)
        pg, own = await answering(settings, source, conn)
        try:
            went = await recorded_direction(pg, b) if committing else TO_POSTGRES
            if went == TO_SQLITE:  # committed: only the reply was lost
                res.done = True
                res.downtime_seconds = res.downtime_seconds or time.monotonic() - frozen_at
                res.plan.append(f"Postgres recorded the cutover; its confirmation did not reach syncd ({reason})")
                log.info("cut over to Postgres (the commit's reply was lost; Postgres recorded it)",
                         extra={"source": source.name, "event": "cutover_done"})
            elif went is None:
                res.unknown = True
                res.problems.append(
                    f"{reason}; whether Postgres recorded the cutover is unknown (it cannot be asked now), so the "
                    "SQLite file stays frozen and no write can be lost either way: once Postgres answers, the daemon "
                    "unfreezes the file if the cutover did not happen (`syncd cutover` again settles it too)")
            else:
                try:
                    if not never_frozen:
                        await worker.run(freeze.unfreeze, busy)
                except (LockTimeout, sqlite3.Error) as u:
                    # Its switch recorded undone below, the daemon unfreezes the file at its next check.
                    still_frozen = (f"the SQLite file {source.path} is still frozen for now ({describe(u)}): the "
                                    "daemon unfreezes it at its next check ([stream] held_table_retry_seconds), or "
                                    "the next `syncd cutover` of it")
                res.undone = not unchanged
                await _record_undone(pg, b, switch_id, reason)
                await _unguard(pg, b, source)
        finally:
            if own:
                await close_quietly(pg)
        if res.undone and still_frozen:
            res.problems.append(f"{reason}; undone, but {still_frozen}")
        elif res.undone:
            res.problems.append(f"{reason}; undone: the SQLite file takes the application's writes again")
        elif unchanged:
            res.problems.append(reason)
        if isinstance(e, SETTLED):
            return
        raise


async def _guard(conn: asyncpg.Connection, b: Bookkeeping, source: SourceSettings, tables: list[str],
                 message: str) -> None:
    """Before the freeze: Postgres refuses the application's writes to the source's tables
    while this cutover's record is open (cutover_guard)."""
    assert b.key is not None
    try:
        async with conn.transaction():
            await cutover_guard.guard(conn, b.schema, source.name, b.key, source.schema, tables, message)
    except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):  # rolled back: nothing guarded
        raise Refused(f"Postgres could not be guarded against the application's writes: "
                      f"{await table_holders(conn, source.schema, tables)} kept a table busy past the lock wait "
                      "(an open transaction that wrote it); nothing changed: try again once it is free") from None


async def _unguard(pg: asyncpg.Connection | None, b: Bookkeeping, source: SourceSettings) -> None:
    """Once the cutover's record is closed: its guard's triggers go where their tables are
    had at once; one left passes every write, and goes later (the daemon, the next cutover)."""
    if pg is None or b.key is None:
        return
    try:
        left = await cutover_guard.unguard(pg, b.schema, source.name, b.key, source.schema)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ASYNCPG_FAULT, OSError, TimeoutError) as e:
        log.info(f"the cutover's guard triggers are left for later (they pass every write now): {describe(e)}",
                 extra={"source": source.name, "event": "cutover_guard_left"})
        return
    if left:
        log.info(f"the cutover's guard trigger is left on {left} table(s) kept busy, for later (it passes every "
                 "write now)", extra={"source": source.name, "event": "cutover_guard_left"})


async def _drop_rollback_freeze(pg: asyncpg.Connection, settings: Settings, source: SourceSettings) -> None:
    """After the switch: the freeze a rollback left on Postgres passes every write since
    the last transaction committed; its triggers go where their tables are had at once,
    the others later (the daemon's way back, the next `syncd rollback`)."""
    from syncd.rollback import lift_freeze

    try:
        left = await lift_freeze(pg, settings, source)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ASYNCPG_FAULT, OSError, TimeoutError) as e:
        log.info(f"the triggers of the freeze a rollback left are left for later (they pass every write now): "
                 f"{describe(e)}", extra={"source": source.name, "event": "rollback_freeze_left"})
        return
    if left:
        log.info(f"the trigger of the freeze a rollback left stays on {left} table(s) kept busy, for later (it passes "
                 "every write now)", extra={"source": source.name, "event": "rollback_freeze_left"})


async def _record_undone(pg: asyncpg.Connection | None, b: Bookkeeping, switch_id: int, reason: str) -> None:
    """Close the switch's record as undone; one that cannot be written now (Postgres
    away) is closed by the daemon, or the next switch, when they find it open."""
    if pg is None:
        return
    with contextlib.suppress(Exception):
        await record_step(pg, b, switch_id, "undone", finished_at=dt.datetime.now(dt.timezone.utc),
                          detail=json.dumps({"reason": reason}))


async def _open_way_back(settings: Settings, source: SourceSettings, conn: asyncpg.Connection, worker: SqliteWorker,
                         specs: dict[str, TableSpec]) -> None:
    """In the switch's transaction: Postgres captures every change from here on (the
    way back, for `syncd rollback`), and a freeze a rollback left on it is lifted."""
    from syncd.rollback import open_way_back
    from syncd.sqlite.capture import read_state

    registry = await worker.run(read_state)
    await open_way_back(conn, settings, source, {name: (registry.tid_of(name), list(spec.key))
                                                 for name, spec in specs.items() if registry.tid_of(name) is not None})
    # The frozen file holds this cutover's position before Postgres records the switch: a
    # copy of the file put back later holding none (a backup from before the cutover) is
    # known as older, also before anything was pruned (reverse.pipeline._reconcile). One the
    # switch does not commit after all is replaced by the next cutover's.
    from syncd.reverse import applier, capture
    from syncd.reverse.checkpoint import start
    from syncd.sqlite.capture import LockTimeout, contended

    gen = await capture.generation(conn, await capture.names_of(conn, settings.postgres.bookkeeping_schema,
                                                                 source.name))
    assert gen is not None
    try:
        await worker.run(applier.write_checkpoint, start(gen.id).encode(), settings.sqlite.write_busy_timeout_ms)
    except (sqlite3.OperationalError, LockTimeout) as e:
        if not contended(e):
            raise
        # A reader of the file held the write off (rollback-journal mode): the switch goes
        # on; the way back finds no position in the file and copies every table once.
        log.warning(f"the way back's position could not be written into the SQLite file ({e}): every table is "
                    "copied again into it after the switch", extra={"source": source.name, "event": "cutover"})


def _judge(checked) -> None:
    if checked.error:
        raise Refused(f"the final verification could not run: {checked.error}")
    bad = [t for t in checked.tables if not (t.compared and t.equal) or t.error]
    halted = [t for t in bad if not t.compared and t.state in (HELD, PAUSED) and t.reason]
    if halted:  # its last changes are not applied: said as what stops them (a lock another session holds, say)
        first = halted[0]
        why = first.reason.removeprefix(f'table "{first.table}": ')
        raise Refused(f'table "{first.table}" is {first.state}, its last changes not applied: {why} (the final '
                      f"verification found {len(bad)} table(s) not equal)")
    if bad:
        first = bad[0]
        what = first.error or first.reason or f"{first.missing} missing, {first.extra} extra, {first.different} different"
        raise Refused(f"the final verification found {len(bad)} table(s) not equal (first: {quote_ident(first.table)}: "
                      f"{what})")
