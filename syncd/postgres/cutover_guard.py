"""While `syncd cutover` runs, Postgres refuses the application's writes to the source's
tables.

From the freeze of the SQLite file to the switch's last transaction, a write the
application makes in Postgres would be lost without a word: the drain may overwrite
its row, the way back does not capture it yet (a rollback would not bring it to
SQLite), and the identities are not set yet (an INSERT may take an id SQLite holds).

The guard is a BEFORE statement trigger on each table, created before the freeze, whose
function refuses every session that is not syncd's own (application_name, as the
rollback's freeze: reverse/capture.py) while the source has a cutover open in
`<bookkeeping>.switches` (started or frozen). It reads that record at each statement,
so lifting it needs no DDL: the last transaction's record of the switch lifts it as it
commits (DROP TRIGGER there would take ACCESS EXCLUSIVE, waiting for every reader of
the table while SQLite is frozen), and so does the record of a cutover undone. A killed
cutover leaves its record open: Postgres keeps refusing, as SQLite does, until the
cutover is undone. The triggers are dropped afterwards, each table in a short try of
its own; one not had then passes every write until the daemon, or the next cutover,
drops it.
"""

from __future__ import annotations

import asyncpg

from syncd.identifiers import qualified, quote_literal, quote_pg_ident
from syncd.reverse.capture import drop_in_tries, refusing_function_sql, snapshot_older_than, take_in_tries

GUARD_TRIGGER = "_syncd_cutover_guard"


def function_name(bk: str, key: int) -> str:
    return qualified(bk, f"cguard_{key:08x}")


def guard_function_sql(bk: str, source: str, key: int, message: str, since: int | None) -> str:
    """`since`: the txid of the guard's transaction. The record is read in the writer's
    snapshot: a REPEATABLE READ transaction whose snapshot was taken before the guard
    committed sees no cutover open, so it is refused for its snapshot alone. None: the
    record alone decides (a guard being dropped, its cutover over)."""
    open_cutover = (f"EXISTS (SELECT 1 FROM {qualified(bk, 'switches')} WHERE source = {quote_literal(source)} "
                    "AND kind = 'cutover' AND state IN ('started', 'frozen'))")
    when = open_cutover if since is None else f"({snapshot_older_than(since)} OR {open_cutover})"
    return refusing_function_sql(function_name(bk, key), message, when, definer=True)


# What a guard being dropped says, should a cutover of its source open meanwhile.
DROPPED_GUARD_MESSAGE = "syncd cutover in progress: the application writes here once it has finished"


async def guard(conn: asyncpg.Connection, bk: str, source: str, key: int, schema: str, tables: list[str],
                message: str) -> None:
    """Inside the caller's transaction, with the source's cutover recorded as started:
    refuse the application's writes to `tables` until that record is closed. The tables
    are taken in short tries first (CREATE TRIGGER waits for their writers: the stream's
    batches), LockNotAvailableError when not had within capture.FREEZE_LOCK_SECONDS."""
    present = [t for t in tables
               if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", qualified(schema, t))]
    await take_in_tries(conn, schema, present, "SHARE ROW EXCLUSIVE")
    await conn.execute(guard_function_sql(bk, source, key, message, await conn.fetchval("SELECT txid_current()")))
    for table in present:
        t = qualified(schema, table)
        await conn.execute(f"DROP TRIGGER IF EXISTS {quote_pg_ident(GUARD_TRIGGER)} ON {t}")
        await conn.execute(f"CREATE TRIGGER {quote_pg_ident(GUARD_TRIGGER)} BEFORE INSERT OR UPDATE OR DELETE "
                           f"OR TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {function_name(bk, key)}()")


async def guarded_tables(conn: asyncpg.Connection, bk: str, key: int, schema: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_proc p ON p.oid = t.tgfoid "
        "JOIN pg_namespace pn ON pn.oid = p.pronamespace "
        "WHERE n.nspname = $1 AND t.tgname = $2 AND pn.nspname = $3 AND p.proname = $4 ORDER BY 1",
        schema, GUARD_TRIGGER, bk, f"cguard_{key:08x}")
    return [r[0] for r in rows]


async def unguard(conn: asyncpg.Connection, bk: str, source: str, key: int, schema: str) -> int:
    """Once the cutover's record is closed (the guard passes every write then): drop its
    triggers (capture.drop_in_tries). Not on a connection inside a transaction. Returns
    how many are left. Its function first stops telling the writer's snapshot's age
    (CREATE OR REPLACE takes no table lock): a trigger left on a busy table would
    otherwise refuse a REPEATABLE READ transaction older than the guard for as long as it
    stays, and every write after the database is restored into a cluster whose
    transaction ids start lower than the one the function names. It still refuses while
    a cutover of the source is open (one begun since, should this run beside it)."""
    await conn.execute(guard_function_sql(bk, source, key, DROPPED_GUARD_MESSAGE, None))
    left = await drop_in_tries(conn, schema, await guarded_tables(conn, bk, key, schema), GUARD_TRIGGER)
    if not left:
        await conn.execute(f"DROP FUNCTION IF EXISTS {function_name(bk, key)}()")
    return left
