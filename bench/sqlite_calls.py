"""Why syncd runs sqlite3 on one dedicated worker thread (syncd.sqlite.connection.
SqliteWorker: a unit of work per hop to its thread) rather than aiosqlite.

Same file, same queries, from one asyncio loop, alternating, median of rounds:
- small query: one primary-key lookup per await (aiosqlite at its best,
  execute_fetchall = one hop; and the usual `async with db.execute()` + fetchone);
- batch read: 5000 rows of the realistic table in one await;
- unit of work: what syncd's batch read is - BEGIN, a small SELECT, a 5000-row
  SELECT, COMMIT. aiosqlite needs one hop per statement; the worker one in all.
Plain sqlite3 on the loop thread is shown as the floor.

    python bench/sqlite_calls.py [--quick]
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

try:
    import aiosqlite
except ImportError:
    sys.exit("bench/sqlite_calls.py needs aiosqlite: pip install '.[bench]'")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    Figure, alternate, create_items, main_async, median, print_table, scratch_dir,
)
from syncd.sqlite.connection import SqliteWorker  # noqa: E402

POINT = "SELECT name, qty FROM items WHERE id = ?"
BATCH = "SELECT * FROM items WHERE id > ? ORDER BY id LIMIT 5000"


def unit_of_work(conn: sqlite3.Connection, i: int) -> int:
    conn.execute("BEGIN")
    conn.execute(POINT, (i,)).fetchone()
    n = len(conn.execute(BATCH, (i,)).fetchall())
    conn.execute("COMMIT")
    return n


async def aio_unit(db: aiosqlite.Connection, i: int) -> int:
    await db.execute("BEGIN")
    await db.execute_fetchall(POINT, (i,))
    n = len(await db.execute_fetchall(BATCH, (i,)))
    await db.execute("COMMIT")
    return n


async def run(args) -> list[Figure]:
    rounds = 3 if args.quick else 9
    n_small, n_batch = (500, 10) if args.quick else (3000, 40)
    with scratch_dir("calls") as tmp:
        path = tmp / "app.db"
        create_items(path, 50_000)
        plain = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        aio = await aiosqlite.connect(path, isolation_level=None)
        worker = SqliteWorker(path, "bench", 2000)
        await worker.open()

        async def small_worker():
            for i in range(n_small):
                await worker.run(lambda c, i=i: c.execute(POINT, (i,)).fetchone())

        async def small_aio():
            for i in range(n_small):
                await aio.execute_fetchall(POINT, (i,))

        async def small_aio_cursor():
            for i in range(n_small):
                async with aio.execute(POINT, (i,)) as cur:
                    await cur.fetchone()

        async def small_plain():
            for i in range(n_small):
                plain.execute(POINT, (i,)).fetchone()

        async def batch_worker():
            for i in range(n_batch):
                await worker.run(lambda c, i=i: c.execute(BATCH, (i * 1000,)).fetchall())

        async def batch_aio():
            for i in range(n_batch):
                await aio.execute_fetchall(BATCH, (i * 1000,))

        async def batch_plain():
            for i in range(n_batch):
                plain.execute(BATCH, (i * 1000,)).fetchall()

        async def unit_worker():
            for i in range(n_batch):
                await worker.run(unit_of_work, i * 1000)

        async def unit_aio():
            for i in range(n_batch):
                await aio_unit(aio, i * 1000)

        async def unit_plain():
            for i in range(n_batch):
                unit_of_work(plain, i * 1000)

        cases = {
            "small query (pk lookup)": (n_small, {"worker": small_worker, "aiosqlite": small_aio,
                                                  "aiosqlite cursor": small_aio_cursor, "plain": small_plain}),
            "batch read (5000 rows)": (n_batch, {"worker": batch_worker, "aiosqlite": batch_aio,
                                                 "plain": batch_plain}),
            "unit of work (4 statements, 5000 rows)": (n_batch, {"worker": unit_worker, "aiosqlite": unit_aio,
                                                                 "plain": unit_plain}),
        }
        took = {(case, who): [] for case, (_, fns) in cases.items() for who in fns}
        for r in range(rounds):
            for case, (n, fns) in cases.items():
                for who in alternate(r, list(fns)):
                    t = time.perf_counter()
                    await fns[who]()
                    took[(case, who)].append((time.perf_counter() - t) / n * 1e6)
        await aio.close()
        await worker.close()
        worker.shutdown()
        plain.close()

    def per_call(case: str, who: str) -> float:
        return median(took[(case, who)])

    rows = []
    for case, (_, fns) in cases.items():
        w = per_call(case, "worker")
        for who in fns:
            v = per_call(case, who)
            rows.append([case, who, f"{v:,.1f}", f"{v / w:.2f}x"])
    print_table(f"Per-call cost from an asyncio loop, µs (median of {rounds} alternating rounds)",
                ["case", "how", "µs per call", "vs worker"], rows)
    small = per_call("small query (pk lookup)", "aiosqlite") / per_call("small query (pk lookup)", "worker")
    batch = per_call("batch read (5000 rows)", "aiosqlite") / per_call("batch read (5000 rows)", "worker")
    unit = (per_call("unit of work (4 statements, 5000 rows)", "aiosqlite")
            / per_call("unit of work (4 statements, 5000 rows)", "worker"))
    print(f"\nVerdict: aiosqlite costs {small:.2f}x the dedicated worker per small query, {batch:.2f}x per "
          f"5000-row read and {unit:.2f}x per syncd-style unit of work (one hop instead of four).")
    return [
        Figure("sqlite_calls", "aiosqlite/worker, small query", small, "x", note="informative"),
        Figure("sqlite_calls", "aiosqlite/worker, 5000-row read", batch, "x", note="informative"),
        Figure("sqlite_calls", "aiosqlite/worker, unit of work", unit, "x", note="informative"),
    ]


def main() -> None:
    main_async(__doc__, run)


if __name__ == "__main__":
    main()
