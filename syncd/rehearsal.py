"""`syncd rehearse`: the rollback plan, tested on the user's own data before the switch.

Per source, on a copy of its SQLite file (SQLite's online backup, in steps: the
application keeps writing) and in schemas of its own in the same Postgres database,
syncd does what the cutover runbook says, with the same code: load and stream the copy,
verify it, back it up, `syncd cutover`, write to Postgres as the application would
then, and `syncd rollback`, which brings SQLite up to date and verifies every row. The
live file, its replica and syncd's bookkeeping are never touched, except for one row
in syncd.rehearsals: the result with its measured downtimes, which `syncd report`
judges ("Rollback plan tested"). Everything the rehearsal made is removed afterwards,
whatever happened."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import asyncpg

from syncd.config import REHEARSAL_NAME_SUFFIX, REHEARSAL_SUFFIX, Settings, SourceSettings
from syncd.identifiers import quote_pg_ident
from syncd.model import TO_SQLITE
from syncd.postgres.bookkeeping import OWNED_TABLES, Bookkeeping, ensure_bookkeeping
from syncd.postgres.connect import PostgresUnavailable, close_quietly, connect, describe, privilege_refused
from syncd.postgres.target import UnsupportedTarget
from syncd.sqlite import capture
from syncd.sqlite.connection import SourceFileError, file_problem, is_busy, surrogate_text

log = logging.getLogger("syncd")

SUFFIX = REHEARSAL_SUFFIX  # of the schemas a rehearsal makes (its replica, its bookkeeping)
STREAM_SECONDS = 3600.0  # the copy's first load and catch-up, at the most
COPY_SECONDS = 300.0  # SQLite's backup restarts whenever the application writes: give up after this
CHANGED_ROWS = 100  # rows per table the rehearsal writes in Postgres after its cutover
# One rehearsal at a time per database (they share the rehearsal's bookkeeping schema):
# a session advisory lock under a key of its own.
REHEARSAL_LOCK = (0x53594E52, 0)  # "SYNR"


class RehearsalFailed(Exception):
    """A step failed; the message says which and why (one line)."""


@dataclass
class RehearsalResult:
    source: str
    ok: bool = False
    steps: list[tuple[str, float, str]] = field(default_factory=list)  # (step, seconds, what it did)
    problems: list[str] = field(default_factory=list)
    rows: int = 0
    changes: int = 0
    cutover_downtime: float | None = None
    rollback_downtime: float | None = None
    # The tables its copy held, verified, each with its definition's fingerprint
    # (table_definitions): what the rehearsal is evidence for.
    tables: dict[str, str | None] | None = None
    path: str | None = None  # the file its copy was made of (resolved): a rehearsal of another file is not this one's

    def as_json(self) -> dict:
        out = {"steps": [{"step": s, "seconds": round(t, 3), "note": n} for s, t, n in self.steps],
               "problems": self.problems}
        if self.tables is not None:
            out["tables"] = self.tables
        if self.path is not None:
            out["path"] = self.path
        return out


def rehearsal_schemas(settings: Settings, source: SourceSettings) -> tuple[str, str]:
    """(replica schema, bookkeeping schema) of `source`'s rehearsal."""
    return source.schema + SUFFIX, settings.postgres.bookkeeping_schema + SUFFIX


def rehearsal_settings(settings: Settings, source: SourceSettings, copy: Path,
                       backups: Path) -> tuple[Settings, SourceSettings]:
    schema, bk_schema = rehearsal_schemas(settings, source)
    rs = source.model_copy(update={"name": source.name + REHEARSAL_NAME_SUFFIX, "path": copy, "schema_": schema})
    c = settings.cutover.model_copy(update={"min_days": 0.0, "backup_glob": str(backups / "{source}-*.db"),
                                            "backup_max_age_days": max(settings.cutover.backup_max_age_days, 1.0)})
    return settings.model_copy(update={
        "sources": [rs], "cutover": c,
        "postgres": settings.postgres.model_copy(update={"bookkeeping_schema": bk_schema}),
        "verify": settings.verify.model_copy(update={"interval_seconds": 0.0}),
        "metrics": settings.metrics.model_copy(update={"listen": ""}),  # no endpoint to ask: none runs it
    }), rs


