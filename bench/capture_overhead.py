"""What capture costs the application: write throughput on the same table with syncd's
triggers installed vs without, side by side, with the ceilings any trigger capture has.

Arms, each on a fresh copy of the same file (WAL, synchronous=NORMAL), rotated within
each round so a drift in machine load cancels:
- without: no trigger at all;
- empty trigger: one AFTER INSERT/UPDATE/DELETE trigger per event whose body does
  nothing. Any row trigger costs SQLite its one-pass UPDATE: the ceiling of every
  trigger-based capture;
- one-column log: triggers appending one integer to a one-column table. A second b-tree
  insert per row, and nothing else: the ceiling of any capture that records each change;
- syncd: capture installed by syncd's own code (reconcile.install_capture, what
  `syncd init` and the daemon run), so the real triggers are measured.

Workloads on the user's `ledger (id INTEGER PRIMARY KEY, kind TEXT, amount REAL, note
TEXT, at TEXT)`: 5,000 single-row INSERT transactions (target >= 0.7x), one INSERT of
100k rows (>= 0.7x), one UPDATE of every row of a 100k-row table (>= 0.45x). Figures
are medians of the per-round ratios (arm / without).

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
    Figure, finish, median, parse_args, print_table, remove_db, scratch_dir, spread,
)
from syncd.config import Settings  # noqa: E402
from syncd.reconcile import install_capture  # noqa: E402
from syncd.session import SourceSession  # noqa: E402

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


def install_empty(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    for event, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
        conn.execute(f"CREATE TRIGGER empty_{event.lower()} AFTER {event} ON ledger BEGIN "
                     f"SELECT {row}.id WHERE 0; END")
    conn.close()


def install_minimal(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE one_column_log (k)")
    for event, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
        conn.execute(f"CREATE TRIGGER log_{event.lower()} AFTER {event} ON ledger BEGIN "
                     f"INSERT INTO one_column_log VALUES ({row}.id); END")
    conn.close()


ARMS = {"without": None, "empty trigger": install_empty, "one-column log": install_minimal, "syncd": install}
LEDGER_DDL = "CREATE TABLE ledger (id INTEGER PRIMARY KEY, kind TEXT, amount REAL, note TEXT, at TEXT)"
LEDGER_INSERT = "INSERT INTO ledger VALUES (?, ?, ?, ?, ?)"
KINDS = ["sale", "refund", "fee", "payout", "adjustment"]


def ledger_row(i: int, rnd: random.Random) -> tuple:
    return (i, rnd.choice(KINDS), round(rnd.uniform(-500, 5000), 2), f"invoice {i} for customer {rnd.randrange(10000)}",
            f"2025-{1 + i % 12:02d}-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}")


def create_ledger(db: Path, rows: list[tuple]) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(LEDGER_DDL)
    conn.execute("BEGIN")
    conn.executemany(LEDGER_INSERT, rows)
    conn.execute("COMMIT")
    conn.close()


def connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


class Timer:
    """Wall time, and this process's CPU time beside it: on a shared machine another
    process taking the CPU shows in the first only."""

    def __enter__(self) -> "Timer":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def rates(self, n: int) -> tuple[float, float]:
        return n / self.wall, n / max(self.cpu, 1e-9)


def single_row(db: Path, rows: list[tuple]) -> tuple[float, float]:
    """One INSERT per transaction (autocommit), as a web request would."""
    conn = connect(db)
    with Timer() as t:
        for r in rows:
            conn.execute(LEDGER_INSERT, r)
    conn.close()
    return t.rates(len(rows))


def bulk_insert(db: Path, rows: list[tuple]) -> tuple[float, float]:
    conn = connect(db)
    with Timer() as t:
        conn.execute("BEGIN")
        conn.executemany(LEDGER_INSERT, rows)
        conn.execute("COMMIT")
    conn.close()
    return t.rates(len(rows))


def bulk_update(db: Path, n: int) -> tuple[float, float]:
    conn = connect(db)
    with Timer() as t:
        conn.execute("BEGIN")
        changed = conn.execute("UPDATE ledger SET amount = amount + 1").rowcount
        conn.execute("COMMIT")
    conn.close()
    assert changed == n, changed
    return t.rates(n)


def main() -> None:
    args = parse_args(__doc__)
    started = time.monotonic()
    rounds = 2 if args.quick else 5
    n_single, n_bulk = (1000, 20_000) if args.quick else (5000, 100_000)
    rnd = random.Random(7)
    new_rows = [ledger_row(i, rnd) for i in range(1, n_bulk + 1)]

    with scratch_dir("capture") as tmp:
        empty, filled = tmp / "empty.db", tmp / "filled.db"
        create_ledger(empty, [])
        create_ledger(filled, new_rows)

        def trial(template: Path, arm: str) -> Path:
            db = tmp / "trial.db"
            remove_db(db)
            shutil.copyfile(template, db)
            if ARMS[arm] is not None:
                ARMS[arm](db)
            return db

        workloads = {  # short name -> (template, work, unit, description, target)
            "single-row tx": (empty, lambda db: single_row(db, new_rows[:n_single]), "tx/s",
                              f"{n_single:,} one-row INSERT transactions", ">= 0.7"),
            "bulk INSERT": (empty, lambda db: bulk_insert(db, new_rows), "rows/s",
                            f"one INSERT transaction of {n_bulk:,} rows", ">= 0.7"),
            "bulk UPDATE": (filled, lambda db: bulk_update(db, n_bulk), "rows/s",
                            f"one UPDATE of every row ({n_bulk:,})", ">= 0.45"),
        }
        arms = list(ARMS)
        results = {name: {arm: [] for arm in arms} for name in workloads}
        ratios = {name: {arm: [] for arm in arms} for name in workloads}
        cpu_ratios = {name: {arm: [] for arm in arms} for name in workloads}
        for r in range(rounds):
            for name, (template, work, _unit, _d, _t) in workloads.items():
                got: dict[str, list[tuple[float, float]]] = {}
                # The arms rotate, forwards then backwards: a drift in machine load cancels out.
                order = arms[r % len(arms):] + arms[:r % len(arms)]
                for arm in order + order[::-1]:
                    db = trial(template, arm)
                    got.setdefault(arm, []).append(work(db))
                    remove_db(db)
                for arm in arms:
                    wall = sum(w for w, _c in got[arm]) / len(got[arm])
                    cpu = sum(c for _w, c in got[arm]) / len(got[arm])
                    results[name][arm].append(wall)
                    ratios[name][arm].append(wall / results[name]["without"][-1])
                    base_cpu = sum(c for _w, c in got["without"]) / len(got["without"])
                    cpu_ratios[name][arm].append(cpu / base_cpu)

    rows, cpu_rows, figures = [], [], []
    for name, (_t, _w, unit, desc, target) in workloads.items():
        res, rat, crat = results[name], ratios[name], cpu_ratios[name]
        rows.append([name, desc, f"{median(res['without']):,.0f} {unit}",
                     *(f"{median(rat[arm]):.2f}x" for arm in arms[1:]), spread(rat["syncd"]), target])
        cpu_rows.append([name, *(f"{median(crat[arm]):.2f}x" for arm in arms[1:]), spread(crat["syncd"])])
        figures.append(Figure("capture_overhead", f"{name}: with/without capture", median(rat["syncd"]), "x", target,
                              note=f"empty trigger {median(rat['empty trigger']):.2f}x, one-column log "
                                   f"{median(rat['one-column log']):.2f}x; CPU time {median(crat['syncd']):.2f}x"))
    print_table(f"Application write throughput, each arm / without (WAL, synchronous=NORMAL; median of {rounds} "
                "rounds)", ["workload", "what", "without", *arms[1:], "syncd range", "target"], rows)
    print_table("The same, from the writer's CPU time (user + system) instead of the wall clock: what another "
                "process on a shared machine does not move", ["workload", *arms[1:], "syncd range"], cpu_rows)
    print("  empty trigger: what any row trigger costs (SQLite gives up its one-pass UPDATE);\n"
          "  one-column log: a trigger appending one integer per change, the least a changelog can write;\n"
          "  the gap between them is the second b-tree insert per row, which no trigger capture avoids.")
    finish(args, figures, started)


if __name__ == "__main__":
    main()
