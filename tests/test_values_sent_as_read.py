"""A load's chunk skips the per-row conversion only when SQLite shows that no value in
it would be changed or refused by the conversion. The check and the converter must
agree value by value and chunk by chunk (whatever way the load walks the table); rows
that need conversion still get it, and a load mixing both kinds of chunk, and the
stream after it, land every value as the conversion makes it."""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest

from syncd.config import SourceSettings
from syncd.rows import RowConverter
from syncd.sqlite import reader
from syncd.sqlite.introspect import introspect
from syncd.types import PgType, ValueMismatch, converter, needs_conversion_filter
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import wait_caught_up

VALUES = [None, 0, 7, -2**63, 2**53 + 1, 2**62, 1.5, -0.0, 1e308, float("inf"), "", "text", "é 漢字", "a\x00b",
          "\x00", "12", "1.5", b"", b"\x00\xff", b"blob"]


def unchanged(before, after) -> bool:
    return type(before) is type(after) and (before is None or before == after or before != before)


@pytest.mark.parametrize("pgtype", [PgType.BIGINT, PgType.DOUBLE, PgType.TEXT, PgType.BYTEA])
def test_the_check_agrees_with_the_converter_value_by_value(tmp_path, pgtype):
    conn = sqlite3.connect(tmp_path / "v.db")
    conn.execute("CREATE TABLE v (n INTEGER PRIMARY KEY, x)")  # no affinity: every value keeps its class
    conn.executemany("INSERT INTO v VALUES (?, ?)", enumerate(VALUES))
    flagged = {n for (n,) in conn.execute(f"SELECT n FROM v WHERE {needs_conversion_filter(pgtype, 'x')}")}
    stored = dict(conn.execute("SELECT n, x FROM v"))
    for n, value in stored.items():
        try:
            same = unchanged(value, converter(pgtype)(value))
        except ValueMismatch:
            same = False
        assert same == (n not in flagged), f"{pgtype.value}: {value!r} flagged={n in flagged}, unchanged={same}"


def test_types_converted_always_are_never_skipped():
    for pgtype in PgType:
        if pgtype not in (PgType.BIGINT, PgType.DOUBLE, PgType.TEXT, PgType.BYTEA):
            assert needs_conversion_filter(pgtype, "x") is None, pgtype


SHAPES = {
    # how the load walks the table: the rowid alias, the rowid beside a configured key, the key's index
    "alias": ("CREATE TABLE m (id INTEGER PRIMARY KEY, host TEXT, ts REAL, v, note TEXT)", {}),
    "rowid": ("CREATE TABLE m (id INTEGER NOT NULL, host TEXT, ts REAL, v, note TEXT)", {"m": ["id"]}),
    "key": ("CREATE TABLE m (id INTEGER, host TEXT, ts REAL, v, note TEXT, PRIMARY KEY (host, ts))", {}),
}


