"""What syncd keeps in Postgres for the way back: a changelog per source, statement
triggers recording which keys changed, and the freeze a rollback puts on the tables.

No server configuration is needed (no wal_level, no replication slot): AFTER
statement triggers with transition tables write one INSERT ... SELECT per statement
into `<bookkeeping>.rlog_<source key>` (bookkeeping.source_keys), each entry stamped
with the writing transaction's id (txid_current()). Sequence numbers are taken at insert time, not at
commit time, so "everything after N" would skip a transaction that commits later
with a smaller number; the reader (reader.py) instead takes what became visible
between two snapshots (PgQ's technique), which cannot miss a late committer.

The trigger functions run SECURITY DEFINER, so the application's role needs no
privilege on syncd's schema, with fixed output settings (extra_float_digits,
bytea_output, DateStyle, TimeZone), so a key's text is the same whatever the
application's session set, and casts back to the very value.

The freeze (a rollback, while the last changes drain to SQLite) is a BEFORE
statement trigger on every table that raises unless the session is syncd's own:
every syncd connection names itself `syncd <host> pid <pid>` (application_name, which
poolers such as PgBouncer pass on, where a custom startup parameter would be refused).
Privileges alone would not stop a superuser, which small deployments often connect as.
(It guards against the application's writes, not an adversary: any session may name
itself so, and a superuser may also disable triggers.) Its function reads the source's
row and switches in the bookkeeping at each statement, refusing while a rollback is
open or the direction says SQLite is the application's database: the next cutover's
last transaction lifts it as it commits, with no DDL there (DROP TRIGGER takes ACCESS
EXCLUSIVE, waiting for every reader of the table while the SQLite file is frozen, and
queueing every later one behind it). Its triggers are dropped afterwards, each table in
a short try of its own (drop_freeze); one not had then passes every write until the
daemon drops it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import time
import uuid
from dataclasses import dataclass

import asyncpg

from syncd.identifiers import qualified, quote_literal, quote_pg_ident
from syncd.model import TO_SQLITE
from syncd.postgres.bookkeeping import source_key

OP_INSERT, OP_UPDATE, OP_DELETE, OP_TRUNCATE = 1, 2, 3, 4
# The key of an OP_TRUNCATE entry says why the table is copied again (reader.copy_reason):
# none for a TRUNCATE; KEY_GONE (SQL) for a write made while the table's key column was
# renamed or dropped; REPAIR_COPY for `syncd verify --repair` (evidence.copy_again).
KEY_GONE = "ARRAY[]::text[]"
REPAIR_COPY = ["syncd verify --repair"]
CAPTURE_TRIGGERS = ("_syncd_rcap_ins", "_syncd_rcap_upd", "_syncd_rcap_del", "_syncd_rcap_trunc")
FREEZE_TRIGGER = "_syncd_freeze"
WRITER_PREFIX = "syncd "  # application_name of every session syncd opens (bookkeeping.application_name)
LOCK_TIMEOUT = "2s"  # CREATE/DROP TRIGGER waits for the table's writers; never queue them long
# The freeze, and the removal of the capture triggers, take the tables in tries, each lock
# waited for this long at most: well below Postgres's deadlock_timeout (1 s by default), so
# that an application transaction waiting for a table syncd took (while syncd waits for one
# that transaction holds) is released by syncd giving its try up, never failed by
# Postgres's deadlock detector.
FREEZE_LOCK_STEP = "200ms"
FREEZE_LOCK_SECONDS = 2.0  # all tries together (LOCK_TIMEOUT's budget)

# Output settings the key text is produced under (the reader casts it back).
_FIXED_OUTPUT = ("SET search_path = pg_catalog, pg_temp SET extra_float_digits = 3 SET bytea_output = 'hex' "
                 "SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres' SET timezone = 'UTC'")


@dataclass(frozen=True)
class Names:
    """The objects one source's way back uses in the bookkeeping schema, named by the
    source's key (bookkeeping.source_key; names_of)."""

    bk: str
    source: str
    key: int

    @property
    def h(self) -> str:
        return f"{self.key:08x}"

    @property
    def changelog(self) -> str:
        return qualified(self.bk, f"rlog_{self.h}")

    @property
    def changelog_name(self) -> str:
        return f"rlog_{self.h}"

    def capture_function(self, tid: int) -> str:
        return qualified(self.bk, f"rcap_{self.h}_{tid}")

    @property
    def freeze_function(self) -> str:
        return qualified(self.bk, self.freeze_function_name)

    @property
    def freeze_function_name(self) -> str:
        return f"rfreeze_{self.h}"

    @property
    def channel(self) -> str:
        return f"syncd_{self.h}"

    @property
    def registry(self) -> str:
        return qualified(self.bk, "reverse")


