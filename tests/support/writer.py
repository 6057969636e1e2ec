"""An application writer in its own process: random inserts, updates, deletes and key
changes in short transactions, with a normal busy_timeout. Prints a JSON summary when
done: transactions, lock errors, and apart from them the lock errors that waited behind
another such writer committing (the application's writers contending with each other,
which a busy disk's fsync can stretch past any busy_timeout; see behind_other_writer).

    python -m tests.support.writer DB --seconds 5 --seed 1 [--table items] [--rate 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import sys
import time

SCHEMA = "CREATE TABLE IF NOT EXISTS {t} (id INTEGER PRIMARY KEY, v TEXT, n INTEGER, r REAL, b BLOB)"


# Locks SQLite takes (os_unix.c): in WAL mode a writer holds byte 120 of the -shm file
# from BEGIN to COMMIT; in rollback-journal mode it holds the database file's RESERVED
# byte (1073741825) from its first write on, and PENDING (1073741824) through its SHARED
# range (EXCLUSIVE) while it commits.
WAL_WRITE_BYTE = ("120", "120")
WRITER_BYTES = ("1073741824", "1073741825")


def lock_holders(db: str) -> list[dict]:
    """The POSIX locks other processes hold on the database and its -shm file right now
    (from /proc/locks): who a lock error waited behind, if it still holds on."""
    try:
        lines = open("/proc/locks").read().splitlines()
    except OSError:
        return []
    held = []
    for path in (db, db + "-shm"):
        try:
            st = os.stat(path)
        except OSError:
            continue
        inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for parts in (line.split() for line in lines):
            if "->" in parts or len(parts) < 8 or parts[5] != inode or int(parts[4]) == os.getpid():
                continue  # "->": a waiter, not a holder
            try:
                cmd = open(f"/proc/{parts[4]}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            except OSError:
                cmd = "?"
            held.append({"file": os.path.basename(path), "mode": parts[3], "range": (parts[6], parts[7]),
                         "pid": int(parts[4]), "cmd": " ".join(cmd.split())[:120]})
    return held


def behind_other_writer(held: list[dict]) -> bool:
    """True if the lock was another writer of this kind's, with nothing else in its way:
    in WAL mode it holds the write lock (no reader can hold up a WAL commit); in
    rollback-journal mode it holds a write lock on the database file and no other process
    (syncd's reader among them) holds any lock there. Such a writer outlasting a
    busy_timeout (its fsyncs on a busy disk) is the application's contention with itself,
    not syncd's. Anything else, nobody found included, counts against syncd."""
    ours = [h for h in held if "tests.support.writer" in h["cmd"]]
    others = [h for h in held if h not in ours]
    if any(h["file"].endswith("-shm") and h["mode"] == "WRITE" and h["range"] == WAL_WRITE_BYTE for h in ours):
        return True
    writing = any(not h["file"].endswith("-shm") and h["mode"] == "WRITE" and h["range"][0] in WRITER_BYTES
                  for h in ours)
    return writing and not any(not h["file"].endswith("-shm") for h in others)


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
    tx = locked = behind_app = 0
    errors: list[str] = []
    app_errors: list[str] = []
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
                held = lock_holders(args.db)
                where = "; ".join(f"{h['file']} {h['mode']} {'-'.join(h['range'])} pid {h['pid']} ({h['cmd']})"
                                  for h in held) or "none"
                entry = f"{step}: {e} after {time.monotonic() - started:.2f}s; locks held then: {where}"
                if behind_other_writer(held):
                    behind_app += 1
                    app_errors.append(entry)
                else:
                    locked += 1
                    errors.append(entry)
            else:
                raise
            if conn.in_transaction:
                conn.execute("ROLLBACK")
    print(json.dumps({"transactions": tx, "lock_errors": locked, "errors": errors[:10],
                      "behind_application": behind_app, "application_errors": app_errors[:10]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
