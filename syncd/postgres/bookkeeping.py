"""syncd's own state in Postgres: per-source checkpoint, per-table state, history.

The checkpoint is written in the same transaction as the data it covers, so Postgres
alone says exactly which changes have been applied.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import socket
import os
from dataclasses import dataclass
from typing import Any

import asyncpg

from syncd.identifiers import quote_pg_ident
from syncd.model import TO_POSTGRES

BOOKKEEPING_VERSION = 1
LOCK_CLASS = 0x53594E43  # "SYNC": first half of every advisory lock key syncd takes
SWITCH_CLASS = 0x53594E44  # "SYND": the same for a cutover or rollback in progress (cutover.py)
CAPTURE_CLASS = 0x53594E49  # "SYNI": a capture id being claimed by a source (Bookkeeping.capture_id_of_another)

# Table states. A table streams only in STREAMING; in every other state its
# changelog entries stay queued in SQLite.
PENDING = "pending"  # needs a snapshot from scratch
LOADING = "loading"  # snapshot in progress (resumable from snapshot_key)
CATCHUP = "catchup"  # loaded; applying its own queued changes before joining the stream
STREAMING = "streaming"
HELD = "held"  # a value Postgres cannot take; retried until it fits (resume_to says where)
PAUSED = "paused"  # a schema change needs an operator (dropped/renamed column or table)
REFUSED = "refused"  # cannot be replicated (no usable key)

STATES = (PENDING, LOADING, CATCHUP, STREAMING, HELD, PAUSED, REFUSED)
ON_THE_WAY = frozenset((PENDING, LOADING, CATCHUP))  # not streaming yet, nothing wrong


def held_in_a_retry(state: str, reason: str | None) -> bool:
    """A held table whose retry copies it again: LOADING, the hold's reason kept until the
    copy has gone through. Held all the same meanwhile (status, report, metrics)."""
    return state == LOADING and bool(reason)


def _ddl(bk: str) -> list[str]:
    s = quote_pg_ident(bk)
    return [
        f"""CREATE TABLE IF NOT EXISTS {s}.meta (
            key text PRIMARY KEY,
            value text NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS {s}.sources (
            source text PRIMARY KEY,
            capture_id text,
            applied_seq bigint NOT NULL DEFAULT 0,
            applied_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            streaming_since timestamptz,
            sqlite_path text,
            target_schema text)""",
        f"""CREATE TABLE IF NOT EXISTS {s}.tables (
            source text NOT NULL REFERENCES {s}.sources ON DELETE CASCADE,
            table_name text NOT NULL,
            tid integer,
            state text NOT NULL,
            resume_to text,
            from_seq bigint,
            snapshot_key text,
            snapshot_rows bigint NOT NULL DEFAULT 0,
            snapshot_total bigint,
            snapshot_started_at timestamptz,
            snapshot_finished_at timestamptz,
            reason text,
            request text,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (source, table_name))""",
        # One row per applied batch not yet confirmed by a prune note in the SQLite file:
        # the fingerprint of the changelog entries the batch covered (see reconcile).
        f"""CREATE TABLE IF NOT EXISTS {s}.applied_batches (
            source text NOT NULL REFERENCES {s}.sources ON DELETE CASCADE,
            after_seq bigint NOT NULL,
            last_seq bigint NOT NULL,
            fingerprint text NOT NULL,
            PRIMARY KEY (source, last_seq))""",
        f"""CREATE TABLE IF NOT EXISTS {s}.events (
            id bigserial PRIMARY KEY,
            at timestamptz NOT NULL DEFAULT now(),
            source text NOT NULL,
            table_name text,
            kind text NOT NULL,
            detail text)""",
        f"""CREATE TABLE IF NOT EXISTS {s}.verify_runs (
            id bigserial PRIMARY KEY,
            source text NOT NULL,
            table_name text NOT NULL,
            started_at timestamptz NOT NULL,
            finished_at timestamptz NOT NULL DEFAULT now(),
            rows_sqlite bigint,
            rows_postgres bigint,
            missing bigint NOT NULL DEFAULT 0,
            extra bigint NOT NULL DEFAULT 0,
            different bigint NOT NULL DEFAULT 0,
            pending bigint NOT NULL DEFAULT 0,
            repaired bigint NOT NULL DEFAULT 0,
            error text,
            full_check boolean NOT NULL DEFAULT true,
            table_state text,
            detail text)""",
        f"CREATE INDEX IF NOT EXISTS verify_runs_by_table ON {s}.verify_runs (source, table_name, finished_at)",
        # A table's latest run is the one that began last (syncd status reads it).
        f"CREATE INDEX IF NOT EXISTS verify_runs_by_start ON {s}.verify_runs (source, table_name, started_at)",
        # Every replica table syncd created: it never empties, reshapes or writes a table
        # that is not listed here (someone else's table of the same name is refused).
        f"""CREATE TABLE IF NOT EXISTS {s}.{OWNED_TABLES} (
            schema_name text NOT NULL,
            table_name text NOT NULL,
            source text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (schema_name, table_name))""",
        # Columns added after the first release: upgrades get them here.
        f"ALTER TABLE {s}.tables ADD COLUMN IF NOT EXISTS request text",
        f"ALTER TABLE {s}.sources ADD COLUMN IF NOT EXISTS confirmed_seq bigint NOT NULL DEFAULT 0",
        f"ALTER TABLE {s}.verify_runs ADD COLUMN IF NOT EXISTS table_state text",
        f"ALTER TABLE {s}.verify_runs ADD COLUMN IF NOT EXISTS detail text",
        # A row merged by thinning (verify/history.py) stands for `runs` clean runs of its
        # table, the first finished at first_finished_at.
        f"ALTER TABLE {s}.verify_runs ADD COLUMN IF NOT EXISTS runs bigint NOT NULL DEFAULT 1",
        f"ALTER TABLE {s}.verify_runs ADD COLUMN IF NOT EXISTS first_finished_at timestamptz",
        # A reload of a table Postgres readers already use goes into a table of its own
        # and replaces the rows in one transaction at the end (see snapshot.py).
        f"ALTER TABLE {s}.tables ADD COLUMN IF NOT EXISTS load_aside boolean NOT NULL DEFAULT false",
        # The way back: since when a held or paused table (also while it is copied again
        # after its hold) has not followed Postgres; its changes wait, uncounted.
        f"ALTER TABLE {s}.tables ADD COLUMN IF NOT EXISTS behind_since timestamptz",
        # The SQLite schema version the table states were last reconciled with.
        f"ALTER TABLE {s}.sources ADD COLUMN IF NOT EXISTS schema_version bigint",
        # Which source a file's capture id is recorded for (a copied file carries another's).
        f"CREATE INDEX IF NOT EXISTS sources_by_capture_id ON {s}.sources (capture_id)",
        # Which way the source replicates (model.TO_POSTGRES / TO_SQLITE), set by cutover and rollback.
        f"ALTER TABLE {s}.sources ADD COLUMN IF NOT EXISTS direction text NOT NULL DEFAULT 'to_postgres'",
        # The daemon's FAILING state (its reason, since when, last confirmed when), for
        # `syncd status` without the daemon's endpoint (health_note.py).
        f"ALTER TABLE {s}.sources ADD COLUMN IF NOT EXISTS failing text",
        f"ALTER TABLE {s}.sources ADD COLUMN IF NOT EXISTS failing_since timestamptz",
        f"ALTER TABLE {s}.sources ADD COLUMN IF NOT EXISTS failing_at timestamptz",
        # The last time the checkpoint covered every change the file had captured: the changes
        # past it were all committed since, so a restarted daemon (and `syncd status` without
        # one) bounds their age by it. NULL where no batch has recorded it yet.
        f"ALTER TABLE {s}.sources ADD COLUMN IF NOT EXISTS caught_up_at timestamptz",
        # Every `syncd rehearse` (rehearsal.py): a cutover and rollback of a copy, measured.
        f"""CREATE TABLE IF NOT EXISTS {s}.rehearsals (
            id bigserial PRIMARY KEY,
            source text NOT NULL,
            started_at timestamptz NOT NULL,
            finished_at timestamptz NOT NULL DEFAULT now(),
            ok boolean NOT NULL,
            rows_verified bigint,
            changes bigint,
            cutover_downtime_seconds double precision,
            rollback_downtime_seconds double precision,
            detail jsonb)""",
        # Every cutover and rollback, step by step: a crashed one is finished or undone from here.
        f"""CREATE TABLE IF NOT EXISTS {s}.switches (
            id bigserial PRIMARY KEY,
            source text NOT NULL,
            kind text NOT NULL,
            state text NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(),
            frozen_at timestamptz,
            finished_at timestamptz,
            downtime_seconds double precision,
            who text,
            detail jsonb)""",
        # Columns schema parity gave a type other than the lossless one (a DATETIME that
        # became timestamp, say), with the SQLite spelling its values had, to write them back.
        f"""CREATE TABLE IF NOT EXISTS {s}.columns (
            source text NOT NULL,
            table_name text NOT NULL,
            column_name text NOT NULL,
            pgtype text NOT NULL,
            sqlite_format text,
            PRIMARY KEY (source, table_name, column_name))""",
        # The application's triggers syncd disabled while it writes their tables from
        # SQLite, by oid (which follows a rename), for the cutover to enable again
        # (app_triggers.py).
        f"""CREATE TABLE IF NOT EXISTS {s}.{QUIETED_TRIGGERS} (
            trigger_oid oid PRIMARY KEY,
            source text NOT NULL,
            schema_name text NOT NULL,
            table_name text NOT NULL,
            trigger_name text NOT NULL,
            quieted_at timestamptz NOT NULL DEFAULT now())""",
        # Each source's key (source_keys): the second half of its advisory locks and the
        # hex in the names of its objects here (rlog_<key>, rcap_<key>_<tid>, load_<key>_<tid>).
        # Kept when the source goes, so that a source set up again finds its objects.
        f"""CREATE TABLE IF NOT EXISTS {s}.{KEYS} (
            source text PRIMARY KEY,
            key integer NOT NULL,
            assigned_at timestamptz NOT NULL DEFAULT now())""",
        f"CREATE INDEX IF NOT EXISTS {KEYS}_by_key ON {s}.{KEYS} (key)",
    ]


OWNED_TABLES = "owned_tables"
QUIETED_TRIGGERS = "quieted_triggers"
KEYS = "source_keys"


async def _relation_exists(conn: asyncpg.Connection, schema: str, name: str) -> bool:
    return bool(await conn.fetchval(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 "
        "AND c.relname = $2", schema, name))


async def ensure_schema(conn: asyncpg.Connection, schema: str) -> None:
    """CREATE SCHEMA unless it exists: a schema created beforehand for syncd's role
    then needs no CREATE right on the database."""
    if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema):
        try:
            async with conn.transaction():  # a savepoint inside a transaction: it goes on after
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_pg_ident(schema)}")
        except asyncpg.UniqueViolationError:
            # Created meanwhile by another session (another source's sharing the schema, at
            # the daemon's start), which IF NOT EXISTS does not cover: it is there.
            pass
        except asyncpg.InsufficientPrivilegeError as e:
            # No CREATE on the database (the tightest role, its schemas made for it): name
            # the schema wanted, and the statement that makes it for the role.
            role = await conn.fetchval("SELECT current_user")
            raise asyncpg.InsufficientPrivilegeError(
                f"{e.args[0] if e.args else e}, to create schema {quote_pg_ident(schema)}: make it for syncd's role "
                f"(CREATE SCHEMA {quote_pg_ident(schema)} AUTHORIZATION {quote_pg_ident(role)}) or grant it CREATE "
                "on the database") from e


def _ddl_version(bk: str) -> str:
    """What the bookkeeping DDL is, as a short digest: any statement added changes it."""
    return f"{BOOKKEEPING_VERSION}:" + hashlib.sha256("\n".join(_ddl(bk)).encode()).hexdigest()[:16]


async def ensure_bookkeeping(conn: asyncpg.Connection, bk: str) -> None:
    """Create (or complete, after an upgrade) syncd's schema. Every statement is
    idempotent; an advisory lock serializes syncd processes starting together. When
    the schema is already this version's, nothing runs: its ALTER TABLEs take
    exclusive locks, which a running daemon's transactions would otherwise deadlock on."""
    version = _ddl_version(bk)
    try:
        have = await conn.fetchval(f"SELECT value FROM {quote_pg_ident(bk)}.meta WHERE key = 'version'")
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        have = None
    if have == version:
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, 0)", LOCK_CLASS)
        await ensure_schema(conn, bk)
        adopt = await _relation_exists(conn, bk, "tables") and not await _relation_exists(conn, bk, OWNED_TABLES)
        # One round trip: every statement in one simple query, in this transaction.
        await conn.execute(";\n".join(_ddl(bk)))
        s = quote_pg_ident(bk)
        if adopt:
            # Upgrade from a syncd that did not record what it created: the tables its
            # bookkeeping already tracks are its own.
            await conn.execute(
                f"INSERT INTO {s}.{OWNED_TABLES}(schema_name, table_name, source) "
                f"SELECT coalesce(src.target_schema, src.source), t.table_name, t.source "
                f"FROM {s}.tables t JOIN {s}.sources src USING (source) WHERE t.state <> $1 "
                f"ON CONFLICT DO NOTHING", REFUSED)
        # Sources an older syncd set up keep the key it named their objects by: the hash.
        legacy = await conn.fetch(f"SELECT source FROM {s}.sources WHERE source NOT IN (SELECT source FROM {s}.{KEYS})")
        await conn.executemany(f"INSERT INTO {s}.{KEYS}(source, key) VALUES ($1, $2)",
                               [(r[0], lock_key(r[0])) for r in legacy])
        await conn.execute(
            f"INSERT INTO {s}.meta(key, value) VALUES ('version', $1) "
            f"ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            version,
        )