async def names_of(conn: asyncpg.Connection, bk: str, source: str) -> Names:
    """The source's way-back objects, by its recorded key (a source not recorded yet has
    none)."""
    return Names(bk, source, await source_key(conn, bk, source, assign=False))


def _dollar(body: str) -> str:
    """A dollar-quote tag that does not occur in `body` (names may hold anything)."""
    while True:
        tag = f"$syncd_{secrets.token_hex(4)}$"
        if tag not in body:
            return tag


# --- the registry: one row per source that ever went to Postgres ------------------------------


# Columns added after the registry's first release, with their definitions: an older
# registry gains them.
REGISTRY_COLUMNS = {
    "files": "jsonb",  # the tables' files, as the way back's table rewrites are followed
    "pruned_n": "bigint NOT NULL DEFAULT 0",  # the n of the SQLite checkpoint (checkpoint.py) pruned behind
    "lineage": "text",  # of SQLite checkpoints begun when an older copy of the file was copied again
    "triggers": "jsonb",  # each table's capture triggers as last seen armed (capture_triggers' marks)
}


async def ensure_registry(conn: asyncpg.Connection, names: Names) -> None:
    """The bookkeeping table of the way back and the source's changelog (idempotent).
    Looked at first, in one query: as they are, nothing is locked. Each full check of
    each source comes here, and ALTER TABLE ... ADD COLUMN IF NOT EXISTS takes an ACCESS
    EXCLUSIVE lock even when the column exists, which waits behind any reader of the
    registry and holds every later reader up behind itself."""
    if await registry_ready(conn, names):
        return
    await conn.execute(f"""CREATE TABLE IF NOT EXISTS {names.registry} (
        source text PRIMARY KEY,
        generation text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        retired_at timestamptz,
        retired_reason text,
        files jsonb)""")
    for column, definition in REGISTRY_COLUMNS.items():
        await conn.execute(f"ALTER TABLE {names.registry} ADD COLUMN IF NOT EXISTS {column} {definition}")
    await conn.execute(f"""CREATE TABLE IF NOT EXISTS {names.changelog} (
        txid bigint NOT NULL DEFAULT txid_current(),
        seq bigint GENERATED ALWAYS AS IDENTITY,
        tid integer NOT NULL,
        op smallint NOT NULL,
        key text[],
        at timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (txid, seq))""")


async def registry_ready(conn: asyncpg.Connection, names: Names) -> bool:
    """The registry, with every column of this syncd's, and the source's changelog exist."""
    return await conn.fetchval(
        "SELECT to_regclass($2) IS NOT NULL AND (SELECT count(*) FROM pg_attribute WHERE attrelid = "
        "to_regclass($1) AND attname = ANY($3::text[]) AND NOT attisdropped) = cardinality($3::text[])",
        names.registry, names.changelog, list(REGISTRY_COLUMNS))


@dataclass
class Generation:
    id: str
    started_at: dt.datetime
    retired_at: dt.datetime | None
    retired_reason: str | None
    pruned_n: int = 0  # 0 where a registry from an older syncd has no such column yet
    lineage: str | None = None  # checkpoint.py: none until an older copy of the file was copied again
    triggers: dict[str, str] | None = None  # note_triggers: none until the first look of this stretch


async def generation(conn: asyncpg.Connection, names: Names, exists: bool | None = None) -> Generation | None:
    """The source's stretch of the way back; `exists`: whether the registry does, when
    the caller knows (registry_ready)."""
    if exists is None:
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", names.registry)
    if not exists:
        return None
    r = await conn.fetchrow(f"SELECT generation, started_at, retired_at, retired_reason, "
                            f"coalesce((to_jsonb(x) ->> 'pruned_n')::bigint, 0), to_jsonb(x) ->> 'lineage', "
                            f"to_jsonb(x) ->> 'triggers' FROM {names.registry} x "
                            f"WHERE source = $1", names.source)
    if not r:
        return None
    triggers = None if r[6] is None else json.loads(r[6])
    return Generation(*r[:6], triggers if isinstance(triggers, dict) else None)


