"""A statement_timeout the DBA set on syncd's role (or its database) for other clients:
syncd's statements are bounded by [postgres] statement_timeout_seconds, as documented,
not cancelled by the server's shorter default; otherwise every consistency check of a
table larger than that fails, and each failure is a consistency error in the window
`syncd report` judges."""

from __future__ import annotations

import contextlib
import secrets
import sqlite3


from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import pg_statements, wait_caught_up


@contextlib.asynccontextmanager
async def role_with_statement_timeout(pg_dsn: str, timeout: str):
    """A login role owning the test's database, with `timeout` as its statement_timeout
    (as a DBA sets one for other clients); dropped with what it owns afterwards."""
    role = f"syncd_short_{secrets.token_hex(4)}"
    database = pg_dsn.rsplit("/", 1)[1]
    await pg_statements(pg_dsn, f"CREATE ROLE {role} LOGIN", f'ALTER DATABASE "{database}" OWNER TO {role}',
                        f"ALTER ROLE {role} SET statement_timeout = '{timeout}'")
    try:
        yield role
    finally:
        await pg_statements(pg_dsn, f'ALTER DATABASE "{database}" OWNER TO postgres',
                            f"DROP OWNED BY {role} CASCADE", f"DROP ROLE {role}")


def items_file(db) -> sqlite3.Connection:
    """An application file in WAL mode holding 100 rows of `items`; its connection, open."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO items VALUES (?, ?)", ((i, "x") for i in range(100)))
    conn.commit()
    return conn


async def test_a_role_with_a_short_statement_timeout_still_loads_and_verifies(tmp_path, make_config, pg_dsn):
    async with role_with_statement_timeout(pg_dsn, "5ms") as role:
        db = tmp_path / "app.db"
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO items VALUES (?, ?)", ((i, "x" * 100) for i in range(200_000)))
        conn.commit()
        conn.close()
        cfg = make_config([{"name": "app", "path": str(db)}], sections={
            "postgres": {"dsn": pg_dsn.replace("postgres@", f"{role}@")}, "verify": {"interval_seconds": 0}})
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=120)
            assert d.stop() == 0
        assert "statement timeout" not in d.log(), d.log()[-3000:]
        v = run_cli(cfg, "verify")
        assert v.returncode == 0 and "statement timeout" not in v.stdout, v.stdout + v.stderr


async def test_a_statement_the_role_s_timeout_cancels_is_said_as_such_not_as_postgres_unreachable(
        tmp_path, make_config, pg_dsn):
    """Behind a transaction pooler syncd sends no statement_timeout of its own, so one set
    on its role applies. A statement it cancels (SQLSTATE 57014: here an apply waiting on
    a lock a session holds) reached Postgres: the daemon's line names statement_timeout
    and the role, never "Postgres unreachable"; once the lock is gone it catches up."""
    import asyncpg

    from tests.support.daemon import wait_for

    async with role_with_statement_timeout(pg_dsn, "1s") as role:
        try:
            db = tmp_path / "app.db"
            conn = items_file(db)
            dsn = pg_dsn.replace("postgres@", f"{role}@")
            cfg = make_config([{"name": "app", "path": str(db)}], sections={
                "postgres": {"dsn": dsn, "lock_dsn": dsn, "pooler": "transaction", "statement_timeout_seconds": 30},
                "verify": {"interval_seconds": 0}})
            with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
                await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=60)
                holder = await asyncpg.connect(pg_dsn)
                try:
                    async with holder.transaction():
                        await holder.execute("LOCK TABLE app.items IN ACCESS EXCLUSIVE MODE")
                        conn.execute("UPDATE items SET v = 'changed' WHERE id = 1")
                        conn.commit()
                        wait_for(lambda: "57014" in d.log(), 60, "the cancelled statement's line", d)
                finally:
                    await holder.close()
                await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=60)
                assert d.stop() == 0
            line = next(x for x in d.log().splitlines() if "57014" in x)
            assert "statement_timeout" in line and role in line, line
            assert "unreachable" not in line.lower(), line
            assert "event=postgres_unreachable" not in d.log(), d.log()
            assert "Traceback" not in d.log() and "unexpected error" not in d.log(), d.log()
        finally:
            conn.close()


async def test_the_way_back_says_a_statement_the_role_s_timeout_cancels_as_such(tmp_path, make_config, pg_dsn):
    """After a cutover the way back reads Postgres's changelog; a read the role's
    statement_timeout cancels (here waiting on a lock a session holds on that changelog)
    reached Postgres: the line names statement_timeout and the role, never "Postgres
    unreachable"; once the lock is gone SQLite catches up."""
    import asyncpg

    from tests.support.daemon import wait_for
    from tests.support.way_back import backup_and_config, cut_over, wait_back

    async with role_with_statement_timeout(pg_dsn, "1s") as role:
        db = tmp_path / "app.db"
        items_file(db).close()
        dsn = pg_dsn.replace("postgres@", f"{role}@")
        cfg = backup_and_config(make_config, tmp_path, db, postgres={
            "dsn": dsn, "lock_dsn": dsn, "pooler": "transaction", "statement_timeout_seconds": 30})
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await cut_over(cfg, db, pg_dsn, daemon=d)
            await wait_back(cfg, db, pg_dsn, daemon=d)
            holder = await asyncpg.connect(pg_dsn)
            try:
                changelog = await holder.fetchval("SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                                                  "WHERE schemaname = 'syncd' AND tablename LIKE 'rlog\\_%'")
                async with holder.transaction():
                    await holder.execute(f"LOCK TABLE {changelog} IN ACCESS EXCLUSIVE MODE")
                    wait_for(lambda: "57014" in d.log(), 60, "the cancelled statement's line", d)
            finally:
                await holder.close()
            await pg_statements(pg_dsn, "UPDATE app.items SET v = 'changed in Postgres' WHERE id = 1")
            await wait_back(cfg, db, pg_dsn, daemon=d)
            assert d.stop() == 0
        line = next(x for x in d.log().splitlines() if "57014" in x)
        assert "statement_timeout" in line and role in line, line
        assert "unreachable" not in line.lower(), line
        assert "Traceback" not in d.log() and "unexpected error" not in d.log(), d.log()
