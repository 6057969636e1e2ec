"""`syncd verify` on a cut-over source: the same comparison, with the evidence of what is
in flight taken from the way back (Postgres's changelog against SQLite's checkpoint).

verify/table.py finds the keys whose rows differ and decides each of them: a
difference is real only if no change to that key is still on its way. After a cutover
changes travel from Postgres to SQLite, so a key is in flight when Postgres's changelog
holds an entry for it that SQLite's reverse checkpoint does not cover. Each round reads
SQLite's rows with its checkpoint (one read transaction), then Postgres's rows with the
entries not covered by that checkpoint (one snapshot); it is conclusive only if SQLite
did not change meanwhile (its data_version: after a cutover syncd is its only writer).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from syncd.identifiers import quote_pg_ident
from syncd.model import TableSpec
from syncd.reverse import applier
from syncd.reverse.capture import OP_TRUNCATE, REPAIR_COPY, Names
from syncd.reverse.checkpoint import META_KEY, NOTHING, ReverseCheckpoint
from syncd.verify import sqlite_side
from syncd.verify.result import EXTRA, Difference, TableVerifyResult
from syncd.verify.rowhash import pg_token
from syncd.verify.sqlite_side import quoted_sqlite_table, read_transaction

POLL_SECONDS = 0.1
MAX_CHANGED_KEYS = 200_000


@dataclass
class SqliteSide:
    rows: list[tuple]
    checkpoint: str | None
    data_version: int
    count: int | None = None


def rows_with_checkpoint(conn: sqlite3.Connection, spec: TableSpec, keys: Sequence[tuple], scan: bool) -> SqliteSide:
    """Rows for `keys` (every row when `scan`) with the reverse checkpoint, in one read
    transaction, and the connection's data_version (moves when another connection commits)."""
    with read_transaction(conn):
        if scan:
            cols = ", ".join(spec.sqlite_ref(c) for c in spec.column_names)
            rows = sqlite_side.fetchall_text_safe(conn, f"SELECT {cols} FROM {quoted_sqlite_table(spec)}")
        else:
            rows = sqlite_side._rows_by_key(conn, spec, keys)  # noqa: SLF001 - the same lookup verify makes
        cp = applier.read_meta(conn, META_KEY)
        dv = conn.execute("PRAGMA main.data_version").fetchone()[0]
    return SqliteSide(rows, cp, dv)


def count_with_checkpoint(conn: sqlite3.Connection, spec: TableSpec, keys: Sequence[tuple]) -> SqliteSide:
    """The table's rows, how many of them have one of `keys`, and the checkpoint."""
    with read_transaction(conn):
        total = conn.execute(f"SELECT count(*) FROM {quoted_sqlite_table(spec)}").fetchone()[0]
        found = sqlite_side._rows_by_key(conn, spec, keys) if keys else []  # noqa: SLF001
        cp = applier.read_meta(conn, META_KEY)
        dv = conn.execute("PRAGMA main.data_version").fetchone()[0]
    return SqliteSide(found, cp, dv, total)


def data_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA main.data_version").fetchone()[0]


