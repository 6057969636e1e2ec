"""What capture costs the application: write throughput on the same table with syncd's
triggers installed vs without, side by side.

Capture is installed by syncd's own code (reconcile.install_capture, what `syncd init`
and the daemon run), so the real triggers are measured. Each round runs both arms twice
on fresh copies of the same file, in ABBA order (BAAB on odd rounds) so a drift in
machine load cancels; the figure is the median of the per-round ratios
(with / without), target >= 0.6x.

    python bench/capture_overhead.py [--quick]
"""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    ITEMS_INSERT, Figure, create_items, finish, item_row, median, parse_args, print_table,
    remove_db, scratch_dir, spread,
)
from syncd.config import Settings  # noqa: E402
from syncd.reconcile import install_capture  # noqa: E402
from syncd.session import SourceSession  # noqa: E402

TARGET = ">= 0.6"


def install(db: Path) -> None:
    settings = Settings(postgres={"dsn": "postgresql://syncd@127.0.0.1/unused"}, metrics={"listen": ""},
                        sources=[{"name": "app", "path": str(db)}])

    async def run() -> None:
        session = SourceSession(settings, settings.sources[0])
        try:
            await install_capture(session)  # SQLite side only; Postgres is not contacted
        finally:
            await session.close()

    asyncio.run(run())


def connect(db: Path, synchronous: str | None = None) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    if synchronous:
        conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


def single_row(db: Path, rows: list[tuple], synchronous: str | None) -> float:
    """One INSERT per transaction (autocommit), as a web request would."""
    conn = connect(db, synchronous)
    t = time.perf_counter()
    for r in rows:
        conn.execute(ITEMS_INSERT, r)
    elapsed = time.perf_counter() - t
    conn.close()
    return len(rows) / elapsed


def bulk_insert(db: Path, rows: list[tuple]) -> float:
    conn = connect(db)
    t = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(ITEMS_INSERT, rows)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - t
    conn.close()
    return len(rows) / elapsed


def bulk_update(db: Path, n: int) -> float:
    conn = connect(db)
    t = time.perf_counter()
    conn.execute("BEGIN")
    changed = conn.execute("UPDATE items SET qty = qty + 1, score = score * 1.01").rowcount
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - t
    conn.close()
    assert changed == n, changed
    return n / elapsed


def main() -> None:
    args = parse_args(__doc__)
    started = time.monotonic()
    rounds = 2 if args.quick else 5
    n_full, n_normal, n_bulk = (300, 3000, 20_000) if args.quick else (2000, 20_000, 100_000)
    rnd = random.Random(7)
    new_rows = [item_row(i, rnd) for i in range(1, n_bulk + 1)]

    with scratch_dir("capture") as tmp:
        empty, filled = tmp / "empty.db", tmp / "filled.db"
        create_items(empty, 0)
        create_items(filled, n_bulk, seed=3)

        def trial(template: Path, capture: bool) -> Path:
            db = tmp / ("with.db" if capture else "without.db")
            remove_db(db)
            shutil.copyfile(template, db)
            if capture:
                install(db)
            return db

        workloads = {  # short name -> (template, work, unit, description)
            "single-row tx, synchronous=FULL": (empty, lambda db: single_row(db, new_rows[:n_full], None), "tx/s",
                                                f"{n_full} one-row INSERT transactions, WAL, synchronous=FULL"),
            "single-row tx, synchronous=NORMAL": (empty, lambda db: single_row(db, new_rows[:n_normal], "NORMAL"),
                                                  "tx/s", f"{n_normal} one-row INSERT transactions, WAL, NORMAL"),
            "bulk INSERT": (empty, lambda db: bulk_insert(db, new_rows), "rows/s",
                            f"executemany of {n_bulk:,} rows in one transaction"),
            "bulk UPDATE": (filled, lambda db: bulk_update(db, n_bulk), "rows/s",
                            f"one UPDATE statement changing {n_bulk:,} rows"),
        }
        results = {name: {"with": [], "without": [], "ratio": []} for name in workloads}
        for r in range(rounds):
            for name, (template, work, _unit, _d) in workloads.items():
                got = {False: [], True: []}
                # ABBA (BAAB on odd rounds): a drift in machine load within the round cancels out.
                for capture in [False, True, True, False] if r % 2 == 0 else [True, False, False, True]:
                    db = trial(template, capture)
                    got[capture].append(work(db))
                    remove_db(db)
                res = results[name]
                res["without"].append(sum(got[False]) / 2)
                res["with"].append(sum(got[True]) / 2)
                res["ratio"].append(res["with"][-1] / res["without"][-1])

    rows, figures = [], []
    for name, (_t, _w, unit, desc) in workloads.items():
        res = results[name]
        ratio = median(res["ratio"])
        rows.append([name, desc, f"{median(res['without']):,.0f} {unit}", f"{median(res['with']):,.0f} {unit}",
                     f"{ratio:.2f}x", spread(res["ratio"])])
        figures.append(Figure("capture_overhead", f"{name}: with/without capture", ratio, "x", TARGET))
    print_table(f"Application write throughput, with vs without capture (median of {rounds} ABBA rounds)",
                ["workload", "what", "without", "with capture", "ratio", "ratio range"], rows)
    print("  Bulk UPDATE: any row trigger costs SQLite its one-pass UPDATE (EXPLAIN shows OpenEphemeral +\n"
          "  NotExists: rowids collected first, then each row sought again), so an empty trigger alone\n"
          "  already roughly halves this figure; see bench/README.md.")
    finish(args, figures, started)


if __name__ == "__main__":
    main()
