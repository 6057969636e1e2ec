"""The stream reads the next batch while the current one is applied. Two batches are
then in flight at once; a kill -9 at that moment loses nothing and applies nothing
twice: the batch in Postgres rolls back with its checkpoint, the one read ahead was
only ever in memory, and the restarted daemon reads both again from the checkpoint."""

from __future__ import annotations

import sqlite3

import asyncpg

from tests.support.app import create_items
from tests.support.compare import compare_keyless, compare_table
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.sync import bookkeeping, changelog_max, wait_caught_up

LOG_TABLE = "CREATE TABLE readings (sensor TEXT, value REAL, at TEXT)"  # keyless: a duplicate would show


def make_app(db):
    create_items(db, rows=6000, journal="wal")
    conn = sqlite3.connect(db)
    conn.execute(LOG_TABLE)
    conn.commit()
    conn.close()
    return db


def app_writes(db, start: int, n: int) -> None:
    """One UPDATE of every items row (a counter that must end exactly right), new
    rows, deletes and log lines, in a few transactions."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute("UPDATE items SET n = n + 1")
    conn.execute("COMMIT")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)",
                     ((i, f"new{i}", 0, i / 7, b"x") for i in range(start, start + n)))
    conn.executemany("INSERT INTO readings VALUES (?, ?, ?)",
                     ((f"s{i % 5}", i / 10, f"2026-01-01 00:00:{i % 60:02d}") for i in range(n)))
    conn.execute("DELETE FROM items WHERE id % 97 = 0")
    conn.execute("COMMIT")
    conn.close()


async def waiting_on_lock(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"))
    finally:
        await conn.close()


async def pg_count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(f"SELECT count(*) FROM app.{table}")
    finally:
        await conn.close()


def sqlite_count(db, table: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


async def test_kill9_with_two_batches_in_flight(tmp_path, make_config, pg_dsn):
    db = make_app(tmp_path / "app.db")
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"stream": {"batch_size": 500}})

    with DaemonProcess(cfg, tmp_path / "first.log") as d:
        d.wait_log("syncd running")
        await wait_caught_up(db, pg_dsn, "app", timeout=60, daemon=d)
        assert d.stop() == 0

    # Postgres holds the table so the first batch's apply waits, its transaction open;
    # meanwhile the daemon reads the next batch ahead. Then both are in flight.
    locker = await asyncpg.connect(pg_dsn)
    tx = locker.transaction()
    await tx.start()
    await locker.execute("LOCK TABLE app.items IN EXCLUSIVE MODE")
    applied_before, _ = await bookkeeping(pg_dsn, "app")
    app_writes(db, 100_000, 3000)
    d = DaemonProcess(cfg, tmp_path / "killed.log", args=("--log-level", "debug"))
    with d:
        d.wait_log("batch read ahead", timeout=60)
        wait_for(lambda: d.alive(), 1, "daemon alive", d)
        assert await waiting_on_lock(pg_dsn), "the batch before the one read ahead is not waiting in Postgres"
        d.kill9()
    await tx.rollback()
    await locker.close()
    applied_at_kill, _ = await bookkeeping(pg_dsn, "app")
    assert applied_at_kill == applied_before, "the batch held by the lock committed: the kill did not land mid-apply"
    assert changelog_max(db) > applied_at_kill

    app_writes(db, 200_000, 1000)  # the application goes on while syncd is down
    with DaemonProcess(cfg, tmp_path / "after.log") as d:
        d.wait_log("syncd running")
        await wait_caught_up(db, pg_dsn, "app", timeout=120, daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "items") == []
    assert await compare_keyless(str(db), pg_dsn, "app", "readings") == []
    assert await pg_count(pg_dsn, "items") == sqlite_count(db, "items")
    assert await pg_count(pg_dsn, "readings") == sqlite_count(db, "readings") == 4000


async def test_read_ahead_is_used_while_a_backlog_drains(tmp_path, make_config, pg_dsn):
    """Without faults the batches read ahead are the ones applied: the backlog drains
    in order and the result is exact."""
    db = make_app(tmp_path / "app.db")
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"stream": {"batch_size": 300}})
    with DaemonProcess(cfg, tmp_path / "run.log", args=("--log-level", "debug")) as d:
        d.wait_log("syncd running")
        await wait_caught_up(db, pg_dsn, "app", timeout=60, daemon=d)
        app_writes(db, 100_000, 5000)
        await wait_caught_up(db, pg_dsn, "app", timeout=120, daemon=d)
        assert d.stop() == 0
        assert d.log().count("batch read ahead") >= 3
    assert await compare_table(str(db), pg_dsn, "app", "items") == []
    assert await compare_keyless(str(db), pg_dsn, "app", "readings") == []
    assert await pg_count(pg_dsn, "readings") == sqlite_count(db, "readings") == 5000
