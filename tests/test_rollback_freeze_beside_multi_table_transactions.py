"""`syncd rollback` freezes Postgres for the application while it goes on writing there.
The freeze takes the source's tables one after another; an application transaction that
writes two of them (an order and its lines, a row and its audit entry) must see either
its commit or the freeze's own message ("moved back to SQLite by syncd"), never a
"deadlock detected" error from Postgres for a transaction that did nothing wrong: the
freeze holding one table while waiting for another the application holds, and the
application then waiting for the first, is a deadlock Postgres resolves by failing
whichever side looked first, the application's transaction included."""

from __future__ import annotations

import asyncio
import os
import subprocess

import asyncpg

from tests.support.daemon import DaemonProcess, syncd_cmd
from tests.support.sync import pg_rows
from tests.support.way_back import backup_and_config, cut_over


def make_app(db) -> None:
    import sqlite3

    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE alpha (id INTEGER PRIMARY KEY, v TEXT);
        CREATE TABLE beta (id INTEGER PRIMARY KEY, v TEXT);
        CREATE TABLE gamma (id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO alpha VALUES (1, 'a'); INSERT INTO beta VALUES (1, 'b'); INSERT INTO gamma VALUES (1, 'g');
    """)
    conn.commit()
    conn.close()


async def waited_for_by_the_freeze(dsn: str, seen: set[str], timeout: float = 1.5) -> str:
    """The table the rollback's freeze waits for now (other than those in `seen`)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rows = await pg_rows(dsn, "SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                                  "JOIN pg_stat_activity a ON a.pid = l.pid WHERE NOT l.granted "
                                  "AND l.mode = 'ShareRowExclusiveLock' AND a.application_name LIKE 'syncd%'")
        fresh = [r[0] for r in rows if r[0] not in seen]
        if fresh:
            return fresh[0]
        assert asyncio.get_running_loop().time() < deadline, "the freeze waits for no table"
        await asyncio.sleep(0.01)


async def test_an_application_transaction_writing_two_tables_is_never_failed_by_the_rollbacks_freeze(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        tables = ["alpha", "beta", "gamma"]
        # Three of the application's sessions each in the middle of a write, and a fourth,
        # `app`, about to write two tables in one transaction.
        others = {t: await asyncpg.connect(pg_dsn) for t in tables}
        app = await asyncpg.connect(pg_dsn)
        resume = tmp_path / "resume"
        proc = subprocess.Popen(syncd_cmd(cfg, "rollback"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=str(cfg.parent),
                                env={**os.environ, "SYNCD_ROLLBACK_HOLD_AT": "started",
                                     "SYNCD_ROLLBACK_RESUME_ON": str(resume)})
        try:
            line = await asyncio.to_thread(proc.stdout.readline)
            assert line.strip() == "holding at started", line
            for t, conn in others.items():
                await conn.execute("BEGIN")
                await conn.execute(f"INSERT INTO app.{t} (id, v) VALUES (100, 'other session')")
            resume.touch()  # the freeze begins: it waits for the first table's writer
            first = await waited_for_by_the_freeze(pg_dsn, set())
            await others[first].execute("COMMIT")
            second = await waited_for_by_the_freeze(pg_dsn, {first})
            (third,) = set(tables) - {first, second}
            # The application writes the table the freeze takes last, then the one it took first.
            await app.execute("BEGIN")
            await app.execute(f"INSERT INTO app.{third} (id, v) VALUES (200, 'order')")
            await others[third].execute("COMMIT")
            second_write = asyncio.create_task(app.execute(f"INSERT INTO app.{first} (id, v) VALUES (200, 'line')"))
            await asyncio.sleep(0.2)
            await others[second].execute("COMMIT")  # the freeze goes on to the application's table
            try:
                await second_write
                await app.execute("COMMIT")
                outcome = "committed"
            except asyncpg.PostgresError as e:
                outcome = f"{type(e).__name__}: {e}"
            out, _ = await asyncio.to_thread(proc.communicate, timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            for conn in (*others.values(), app):
                await conn.close()
        assert outcome == "committed" or "moved back to SQLite by syncd" in outcome, (
            f"the application's transaction failed: {outcome}\nsyncd rollback said:\n{out}")
