"""The application's own triggers on syncd's Postgres tables, while SQLite is the
application's database.

A team moving to Postgres writes the application's SQLite triggers again as Postgres
trigger functions (docs/schema.md), during dual-write or after the cutover. While rows
come from SQLite (dual-write, the cutover's drain, after a rollback), each already holds
what SQLite's own trigger did: the Postgres trigger would do it a second time (a
touched `updated_at` moved on, an audit row added), and no verification would be clean
again (a repair fires it once more). The way back keeps the application's SQLite
triggers from running for the same reason (reverse/applier.py).

`SET session_replication_role = replica` would keep every trigger from firing for
syncd's sessions, but it needs a superuser (or a GRANT SET ON PARAMETER on Postgres
15+), which syncd's documented role does not have, and it skips foreign-key checks
too. So each application trigger is disabled by name (`ALTER TABLE ... DISABLE TRIGGER
<name>`; syncd owns the table) before syncd writes its table, and recorded: the
cutover's last transaction enables exactly those again, never one the team disabled
themselves. Left alone: syncd's own triggers (the way back's capture, the freezes, the
cutover's guard), the ones Postgres makes for constraints (foreign keys, deferred UNIQUEs: internal
triggers), one the team disabled or marked ENABLE REPLICA (neither fires for syncd's
writes) or ENABLE ALWAYS (the team asks for it to fire on replicated rows too).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from syncd.identifiers import qualified, quote_pg_ident
from syncd.log import ctx
from syncd.postgres.bookkeeping import QUIETED_TRIGGERS as QUIETED
from syncd.postgres.cutover_guard import GUARD_TRIGGER
from syncd.reverse.capture import CAPTURE_TRIGGERS, FREEZE_TRIGGER

log = logging.getLogger("syncd")

SYNCD_TRIGGERS = (*CAPTURE_TRIGGERS, FREEZE_TRIGGER, GUARD_TRIGGER)
NOT_OWNER = "42501"


@dataclass(frozen=True)
class Trigger:
    table: str
    name: str

    def __str__(self) -> str:
        return f'the application\'s trigger "{self.name}" on "{self.table}"'


class TriggersKept(Exception):
    """An application trigger on a table syncd writes could not be disabled."""

    sqlstate = NOT_OWNER  # the table's writes cannot go in as they are: held, the others go on


async def quiet(conn: asyncpg.Connection, bk: str, source: str, schema: str, tables: list[str]) -> list[Trigger]:
    """Inside the caller's transaction, before it writes `tables`: disable every
    application trigger that would fire on them, and record it. The tables are locked
    as the writes would lock them first, so no trigger created after the look can fire
    on this transaction's rows (CREATE TRIGGER waits for it). Returns those disabled."""
    if not tables:
        return []
    await conn.execute(f"LOCK TABLE {', '.join(qualified(schema, t) for t in tables)} IN ROW EXCLUSIVE MODE")
    rows = await conn.fetch(
        "SELECT t.oid, c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) "
        "AND NOT t.tgisinternal AND t.tgenabled = 'O' AND NOT t.tgname = ANY($3::text[]) ORDER BY 2, 3",
        schema, tables, list(SYNCD_TRIGGERS))
    done = []
    for oid, table, name in rows:
        trigger = Trigger(table, name)
        try:
            async with conn.transaction():
                await conn.execute(f"ALTER TABLE {qualified(schema, table)} DISABLE TRIGGER {quote_pg_ident(name)}")
        except asyncpg.InsufficientPrivilegeError as e:
            raise TriggersKept(
                f"{trigger} would run again on the rows syncd writes from SQLite (they hold its effects already), "
                f"and syncd cannot disable it: {e}. Give the table back to syncd's role, or disable the trigger "
                "until the cutover (ALTER TABLE ... DISABLE TRIGGER ...)") from None
        await conn.execute(
            f"INSERT INTO {quote_pg_ident(bk)}.{QUIETED} (source, trigger_oid, schema_name, table_name, trigger_name) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (trigger_oid) DO UPDATE SET source = EXCLUDED.source, "
            "table_name = EXCLUDED.table_name, trigger_name = EXCLUDED.trigger_name, quieted_at = now()",
            source, oid, schema, table, name)
        done.append(trigger)
    return done


async def quieted(conn: asyncpg.Connection, bk: str, source: str) -> list[Trigger]:
    """The triggers syncd disabled for this source and the cutover will enable again,
    under their names now (gone ones left out)."""
    if not await _recorded(conn, bk):
        return []
    rows = await conn.fetch(
        f"SELECT c.relname, t.tgname FROM {quote_pg_ident(bk)}.{QUIETED} q JOIN pg_trigger t ON t.oid = q.trigger_oid "
        "JOIN pg_class c ON c.oid = t.tgrelid WHERE q.source = $1 AND t.tgenabled = 'D' ORDER BY 1, 2", source)
    return [Trigger(r[0], r[1]) for r in rows]


async def restore(conn: asyncpg.Connection, bk: str, source: str, schema: str) -> list[Trigger]:
    """Inside the cutover's last transaction: enable again every trigger syncd disabled
    for this source, still there and still disabled (one the team enabled, or dropped,
    meanwhile is theirs), and forget them all. Returns those enabled."""
    if not await _recorded(conn, bk):
        return []  # bookkeeping of a syncd from before: it disabled none
    done = await quieted(conn, bk, source)
    for trigger in done:
        await conn.execute(f"ALTER TABLE {qualified(schema, trigger.table)} "
                           f"ENABLE TRIGGER {quote_pg_ident(trigger.name)}")
    await conn.execute(f"DELETE FROM {quote_pg_ident(bk)}.{QUIETED} WHERE source = $1", source)
    return done


async def _recorded(conn: asyncpg.Connection, bk: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", qualified(bk, QUIETED)))


def line(trigger: Trigger, disabled: bool) -> str:
    if disabled:
        return (f"disabled {trigger} while SQLite is the application's database: the rows syncd writes from SQLite "
                "hold its effects already; `syncd cutover` enables it again")
    return f"enabled {trigger} again: Postgres is the application's database"


def say(source: str, triggers: list[Trigger], disabled: bool) -> None:
    """Each trigger syncd disabled or enabled, by name, once its transaction committed."""
    for trigger in triggers:
        log.info(line(trigger, disabled),
                 extra=ctx(source, trigger.table, "trigger_disabled" if disabled else "trigger_enabled"))