async def bookkeeping_exists(conn: asyncpg.Connection, bk: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname = 'tables'",
            bk,
        )
    )


@dataclass
class SourceRow:
    source: str
    capture_id: str | None
    applied_seq: int
    applied_at: dt.datetime | None
    created_at: dt.datetime
    streaming_since: dt.datetime | None
    confirmed_seq: int = 0  # the newest position the SQLite file is known to have recorded
    caught_up_at: dt.datetime | None = None  # the checkpoint covered every captured change then
    # The SQLite schema version Postgres was last reconciled to (followed_schema, in the
    # transaction that changed Postgres's tables): None where an older syncd left none.
    schema_version: int | None = None
    sqlite_path: str | None = None
    target_schema: str | None = None

    @property
    def lag_from(self) -> dt.datetime:
        """The changes past the checkpoint were all committed after this: the last time it
        covered the whole changelog; where that was never recorded (bookkeeping of an older
        syncd, no batch since the source was registered), the source's registration."""
        return self.caught_up_at or self.created_at


@dataclass
class TableRow:
    table_name: str
    tid: int | None
    state: str
    resume_to: str | None
    from_seq: int | None
    snapshot_key: tuple | None
    snapshot_rows: int
    snapshot_total: int | None
    snapshot_started_at: dt.datetime | None
    snapshot_finished_at: dt.datetime | None
    reason: str | None
    updated_at: dt.datetime
    load_aside: bool = False  # the load in progress fills aside_table(), swapped in at the end
    behind_since: dt.datetime | None = None  # the way back: not following Postgres since (held, paused)


