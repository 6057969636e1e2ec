"""The application's transactions over several tables while `syncd cutover` or `syncd
rollback` switches. A switch takes the source's tables in Postgres (the rollback's freeze,
the last transaction of either removing or changing what is on them), and waits for the
sessions already in them. An application transaction that writes two tables (an order and
its lines) or a report reading several in one transaction (a REPEATABLE READ export) must
end as it would have without syncd: committed, or for a write refused by the freeze with
syncd's own message, never with Postgres's "deadlock detected". The switch holding one
table while it waits for another the transaction holds, and the transaction then waiting
for the first, is a deadlock Postgres resolves by failing whichever side looked first,
the application's transaction included."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli, syncd_cmd
from tests.support.sync import pg_rows, pg_statements, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, wait_back

TABLES = ["alpha", "beta", "gamma"]


def make_app(db, column: str, value: str) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    for t in TABLES:
        conn.execute(f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, {column})")
        conn.execute(f"INSERT INTO {t} VALUES (1, ?)", (value,))
    conn.commit()
    conn.close()


async def waited_for_by_syncd(dsn: str, seen: set[str], timeout: float = 1.5) -> str:
    """The table a session of syncd's waits for now (other than those in `seen`)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rows = await pg_rows(dsn, "SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                                  "JOIN pg_stat_activity a ON a.pid = l.pid WHERE NOT l.granted "
                                  "AND a.application_name LIKE 'syncd%' AND c.relname = ANY($1::text[])", TABLES)
        fresh = [r[0] for r in rows if r[0] not in seen]
        if fresh:
            return fresh[0]
        assert asyncio.get_running_loop().time() < deadline, f"syncd waits for no table (seen {seen})"
        await asyncio.sleep(0.01)


async def across_a_switch(cfg, dsn: str, verb: str, step: str, begin: str, touch) -> tuple[str, str, int]:
    """`syncd <verb>` held at `step`; one session per table inside a transaction begun
    with `begin` and having touched its table (`touch(table, n)`), and one more, the
    transaction over several tables. As the switch waits for each table's session, that
    session commits; the transaction touches the table the switch takes last, then the
    one it took first. Returns (the transaction's outcome: "done" or its error, what the
    command printed, its exit code)."""
    holders = {t: await asyncpg.connect(dsn) for t in TABLES}
    several = await asyncpg.connect(dsn)
    resume = cfg.parent / f"resume-{verb}"
    proc = subprocess.Popen(syncd_cmd(cfg, verb), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=str(cfg.parent), env={**os.environ, f"SYNCD_{verb.upper()}_HOLD_AT": step,
                                                      f"SYNCD_{verb.upper()}_RESUME_ON": str(resume)})
    try:
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.strip() == f"holding at {step}", line
        for t, conn in holders.items():
            await conn.execute(begin)
            await touch(conn, t, 100)
        resume.touch()  # the switch goes on: it waits for the first table's session
        first = await waited_for_by_syncd(dsn, set())
        await holders[first].execute("COMMIT")
        second = await waited_for_by_syncd(dsn, {first})
        (third,) = set(TABLES) - {first, second}
        await several.execute(begin)
        await touch(several, third, 200)
        await holders[third].execute("COMMIT")
        then = asyncio.create_task(touch(several, first, 200))
        await asyncio.sleep(0.2)
        await holders[second].execute("COMMIT")  # the switch goes on to the transaction's table
        try:
            await then
            await several.execute("COMMIT")
            outcome = "done"
        except asyncpg.PostgresError as e:
            outcome = f"{type(e).__name__}: {e}"
        out, _ = await asyncio.to_thread(proc.communicate, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for conn in (*holders.values(), several):
            await conn.close()
    return outcome, out, proc.returncode


async def read(conn: asyncpg.Connection, table: str, _n: int) -> None:
    await conn.fetch(f"SELECT * FROM app.{table}")


async def write(conn: asyncpg.Connection, table: str, n: int) -> None:
    await conn.execute(f"INSERT INTO app.{table} (id, v) VALUES ($1, 'written in Postgres')", n)


async def test_an_application_transaction_writing_two_tables_is_never_failed_by_the_rollbacks_freeze(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db, "v TEXT", "a")
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        outcome, out, _ = await across_a_switch(cfg, pg_dsn, "rollback", "started", "BEGIN", write)
    assert outcome == "done" or "moved back to SQLite by syncd" in outcome, (
        f"the application's transaction failed: {outcome}\nsyncd rollback said:\n{out}")


async def test_a_report_reading_several_tables_is_never_failed_by_the_rollbacks_last_transaction(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db, "v TEXT", "a")
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "UPDATE app.alpha SET v = 'written in Postgres'")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        # Postgres is frozen for writes once the rollback is held at "verified"; reads go on.
        outcome, out, code = await across_a_switch(cfg, pg_dsn, "rollback", "verified",
                                                   "BEGIN ISOLATION LEVEL REPEATABLE READ", read)
    assert outcome == "done", f"the report failed: {outcome}\nsyncd rollback said:\n{out}"
    assert code == 0, out


async def test_a_report_reading_several_tables_is_never_failed_by_the_cutovers_last_transaction(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db, "at DATETIME", "2026-12-01 10:00:00")  # typed by the last transaction, table after table
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr
        # reports reading Postgres during dual-write
        outcome, out, code = await across_a_switch(cfg, pg_dsn, "cutover", "verified",
                                                   "BEGIN ISOLATION LEVEL REPEATABLE READ", read)
    assert outcome == "done", f"the report failed: {outcome}\nsyncd cutover said:\n{out}"
    assert code == 0, out


async def test_a_transaction_whose_snapshot_is_older_than_the_rollback_cannot_write_postgres_after_it(
        tmp_path, make_config, pg_dsn):
    """A REPEATABLE READ transaction of the application's that took its snapshot while
    Postgres was its database, and writes once `syncd rollback` is done, is refused with
    syncd's message, as a fresh session's write is: its snapshot still sees the source
    cut over, and its write must not land in a Postgres nobody mirrors to SQLite any
    more (the application would take it for committed, SQLite would never have it)."""
    db = tmp_path / "app.db"
    make_app(db, "v TEXT", "seed")
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        # a table of the application's own in Postgres, outside the source's schema
        await pg_statements(pg_dsn, "CREATE TABLE public.sessions (id int)", "INSERT INTO public.sessions VALUES (1)")
        stale = await asyncpg.connect(pg_dsn)
        try:
            tx = stale.transaction(isolation="repeatable_read")
            await tx.start()
            assert await stale.fetchval("SELECT count(*) FROM public.sessions") == 1  # the snapshot is taken here
            r = run_cli(cfg, "rollback")
            assert r.returncode == 0, r.stdout + r.stderr
            try:
                await stale.execute("INSERT INTO app.alpha VALUES (2, 'written after the rollback')")
                await tx.commit()
                outcome = "committed"
            except asyncpg.PostgresError as e:
                outcome = str(e)
                await tx.rollback()
        finally:
            await stale.close()
        assert "moved back to SQLite by syncd" in outcome, outcome
        assert await pg_rows(pg_dsn, "SELECT id FROM app.alpha ORDER BY id") == [(1,)]
        assert d.stop() == 0
