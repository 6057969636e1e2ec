"""A key whose index compares otherwise than its column: `k TEXT COLLATE NOCASE` keyed by
`PRIMARY KEY (k COLLATE BINARY)` (or a BINARY unique index) holds 'k010' and 'K010' as
two rows. syncd reads, pages and matches such keys under the index's collation: the
load carries every row across its chunks' boundaries, and a change to one row leaves
its case-twin alone."""

from __future__ import annotations

import sqlite3

import pytest

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import pg_rows, wait_caught_up

PAIRS = 150  # 'k000'..'k149' and 'K000'..'K149': chunks of 100 rows split pairs at their boundaries
SHAPES = {
    "primary key": "CREATE TABLE t (k TEXT COLLATE NOCASE, v INTEGER, PRIMARY KEY (k COLLATE BINARY))",
    "without rowid": "CREATE TABLE t (k TEXT COLLATE NOCASE, v INTEGER, PRIMARY KEY (k COLLATE BINARY)) "
                     "WITHOUT ROWID",
    "unique index": "CREATE TABLE t (k TEXT COLLATE NOCASE NOT NULL, v INTEGER, UNIQUE (k COLLATE BINARY))",
}


def make_app(db, ddl: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute(ddl)
    conn.execute("INSERT INTO t VALUES ('a0', 0)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(f"k{n:03d}", n) for n in range(PAIRS)])
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(f"K{n:03d}", -n) for n in range(PAIRS)])
    conn.close()


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_case_twins_under_a_binary_key_are_loaded_and_changed_apart(tmp_path, make_config, pg_dsn, shape):
    db = tmp_path / "app.db"
    make_app(db, SHAPES[shape])
    cfg = make_config([{"name": "app", "path": str(db)}],
                      sections={"stream": {"snapshot_chunk_rows": 100}, "verify": {"interval_seconds": 0}})
    key = ["k"] if shape == "unique index" else None
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT count(*) FROM app.t") == [(1 + 2 * PAIRS,)]
        assert await compare_table(str(db), pg_dsn, "app", "t", key) == []
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("UPDATE t SET v = 1000 WHERE k = 'k010' COLLATE BINARY")
        conn.execute("DELETE FROM t WHERE k = 'K020' COLLATE BINARY")
        conn.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        twins = await pg_rows(pg_dsn, "SELECT k, v FROM app.t WHERE lower(k) IN ('k010', 'k020')")
        assert sorted(twins) == [("K010", -10), ("k010", 1000), ("k020", 20)]
        assert await compare_table(str(db), pg_dsn, "app", "t", key) == []
        assert d.stop() == 0


@pytest.mark.parametrize("ddl", [
    "CREATE TABLE t (host TEXT, ts REAL, v INTEGER, PRIMARY KEY (host, ts))",
    "CREATE TABLE t (k TEXT COLLATE NOCASE, j REAL, v INTEGER, PRIMARY KEY (k COLLATE BINARY, j)) WITHOUT ROWID",
], ids=["composite", "binary-key-on-nocase-without-rowid"])
def test_the_next_chunk_and_window_seek_along_the_keys_index(tmp_path, ddl):
    """Each chunk of a load, and each window of an audit, starts where the last ended by
    seeking in the key's index (SEARCH), not by walking it from the start (SCAN): a
    collation on the key's side of the row value made SQLite walk."""
    from syncd.config import SourceSettings
    from syncd.sqlite import reader, windows
    from syncd.sqlite.introspect import introspect

    conn = sqlite3.connect(tmp_path / "app.db")
    conn.execute(ddl)
    spec = introspect(conn, SourceSettings(name="app", path=str(tmp_path / "app.db"))).tables["t"]
    sql, params, _ = reader._chunk_query(spec, ("a", 1.0), 100, "*")
    plans = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
    order = windows.ordering([c.name for c in spec.stored_columns], True, spec.key, spec.key_collations)
    window = f"SELECT * FROM t WHERE {windows.past(order)} ORDER BY {windows.ordered_by(order)} LIMIT 1 OFFSET 9"
    plans += [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + window, ("a", 1.0))]
    conn.close()
    assert all(p.startswith("SEARCH") for p in plans), plans