class ReverseEvidence:
    """Plugged into verify's TableCheck for a source whose direction is to SQLite."""

    def __init__(self, names: Names, generation: str | None, key_types: Sequence[str]):
        self.names = names
        self.generation = generation
        self.key_types = list(key_types)

    # --- Postgres's side: what is not yet in SQLite -------------------------------------------

    def _done(self, cp_text: str | None) -> ReverseCheckpoint:
        cp = ReverseCheckpoint.decode(cp_text)
        if cp is None or cp.generation != self.generation:
            return ReverseCheckpoint(self.generation or "", NOTHING)
        return cp

    def _uncovered_sql(self, spec: TableSpec, select: str) -> str:
        return (f"SELECT {select} FROM {self.names.changelog} c WHERE c.tid = $1 "
                "AND c.txid >= txid_snapshot_xmin($2::text::txid_snapshot) "
                "AND NOT txid_visible_in_snapshot(c.txid, $2::text::txid_snapshot) "
                "AND NOT ($3::text IS NOT NULL AND txid_visible_in_snapshot(c.txid, $3::text::txid_snapshot) "
                "AND (c.txid, c.seq) <= ($4, $5))")

    async def in_flight(self, check, cp: ReverseCheckpoint) -> tuple[set | None, int, list[tuple] | None]:
        """(key idents with uncovered entries, or None when a TRUNCATE or too many leave
        every key in doubt; the count of uncovered entries; their keys as Postgres values)."""
        spec = check.spec
        casts = [f"(c.key[{i + 1}])::{t}" for i, t in enumerate(self.key_types)]
        tokens = ", ".join(pg_token(spec.column(k), casts[i]) for i, k in enumerate(spec.key))
        after = cp.after or (0, 0)
        args = (check.tid, cp.done, cp.target, after[0], after[1])
        n, truncated = await check.pg.fetchrow(
            self._uncovered_sql(spec, f"count(*), bool_or(c.op = {OP_TRUNCATE})"), *args)
        if truncated or n > MAX_CHANGED_KEYS:
            return None, n, None
        as_text = check.ks.pg_as_text or tuple(False for _ in casts)  # keys verify reads as text (a uuid)
        values = ", ".join(f"({c})::text" if t else c for c, t in zip(casts, as_text))
        rows = await check.pg.fetch(self._uncovered_sql(
            spec, f"DISTINCT ARRAY[{tokens}]::text[], {values}") + f" AND c.op <> {OP_TRUNCATE}", *args)
        return {tuple(r[0]) for r in rows}, n, [tuple(r[1:]) for r in rows]

    # --- deciding candidates -------------------------------------------------------------------

    async def decide(self, check, wait_seconds: float) -> tuple[list[Difference], list[Difference], str | None]:
        from syncd.verify.table import SqliteRow
        from syncd.verify.postgres_side import PgRow

        deadline = time.monotonic() + wait_seconds
        open_ = dict(check.candidates)
        found: list[Difference] = []
        entries = 0
        moved = False
        while open_:
            lookups = [c.raws or check._raws_from_pg(c) for c in open_.values()]  # noqa: SLF001
            raws = [k for ks in lookups for k in ks]
            scan = any(not ks for ks in lookups)
            side = await check.run(rows_with_checkpoint, check.spec, raws, scan)
            cp = self._done(side.checkpoint)
            async with check.pg.transaction(isolation="repeatable_read", readonly=True):
                prows: list[PgRow] = await check.pt.rows_by_key(check._pg_keys(open_))  # noqa: SLF001
                changed, entries, _keys = await self.in_flight(check, cp)
            dv_after = await check.run(data_version)
            conclusive = dv_after == side.data_version and changed is not None
            mine: dict[tuple, list[SqliteRow]] = {}
            for row in side.rows:
                x = check._sqlite_row(row)  # noqa: SLF001
                if None not in x.row.raw_key:
                    mine.setdefault(x.tokens_key, []).append(x.row)
            theirs: dict[tuple, list[PgRow]] = {}
            for p in prows:
                theirs.setdefault(check.tokens.key_of_row(p.tokens), []).append(p)
            still = {}
            for ident, c in open_.items():
                ss, ps = mine.get(ident, []), theirs.get(ident, [])
                if len(ss) > 1:
                    found += check._shared_key(c, ss)  # noqa: SLF001
                    continue
                if len(ps) > 1:
                    key = check._display_key(c)  # noqa: SLF001
                    found.append(Difference(EXTRA, key, raw_key=None, repairable=False,
                                            note=f"{len(ps)} rows in Postgres have this key"))
                    continue
                s, p = (ss[0] if ss else None), (ps[0] if ps else None)
                if (s is None and p is None) or (s is not None and p is not None and s.tokens == p.tokens):
                    continue
                if conclusive and ident not in (changed or set()):
                    found.append(check._difference(c, s, p))  # noqa: SLF001
                else:
                    still[ident] = c
            open_ = still
            if not open_ or time.monotonic() >= deadline:
                break
            moved = await self._wait_for_sqlite(check, side.data_version, deadline) or moved
        if not open_:
            return found, [], None
        pending = [check._pending(c) for c in open_.values()]  # noqa: SLF001
        why = f"{entries} change(s) in Postgres not yet applied to SQLite"
        why += (f"; still changing after {wait_seconds:g} s of waiting for the way back" if moved else
                f"; SQLite did not move in {wait_seconds:g} s: is the daemon running?")
        return found, pending, why

    async def _wait_for_sqlite(self, check, dv: int, deadline: float) -> bool:
        """Wait until SQLite changed (the way back applied something)."""
        while time.monotonic() < deadline:
            if await check.run(data_version) != dv:
                return True
            await asyncio.sleep(POLL_SECONDS)
        return False

    # --- totals --------------------------------------------------------------------------------

    async def totals(self, check, result: TableVerifyResult, wait_seconds: float) -> None:
        """Both sides' row counts at one moment, the keys in flight set aside on both."""
        deadline = time.monotonic() + max(1.0, wait_seconds)
        got = None
        while got is None:
            cp_side = await check.run(count_with_checkpoint, check.spec, [])
            cp = self._done(cp_side.checkpoint)
            async with check.pg.transaction(isolation="repeatable_read", readonly=True):
                pg_rows = await check.pt.count()
                changed, _n, keys = await self.in_flight(check, cp)
                pg_changed = await check.pt.count_by_key(keys) if keys else 0
            raws = []
            for k in keys or []:
                b = check.ks.from_postgres(k)
                if b is None:
                    changed = None  # a key whose SQLite spelling is unknown: cannot be set aside exactly
                    break
                raws.append(b.raw)
            if changed is not None:
                side = await check.run(count_with_checkpoint, check.spec, raws)
                if side.data_version == cp_side.data_version:
                    got = (side.count, pg_rows, side.count - len(side.rows), pg_rows - pg_changed)
            if got is None:
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(POLL_SECONDS)
        if got is None:
            if result.mismatched == 0 and check.rows_sqlite != check.rows_postgres:
                result.pending += abs(check.rows_sqlite - check.rows_postgres)
                note = (f"row totals differ ({check.rows_sqlite} in SQLite, {check.rows_postgres} in Postgres) and "
                        f"could not be taken at one moment in {max(1.0, wait_seconds):g} s")
                result.add_reason(note)
            return
        sq_rows, pg_rows, sq_settled, pg_settled = got
        result.rows_sqlite, result.rows_postgres = sq_rows, pg_rows
        gap = sq_settled - pg_settled
        if gap == 0 or result.mismatched:
            return
        if gap > 0:
            result.missing += gap
        else:
            result.extra += -gap
        note = (f"{sq_settled} row(s) in SQLite and {pg_settled} in Postgres (keys changed since set aside), yet no "
                "key was found to differ")
        result.add_reason(note)


