"""A cutover or rollback whose last COMMIT reaches Postgres while its reply is lost (the
connection drops in between) asks Postgres what it recorded instead of trusting the
error: a switch Postgres recorded is finished, not undone (undoing it let the
application write to a side syncd then overwrote); one it cannot ask about leaves
both sides frozen, so no write is lost either way."""

from __future__ import annotations

import sqlite3
from urllib.parse import urlsplit

import pytest

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.proxy import FaultProxy
from tests.support.sync import eventually, pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config, sqlite_write, wait_back


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT, item TEXT NOT NULL);
        INSERT INTO orders (item) VALUES ('a'), ('b');
    """)
    conn.commit()
    conn.close()



@pytest.fixture
def proxy(pg_dsn):
    parts = urlsplit(pg_dsn)
    p = FaultProxy(parts.hostname, parts.port or 5432)
    yield p, {"SYNCD_POSTGRES__DSN": pg_dsn.replace(f":{parts.port}/", f":{p.port}/")}
    p.close()


def switched(cfg, verb: str, via: dict) -> str:
    r = run_cli(cfg, verb, env=via)
    return f"rc={r.returncode}\n{r.stdout}{r.stderr}"


async def test_a_switch_postgres_recorded_is_finished_though_its_reply_was_lost(tmp_path, make_config, pg_dsn,
                                                                                proxy):
    p, via = proxy
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        p.lose_reply_after(b"SET direction")
        out = switched(cfg, "cutover", via)
        assert p.reply_lost.is_set(), out
        assert out.startswith("rc=0") and "Postgres recorded the cutover; its confirmation did not reach syncd" in out, out
        assert await pg_rows(pg_dsn, "SELECT direction FROM syncd.sources") == [("to_sqlite",)]
        assert await pg_rows(pg_dsn, "SELECT kind, state FROM syncd.switches ORDER BY id") == [("cutover", "done")]
        refused = sqlite_write(db, "to SQLite after the cutover")
        assert refused is not None and "moved to PostgreSQL by syncd" in refused
        await pg_rows(pg_dsn, "INSERT INTO app.orders (item) VALUES ('to Postgres')")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert sqlite3.connect(db).execute("SELECT item FROM orders ORDER BY id").fetchall() == [
            ("a",), ("b",), ("to Postgres",)]

        p2 = FaultProxy(p.target[0], p.target[1])
        try:
            p2.lose_reply_after(b"SET direction")
            out = switched(cfg, "rollback", {"SYNCD_POSTGRES__DSN": via["SYNCD_POSTGRES__DSN"].replace(
                f":{p.port}/", f":{p2.port}/")})
            assert p2.reply_lost.is_set(), out
        finally:
            p2.close()
        assert out.startswith("rc=0") and "Postgres recorded the rollback; its confirmation did not reach syncd" in out, out
        assert await pg_rows(pg_dsn, "SELECT kind, state FROM syncd.switches ORDER BY id") == [
            ("cutover", "done"), ("rollback", "done")]
        assert sqlite_write(db, "to SQLite after the rollback") is None
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT item FROM app.orders ORDER BY id") == [
            ("a",), ("b",), ("to Postgres",), ("to SQLite after the rollback",)]
        with pytest.raises(Exception, match="moved back to SQLite by syncd"):
            await pg_rows(pg_dsn, "INSERT INTO app.orders (item) VALUES ('to Postgres after the rollback')")


async def test_a_switch_whose_outcome_cannot_be_asked_leaves_the_file_frozen(tmp_path, make_config, pg_dsn, proxy):
    p, via = proxy
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        p.lose_reply_after(b"SET direction", refuse_after=True)
        out = switched(cfg, "cutover", via)
        assert p.reply_lost.is_set(), out
        assert out.startswith("rc=1") and "OUTCOME UNKNOWN" in out and "stays frozen" in out, out
        assert "Traceback" not in out
        # Postgres did record it: the file must not take the application's writes.
        assert await pg_rows(pg_dsn, "SELECT direction FROM syncd.sources") == [("to_sqlite",)]

        async def still_frozen() -> bool:
            return (sqlite_write(db, "to SQLite") or "").startswith("this database was moved to PostgreSQL")

        await eventually(still_frozen, 10, "the file frozen", d)
        r = run_cli(cfg, "cutover")
        assert r.returncode == 0 and "already cut over" in r.stdout, r.stdout + r.stderr
        assert await still_frozen()
