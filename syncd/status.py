"""Health of every source, gathered without the daemon's help.

`gather` reads the SQLite changelogs, syncd's bookkeeping in Postgres and, when it
answers, the daemon's /status endpoint; `evaluate` turns that into problems and a
Nagios-style verdict (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN). `evaluate` is pure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field

from syncd.config import Settings, SourceSettings, StatusSettings
from syncd.endpoint_client import fetch_status, own_sources, unanswered
from syncd.identifiers import quote_ident
from syncd.model import NOT_FOLLOWED, TO_POSTGRES, TO_SQLITE
from syncd.postgres import bookkeeping as bk
from syncd.postgres.connect import (LOCK_NOT_AVAILABLE, QUERY_CANCELED, close_quietly, connect, describe,
                                    login_refused, privilege_refused, sqlstate)
from syncd.printable import text_repr
from syncd.report.backups import FUTURE_SECONDS
from syncd.sqlite import capture, disk_guard, freeze, leftout, reader
from syncd.sqlite.connection import (AWAITS_RECOVERY, another_name_there, file_problem, hard_links, is_busy,
                                    left_mid_transaction, not_utf8, open_readonly, registered_under_another_name,
                                    surrogate_text)
from syncd.sqlite.introspect import is_internal, list_tables
from syncd.verify.history import columns_changed, host_clock_offset

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
VERDICTS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
_RANK = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}  # what wins when verdicts combine


def worse(a: int, b: int) -> int:
    return a if _RANK[a] >= _RANK[b] else b

HALTED = (bk.HELD, bk.PAUSED)
LONG_STEP_SECONDS = 30.0  # a step of the daemon running longer is worth a look (one is a batch, a chunk)


@dataclass
class TableStatus:
    name: str
    state: str
    reason: str | None = None
    snapshot_rows: int | None = None
    snapshot_total: int | None = None
    last_verify_at: str | None = None
    last_verify_differences: int | None = None
    last_verify_error: str | None = None
    last_verify_uncompared: str | None = None  # the last check compared nothing: why
    # Rows the last check found differing whose change stayed in flight while it waited:
    # (how many, why); compared to nothing, so no clean check.
    last_verify_pending: tuple[int, str] | None = None
    last_compared_at: str | None = None  # the last check that compared the table (and did not fail)
    copied_at: str | None = None  # its rows last copied (a load, a reload, either way): older checks do not count
    # How its columns in the SQLite file now differ from those the last check compared (a
    # column added since was never compared): that check is not the table's consistency now.
    columns_changed: str | None = None
    resync_requested: bool = False  # `syncd resync` asked for it; the daemon has not taken it up yet


@dataclass
class Problem:
    severity: str  # "warning" | "critical" | "unknown"
    message: str


@dataclass
class SourceStatus:
    name: str
    path: str
    state: str = "unknown"
    daemon_running: bool | None = None
    daemon_holder: str | None = None
    sqlite_exists: bool = False
    capture_installed: bool = False
    sqlite_error: str | None = None
    postgres_reachable: bool = False
    postgres_error: str | None = None
    postgres_refused: bool = False  # reached, and a privilege or the login refused: postgres_error names the role
    postgres_timed_out: bool = False  # reached, and status's queries got no answer in time: postgres_error says so
    initialized: bool = False
    lag_seconds: float | None = None
    pending_changes: int | None = None
    changelog_bytes: int | None = None
    last_applied_at: str | None = None
    dual_write_since: str | None = None
    tables: list[TableStatus] = field(default_factory=list)
    not_migrated: list[str] = field(default_factory=list)  # virtual tables holding data syncd cannot carry
    capture_suspended: str | None = None  # "<since> <why>" while capture is off to protect the disk
    direction: str = TO_POSTGRES  # TO_SQLITE once cut over (model.py)
    # "<table>: <foreign key> -> orphan rows", as the daemon last counted them (schema parity)
    foreign_key_orphans: dict[str, int] = field(default_factory=dict)
    daemon_detail: str | None = None  # why the daemon reports itself failing, and since when
    step_seconds: float | None = None  # how long the daemon's step in progress has run (0 between steps)
    rollback_until: str | None = None  # cut over: until when `syncd rollback` stays possible
    way_back_ended: str | None = None  # cut over: why SQLite no longer follows Postgres, once it does not
    way_back_copies_owed: int = 0  # cut over: tables to copy again into an older copy of the file put back
    way_back_error: str | None = None  # cut over: why what the way back owes SQLite could not be read
    endpoint_refused: str | None = None  # the daemon runs, its endpoint answered but gave no figures: why
    file_names: int | None = None  # directory entries (hard links) the SQLite file has
    registered_at: str | None = None  # another of those, there still, which syncd registered the source at
    sqlite_frozen: bool = False  # the file refuses the application's writes (a cutover's freeze)
    postgres_frozen: bool = False  # cut over, Postgres refuses the application's writes (a rollback's freeze)
    switching: str | None = None  # a cutover or rollback of the source runs: who holds its lock
    shared_key: str | None = None  # shares its key in Postgres with another source: what that means
    problems: list[Problem] = field(default_factory=list)


def _iso(t: dt.datetime | None) -> str | None:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="seconds") if t else None


# The first look at each file, one after the other, does not wait on a lock; those found
# locked are read again side by side, each waited for [sqlite] read_busy_timeout_ms as
# every syncd reader does: a fleet with many files locked is not read one wait after the
# other. A wait at the first look cost every locked file that wait on top (80 locked files
# took 4 s more at 50 ms), and LOCKED_READERS at once (each waiting thread holds a file
# open: a few descriptors) is one round of waits for a hundred locked files.
FIRST_LOOK_MS = 0
LOCKED_READERS = 128


def _read_sqlite(source: SourceSettings, applied_seq: int, held: dict[str, int] | None, wait_ms: int) -> dict:
    """What `syncd status` needs from one SQLite file, in as few statements as the file
    allows (a fleet's status reads a thousand of them): one look at the schema, syncd's
    meta rows and registry (checked, as the daemon checks them), the changelog's count
    past the checkpoint and its size."""
    conn = open_readonly(source.path, wait_ms)
    try:
        # Whether each is a virtual table, asked of SQLite: a table's text may be any bytes.
        conn.text_factory = surrogate_text  # a table's name is whatever bytes the application gave SQLite
        tables = dict(conn.execute("SELECT name, sql LIKE 'CREATE VIRTUAL TABLE%' FROM main.sqlite_master "
                                   "WHERE type = 'table'").fetchall())
        # Each table's columns as a consistency check compares them (introspect: hidden
        # columns of virtual tables left out), in one statement; virtual tables not asked
        # (their module may not be loaded here).
        columns: dict[str, list[str]] = {}
        for table, column in conn.execute(
                "SELECT m.name, p.name FROM main.sqlite_master m, pragma_table_xinfo(m.name, 'main') p "
                "WHERE m.type = 'table' AND m.sql NOT LIKE 'CREATE VIRTUAL TABLE%' AND p.hidden IN (0, 2, 3) "
                "ORDER BY m.name, p.cid"):
            # A name that is not UTF-8 by its bytes ("v\xff"), as syncd schema names it: printed and
            # in JSON, a surrogate is no text any reader takes.
            columns.setdefault(table, []).append(column.encode("utf-8", "surrogateescape").decode("utf-8",
                                                                                                  "backslashreplace"))
        conn.text_factory = str
        meta = capture.read_meta(conn) if capture.META in tables else {}
        if capture.REGISTRY in tables:  # a damaged row is UNKNOWN here, as it stops the daemon
            for name, key in conn.execute(f"SELECT name, key_columns FROM main.{quote_ident(capture.REGISTRY)}"):
                capture.registry_key(conn, name, key)
        out = {"installed": meta.get("capture_id") is not None, "max_seq": 0, "pending": 0, "bytes": 0,
               "names": os.stat(source.path).st_nlink, "columns": columns,
               "not_migrated": [], "suspended": meta.get(disk_guard.SUSPENDED_KEY),
               "frozen": meta.get(freeze.FROZEN_KEY) is not None}
        if any(tables.values()) or any(not_utf8(n) for n in tables):
            out["not_migrated"] = _holding_data(conn, source)
        if capture.CHANGELOG in tables:
            # Counted, not subtracted: without a checkpoint (Postgres away, never set up)
            # max_seq would count every change ever captured, pruned ones included.
            cl = f"main.{quote_ident(capture.CHANGELOG)}"
            out["max_seq"], page = conn.execute(
                f"SELECT (SELECT coalesce(max(seq), 0) FROM {cl}), (SELECT page_size FROM pragma_page_size())"
            ).fetchone()
            # Counted a window at a time: one count over a long changelog (up to
            # [sqlite] max_changelog_mb) held a rollback-journal file's writers back.
            out["pending"] = reader.entries_after(conn, applied_seq)
            if held and capture.REGISTRY in tables:
                tids = dict(conn.execute(f"SELECT name, tid FROM main.{quote_ident(capture.REGISTRY)}"))
                # queued behind the checkpoint: pending all the same
                queued = reader.queued_behind(
                    conn, {tids[name]: after for name, after in held.items() if name in tids}, applied_seq)
                out["pending"] += sum(queued.values())
                out["held_queued"] = [name for name in held if queued.get(tids.get(name), 0)]
            # An empty changelog is its root page; one with entries is measured.
            out["bytes"] = reader.changelog_bytes(conn) if out["max_seq"] else page
        return out
    finally:
        conn.close()


def _holding_data(conn: sqlite3.Connection, source: SourceSettings) -> list[str]:
    """Virtual tables with application data of their own that syncd cannot carry."""
    virtual = leftout.virtual_tables(conn)
    out = []
    conn.text_factory = surrogate_text  # a name is whatever bytes the application gave SQLite
    try:
        names = list_tables(conn)
    finally:
        conn.text_factory = str
    for name, kind, _, _ in names:
        if not_utf8(name) and kind in ("table", "virtual") and source.wants_table(name):
            # left out (introspect): no statement can name it
            out.append(f"{text_repr(name)} HOLDS rows OF APPLICATION DATA THAT IS NOT MIGRATED: its name is not "
                       "valid UTF-8; rename it in SQLite to carry it")
        elif kind == "virtual" and not is_internal(name) and source.wants_table(name):
            lo = leftout.classify(conn, name, kind, virtual)
            if lo.holds_data:
                out.append(f'"{name}" {lo.describe()}')
    return out


def endpoint_status(settings: Settings, sources: list[SourceSettings] | None = None) -> dict | None:
    """The running daemon's /status document (asked with the configured credentials),
    or None if no endpoint answers; only its entries for `sources` (the configuration's,
    by default: a glob source whose file is gone is passed in besides)."""
    status = fetch_status(settings.metrics)
    if status is not None:
        status["sources"] = own_sources(status.get("sources") or {},
                                        settings.sources if sources is None else sources)
    return status


@dataclass
class _PgSide:
    """What Postgres says about one source (gathered for every source of a target at once)."""

    error: str | None = None
    refused: bool = False  # Postgres answered and refused a privilege: `error` names the role
    timed_out: bool = False  # Postgres answered, and status's queries did not finish in time: `error` says so
    bookkeeping: bool = False
    src: tuple | None = None  # applied_seq, applied_at, streaming_since, direction, lag_from (bookkeeping)
    tables: list[tuple] = field(default_factory=list)  # name, state, reason, snapshot_rows, snapshot_total, from_seq, copied at, request
    verify: dict[str, tuple] = field(default_factory=dict)  # table -> finished_at, differences, error
    holder: str | None = None
    holder_since: dt.datetime | None = None  # when the lock holder's connection began
    switching: str | None = None  # who holds the source's switch lock: a cutover or rollback runs
    postgres_frozen: bool = False  # a rollback's record is open and its freeze is on the source's tables
    failing: tuple | None = None  # the daemon's note (health_note.py): detail, since, confirmed at
    shared_key: str | None = None  # the source shares its key with another (bookkeeping.shared_key_line)
    registered_path: str | None = None  # the SQLite path the bookkeeping registers the source at
    # held table -> a time its oldest queued change existed by (held then, or its row saved)
    held_since: dict[str, dt.datetime] = field(default_factory=dict)
    offset: dt.timedelta = dt.timedelta(0)  # host_clock_offset: what Postgres's clock stamped, on this host's


async def _postgres_side(settings: Settings, dsn: str, names: list[str]) -> dict[str, _PgSide]:
    """Every source of one target database in a handful of queries on one connection:
    `syncd status` answers quickly for a thousand sources, and opens one connection per
    database, not per source."""
    out = {n: _PgSide() for n in names}
    conn = None
    try:
        conn = await connect(dsn, settings.password(), settings.postgres)
        schema = settings.postgres.bookkeeping_schema
        # Each source's key (bookkeeping.source_keys), all in one query. A source without
        # one has no daemon (a daemon records it before it takes the lock): the lock of
        # another source with the hash of its name is not its; where nothing is recorded
        # at all, a syncd from before keys were recorded may run it, by that hash.
        recorded = await bk.recorded_keys(conn, schema)
        keys: dict[int, list[str]] = {}
        for n in names:
            if n in recorded or not recorded:
                keys.setdefault(recorded.get(n, bk.lock_key(n)), []).append(n)
        for name, others in bk.shared_keys(recorded, {n: recorded[n] for n in names if n in recorded}).items():
            out[name].shared_key = bk.shared_key_line(name, others, recorded[name])
        for r in await conn.fetch(
                """SELECT l.objid::bigint, a.application_name, a.backend_start, l.classid::bigint
                   FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                   WHERE l.locktype = 'advisory' AND l.classid IN ($1::oid, $2::oid) AND l.objsubid = 2 AND l.granted
                     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
                bk.LOCK_CLASS, bk.SWITCH_CLASS):
            for name in keys.get(r[0], ()):
                side = out[name]
                if r[3] == bk.SWITCH_CLASS:
                    side.switching = r[1] or "a client"
                else:
                    side.holder, side.holder_since = r[1] or "a client", r[2]
        if not await bk.bookkeeping_exists(conn, schema):
            return out
        q = bk.quote_pg_ident(schema)
        for side in out.values():
            side.bookkeeping = True
        # The columns later releases added (direction, the FAILING note, caught_up_at as
        # SourceRow.lag_from has it) read so that bookkeeping an earlier daemon made (not
        # upgraded yet: status completes nothing) does without them.
        for r in await conn.fetch(f"SELECT source, applied_seq, applied_at, streaming_since, "
                                  f"to_jsonb(s) ->> 'direction', "
                                  f"coalesce((to_jsonb(s) ->> 'caught_up_at')::timestamptz, created_at), "
                                  f"to_jsonb(s) ->> 'failing', (to_jsonb(s) ->> 'failing_since')::timestamptz, "
                                  f"(to_jsonb(s) ->> 'failing_at')::timestamptz, to_jsonb(s) ->> 'sqlite_path' "
                                  f"FROM {q}.sources s WHERE source = ANY($1::text[])", names):
            out[r[0]].src = tuple(r[1:6])
            out[r[0]].registered_path = r[9]
            out[r[0]].failing = tuple(r[6:9]) if r[6] is not None else None
        for r in await conn.fetch(f"SELECT source, table_name, state, reason, snapshot_rows, snapshot_total, from_seq, "
                                  f"snapshot_finished_at, to_jsonb(t) ->> 'request' FROM {q}.tables t "
                                  f"WHERE source = ANY($1::text[])", names):
            out[r[0]].tables.append(tuple(r[1:]))
        # A rollback's record open with its freeze on the tables: Postgres refuses the
        # application's writes (reverse.capture.freeze_function_sql) until it is undone.
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{q}.switches"):
            for r in await conn.fetch(f"SELECT DISTINCT w.source, coalesce(s.target_schema, w.source) "
                                      f"FROM {q}.switches w JOIN {q}.sources s ON s.source = w.source "
                                      f"WHERE w.source = ANY($1::text[]) AND w.kind = 'rollback' "
                                      f"AND w.state IN ('started', 'frozen')", names):
                from syncd.reverse import capture as way_back  # a rare path: a rollback open

                frozen = await way_back.frozen_tables(conn, await way_back.names_of(conn, schema, r[0]), r[1])
                out[r[0]].postgres_frozen = bool(frozen)
        # The change a held table's queue starts with is the one Postgres refused: it was
        # there when the table was held, and at each later save of the table's row.
        held_at = await conn.fetch(
            f"""SELECT t.source, t.table_name, least(t.updated_at, (SELECT max(e.at) FROM {q}.events e
                    WHERE e.source = t.source AND e.table_name = t.table_name AND e.kind = 'held'))
                FROM {q}.tables t WHERE t.source = ANY($1::text[]) AND t.state = $2""", names, bk.HELD)
        # The last run (the one that began last: its comparison is the newest, though a run
        # begun before it may finish after it), and the last that compared (a run that
        # compared nothing, a table not streaming when it ran, is no check: its time does
        # not make one recent).
        # Runs begun before the table's rows were last copied (a reload) judged rows
        # that are gone: they are not its consistency now. Runs dated ahead of this host's
        # clock (their host's clock ahead) ran at a time not known: neither the latest nor
        # a recent check, they would stand above the checks made since until that time came.
        # Runs are dated by Postgres's clock (history.record): judged and shown on this host's.
        offset = await host_clock_offset(conn)
        for side in out.values():
            side.offset = offset
        for r in held_at:
            out[r[0]].held_since[r[1]] = r[2] + offset
        for r in await conn.fetch(
                f"""SELECT t.source, t.table_name, v.finished_at, v.missing + v.extra + v.different, v.error,
                           CASE WHEN v.full_check THEN NULL
                                ELSE coalesce(v.detail::json->>'reason', 'no reason recorded') END,
                           (SELECT max(c.finished_at) FROM {q}.verify_runs c WHERE c.source = t.source
                            AND c.table_name = t.table_name AND c.full_check AND c.error IS NULL
                            AND c.started_at >= coalesce(t.snapshot_finished_at, '-infinity')
                            AND c.finished_at <= $2),
                           v.pending, coalesce(v.detail::json->>'reason', 'no reason recorded'),
                           (v.detail::json->'columns')::text
                    FROM {q}.tables t CROSS JOIN LATERAL (
                        SELECT finished_at, missing, extra, different, pending, error, full_check, detail
                        FROM {q}.verify_runs r
                        WHERE r.source = t.source AND r.table_name = t.table_name
                          AND r.started_at >= coalesce(t.snapshot_finished_at, '-infinity')
                          AND r.finished_at <= $2
                        ORDER BY started_at DESC, finished_at DESC LIMIT 1) v
                    WHERE t.source = ANY($1::text[])""",
                names, dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=FUTURE_SECONDS) - offset):
            at, compared_at = r[2], r[6]
            out[r[0]].verify[r[1]] = (at + offset, *r[3:6], None if compared_at is None else compared_at + offset,
                                      *r[7:])
    except Exception as e:  # noqa: BLE001 - any failure here is "Postgres unreachable", bar a refusal or a slow answer
        refused = privilege_refused(e, dsn) or login_refused(e, dsn)
        slow = None if refused or conn is None else _answered_slowly(e, settings.postgres.statement_timeout_seconds)
        # Nothing read before the failure is judged (a table's state without its checks
        # would read as a table never checked), bar a switch running: read whole, it says
        # the application's writes fail meanwhile.
        out = {n: _PgSide(error=refused or slow or describe(e), refused=refused is not None, timed_out=bool(slow),
                          switching=out[n].switching)
               for n in names}
    finally:
        await close_quietly(conn)
    return out


