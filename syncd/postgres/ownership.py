"""Which Postgres tables are syncd's to fill.

syncd empties, reshapes and writes only tables it created itself (recorded in the
bookkeeping table `owned_tables`). A relation of the same name that someone else
made, or that another source's replica already uses, is never touched: the SQLite
table is refused, with a reason naming the Postgres object.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import asyncpg

from syncd.identifiers import PG_MAX_IDENTIFIER_BYTES, qualified, quote_pg_ident
from syncd.postgres.bookkeeping import Bookkeeping

log = logging.getLogger(__name__)

_KINDS = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view", "i": "index",
          "I": "partitioned index", "S": "sequence", "f": "foreign table", "c": "composite type",
          "t": "TOAST table"}


async def relations(conn: asyncpg.Connection, schema: str) -> dict[str, str]:
    """Every relation in `schema` (tables, views, indexes, sequences share one namespace)
    -> what it is."""
    rows = await conn.fetch(
        "SELECT c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1", schema)
    return {r[0]: _KINDS.get(r[1], "relation") for r in rows}


def not_ours_reason(schema: str, table: str, kind: str, owner: str | None) -> str:
    where = f"{quote_pg_ident(schema)}.{quote_pg_ident(table)}"
    if owner is not None:
        return (f"the Postgres table {where} is the replica of source {owner!r}, which replicates into the same "
                "schema; give one of the two sources its own schema ([[sources]] schema = ...)")
    return (f"a Postgres {kind} {where} already exists and syncd did not create it, so syncd leaves it alone. "
            "Rename or drop it (syncd then creates its own table), or replicate this source into another schema "
            "([[sources]] schema = ...)")


async def not_ours(conn: asyncpg.Connection, bk: Bookkeeping, schema: str, names: Iterable[str]) -> dict[str, str]:
    """Of `names`, those whose Postgres relation in `schema` exists but is not this
    source's replica: name -> the refusal's reason. A name held by an index or sequence
    of this source's own tables is freed for the table instead (make_room)."""
    existing = await relations(conn, schema)
    wanted = [n for n in names if n in existing]
    if not wanted:
        return {}
    owners = await bk.owners(conn, schema)
    out = {}
    for n in wanted:
        if existing[n] in ("index", "sequence"):  # never a table of syncd's, whatever was recorded
            if await make_room(conn, bk, schema, n, existing, owners) is None:
                out[n] = not_ours_reason(schema, n, existing[n], None)
        elif owners.get(n) != bk.source:
            out[n] = not_ours_reason(schema, n, existing[n], owners.get(n))
    return out


async def make_room(conn: asyncpg.Connection, bk: Bookkeeping, schema: str, name: str,
                    existing: dict[str, str] | None = None, owners: dict[str, str] | None = None) -> str | None:
    """Free `name` in `schema` for a SQLite table of that name when an index or sequence
    of one of this source's own tables holds it: Postgres names a table's primary key
    index `<table>_pkey` and an identity's sequence `<table>_<column>_seq`, so a table
    `log_pkey` created after the keyless `log` would find its name taken by syncd's own
    index. That object is renamed to the first free `<name>_<n>` (nothing of syncd's
    refers to it by name). Returns the new name, or None when nothing of this source's
    held `name`."""
    existing = existing if existing is not None else await relations(conn, schema)
    kind = existing.get(name)
    if kind not in ("index", "sequence"):
        return None
    table = await conn.fetchval(
        "SELECT t.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_index i ON i.indexrelid = c.oid "
        "LEFT JOIN pg_depend d ON c.relkind = 'S' AND d.classid = 'pg_class'::regclass AND d.objid = c.oid "
        "AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') "
        "JOIN pg_class t ON t.oid = coalesce(i.indrelid, d.refobjid) AND t.relnamespace = n.oid "
        "WHERE n.nspname = $1 AND c.relname = $2 LIMIT 1", schema, name)
    owners = owners if owners is not None else await bk.owners(conn, schema)
    if table is None or owners.get(table) != bk.source:
        return None
    n = 1
    while True:
        suffix = f"_{n}"
        new = name.encode("utf-8")[:PG_MAX_IDENTIFIER_BYTES - len(suffix)].decode("utf-8", "ignore") + suffix
        if new not in existing:
            break
        n += 1
    try:
        async with conn.transaction():  # a savepoint inside the caller's transaction
            await conn.execute(f"ALTER {kind.upper()} {qualified(schema, name)} RENAME TO {quote_pg_ident(new)}")
    except asyncpg.PostgresError:  # the table is no longer syncd's role's, say: refused with the reason
        return None
    existing[new] = existing.pop(name)
    log.info(f'the {kind} "{name}" of table "{table}" renamed to "{new}" in Postgres: a SQLite table takes its name',
             extra={"source": bk.source, "table": name, "event": "name_freed"})
    return new


async def owns(conn: asyncpg.Connection, bk: Bookkeeping, schema: str, table: str) -> bool:
    return (await bk.owners(conn, schema)).get(table) == bk.source
