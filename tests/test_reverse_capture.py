"""Capture in Postgres for the way back, and a reader that never skips a late committer.

Sequence numbers are taken at insert time, not commit time: a transaction that
started first and commits last has the smaller number, and a reader taking
"everything after the last number it saw" skips it for ever. syncd's reader takes
what became visible between two snapshots (PgQ's technique). These tests run the
capture triggers and the reader against a real Postgres with writers committing out
of order, first one pinned case, then many writers at random."""

from __future__ import annotations

import asyncio
import random
import secrets

import asyncpg

from syncd.model import Column, TableSpec
from syncd.postgres.bookkeeping import ensure_bookkeeping, lock_key
from syncd.reverse import capture, reader
from syncd.reverse.capture import Names
from syncd.reverse.checkpoint import start
from syncd.reverse.reader import SourceTable
from syncd.types import PgType

NAMES = Names("syncd", "src", lock_key("src"))
SPEC = TableSpec(name='odd "t"; --', columns=(Column("id", "INTEGER", PgType.BIGINT, True, None),
                                                Column("v", "TEXT", PgType.TEXT, False, None)),
                 key=("id",), without_rowid=False, key_origin="primary key")
TABLE = 'app."odd ""t""; --"'
TABLES = {1: SourceTable(1, SPEC, ("bigint",))}


async def _setup(dsn: str) -> asyncpg.Connection:
    pg = await asyncpg.connect(dsn)
    await ensure_bookkeeping(pg, "syncd")
    await pg.execute("CREATE SCHEMA app")
    await pg.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, v text)")
    async with pg.transaction():
        await capture.start_generation(pg, NAMES, "app")
        await capture.arm(pg, NAMES, "app", SPEC.name, 1, ["id"])
    return pg


async def test_a_transaction_committing_late_with_a_smaller_number_is_taken(pg_dsn):
    pg = await _setup(pg_dsn)
    early, late = await asyncpg.connect(pg_dsn), await asyncpg.connect(pg_dsn)
    try:
        gen = (await capture.generation(pg, NAMES)).id
        await early.execute("BEGIN")
        await early.execute(f"INSERT INTO {TABLE} VALUES (1, 'started first, commits last')")
        await late.execute(f"INSERT INTO {TABLE} VALUES (2, 'started last, commits first')")
        seqs = dict((r[0], r[1]) for r in await pg.fetch(f"SELECT key[1]::int, seq FROM {NAMES.changelog}"))
        assert list(seqs) == [2]  # the earlier transaction's entry is invisible until it commits

        first = await reader.read_batch(pg, NAMES, "app", TABLES, start(gen), 100)
        assert [r[0] for r in first.tables[1].rows] == [2]
        await early.execute("COMMIT")
        seqs = dict((r[0], r[1]) for r in await pg.fetch(f"SELECT key[1]::int, seq FROM {NAMES.changelog}"))
        assert seqs[1] < seqs[2]  # the trap: "every entry after seq 2" would never see key 1

        second = await reader.read_batch(pg, NAMES, "app", TABLES, first.after, 100)
        assert [r[0] for r in second.tables[1].rows] == [1]
        third = await reader.read_batch(pg, NAMES, "app", TABLES, second.after, 100)
        assert third.empty
        assert await reader.pending(pg, NAMES, third.after) == (0, 0.0)
    finally:
        for c in (pg, early, late):
            await c.close()


async def test_many_writers_committing_out_of_order_lose_nothing(pg_dsn):
    """Writers hold their transactions open for random times (so commit order differs
    from txid and seq order) while a reader follows with small batches, splitting
    transactions across batches; the reader's mirror ends equal to the table."""
    pg = await _setup(pg_dsn)
    rnd = random.Random(7)
    gen = (await capture.generation(pg, NAMES)).id
    mirror: dict[int, str] = {}
    stop = asyncio.Event()

    async def writer(n: int) -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            for i in range(25):
                async with conn.transaction():
                    for _ in range(rnd.randint(1, 6)):
                        k = rnd.randint(1, 300)
                        op = rnd.random()
                        if op < 0.6:
                            await conn.execute(f"INSERT INTO {TABLE} VALUES ($1, $2) ON CONFLICT (id) DO UPDATE "
                                               "SET v = EXCLUDED.v", k, f"w{n}.{i}")
                        elif op < 0.8:
                            await conn.execute(f"DELETE FROM {TABLE} WHERE id = $1", k)
                        else:  # a key change
                            await conn.execute(f"UPDATE {TABLE} SET id = $2 WHERE id = $1", k, k + 1000)
                    await asyncio.sleep(rnd.uniform(0, 0.05))  # commit later than others that started after
        except asyncpg.UniqueViolationError:
            pass  # two writers moved keys onto one another: that transaction rolled back
        except asyncpg.DeadlockDetectedError:
            pass
        finally:
            await conn.close()

    async def follow(cp):
        while True:
            finished = stop.is_set()  # every writer committed before this read's snapshot
            batch = await reader.read_batch(pg, NAMES, "app", TABLES, cp, rnd.randint(1, 40))
            tb = batch.tables.get(1)
            if tb is not None:
                for row in tb.rows:
                    mirror[row[0]] = row[1]
                for (key,) in tb.deletes:
                    mirror.pop(key, None)
            cp = batch.after
            if batch.empty and finished and batch.before.target is None:
                return cp
            if batch.empty:
                await asyncio.sleep(0.005)

    follower = asyncio.create_task(follow(start(gen)))
    await asyncio.gather(*(writer(n) for n in range(8)))
    stop.set()
    cp = await follower
    try:
        truth = {r[0]: r[1] for r in await pg.fetch(f"SELECT id, v FROM {TABLE}")}
        assert mirror == truth
        assert truth  # the writers left rows behind
        assert (await reader.pending(pg, NAMES, cp))[0] == 0
        assert await reader.prune(pg, NAMES, cp.done, cp.n) > 0
        assert (await capture.generation(pg, NAMES)).pruned_n == cp.n > 0  # what a file put back is measured by
        assert await pg.fetchval(f"SELECT count(*) FROM {NAMES.changelog}") == 0
    finally:
        await pg.close()


async def test_capture_needs_no_privilege_and_ignores_the_sessions_settings(pg_dsn):
    """The application's role may not touch syncd's schema, and its session may print
    numbers and dates its own way: the key recorded is the same."""
    role = f"syncd_test_app_{secrets.token_hex(4)}"  # roles are the whole server's: a name of its own
    pg = await _setup(pg_dsn)
    try:
        gen = (await capture.generation(pg, NAMES)).id
        await pg.execute(f"CREATE ROLE {role} LOGIN")
        await pg.execute(f"GRANT USAGE ON SCHEMA app TO {role}; GRANT ALL ON {TABLE} TO {role}")
        app = await asyncpg.connect(pg_dsn, user=role,
                                    server_settings={"extra_float_digits": "-15", "datestyle": "SQL, DMY"})
        try:
            await app.execute(f"INSERT INTO {TABLE} VALUES (9007199254740993, 'big')")
            assert await app.fetchval("SELECT has_schema_privilege('syncd', 'USAGE')") is False
        finally:
            await app.close()
        batch = await reader.read_batch(pg, NAMES, "app", TABLES, start(gen), 10)
        assert batch.tables[1].rows == [(9007199254740993, "big")]
    finally:
        if await pg.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            await pg.execute(f"DROP OWNED BY {role}")
            await pg.execute(f"DROP ROLE {role}")
        await pg.close()