def _answered_slowly(exc: BaseException, timeout_seconds: float) -> str | None:
    """A status query on a connection Postgres accepted that got no answer in time (or
    that Postgres ended at a statement or lock timeout of its own), as one line; else
    None. Postgres answered: it is not unreachable."""
    if isinstance(exc, TimeoutError) and not str(exc):  # asyncpg's command timeout says nothing
        why = f"got no answer within [postgres] statement_timeout_seconds ({timeout_seconds:g} s)"
    elif sqlstate(exc) in (QUERY_CANCELED, LOCK_NOT_AVAILABLE):
        why = f"was ended by Postgres ({describe(exc)})"
    else:
        return None
    return (f"Postgres answered, but reading syncd's bookkeeping {why}: a lock another session holds on "
            "syncd's tables, or a busy server; the source's state is not known, try again")


def _applied_seq(pg: _PgSide) -> int:
    return pg.src[0] if pg.error is None and pg.src is not None else 0


def _held_from(pg: _PgSide) -> dict[str, int]:
    """Tables held or paused, each with the position its queued changes start after:
    the checkpoint moves past them, their changes wait in the changelog all the same."""
    return {r[0]: r[5] or 0 for r in pg.tables if r[1] in HALTED}


def _read_files(jobs: list[tuple[SourceSettings, int, dict[str, int]]], wait_ms: int) -> list[dict | str | None]:
    """_read_sqlite for each (source, applied_seq, held tables), one after the other,
    then those found locked again, side by side, each waited for `wait_ms`: None for a
    file that does not exist, the error's text for one that cannot be read."""
    def read(job, first: bool) -> dict | str | object | None:
        source, applied_seq, held = job
        try:
            if not source.path.exists():
                return None
            problem = file_problem(source.path)  # a directory: not SQLite's "disk I/O error"
            if problem is not None:
                return str(problem)
            return _read_sqlite(source, applied_seq, held, FIRST_LOOK_MS if first else wait_ms)
        except (sqlite3.Error, OSError) as e:  # OSError: its directory unreadable, say
            if first and is_busy(e):
                return _LOCKED
            return left_mid_transaction(e, source.path) or f"cannot read {source.path}: {e}"

    out = [read(job, first=True) for job in jobs]
    again = [i for i, got in enumerate(out) if got is _LOCKED]
    if again:
        with concurrent.futures.ThreadPoolExecutor(min(LOCKED_READERS, len(again))) as pool:
            for i, got in zip(again, pool.map(lambda i: read(jobs[i], first=False), again)):
                out[i] = got
    return out


