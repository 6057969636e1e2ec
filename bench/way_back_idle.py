"""The way back's idle cost at fleet scale: N small tenant files (found by a path glob)
cut over to Postgres, nobody writing, one daemon following every one back. Over an idle
window it measures the daemon's CPU (share of one core) and the transactions per second
Postgres counts in the database (pg_stat_database xact_commit + xact_rollback: syncd is
its only client then), beside the same files idle while they still streamed forward,
measured the same way before the cutover: the anchor. Then, one tenant at a time, a row
inserted in Postgres and the time until a reader of the SQLite file sees it (NOTIFY to
SQLite; the reader polls every 2 ms).

--before DIR runs the daemon from another checkout too (the code before a change), on
the same cut-over files, alternating with this checkout in ABBA rounds: its figures and
the ratios this/before are printed side by side.

Targets at 200 files: idle CPU under 3% of one core and under 30 Postgres transactions/s
(an idle forward fleet's order); latency p50 under 100 ms.

    python bench/way_back_idle.py [--quick] [--files N] [--idle SECONDS] [--before DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    ROOT, Daemon, Figure, compile_syncd, cpu_seconds, finish, pg_connect, pg_database, print_table, scratch_dir,
)
from bench.fleet import caught_up, make_tenants  # noqa: E402

LATENCY_SAMPLES = 5
SETTLE_SECONDS = 5.0
# The idle window starts this long after the daemon did, whichever checkout it runs: its
# sources' first just-in-case full checks (spread over the fleet's spacing from 60 s on)
# are then as far along in every arm.
WINDOW_AT_SECONDS = 70.0


def config(path: Path, dsn: str, tenants: Path, backups: Path) -> Path:
    path.write_text("\n".join([
        "[postgres]", f'dsn = "{dsn}"', "max_connections = 8", "",
        "[metrics]", 'listen = ""', "", "[verify]", "interval_seconds = 0", "",
        "[cutover]", "min_days = 0", f'backup_glob = "{backups}/{{source}}-*.db"', "",
        "[[sources]]", 'name = "t{stem}"', f'path = "{tenants}/*.db"', ""]))
    return path


class DaemonAt(Daemon):
    """`syncd run` from the checkout at `root` (python -m imports syncd from its cwd)."""

    def __init__(self, root: Path, config: Path, log: Path):
        import subprocess as sp

        self.log_path = log
        self._log = open(log, "wb")
        self.proc = sp.Popen([sys.executable, "-m", "syncd", "--config", str(config), "--log-format", "json", "run"],
                             stdout=self._log, stderr=sp.STDOUT, cwd=str(root), env=dict(os.environ))


def cli(cfg: Path, *args: str, timeout: float = 1800) -> str:
    r = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), *args], capture_output=True, text=True,
                       cwd=str(ROOT), timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"syncd {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr[-3000:]}")
    return r.stdout


async def transactions(pg) -> int:
    return await pg.fetchval("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")


async def idle_cost(pg, d: Daemon, seconds: float) -> tuple[float, float]:
    """(CPU share of one core, Postgres transactions/s) over `seconds` of nobody writing."""
    x0, c0, w0 = await transactions(pg), cpu_seconds(d.proc.pid), time.monotonic()
    await asyncio.sleep(seconds)
    x1, c1, w1 = await transactions(pg), cpu_seconds(d.proc.pid), time.monotonic()
    if not d.alive():
        raise RuntimeError("syncd exited:\n" + "\n".join(d.problems()[-10:]))
    return (c1 - c0) / (w1 - w0), (x1 - x0 - 1) / (w1 - w0)  # less the reading's own transaction


def following_back(d: Daemon) -> set[str]:
    """Sources whose way back said it follows Postgres, in this daemon's log."""
    return {r.get("source") for r in d.lines() if r.get("event") == "streaming" and "Postgres" in r.get("msg", "")}


async def latency(pg, tenants: Path, names: list[str], first_id: int) -> list[float]:
    """Seconds from each INSERT's commit in Postgres to the row visible in SQLite."""
    out = []
    for k, name in enumerate(names):
        i = first_id + k
        lite = sqlite3.connect(f"file:{tenants / (name[1:] + '.db')}?mode=ro", uri=True, timeout=10)
        try:
            await pg.execute(f'INSERT INTO "{name}".orders (id, item, qty) VALUES ($1, $2, 1)', i, "latency")
            t0 = time.perf_counter()
            deadline = t0 + 30
            while lite.execute("SELECT 1 FROM orders WHERE id = ?", (i,)).fetchone() is None:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"row {i} of {name} not in SQLite 30 s after its commit in Postgres")
                await asyncio.sleep(0.002)
            out.append(time.perf_counter() - t0)
        finally:
            lite.close()
        await asyncio.sleep(1.0)  # the next tenant idle again, as the first was
    return out


