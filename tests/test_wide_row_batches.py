"""A batch of a wide table's changes holds about as many values as a batch of a narrow
table's: `[stream] batch_size` counts rows of up to 8 columns (model.SIZED_FOR_COLUMNS),
and a change to a wider table counts its columns, so the daemon's memory for a batch,
and for the one read ahead beside it, stays bounded whatever the width. A narrow table
in the same file keeps its full batches; a batch is never cut below 100 changes; and
every change still arrives, in both directions: the way back (Postgres to SQLite after a
cutover) reads its batches the same way."""

from __future__ import annotations

import sqlite3

import asyncpg

from syncd.config import SourceSettings
from syncd.model import SIZED_FOR_COLUMNS, Column, TableSpec
from syncd.postgres.bookkeeping import ensure_bookkeeping, lock_key
from syncd.reverse import capture as reverse_capture
from syncd.reverse import reader as reverse_reader
from syncd.reverse.capture import Names
from syncd.reverse.checkpoint import start
from syncd.sqlite import reader
from syncd.sqlite.introspect import introspect
from syncd.types import PgType
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import wait_caught_up
from tests.test_change_batches import install


def wide_ddl(name: str, columns: int) -> str:
    return f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, " + ", ".join(f"c{i} REAL" for i in range(1, columns)) + ")"


def fill(conn: sqlite3.Connection, name: str, columns: int, rows: int) -> None:
    conn.executemany(f"INSERT INTO {name} VALUES ({', '.join('?' * columns)})",
                     [(i, *(float(i + c) for c in range(1, columns))) for i in range(1, rows + 1)])


def file_with(tmp_path, tables: dict[str, int], rows: int):
    """A file with capture installed, holding `rows` rows in each of `tables` (name ->
    column count); returns the connection, and each table's (tid, spec)."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for name, columns in tables.items():
        conn.execute(wide_ddl(name, columns))
        fill(conn, name, columns, rows)
    install(db)
    specs = introspect(conn, SourceSettings(name="app", path=db)).tables
    tids = dict(conn.execute("SELECT name, tid FROM _syncd_tables").fetchall())
    return conn, {name: (tids[name], specs[name]) for name in tables}


def test_a_wide_tables_batch_holds_as_many_values_and_a_narrow_one_keeps_its_size(tmp_path):
    conn, t = file_with(tmp_path, {"wide": 40, "narrow": 2}, rows=2000)
    conn.execute("UPDATE wide SET c1 = c1 + 1")  # changes 1..2000
    conn.execute("UPDATE narrow SET c1 = c1 + 1")  # changes 2001..4000
    streaming = {tid: spec for tid, spec in t.values()}
    limit = 1000
    wide_tid, wide_spec = t["wide"]
    per_batch = limit * SIZED_FOR_COLUMNS // len(wide_spec.columns)
    assert 100 < per_batch < limit

    batch = reader.read_changes(conn, 0, limit, streaming)
    assert batch.entries == per_batch and batch.last_seq == per_batch
    assert sorted(batch.tables[wide_tid].upserts) == conn.execute(
        "SELECT * FROM wide WHERE id <= ? ORDER BY id", (per_batch,)).fetchall()
    assert batch.max_seq == 4000

    # The narrow table's changes come in batches of the full size.
    narrow_tid, _ = t["narrow"]
    batch = reader.read_changes(conn, 2000, limit, streaming)
    assert batch.entries == limit and set(batch.tables) == {narrow_tid}

    # Every change is read, batch after batch, none twice.
    seen, after = 0, 0
    while True:
        batch = reader.read_changes(conn, after, limit, streaming)
        if batch.empty:
            break
        assert batch.after_seq == after and batch.last_seq == after + batch.entries
        seen += batch.entries
        after = batch.last_seq
    assert seen == 4000


def test_a_very_wide_tables_batch_is_never_cut_below_a_hundred_changes(tmp_path):
    conn, t = file_with(tmp_path, {"very_wide": 400}, rows=300)
    conn.execute("UPDATE very_wide SET c1 = c1 + 1")
    tid, spec = t["very_wide"]
    assert 1000 * SIZED_FOR_COLUMNS // len(spec.columns) < 100
    batch = reader.read_changes(conn, 0, 1000, {tid: spec})
    assert batch.entries == 100


async def test_every_change_to_a_wide_table_arrives_in_the_smaller_batches(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(wide_ddl("wide", 41))
    conn.execute(wide_ddl("narrow", 3))
    fill(conn, "wide", 41, 3000)
    fill(conn, "narrow", 3, 3000)
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"stream": {"batch_size": 500}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute("BEGIN")
        conn.execute("UPDATE wide SET c7 = c7 * 2, c40 = -id")  # one large transaction of wide rows
        conn.execute("UPDATE narrow SET c2 = c2 + 0.5")
        conn.execute("DELETE FROM wide WHERE id % 7 = 0")
        conn.execute("COMMIT")
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=120)
        for table in ("wide", "narrow"):
            assert await compare_table(str(db), pg_dsn, "app", table) == [], table
        assert d.stop() == 0
    conn.close()


async def test_the_way_back_reads_a_wide_tables_changes_in_batches_of_as_many_values(pg_dsn):
    columns = 40
    spec = TableSpec(name="wide", columns=(Column("id", "INTEGER", PgType.BIGINT, True, None),) + tuple(
        Column(f"c{i}", "REAL", PgType.DOUBLE, False, None) for i in range(1, columns)),
        key=("id",), without_rowid=False, key_origin="primary key")
    names, tables = Names("syncd", "src", lock_key("src")), {1: reverse_reader.SourceTable(1, spec, ("bigint",))}
    pg = await asyncpg.connect(pg_dsn)
    try:
        await ensure_bookkeeping(pg, "syncd")
        await pg.execute("CREATE SCHEMA app")
        await pg.execute("CREATE TABLE app.wide (id bigint PRIMARY KEY, "
                         + ", ".join(f"c{i} double precision" for i in range(1, columns)) + ")")
        async with pg.transaction():
            generation = await reverse_capture.start_generation(pg, names, "app")
            await reverse_capture.arm(pg, names, "app", "wide", 1, ["id"])
        await pg.execute("INSERT INTO app.wide (id, c1) SELECT i, i FROM generate_series(1, 2000) AS i")  # one transaction
        limit = 1000
        per_batch = limit * SIZED_FOR_COLUMNS // columns
        cp, seen, sizes = start(generation), [], []
        while True:
            batch = await reverse_reader.read_batch(pg, names, "app", tables, cp, limit)
            if batch.empty and batch.before.target is None:
                break
            sizes.append(batch.entries)
            seen += [row[0] for row in batch.tables[1].rows] if 1 in batch.tables else []
            cp = batch.after
        assert sizes == [per_batch] * (2000 // per_batch) + ([2000 % per_batch] if 2000 % per_batch else []), sizes
        assert sorted(seen) == list(range(1, 2001))  # every change, none twice
    finally:
        await pg.close()
