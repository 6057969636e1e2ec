"""Initial load of one realistic table (1M rows) into Postgres: syncd's snapshot vs
`psql \\copy` of the same rows from CSV vs pgloader reading the same SQLite file.

- syncd: the real daemon (`syncd run`) on a fresh database. Timed from its "syncd
  running" log line (interpreter start, imports and config are excluded; shown
  apart) until syncd.tables says the table left `loading` - that covers capture
  install, the value audit, the row count and the COPY.
- psql \\copy: the rows exported to CSV beforehand; only the \\copy is timed, into a
  table of the same shape syncd creates (primary key in place, as syncd has it).
- pgloader: the whole `pgloader sqlite:///... postgresql:///...` process.

The three alternate within each round; figures are medians. Target: syncd <= pgloader.

    python bench/initial_load.py [--quick]
"""

from __future__ import annotations

import asyncio
import csv
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    Daemon, Figure, alternate, check_daemon, create_items, main_async, median, pg_connect, pg_database,
    print_problems, print_table, psql, remove_db, scratch_dir, spread, write_config,
)

COPY_DDL = (
    "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, email text, city text, "
    "score double precision, qty bigint, created_at text, payload bytea)"
)


def export_csv(db: Path, out: Path) -> None:
    conn = sqlite3.connect(db)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        for row in conn.execute("SELECT * FROM items ORDER BY id"):
            w.writerow(["\\x" + v.hex() if isinstance(v, bytes) else repr(v) if isinstance(v, float) else v
                        for v in row])
    conn.close()


def pg_count(dsn: str, table: str) -> int:
    return int(psql(dsn, f"SELECT count(*) FROM {table}"))


async def load_syncd(tmp: Path, pristine: Path, rows: int, problems: list[str]) -> dict:
    db = tmp / "syncd.db"
    remove_db(db)
    shutil.copyfile(pristine, db)
    with pg_database("load") as dsn:
        cfg = write_config(tmp / "syncd.toml", dsn, db)
        spawned = time.time()
        with Daemon(cfg, tmp / "syncd.log") as d:
            conn = None
            while True:  # poll tightly: the finish time is when this first sees it
                if not d.alive():
                    raise RuntimeError("syncd exited:\n" + "\n".join(d.problems()[-10:]))
                try:
                    conn = conn or await pg_connect(dsn)
                    state = await conn.fetchval("SELECT state FROM syncd.tables WHERE table_name = 'items'")
                except Exception:  # bookkeeping not created yet
                    state = None
                if state in ("catchup", "streaming"):
                    done = time.time()
                    break
                await asyncio.sleep(0.02)
            phases = await conn.fetchrow(
                "SELECT extract(epoch FROM snapshot_started_at) AS s, extract(epoch FROM snapshot_finished_at) AS f "
                "FROM syncd.tables WHERE table_name = 'items'")
            await conn.close()
            running = d.event_time("started")
            check_daemon(d, d.stop(), problems)
        loaded = pg_count(dsn, "app.items")
    if loaded != rows:
        problems.append(f"syncd loaded {loaded} rows, expected {rows}")
    return {"load": done - running, "startup": running - spawned,
            "before_copy": float(phases["s"]) - running, "copy": float(phases["f"]) - float(phases["s"])}


def load_copy(csv_path: Path, rows: int, problems: list[str]) -> float:
    with pg_database("copy") as dsn:
        psql(dsn, COPY_DDL)
        t = time.perf_counter()
        psql(dsn, f"\\copy items FROM '{csv_path}' WITH (FORMAT csv)")
        elapsed = time.perf_counter() - t
        if pg_count(dsn, "items") != rows:
            problems.append("psql \\copy loaded the wrong number of rows")
    return elapsed


def load_pgloader(tmp: Path, pristine: Path, rows: int, problems: list[str]) -> float:
    db = tmp / "pgloader.db"
    remove_db(db)
    shutil.copyfile(pristine, db)
    with pg_database("pgloader") as dsn:
        t = time.perf_counter()
        out = subprocess.run(["pgloader", "--quiet", "--root-dir", str(tmp / "pgloader"), f"sqlite://{db}", dsn],
                             capture_output=True, text=True)
        elapsed = time.perf_counter() - t
        if out.returncode != 0:
            raise RuntimeError(f"pgloader failed: {out.stderr[-2000:]}")
        if pg_count(dsn, "public.items") != rows:
            problems.append("pgloader loaded the wrong number of rows")
    return elapsed


async def run(args) -> list[Figure]:
    rows = 200_000 if args.quick else 1_000_000
    rounds = 1 if args.quick else 3
    have_pgloader = shutil.which("pgloader") is not None
    problems: list[str] = []
    with scratch_dir("load") as tmp:
        pristine, csv_path = tmp / "pristine.db", tmp / "items.csv"
        create_items(pristine, rows)
        export_csv(pristine, csv_path)
        print(f"{rows:,} rows; SQLite file {pristine.stat().st_size / 2**20:.0f} MiB, CSV "
              f"{csv_path.stat().st_size / 2**20:.0f} MiB")
        contenders = ["syncd", "copy"] + (["pgloader"] if have_pgloader else [])
        times: dict[str, list[float]] = {c: [] for c in contenders}
        details: list[dict] = []
        ratio_pgl, ratio_copy = [], []
        for r in range(rounds):
            got = {}
            for c in alternate(r, contenders):
                if c == "syncd":
                    info = await load_syncd(tmp, pristine, rows, problems)
                    details.append(info)
                    got[c] = info["load"]
                elif c == "copy":
                    got[c] = load_copy(csv_path, rows, problems)
                else:
                    got[c] = load_pgloader(tmp, pristine, rows, problems)
                times[c].append(got[c])
            ratio_copy.append(got["syncd"] / got["copy"])
            if have_pgloader:
                ratio_pgl.append(got["syncd"] / got["pgloader"])
            print(f"  round {r + 1}: " + ", ".join(f"{c} {got[c]:.2f} s" for c in contenders))

    names = {"syncd": "syncd snapshot (daemon)", "copy": "psql \\copy from CSV (copy only)",
             "pgloader": "pgloader (whole run)"}
    table = [[names[c], f"{median(times[c]):.2f} s", f"{rows / median(times[c]):,.0f}", spread(times[c])]
             for c in contenders]
    print_table(f"Initial load of {rows:,} rows (median of {rounds})", ["method", "time", "rows/s", "range (s)"],
                table)
    print(f"  syncd phases (median): process start {median([d['startup'] for d in details]):.2f} s (not counted), "
          f"capture+audit+count {median([d['before_copy'] for d in details]):.2f} s, "
          f"COPY {median([d['copy'] for d in details]):.2f} s")
    print_problems(problems)
    figures = [
        Figure("initial_load", "syncd snapshot rows/s", rows / median(times["syncd"]), "rows/s"),
        Figure("initial_load", "syncd time / psql \\copy time", median(ratio_copy), "x",
               note="informative: \\copy is the floor"),
    ]
    if have_pgloader:
        figures.insert(1, Figure("initial_load", "syncd time / pgloader time", median(ratio_pgl), "x", "<= 1.0"))
    else:
        print("pgloader is not installed: that comparison is skipped")
    if problems:
        figures.append(Figure("initial_load", "syncd problems (errors/warnings, wrong counts)", len(problems), "",
                              "<= 0"))
    return figures


def main() -> None:
    main_async(__doc__, run)


if __name__ == "__main__":
    main()
