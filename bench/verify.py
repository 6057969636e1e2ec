"""`syncd verify` on a realistic 1M-row table, synced by the real daemon (left running,
idle, its own periodic check off so it does not run alongside): the time to verify it
when it is equal, and when 100 scattered rows differ (changed, deleted and extra rows
planted in Postgres).

Timed: the whole `syncd verify --json` process (interpreter start included) and the
table's own check time as verify reports it. The equal and differing runs alternate
within each round; figures are medians. Target: 1M rows verified in < 5 s, both ways.

    python bench/verify.py [--quick]
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    Daemon, Figure, check_daemon, create_items, finish, median, parse_args, pg_connect, pg_database,
    print_problems, print_table, scratch_dir, spread, wait_streaming, write_config,
)

DIFFERENCES = 100


def run_verify(cfg: Path) -> tuple[float, dict, int]:
    """(wall seconds, the JSON document, exit code) of one `syncd verify --json`."""
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), "verify", "--json", "--wait", "10"],
                         capture_output=True, text=True)
    wall = time.monotonic() - t
    if out.returncode not in (0, 1):
        raise RuntimeError(f"verify failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    return wall, json.loads(out.stdout), out.returncode


def items_result(doc: dict) -> dict:
    return doc["sources"][0]["tables"][0]


async def plant(dsn: str, rows: int) -> set[int]:
    """Change DIFFERENCES scattered rows in Postgres behind syncd's back."""
    rnd = random.Random(7)
    ids = rnd.sample(range(1, rows + 1), DIFFERENCES)
    conn = await pg_connect(dsn)
    try:
        third = DIFFERENCES // 3
        await conn.execute("UPDATE app.items SET qty = -qty - 1 WHERE id = ANY($1::bigint[])", ids[:third])
        await conn.execute("DELETE FROM app.items WHERE id = ANY($1::bigint[])", ids[third:2 * third])
        extra = [rows + 1 + i * 7919 for i in range(DIFFERENCES - 2 * third)]  # past the end, spread out
        await conn.execute("INSERT INTO app.items (id, name) SELECT x, 'planted' FROM unnest($1::bigint[]) x", extra)
        await conn.execute("ANALYZE app.items")
    finally:
        await conn.close()
    return set(ids[: 2 * third]) | set(extra)


async def main() -> int:
    args = parse_args(__doc__)
    started = time.monotonic()
    rows = 100_000 if args.quick else 1_000_000
    rounds = 2 if args.quick else 3
    problems: list[str] = []
    with scratch_dir("verify") as tmp, pg_database("verify") as dsn:
        db = tmp / "app.db"
        print(f"building {rows:,} rows ...", flush=True)
        create_items(db, rows)
        clean_cfg = write_config(tmp / "clean.toml", dsn, db)
        with open(clean_cfg, "a") as f:  # the daemon's own periodic check would run alongside and share the CPUs
            f.write("\n[verify]\ninterval_seconds = 0\n")
        with Daemon(clean_cfg, tmp / "syncd.log") as d:
            conn = await pg_connect(dsn)
            t = time.monotonic()
            await wait_streaming(conn, db, d, timeout=1800)
            await conn.close()
            print(f"synced by the daemon in {time.monotonic() - t:.0f} s", flush=True)

            # Planted differences stay, so the equal runs come first, then the differing ones.
            equal_wall, equal_check = [], []
            for _ in range(rounds):
                wall, doc, rc = run_verify(clean_cfg)
                r = items_result(doc)
                assert rc == 0 and r["equal"], r
                equal_wall.append(wall)
                equal_check.append(r["seconds"])
            planted = await plant(dsn, rows)
            diff_wall, diff_check = [], []
            for _ in range(rounds):
                wall, doc, rc = run_verify(clean_cfg)
                r = items_result(doc)
                keys = {d["key"][0] for d in r["differences"]}
                assert rc == 1 and keys == planted and r["pending"] == 0, r
                diff_wall.append(wall)
                diff_check.append(r["seconds"])
            check_daemon(d, d.stop(), problems)

    print_table(f"syncd verify, {rows:,} rows (seconds, {rounds} runs each)",
                ["case", "verify process (median)", "table check (median)", "spread (process)"],
                [["equal", f"{median(equal_wall):.2f}", f"{median(equal_check):.2f}", spread(equal_wall)],
                 [f"{DIFFERENCES} rows differ", f"{median(diff_wall):.2f}", f"{median(diff_check):.2f}",
                  spread(diff_wall)]])
    print_problems(problems)
    label = f"{rows // 1000}k" if rows < 1_000_000 else f"{rows // 1_000_000}M"
    figures = [
        Figure("verify", f"verify {label} rows, equal", median(equal_wall), "s", "< 5",
               f"table check {median(equal_check):.2f} s; {rows / median(equal_check):,.0f} rows/s"),
        Figure("verify", f"verify {label} rows, {DIFFERENCES} differ", median(diff_wall), "s", "< 5",
               f"table check {median(diff_check):.2f} s; all {DIFFERENCES} found, nothing else"),
    ]
    finish(args, figures, started)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
