"""What `syncd verify` reads from Postgres: plain SELECTs on its own connection, so
it never blocks the stream (MVCC) and takes no lock a writer would wait for."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg

from syncd.identifiers import qualified, quote_pg_ident
from syncd.postgres.bookkeeping import LOCK_CLASS
from syncd.types import PgType
from syncd.verify.keyspace import Bound, KeyRange, KeySpace, cell_case
from syncd.verify.rowhash import pg_key_token_exprs, pg_row_hash_sql, pg_token_exprs

LOOKUP_BATCH = 5000


@dataclass
class PgRow:
    key: tuple  # the key as Postgres returns it
    tokens: tuple[str, ...]


class PostgresTable:
    def __init__(self, conn: asyncpg.Connection, schema: str, ks: KeySpace, utf8_database: bool = False):
        self.conn = conn
        self.ks = ks
        self.spec = ks.spec
        self.table = qualified(schema, ks.spec.name)
        self.hash = pg_row_hash_sql(ks.spec, utf8_database)
        self.key_cols = ", ".join(ks.pg_ref(i) for i in range(len(ks.key)))
        self.tokens = f"ARRAY[{', '.join(pg_token_exprs(ks.spec))}]::text[]"
        self.key_tokens = pg_key_token_exprs(ks.spec)

    async def count(self) -> int:
        return await self.conn.fetchval(f"SELECT count(*) FROM {self.table}")

    async def cell_sums(self, r: KeyRange, bounds: Sequence[Bound]) -> list[tuple[int, int]]:
        """(rows, hash sum) of each cell of `r` split at `bounds`, in one statement."""
        where, params = self.ks.pg_where(r)
        n = len(params)
        if not bounds:
            cell = "0"
        elif len(self.ks.key) == 1:
            cell = f"width_bucket({self.ks.pg_key()}, ${n + 1}::{self.ks.key_types[0].value}[])"
            params.append([b.pg[0] for b in bounds])
        else:
            def mark(i: int) -> str:
                m = self.ks.pg_marks(len(params) + 1)
                params.extend(bounds[i].pg)
                return m

            cell = cell_case(self.ks.pg_key(), len(bounds), mark)
        sql = f"SELECT {cell} AS cell, count(*), sum({self.hash}) FROM {self.table} WHERE {where} GROUP BY 1"
        out = [(0, 0)] * (len(bounds) + 1)
        for c, rows, total in await self.conn.fetch(sql, *params):
            out[c] = (rows, int(total))
        return out

    async def sample(self, r: KeyRange, step: int) -> list[tuple[int, tuple]]:
        """(position, key) of the rows at positions step+1, 2*step+1, ... of range `r`."""
        where, params = self.ks.pg_where(r)
        order = self.ks.pg_order()
        # The subquery's columns get names of their own: a key column may be called rn.
        aliases = [f"_syncd_k{i}" for i in range(len(self.ks.key))]
        named = ", ".join(f"{self.ks.pg_ref(i)} AS {a}" for i, a in enumerate(aliases))
        sql = (f"SELECT _syncd_rn, {', '.join(aliases)} FROM (SELECT {named}, row_number() OVER (ORDER BY {order}) "
               f"AS _syncd_rn FROM {self.table} WHERE {where}) s "
               f"WHERE _syncd_rn > 1 AND (_syncd_rn - 1) % ${len(params) + 1} = 0 ORDER BY _syncd_rn")
        return [(row[0], tuple(row[1:])) for row in await self.conn.fetch(sql, *params, step)]

    async def range_hashes(self, ranges: Sequence[KeyRange]) -> list[tuple]:
        """(key values..., key tokens, row hash) of every row in any of `ranges`, in one
        statement (planning this expression costs about as much as reading a small range)."""
        conds, params = [], []
        for r in ranges:
            where, p = self.ks.pg_where(r, len(params) + 1)
            conds.append(f"({where})")
            params += p
        return await self.conn.fetch(
            f"SELECT {self.key_cols}, ARRAY[{', '.join(self.key_tokens)}]::text[], {self.hash} "
            f"FROM {self.table} WHERE {' OR '.join(conds)}", *params)

    async def rows_by_key(self, keys: Sequence[tuple]) -> list[PgRow]:
        """Rows for keys given as Postgres values (exact match, one statement per batch).
        Postgres's infinity reads as the first or last day (instant) in Python: where a key
        holds one of those, the row keyed by the infinity in its place is read too, by the
        key's index (the caller matches rows to keys by their tokens, which tell them apart)."""
        types = [t.value for t in self.ks.key_types]
        out: list[PgRow] = []
        await self._fetch_by_key(keys, [f"${i + 1}::{t}[]" for i, t in enumerate(types)], out)
        # The infinity twins, grouped by the key columns holding an infinity (sent as text).
        instants = [i for i, t in enumerate(self.ks.key_types) if t in _INSTANTS]
        twins: dict[tuple[int, ...], dict[tuple, None]] = {}
        for k in keys:
            ext = [i for i in instants if _extreme(k[i])]
            for n in range(1, len(ext) + 1):
                for cols in itertools.combinations(ext, n):
                    twin = tuple(_infinity(v) if i in cols else v for i, v in enumerate(k))
                    twins.setdefault(cols, {})[twin] = None
        for cols, group in twins.items():
            arrays = [f"${i + 1}::text[]::{t}[]" if i in cols else f"${i + 1}::{t}[]" for i, t in enumerate(types)]
            await self._fetch_by_key(list(group), arrays, out)
        return out

    def _key_in(self, arrays: list[str]) -> str:
        """The condition: the row's key is one of those the arrays (one per key column) hold."""
        if len(self.ks.key) == 1:
            return f"{self.ks.pg_ref(0)} = ANY({arrays[0]})"
        return f"({self.key_cols}) IN (SELECT * FROM unnest({', '.join(arrays)}))"

    async def _fetch_by_key(self, keys: Sequence[tuple], arrays: list[str], out: list[PgRow]) -> None:
        sql = f"SELECT {self.key_cols}, {self.tokens} FROM {self.table} WHERE {self._key_in(arrays)}"
        for i in range(0, len(keys), LOOKUP_BATCH):
            columns = [list(col) for col in zip(*keys[i : i + LOOKUP_BATCH])]
            for row in await self.conn.fetch(sql, *columns):
                out.append(PgRow(tuple(row[:-1]), tuple(row[-1])))

    async def count_by_key(self, keys: Sequence[tuple]) -> int:
        """How many rows have one of `keys` (Postgres values; each counted once)."""
        cond = self._key_in([f"${i + 1}::{t.value}[]" for i, t in enumerate(self.ks.key_types)])
        unique = list(dict.fromkeys(tuple(k) for k in keys))
        total = 0
        for i in range(0, len(unique), LOOKUP_BATCH):
            columns = [list(col) for col in zip(*unique[i : i + LOOKUP_BATCH])]
            total += await self.conn.fetchval(f"SELECT count(*) FROM {self.table} WHERE {cond}", *columns)
        return total


