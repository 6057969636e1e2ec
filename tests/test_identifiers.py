"""Every identifier is quoted exactly: odd table and column names just work."""

from __future__ import annotations

import sqlite3

import asyncpg

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import wait_caught_up

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
