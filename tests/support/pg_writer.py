"""An application writing Postgres after a cutover, in its own process: random inserts,
updates, deletes and key changes in short transactions, at a rate. Prints a JSON
summary (transactions, errors) when done.

    python -m tests.support.pg_writer DSN --seconds 5 --seed 1 [--table items] [--rate 50]

The table is `app.<table>` with syncd's items shape (id, v, n, r, b)."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import time

import asyncpg


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dsn")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--table", default="items")
    ap.add_argument("--rate", type=float, default=50, help="transactions per second")
    ap.add_argument("--ids", type=int, default=2000)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    t = 'app."' + args.table.replace('"', '""') + '"'
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    conn = await asyncpg.connect(args.dsn)
    tx = errors = 0
    deadline = time.monotonic() + args.seconds
    next_at = time.monotonic()
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            next_at += 1 / args.rate
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                async with conn.transaction():
                    for _ in range(rnd.randint(1, 5)):
                        op = rnd.random()
                        i = rnd.randint(1, args.ids)
                        if op < 0.45:
                            await conn.execute(
                                f"INSERT INTO {t} (id, v, n, r, b) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO "
                                "UPDATE SET v = EXCLUDED.v, n = EXCLUDED.n, r = EXCLUDED.r, b = EXCLUDED.b",
                                i, f"pg{rnd.random()}", rnd.randint(-2**40, 2**40), rnd.random(), rnd.randbytes(4))
                        elif op < 0.75:
                            await conn.execute(f"UPDATE {t} SET v = $2, n = n + 1 WHERE id = $1", i, f"u{tx}")
                        elif op < 0.9:
                            await conn.execute(f"DELETE FROM {t} WHERE id = $1", i)
                        else:  # a key change
                            await conn.execute(f"UPDATE {t} SET id = $2 WHERE id = $1 AND NOT EXISTS "
                                               f"(SELECT 1 FROM {t} WHERE id = $2)", i, rnd.randint(1, args.ids))
                tx += 1
            except asyncpg.PostgresError:
                errors += 1  # two writers racing for one key: that transaction rolled back
    finally:
        await conn.close()
    print(json.dumps({"transactions": tx, "errors": errors}))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