async def tables_owed_to_an_older_copy(conn: asyncpg.Connection, names: Names) -> int:
    """The tables copied again into an older copy of the file put back: every one of the
    source's (checkpoint.older says when the file is one)."""
    return await conn.fetchval(f"SELECT count(*) FROM {quote_pg_ident(names.bk)}.tables WHERE source = $1",
                               names.source)


async def new_lineage(conn: asyncpg.Connection, names: Names) -> str:
    """A new lineage of SQLite checkpoints (checkpoint.py), recorded before the file holds
    it: a file of any other lineage is older from now on."""
    lineage = str(uuid.uuid4())
    await conn.execute(f"UPDATE {names.registry} SET lineage = $2 WHERE source = $1", names.source, lineage)
    return lineage


def new_generation() -> str:
    return str(uuid.uuid4())


async def start_generation(conn: asyncpg.Connection, names: Names, schema: str, gen: str | None = None) -> str:
    """Inside the cutover's last transaction: a fresh, empty changelog for a new stretch
    of the way back. Entries exist only from here on, and SQLite equals Postgres here.
    `gen`: the generation a file was given first (a late start, see the reverse pipeline)."""
    await ensure_registry(conn, names)
    await conn.execute(f"TRUNCATE {names.changelog}")
    gen = gen or new_generation()
    await conn.execute(
        f"INSERT INTO {names.registry} (source, generation) VALUES ($1, $2) ON CONFLICT (source) DO UPDATE "
        f"SET generation = EXCLUDED.generation, started_at = now(), retired_at = NULL, retired_reason = NULL, "
        f"pruned_n = 0, lineage = NULL, triggers = NULL",
        names.source, gen)
    await note_files(conn, names, await table_files(conn, schema))
    return gen


# --- tables Postgres rewrote ---------------------------------------------------------------------
#
# ALTER TABLE ... ALTER COLUMN ... TYPE ... USING (and VACUUM FULL, CLUSTER) rewrites a table
# without firing a row trigger. Each rewrite gives the table a new storage file
# (relfilenode): the way back compares them with those noted when it began, or last
# looked, and copies a rewritten table again.


