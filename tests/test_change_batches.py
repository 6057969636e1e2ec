"""What a change batch read from the changelog holds: each changed key once, as its row
is now (an upsert) or as gone (a delete), whatever happened to it in between; integer 1
and real 1.0 are two keys; a change to a NULL key is counted, not sent. One UPDATE of
every row (the common case, read without a branch per row) and mixed transactions give
the same kind of answer, checked against the file itself."""

from __future__ import annotations

import asyncio
import sqlite3

from syncd.config import Settings, SourceSettings
from syncd.reconcile import install_capture
from syncd.session import SourceSession
from syncd.sqlite import reader
from syncd.sqlite.introspect import introspect


def install(db) -> None:
    settings = Settings(postgres={"dsn": "postgresql://syncd@127.0.0.1/unused"}, metrics={"listen": ""},
                        sources=[{"name": "app", "path": str(db)}])

    async def run() -> None:
        session = SourceSession(settings, settings.sources[0])
        try:
            await install_capture(session)  # SQLite side only
        finally:
            await session.close()

    asyncio.run(run())


def setup(tmp_path, ddl: str, rows: list[tuple]):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(ddl)
    conn.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(rows[0]))})", rows)
    install(db)
    spec = introspect(conn, SourceSettings(name="app", path=db)).tables["t"]
    tid = conn.execute("SELECT tid FROM _syncd_tables WHERE name = 't'").fetchone()[0]
    return conn, spec, tid


def read_all(conn, spec, tid, limit: int = 100_000):
    top = reader.max_seq(conn)
    batch = reader.read_changes(conn, 0, limit, {tid: spec})
    assert batch.last_seq == top
    return batch.tables[tid]


def test_one_update_of_every_row_is_every_row_as_it_is_now(tmp_path):
    conn, spec, tid = setup(tmp_path, "CREATE TABLE t (host TEXT, ts REAL, cpu REAL, PRIMARY KEY (host, ts))",
                            [(f"h{i % 5}", 1000.0 + i, 0.5) for i in range(2000)])
    conn.execute("UPDATE t SET cpu = cpu + ts")
    got = read_all(conn, spec, tid)
    assert sorted(got.upserts) == sorted(conn.execute("SELECT host, ts, cpu FROM t").fetchall())
    assert got.deletes == [] and got.null_keys == 0
    assert got.ops == {"insert": 0, "update": 2000, "delete": 0}


def test_inserts_are_counted_as_inserts(tmp_path):
    conn, spec, tid = setup(tmp_path, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", [(1, "a")])
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(2, 502)])
    got = read_all(conn, spec, tid)
    assert sorted(got.upserts) == [(i, f"v{i}") for i in range(2, 502)]
    assert got.ops == {"insert": 500, "update": 0, "delete": 0}


def test_mixed_changes_leave_each_key_once_as_it_ended(tmp_path):
    conn, spec, tid = setup(tmp_path, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
                            [(i, f"v{i}") for i in range(1, 101)])
    conn.execute("BEGIN")
    conn.execute("UPDATE t SET v = 'once' WHERE id <= 10")
    conn.execute("UPDATE t SET v = 'twice' WHERE id <= 5")  # the same keys again
    conn.execute("DELETE FROM t WHERE id BETWEEN 50 AND 59")
    conn.execute("DELETE FROM t WHERE id = 60")
    conn.execute("INSERT INTO t VALUES (60, 'back')")  # gone, then back
    conn.execute("INSERT INTO t VALUES (200, 'new')")
    conn.execute("DELETE FROM t WHERE id = 200")  # new, then gone
    conn.execute("COMMIT")
    got = read_all(conn, spec, tid)
    assert sorted(got.upserts) == sorted(conn.execute("SELECT * FROM t WHERE id <= 10 OR id = 60").fetchall())
    assert sorted(got.deletes) == [(i,) for i in range(50, 60)] + [(200,)]
    assert sum(got.ops.values()) == 11 + 11  # every key once


def test_integer_one_and_real_one_are_two_keys_and_a_null_key_is_counted(tmp_path):
    conn, spec, tid = setup(tmp_path, "CREATE TABLE t (k, v TEXT, PRIMARY KEY (k))", [("seed", "x")])
    conn.execute("INSERT INTO t VALUES (1, 'int')")
    conn.execute("DELETE FROM t WHERE k = 1")
    conn.execute("INSERT INTO t VALUES (1.0, 'real')")
    got = read_all(conn, spec, tid)
    # The integer key is gone (the row with 1 now holds the real 1.0): a delete, and an upsert of the real.
    assert [(type(k[0]), k[0]) for k in got.deletes] == [(int, 1)]
    assert [(type(r[0]), r[1]) for r in got.upserts] == [(float, "real")]

    conn.execute("INSERT INTO t VALUES (NULL, 'no key')")
    top = reader.max_seq(conn)
    batch = reader.read_changes(conn, top - 1, 10, {tid: spec})
    assert batch.tables[tid].null_keys == 1 and batch.tables[tid].upserts == []