def encode_position(pos: tuple | None) -> str | None:
    """A snapshot position (a rowid or key values) as JSON, keeping exact types."""
    if pos is None:
        return None
    out = []
    for v in pos:
        if v is None:
            out.append(["n", None])
        elif isinstance(v, bool) or isinstance(v, int):
            out.append(["i", str(int(v))])
        elif isinstance(v, float):
            out.append(["f", v.hex()])
        elif isinstance(v, str):
            out.append(["t", v.encode("utf-8", "surrogateescape").hex()])
        elif isinstance(v, bytes):
            out.append(["b", v.hex()])
        else:
            raise TypeError(type(v))
    return json.dumps(out)


def decode_position(text: str | None) -> tuple | None:
    if text is None:
        return None
    out: list[Any] = []
    for tag, v in json.loads(text):
        if tag == "n":
            out.append(None)
        elif tag == "i":
            out.append(int(v))
        elif tag == "f":
            out.append(float.fromhex(v))
        elif tag == "t":
            out.append(bytes.fromhex(v).decode("utf-8", "surrogateescape"))
        elif tag == "b":
            out.append(bytes.fromhex(v))
        else:
            raise ValueError(f"bad snapshot position tag {tag!r}")
    return tuple(out)


class Bookkeeping:
    """Typed access to one source's rows in syncd's schema."""

    def __init__(self, schema: str, source: str, key: int | None = None):
        self.schema = schema
        self.s = quote_pg_ident(schema)
        self.source = source
        self.key = key  # source_key(), where an object named by it is used

    async def load_source(self, conn: asyncpg.Connection) -> SourceRow | None:
        r = await conn.fetchrow(
            # caught_up_at read so that bookkeeping an older syncd made (syncd report reads it
            # without completing it) does without it.
            f"SELECT source, capture_id, applied_seq, applied_at, created_at, streaming_since, confirmed_seq, "
            f"(to_jsonb(x) ->> 'caught_up_at')::timestamptz, (to_jsonb(x) ->> 'schema_version')::bigint, "
            f"sqlite_path, target_schema FROM {self.s}.sources x WHERE source = $1",
            self.source,
        )
        return SourceRow(*r) if r else None

    async def upsert_source(self, conn: asyncpg.Connection, capture_id: str, path: str, target_schema: str) -> None:
        await conn.execute(
            f"INSERT INTO {self.s}.sources(source, capture_id, sqlite_path, target_schema) VALUES ($1, $2, $3, $4) "
            f"ON CONFLICT (source) DO UPDATE SET sqlite_path = EXCLUDED.sqlite_path, "
            f"target_schema = EXCLUDED.target_schema",
            self.source, capture_id, path, target_schema,
        )

    async def capture_id_of_another(self, conn: asyncpg.Connection, capture_id: str) -> str | None:
        """The other source that `capture_id` stands for, if any: a file copied from
        its file (`cp acme.db globex.db`) carries it. Where both sources already record
        it (copied before syncd told copies apart), the one registered first keeps it.
        The id stays locked until the transaction ends, so sources registering together
        on copies of one file decide one after the other. Call inside a transaction."""
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", CAPTURE_CLASS, lock_key(capture_id))
        return await conn.fetchval(
            f"SELECT o.source FROM {self.s}.sources o WHERE o.capture_id = $1 AND o.source <> $2 "
            f"AND NOT EXISTS (SELECT 1 FROM {self.s}.sources m WHERE m.source = $2 AND m.capture_id = $1 "
            f"AND (m.created_at, m.source) < (o.created_at, o.source)) ORDER BY o.created_at, o.source LIMIT 1",
            capture_id, self.source,
        )

    async def followed_schema(self, conn: asyncpg.Connection, version: int) -> None:
        await conn.execute(f"UPDATE {self.s}.sources SET schema_version = $2 WHERE source = $1", self.source, version)

    async def reset_source(self, conn: asyncpg.Connection, capture_id: str, applied_seq: int) -> None:
        """A new capture generation: every table re-snapshots, the checkpoint restarts,
        and so does the dual-write period (writes went unrecorded, or the file is another
        history: the days before prove nothing of this one, nor does the time the old one
        was last caught up). Call inside a transaction:
        half a reset would stream without the re-snapshot."""
        await conn.execute(
            f"UPDATE {self.s}.sources SET capture_id = $2, applied_seq = $3, confirmed_seq = 0, "
            f"streaming_since = NULL, caught_up_at = NULL WHERE source = $1",
            self.source, capture_id, applied_seq,
        )
        await conn.execute(f"DELETE FROM {self.s}.applied_batches WHERE source = $1", self.source)
        await conn.execute(
            f"UPDATE {self.s}.tables SET state = $2, resume_to = NULL, from_seq = NULL, snapshot_key = NULL, "
            f"snapshot_rows = 0, reason = NULL, updated_at = now() WHERE source = $1 AND state <> $3",
            self.source, PENDING, REFUSED,
        )

    async def load_tables(self, conn: asyncpg.Connection) -> dict[str, TableRow]:
        rows = await conn.fetch(
            # behind_since read so that bookkeeping an older syncd made, not completed yet
            # (syncd report reads the states first), does without it.
            f"SELECT table_name, tid, state, resume_to, from_seq, snapshot_key, snapshot_rows, snapshot_total, "
            f"snapshot_started_at, snapshot_finished_at, reason, updated_at, load_aside, "
            f"(to_jsonb(t) ->> 'behind_since')::timestamptz FROM {self.s}.tables t WHERE source = $1",
            self.source,
        )
        out = {}
        for r in rows:
            values = list(r)
            values[5] = decode_position(values[5])
            out[r[0]] = TableRow(*values)
        return out

    async def save_table(self, conn: asyncpg.Connection, row: TableRow, applied: bool = False) -> None:
        """With `applied`, rows reached Postgres too (touch_applied), in the same
        statement: a snapshot chunk's bookkeeping is one round trip."""
        touch = f"WITH applied AS ({self._touch_sql}) " if applied else ""
        await conn.execute(
            f"""{touch}INSERT INTO {self.s}.tables(source, table_name, tid, state, resume_to, from_seq, snapshot_key,
                    snapshot_rows, snapshot_total, snapshot_started_at, snapshot_finished_at, reason, updated_at,
                    load_aside, behind_since)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now(), $13, $14)
                ON CONFLICT (source, table_name) DO UPDATE SET tid = EXCLUDED.tid, state = EXCLUDED.state,
                    resume_to = EXCLUDED.resume_to, from_seq = EXCLUDED.from_seq,
                    snapshot_key = EXCLUDED.snapshot_key, snapshot_rows = EXCLUDED.snapshot_rows,
                    snapshot_total = EXCLUDED.snapshot_total, snapshot_started_at = EXCLUDED.snapshot_started_at,
                    snapshot_finished_at = EXCLUDED.snapshot_finished_at, reason = EXCLUDED.reason,
                    updated_at = now(), load_aside = EXCLUDED.load_aside, behind_since = EXCLUDED.behind_since""",
            self.source, row.table_name, row.tid, row.state, row.resume_to, row.from_seq,
            encode_position(row.snapshot_key), row.snapshot_rows, row.snapshot_total,
            row.snapshot_started_at, row.snapshot_finished_at, row.reason, row.load_aside, row.behind_since,
        )

    def aside_table(self, tid: int) -> str:
        """The table (in the bookkeeping schema) a reload of table `tid` fills."""
        assert self.key is not None, "the source's key is taken with its lock"
        return f"load_{self.key:08x}_{tid}"

    async def direction(self, conn: asyncpg.Connection) -> str:
        """Which way the source replicates now (model.TO_POSTGRES / TO_SQLITE)."""
        return await conn.fetchval(f"SELECT direction FROM {self.s}.sources WHERE source = $1",
                                   self.source) or TO_POSTGRES

    async def switch_open(self, conn: asyncpg.Connection) -> bool:
        """Whether a cutover or rollback of the source has started and not finished."""
        return bool(await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {self.s}.switches WHERE source = $1 "
                                        "AND state IN ('started', 'frozen'))", self.source))

    async def touch_applied(self, conn: asyncpg.Connection) -> None:
        """Rows reached Postgres (a snapshot chunk, a catch-up page): the source's last
        apply, as status, metrics and the report show it, moves like a streamed batch."""
        await conn.execute(self._touch_sql, self.source)

    @property
    def _touch_sql(self) -> str:
        return f"UPDATE {self.s}.sources SET applied_at = now() WHERE source = $1"

    async def advance(self, conn: asyncpg.Connection, from_seq: int, to_seq: int, fingerprint: str,
                      caught_up_at: float | None = None) -> None:
        """Move the checkpoint and keep the batch's fingerprint; the guard catches a
        second writer (lost lock). `caught_up_at`: the changelog held nothing past
        `to_seq` then (lag.LagTracker.covered_at); it only moves forward."""
        status = await conn.execute(
            f"UPDATE {self.s}.sources SET applied_seq = $3, applied_at = now(), "
            # never past Postgres's own clock: a daemon host's clock ahead would understate a later lag
            f"caught_up_at = CASE WHEN $4::float8 IS NULL THEN caught_up_at "
            f"ELSE greatest(caught_up_at, least(to_timestamp($4::float8), now())) END "
            f"WHERE source = $1 AND applied_seq = $2 AND direction = 'to_postgres'",
            self.source, from_seq, to_seq, caught_up_at,
        )
        if status != "UPDATE 1":
            if await conn.fetchval(f"SELECT direction FROM {self.s}.sources WHERE source = $1",
                                   self.source) not in (None, "to_postgres"):
                # Cut over meanwhile: Postgres is the application's now; the batch rolls back.
                raise DirectionChanged(f"source {self.source!r} was cut over to Postgres")
            raise CheckpointConflict(
                f"source {self.source!r}: checkpoint moved under syncd (expected {from_seq}); "
                "another process is writing this source"
            )
        await conn.execute(
            f"INSERT INTO {self.s}.applied_batches(source, after_seq, last_seq, fingerprint) VALUES ($1, $2, $3, $4) "
            f"ON CONFLICT (source, last_seq) DO UPDATE SET after_seq = EXCLUDED.after_seq, "
            f"fingerprint = EXCLUDED.fingerprint",
            self.source, from_seq, to_seq, fingerprint,
        )

    async def applied_batches(self, conn: asyncpg.Connection) -> list[tuple[int, int, str]]:
        rows = await conn.fetch(
            f"SELECT after_seq, last_seq, fingerprint FROM {self.s}.applied_batches WHERE source = $1 "
            f"ORDER BY last_seq", self.source,
        )
        return [tuple(r) for r in rows]

    async def rewind(self, conn: asyncpg.Connection, seq: int) -> None:
        """Resume from `seq`, the position the file itself confirms; later changes are
        applied again with current values, which is harmless."""
        await conn.execute(f"UPDATE {self.s}.sources SET applied_seq = $2 WHERE source = $1", self.source, seq)
        await conn.execute(f"DELETE FROM {self.s}.applied_batches WHERE source = $1", self.source)

    async def confirm(self, conn: asyncpg.Connection, seq: int) -> None:
        """The file notes everything up to `seq`: fingerprints up to there are done with."""
        await conn.execute(
            f"UPDATE {self.s}.sources SET confirmed_seq = greatest(confirmed_seq, $2) WHERE source = $1",
            self.source, seq,
        )
        await conn.execute(
            f"DELETE FROM {self.s}.applied_batches WHERE source = $1 AND last_seq <= $2", self.source, seq
        )

    async def mark_streaming_since(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            f"UPDATE {self.s}.sources SET streaming_since = now() WHERE source = $1 AND streaming_since IS NULL",
            self.source,
        )

    async def note_failing(self, conn: asyncpg.Connection, detail: str | None) -> None:
        """The daemon is failing for `detail` (confirmed now), or no longer (None)."""
        await conn.execute(
            f"UPDATE {self.s}.sources SET failing = $2::text, "
            f"failing_since = CASE WHEN $2::text IS NULL THEN NULL ELSE coalesce(failing_since, now()) END, "
            f"failing_at = CASE WHEN $2::text IS NULL THEN NULL ELSE now() END WHERE source = $1",
            self.source, detail,
        )

    async def event(self, conn: asyncpg.Connection, kind: str, table: str | None, detail: str | None) -> None:
        await conn.execute(
            f"INSERT INTO {self.s}.events(source, table_name, kind, detail) VALUES ($1, $2, $3, $4)",
            self.source, table, kind, detail,
        )


    # --- which replica tables are syncd's ----------------------------------------------

    async def owners(self, conn: asyncpg.Connection, schema: str) -> dict[str, str]:
        """table -> the source that created it, for every table syncd created in `schema`."""
        rows = await conn.fetch(f"SELECT table_name, source FROM {self.s}.{OWNED_TABLES} WHERE schema_name = $1",
                                schema)
        return {r[0]: r[1] for r in rows}

    async def record_renamed(self, conn: asyncpg.Connection, schema: str, old: str, new: str) -> None:
        """syncd has just renamed its table `old` to `new` (same transaction)."""
        await conn.execute(
            f"UPDATE {self.s}.{OWNED_TABLES} SET table_name = $3 WHERE schema_name = $1 AND table_name = $2 "
            f"AND source = $4", schema, old, new, self.source,
        )

    async def record_created(self, conn: asyncpg.Connection, schema: str, table: str) -> None:
        """syncd has just created `schema`.`table` for this source (same transaction)."""
        await conn.execute(
            f"INSERT INTO {self.s}.{OWNED_TABLES}(schema_name, table_name, source) VALUES ($1, $2, $3) "
            f"ON CONFLICT (schema_name, table_name) DO UPDATE SET source = EXCLUDED.source, created_at = now()",
            schema, table, self.source,
        )


