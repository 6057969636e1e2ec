"""A lock_timeout the DBA set on syncd's role (or its database) for other clients: a
statement of syncd's it ends (SQLSTATE 55P03, waiting on a lock another session holds)
reached Postgres, which answered. The daemon says that, naming lock_timeout and the role,
never "Postgres unreachable" (nor syncd_postgres_up 0, which pages whoever is on call
for a server that is up), and catches up once the lock is gone."""

from __future__ import annotations

import contextlib
import secrets
import sqlite3

import asyncpg

from tests.support.daemon import DaemonProcess, wait_for
from tests.support.sync import pg_statements, wait_caught_up


@contextlib.asynccontextmanager
async def role_with_lock_timeout(pg_dsn: str, timeout: str):
    """A login role owning the test's database, with `timeout` as its lock_timeout; dropped
    with what it owns afterwards."""
    role = f"syncd_locks_{secrets.token_hex(4)}"
    database = pg_dsn.rsplit("/", 1)[1]
    await pg_statements(pg_dsn, f"CREATE ROLE {role} LOGIN", f'ALTER DATABASE "{database}" OWNER TO {role}',
                        f"ALTER ROLE {role} SET lock_timeout = '{timeout}'")
    try:
        yield role
    finally:
        await pg_statements(pg_dsn, f'ALTER DATABASE "{database}" OWNER TO postgres',
                            f"DROP OWNED BY {role} CASCADE", f"DROP ROLE {role}")


async def test_a_change_the_role_s_lock_timeout_gives_up_on_is_said_as_such_not_as_postgres_unreachable(
        tmp_path, make_config, pg_dsn):
    async with role_with_lock_timeout(pg_dsn, "500ms") as role:
        db = tmp_path / "app.db"
        conn = sqlite3.connect(db)
        try:
            conn.execute("PRAGMA journal_mode=wal")
            conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
            conn.executemany("INSERT INTO items VALUES (?, ?)", ((i, "x") for i in range(100)))
            conn.commit()
            cfg = make_config([{"name": "app", "path": str(db)}], sections={
                "postgres": {"dsn": pg_dsn.replace("postgres@", f"{role}@")}, "verify": {"interval_seconds": 0}})
            with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
                await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=60)
                holder = await asyncpg.connect(pg_dsn)
                try:
                    async with holder.transaction():
                        await holder.execute("LOCK TABLE app.items IN ACCESS EXCLUSIVE MODE")
                        conn.execute("UPDATE items SET v = 'changed' WHERE id = 1")
                        conn.commit()
                        wait_for(lambda: "55P03" in d.log(), 60, "the line of the lock given up", d)
                finally:
                    await holder.close()
                await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=60)
                assert d.stop() == 0
        finally:
            conn.close()
    log = d.log()
    line = next(x for x in log.splitlines() if "55P03" in x)
    assert "lock_timeout" in line and role in line, line
    assert "unreachable" not in line.lower(), line
    assert "event=postgres_unreachable" not in log, log
    assert "Traceback" not in log and "unexpected error" not in log, log


async def test_the_way_back_says_a_read_the_role_s_lock_timeout_gives_up_on_as_such(tmp_path, make_config, pg_dsn):
    """After a cutover the way back reads Postgres's changelog; a read the role's
    lock_timeout ends (a session holds a lock on that changelog) is said as such, never
    as "Postgres unreachable"; once the lock is gone SQLite catches up."""
    from tests.support.way_back import backup_and_config, cut_over, wait_back

    async with role_with_lock_timeout(pg_dsn, "500ms") as role:
        db = tmp_path / "app.db"
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO items VALUES (?, ?)", ((i, "x") for i in range(100)))
        conn.commit()
        conn.close()
        cfg = backup_and_config(make_config, tmp_path, db, postgres={"dsn": pg_dsn.replace("postgres@", f"{role}@")})
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await cut_over(cfg, db, pg_dsn, daemon=d)
            await wait_back(cfg, db, pg_dsn, daemon=d)
            holder = await asyncpg.connect(pg_dsn)
            try:
                changelog = await holder.fetchval("SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                                                  "WHERE schemaname = 'syncd' AND tablename LIKE 'rlog\\_%'")
                async with holder.transaction():
                    await holder.execute(f"LOCK TABLE {changelog} IN ACCESS EXCLUSIVE MODE")
                    wait_for(lambda: source_line(d.log()), 60, "the line of the lock given up", d)
            finally:
                await holder.close()
            await pg_statements(pg_dsn, "UPDATE app.items SET v = 'changed in Postgres' WHERE id = 1")
            await wait_back(cfg, db, pg_dsn, daemon=d)
            assert d.stop() == 0
    log = d.log()
    line = source_line(log)
    assert "lock_timeout" in line and role in line, line
    assert "unreachable" not in line.lower() and "event=postgres_unreachable" not in log, log
    assert "Traceback" not in log and "unexpected error" not in log, log


def source_line(log: str) -> str | None:
    """The source's line about the lock given up (the daemon's watch of Postgres says its own)."""
    return next((x for x in log.splitlines() if "source=app" in x and "55P03" in x), None)
