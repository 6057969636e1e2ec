"""Commit-to-visible latency: how long after an application's COMMIT in SQLite the row
can be read in Postgres, at 500 single-row transactions per second.

A writer process inserts rows with increasing ids at a fixed schedule of 500 tx/s and
notes when each COMMIT returned. Meanwhile this process polls Postgres
(`SELECT max(id)`, every ~2 ms: syncd applies in seq order, so every id up to the
maximum is visible) and notes when each id first showed up. The daemon runs with its
default settings. Latency is conservative: it includes up to one poll period.
Three rounds of 10 s against the same daemon; a burst of load from elsewhere on a
shared machine spoils one round, not the figure: it is the median of the rounds' p99.
Target: p99 < 50 ms.

    python bench/latency.py [--quick]
"""

from __future__ import annotations

import asyncio
import bisect
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    Daemon, Figure, check_daemon, create_items, main_async, median, pg_connect, pg_database, print_problems,
    print_table, scratch_dir, spread, wait_streaming, write_config,
)

RATE = 500
FIRST_ID = 10_000_000
WARMUP_SECONDS = 1.0


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


async def one_round(conn, db: Path, tmp: Path, seconds: float, first_id: int, problems: list[str]) -> dict:
    """One writer run at RATE tx/s; returns the latencies (ms) and what was measured."""
    commits_file = tmp / "commits.json"
    writer = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "writer.py"), str(db), "--mode", "insert",
         "--rate", str(RATE), "--seconds", str(seconds), "--first-id", str(first_id),
         "--commits", str(commits_file)],
        stdout=subprocess.PIPE, text=True)
    seen: list[tuple[int, float]] = []  # (max id visible, when first seen)
    polls, last, deadline = 0, 0, None
    started = time.time()
    while True:
        top = await conn.fetchval("SELECT max(id) FROM app.items")
        now = time.time()
        polls += 1
        if top > last:
            seen.append((top, now))
            last = top
        if writer.poll() is not None:
            if deadline is None:
                final_id = first_id + json.loads(writer.communicate()[0])["ops"] - 1
                deadline = now + 10
            if last >= final_id or now > deadline:
                break
        await asyncio.sleep(0.002)
    commits = json.loads(commits_file.read_text())
    ids = [s[0] for s in seen]
    t0 = commits[0][1]
    lat, missing = [], 0
    for cid, ct in commits:
        if ct - t0 < WARMUP_SECONDS:
            continue
        i = bisect.bisect_left(ids, cid)
        if i == len(ids):
            missing += 1
        else:
            lat.append((seen[i][1] - ct) * 1000)
    if missing:
        problems.append(f"{missing} committed rows never became visible in Postgres within 10 s")
    return {"lat": lat, "rate": len(commits) / (commits[-1][1] - t0), "period": (now - started) / polls * 1000,
            "next_id": first_id + len(commits) + 1}


async def run(args) -> list[Figure]:
    rounds, seconds = (1, 8) if args.quick else (3, 10)
    problems: list[str] = []
    results = []
    with scratch_dir("latency") as tmp, pg_database("latency") as dsn:
        db = tmp / "app.db"
        create_items(db, 1000)
        cfg = write_config(tmp / "syncd.toml", dsn, db)
        conn = await pg_connect(dsn)
        with Daemon(cfg, tmp / "syncd.log") as d:
            await wait_streaming(conn, db, d)
            first_id = FIRST_ID
            for _ in range(rounds):
                results.append(await one_round(conn, db, tmp, seconds, first_id, problems))
                first_id = results[-1]["next_id"]
            check_daemon(d, d.stop(), problems)
        await conn.close()

    rows = []
    for i, r in enumerate(results, 1):
        lat = r["lat"]
        rows.append([str(i), f"{len(lat):,}", f"{r['rate']:.0f} tx/s", f"{percentile(lat, 50):.1f} ms",
                     f"{percentile(lat, 90):.1f} ms", f"{percentile(lat, 99):.1f} ms", f"{max(lat):.1f} ms",
                     f"{r['period']:.1f} ms"])
    print_table(f"Commit-to-visible latency at {RATE} single-row tx/s ({rounds} x {seconds} s, the first "
                f"{WARMUP_SECONDS:.0f} s of each not counted)",
                ["round", "writes", "achieved rate", "p50", "p90", "p99", "max", "poll period"], rows)
    print_problems(problems)
    p50 = median([percentile(r["lat"], 50) for r in results])
    p99s = [percentile(r["lat"], 99) for r in results]
    figures = [
        Figure("latency", f"commit-to-visible p50 at {RATE} tx/s", p50, "ms"),
        Figure("latency", f"commit-to-visible p99 at {RATE} tx/s", median(p99s), "ms", "< 50",
               note="median of rounds" + (f" ({spread(p99s)} ms)" if len(p99s) > 1 else "")),
    ]
    if problems:
        figures.append(Figure("latency", "syncd problems (errors/warnings, rows missing)", len(problems), "", "<= 0"))
    return figures


def main() -> None:
    main_async(__doc__, run)


if __name__ == "__main__":
    main()