# --- repair: replaying keys through the way back ---------------------------------------------------


async def for_table(pg, names: Names, schema: str, spec: TableSpec) -> ReverseEvidence:
    """The evidence for one table of a cut-over source."""
    from syncd.reverse import capture

    gen = await capture.generation(pg, names)
    rows = await pg.fetch(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a JOIN pg_class c ON "
        "c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2 "
        "AND a.attnum > 0 AND NOT a.attisdropped", schema, spec.name)
    types = dict((r[0], r[1]) for r in rows)
    return ReverseEvidence(names, gen.id if gen else None, [types[k] for k in spec.key])


async def respelled(pg, ev: ReverseEvidence, keys: list[tuple]) -> list[bool]:
    """For each key (Postgres values, repair.way_back_keys): whether Postgres's key type
    gives it back in another spelling ('ABC…'::uuid is 'abc…', 'c1'::character(8) is
    'c1      '). A replay of such a key reaches the row of Postgres's spelling, never the
    SQLite row under this one."""
    from syncd.reverse.values import family, normalize
    from syncd.types import PgType

    import asyncpg

    if not keys:
        return []
    fams = [family(t) for t in ev.key_types]
    cols = ", ".join(f"k{i}" for i in range(len(fams)))
    arrays = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(ev.key_types))
    try:
        got = await pg.fetch(f"SELECT {cols} FROM unnest({arrays}) WITH ORDINALITY AS u({cols}, ord) ORDER BY ord",
                             *[list(c) for c in zip(*keys)])
    except asyncpg.DataError:  # a key Postgres's type cannot hold ('not-a-uuid'): no Postgres key is it
        if len(keys) == 1:
            return [True]
        half = len(keys) // 2
        return await respelled(pg, ev, keys[:half]) + await respelled(pg, ev, keys[half:])
    # The text family only: there the spelling is the value (a number or an instant has none).
    return [any(f is PgType.TEXT and isinstance(asked, str) and normalize(f, back) != asked
                for f, back, asked in zip(fams, r, k)) for r, k in zip(got, keys)]