_LOCKED = object()  # a file found locked at the first look


class _WayBackConnections:
    """The way back's figures of every cut-over source on one connection per target
    database, one source at a time: a fleet's hundreds of cut-over sources would
    otherwise each open a connection at once, taking Postgres's connection slots
    (max_connections) from the application and the daemon."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.conns: dict[str, object] = {}
        self.locks: dict[str, asyncio.Lock] = {}

    async def position(self, source: SourceSettings):
        from syncd.reverse.position import position

        dsn = self.settings.dsn_for(source)
        async with self.locks.setdefault(dsn, asyncio.Lock()):
            conn = self.conns.get(dsn)
            if conn is None or conn.is_closed():
                conn = self.conns[dsn] = await connect(dsn, self.settings.password(), self.settings.postgres)
            return await position(self.settings, source, conn)

    async def close(self) -> None:
        for conn in self.conns.values():
            await close_quietly(conn)


async def gather_source(settings: Settings, source: SourceSettings, live: dict | None,
                        pg: _PgSide, lite: dict | str | None, way_back: _WayBackConnections | None = None
                        ) -> SourceStatus:
    """One source's status from what Postgres said (pg) and what its file said (lite,
    from _read_files); a cut-over source's way back read on `way_back`'s connection."""
    st = SourceStatus(name=source.name, path=str(source.path))
    st.sqlite_exists = lite is not None
    applied_seq = 0
    src = pg.src
    if pg.error is not None:
        st.postgres_error, st.postgres_refused, st.postgres_timed_out = pg.error, pg.refused, pg.timed_out
    else:
        st.postgres_reachable = True
        st.shared_key = pg.shared_key
        if pg.bookkeeping:
            st.daemon_running = pg.holder is not None
            st.daemon_holder = pg.holder
        if src is not None:
            st.initialized = True
            applied_seq, applied_at, streaming_since, direction, _lag_from = src
            st.direction = direction or TO_POSTGRES
            # Stamped by Postgres's clock: read on this host's, as the checks are (a host behind
            # it read an apply an hour old as "0s ago").
            st.last_applied_at = _iso(applied_at + pg.offset if applied_at else None)
            st.dual_write_since = _iso(streaming_since + pg.offset if streaming_since else None)

    if isinstance(lite, str):
        st.sqlite_error = lite
    elif lite is not None:
        st.capture_installed = lite["installed"]
        st.not_migrated = lite["not_migrated"]
        st.capture_suspended = lite["suspended"]
        st.file_names = lite["names"]
        if pg.error is None and (st.file_names or 1) > 1 and another_name_there(pg.registered_path, str(source.path)):
            st.registered_at = pg.registered_path
        st.sqlite_frozen = lite["frozen"]
        # Pending for a source Postgres has set up; for one it has not, nothing is to be
        # applied (set up, it is copied whole) and the lag is not known: "-", not 0.
        if src is not None and lite["max_seq"] >= applied_seq:
            st.pending_changes = lite["pending"]
        elif lite["installed"] and (src is not None or pg.error is not None):
            st.pending_changes = lite["pending"]
        st.changelog_bytes = lite["bytes"]
        if pg.error is not None and lite["frozen"]:
            # Postgres cannot say, the file can: frozen for the application, so cut over (or
            # being cut over). Its changelog is the forward one: what waits is in Postgres.
            st.direction, st.pending_changes = TO_SQLITE, None

    st.switching = pg.switching
    st.postgres_frozen = pg.postgres_frozen
    way_back_since = None
    if st.direction == TO_SQLITE and st.postgres_reachable:
        way_back_since = await _way_back(settings, source, st, way_back)
        if way_back_since is not None and src is not None and src[1] is not None and src[1] < way_back_since:
            st.last_applied_at = None  # the forward stream's, into Postgres: the way back has applied nothing yet

    for name, state, reason, snap_rows, snap_total, _from, copied_at, request in sorted(pg.tables):
        t = TableStatus(name=name, state=state, reason=reason, copied_at=_iso(copied_at),
                        resync_requested=request == "resync")
        if state in (bk.LOADING, bk.PENDING):
            t.snapshot_rows, t.snapshot_total = snap_rows, snap_total
        if name in pg.verify:
            at, diffs, err, uncompared, compared_at, pending, why, compared = pg.verify[name]
            t.last_verify_at, t.last_verify_differences, t.last_verify_error = _iso(at), diffs, err
            t.last_verify_uncompared, t.last_compared_at = uncompared, _iso(compared_at)
            t.last_verify_pending = (pending, why) if pending else None
            if compared is not None and isinstance(lite, dict):
                t.columns_changed = columns_changed(json.loads(compared), lite["columns"].get(name)) or None
        st.tables.append(t)

    mine = (live or {}).get("sources", {}).get(source.name)
    if mine is not None:
        if st.daemon_running is False:
            # The daemon runs this source and has not taken its lock yet (a file found
            # since its start that it cannot open, say): running, not 'not running'.
            st.daemon_running = True
        if mine.get("lag_seconds") is not None:  # None: the daemon does not know it yet (starting)
            st.lag_seconds = mine["lag_seconds"]
        st.step_seconds = mine.get("step_seconds")
        applied = mine.get("applied_at")
        if st.last_applied_at is None and applied and (way_back_since is None
                                                       or applied >= way_back_since.timestamp()):
            # Postgres away: the daemon knows (after a cutover, only an apply of the way back's)
            st.last_applied_at = _iso(dt.datetime.fromtimestamp(mine["applied_at"], dt.timezone.utc))
        st.foreign_key_orphans = dict(mine.get("foreign_key_orphans") or {})
        if mine.get("health") not in (None, "starting"):
            st.state = mine["health"]
            if st.state == "postgres_unreachable" and st.postgres_refused:
                st.state = "postgres_refused"  # the daemon's outage is Postgres refusing syncd's role, as seen here
            elif st.state == "postgres_login_refused":  # the daemon's own name: status's one for a role refused
                st.state = "postgres_refused"
                st.daemon_detail = mine.get("detail") or None
        if st.state in ("failing", "file_locked", "postgres_unreachable"):
            st.daemon_detail = mine.get("detail") or None  # an outage's: what the daemon's writes met
    else:
        silent = unanswered(settings.metrics)
        if live is None and st.daemon_running and silent.startswith("the endpoint"):
            st.endpoint_refused = silent
        if _failing_now(pg) and st.sqlite_exists and st.sqlite_error is None:  # else the file's own word
            detail, since, _ = pg.failing
            st.state, st.daemon_detail = "failing", f"{detail} (since {_iso(since)})"
    if st.lag_seconds is None:
        st.lag_seconds = _lag_without_daemon(st, src)
        queued = [pg.held_since[n] for n in (lite.get("held_queued", []) if isinstance(lite, dict) else [])
                  if n in pg.held_since]
        if st.lag_seconds is not None and queued and st.direction == TO_POSTGRES:
            # A held table's change waits behind the checkpoint the other tables moved on: at
            # least as old as the time it was known to be there.
            st.lag_seconds = max(st.lag_seconds, time.time() - min(queued).timestamp())
    if st.state == "unknown":
        st.state = _derive_state(st)
        st._derived = True  # not the daemon's word (an attribute, not a field: not in --json)
    return st


def _lag_without_daemon(st: SourceStatus, src: tuple | None) -> float | None:
    """The lag from the bookkeeping and the file, where the daemon's observations are
    not to be had. After a cutover the way back measured its lag in Postgres
    (_way_back): its oldest pending change's age."""
    if st.direction == TO_SQLITE or st.pending_changes is None:
        return None
    if any(t.state in bk.ON_THE_WAY for t in st.tables):
        return None  # a table not copied in full: Postgres lacks rows no changelog entry counts
    if st.pending_changes == 0:
        return 0.0
    if src is None:
        return None
    # Every change past the checkpoint was committed after the checkpoint last covered the
    # whole changelog (the last apply is no bound: it may have left a backlog behind).
    return max(0.0, time.time() - src[4].timestamp())