class CheckpointConflict(Exception):
    pass


class DirectionChanged(Exception):
    """The source was switched (cutover or rollback) while a batch was in flight."""


# --- one active instance per source --------------------------------------------------


def application_name() -> str:
    host = socket.gethostname()[:40]
    return f"syncd {host} pid {os.getpid()}"


def lock_key(source: str) -> int:
    """A stable 31-bit hash of the source name: the key of a source syncd set up before
    keys were recorded, and the first one a new source is offered (source_keys)."""
    h = 2166136261
    for b in source.encode("utf-8"):
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h & 0x7FFFFFFF


RESERVED_KEYS = frozenset({0})  # (LOCK_CLASS, 0) serializes bookkeeping changes (ensure_bookkeeping)


def _offered(source: str):
    """The keys a new source is offered, in order: its name's hash, then hashes salted
    with a counter, until one is free."""
    yield lock_key(source)
    n = 1
    while True:
        yield lock_key(f"{source}\x00{n}")
        n += 1


async def source_keys(conn: asyncpg.Connection, bk: str, sources: list[str], assign: bool = True) -> dict[str, int]:
    """Each source's key: the second half of its advisory locks and the hex that names
    its objects in Postgres (the way back's changelog and capture functions, a reload's
    table). A hash of the name alone would be shared by two of a few thousand sources
    in one database now and then, and so would everything named by it; so the key is
    recorded (`<bk>.source_keys`), the hash where no other source holds it, else the
    first free salted one, chosen under the bookkeeping lock: two syncd setting up two
    sources at once cannot both take one key. Keys are taken before the source's lock
    and kept for good, so every process agrees on a source's key at all times.

    Without `assign` (a read-only look) a source not recorded yet gets its hash: nothing
    in Postgres is named by its key yet. Bookkeeping from before keys were recorded (or
    none): every syncd that ran these sources used the hash."""
    if not sources:
        return {}
    s = quote_pg_ident(bk)
    try:
        got = {r[0]: r[1] for r in await conn.fetch(
            f"SELECT source, key FROM {s}.{KEYS} WHERE source = ANY($1::text[])", sources)}
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        return {n: lock_key(n) for n in sources}
    missing = [n for n in dict.fromkeys(sources) if n not in got]
    if missing and assign:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, 0)", LOCK_CLASS)
            held = {r[0]: r[1] for r in await conn.fetch(f"SELECT source, key FROM {s}.{KEYS}")}
            # Set up since the upgrade by an older syncd running beside this one: the hash.
            new = [(r[0], lock_key(r[0])) for r in await conn.fetch(
                f"SELECT source FROM {s}.sources WHERE source NOT IN (SELECT source FROM {s}.{KEYS})")]
            held.update(new)
            taken = set(held.values()) | RESERVED_KEYS
            for name in missing:
                if name not in held:
                    held[name] = next(k for k in _offered(name) if k not in taken)
                    taken.add(held[name])
                    new.append((name, held[name]))
                got[name] = held[name]
            await conn.executemany(f"INSERT INTO {s}.{KEYS}(source, key) VALUES ($1, $2)", new)
    return {n: got.get(n, lock_key(n)) for n in sources}