def copy_file(src: Path, dst: Path, busy_timeout_ms: int) -> None:
    """SQLite's online backup of `src` into `dst`, in steps of 1,024 pages: a writer waits
    at most one step; each write by another connection restarts the copy."""
    problem = file_problem(src)
    if problem is not None:
        raise RehearsalFailed(str(problem))
    began = time.monotonic()

    def progress(_status, _remaining, _total):
        if time.monotonic() - began > COPY_SECONDS:
            raise RehearsalFailed(f"copying {src}: the application changed it faster than it could be copied for "
                                  f"{COPY_SECONDS:g} s; rehearse at a quieter time")

    source = sqlite3.connect(f"file:{quote(str(src))}?mode=ro", uri=True, timeout=busy_timeout_ms / 1000)
    target = sqlite3.connect(dst, isolation_level=None)
    try:
        try:
            source.backup(target, pages=1024, progress=progress, sleep=0.005)
        except sqlite3.DatabaseError as e:
            if is_busy(e):
                raise
            raise RehearsalFailed(f"cannot read SQLite file {src}: {e}") from None
        # The application's file as it would be without syncd: the rehearsal installs capture itself.
        capture.uninstall(target, busy_timeout_ms)
    finally:
        target.close()
        source.close()


async def _leftovers(conn: asyncpg.Connection, schema: str, bk_schema: str) -> None:
    """Drop what an earlier rehearsal of this source left (killed halfway); refuse to
    touch a schema of that name that no rehearsal made."""
    owned = f"{quote_pg_ident(bk_schema)}.{OWNED_TABLES}"
    ours = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", owned) and await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM {owned} WHERE schema_name = $1)", schema)
    if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema):
        empty = not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n "
                                        "ON n.oid = c.relnamespace WHERE n.nspname = $1)", schema)
        if not (ours or empty):
            raise RehearsalFailed(f'Postgres schema "{schema}" exists and no rehearsal made it: the rehearsal '
                                  "replicates the copy there; rename or drop that schema first")
        await _keep_extensions_in_use(conn, [schema, bk_schema])
        await conn.execute(f"DROP SCHEMA {quote_pg_ident(schema)} CASCADE")
    if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", owned):
        # The rehearsal's own bookkeeping (it made that table), holding the earlier copy's
        # switch: kept, the new copy's load would find its source cut over and never stream.
        await _keep_extensions_in_use(conn, [schema, bk_schema])
        await conn.execute(f"DROP SCHEMA {quote_pg_ident(bk_schema)} CASCADE")


async def _keep_extensions_in_use(conn: asyncpg.Connection, schemas: list[str]) -> None:
    """An extension the rehearsal installed into its schema (citext, by its cutover) that
    objects elsewhere have come to use meanwhile (a real cutover of another source found
    it there) moves to the schema of the first of them: DROP SCHEMA ... CASCADE would drop
    it and, with it, those objects (a live source's columns)."""
    rows = await conn.fetch(
        """SELECT e.extname, min(o.schema) AS used_in
           FROM pg_extension e JOIN pg_namespace en ON en.oid = e.extnamespace AND en.nspname = ANY($1::text[])
           JOIN pg_depend m ON m.refclassid = 'pg_extension'::regclass AND m.refobjid = e.oid AND m.deptype = 'e'
           JOIN LATERAL (SELECT m.classid, m.objid UNION ALL SELECT 'pg_type'::regclass, t.typarray FROM pg_type t
                         WHERE m.classid = 'pg_type'::regclass AND t.oid = m.objid AND t.typarray <> 0) mo ON true
           JOIN pg_depend d ON d.refclassid = mo.classid AND d.refobjid = mo.objid AND d.deptype = 'n'
           CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, 0) o
           WHERE o.schema IS NOT NULL AND NOT o.schema = ANY($1::text[])
           GROUP BY e.extname""", schemas)
    for r in rows:
        await conn.execute(f"ALTER EXTENSION {quote_pg_ident(r['extname'])} SET SCHEMA {quote_pg_ident(r['used_in'])}")


