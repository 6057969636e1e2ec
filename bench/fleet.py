"""One daemon, many small SQLite files (one per tenant, found by a path glob): the time
to catch up from nothing, the daemon's peak memory, its CPU while every source is idle,
the Postgres connections it holds, and how long `syncd status` and `syncd report` take, at
100, 1,000 and (without --quick) 5,000 files. Per-source cost is the slope of the curve.

Targets at 1,000 files on the 2-core development machine: catch-up under 2 minutes,
peak RSS under 300 MB, idle CPU under 5% of one core, connections within
[postgres] max_connections (8), `syncd status` under 2 s.

    python bench/fleet.py [--quick]
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    Daemon, Figure, cpu_seconds, main_async, median, pg_connect, pg_database, print_table, scratch_dir, spread,
)

BOUND = 8
IDLE_SECONDS = 60
STATUS_RUNS = 3  # one after another, each a whole process as an operator runs it


def make_tenants(directory: Path, n: int) -> list[Path]:
    directory.mkdir(parents=True)
    paths = []
    for i in range(n):
        p = directory / f"{i:05d}.db"
        conn = sqlite3.connect(p)
        conn.executescript("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT, qty INTEGER);"
                           "CREATE TABLE events (at TEXT, what TEXT);")
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(j, f"item {j}", j) for j in range(5)])
        conn.executemany("INSERT INTO events VALUES (?, ?)", [("2026-11-30", "signup")] * 2)
        conn.commit()
        conn.close()
        paths.append(p)
    return paths


def config(path: Path, dsn: str, tenants: Path) -> Path:
    path.write_text("\n".join([
        "[postgres]", f'dsn = "{dsn}"', f"max_connections = {BOUND}", "",
        "[metrics]", 'listen = ""', "", "[verify]", "interval_seconds = 0", "",
        "[[sources]]", 'name = "t{stem}"', f'path = "{tenants}/*.db"', ""]))
    return path


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def caught_up(pg, n: int) -> bool:
    try:
        return await pg.fetchval("SELECT count(*) FROM (SELECT source FROM syncd.tables GROUP BY source "
                                 "HAVING bool_and(state = 'streaming')) s") == n
    except Exception:  # noqa: BLE001 - bookkeeping not there yet
        return False


async def one_size(n: int, idle: float) -> dict:
    with pg_database(f"fleet{n}") as dsn, scratch_dir(f"fleet{n}") as tmp:
        make_tenants(tmp / "tenants", n)
        cfg = config(tmp / "syncd.toml", dsn, tmp / "tenants")
        pg = await pg_connect(dsn)
        peak_conns = 0
        try:
            t0 = time.monotonic()
            with Daemon(cfg, tmp / "syncd.log") as d:
                while not await caught_up(pg, n):
                    if not d.alive():
                        raise RuntimeError("syncd exited:\n" + "\n".join(d.problems()[-10:]))
                    peak_conns = max(peak_conns, await pg.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND application_name LIKE 'syncd%'"))
                    await asyncio.sleep(0.5)
                catch_up = time.monotonic() - t0
                await asyncio.sleep(5)  # let the last snapshots' housekeeping settle
                c0, w0 = cpu_seconds(d.proc.pid), time.monotonic()
                await asyncio.sleep(idle)
                idle_cpu = (cpu_seconds(d.proc.pid) - c0) / (time.monotonic() - w0)
                rss = peak_rss_mb(d.proc.pid)
                status_runs = []
                for _ in range(STATUS_RUNS):
                    t = time.perf_counter()
                    r = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), "status"],
                                       capture_output=True, text=True)
                    status_runs.append(time.perf_counter() - t)
                    if r.returncode not in (0, 1):
                        raise RuntimeError(f"syncd status failed ({r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
                    if f"{n} sources:" not in r.stdout:
                        raise RuntimeError(f"syncd status did not summarise {n} sources:\n{r.stdout[:2000]}")
                # The report, once: it measures every source (both sides' rows, the
                # schema's objects, timed lookups), several of a database at once.
                t = time.perf_counter()
                r = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), "report", "--format", "json"],
                                   capture_output=True, text=True)
                report = time.perf_counter() - t
                if r.returncode not in (0, 1) or len(json.loads(r.stdout or "{}").get("sources", [])) != n:
                    raise RuntimeError(f"syncd report failed ({r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
                d.stop()
        finally:
            await pg.close()
    return {"n": n, "catch_up": catch_up, "rss": rss, "idle_cpu": idle_cpu, "conns": peak_conns,
            "status": median(status_runs), "status_range": spread(status_runs), "report": report}


async def run(args) -> list[Figure]:
    sizes = [100, 1000] if args.quick else [100, 1000, 5000]
    idle = 15 if args.quick else IDLE_SECONDS
    results = [await one_size(n, idle) for n in sizes]
    rows = [[f"{r['n']:,}", f"{r['catch_up']:.1f} s", f"{r['rss']:.0f} MB", f"{100 * r['idle_cpu']:.1f}%",
             f"{r['conns']}", f"{r['status']:.2f} s ({r['status_range']})", f"{r['report']:.1f} s"] for r in results]
    if len(results) > 1:
        a, b = results[0], results[-1]
        per = (b["n"] - a["n"])
        rows.append(["per source", f"{1000 * (b['catch_up'] - a['catch_up']) / per:.1f} ms",
                     f"{1024 * (b['rss'] - a['rss']) / per:.0f} KB",
                     f"{100 * (b['idle_cpu'] - a['idle_cpu']) / per * 1000:.2f}% per 1,000", "",
                     f"{1000 * (b['status'] - a['status']) / per:.2f} ms",
                     f"{1000 * (b['report'] - a['report']) / per:.1f} ms"])
    print_table(f"One daemon, many files (two tables each; idle CPU over {idle} s)",
                ["files", "catch-up", "peak RSS", "idle CPU (one core)", "Postgres connections", f"syncd status, median of {STATUS_RUNS} (range)",
                 "syncd report (one run)"],
                rows)
    figures = []
    for r in results:
        if r["n"] == 1000:
            figures += [
                Figure("fleet", "1,000 files: catch-up from nothing", r["catch_up"], "s", "< 120"),
                Figure("fleet", "1,000 files: peak RSS", r["rss"], "MB", "< 300"),
                Figure("fleet", "1,000 files: idle CPU, share of one core", 100 * r["idle_cpu"], "%", "< 5"),
                Figure("fleet", "1,000 files: Postgres connections held", r["conns"], "", f"<= {BOUND}"),
                Figure("fleet", "1,000 files: syncd status", r["status"], "s", "< 2",
                       note=f"median of {STATUS_RUNS}, range {r['status_range']}"),
                Figure("fleet", "1,000 files: syncd report", r["report"], "s", note="one run"),
            ]
    return figures


if __name__ == "__main__":
    main_async(__doc__, run)
