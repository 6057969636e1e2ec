"""A column SQLite declares without a type and that holds both integers and reals is
numeric in Postgres (test_types: infer_from_values). Every value lands there as the
number SQLite holds: an integer as itself, a real of magnitude 2^53 or more (always a
whole number) as its exact value, a smaller real as its shortest decimal. So two values
are equal in Postgres exactly when SQLite's `=` says they are: a time.time_ns() integer
and a time.time() * 1e9 real next to it stay two values, as values and as keys, and
`syncd verify` tells them apart. Rows an older syncd loaded with the real's shortest
decimal (2^60 as 1152921504606847000) are reported and `verify --repair` fixes them."""

from __future__ import annotations

import math
import sqlite3
from decimal import Decimal
from pathlib import Path

from syncd.types import PgType, converter
from tests.support.daemon import DaemonProcess
from tests.support.sync import pg_rows, wait_caught_up
from tests.support.verifying import pg_execute, sync_and_stop, verify, verify_section

REAL_2_60 = 2.0**60  # 1152921504606846976, whose shortest text is 1.152921504606847e+18
NEAR_INTEGER = 1152921504606847000  # the integer that shortest text names, 24 above it
EQUAL_PAIRS = "SELECT a.id, b.id FROM {t} AS a JOIN {t} AS b ON a.v = b.v AND a.id < b.id ORDER BY 1, 2"