async def _clean_up(conn: asyncpg.Connection, schema: str, bk_schema: str) -> None:
    await _keep_extensions_in_use(conn, [schema, bk_schema])
    await conn.execute(f"DROP SCHEMA IF EXISTS {quote_pg_ident(schema)} CASCADE")
    await conn.execute(f"DROP SCHEMA IF EXISTS {quote_pg_ident(bk_schema)} CASCADE")


async def left_behind(settings: Settings, source: SourceSettings) -> list[str]:
    """The schemas of `source`'s rehearsal still in Postgres (after an interrupt, say)."""
    conn = await connect(settings.dsn_for(source), settings.password(), settings.postgres)
    try:
        names = list(rehearsal_schemas(settings, source))
        return [r[0] for r in await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname = ANY($1::text[]) "
                                               "ORDER BY nspname", names)]
    finally:
        await close_quietly(conn)


async def _write_like_the_application(conn: asyncpg.Connection, schema: str) -> int:
    """After the cutover: rewrite up to CHANGED_ROWS rows of each table with their own
    values, so the way back has row changes of every table to carry."""
    changed = 0
    tables = await conn.fetch(
        """SELECT c.relname, (SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                                AND NOT a.attisdropped AND a.attgenerated = '' AND a.attidentity = ''
                                ORDER BY a.attnum DESC LIMIT 1) AS col
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname""", schema)
    for t in tables:
        if t["col"] is None:
            continue
        table, col = f"{quote_pg_ident(schema)}.{quote_pg_ident(t['relname'])}", quote_pg_ident(t["col"])
        status = await conn.execute(f"UPDATE {table} SET {col} = {col} WHERE ctid = ANY(ARRAY("
                                    f"SELECT ctid FROM {table} LIMIT {CHANGED_ROWS}))")
        changed += int(status.split()[-1])
    return changed


WORKDIR_PREFIX = "syncd-rehearsal-"


