"""A first load COPYs into the Postgres table without its primary key and builds the
key once every row is in (ddl.defer_primary_key). The table streams with its key as
before; a load stopped midway (kill -9 included) resumes without the key and adds it
when it finishes; rows that cannot take the key hold the table with the key named;
a key a foreign key refers to is never dropped; a reload aside, of a table Postgres
already holds rows of, keeps the live table's key throughout."""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest

from syncd.identifiers import qualified
from syncd.model import Column, TableSpec
from syncd.postgres import ddl
from syncd.types import PgType
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, wait_caught_up

ROWS = 30_000


def make_file(path, rows: int = ROWS) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute('CREATE TABLE "pay ""lines""" (region TEXT, at REAL, amount REAL, note TEXT, '
                 "PRIMARY KEY (region, at))")
    conn.execute("BEGIN")
    conn.executemany('INSERT INTO "pay ""lines""" VALUES (?, ?, ?, ?)',
                     ((f"r{i % 7}", i + 0.5, i * 1.25, f"line {i}") for i in range(rows)))
    conn.execute("COMMIT")
    conn.close()


async def table_state(dsn) -> tuple[str | None, int, list[str]]:
    """(state, rows loaded, the Postgres table's primary key columns)."""
    conn = await asyncpg.connect(dsn)
    try:
        r = await conn.fetchrow("SELECT state, snapshot_rows FROM syncd.tables WHERE table_name = 'pay \"lines\"'")
        key = await primary_key(conn)
        return (r["state"], r["snapshot_rows"], key) if r else (None, 0, key)
    except asyncpg.UndefinedTableError:
        return None, 0, []
    finally:
        await conn.close()


async def primary_key(conn, table: str = 'app."pay ""lines"""') -> list[str]:
    return [r[0] for r in await conn.fetch(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) "
        "WHERE i.indrelid = to_regclass($1) AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
        table)]


def config(make_config, db):
    return make_config([{"name": "app", "path": str(db)}],
                       sections={"stream": {"snapshot_chunk_rows": 100}, "verify": {"interval_seconds": 0}})


async def loading_past(dsn, n: int) -> bool:
    state, rows, _ = await table_state(dsn)
    return state == "loading" and rows >= n


