"""The application side of the streaming benchmarks: commits changes to `items`.

    python bench/writer.py DB --seconds 10 [--rate TX/S] [--ops-per-tx N]
                          [--mode mixed|insert] [--first-id N] [--commits FILE]

mixed:  each op inserts a new row (50%), updates an existing one (35%) or deletes one (15%).
insert: each op inserts the next id from --first-id; with --commits, the time each
        transaction's COMMIT returned is written as JSON [[last_id, time.time()], ...].
Prints a JSON summary on stdout: transactions, ops, seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ITEMS_INSERT, item_row  # noqa: E402


class MixedOps:
    """Inserts, updates and deletes over a table whose ids run 1..next_id-1."""

    def __init__(self, conn: sqlite3.Connection, seed: int):
        self.conn = conn
        self.rnd = random.Random(seed)
        self.next_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM items").fetchone()[0]

    def one(self) -> None:
        rnd, op = self.rnd, self.rnd.random()
        if op < 0.5:
            self.conn.execute(ITEMS_INSERT, item_row(self.next_id, rnd))
            self.next_id += 1
        elif op < 0.85:
            self.conn.execute("UPDATE items SET qty = qty + 1, score = ?, city = ? WHERE id = ?",
                              (rnd.random() * 1000, f"c{rnd.randrange(100)}", rnd.randrange(1, self.next_id)))
        else:
            self.conn.execute("DELETE FROM items WHERE id = ?", (rnd.randrange(1, self.next_id),))

    def transaction(self, ops: int) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        for _ in range(ops):
            self.one()
        self.conn.execute("COMMIT")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rate", type=float, default=0, help="transactions per second (0: as fast as possible)")
    ap.add_argument("--ops-per-tx", type=int, default=1)
    ap.add_argument("--mode", choices=["mixed", "insert"], default="mixed")
    ap.add_argument("--first-id", type=int, default=0)
    ap.add_argument("--commits")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    conn = sqlite3.connect(args.db, timeout=10, isolation_level=None)
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    mixed = MixedOps(conn, args.seed)
    rnd = random.Random(args.seed)
    next_id = args.first_id
    commits: list[tuple[int, float]] = []
    tx = 0
    start = time.monotonic()
    next_at = start
    while not stop and time.monotonic() - start < args.seconds:
        if args.rate:
            next_at += 1 / args.rate  # a fixed schedule: a late commit does not lower the rate
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if args.mode == "mixed":
            mixed.transaction(args.ops_per_tx)
        else:
            conn.execute("BEGIN IMMEDIATE")
            for _ in range(args.ops_per_tx):
                conn.execute(ITEMS_INSERT, item_row(next_id, rnd))
                next_id += 1
            conn.execute("COMMIT")
            if args.commits:
                commits.append((next_id - 1, time.time()))
        tx += 1
    elapsed = time.monotonic() - start
    conn.close()
    if args.commits:
        Path(args.commits).write_text(json.dumps(commits))
    print(json.dumps({"transactions": tx, "ops": tx * args.ops_per_tx, "seconds": elapsed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