async def one_arm(pg, root: Path, cfg: Path, log: Path, tenants: Path, n: int, idle: float, first_id: int) -> dict:
    with DaemonAt(root, cfg, log) as d:
        started = time.monotonic()
        deadline = started + 600
        while len(following_back(d)) < n:
            if not d.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{len(following_back(d))} of {n} sources followed back:\n"
                                   + "\n".join(d.problems()[-10:]))
            await asyncio.sleep(0.5)
        await asyncio.sleep(max(SETTLE_SECONDS, started + WINDOW_AT_SECONDS - time.monotonic()))
        cpu, tps = await idle_cost(pg, d, idle)
        names = [f"t{i:05d}" for i in range(0, n, max(1, n // LATENCY_SAMPLES))][:LATENCY_SAMPLES]
        lat = await latency(pg, tenants, names, first_id)
        problems = d.problems()
        d.stop()
    return {"cpu": cpu, "tps": tps, "lat": lat, "problems": problems}


async def run(args) -> list[Figure]:
    n = args.files or (40 if args.quick else 200)
    idle = args.idle or (10 if args.quick else 20)
    rounds = 1 if args.quick else 2
    arms = [("this", ROOT)] + ([("before", Path(args.before).resolve())] if args.before else [])
    results: dict[str, list[dict]] = {a: [] for a, _ in arms}
    with pg_database(f"wbidle{n}") as dsn, scratch_dir(f"wbidle{n}") as tmp:
        tenants, backups = tmp / "tenants", tmp / "backups"
        paths = make_tenants(tenants, n)
        cfg = config(tmp / "syncd.toml", dsn, tenants, backups)
        pg = await pg_connect(dsn)
        try:
            with Daemon(cfg, tmp / "forward.log") as d:
                t0 = time.monotonic()
                while not await caught_up(pg, n):
                    if not d.alive() or time.monotonic() - t0 > 900:
                        raise RuntimeError("the fleet did not catch up:\n" + "\n".join(d.problems()[-10:]))
                    await asyncio.sleep(0.5)
                await asyncio.sleep(SETTLE_SECONDS)
                fwd_cpu, fwd_tps = await idle_cost(pg, d, idle)
                cli(cfg, "verify")
                backups.mkdir()
                for p in paths:
                    src, dst = sqlite3.connect(p), sqlite3.connect(backups / f"t{p.stem}-nightly.db")
                    src.backup(dst)
                    src.close()
                    dst.close()
                for attempt in range(3):  # a file busy at its turn is refused, and cut over by the next run
                    try:
                        cli(cfg, "cutover")
                        break
                    except RuntimeError as e:
                        if attempt == 2:
                            raise
                        print("cutover again, after: " + "; ".join(
                            ln for ln in str(e).splitlines() if "REFUSED" in ln or "UNDONE" in ln)[:2000], flush=True)
                d.stop()
            first_id = 1000
            for r in range(rounds):
                for name, root in (arms if r % 2 == 0 else arms[::-1]):
                    print(f"round {r + 1}: {name} ({root})", flush=True)
                    results[name].append(await one_arm(pg, root, cfg, tmp / f"{name}-{r}.log", tenants, n, idle,
                                                       first_id))
                    first_id += LATENCY_SAMPLES
        finally:
            await pg.close()

    def med(arm: str, key: str) -> float:
        return statistics.median(x for res in results[arm] for x in (res[key] if key == "lat" else [res[key]]))

    rows = [["forward (before the cutover)", f"{100 * fwd_cpu:.1f}%", f"{fwd_tps:.1f}", ""]]
    for a, _ in arms:
        rows.append([f"way back, {a}", f"{100 * med(a, 'cpu'):.1f}%", f"{med(a, 'tps'):.1f}",
                     f"{1000 * med(a, 'lat'):.0f} ms"])
    if args.before:
        rows.append(["this / before", f"{med('this', 'cpu') / med('before', 'cpu'):.3f}x",
                     f"{med('this', 'tps') / med('before', 'tps'):.3f}x",
                     f"{med('this', 'lat') / med('before', 'lat'):.2f}x"])
    rows.append(["way back (this) / forward", f"{med('this', 'cpu') / fwd_cpu:.2f}x",
                 f"{med('this', 'tps') / max(fwd_tps, 0.1):.2f}x", ""])
    print_table(f"{n} idle files, one daemon (idle window {idle:g} s, {rounds} round(s), medians)",
                ["", "daemon CPU (one core)", "Postgres tx/s", f"Postgres INSERT to SQLite, p50 of {LATENCY_SAMPLES}"],
                rows)
    seen = sorted({p for a in results.values() for res in a for p in res["problems"]})
    if seen:
        print("\nsyncd reported problems during the run:")
        for p in seen[:20]:
            print(f"  {p[:300]}")
    return [
        Figure("way_back_idle", f"{n} idle cut-over files: daemon CPU, share of one core", 100 * med("this", "cpu"),
               "%", "< 3"),
        Figure("way_back_idle", f"{n} idle cut-over files: Postgres transactions/s", med("this", "tps"), "tx/s",
               "< 30", note=f"forward before the cutover: {fwd_tps:.1f} tx/s"),
        Figure("way_back_idle", "INSERT in Postgres to visible in SQLite, idle source (p50)",
               1000 * med("this", "lat"), "ms", "< 100"),
        Figure("way_back_idle", "warnings and errors logged", len(seen), "", "<= 0"),
    ]


def main() -> None:
    compile_syncd()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="40 files, a 10 s idle window, one round")
    ap.add_argument("--files", type=int, help="how many tenant files (200; 40 with --quick)")
    ap.add_argument("--idle", type=float, help="the idle window in seconds (20; 10 with --quick)")
    ap.add_argument("--before", metavar="DIR", help="another checkout to run the daemon from, alternating")
    ap.add_argument("--report", metavar="JSON", help="also write the figures here (used by run_all.py)")
    args = ap.parse_args()
    started = time.monotonic()
    finish(args, asyncio.run(run(args)), started)


if __name__ == "__main__":
    main()
