"""An application writer in its own process: random inserts, updates, deletes and key
changes in short transactions, with a normal busy_timeout. Prints a JSON summary
(transactions, lock errors) when done.

    python -m tests.support.writer DB --seconds 5 --seed 1 [--table items] [--rate 0]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sqlite3
import sys
import time

SCHEMA = "CREATE TABLE IF NOT EXISTS {t} (id INTEGER PRIMARY KEY, v TEXT, n INTEGER, r REAL, b BLOB)"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--table", default="items")
    ap.add_argument("--rate", type=float, default=0, help="transactions per second (0: as fast as possible)")
    ap.add_argument("--busy-timeout", type=float, default=5.0)
    ap.add_argument("--ids", type=int, default=2000)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    conn = sqlite3.connect(args.db, timeout=args.busy_timeout, isolation_level=None)
    t = '"' + args.table.replace('"', '""') + '"'
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    tx = locked = 0
    errors: list[str] = []
    deadline = time.monotonic() + args.seconds
    next_at = time.monotonic()
    while not stop and time.monotonic() < deadline:
        if args.rate:
            next_at += 1 / args.rate
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        step = "BEGIN IMMEDIATE"
        started = time.monotonic()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for _ in range(rnd.randint(1, 5)):
                op = rnd.random()
                i = rnd.randint(1, args.ids)
                if op < 0.45:
                    conn.execute(f"INSERT OR REPLACE INTO {t} VALUES (?, ?, ?, ?, ?)",
                                 (i, f"v{rnd.random()}", rnd.randint(-2**40, 2**40), rnd.random(), rnd.randbytes(4)))
                elif op < 0.75:
                    conn.execute(f"UPDATE {t} SET n = n + 1, v = ? WHERE id = ?", (f"u{rnd.random()}", i))
                elif op < 0.9:
                    conn.execute(f"DELETE FROM {t} WHERE id = ?", (i,))
                else:
                    j = rnd.randint(args.ids + 1, args.ids * 2)
                    conn.execute(f"UPDATE OR IGNORE {t} SET id = ? WHERE id = ?", (j, i))
            step = "COMMIT"
            conn.execute("COMMIT")
            tx += 1
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                locked += 1
                errors.append(f"{step}: {e} after {time.monotonic() - started:.2f}s")
            else:
                raise
            if conn.in_transaction:
                conn.execute("ROLLBACK")
    print(json.dumps({"transactions": tx, "lock_errors": locked, "errors": errors[:10]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