def _sqlite(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _mixed_table(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, v)")
    conn.executemany("INSERT INTO m VALUES (?, ?)", [
        (1, 1), (2, 0.1), (3, REAL_2_60), (4, 1e300), (5, -REAL_2_60), (6, 2.0**53 - 1),
    ])
    return conn


# Reals on both sides of 2^53, a time.time() * 1e9, the largest and the smallest.
REALS = [0.5, 0.1 + 0.2, 2.0**52 + 0.5, 2.0**53 - 1, 2.0**53, 2.0**53 + 2, 1e16, 1e17, REAL_2_60,
         1733000000.123456 * 1e9, 2.0**63, 1e19, 1e23, 1e300, 1.7976931348623157e308, 5e-324]


def test_a_real_converts_to_a_numeric_equal_to_another_number_exactly_when_sqlite_says_so():
    numeric = converter(PgType.NUMERIC)
    sqlite = sqlite3.connect(":memory:")
    for x in REALS + [-x for x in REALS]:
        # The integers nearest the real, the one its shortest text names, and its neighbour reals.
        ints = {math.floor(x), math.ceil(x), math.floor(x) - 1, math.ceil(x) + 1, int(Decimal(repr(x)))}
        others = [n for n in ints if -(2**63) <= n < 2**63] + [math.nextafter(x, math.inf),
                                                               math.nextafter(x, -math.inf)]
        for other in others:
            in_sqlite = sqlite.execute("SELECT ? = ?", (x, other)).fetchone()[0] == 1
            assert (numeric(x) == numeric(other)) is in_sqlite, (x, other)


async def test_values_sqlite_holds_apart_stay_apart_in_postgres_and_equal_ones_equal(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = _mixed_table(db)
    cfg = make_config([{"name": "app", "path": str(db)}], extra=verify_section())
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)  # rows 1-6 by the load
        # By the stream: an integer next to row 3's real, and the integer row 3's real is.
        conn.execute("UPDATE m SET v = ? WHERE id = 2", (NEAR_INTEGER,))
        conn.execute("INSERT INTO m VALUES (7, ?), (8, ?)", (2**60, 1733000000.123456 * 1e9))
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0

    assert await pg_rows(pg_dsn, "SELECT data_type FROM information_schema.columns WHERE table_schema = 'app' "
                                 "AND table_name = 'm' AND column_name = 'v'") == [("numeric",)]
    assert await pg_rows(pg_dsn, "SELECT id, trim_scale(v)::text FROM app.m ORDER BY id") == [
        (1, "1"), (2, str(NEAR_INTEGER)), (3, str(2**60)), (4, str(int(1e300))), (5, str(-(2**60))),
        (6, str(2**53 - 1)), (7, str(2**60)), (8, str(int(1733000000.123456 * 1e9)))]
    # SQLite compares an integer with a real exactly: only rows 3 and 7 hold one value.
    assert _sqlite(db, EQUAL_PAIRS.format(t="m")) == [(3, 7)]
    assert await pg_rows(pg_dsn, EQUAL_PAIRS.format(t="app.m")) == [(3, 7)]
    out = verify(cfg)
    assert out.returncode == 0 and 'app: "m" equal' in out.stdout, out.stdout + out.stderr


async def test_a_key_holding_such_a_real_and_that_integer_keeps_both_rows(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE k (id PRIMARY KEY, note TEXT) WITHOUT ROWID")
    conn.executemany("INSERT INTO k VALUES (?, ?)", [(1, "one"), (2.5, "two and a half"), (REAL_2_60, "real")])
    cfg = make_config([{"name": "app", "path": str(db)}], extra=verify_section())
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO k VALUES (?, 'integer')", (NEAR_INTEGER,))
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0

    assert _sqlite(db, "SELECT count(*) FROM k") == [(4,)]  # two keys to SQLite
    assert await pg_rows(pg_dsn, "SELECT trim_scale(id)::text, note FROM app.k ORDER BY id") == [
        ("1", "one"), ("2.5", "two and a half"), (str(2**60), "real"), (str(NEAR_INTEGER), "integer")]
    out = verify(cfg)
    assert out.returncode == 0 and 'app: "k" equal' in out.stdout, out.stdout + out.stderr


async def test_a_key_holding_a_real_past_64_bits_beside_a_unique_index_streams(tmp_path, make_config, pg_dsn):
    """A real of 1e19 (no SQLite INTEGER is that large) as a key, and a UNIQUE index an
    INSERT OR REPLACE goes through: the stream looks the key up as the real it is."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE m (k PRIMARY KEY, u TEXT UNIQUE, v TEXT)")
    conn.executemany("INSERT INTO m VALUES (?, ?, ?)", [(1, "a", "x"), (1e19, "b", "y"), (2.5, "c", "z")])
    cfg = make_config([{"name": "app", "path": str(db)}], extra=verify_section())
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT OR REPLACE INTO m VALUES (3, 'b', 'w')")  # replaces the 1e19 row through u
        conn.execute("INSERT INTO m VALUES (-1e19, 'd', 'v')")
        conn.execute("UPDATE m SET v = 'q' WHERE k = -1e19")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert "OverflowError" not in d.log() and "unexpected error" not in d.log()
        assert d.stop() == 0
    assert await pg_rows(pg_dsn, "SELECT trim_scale(k)::text, u, v FROM app.m ORDER BY k") == [
        (str(-10**19), "d", "q"), ("1", "a", "x"), ("2.5", "c", "z"), ("3", "b", "w")]
    out = verify(cfg)
    assert out.returncode == 0 and 'app: "m" equal' in out.stdout, out.stdout + out.stderr


async def test_reals_an_older_syncd_loaded_by_their_shortest_text_are_reported_and_repaired(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = _mixed_table(db)
    conn.execute("CREATE TABLE k (id PRIMARY KEY, note TEXT) WITHOUT ROWID")
    conn.executemany("INSERT INTO k VALUES (?, ?)", [(1, "one"), (REAL_2_60, "real")])
    cfg = make_config([{"name": "app", "path": str(db)}], extra=verify_section())
    await sync_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    # What syncd wrote for the real 2^60 before it sent such reals exactly.
    await pg_execute(pg_dsn, f"UPDATE app.m SET v = {NEAR_INTEGER} WHERE id = 3; "
                             f"UPDATE app.k SET id = {NEAR_INTEGER} WHERE id = {2**60}")

    out = verify(cfg)
    assert out.returncode == 1, out.stdout + out.stderr
    assert 'app: "m" DIFFERS' in out.stdout and 'app: "k" DIFFERS' in out.stdout, out.stdout

    out = verify(cfg, "--repair", "--wait", "20")
    assert out.returncode == 0, out.stdout + out.stderr
    assert await pg_rows(pg_dsn, "SELECT v::text FROM app.m WHERE id = 3") == [(str(2**60),)]
    assert await pg_rows(pg_dsn, "SELECT id::text, note FROM app.k ORDER BY id") == [("1", "one"), (str(2**60), "real")]
    assert verify(cfg).returncode == 0