def _failing_now(pg: _PgSide) -> bool:
    """The daemon's failing note, if the daemon that wrote it holds the lock now: written
    since the lock's connection began (a note left by a daemon gone is not today's)."""
    if pg.failing is None or pg.holder is None or pg.holder_since is None:
        return False
    return pg.failing[2] is not None and pg.failing[2] >= pg.holder_since


async def _way_back(settings: Settings, source: SourceSettings, st: SourceStatus,
                    shared: _WayBackConnections | None = None) -> dt.datetime | None:
    """After a cutover, pending changes and lag are the way back's (Postgres -> SQLite).
    Returns when the way back began (the cutover), when known."""
    from syncd.reverse.position import position

    try:
        wb = await (position(settings, source) if shared is None else shared.position(source))
    except Exception as e:  # noqa: BLE001 - shown, not fatal
        st.pending_changes = st.lag_seconds = None
        st.way_back_error = privilege_refused(e, settings.dsn_for(source)) or describe(e)
        return None
    st.pending_changes = wb.pending
    st.rollback_until = _iso(wb.rollback_until)
    st.way_back_ended = wb.retired
    st.way_back_copies_owed = wb.copies_owed
    if wb.lag_seconds is not None:
        st.lag_seconds = wb.lag_seconds
    return wb.started_at


