"""What schema parity adds to a cutover's write downtime: `parity.finalize` (in the final
Postgres transaction: a NOCASE column made case-insensitive, a DATETIME column typed after
its values are proven, UNIQUE constraints made immediate, a unique partial index made
unique, a CHECK and a foreign key validated), on a 1M-row table (100k with --quick),
with the daemon stopped after it streamed. Also the time the dual-write indexes took
to build. Target: finalize well within the 30 s budget of a 1M-row cutover.

    python bench/parity_finalize.py [--quick]
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    Daemon, Figure, main_async, pg_connect, pg_database, print_table, scratch_dir, wait_streaming, write_config,
)
from syncd import parity  # noqa: E402
from syncd.config import load_settings  # noqa: E402
from syncd.sqlite.introspect import introspect  # noqa: E402

SCHEMA = """
CREATE TABLE customer (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE orders (
  id INTEGER PRIMARY KEY,
  customer_id INTEGER REFERENCES customer(id),
  email TEXT COLLATE NOCASE UNIQUE,
  qty INTEGER CHECK (qty >= 0),
  city TEXT,
  created_at DATETIME
);
CREATE INDEX orders_city ON orders(city, created_at);
CREATE UNIQUE INDEX orders_big ON orders(customer_id, qty) WHERE qty > 9990;
"""


def make(db: Path, n: int) -> None:
    rnd = random.Random(1)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript(SCHEMA)
    conn.executemany("INSERT INTO customer VALUES (?, ?)", [(i, f"c{i}") for i in range(1, 1001)])
    start = dt.datetime(2020, 1, 1)
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", (
        (i, rnd.randrange(1, 1001), f"user{i}@example.org", i % 10_000 if i % 10_000 <= 9990 else 5,
         rnd.choice(["Lyon", "Porto", "Osaka", "Lima"]),
         (start + dt.timedelta(seconds=rnd.randrange(5 * 365 * 86400))).strftime("%Y-%m-%d %H:%M:%S"))
        for i in range(1, n + 1)))
    conn.commit()
    conn.close()


async def run(args) -> list[Figure]:
    n = 100_000 if args.quick else 1_000_000
    with pg_database("parity_finalize") as dsn, scratch_dir("parity-finalize") as tmp:
        db = tmp / "app.db"
        make(db, n)
        cfg = write_config(tmp / "syncd.toml", dsn, db)
        with Daemon(cfg, tmp / "syncd.log") as d:
            conn = await pg_connect(dsn)
            try:
                await wait_streaming(conn, db, d, timeout=1800)
                # the deferrable UNIQUE constraints come once the table streams
                while await conn.fetchval("SELECT count(*) FROM pg_constraint WHERE contype = 'u'") < 1:
                    await asyncio.sleep(0.1)
            finally:
                await conn.close()
            built = [ln for ln in d.lines() if ln.get("event") == "parity_created"]
            d.stop()
        settings = load_settings(cfg)
        source = settings.sources[0]
        ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
        specs = introspect(ro, source).tables
        ro.close()
        conn = await pg_connect(dsn)
        try:
            t = time.perf_counter()
            async with conn.transaction():
                result = await parity.finalize(conn, settings, source, specs)
            took = time.perf_counter() - t
        finally:
            await conn.close()
    rows = [[o.kind, o.what, "created"] for o in result.created] + \
        [[o.kind, o.what, "NOT created: " + o.detail[:60]] for o in result.not_created]
    print_table(f"finalize on {n:,} rows: {took:.2f} s", ["kind", "object", "result"], rows)
    print(f"dual-write objects created by the daemon: {len(built)}")
    print("finalize phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in result.phases.items()))
    return [Figure("parity_finalize", f"finalize, {n:,} rows", took, "s", "< 30")]


if __name__ == "__main__":
    main_async(__doc__, run)
