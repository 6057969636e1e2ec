"""What capture costs single-row application writes on a table with a unique, a partial
unique and an expression unique index, at 10k and 1M rows: with syncd's triggers vs
without, side by side (ABBA rounds, fresh copies of one file, median of per-round ratios).

syncd's triggers name only the key, so each write stays a few index lookups whatever
the table's size (O(log n)): the ratio at 1M rows is held to >= 0.5x, and should sit
near the 10k figure. Before REPLACE victims were found at apply time, the partial index
made every write scan the table (500 UPDATEs: 0.005 s without capture, 12.8 s with).

    python bench/unique_index_writes.py [--quick]
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.capture_overhead import install  # noqa: E402
from bench.common import Figure, finish, median, parse_args, print_table, remove_db, scratch_dir, spread  # noqa: E402

TARGET = ">= 0.5"
DDL = """
CREATE TABLE acct (code TEXT PRIMARY KEY, email TEXT, handle TEXT, deleted_at TEXT, score INTEGER);
CREATE UNIQUE INDEX acct_email_live ON acct(email) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX acct_handle ON acct(handle);
CREATE UNIQUE INDEX acct_email_lower ON acct(lower(email), coalesce(deleted_at, ''));
"""


def make(db: Path, rows: int) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript(DDL)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO acct VALUES (?, ?, ?, NULL, ?)",
                     ((f"c{i:08d}", f"user{i}@example.org", f"h{i}", i % 100) for i in range(rows)))
    conn.execute("COMMIT")
    conn.close()


def writes(db: Path, rows: int, n: int) -> float:
    """n single-row transactions of each kind, autocommit like a web request; writes/s."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    step = max(1, rows // n)
    t = time.perf_counter()
    for i in range(n):
        k = (i * step) % rows
        conn.execute("UPDATE acct SET score = score + 1 WHERE code = ?", (f"c{k:08d}",))
        conn.execute("INSERT INTO acct VALUES (?, ?, ?, NULL, 0)", (f"n{i}", f"new{i}@example.org", f"nh{i}"))
        conn.execute("INSERT OR REPLACE INTO acct VALUES (?, ?, ?, NULL, 1)",
                     (f"r{i}", f"user{(k + 1) % rows}@example.org", f"rh{i}"))
    elapsed = time.perf_counter() - t
    conn.close()
    return 3 * n / elapsed


def main() -> None:
    args = parse_args(__doc__)
    started = time.monotonic()
    rounds = 2 if args.quick else 4
    sizes = [10_000, 100_000] if args.quick else [10_000, 1_000_000]
    n = 200 if args.quick else 500
    rows, figures = [], []
    with scratch_dir("unique-writes") as tmp:
        for size in sizes:
            template = tmp / f"template-{size}.db"
            make(template, size)
            got = {"with": [], "without": [], "ratio": []}
            for r in range(rounds):
                res = {False: [], True: []}
                for capture in ([False, True, True, False] if r % 2 == 0 else [True, False, False, True]):
                    db = tmp / "trial.db"
                    remove_db(db)
                    shutil.copyfile(template, db)
                    if capture:
                        install(db)
                    res[capture].append(writes(db, size, n))
                    remove_db(db)
                got["without"].append(sum(res[False]) / 2)
                got["with"].append(sum(res[True]) / 2)
                got["ratio"].append(got["with"][-1] / got["without"][-1])
            ratio = median(got["ratio"])
            rows.append([f"{size:,} rows", f"{median(got['without']):,.0f} writes/s",
                         f"{median(got['with']):,.0f} writes/s", f"{ratio:.2f}x", spread(got["ratio"])])
            figures.append(Figure("unique_index_writes", f"single-row writes, {size:,} rows, partial + expression "
                                                         "unique indexes: with/without capture", ratio, "x",
                                  TARGET if size >= 1_000_000 else None))
    print_table(f"Single-row UPDATE / INSERT / INSERT OR REPLACE under unique, partial unique and expression "
                f"unique indexes (median of {rounds} ABBA rounds)",
                ["table", "without capture", "with capture", "ratio", "ratio range"], rows)
    finish(args, figures, started)


if __name__ == "__main__":
    main()