def test_the_check_reads_the_chunks_rows_whatever_the_columns_are_named(tmp_path):
    """The check names the chunk's values c0, c1, ...: a table walked by its key whose
    columns are named so must still be checked over the rows the chunk read."""
    conn = sqlite3.connect(tmp_path / "n.db", isolation_level=None)
    conn.execute('CREATE TABLE t ("c1" TEXT, "c0" TEXT PRIMARY KEY)')
    # ordered by "c1" the rows would come d, b, c, a; by the key "c0" they come a, b, c, d
    conn.execute("INSERT INTO t VALUES ('z NUL ' || char(0), 'a'), ('m', 'b'), ('n', 'c'), ('b', 'd')")
    spec = introspect(conn, SourceSettings(name="app", path=str(tmp_path / "n.db"))).tables["t"]
    conn.execute("BEGIN")
    rows, _ = reader.read_snapshot_chunk(conn, spec, None, 1)
    assert [r[spec.key_indexes[0]] for r in rows] == ["a"]
    assert reader.snapshot_chunk_needs_conversion(conn, spec, None, 1)
    rows, _ = reader.read_snapshot_chunk(conn, spec, ("a",), 2)
    assert not reader.snapshot_chunk_needs_conversion(conn, spec, ("a",), 2)
    conn.execute("COMMIT")


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_check_agrees_with_the_converter_chunk_by_chunk(tmp_path, shape):
    ddl, keys = SHAPES[shape]
    db = tmp_path / "m.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(ddl)
    rows = [(i, f"h{i % 5}", i * 0.5 + 0.25, i + 0.5, f"note {i}") for i in range(1, 60)]
    rows[10] = (11, "h1", 5.75, 11, "an integer in a REAL column")           # needs float()
    rows[33] = (34, "h4", 17.25, 34.5, "a NUL \x00 in a text")                # refused
    rows.append((60, None, 1.0, 60.5, "a NULL key part, with a NUL \x00"))   # sorts first on the key
    conn.executemany("INSERT INTO m VALUES (?, ?, ?, ?, ?)", rows)
    source = SourceSettings(name="app", path=str(db), keys=keys, columns={"m": {"v": "double precision"}})
    spec = introspect(conn, source).tables["m"]
    assert spec.column("v").pgtype is PgType.DOUBLE
    conv = RowConverter(spec)
    conn.execute("BEGIN")
    after, chunks, flagged = None, 0, 0
    while True:
        got, pos = reader.read_snapshot_chunk(conn, spec, after, 7)
        if not got:
            break
        try:
            expected = any(not all(map(unchanged, r, conv.row(r))) for r in got)
        except Exception:  # a refused value: the conversion must run to name it
            expected = True
        assert reader.snapshot_chunk_needs_conversion(conn, spec, after, 7) == expected, (shape, after, got)
        chunks += 1
        flagged += expected
        after = pos
    conn.execute("COMMIT")
    assert chunks == 9 and 2 <= flagged <= 3, (chunks, flagged)


async def test_a_load_of_plain_and_converted_chunks_lands_every_value(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE readings (id INTEGER PRIMARY KEY, level, label, raw BLOB)")
    conn.execute("BEGIN")
    for i in range(1, 351):
        # rows 101-200 hold whole numbers as integers in the column Postgres keeps as double,
        # rows 201-300 integers in the one it keeps as text
        level = i if 101 <= i <= 200 else i + 0.5
        label = i if 201 <= i <= 300 else f"label {i}"
        conn.execute("INSERT INTO readings VALUES (?, ?, ?, ?)", (i, level, label, bytes([i % 256])))
    conn.execute("INSERT INTO readings VALUES (351, 2.5, NULL, NULL)")
    conn.execute("COMMIT")
    cfg = make_config([{"name": "app", "path": str(db), "columns": {"readings": {"level": "double precision"}}}],
                      sections={"stream": {"snapshot_chunk_rows": 100}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        # the stream: plain batches and batches that need converting, one transaction each
        conn.execute("UPDATE readings SET level = level + 1000 WHERE id BETWEEN 301 AND 320")
        conn.execute("UPDATE readings SET level = 5000 WHERE id = 321")
        conn.execute("UPDATE readings SET label = 6000 WHERE id = 322")
        conn.execute("INSERT INTO readings VALUES (352, 1.25, 'new', x'00')")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        r = run_cli(cfg, "verify")
        assert r.returncode == 0, r.stdout + r.stderr
        assert d.stop() == 0
    pg = await asyncpg.connect(pg_dsn)
    try:
        assert await pg.fetchval("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                                 "'app.readings'::regclass AND attname = 'level'") == "double precision"
        got = {r["id"]: tuple(r) for r in await pg.fetch("SELECT id, level, label, raw FROM app.readings")}
    finally:
        await pg.close()
    assert len(got) == 352
    assert got[310] == (310, 1310.5, "label 310", bytes([310 % 256]))
    assert got[321] == (321, 5000.0, "label 321", bytes([321 % 256]))
    assert got[322] == (322, 322.5, "6000", bytes([322 % 256]))
    assert got[352] == (352, 1.25, "new", b"\x00")
    assert got[150] == (150, 150.0, "label 150", bytes([150]))
    assert got[250] == (250, 250.5, "250", bytes([250]))
    assert got[340] == (340, 340.5, "label 340", bytes([340 % 256]))
    assert got[351] == (351, 2.5, None, None)
