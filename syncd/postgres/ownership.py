"""Which Postgres tables are syncd's to fill.

syncd empties, reshapes and writes only tables it created itself (recorded in the
bookkeeping table `owned_tables`). A relation of the same name that someone else
made, or that another source's replica already uses, is never touched: the SQLite
table is refused, with a reason naming the Postgres object.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from syncd.identifiers import quote_pg_ident
from syncd.postgres.bookkeeping import Bookkeeping

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
    source's replica: name -> the refusal's reason."""
    existing = await relations(conn, schema)
    wanted = [n for n in names if n in existing]
    if not wanted:
        return {}
    owners = await bk.owners(conn, schema)
    return {n: not_ours_reason(schema, n, existing[n], owners.get(n)) for n in wanted if owners.get(n) != bk.source}


async def owns(conn: asyncpg.Connection, bk: Bookkeeping, schema: str, table: str) -> bool:
    return (await bk.owners(conn, schema)).get(table) == bk.source
