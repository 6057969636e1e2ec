"""`syncd resync --source NAME --table T`: rebuild one table in Postgres from SQLite.

The request is recorded in Postgres; the running daemon (or the next `syncd run` or
`syncd init`) drops the Postgres table, recreates it from SQLite's current schema
and re-snapshots it. This is how a table paused by a dropped or renamed column
resumes when the change should simply be followed."""

from __future__ import annotations

import asyncio
import sqlite3

from syncd.cli import common
from syncd.config import Settings, SourceSettings
from syncd.identifiers import as_named
from syncd.model import TO_POSTGRES, TO_SQLITE
from syncd.postgres.bookkeeping import REFUSED, Bookkeeping, bookkeeping_exists
from syncd.postgres.connect import PostgresUnavailable, close_quietly, connect
from syncd.sqlite.connection import damaged, file_problem, open_readonly
from syncd.sqlite.hold import RowsPerHold
from syncd.sqlite.introspect import introspect
from syncd.sqlite.reader import read_chunk_apart


def register(sub, parent) -> None:
    p = sub.add_parser("resync", parents=[parent], help="rebuild a table in Postgres from SQLite",
                       description="Ask syncd to drop one table in Postgres, recreate it from SQLite's current "
                                   "schema and snapshot it again. The running daemon acts within seconds; "
                                   "otherwise the next `syncd run` or `syncd init` does.")
    p.add_argument("--source", metavar="NAME", required=True, help="the source the table belongs to")
    p.add_argument("--table", metavar="TABLE", required=True, action="append",
                   help="table to rebuild (repeat for several)")
    p.set_defaults(func=main)


def main(args) -> int:
    settings = common.load(args)
    # A glob's source whose file is gone (`syncd status` shows it missing) is a source all
    # the same: refused below naming its file, not as a name the configuration lacks.
    unknown: list[str] = []
    try:
        source = common.with_gone_sources(settings, unknown, args.source).source(args.source)
    except common.ConfigError:
        if not unknown:
            raise
        return common.fail(f"cannot look up source {args.source!r}, which may be one whose file is gone: "
                           f"{unknown[0]}", 1)
    try:
        return asyncio.run(_request(settings, source, args.table))
    except PostgresUnavailable as e:
        return common.fail(str(e), 1)


def _not_a_database(source: SourceSettings, busy_timeout_ms: int, tables: list[str],
                    chunk_rows: int) -> str | None:
    """Why the source's path holds no SQLite database to rebuild `tables` from (missing,
    a directory, not SQLite, damaged), in one line, or None. A file this user may not open,
    or one an application holds locked, is the daemon's to read: not judged here."""
    problem = file_problem(source.path)
    if problem is not None:
        return str(problem)
    try:
        conn = open_readonly(source.path, busy_timeout_ms)
    except sqlite3.OperationalError:
        return None
    try:
        conn.execute("SELECT count(*) FROM main.sqlite_master").fetchone()
        # Damage inside the file: the rebuild could not read it, and the Postgres copy the
        # resync drops may be the only whole one left. A read of every page in WAL mode; in
        # rollback-journal mode, where that would hold the application's commits back for as
        # long as it reads, the tables' rows as the rebuild reads them, a chunk at a time.
        wal = conn.execute("PRAGMA main.journal_mode").fetchone()[0].lower() == "wal"
        found = conn.execute("PRAGMA main.quick_check(1)").fetchone()[0] if wal else "ok"
        specs = {} if wal else introspect(conn, source).tables
        for spec in (specs[t] for t in tables if t in specs):
            more, after, reads = True, None, RowsPerHold(chunk_rows)
            while more:
                more, after = read_chunk_apart(conn, spec, after, reads)
    except sqlite3.OperationalError:
        return None
    except sqlite3.DatabaseError as e:
        return str(damaged(e, source.path) or f"cannot read {source.path}: {e}")
    finally:
        conn.close()
    if found != "ok":
        found = " ".join(found.split())  # SQLite's report runs over lines
        return f"SQLite file {source.path} is damaged: {found} (PRAGMA quick_check); restore it from a backup"
    return None


async def _request(settings: Settings, source: SourceSettings, tables: list[str]) -> int:
    conn = await connect(settings.dsn_for(source), settings.password(), settings.postgres)
    try:
        bk = Bookkeeping(settings.postgres.bookkeeping_schema, source.name)
        initialized = await bookkeeping_exists(conn, bk.schema)
        cut_over = (
            f"source {source.name!r} is cut over: Postgres is the source of truth, and a resync would rebuild "
            "its tables from the frozen SQLite file, losing what the application wrote since (and the indexes "
            "and constraints it built). `syncd verify --repair` mends SQLite from Postgres instead")
        if initialized and await bk.direction(conn) == TO_SQLITE:
            return common.fail(cut_over, 1)
        if initialized:  # a table named as SQLite names it, A-Z in any case: ORDERS is the file's orders
            known = [r[0] for r in await conn.fetch(f"SELECT table_name FROM {bk.s}.tables WHERE source = $1",
                                                    source.name)]
            tables = [as_named(t, known) for t in tables]
        wrong = _not_a_database(source, settings.sqlite.read_busy_timeout_ms, tables,
                                settings.stream.snapshot_chunk_rows)
        if wrong is not None:  # before "no replicated table": the file is what is at fault
            return common.fail(f"{wrong}; a resync rebuilds the table from it", 1)
        if not initialized:
            return common.fail(f"source {source.name!r} has not been initialized (run `syncd init`)", 1)
        rc = 0
        for table in tables:
            # Not acted on after a cutover (the forward stream stops), so never recorded then:
            # it would fire after a rollback. Nor for a refused table, which the daemon never
            # rebuilds (it drops the request).
            status = await conn.execute(
                f"UPDATE {bk.s}.tables SET request = 'resync' WHERE source = $1 AND table_name = $2 "
                f"AND state <> $4 AND (SELECT direction FROM {bk.s}.sources WHERE source = $1) = $3",
                source.name, table, TO_POSTGRES, REFUSED,
            )
            refused = None if status == "UPDATE 1" else await conn.fetchval(
                f"SELECT coalesce(reason, 'refused') FROM {bk.s}.tables WHERE source = $1 AND table_name = $2 "
                f"AND state = $3", source.name, table, REFUSED)
            if status == "UPDATE 1":
                common.say(f"{source.name}: resync of {table!r} requested; the running daemon rebuilds it "
                           "(or the next `syncd run` / `syncd init` does)")
            elif await bk.direction(conn) == TO_SQLITE:
                return common.fail(cut_over, 1)  # cut over meanwhile
            elif refused is not None:
                common.say(f"{source.name}: {table!r} is not replicated: {refused}; a resync cannot rebuild it")
                rc = 1
            else:
                common.say(f"{source.name}: no replicated table named {table!r}")
                rc = 1
        return rc
    finally:
        await close_quietly(conn)
