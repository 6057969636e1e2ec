"""A row Postgres refuses during a load (a constraint of the user's own on syncd's
table, say) holds the table with that row's key and Postgres's reason: the failing
chunk is bisected by COPY into the table it was loaded into, as it was sent."""

from __future__ import annotations

import secrets
import sqlite3

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, pg_rows, table_states, wait_caught_up


def make_file(path, rows: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute('CREATE TABLE "pay ""lines""" (region TEXT, at REAL, amount REAL, note TEXT, '
                 "PRIMARY KEY (region, at))")
    conn.execute("BEGIN")
    conn.executemany('INSERT INTO "pay ""lines""" VALUES (?, ?, ?, ?)',
                     ((f"r{i % 7}", i + 0.5, i * 1.25, f"line {i}") for i in range(rows)))
    conn.execute("COMMIT")
    conn.close()


async def table_row(dsn) -> tuple[str | None, str | None]:
    conn = await asyncpg.connect(dsn)
    try:
        r = await conn.fetchrow("SELECT state, reason FROM syncd.tables WHERE table_name = 'pay \"lines\"'")
        return (r["state"], r["reason"]) if r else (None, None)
    except asyncpg.UndefinedTableError:
        return None, None
    finally:
        await conn.close()


async def test_a_row_postgres_refuses_mid_load_is_named(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_file(db, 3_000)
    app = sqlite3.connect(db, isolation_level=None)
    app.execute('UPDATE "pay ""lines""" SET amount = -5 WHERE region = \'r3\' AND at = 1606.5')
    app.close()
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
    out = run_cli(cfg, "init")
    assert out.returncode == 0, out.stdout + out.stderr
    conn = await asyncpg.connect(pg_dsn)
    try:  # a constraint of the user's own on syncd's table, which that one row breaks
        await conn.execute('ALTER TABLE app."pay ""lines""" ADD CONSTRAINT no_refunds CHECK (amount >= 0)')
    finally:
        await conn.close()

    async def held() -> bool:
        return (await table_row(pg_dsn))[0] == "held"

    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await eventually(held, 300, "the table to be held", d)
        _, reason = await table_row(pg_dsn)
        assert "key ('r3', 1606.5)" in reason and "no_refunds" in reason, reason
        assert reason.count("Failing row contains") == 1, reason  # Postgres's detail, once
        assert d.stop() == 0


async def test_a_key_too_long_for_postgres_s_index_holds_only_its_table(app_db, make_config, pg_dsn, tmp_path):
    """A TEXT key SQLite holds that is longer than a Postgres index entry may be (SQLSTATE
    54000, "index row requires ... bytes"): the load holds that table, naming the row,
    and the source's other tables stream on; once the row is gone from SQLite the table
    loads. Before, the source failed ("unexpected error") and retried the load for good."""
    long_key = secrets.token_urlsafe(8000)  # incompressible: the index entry is as long
    app = sqlite3.connect(app_db, isolation_level=None)
    app.executescript("CREATE TABLE codes (code TEXT PRIMARY KEY, v TEXT); "
                      "CREATE TABLE notes (id INTEGER PRIMARY KEY, v TEXT);")
    app.execute("INSERT INTO codes VALUES ('short', 'a'), (?, 'b')", (long_key,))
    app.execute("INSERT INTO notes VALUES (1, 'streams on')")
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        async def held() -> bool:
            try:
                return (await table_states(pg_dsn, "app")).get("codes", ("",))[0] == "held"
            except asyncpg.UndefinedTableError:
                return False  # no bookkeeping yet

        await eventually(held, 60, "the table to be held", d)
        reason = (await table_states(pg_dsn, "app"))["codes"][1]
        assert "54000" in reason and long_key[:20] in reason, reason
        await eventually(lambda: _rows(pg_dsn, "SELECT v FROM app.notes", [("streams on",)]), 30,
                         "the other table loaded", d)
        app.execute("DELETE FROM codes WHERE code = ?", (long_key,))
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT code, v FROM app.codes") == [("short", "a")]
        assert d.stop() == 0
    app.close()
    assert "unexpected error" not in d.log(), d.log()


async def _rows(dsn: str, sql: str, want: list[tuple]) -> bool:
    return await pg_rows(dsn, sql) == want