_INSTANTS = (PgType.DATE, PgType.TIMESTAMP, PgType.TIMESTAMPTZ)


def _extreme(v: object) -> bool:
    """Whether a date or instant read from Postgres may have been an infinity."""
    if isinstance(v, dt.datetime):
        return v.replace(tzinfo=None) in (dt.datetime.min, dt.datetime.max)
    return isinstance(v, dt.date) and v in (dt.date.min, dt.date.max)


def _infinity(v: dt.date) -> str:
    """The infinity an extreme date or instant stands for, as Postgres spells it."""
    first = v.replace(tzinfo=None) == dt.datetime.min if isinstance(v, dt.datetime) else v == dt.date.min
    return "-infinity" if first else "infinity"


async def stores_utf8(conn: asyncpg.Connection) -> bool:
    """Whether text is stored as UTF-8 bytes, so md5() of it is md5 of UTF-8 (SQL_ASCII
    stores the bytes syncd sends, which are UTF-8)."""
    return (await conn.fetchval("SHOW server_encoding")).upper() in ("UTF8", "UTF-8", "SQL_ASCII")


async def checkpoint(conn: asyncpg.Connection, bk_schema: str, source: str) -> int | None:
    return await conn.fetchval(
        f"SELECT applied_seq FROM {quote_pg_ident(bk_schema)}.sources WHERE source = $1", source
    )


async def rows_at_checkpoint(pt: PostgresTable, bk_schema: str, source: str,
                             keys: Sequence[tuple]) -> tuple[int, list[PgRow]]:
    """The checkpoint and the rows for `keys` from one snapshot: the checkpoint commits
    with the data it covers, so these rows are exactly what applying every change up
    to it produced."""
    async with pt.conn.transaction(isolation="repeatable_read", readonly=True):
        seq = await checkpoint(pt.conn, bk_schema, source)
        rows = await pt.rows_by_key(keys)
    return seq or 0, rows


@dataclass
class Totals:
    """Both sides' row counts at one checkpoint, and the counts without the rows whose
    key changed after it (in flight: they may rightly differ)."""

    seq: int
    sqlite_rows: int
    postgres_rows: int
    sqlite_settled: int
    postgres_settled: int
    in_flight: bool = False  # the changelog held entries after the checkpoint (any table's)


async def counts_at_checkpoint(pt: PostgresTable, bk_schema: str, source: str,
                               sqlite_counts: Callable[[int], Awaitable]) -> Totals | None:
    """Totals of both sides at the checkpoint; None when they cannot be known exactly
    this time (the changelog after the checkpoint was pruned meanwhile, or too many
    keys changed to list). `sqlite_counts(seq)` returns sqlite_side.ChangeCounts."""
    async with pt.conn.transaction(isolation="repeatable_read", readonly=True):
        seq = await checkpoint(pt.conn, bk_schema, source) or 0
        pg_rows = await pt.count()
        sq = await sqlite_counts(seq)
        if sq.changed_keys is None or sq.max_seq < seq:
            return None
        pg_keys = [b.pg for b in (pt.ks.from_sqlite(k) for k in sq.changed_keys) if b is not None]
        pg_changed = await pt.count_by_key(pg_keys) if pg_keys else 0
    seq_after = await checkpoint(pt.conn, bk_schema, source) or 0
    if seq_after != seq and sq.entries_after != sq.max_seq - seq:
        return None  # entries after the checkpoint may have been pruned before they were read
    return Totals(seq, sq.rows, pg_rows, sq.rows - sq.changed_rows, pg_rows - pg_changed, sq.max_seq > seq)


async def lock_holder(conn: asyncpg.Connection, key: int) -> str | None:
    """Who holds the advisory lock of the source whose key is `key` (bookkeeping.source_key):
    a running daemon; without taking it."""
    row = await conn.fetchrow(
        """SELECT a.application_name, a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.classid = $1::oid AND l.objid = $2::oid AND l.objsubid = 2
             AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
        LOCK_CLASS, key,
    )
    if row is None:
        return None
    return f"{row[0] or 'an unnamed client'} (Postgres backend {row[1]})"