def _sweep_workdirs() -> None:
    """Remove the copies an earlier rehearsal killed outright (SIGKILL, a power cut) left
    in the temporary directory: copies of the business's data no one else removes. A
    directory is an earlier rehearsal's while its process runs (its pid file), and one
    without a pid file is not known to be one: both are left."""
    for d in Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"):
        try:
            pid = int((d / "pid").read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass  # another user's process runs with that pid: not ours to judge


async def rehearse(settings: Settings, source: SourceSettings, *, allow_orphans: bool = False) -> RehearsalResult:
    res = RehearsalResult(source=source.name, path=str(source.path.resolve()))
    started = dt.datetime.now(dt.timezone.utc)
    schema, bk_schema = rehearsal_schemas(settings, source)
    _sweep_workdirs()
    workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
    (workdir / "pid").write_text(str(os.getpid()))
    conn = await connect(settings.dsn_for(source), settings.password(), settings.postgres)
    try:
        await ensure_bookkeeping(conn, settings.postgres.bookkeeping_schema)  # where the result goes
        if await Bookkeeping(settings.postgres.bookkeeping_schema, source.name).direction(conn) == TO_SQLITE:
            res.problems.append("already cut over: a rehearsal is for before the switch; `syncd rollback --dry-run` "
                                "checks the way back now")
            return res
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *REHEARSAL_LOCK):
            res.problems.append("another `syncd rehearse` runs on this database now; rehearse after it")
            return res
        if len(schema.encode()) > 63:
            res.problems.append(f'the rehearsal\'s schema name "{schema}" is longer than Postgres\'s 63 bytes; '
                                "rehearse with a shorter schema for the source")
            return res
        if len(bk_schema.encode()) > 63:
            res.problems.append(f'the rehearsal\'s bookkeeping schema name "{bk_schema}" is longer than Postgres\'s '
                                "63 bytes; rehearse with a shorter [postgres] bookkeeping_schema")
            return res
        try:
            await _leftovers(conn, schema, bk_schema)
        except RehearsalFailed as e:  # nothing of the rehearsal's own there to clean up: touch nothing
            res.problems.append(str(e))
            await _record(conn, settings.postgres.bookkeeping_schema, res, started)
            return res
        try:
            await _steps(settings, source, workdir, conn, res, allow_orphans)
            res.ok = True
        except RehearsalFailed as e:
            res.problems.insert(0, str(e))
        except Exception as e:  # noqa: BLE001 - whatever stops a step fails the rehearsal, named, and is cleaned up
            if not isinstance(e, (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, sqlite3.Error,
                                  SourceFileError, UnsupportedTarget, PostgresUnavailable)):  # each names what failed
                log.error("rehearsal step failed", exc_info=True, extra={"source": source.name})
            res.problems.insert(0, f"{res.steps[-1][0] if res.steps else 'copy'}: "
                                   f"{await _refused(conn, e, settings.dsn_for(source), schema, bk_schema) or describe(e)}")
        finally:
            await _clean_up(conn, schema, bk_schema)
        await _record(conn, settings.postgres.bookkeeping_schema, res, started)
    finally:
        await close_quietly(conn)
        shutil.rmtree(workdir, ignore_errors=True)
    return res


async def _refused(conn: asyncpg.Connection, exc: BaseException, dsn: str, schema: str, bk_schema: str) -> str | None:
    """A privilege Postgres refused the rehearsal, in one line naming the role and the grant,
    or None. Its schemas are its own, made and dropped by each rehearsal: the tightest role
    docs/operations.md lists (its schemas made for it) lacks the CREATE on the database that takes."""
    refused = privilege_refused(exc, dsn)
    if refused is None or "permission denied for database" not in str(exc):
        return refused
    try:
        database, role = await conn.fetchrow("SELECT current_database(), current_user")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return refused
    return (f"Postgres refused syncd's role {role}: {describe(exc)}; a rehearsal makes schemas of its own "
            f"(\"{schema}\", \"{bk_schema}\") and drops them after, which takes GRANT CREATE ON DATABASE "
            f"{quote_pg_ident(database)} TO {quote_pg_ident(role)} (docs/operations.md, \"The Postgres role\")")


