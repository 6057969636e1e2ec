"""Sustained streaming throughput, in changelog entries (changes) applied per second.

1. Drain: with the daemon stopped, the application commits 200k mixed changes
   (insert 50%, update 35%, delete 15%; 500 per transaction); then the daemon starts
   and works through them. The rate is taken between 10% and 90% of the backlog,
   read from syncd's checkpoint in Postgres every 20 ms, so process start and the
   last partial batch do not count. Target >= 20,000 changes/s.
2. Concurrent: a 150k backlog, and a writer process that starts with the daemon and
   commits mixed changes as fast as it can (100 per transaction) for 8 s; 3 rounds. The rate is taken
   while the backlog lasts, so it is the daemon's capacity with an application
   competing for the CPU and the file; the writer's own rate is shown beside it.
3. Apply path: syncd's TableWriter upserting the same records through one unnest()
   statement vs COPY into the stage table + merge, at several batch sizes,
   alternating; where the ratio crosses 1 is where COPY_THRESHOLD belongs.

    python bench/stream.py [--quick]
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    Daemon, Figure, alternate, changelog_max, check_daemon, create_items, main_async, median, pg_connect,
    pg_database, print_problems, print_table, progress, scratch_dir, spread, wait_streaming, write_config,
)
from bench.writer import MixedOps  # noqa: E402
from syncd.config import SourceSettings  # noqa: E402
from syncd.postgres import apply as pg_apply  # noqa: E402
from syncd.postgres import ddl  # noqa: E402
from syncd.rows import RowConverter  # noqa: E402
from syncd.sqlite.introspect import introspect  # noqa: E402

TARGET = ">= 20000"


def crossing(samples: list[tuple[float, int]], level: float) -> float:
    """The time the checkpoint passed `level`, interpolated between two samples."""
    prev = samples[0]
    for t, seq in samples:
        if seq >= level:
            if seq == prev[1]:
                return t
            return prev[0] + (t - prev[0]) * (level - prev[1]) / (seq - prev[1])
        prev = (t, seq)
    return samples[-1][0]


def preload(db: Path, changes: int, seed: int) -> int:
    """The application writes while syncd is down; returns the changelog entries made."""
    before = changelog_max(db)
    conn = sqlite3.connect(db, isolation_level=None)
    ops = MixedOps(conn, seed)
    for _ in range(changes // 500):
        ops.transaction(500)
    conn.close()
    return changelog_max(db) - before


async def drain_once(tmp: Path, cfg: Path, db: Path, dsn: str, changes: int, seed: int, problems: list[str]) -> dict:
    entries = preload(db, changes, seed)
    conn = await pg_connect(dsn)
    start_seq, _ = await progress(conn)
    with Daemon(cfg, tmp / "drain.log") as d:
        samples = [(time.time(), start_seq)]
        target = start_seq + entries
        while samples[-1][1] < target:
            if not d.alive():
                raise RuntimeError("syncd exited:\n" + "\n".join(d.problems()[-10:]))
            await asyncio.sleep(0.02)
            seq, _ = await progress(conn)
            samples.append((time.time(), seq))
        await wait_streaming(conn, db, d)
        started = d.event_time("started")
        check_daemon(d, d.stop(), problems)
    await conn.close()
    t10, t90 = crossing(samples, start_seq + 0.1 * entries), crossing(samples, start_seq + 0.9 * entries)
    return {"entries": entries, "rate": 0.8 * entries / (t90 - t10), "total": samples[-1][0] - started}


async def concurrent(tmp: Path, cfg: Path, db: Path, dsn: str, backlog: int, seconds: float,
                     problems: list[str]) -> dict:
    """Daemon and writer start together on top of a backlog, so the daemon never runs
    dry: what it applies is its capacity while an application competes for the CPU
    and the file, not the writer's pace."""
    preload(db, backlog, seed=42)
    conn = await pg_connect(dsn)
    with Daemon(cfg, tmp / "concurrent.log") as d:
        writer = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "writer.py"), str(db), "--seconds", str(seconds),
             "--ops-per-tx", "100", "--mode", "mixed", "--seed", "99"],
            stdout=subprocess.PIPE, text=True)
        samples = []  # (time, changelog max, applied)
        while writer.poll() is None:
            seq, _ = await progress(conn)
            samples.append((time.time(), changelog_max(db), seq))
            await asyncio.sleep(0.05)
        writer.communicate()
        end = time.time()
        drained = await wait_streaming(conn, db, d)
        check_daemon(d, d.stop(), problems)
    await conn.close()
    # From the first batch applied until the writer stopped or the backlog ran out.
    moved = [s for s in samples if s[2] > samples[0][2]]
    busy = [s for s in moved if s[1] - s[2] > 5000]
    first, last = moved[0], (busy or moved)[-1]
    return {
        "produced": (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0]),
        "applied": (last[2] - first[2]) / (last[0] - first[0]),
        "ran_dry": len(busy) < len(moved),
        "drain": drained - end,
    }


