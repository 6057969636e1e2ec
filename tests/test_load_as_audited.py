"""The audit before a load also learns whether every value is already what is sent for
its column (its storage class, no NUL in a text). A load that reads the table in one
transaction, unchanged since that audit, then sends every chunk as read without asking
SQLite about each chunk again. A change to the table after the audit, or one value
that needs converting, and each chunk is checked (and converted) as before."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import asyncpg
import pytest

from syncd.config import SourceSettings
from syncd.sqlite import audit, capture
from syncd.sqlite.introspect import introspect
from syncd.types import PgType, audit_prefilter, needs_conversion_filter
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import wait_caught_up

ROWS = 3000
SMALL_CHUNKS = {"stream": {"snapshot_chunk_rows": 200}}  # many chunks: the load reads in one transaction


def make_app(db, rows: int = ROWS) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    # `reading` has no declared type: its reals make it double precision, yet it can
    # hold an integer, which is converted before it is sent.
    conn.execute("CREATE TABLE readings (id INTEGER PRIMARY KEY, sensor TEXT, reading, raw BLOB)")
    conn.executemany("INSERT INTO readings VALUES (?, ?, ?, ?)",
                     ((i, f"s{i % 7}", i + 0.5, bytes([i % 256])) for i in range(1, rows + 1)))
    conn.commit()
    conn.close()


def spec_of(conn, db):
    return introspect(conn, SourceSettings(name="a", path=db)).tables["readings"]


VALUES = [None, 0, 1, -5, 2**53 + 1, -(2**62), 0.0, -0.0, 1.5, 1e300, float("inf"), "", "x", "a\x00b", "\x00",
          "1.5", "é", b"", b"\x00", b"ab"]


@pytest.mark.parametrize("pgtype", [t for t in PgType if needs_conversion_filter(t, "v") is not None])
def test_every_misfit_candidate_is_among_the_values_that_need_converting(pgtype):
    """What lets a plain table's audit select by the conversion filters alone."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (v)")
    conn.executemany("INSERT INTO t VALUES (?)", [(v,) for v in VALUES])
    pre, needs = audit_prefilter(pgtype, "v"), needs_conversion_filter(pgtype, "v")
    rows = conn.execute(f"SELECT v, coalesce({pre}, 0), coalesce({needs}, 0) FROM t").fetchall()
    assert any(p for _, p, _ in rows) and any(not n for _, _, n in rows)  # the values tell them apart
    assert [v for v, p, n in rows if p and not n] == []


def test_the_audit_tells_whether_every_value_is_sent_as_stored(tmp_path):
    db = tmp_path / "app.db"
    make_app(db, 50_000)  # more than one audit window
    conn = sqlite3.connect(db, isolation_level=None)
    spec = spec_of(conn, db)
    assert audit.audit_scan(conn, spec) == ([], True)

    conn.execute("UPDATE readings SET reading = 7 WHERE id = 3")  # an integer: fits, but is converted
    assert audit.audit_scan(conn, spec) == ([], False)

    # Past the first window, after a value that only needs converting: misfits are still all found.
    conn.execute("UPDATE readings SET reading = 'high' WHERE id IN (30000, 49000)")
    misfits, plain = audit.audit_scan(conn, spec)
    assert not plain
    assert [(m.column, m.count, m.sample_keys) for m in misfits] == [("reading", 2, [(30000,), (49000,)])]
    assert misfits[0].describe("readings") == audit.audit_table(conn, spec)[0].describe("readings")


@pytest.mark.parametrize("value", ["a\x00b", 12])
def test_a_text_holding_a_nul_or_a_number_is_not_sent_as_stored(tmp_path, value):
    db = tmp_path / "app.db"
    make_app(db, 100)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body)")
    conn.executemany("INSERT INTO notes VALUES (?, ?)", ((i, f"note {i}") for i in range(1, 50)))
    spec = introspect(conn, SourceSettings(name="a", path=db)).tables["notes"]
    assert audit.audit_scan(conn, spec)[1]
    conn.execute("UPDATE notes SET body = ? WHERE id = 20", (value,))
    assert not audit.audit_scan(conn, spec)[1]


def test_the_audited_state_holds_only_while_the_table_is_unchanged(tmp_path, make_config):
    db = tmp_path / "app.db"
    make_app(db, 100)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE other (id INTEGER PRIMARY KEY, v TEXT)")
    out = run_cli(make_config([{"name": "a", "path": str(db)}]), "init")  # installs the triggers
    assert out.returncode == 0, out.stdout + out.stderr
    spec = spec_of(conn, db)
    tid = capture.read_state(conn).tid_of("readings")
    note = audit.passed_note(spec, audit.audit_position(conn), True)

    def holds(spec=spec) -> bool:
        conn.execute("BEGIN")
        try:
            return audit.unchanged_since(conn, tid, spec, note)
        finally:
            conn.execute("COMMIT")

    assert holds()
    conn.execute("INSERT INTO other VALUES (1, 'x')")  # another table's change
    assert holds()
    retyped = replace(spec, columns=tuple(replace(c, pgtype=PgType.TEXT) if c.name == "reading" else c
                                          for c in spec.columns))
    assert not holds(retyped)  # `[sources.columns]` retyped a column since: its values are sent otherwise
    conn.execute("UPDATE readings SET sensor = 'moved' WHERE id = 5")
    assert not holds()


def initialized(tmp_path, make_config):
    """The app's file with many load chunks, prepared by `syncd init` (audited, noted)."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = make_config([{"name": "a", "path": str(db)}], sections=SMALL_CHUNKS)
    out = run_cli(cfg, "init")
    assert out.returncode == 0, out.stdout + out.stderr
    return db, cfg


async def test_init_then_run_loads_as_read_and_the_rows_arrive_equal(tmp_path, make_config, pg_dsn):
    db, cfg = initialized(tmp_path, make_config)
    with DaemonProcess(cfg, tmp_path / "run.log", args=("--log-level", "debug")) as d:
        await wait_caught_up(db, pg_dsn, "a", timeout=60, daemon=d)
        assert "loading rows as read" in d.log()
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "a", "readings") == []


async def test_a_value_written_after_init_is_converted_in_the_load(tmp_path, make_config, pg_dsn):
    db, cfg = initialized(tmp_path, make_config)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE readings SET reading = 41 WHERE id = 2600")  # an integer: converted to a double
    conn.commit()
    conn.close()
    with DaemonProcess(cfg, tmp_path / "run.log", args=("--log-level", "debug")) as d:
        await wait_caught_up(db, pg_dsn, "a", timeout=60, daemon=d)
        assert "loading rows as read" not in d.log()
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "a", "readings") == []
    pg = await asyncpg.connect(pg_dsn)
    try:
        assert await pg.fetchval('SELECT reading FROM a.readings WHERE id = 2600') == 41.0
    finally:
        await pg.close()
