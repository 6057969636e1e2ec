"""The application's write downtime during `syncd cutover`: from the freeze of a SQLite
file to the switch recorded (drain, full verification, one Postgres transaction), as
the command itself measures and prints it, with the daemon running as in production.

Two worlds: the ten demo files shaped like the user's (syncd/demo/data.py), every
source cut over by one command (target: each under 5 s), and one file of 1M rows
(target: under 30 s). The whole command's time is printed beside it.

    python bench/cutover_downtime.py [--quick]
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    Daemon, Figure, create_items, demo_files_backed_up, main_async, pg_connect, pg_database, print_table, scratch_dir,
    wait_streaming,
)
from syncd.demo import data  # noqa: E402

DOWNTIME = re.compile(r"^(\S+): cut over to Postgres; write downtime ([0-9.]+) s", re.M)


def config(path: Path, dsn: str, sources: list[tuple[str, Path, dict]]) -> Path:
    lines = ["[postgres]", f'dsn = "{dsn}"', "", "[metrics]", 'listen = ""', "",
             "[verify]", "interval_seconds = 0", "",
             "[cutover]", "min_days = 0", f'backup_glob = "{path.parent / "backups" / "{source}-*.db"}"', ""]
    for name, db, columns in sources:
        lines += ["[[sources]]", f'name = "{name}"', f'path = "{db}"', ""]
        for table, cols in columns.items():
            lines.append(f'[sources.columns."{table}"]')
            lines += [f'"{c}" = "{t}"' for c, t in cols.items()]
            lines.append("")
    path.write_text("\n".join(lines))
    return path


def syncd(cfg: Path, *args: str) -> tuple[int, str, float]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), *args], capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr, time.perf_counter() - t


async def one_world(tmp: Path, dsn: str, sources: list[tuple[str, Path, dict]], label: str) -> tuple[dict, float, str]:
    cfg = config(tmp / "syncd.toml", dsn, sources)
    with Daemon(cfg, tmp / f"{label}.log") as d:
        conn = await pg_connect(dsn)
        try:
            for name, db, _ in sources:
                await wait_streaming(conn, db, d, timeout=900, source=name)
        finally:
            await conn.close()
        rc, out, _ = syncd(cfg, "verify")
        if rc != 0:
            raise RuntimeError(f"verify before the cutover failed:\n{out[-3000:]}")
        rc, out, took = syncd(cfg, "cutover")
        d.stop()
    if rc != 0:
        raise RuntimeError(f"cutover failed:\n{out[-3000:]}")
    return {m.group(1): float(m.group(2)) for m in DOWNTIME.finditer(out)}, took, out


async def run(args) -> list[Figure]:
    figures, rows = [], []
    with pg_database("cutover_demo") as dsn, scratch_dir("cutover-demo") as tmp:
        demo_files_backed_up(tmp)  # the cutover's checklist asks for a recent backup of each
        sources = [(s.name, tmp / s.filename, s.columns) for s in data.SOURCES]
        downtimes, took, _ = await one_world(tmp, dsn, sources, "demo")
        worst = max(downtimes.values())
        rows.append([f"{len(downtimes)} demo files, one command", f"{worst:.2f} s (longest source)",
                     f"{sum(downtimes.values()):.2f} s", f"{took:.1f} s"])
        figures.append(Figure("cutover_downtime", "write downtime per demo source (longest)", worst, "s", "< 5"))
    n = 100_000 if args.quick else 1_000_000
    with pg_database("cutover_big") as dsn, scratch_dir("cutover-big") as tmp:
        db = tmp / "big.db"
        create_items(db, n)
        (tmp / "backups").mkdir()
        subprocess.run(["cp", str(db), str(tmp / "backups" / "big-nightly.db")], check=True)
        downtimes, took, _ = await one_world(tmp, dsn, [("big", db, {})], "big")
        rows.append([f"one file of {n:,} rows", f"{downtimes['big']:.2f} s", f"{downtimes['big']:.2f} s",
                     f"{took:.1f} s"])
        figures.append(Figure("cutover_downtime", f"write downtime, one source of {n:,} rows", downtimes["big"], "s",
                              "< 30" if n >= 1_000_000 else None))
    print_table("Cutover write downtime (freeze to done, as syncd cutover prints it)",
                ["world", "write downtime", "sum over sources", "whole command"], rows)
    return figures


if __name__ == "__main__":
    main_async(__doc__, run)