def _archived(st: SourceStatus) -> bool:
    """Cut over, the way back ended, the SQLite file gone from its path: archived, as the
    retention after the cutover has it, not missing."""
    return not st.sqlite_exists and st.direction == TO_SQLITE and st.way_back_ended is not None


def _derive_state(st: SourceStatus) -> str:
    if not st.sqlite_exists:
        return "cut_over" if _archived(st) else "source_missing"
    if st.sqlite_error is not None:
        # The file is there but cannot be read as a database (emptied, a directory, not
        # SQLite): what the daemon calls it too. Locked by the application: only that.
        # Left mid-transaction by its writer: whole, and readable once rolled back.
        locked = "database is locked" in st.sqlite_error or AWAITS_RECOVERY in st.sqlite_error
        return "file_locked" if locked else "source_missing"
    if not st.postgres_reachable:
        if st.postgres_timed_out:
            return "postgres_timed_out"
        return "postgres_refused" if st.postgres_refused else "postgres_unreachable"
    if not st.initialized:
        return "not_initialized"
    if st.daemon_running is False:
        return "daemon_not_running"
    if st.direction == TO_SQLITE and st.way_back_ended:
        return "cut_over"  # SQLite no longer follows: nothing flows any more
    states = {t.state for t in st.tables}
    if states & bk.ON_THE_WAY:
        return "snapshotting"
    return "streaming"