async def enqueue(pg, names: Names, ev: ReverseEvidence, spec: TableSpec, tid: int, keys: list[tuple]) -> int:
    """Record changelog entries in Postgres for keys (Postgres values, repair.way_back_keys),
    as if the application had touched those rows: the way back then copies each key's
    current Postgres row to SQLite, or deletes it there. Returns the recording transaction's id."""
    from syncd.reverse.capture import OP_UPDATE
    from syncd.reverse.reader import SESSION_SETTINGS

    arrays = ", ".join(f"${i + 2}::{t}[]" for i, t in enumerate(ev.key_types))
    cols = ", ".join(f"k{i}" for i in range(len(spec.key)))
    texts = ", ".join(f"k{i}::text" for i in range(len(spec.key)))
    async with pg.transaction():
        for setting in SESSION_SETTINGS:
            await pg.execute(setting.replace("SET ", "SET LOCAL ", 1))
        txid = await pg.fetchval("SELECT txid_current()")
        await pg.execute(f"INSERT INTO {names.changelog} (tid, op, key) SELECT $1, {OP_UPDATE}, ARRAY[{texts}] "
                         f"FROM unnest({arrays}) AS u({cols})", tid, *[list(c) for c in zip(*keys)])
        await pg.execute("SELECT pg_notify($1, '')", names.channel)
    return txid


async def copy_again(pg, names: Names, tid: int) -> int:
    """Record an entry in Postgres's changelog that has the way back copy the table again
    in full from Postgres (as a TRUNCATE there does, said as asked for by a repair), for a table whose differing
    rows are not all known by key. Returns the recording transaction's id."""
    async with pg.transaction():
        txid = await pg.fetchval("SELECT txid_current()")
        await pg.execute(f"INSERT INTO {names.changelog} (tid, op, key) VALUES ($1, {OP_TRUNCATE}, $2)", tid,
                         REPAIR_COPY)
        await pg.execute("SELECT pg_notify($1, '')", names.channel)
    return txid


def covered(cp_text: str | None, generation: str | None, txid: int) -> str:
    """SQL-free check data for `applied_through`: the done snapshot to test `txid` against."""
    cp = ReverseCheckpoint.decode(cp_text)
    return cp.done if cp is not None and cp.generation == generation else NOTHING


async def apply_through_way_back(settings, source, pg, worker_run, names: Names, generation: str | None,
                                 txid: int, timeout: float, in_daemon: bool, copying: set[str] | None = None) -> str:
    """Until SQLite's checkpoint covers transaction `txid` (entries recorded by enqueue or
    copy_again), and the tables in `copying` are copied: by the daemon running the source,
    or by a reverse stream run here."""
    from syncd.rollback import _wait, drain

    async def through(_conn, _worker) -> bool:
        done = covered(await worker_run(applier.read_meta, META_KEY), generation, txid)
        if not await pg.fetchval("SELECT txid_visible_in_snapshot($1, $2::text::txid_snapshot)", txid, done):
            return False
        # A table copied again (copy_again) is repaired once its copy is done and it streams
        # again, not when it is marked.
        if not copying:
            return True
        if copying & set(await worker_run(applier.read_reload)):
            return False
        return not await pg.fetchval(
            f"SELECT count(*) FROM {quote_pg_ident(names.bk)}.tables WHERE source = $1 AND table_name = ANY($2) "
            "AND state <> 'streaming'", names.source, sorted(copying))

    if in_daemon:
        if not await _wait(lambda: through(None, None), timeout):
            raise TimeoutError(f"the daemon's way back did not apply the repair within {timeout:g} s")
        return "applied by this daemon's way back"
    return await drain(settings, source, pg, None, timeout, until=through)
