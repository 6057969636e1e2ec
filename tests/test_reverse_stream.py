"""After a cutover SQLite follows Postgres: every write the application makes in Postgres
reaches the frozen SQLite file, in SQLite's own shape, and the two compare equal with
an independent reader (tests/support/compare.py, no syncd code)."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import asyncpg

from tests.support.app import ShortTimeoutWriter, create_items
from tests.support.compare import compare_all, compare_keyless, compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.rowcompare import same_rows
from tests.support.sync import changelog_max, pg_rows
from tests.support.way_back import backup_and_config, cut_over, typeof, wait_back

WEIRD = 'weird "name"; DROP TABLE x;--'
Q = '"weird ""name""; DROP TABLE x;--"'
SCHEMA = f"""
CREATE TABLE deals (id INTEGER PRIMARY KEY, title TEXT NOT NULL, amount REAL, qty INTEGER, price NUMERIC,
                    created DATETIME, active BOOLEAN, doc BLOB, meta JSON);
CREATE TABLE {Q} ("key col" TEXT PRIMARY KEY, "v;--" TEXT);
CREATE TABLE pairs (a INTEGER, b TEXT, note TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID;
CREATE TABLE log (at TEXT, what TEXT);
CREATE TABLE untyped (k PRIMARY KEY, v);
CREATE TABLE audit (id INTEGER PRIMARY KEY, deal_id INTEGER, what TEXT);
CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT);
CREATE TABLE scratch (id INTEGER PRIMARY KEY, v TEXT);
CREATE TRIGGER deals_audit AFTER INSERT ON deals BEGIN
    INSERT INTO audit (deal_id, what) VALUES (NEW.id, 'created in SQLite');