async def test_first_load_streams_with_its_key_and_resumes_after_kill9_without_it(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_file(db)
    cfg = config(make_config, db)
    with DaemonProcess(cfg, tmp_path / "one.log") as d:
        await eventually(lambda: loading_past(pg_dsn, 5_000), 120, "the load to pass 5000 rows", d)
        d.kill9()
    state, rows, key = await table_state(pg_dsn)
    assert state == "loading" and 0 < rows < ROWS
    assert key == []  # mid-load: the key is built when every row is in
    app = sqlite3.connect(db, isolation_level=None)
    app.execute('UPDATE "pay ""lines""" SET amount = -1 WHERE region = \'r3\'')  # changed while syncd is down
    app.execute('INSERT INTO "pay ""lines""" VALUES (\'new\', 1.5, 2.0, NULL)')
    app.close()
    with DaemonProcess(cfg, tmp_path / "two.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=300)
        assert f"snapshot resuming after {rows} rows" in d.log()  # resumed, not started over
        assert d.stop() == 0
    state, _, key = await table_state(pg_dsn)
    assert state == "streaming" and key == ["region", "at"]
    problems = await compare_table(str(db), pg_dsn, "app", 'pay "lines"')
    assert problems == [], f"{len(problems)} differences, e.g. {problems[:3]}"


async def test_rows_that_cannot_take_the_key_hold_the_table_naming_it(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_file(db)
    cfg = config(make_config, db)
    with DaemonProcess(cfg, tmp_path / "one.log") as d:
        await eventually(lambda: loading_past(pg_dsn, 2_000), 120, "the load to pass 2000 rows", d)
        assert d.stop() == 0
    conn = await asyncpg.connect(pg_dsn)
    try:  # a row Postgres holds twice once the load is done: a key Postgres cannot build
        await conn.execute('INSERT INTO app."pay ""lines""" VALUES (\'r0\', 0.5, 0, \'twice\')')
    finally:
        await conn.close()
    with DaemonProcess(cfg, tmp_path / "two.log") as d:
        await eventually(lambda: _held(pg_dsn), 300, "the table to be held", d)
        assert d.alive()
        reason = await _reason(pg_dsn)
        assert "could not take the table's primary key" in reason and "(r0, 0.5)" in reason, reason
        assert d.stop() == 0


async def _held(dsn) -> bool:
    state, _, _ = await table_state(dsn)
    return state == "held"


async def _reason(dsn) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT reason FROM syncd.tables WHERE table_name = 'pay \"lines\"'")
    finally:
        await conn.close()


async def test_a_reload_aside_keeps_the_live_tables_key(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE events (kind TEXT, payload TEXT)")  # keyless: keyed by its rowid
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO events VALUES (?, ?)", [(f"k{i % 10}", "x" * 50) for i in range(30_000)])
    conn.execute("COMMIT")
    conn.execute("DELETE FROM events WHERE rowid % 3 = 0")  # gaps: VACUUM renumbers, the table reloads aside
    cfg = config(make_config, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            first = await primary_key(pg, "app.events")
            assert first != []
            seen: set[tuple[str, ...]] = set()

            async def reloaded() -> bool:
                seen.add(tuple(await primary_key(pg, "app.events")))
                _, aside, after = d.log().partition("into a table aside")
                return bool(aside) and "snapshot finished" in after and \
                    await pg.fetchval("SELECT state FROM syncd.tables WHERE table_name = 'events'") == "streaming"
            conn.execute("VACUUM")
            await eventually(reloaded, 300, "the reload aside to finish", d)
        finally:
            await pg.close()
        assert seen == {tuple(first)}  # never without its key while the reload ran
        assert d.stop() == 0
    conn.close()


@pytest.fixture
async def pg(pg_dsn):
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


SPEC = TableSpec(name="parent", columns=(Column("id", "INTEGER", PgType.BIGINT, True, None),
                                         Column("name", "TEXT", PgType.TEXT, False, None)),
                 key=("id",), without_rowid=False, key_origin="primary key")


async def test_a_key_a_foreign_key_refers_to_stays(pg):
    await pg.execute("CREATE SCHEMA s")
    await pg.execute(ddl.create_table_sql("s", SPEC))
    await pg.execute("CREATE TABLE s.child (parent_id bigint REFERENCES s.parent (id))")
    async with pg.transaction():
        assert await ddl.defer_primary_key(pg, "s", SPEC) is False
    assert await primary_key(pg, qualified("s", "parent")) == ["id"]
    await pg.execute("DROP TABLE s.child")
    async with pg.transaction():
        assert await ddl.defer_primary_key(pg, "s", SPEC) is True
    assert await primary_key(pg, qualified("s", "parent")) == []
    await ddl.add_primary_key(pg, "s", SPEC)
    assert await primary_key(pg, qualified("s", "parent")) == ["id"]
    assert await ddl.primary_key_name(pg, qualified("s", "parent")) == "parent_pkey"  # as CREATE TABLE names it


async def test_a_row_postgres_refuses_mid_load_is_named(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_file(db, 3_000)
    app = sqlite3.connect(db, isolation_level=None)
    app.execute('UPDATE "pay ""lines""" SET amount = -5 WHERE region = \'r3\' AND at = 1606.5')
    app.close()
    cfg = config(make_config, db)
    out = run_cli(cfg, "init")
    assert out.returncode == 0, out.stdout + out.stderr
    conn = await asyncpg.connect(pg_dsn)
    try:  # a constraint of the user's own on syncd's table, which that one row breaks
        await conn.execute('ALTER TABLE app."pay ""lines""" ADD CONSTRAINT no_refunds CHECK (amount >= 0)')
    finally:
        await conn.close()
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await eventually(lambda: _held(pg_dsn), 300, "the table to be held", d)
        reason = await _reason(pg_dsn)
        assert "key ('r3', 1606.5)" in reason and "no_refunds" in reason, reason
        assert d.stop() == 0


async def test_the_key_build_is_not_held_to_one_statements_limit(pg_dsn):
    # A session whose statements may take 1 ms, as a large table's index build would
    # exceed [postgres] statement_timeout_seconds.
    conn = await asyncpg.connect(pg_dsn, server_settings={"statement_timeout": "1"})
    try:
        await conn.execute("SET statement_timeout = 0")
        await conn.execute("CREATE SCHEMA s")
        await conn.execute(ddl.create_table_sql("s", SPEC))
        await ddl.defer_primary_key(conn, "s", SPEC)
        await conn.execute("INSERT INTO s.parent SELECT g, 'n' || g FROM generate_series(1, 300000) g")
        await conn.execute("RESET statement_timeout")
        with pytest.raises(asyncpg.QueryCanceledError):
            async with conn.transaction():
                await ddl.add_primary_key(conn, "s", SPEC)
        async with conn.transaction():
            await ddl.add_primary_key(conn, "s", SPEC, timeout=120)
        assert await primary_key(conn, qualified("s", "parent")) == ["id"]
    finally:
        await conn.close()