def table_columns_from(schema: str) -> str:
    """FROM and WHERE of every column of every table (partitioned ones too) of the schema
    the SQL expression `schema` names: c the table, a the column. table_files reads one
    source's; the daemon's watch (fleet.WayBackWatch) every cut-over source's at once."""
    return ("FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_attribute a "
            "ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            f"WHERE n.nspname = {schema} AND c.relkind IN ('r', 'p')")


def freeze_triggers_from(schema: str, trigger: str, bk: str, function: str) -> str:
    """FROM and WHERE of the freeze triggers (a rollback's) on the tables of `schema`,
    each argument an SQL expression: c the table. frozen_tables reads one source's; the
    daemon's watch every cut-over source's at once."""
    return ("FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_proc p ON p.oid = t.tgfoid "
            "JOIN pg_namespace pn ON pn.oid = p.pronamespace "
            f"WHERE n.nspname = {schema} AND t.tgname = {trigger} AND pn.nspname = {bk} AND p.proname = {function}")


async def table_files(conn: asyncpg.Connection, schema: str) -> dict[str, list]:
    """Each table of `schema` (partitioned ones too, with no file: 0): [its storage file,
    {column: format_type()} in column order]."""
    rows = await conn.fetch(
        "SELECT c.relname, c.relfilenode, array_agg(a.attname ORDER BY a.attnum), "
        f"array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) {table_columns_from('$1')} "
        "GROUP BY c.relname, c.relfilenode", schema)
    return {r[0]: [int(r[1]), dict(zip(r[2], r[3]))] for r in rows}


async def noted_files(conn: asyncpg.Connection, names: Names) -> dict[str, list] | None:
    raw = await conn.fetchval(f"SELECT files::text FROM {names.registry} WHERE source = $1", names.source)
    files = None if raw is None else json.loads(raw)
    # A note in another shape (none is known) is taken as no note: looked at afresh.
    if not isinstance(files, dict) or not all(isinstance(v, list) and len(v) == 2 for v in files.values()):
        return None
    return files


async def note_files(conn: asyncpg.Connection, names: Names, files: dict[str, list]) -> None:
    await conn.execute(f"UPDATE {names.registry} SET files = $2::text::jsonb WHERE source = $1",
                       names.source, json.dumps(files))


async def retired_locked(conn: asyncpg.Connection, names: Names) -> bool:
    """Inside the caller's transaction: whether the way back has ended, its row locked
    first (an end of the way back and a rollback's switch take it before the tables)."""
    return bool(await conn.fetchval(f"SELECT retired_at IS NOT NULL FROM {names.registry} WHERE source = $1 "
                                    "FOR UPDATE", names.source))


async def retire(conn: asyncpg.Connection, names: Names, reason: str) -> None:
    await conn.execute(f"UPDATE {names.registry} SET retired_at = now(), retired_reason = $2 WHERE source = $1",
                       names.source, reason)


# --- capture triggers --------------------------------------------------------------------------


def capture_function_sql(names: Names, tid: int, key: list[str]) -> str:
    body = _capture_body(names, tid, key)
    tag = _dollar(body)
    return (f"CREATE OR REPLACE FUNCTION {names.capture_function(tid)}() RETURNS trigger LANGUAGE plpgsql "
            f"SECURITY DEFINER {_FIXED_OUTPUT} AS {tag}{body}{tag}")


async def capture_bodies(conn: asyncpg.Connection, names: Names) -> dict[int, str]:
    """tid -> the body of each capture function of the source's, in one query."""
    prefix = f"rcap_{names.h}_"
    rows = await conn.fetch(
        "SELECT substr(p.proname, $3 + 1), p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = $1 AND substr(p.proname, 1, $3) = $2 AND p.pronargs = 0", names.bk, prefix, len(prefix))
    return {int(r[0]): r[1] for r in rows if r[0].isdigit()}


def current(bodies: dict[int, str], names: Names, tid: int, key: list[str]) -> bool:
    """Whether the table's capture function (`bodies`, capture_bodies) is the one this
    syncd writes: a source cut over by an earlier syncd keeps that one's until it is
    written again."""
    return bodies.get(tid) == _capture_body(names, tid, key)


def _capture_body(names: Names, tid: int, key: list[str]) -> str:
    cl = names.changelog

    def arr(alias: str) -> str:
        # Byte-wise text: under a column's case-insensitive collation (a cutover's NOCASE)
        # 'Sales' -> 'SALES' would otherwise look like no key change (no delete of 'Sales').
        return "ARRAY[" + ", ".join(f'({alias}.{quote_pg_ident(k)}::text COLLATE "C")' for k in key) + "]"

    # A key column renamed or dropped by the application's migration would fail every
    # write to the table here: its changes are then recorded as a TRUNCATE instead, and
    # the table is copied again once its key is back (reconcile pauses it meanwhile).
    names_array = "ARRAY[" + ", ".join(quote_literal(k) for k in key) + "]::name[]"
    key_there = (f"(SELECT count(*) FROM pg_attribute WHERE attrelid = TG_RELID AND attnum > 0 "
                 f"AND NOT attisdropped AND attname = ANY({names_array})) = {len(key)}")
    body = f"""
DECLARE n bigint := 0; m bigint := 0;
BEGIN
  IF TG_OP <> 'TRUNCATE' AND NOT {key_there} THEN
    INSERT INTO {cl} (tid, op, key) VALUES ({tid}, {OP_TRUNCATE}, {KEY_GONE});
    n := 1;
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO {cl} (tid, op, key) SELECT {tid}, {OP_INSERT}, {arr('n')} FROM syncd_new n;
    GET DIAGNOSTICS n = ROW_COUNT;
  ELSIF TG_OP = 'UPDATE' THEN
    INSERT INTO {cl} (tid, op, key) SELECT {tid}, {OP_UPDATE}, {arr('n')} FROM syncd_new n;
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO {cl} (tid, op, key) SELECT {tid}, {OP_DELETE}, k
      FROM (SELECT {arr('o')} AS k FROM syncd_old o EXCEPT SELECT {arr('n')} FROM syncd_new n) AS gone;
    GET DIAGNOSTICS m = ROW_COUNT;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO {cl} (tid, op, key) SELECT {tid}, {OP_DELETE}, {arr('o')} FROM syncd_old o;
    GET DIAGNOSTICS n = ROW_COUNT;
  ELSE
    INSERT INTO {cl} (tid, op, key) VALUES ({tid}, {OP_TRUNCATE}, NULL);
    n := 1;
  END IF;
  IF n + m > 0 THEN
    PERFORM pg_notify({quote_literal(names.channel)}, '');
  END IF;
  RETURN NULL;
END
"""
    return body


def capture_trigger_sql(names: Names, schema: str, table: str, tid: int) -> list[str]:
    t = qualified(schema, table)
    fn = names.capture_function(tid)
    return [
        f"CREATE TRIGGER {quote_pg_ident(CAPTURE_TRIGGERS[0])} AFTER INSERT ON {t} "
        f"REFERENCING NEW TABLE AS syncd_new FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
        f"CREATE TRIGGER {quote_pg_ident(CAPTURE_TRIGGERS[1])} AFTER UPDATE ON {t} "
        f"REFERENCING OLD TABLE AS syncd_old NEW TABLE AS syncd_new FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
        f"CREATE TRIGGER {quote_pg_ident(CAPTURE_TRIGGERS[2])} AFTER DELETE ON {t} "
        f"REFERENCING OLD TABLE AS syncd_old FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
        f"CREATE TRIGGER {quote_pg_ident(CAPTURE_TRIGGERS[3])} AFTER TRUNCATE ON {t} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
    ]


# The function a trigger calls (qualified, as regproc prints it), NULL for a trigger the
# application's writes do not fire: disabled, or enabled for replication sessions only.
_FIRED_FUNCTION = "CASE WHEN t.tgenabled IN ('O', 'A') THEN t.tgfoid::regproc::text END"


async def _triggers_on(conn: asyncpg.Connection, schema: str, table: str) -> dict[str, str | None]:
    """name -> the function each trigger of the table calls (_FIRED_FUNCTION)."""
    rows = await conn.fetch(
        f"SELECT t.tgname, {_FIRED_FUNCTION} FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2 AND NOT t.tgisinternal",
        schema, table)
    return {r[0]: r[1] for r in rows}


async def arm(conn: asyncpg.Connection, names: Names, schema: str, table: str, tid: int, key: list[str]) -> bool:
    """Capture every change to one table (idempotent; re-creates the function, whose
    key columns may have changed). Inside the caller's transaction. Returns whether
    triggers were created."""
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    await conn.execute(capture_function_sql(names, tid, key))
    have = await _triggers_on(conn, schema, table)
    if armed(have, names, tid):
        return False
    for n in CAPTURE_TRIGGERS:
        if n in have:
            await conn.execute(f"DROP TRIGGER {quote_pg_ident(n)} ON {qualified(schema, table)}")
    for sql in capture_trigger_sql(names, schema, table, tid):
        await conn.execute(sql)
    return True


def _same_function(shown: str, qualified_name: str) -> bool:
    # regproc prints the schema only when it is not on the search path; compare the tail.
    return shown.split(".")[-1].strip('"') == qualified_name.split(".")[-1].strip('"')


async def capture_triggers(conn: asyncpg.Connection, schema: str,
                           table: str | None = None) -> tuple[dict[str, dict[str, str | None]], dict[str, str]]:
    """table -> {capture trigger: the function it calls (_FIRED_FUNCTION)} of every table
    of `schema` (or of `table` alone), in one query; and each table's mark: its capture
    triggers' row versions in pg_trigger, which a DROP, CREATE, DISABLE or ENABLE of one
    of them changes, so a trigger turned off and on again between two looks is told by
    its mark."""
    rows = await conn.fetch(
        f"SELECT c.relname, t.tgname, {_FIRED_FUNCTION}, t.xmin::text FROM pg_trigger t "
        "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND t.tgname = ANY($2::text[]) AND NOT t.tgisinternal "
        "AND ($3::text IS NULL OR c.relname = $3) ORDER BY 1, 2",
        schema, list(CAPTURE_TRIGGERS), table)
    out: dict[str, dict[str, str | None]] = {}
    marks: dict[str, str] = {}
    for table, trigger, fn, version in rows:
        out.setdefault(table, {})[trigger] = fn
        marks[table] = (marks[table] + " " if table in marks else "") + f"{trigger}:{version}"
    return out, marks


async def trigger_marks(conn: asyncpg.Connection, schema: str, table: str | None = None) -> dict[str, str]:
    """capture_triggers' marks alone."""
    return (await capture_triggers(conn, schema, table))[1]


async def note_triggers(conn: asyncpg.Connection, names: Names, marks: dict[str, str]) -> None:
    await conn.execute(f"UPDATE {names.registry} SET triggers = $2::text::jsonb WHERE source = $1",
                       names.source, json.dumps(marks))


def armed(have: dict[str, str | None], names: Names, tid: int) -> bool:
    """Whether every capture trigger of a table (`have`, capture_triggers) fires and calls
    its function."""
    return all(have.get(n) is not None and _same_function(have[n], names.capture_function(tid))
               for n in CAPTURE_TRIGGERS)


async def disarm_all(conn: asyncpg.Connection, names: Names, schema: str) -> int:
    """Every capture trigger of this source's tables (and the functions), inside the
    caller's transaction; returns how many tables had them."""
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    prefix = f"rcap_{names.h}_"
    rows = await conn.fetch(
        "SELECT DISTINCT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_proc p ON p.oid = t.tgfoid "
        "WHERE n.nspname = $1 AND t.tgname = ANY($2::text[]) AND substr(p.proname, 1, $4) = $3",
        schema, list(CAPTURE_TRIGGERS), prefix, len(prefix))
    # DROP TRIGGER takes its table ACCESS EXCLUSIVE, which the application's readers wait for
    await take_in_tries(conn, schema, [table for (table,) in rows], "ACCESS EXCLUSIVE")
    for (table,) in rows:
        for n in CAPTURE_TRIGGERS:
            await conn.execute(f"DROP TRIGGER IF EXISTS {quote_pg_ident(n)} ON {qualified(schema, table)}")
    for (fn,) in await conn.fetch(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = $1 AND substr(p.proname, 1, $3) = $2", names.bk, prefix, len(prefix)):
        await conn.execute(f"DROP FUNCTION IF EXISTS {qualified(names.bk, fn)}()")
    return len(rows)


async def take_in_tries(conn: asyncpg.Connection, schema: str, tables: list[str], mode: str) -> None:
    """Inside the caller's transaction: a `mode` lock on every one of `tables`, taken in
    tries. A try that waits past FREEZE_LOCK_STEP for one table lets go of every table it
    took and the next begins, until FREEZE_LOCK_SECONDS have passed (then
    LockNotAvailableError); the transaction's lock_timeout is LOCK_TIMEOUT afterwards.
    Holding one table while waiting long for another would deadlock an application
    transaction using both (a write, or a report's reads against an ACCESS EXCLUSIVE)."""
    deadline = time.monotonic() + FREEZE_LOCK_SECONDS
    while tables:
        try:
            async with conn.transaction():  # a savepoint: a try given up releases its tables
                await conn.execute(f"SET LOCAL lock_timeout = '{FREEZE_LOCK_STEP}'")
                for table in tables:
                    await conn.execute(f"LOCK TABLE {qualified(schema, table)} IN {mode} MODE")
            break
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.02)
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")


# --- the freeze ---------------------------------------------------------------------------------


def freeze_function_sql(names: Names, message: str, since: int | None = None) -> str:
    """`since`: the txid of the freeze's transaction. The bookkeeping is read in the
    writer's snapshot: a REPEATABLE READ transaction whose snapshot was taken before
    the freeze committed still sees the source cut over and no rollback open, so it is
    refused for its snapshot alone (its write would land in a Postgres nobody mirrors
    to SQLite once the rollback is done)."""
    source = quote_literal(names.source)
    followed = (f"EXISTS (SELECT 1 FROM {qualified(names.bk, 'sources')} WHERE source = {source} "
                f"AND direction = {quote_literal(TO_SQLITE)})")
    rolling_back = (f"EXISTS (SELECT 1 FROM {qualified(names.bk, 'switches')} WHERE source = {source} "
                    "AND kind = 'rollback' AND state IN ('started', 'frozen'))")
    stale = "" if since is None else f"{snapshot_older_than(since)} OR "
    return refusing_function_sql(names.freeze_function, message, f"({stale}NOT {followed} OR {rolling_back})",
                                 definer=True)


def snapshot_older_than(txid: int) -> str:
    """An SQL condition true in a session whose snapshot does not see transaction `txid`
    committed (a REPEATABLE READ transaction begun before it): what such a session reads
    of syncd's bookkeeping is older than that transaction's writes."""
    return f"NOT txid_visible_in_snapshot({int(txid)}, txid_current_snapshot())"


def refusing_function_sql(function: str, message: str, when: str = "", definer: bool = False) -> str:
    """A statement trigger's function refusing every session but syncd's own (by its
    application_name) with `message`, naming the table; `when`: an SQL condition the
    refusal needs besides. `definer`: SECURITY DEFINER, for a condition reading syncd's
    bookkeeping, on which the application's role has no privilege."""
    mine = f"left(current_setting('application_name'), {len(WRITER_PREFIX)}) = {quote_literal(WRITER_PREFIX)}"
    body = f"""
BEGIN
  IF {mine} IS NOT TRUE{f" AND {when}" if when else ""} THEN
    RAISE EXCEPTION USING ERRCODE = '25006',
      MESSAGE = format('table %I.%I: %s', TG_TABLE_SCHEMA, TG_TABLE_NAME, {quote_literal(message)});
  END IF;
  RETURN NULL;
END
"""
    tag = _dollar(body)
    return (f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql "
            f"{'SECURITY DEFINER ' if definer else ''}SET search_path = pg_catalog, pg_temp AS {tag}{body}{tag}")


async def freeze(conn: asyncpg.Connection, names: Names, schema: str, tables: list[str], message: str) -> None:
    """Refuse the application's writes to `tables` (inside the caller's transaction).
    CREATE TRIGGER waits for the writers already in a table: once this commits, every
    write that reached those tables has committed, and no other can start.

    The tables are taken first, all of them, in tries: one that waits past a short lock
    wait lets go of every table it took and the next begins, until FREEZE_LOCK_SECONDS
    have passed (then LockNotAvailableError). A freeze that held one table while waiting
    long for another would deadlock an application transaction writing both."""
    await take_in_tries(conn, schema, tables, "SHARE ROW EXCLUSIVE")
    await conn.execute(freeze_function_sql(names, message, await conn.fetchval("SELECT txid_current()")))
    for table in tables:
        t = qualified(schema, table)
        await conn.execute(f"DROP TRIGGER IF EXISTS {quote_pg_ident(FREEZE_TRIGGER)} ON {t}")
        await conn.execute(f"CREATE TRIGGER {quote_pg_ident(FREEZE_TRIGGER)} BEFORE INSERT OR UPDATE OR DELETE "
                           f"OR TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {names.freeze_function}()")


async def frozen_tables(conn: asyncpg.Connection, names: Names, schema: str) -> list[str]:
    rows = await conn.fetch(f"SELECT c.relname {freeze_triggers_from('$1', '$2', '$3', '$4')} ORDER BY 1",
                            schema, FREEZE_TRIGGER, names.bk, names.freeze_function_name)
    return [r[0] for r in rows]


async def unfreeze(conn: asyncpg.Connection, names: Names, schema: str) -> int:
    """The application may write Postgres again (inside the caller's transaction, the
    direction still to SQLite: the undo of a rollback); returns how many tables were
    frozen. DROP TRIGGER waits for every reader of the tables: never in a cutover's last
    transaction, which lifts the freeze by recording the direction (drop_freeze after)."""
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    tables = await frozen_tables(conn, names, schema)
    for table in tables:
        await conn.execute(f"DROP TRIGGER IF EXISTS {quote_pg_ident(FREEZE_TRIGGER)} ON {qualified(schema, table)}")
    return len(tables)


async def drop_freeze(conn: asyncpg.Connection, names: Names, schema: str) -> int:
    """Once the freeze passes every write (the direction recorded to SQLite, no rollback
    open): drop its triggers (drop_in_tries). Not on a connection inside a transaction.
    Returns how many are left."""
    return await drop_in_tries(conn, schema, await frozen_tables(conn, names, schema), FREEZE_TRIGGER)


async def drop_in_tries(conn: asyncpg.Connection, schema: str, tables: list[str], trigger: str) -> int:
    """Drop `trigger` from each of `tables`, each in a transaction of its own that waits
    FREEZE_LOCK_STEP at most for its table (DROP TRIGGER takes ACCESS EXCLUSIVE: the
    application's reads queue behind it). Returns how many tables kept it (busy)."""
    left = 0
    for table in tables:
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{FREEZE_LOCK_STEP}'")
                await conn.execute(f"DROP TRIGGER IF EXISTS {quote_pg_ident(trigger)} ON {qualified(schema, table)}")
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
            left += 1
    return left