def evaluate(st: SourceStatus, limits: StatusSettings, now: dt.datetime | None = None) -> int:
    """Fill st.problems; return the worst verdict for the source."""
    now = now or dt.datetime.now(dt.timezone.utc)
    p = st.problems
    if st.sqlite_error:
        p.append(Problem("unknown", st.sqlite_error))
    if not st.sqlite_exists and not _archived(st):
        p.append(Problem("critical", f"SQLite file {st.path} does not exist"))
    if st.postgres_timed_out:
        p.append(Problem("unknown", st.postgres_error))  # Postgres answered: what it holds is not known
    elif not st.postgres_reachable:
        p.append(Problem("critical", st.postgres_error if st.postgres_refused
                         else f"Postgres unreachable: {st.postgres_error}"))
    elif not st.initialized:
        p.append(Problem("critical", "not initialized in Postgres (run `syncd init` or `syncd run`)"))
    # Postgres not answering syncd (down, or refusing its role): whether the source was ever
    # set up, and so whether capture belongs in the file, is Postgres's to say; that one
    # problem is named above (--json still says capture_installed).
    if st.sqlite_exists and not st.capture_installed and st.sqlite_error is None and st.postgres_reachable:
        p.append(Problem("critical", "capture is not installed in the SQLite file"))
    daemon_refused = st.state == "postgres_refused" and st.postgres_reachable  # the daemon's login, not status's
    if (st.state in ("postgres_unreachable", "source_missing", "locked_by_other", "failing") or daemon_refused) \
            and st.daemon_running:
        why = f": {st.daemon_detail}" if st.daemon_detail else ""
        who = "the daemon cannot be asked; the file says" if getattr(st, "_derived", False) else "the daemon reports"
        # An outage the daemon names itself (Postgres answering but short of a resource, say).
        what = "an outage" if st.state == "postgres_unreachable" and st.daemon_detail else st.state.replace('_', ' ')
        p.append(Problem("critical", f"{who} {what}{why}"))
    if st.state == "file_locked" and st.daemon_running:
        why = f": {st.daemon_detail}" if st.daemon_detail else ""
        said = ("the daemon cannot be asked; the SQLite file is locked" if getattr(st, "_derived", False)
                else "the daemon reports the SQLite file locked")
        p.append(Problem("warning", f"{said}{why}"))
    if (st.step_seconds or 0) > LONG_STEP_SECONDS:
        p.append(Problem("warning", f"the daemon's current step has run for {st.step_seconds:.0f} s (it waits on "
                                    "Postgres or the SQLite file; a server gone without a word is given up on "
                                    "within about 25 s, a statement at [postgres] statement_timeout_seconds)"))
    unloaded = [t for t in st.tables if t.state in bk.ON_THE_WAY]
    # A copy begun (not one still to begin, as after `syncd init`: a step of the set-up)
    started = any(t.state in (bk.LOADING, bk.CATCHUP) for t in unloaded)
    if st.daemon_running is False and started:
        # A load stopped part-way (the daemon killed, say): the changelog may be empty while
        # the target lacks most of the rows.
        target = "SQLite" if st.direction == TO_SQLITE else "Postgres"
        copied = [f'"{t.name}" {t.snapshot_rows or 0} of {t.snapshot_total} row(s) copied'
                  if t.state == bk.LOADING and t.snapshot_total is not None
                  else f'"{t.name}" {"catching up after its copy" if t.state == bk.CATCHUP else "not copied yet"}'
                  for t in unloaded]
        waits = f" and {st.pending_changes} change(s) wait to be applied" if st.pending_changes else ""
        p.append(Problem("critical", f"daemon not running: the load did not finish, {target} lacks rows of "
                                     f"{len(unloaded)} table(s) until it runs ({', '.join(copied)}){waits}"))
    elif st.daemon_running is False and (st.pending_changes or 0) > 0:
        p.append(Problem("critical", f"daemon not running and {st.pending_changes} change(s) wait to be applied"))
    elif st.daemon_running is False and unloaded:
        p.append(Problem("warning", f"daemon not running: {len(unloaded)} table(s) not copied yet, the load begins "
                                    "when it runs"))
    elif st.daemon_running is False:
        p.append(Problem("warning", "daemon not running"))
    if st.endpoint_refused:
        p.append(Problem("warning", f"the daemon runs, but {st.endpoint_refused}: lag and pending are computed "
                                    "from the checkpoint instead of the daemon's own figures"))
    if st.switching:
        p.append(Problem("warning", f"a cutover or rollback of this source is running ({st.switching}): from "
                                    "its freeze until it ends, the application's writes fail at once, with a "
                                    "message naming syncd (retry them once it has ended)"))
    elif st.sqlite_frozen and st.direction == TO_POSTGRES and st.postgres_reachable and st.initialized:
        # Postgres is not the application's database, and nothing is switching: a cutover
        # stopped before its turn, or a rollback after it, left the freeze behind.
        p.append(Problem("critical", "the SQLite file refuses the application's writes, left frozen by a cutover "
                                     "or rollback that stopped before finishing (Postgres is not the application's "
                                     "database): a running daemon undoes it, as does `syncd cutover` or "
                                     "`syncd rollback` run again"))
    elif st.postgres_frozen and st.direction == TO_SQLITE and st.postgres_reachable:
        # Cut over, and nothing is switching: a rollback stopped before its turn left its
        # freeze on Postgres, while the SQLite file stays frozen too.
        p.append(Problem("critical", "Postgres refuses the application's writes, left frozen by a rollback that "
                                     "stopped before finishing (the SQLite file is not the application's database "
                                     "either): a running daemon undoes it, as does `syncd rollback` run again"))
    if st.way_back_error:
        p.append(Problem("critical", f"the way back's position could not be read: {st.way_back_error}; what SQLite "
                                     "lacks of Postgres's changes is not known"))
    if st.way_back_copies_owed:
        who = "the daemon copies" if st.daemon_running else "the daemon, once started, copies"
        p.append(Problem("warning" if st.daemon_running else "critical",
                         f"the SQLite file is an older copy than the way back had written into (it lacks changes "
                         f"Postgres has let go of): {who} its {st.way_back_copies_owed} table(s) to copy again "
                         "from Postgres"))
    if st.way_back_ended:
        archived = f"; its SQLite file is archived (no longer at {st.path})" if _archived(st) else ""
        p.append(Problem("warning", f"SQLite no longer follows Postgres: {st.way_back_ended}; a rollback is no "
                                    f"longer possible{archived}"))
    if st.shared_key:
        p.append(Problem("critical" if st.direction == TO_SQLITE else "warning", st.shared_key))
    if st.registered_at:
        p.append(Problem("warning", registered_under_another_name(st.path, st.registered_at, st.name)))
    elif (st.file_names or 1) > 1:
        p.append(Problem("warning", hard_links(st.path, st.file_names)))
    if st.capture_suspended:
        since, _, why = st.capture_suspended.partition(" ")
        p.append(Problem("critical", f"capture suspended since {since} to protect the disk: {why}; changes are "
                                     "not recorded until Postgres answers, then every table is snapshotted again"))
    for text in st.not_migrated:
        p.append(Problem("warning", f"not migrated: {text}"))
    for fk, n in sorted(st.foreign_key_orphans.items()):
        if n and st.direction != TO_SQLITE:
            p.append(Problem("warning", f"{fk}: {n} orphan row(s) (their foreign key names no parent row); the "
                                        "cutover refuses them unless --allow-orphans, `syncd report` lists keys"))
    for t in st.tables:
        if t.resync_requested:
            p.append(Problem("warning", f'table "{t.name}": `syncd resync` requested, not taken up yet (the daemon '
                                        "takes a request up at its next schema check; one it holds back, a damaged "
                                        "file say, its log names)"))
        if t.state in HALTED:
            p.append(Problem("critical", f'table "{t.name}" {t.state}: {t.reason}'))
        elif bk.held_in_a_retry(t.state, t.reason):
            p.append(Problem("critical", f'table "{t.name}" held, being copied again to retry: {t.reason}'))
        elif t.state == bk.REFUSED:
            p.append(Problem("warning", f'table "{t.name}" not replicated: {t.reason}'))
        if t.state != bk.STREAMING or st.way_back_ended:
            continue  # the way back ended: the file is kept as it was, no longer compared
        if t.last_verify_differences:
            p.append(Problem("critical", f'table "{t.name}": {t.last_verify_differences} row(s) differed at the '
                                         f"last consistency check ({t.last_verify_at})"))
        elif t.last_verify_error:
            p.append(Problem("warning", f'table "{t.name}": last consistency check failed: {t.last_verify_error}'))
        elif t.last_verify_uncompared:
            p.append(Problem("warning", f'table "{t.name}": last consistency check compared nothing: '
                                        f"{t.last_verify_uncompared}"))
        elif t.last_verify_pending:
            p.append(Problem("warning", f'table "{t.name}": last consistency check could not confirm '
                                        f"{t.last_verify_pending[0]} row(s) still changing: "
                                        f"{t.last_verify_pending[1]}"))
        elif t.columns_changed:
            p.append(Problem("warning", f'table "{t.name}": consistency not checked since its columns changed '
                                        f"({t.columns_changed})"))
        elif t.last_compared_at is None:
            since = f" since the table was copied ({t.copied_at})" if t.copied_at else " yet"
            p.append(Problem("warning", f'table "{t.name}": consistency not checked{since}'))
        else:
            age = (now - dt.datetime.fromisoformat(t.last_compared_at)).total_seconds()
            if age > limits.verify_max_age_seconds:
                p.append(Problem("warning", f'table "{t.name}": last consistency check is {age / 3600:.1f} h old'))
    if st.lag_seconds is not None:
        if st.lag_seconds > limits.crit_lag_seconds:
            p.append(Problem("critical", f"lag {st.lag_seconds:.0f}s above {limits.crit_lag_seconds:.0f}s"))
        elif st.lag_seconds > limits.warn_lag_seconds:
            p.append(Problem("warning", f"lag {st.lag_seconds:.0f}s above {limits.warn_lag_seconds:.0f}s"))
    order = {"unknown": UNKNOWN, "critical": CRITICAL, "warning": WARNING}
    worst = OK
    for problem in p:
        worst = worse(worst, order[problem.severity])
    return worst