async def _steps(settings: Settings, source: SourceSettings, workdir: Path, conn: asyncpg.Connection,
                 res: RehearsalResult, allow_orphans: bool) -> None:
    from syncd.cli.init import init_source
    from syncd.cutover import cutover
    from syncd.pipeline import STREAMING, Pipeline
    from syncd.rollback import rollback
    from syncd.verify import verify_source

    copy, backups = workdir / "copy.db", workdir / "backups"
    backups.mkdir()
    rsettings, rs = rehearsal_settings(settings, source, copy, backups)
    busy = settings.sqlite.read_busy_timeout_ms

    async def step(name: str, work):
        began = time.monotonic()
        res.steps.append((name, 0.0, ""))
        note = await work()
        res.steps[-1] = (name, time.monotonic() - began, note or "")

    async def copy_it():
        await asyncio.to_thread(copy_file, source.path, copy, busy)
        return f"{copy.stat().st_size:,} bytes copied from {source.path}"

    async def load():
        await init_source(rsettings, rs)
        pipeline = Pipeline(rsettings, rs)
        task = asyncio.create_task(pipeline.run(), name=f"rehearsal-{rs.name}")
        deadline = time.monotonic() + STREAM_SECONDS
        try:
            while not (pipeline.ready.is_set() and pipeline.health == STREAMING):
                if task.done() or time.monotonic() > deadline:
                    raise RehearsalFailed(f"the copy did not reach streaming: {pipeline.health} {pipeline.detail}")
                await asyncio.sleep(0.1)
        finally:
            pipeline.stop()
            await asyncio.wait_for(task, 30)
        return "loaded into Postgres and streaming"

    async def verify():
        checked = await verify_source(rsettings, rs, record=True)
        res.rows = sum(t.rows_sqlite or 0 for t in checked.tables)
        res.tables = await asyncio.to_thread(_definitions_of, copy, [t.table for t in checked.tables])
        bad = [t for t in checked.tables if not (t.compared and t.equal) or t.error]
        if checked.error or bad:
            what = checked.error or ", ".join(f'"{t.table}": {t.error or t.reason or "not equal"}' for t in bad[:3])
            raise RehearsalFailed(f"the copy and its replica are not equal after the load: {what}")
        return f"{res.rows:,} row(s) in {len(checked.tables)} table(s) equal"

    async def back_up():
        await asyncio.to_thread(copy_file, copy, backups / f"{rs.name}-before-cutover.db", busy)
        return "the copy backed up, as the runbook does before the switch"

    async def switch():
        r = await cutover(rsettings, rs, allow_orphans=allow_orphans)
        if not r.done:
            raise RehearsalFailed("syncd cutover refused or undone: " + "; ".join(r.problems))
        res.cutover_downtime = r.downtime_seconds
        return f"write downtime {r.downtime_seconds:.2f} s"

    async def write():
        res.changes = await _write_like_the_application(conn, rs.schema)
        return f"{res.changes} row(s) rewritten in Postgres"

    async def switch_back():
        r = await rollback(rsettings, rs)
        if not r.done:
            raise RehearsalFailed("syncd rollback refused or undone: " + "; ".join(r.problems))
        res.rollback_downtime = r.downtime_seconds
        return f"write downtime {r.downtime_seconds:.2f} s; every row verified"

    for name, work in (("copy", copy_it), ("load", load), ("verify", verify), ("backup", back_up),
                       ("cutover", switch), ("write in Postgres", write), ("rollback", switch_back)):
        await step(name, work)


def table_definitions(conn: sqlite3.Connection) -> dict[str, str]:
    """Each table's CREATE statement as SQLite keeps it (an ALTER TABLE rewrites it), as a
    short fingerprint: a table whose definition changed since a rehearsal was not rehearsed."""
    old = conn.text_factory
    conn.text_factory = surrogate_text  # SQLite keeps whatever bytes a definition was given
    try:
        return {name: hashlib.sha256(sql.encode("utf-8", "surrogateescape")).hexdigest()[:16]
                for name, sql in conn.execute("SELECT name, sql FROM main.sqlite_master WHERE type = 'table'")
                if sql is not None}
    finally:
        conn.text_factory = old


def _definitions_of(path: Path, names: list[str]) -> dict[str, str | None]:
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
    try:
        found = table_definitions(conn)
    finally:
        conn.close()
    return {n: found.get(n) for n in sorted(names)}


async def _record(conn: asyncpg.Connection, bk_schema: str, res: RehearsalResult, started: dt.datetime) -> None:
    await conn.execute(
        f"""INSERT INTO {quote_pg_ident(bk_schema)}.rehearsals (source, started_at, finished_at, ok, rows_verified,
                changes, cutover_downtime_seconds, rollback_downtime_seconds, detail)
            VALUES ($1, $2, now(), $3, $4, $5, $6, $7, $8)""",
        res.source, started, res.ok, res.rows, res.changes, res.cutover_downtime, res.rollback_downtime,
        json.dumps(res.as_json()))