async def source_key(conn: asyncpg.Connection, bk: str, source: str, assign: bool = True) -> int:
    return (await source_keys(conn, bk, [source], assign))[source]


async def recorded_keys(conn: asyncpg.Connection, bk: str) -> dict[str, int]:
    """Every recorded source's key (the hash for a source set up by a syncd that did not
    record keys), in one query: `syncd status` of a whole fleet."""
    s = quote_pg_ident(bk)
    try:
        rows = await conn.fetch(f"SELECT source, NULL::integer FROM {s}.sources UNION ALL "
                                f"SELECT source, key FROM {s}.{KEYS}")
    except asyncpg.UndefinedTableError:
        try:
            rows = await conn.fetch(f"SELECT source, NULL::integer FROM {s}.sources")
        except asyncpg.UndefinedTableError:
            return {}
    except asyncpg.InvalidSchemaNameError:
        return {}
    keys = {r[0]: r[1] for r in rows if r[1] is not None}
    return {r[0]: keys.get(r[0], lock_key(r[0])) for r in rows}


async def sharing(conn: asyncpg.Connection, bk: str, keys: dict[str, int]) -> dict[str, list[str]]:
    """source -> the other sources recorded with its key, for those of `keys` that share
    theirs: sources an older syncd set up whose names hash alike."""
    # Sent as text[]: asyncpg encodes text[] itself, an integer[] costs it a catalog query
    # (three round trips) on every new connection, the first step of every init and start.
    rows = await conn.fetch(f"SELECT source, key FROM {quote_pg_ident(bk)}.{KEYS} "
                            "WHERE key = ANY($1::text[]::integer[])", [str(k) for k in sorted(set(keys.values()))])
    return shared_keys({r[0]: r[1] for r in rows}, keys)


