"""Every identifier is quoted exactly: odd table and column names just work."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg

from tests.support.compare import compare_keyless, compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import table_states, wait_caught_up

ODD_TABLES = ["order", "Order Details", 'weird "name"; DROP TABLE x;--', "MixedCase", "ünïcødé 表", "with.dot"]


def q(n: str) -> str:
    return '"' + n.replace('"', '""') + '"'


async def test_odd_identifiers_replicate(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db)
    for t in ODD_TABLES:
        conn.execute(f'CREATE TABLE {q(t)} ("select" INTEGER PRIMARY KEY, "emoji 🚀" TEXT, "Col""Quote" REAL)')
        conn.execute(f"INSERT INTO {q(t)} VALUES (1, 'a', 1.5)")
    conn.commit()
    cfg = make_config([{"name": "odd-source.1", "path": str(app_db), "schema": 'Odd "Schema"'}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "odd-source.1", daemon=d)
        for t in ODD_TABLES:
            conn.execute(f"INSERT INTO {q(t)} VALUES (2, '🚀', -1.0)")
            conn.execute(f"UPDATE {q(t)} SET \"emoji 🚀\" = 'changed' WHERE \"select\" = 1")
        conn.commit()
        await wait_caught_up(app_db, pg_dsn, "odd-source.1", daemon=d)
        assert d.stop() == 0
    for t in ODD_TABLES:
        assert await compare_table(str(app_db), pg_dsn, 'Odd "Schema"', t) == [], t
    pg = await asyncpg.connect(pg_dsn)
    try:
        names = {r[0] for r in await pg.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'Odd \"Schema\"'")}
        cols = [r[0] for r in await pg.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'Odd \"Schema\"' "
            "AND table_name = 'order' ORDER BY ordinal_position")]
    finally:
        await pg.close()
    assert names == set(ODD_TABLES)
    assert cols == ["select", "emoji 🚀", 'Col"Quote']


async def test_tables_named_as_postgres_names_a_tables_key_index_and_sequence(tmp_path, make_config, pg_dsn):
    """Postgres names the primary key index of syncd's table "log" `log_pkey`, and the
    identity of its rowid column `log__syncd_rowid_seq`, in the namespace tables share.
    SQLite tables of those names replicate all the same, whether the file holds them at
    the first start or the application creates them while syncd streams: syncd's own
    index and sequence make room, and no one is told syncd did not create them."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    later = ["log_pkey", "log__syncd_rowid_seq"]
    for t in ["log_pkey", "log__syncd_rowid_seq"]:  # before "log" in the file: created after it in Postgres
        conn.execute(f"CREATE TABLE {q(t)} (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute(f"INSERT INTO {q(t)} VALUES (1, 'first')")
    conn.execute("CREATE TABLE log (at TEXT, what TEXT)")
    conn.execute("CREATE TABLE notes (at TEXT)")
    conn.executemany("INSERT INTO log VALUES (?, ?)", [("t1", "dup")] * 2)
    conn.execute("INSERT INTO notes VALUES ('n')")
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        for t in ["notes_pkey", "notes__syncd_rowid_seq"]:  # created while syncd streams
            conn.execute(f"CREATE TABLE {q(t)} (id INTEGER PRIMARY KEY, v TEXT)")
            conn.execute(f"INSERT INTO {q(t)} VALUES (1, 'later')")
        conn.execute("INSERT INTO log VALUES ('t2', 'after')")
        conn.execute("INSERT INTO notes VALUES ('m')")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        log = d.log()
    assert "ERROR" not in log and "did not create" not in log, log[-3000:]
    later += ["notes_pkey", "notes__syncd_rowid_seq"]
    states = await table_states(pg_dsn, "app")
    assert {t: s[0] for t, s in states.items()} == {t: "streaming" for t in [*later, "log", "notes"]}, states
    for t in later:
        assert await compare_table(str(db), pg_dsn, "app", t) == [], t
    for t in ("log", "notes"):
        assert await compare_keyless(str(db), pg_dsn, "app", t) == [], t
    r = run_cli(cfg, "verify")
    assert r.returncode == 0 and "6 of 6 table(s) equal" in r.stdout, r.stdout + r.stderr


async def test_an_index_named_as_postgres_names_a_tables_identity_sequence(tmp_path, make_config, pg_dsn):
    """Postgres names the identity sequence of syncd's table "orders" (its INTEGER PRIMARY
    KEY `id`) `orders_id_seq`, and a long table's `<table cut short>_<column>_seq`, in the
    namespace indexes share. A SQLite index of such a name is built all the same, under a
    name of its own, and no one is told syncd did not create the sequence."""
    long_table = "t" * 58
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT)")
    conn.execute("CREATE INDEX orders_id_seq ON orders (customer)")
    conn.execute(f"CREATE TABLE {long_table} (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute(f"CREATE UNIQUE INDEX {long_table[:56]}_id_seq ON {long_table} (v)")
    conn.execute("INSERT INTO orders VALUES (1, 'ada')")
    conn.execute(f"INSERT INTO {long_table} VALUES (1, 'x')")
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            async def built() -> list:
                return sorted(tuple(r) for r in await pg.fetch(
                    "SELECT t.relname::text, a.attname::text, x.indisunique FROM pg_index x "
                    "JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
                    "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0] "
                    "JOIN pg_class i ON i.oid = x.indexrelid "  # syncd's own lookup indexes aside
                    "WHERE n.nspname = 'app' AND NOT x.indisprimary AND i.relname NOT LIKE '\\_syncd\\_%'"))

            deadline = asyncio.get_running_loop().time() + 30
            while await built() != [("orders", "customer", False), (long_table, "v", True)]:
                assert asyncio.get_running_loop().time() < deadline, (await built(), d.log()[-3000:])
                await asyncio.sleep(0.2)
        finally:
            await pg.close()
        assert d.stop() == 0
        log = d.log()
    assert "did not create" not in log and "not created" not in log, log[-3000:]