async def crossover(dsn: str, db: Path, sizes: list[int], repeats: int) -> list[list[str]]:
    """unnest() vs COPY+merge for the same records, inside rolled-back transactions."""
    sconn = sqlite3.connect(db)
    spec = introspect(sconn, SourceSettings(name="app", path=db)).tables["items"]
    conv = RowConverter(spec)
    biggest = max(sizes)
    # Half the keys exist in Postgres (updates), half do not (inserts), as in a stream.
    source_rows = sconn.execute(f"SELECT * FROM items ORDER BY id LIMIT {biggest}").fetchall()
    sconn.close()
    records = conv.rows(source_rows)
    conn = await pg_connect(dsn)
    await conn.execute("CREATE SCHEMA bench")
    await conn.execute(ddl.create_table_sql("bench", spec))
    writer = pg_apply.TableWriter("bench", spec, 1)
    await writer.copy_in(conn, records[: biggest // 2])
    await writer._ensure_stage(conn)  # outside the rolled-back transactions below, so it survives them
    saved = pg_apply.COPY_THRESHOLD
    rows = []
    try:
        for n in sizes:
            part = records[biggest // 2 - n // 2: biggest // 2 - n // 2 + n]
            took = {"unnest": [], "copy": []}
            for r in range(repeats):
                for path in alternate(r, ["unnest", "copy"]):
                    pg_apply.COPY_THRESHOLD = 0 if path == "copy" else 10**9
                    tr = conn.transaction()
                    await tr.start()
                    t = time.perf_counter()
                    await writer.upsert(conn, part)
                    took[path].append(time.perf_counter() - t)
                    await tr.rollback()
            u, c = median(took["unnest"]), median(took["copy"])
            rows.append([f"{n:,}", f"{u / n * 1e6:.1f}", f"{c / n * 1e6:.1f}", f"{c / u:.2f}x",
                         "COPY" if n >= saved else "unnest"])
    finally:
        pg_apply.COPY_THRESHOLD = saved
        await conn.close()
    return rows


async def run(args) -> list[Figure]:
    seed_rows = 20_000 if args.quick else 100_000
    changes = 50_000 if args.quick else 200_000
    rounds = 1 if args.quick else 3
    seconds = 5 if args.quick else 8
    backlog = 50_000 if args.quick else 150_000  # outlasts the writer: the daemon never runs dry
    problems: list[str] = []
    with scratch_dir("stream") as tmp, pg_database("stream") as dsn:
        db = tmp / "app.db"
        create_items(db, seed_rows)
        cfg = write_config(tmp / "syncd.toml", dsn, db)
        with Daemon(cfg, tmp / "snapshot.log") as d:  # initial load, not measured
            conn = await pg_connect(dsn)
            await wait_streaming(conn, db, d)
            await conn.close()
            check_daemon(d, d.stop(), problems)

        drains = []
        for r in range(rounds):
            drains.append(await drain_once(tmp, cfg, db, dsn, changes, seed=r + 1, problems=problems))
            print(f"  drain {r + 1}: {drains[-1]['entries']:,} changes, {drains[-1]['rate']:,.0f} changes/s steady")
        concs = []
        for r in range(rounds):
            concs.append(await concurrent(tmp, cfg, db, dsn, backlog, seconds, problems))
            print(f"  drain with writer {r + 1}: {concs[-1]['applied']:,.0f} changes/s applied, writer "
                  f"{concs[-1]['produced']:,.0f}/s")
        cross = await crossover(dsn, db, [10, 50, 200, 1000, 2000, 5000, 20000] if not args.quick else [10, 200, 2000],
                                repeats=3 if args.quick else 7)

    rates = [x["rate"] for x in drains]
    print_table(f"Drain of a backlog (daemon started after the writes; median of {rounds})",
                ["changes", "steady rate", "range", "start to caught up (incl. startup)"],
                [[f"{drains[0]['entries']:,}", f"{median(rates):,.0f} changes/s", spread(rates),
                  f"{median([x['total'] for x in drains]):.1f} s"]])
    applied = [c["applied"] for c in concs]
    produced = median([c["produced"] for c in concs])
    print_table(f"Drain while a writer runs ({backlog:,} backlog; the writer commits 100-change transactions as fast "
                f"as it can for {seconds:.0f} s; median of {rounds})",
                ["writer produced", "daemon applied", "range", "applied/produced", "backlog ran out",
                 "caught up after stop"],
                [[f"{produced:,.0f} changes/s", f"{median(applied):,.0f} changes/s", spread(applied),
                  f"{median(applied) / produced:.2f}x", "yes" if any(c["ran_dry"] for c in concs) else "no",
                  f"{median([c['drain'] for c in concs]):.2f} s"]])
    print_table(f"Apply path: µs per record, unnest() vs COPY+merge (COPY_THRESHOLD is {pg_apply.COPY_THRESHOLD})",
                ["batch", "unnest µs/rec", "COPY µs/rec", "COPY/unnest", "syncd uses"], cross)
    print_problems(problems)
    figures = [
        Figure("stream", "drain of a 200k backlog" if not args.quick else "drain of a 50k backlog", median(rates),
               "changes/s", TARGET),
        Figure("stream", "drain while a writer runs", median(applied), "changes/s", TARGET,
               note=f"writer produced {produced:,.0f}/s"),
    ]
    if problems:
        figures.append(Figure("stream", "syncd problems (errors/warnings)", len(problems), "", "<= 0"))
    return figures


def main() -> None:
    main_async(__doc__, run)


if __name__ == "__main__":
    main()