def shared_keys(recorded: dict[str, int], wanted: dict[str, int] | None = None) -> dict[str, list[str]]:
    """source -> the other sources of `recorded` with its key, for each source of
    `wanted` (default: all) that shares its key."""
    by_key: dict[int, list[str]] = {}
    for name, key in recorded.items():
        by_key.setdefault(key, []).append(name)
    out = {}
    for name, key in (recorded if wanted is None else wanted).items():
        others = sorted(n for n in by_key.get(key, ()) if n != name)
        if others:
            out[name] = others
    return out


def shared_key_line(source: str, others: list[str], key: int) -> str:
    """One line saying that `source` shares its key, for the log and `syncd status`."""
    return (f"source {source!r} shares its Postgres key {key:08x} with {', '.join(repr(o) for o in others)} (their "
            f"names hash alike and an older syncd set both up): they share the way back's changelog and capture "
            f"functions after a cutover, a reload's table and the one-daemon-per-source lock; cut over at most one "
            f"of them")


class SourceLocked(Exception):
    exit_code = 1


async def _holder(conn: asyncpg.Connection, key: int):
    return await conn.fetchrow(
        """SELECT a.application_name, a.pid, host(a.client_addr), a.backend_start
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.classid = $1::oid AND l.objid = $2::oid
             AND l.objsubid = 2 AND l.granted
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
        LOCK_CLASS, key,
    )


async def try_lock_source(conn: asyncpg.Connection, source: str, key: int, stale_wait: float = 5.0) -> None:
    """Take the session advisory lock for `source` (its `key`, source_key()) or raise
    SourceLocked naming the holder.

    If the holder is this very process (a connection syncd gave up on, e.g. after a
    network hang, that the server still thinks is alive), end that stale session."""
    got = await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_CLASS, key)
    if got:
        return
    holder = await _holder(conn, key)
    if holder is not None and holder[0] == application_name() and holder[1] != conn.get_server_pid():
        await conn.fetchval("SELECT pg_terminate_backend($1)", holder[1])
        deadline = asyncio.get_running_loop().time() + stale_wait
        while asyncio.get_running_loop().time() < deadline:
            if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_CLASS, key):
                return
            await asyncio.sleep(0.1)
        holder = await _holder(conn, key)
    if holder is None:
        who = "another session (it just released it; try again)"
    else:
        app, backend_pid, addr, since = holder
        who = (f"{app or 'an unnamed client'} (client {addr or 'local socket'}, Postgres backend {backend_pid}, "
               f"since {since.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC)")
    raise SourceLocked(f"source {source!r} is already being run by {who}")


async def unlock_source(conn: asyncpg.Connection, key: int) -> None:
    await conn.fetchval("SELECT pg_advisory_unlock($1, $2)", LOCK_CLASS, key)


async def postgres_clock(conn: asyncpg.Connection) -> dt.datetime:
    """Now, by Postgres's clock: what syncd dates a table's copy by, as it dates every
    verification run (a host's clock may be ahead of or behind it)."""
    return await conn.fetchval("SELECT clock_timestamp()")