async def gather(settings: Settings, sources: list[SourceSettings], with_live: bool = False):
    """(verdict, statuses), and with `with_live` the daemon's /status document too."""
    live = await asyncio.to_thread(endpoint_status, settings, [*settings.sources, *sources])
    statuses = await gather_statuses(settings, sources, live)
    verdict = OK
    for st in statuses:
        verdict = worse(verdict, evaluate(st, settings.status))
    return (verdict, list(statuses), live) if with_live else (verdict, list(statuses))


async def gather_statuses(settings: Settings, sources: list[SourceSettings], live: dict | None) -> list[SourceStatus]:
    """Every source's status: one connection per target database; the SQLite files read
    one after the other on one thread (a thread per file spent more time handing the GIL
    back and forth than reading, and two threads read no faster than one here)."""
    by_dsn: dict[str, list[str]] = {}
    for s in sources:
        by_dsn.setdefault(settings.dsn_for(s), []).append(s.name)
    sides: dict[str, _PgSide] = {}
    for got in await asyncio.gather(*(_postgres_side(settings, dsn, names) for dsn, names in by_dsn.items())):
        sides.update(got)
    lite = await asyncio.to_thread(_read_files, [(s, _applied_seq(sides[s.name]), _held_from(sides[s.name]))
                                                 for s in sources], settings.sqlite.read_busy_timeout_ms)
    way_back = _WayBackConnections(settings)
    try:
        return list(await asyncio.gather(*(gather_source(settings, s, live, sides[s.name], got, way_back)
                                           for s, got in zip(sources, lite))))
    finally:
        await way_back.close()


def as_json(verdict: int, statuses: list[SourceStatus]) -> dict:
    return {
        "status": VERDICTS[verdict],
        "exit_code": verdict,
        "checked_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "sources": [_source_json(s) for s in statuses],
    }


def _source_json(st: SourceStatus) -> dict:
    doc = asdict(st)
    if st.way_back_ended:  # as `syncd status` shows it: nothing flows any more, none of them streams
        for t in doc["tables"]:
            t["state"] = NOT_FOLLOWED
    return doc
