"""Reports read Postgres during dual-write (docs/cutover.md), and `syncd cutover`'s last
transaction waits for them where schema parity changes a table (a date column typed, a
constraint), table after table. A report reading several of the source's tables in one
transaction must end as it would have without syncd, never with Postgres's "deadlock
detected": the switch holding one table while it waits for another the report holds,
and the report then reading the first, is a deadlock Postgres resolves by failing
whichever side looked first, the report included."""

from __future__ import annotations

import asyncio
import os
import subprocess

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli, syncd_cmd
from tests.support.sync import pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config


def make_app(db) -> None:
    import sqlite3

    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE alpha (id INTEGER PRIMARY KEY, at DATETIME);
        CREATE TABLE beta (id INTEGER PRIMARY KEY, at DATETIME);
        CREATE TABLE gamma (id INTEGER PRIMARY KEY, at DATETIME);
        INSERT INTO alpha VALUES (1, '2026-12-01 10:00:00'); INSERT INTO beta VALUES (1, '2026-12-01 10:00:00');
        INSERT INTO gamma VALUES (1, '2026-12-01 10:00:00');
    """)
    conn.commit()
    conn.close()


async def waited_for_by_syncd(dsn: str, seen: set[str], timeout: float = 1.5) -> str:
    """The table a session of syncd's waits for now (other than those in `seen`)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rows = await pg_rows(dsn, "SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                                  "JOIN pg_stat_activity a ON a.pid = l.pid WHERE NOT l.granted "
                                  "AND a.application_name LIKE 'syncd%' AND c.relname IN ('alpha', 'beta', 'gamma')")
        fresh = [r[0] for r in rows if r[0] not in seen]
        if fresh:
            return fresh[0]
        assert asyncio.get_running_loop().time() < deadline, f"syncd waits for no table (seen {seen})"
        await asyncio.sleep(0.01)


async def test_a_report_reading_several_tables_is_never_failed_by_the_cutovers_last_transaction(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr
        tables = ["alpha", "beta", "gamma"]
        readers = {t: await asyncpg.connect(pg_dsn) for t in tables}
        report = await asyncpg.connect(pg_dsn)
        resume = tmp_path / "resume"
        proc = subprocess.Popen(syncd_cmd(cfg, "cutover"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=str(cfg.parent),
                                env={**os.environ, "SYNCD_CUTOVER_HOLD_AT": "verified",
                                     "SYNCD_CUTOVER_RESUME_ON": str(resume)})
        try:
            line = await asyncio.to_thread(proc.stdout.readline)
            assert line.strip() == "holding at verified", line
            # reports reading Postgres during dual-write
            for t, conn in readers.items():
                await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                await conn.fetch(f"SELECT * FROM app.{t}")
            resume.touch()  # the last transaction begins: it waits for the first table's reader
            first = await waited_for_by_syncd(pg_dsn, set())
            await readers[first].execute("COMMIT")
            second = await waited_for_by_syncd(pg_dsn, {first})
            (third,) = set(tables) - {first, second}
            # The report reads the table the switch takes last, then the one it took first.
            await report.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            await report.fetch(f"SELECT * FROM app.{third}")
            await readers[third].execute("COMMIT")
            second_read = asyncio.create_task(report.fetch(f"SELECT * FROM app.{first}"))
            await asyncio.sleep(0.2)
            await readers[second].execute("COMMIT")  # the switch goes on to the report's table
            try:
                await second_read
                await report.execute("COMMIT")
                outcome = "read"
            except asyncpg.PostgresError as e:
                outcome = f"{type(e).__name__}: {e}"
            out, _ = await asyncio.to_thread(proc.communicate, timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            for conn in (*readers.values(), report):
                await conn.close()
        assert outcome == "read", f"the report failed: {outcome}\nsyncd cutover said:\n{out}"
        assert proc.returncode == 0, out