END;
"""
KEYED = ["deals", WEIRD, "pairs", "audit", "big", "scratch"]


def make_app(db) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript(SCHEMA)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO deals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
        (1, "first", 1.5, 3, 12.5, "2026-01-02 03:04:05", 1, b"\x00\x01", '{"stage": "won"}'),
        (2, "second", -0.0, 7, 20, "2026-01-02T03:04:05.250Z", 0, None, None),
        (3, "epoch", 2.5, None, "7", 1767225600, 1, b"", "[1, 2]"),
        (5, "to move", 1.0, 1, 1, "2026-02-01", 0, None, None),
    ])
    conn.executemany(f"INSERT INTO {Q} VALUES (?, ?)", [("k'1", "v1"), ("K\"2", "v2")])
    conn.executemany("INSERT INTO pairs VALUES (?, ?, ?)", [(1, "a", "x"), (1, "b", "y"), (2, "a", "z")])
    conn.executemany("INSERT INTO log VALUES (?, ?)", [("t1", "dup"), ("t1", "dup"), ("t2", "other")])
    conn.executemany("INSERT INTO untyped VALUES (?, ?)", [(1, 5), ("a", "5"), (2.5, 7), ("x", 1.5)])
    conn.executemany("INSERT INTO scratch VALUES (?, ?)", [(i, "old") for i in range(1, 6)])
    conn.executemany("INSERT INTO big VALUES (?, ?)", [(i, f"seed {i}") for i in range(1, 101)])
    conn.execute("COMMIT")
    return conn


async def test_writes_in_postgres_reach_sqlite_in_its_own_shape(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    app = make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        forward_end = changelog_max(db)
        audit_before = app.execute("SELECT count(*) FROM audit").fetchone()[0]
        pg = await asyncpg.connect(pg_dsn)
        try:
            # every type, written the way an application on Postgres writes them
            await pg.execute("INSERT INTO app.deals (title, amount, qty, price, created, active, doc, meta) VALUES "
                             "('from pg', 3.25, 9, 19.90, '2026-03-01 10:00:00', true, '\\x00ff', '{\"a\": 1}')")
            await pg.execute("UPDATE app.deals SET title = 'renamed', price = 20.00 WHERE id = 1")
            await pg.execute("UPDATE app.deals SET qty = qty + 1 WHERE id = 3")  # created stays 1767225600
            await pg.execute("UPDATE app.deals SET id = 105 WHERE id = 5")  # a key update
            await pg.execute("DELETE FROM app.deals WHERE id = 2")
            await pg.execute(f"INSERT INTO app.{Q} VALUES ('new;--', 'x') ")
            await pg.execute(f'UPDATE app.{Q} SET "key col" = \'K"2 moved\' WHERE "key col" = \'K"2\'')
            await pg.execute("UPDATE app.pairs SET b = 'c' WHERE a = 1 AND b = 'b'")  # composite key change
            await pg.execute("INSERT INTO app.pairs VALUES (3, 'a', 'new') ON CONFLICT (a, b) DO UPDATE "
                             "SET note = EXCLUDED.note")
            await pg.execute("INSERT INTO app.pairs VALUES (1, 'a', 'upserted') ON CONFLICT (a, b) DO UPDATE "
                             "SET note = EXCLUDED.note")
            await pg.execute("INSERT INTO app.log (at, what) VALUES ('t3', 'dup'), ('t3', 'dup')")
            await pg.execute("DELETE FROM app.log WHERE _syncd_rowid = 1")
            await pg.execute("UPDATE app.untyped SET v = 'changed' WHERE k = 'x'")
            await pg.execute("INSERT INTO app.audit (deal_id, what) VALUES (1, 'written by the app in Postgres')")
            # a 10k-row transaction, and a table emptied and refilled
            async with pg.transaction():
                await pg.execute("INSERT INTO app.big SELECT g, 'bulk ' || g FROM generate_series(1000, 10999) g")
                await pg.execute("UPDATE app.big SET v = v || ' touched' WHERE id % 3 = 0")
                await pg.execute("DELETE FROM app.big WHERE id BETWEEN 10 AND 20")
            await pg.execute("TRUNCATE app.scratch")
            await pg.execute("INSERT INTO app.scratch VALUES (7, 'after the truncate')")
        finally:
            await pg.close()
        await wait_back(cfg, db, pg_dsn, daemon=d)

        assert await compare_all(str(db), pg_dsn, "app", KEYED) == []
        assert await compare_keyless(str(db), pg_dsn, "app", "log") == []
        # mixed storage classes in one column: paired row by row, not by key
        assert same_rows(typeof(db, "SELECT k, v FROM untyped"), await pg_rows(pg_dsn, "SELECT k, v FROM app.untyped"))
        # SQLite's own shape: storage classes as the application stored them
        rows = {r[0]: r[1:] for r in typeof(db, "SELECT id, typeof(price), price, typeof(created), created, "
                                                "typeof(active), typeof(doc), typeof(amount) FROM deals")}
        assert rows[1][:2] == ("integer", 20)  # 20.00 in Postgres: NUMERIC affinity stores an integer
        assert rows[3][2:4] == ("integer", 1767225600)  # untouched epoch date keeps its storage class
        (new,), = typeof(db, "SELECT id FROM deals WHERE title = 'from pg'")
        assert rows[new] == ("real", 19.9, "text", "2026-03-01 10:00:00", "integer", "blob", "real")
        assert 105 in rows and 5 not in rows and 2 not in rows
        # a column without a declared type keeps each stored value's class; a changed one is Postgres's text
        assert typeof(db, "SELECT typeof(k), typeof(v), v FROM untyped ORDER BY rowid") == \
            [("integer", "integer", 5), ("text", "text", "5"), ("real", "integer", 7), ("text", "text", "changed")]
        assert typeof(db, "SELECT id, v FROM scratch") == [(7, "after the truncate")]
        # The application's own trigger did not run again: audit holds exactly Postgres's rows
        assert typeof(db, "SELECT count(*) FROM audit WHERE deal_id = ?", new) == [(0,)]
        assert typeof(db, "SELECT count(*) FROM audit") == [(audit_before + 1,)]
        assert typeof(db, "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name = 'deals_audit'")
        # syncd's own writes left nothing in the forward changelog to stream back later
        assert changelog_max(db) == forward_end
        # readers are fine, writers still refused
        assert app.execute("SELECT count(*) FROM big").fetchone()[0] == 10089
        try:
            app.execute("INSERT INTO big VALUES (99999, 'app')")
            raise AssertionError("the frozen file took a write")
        except sqlite3.IntegrityError as e:
            assert "moved to PostgreSQL" in str(e)
        status = run_cli(cfg, "status")
        assert "to sqlite" in status.stdout and "`syncd rollback` possible until" in status.stdout, status.stdout
        assert status.stdout.splitlines()[1].split()[:2] == ["app", "streaming"]
        # -0.0, which a REAL column of SQLite stores as 0.0: the same number, verified equal
        await pg_rows(pg_dsn, "UPDATE app.deals SET amount = -1 * 0.0::float8 WHERE id = 3")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT amount, typeof(amount) FROM deals WHERE id = 3") == [(0.0, "real")]
        verify = run_cli(cfg, "verify")
        assert verify.returncode == 0, verify.stdout
        assert "8 of 8 table(s) equal (cut over: SQLite follows Postgres)" in verify.stdout


async def test_concurrent_writers_committing_out_of_order_all_arrive(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        conns = [await asyncpg.connect(pg_dsn) for _ in range(6)]
        try:
            # open transactions in order 0..5, write, and commit in the reverse order with the
            # stream running in between: the first to start (smallest txid and seq) commits last
            for i, c in enumerate(conns):
                await c.execute("BEGIN")
                await c.execute("INSERT INTO app.big SELECT g, $1 FROM generate_series($2::int, $2::int + 499) g",
                                f"writer {i}", 20_000 + i * 1000)
            for c in reversed(conns):
                await asyncio.sleep(0.3)  # the daemon applies what committed so far
                await c.execute("COMMIT")
        finally:
            for c in conns:
                await c.close()
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert await compare_all(str(db), pg_dsn, "app", ["big"]) == []
        assert typeof(db, "SELECT count(*) FROM big WHERE id >= 20000") == [(3000,)]
        counted = await pg_rows(pg_dsn, "SELECT count(*) FROM app.big")
        assert typeof(db, "SELECT count(*) FROM big") == counted


async def test_a_backlog_in_small_batches_drains_faster_than_a_busy_look_per_batch(tmp_path, make_config, pg_dsn):
    """syncd leaves the file alone after each batch of the way back, so that the
    application's writers waiting in their busy handler go first: for up to one look of
    that handler (0.1 s), and for no more than twice as long as the batch took. A fixed
    0.1 s after every batch capped the way back at batch_size changes per 0.1 s, below
    what a busy application writes with a small batch_size: 600 batches of 5 changes
    could not take less than 60 s. An application writer with a half-second busy_timeout,
    on a table the source leaves out (writable after the cutover), is never failed by it."""
    db = tmp_path / "app.db"
    create_items(db, rows=3000, journal="wal")
    create_items(db, table="hits")
    cfg = backup_and_config(make_config, tmp_path, db, [{"name": "app", "path": str(db), "exclude": ["hits"]}],
                            stream={"batch_size": 5, "poll_interval_seconds": 0.2})
    with DaemonProcess(cfg, tmp_path / "cutover.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    await pg_rows(pg_dsn, "UPDATE app.items SET v = v || '!'")  # 3,000 changes: 600 batches of 5
    writer = ShortTimeoutWriter(db, timeout=0.5)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("syncd running")
        writer.start()
        started = time.monotonic()
        try:
            await wait_back(cfg, db, pg_dsn, daemon=d, timeout=120)
        finally:
            took = time.monotonic() - started
            writer.stop.set()
            writer.join(30)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "items") == []
    assert writer.transactions > 10 and writer.errors == [], (writer.transactions, writer.errors[:5])
    assert took < 40, f"3,000 changes in batches of 5 took {took:.0f} s to reach SQLite"
