"""The way back (Postgres -> SQLite after `syncd cutover`), with the daemon running as in
production:

- throughput: a backlog of row changes made in Postgres while the daemon was stopped,
  drained into the frozen SQLite file (changes per second from the first batch applied
  to the last; target >= 5,000/s);
- commit-to-visible latency: an application writing Postgres at 200 transactions per
  second, each row's commit time against the moment a reader of the SQLite file first
  sees it (target p99 < 1 s);
- the write downtime of `syncd rollback` for the ten demo files (syncd/demo/data.py),
  every source rolled back by one command, as the command prints it (target: each
  under 5 s).

    python bench/reverse_stream.py [--quick]
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    Daemon, Figure, create_items, demo_files_backed_up, main_async, pg_connect, pg_database, print_table, scratch_dir, spread,
    wait_streaming,
)
from syncd.demo import data  # noqa: E402
from syncd.identifiers import qualified, quote_ident  # noqa: E402
from syncd.postgres.bookkeeping import lock_key  # noqa: E402

DOWNTIME = re.compile(r"^(\S+): rolled back to SQLite; write downtime ([0-9.]+) s", re.M)


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


def must(cfg: Path, *args: str) -> str:
    rc, out, _ = syncd(cfg, *args)
    if rc != 0:
        raise RuntimeError(f"syncd {' '.join(args)} failed:\n{out[-3000:]}")
    return out


async def cut_over(tmp: Path, dsn: str, sources: list[tuple[str, Path, dict]], label: str) -> Path:
    """Sources streaming, verified and cut over; the daemon stopped afterwards."""
    cfg = config(tmp / f"{label}.toml", dsn, sources)
    with Daemon(cfg, tmp / f"{label}-cutover.log") as d:
        conn = await pg_connect(dsn)
        try:
            for name, db, _ in sources:
                await wait_streaming(conn, db, d, timeout=900, source=name)
        finally:
            await conn.close()
        must(cfg, "verify")
        must(cfg, "cutover")
    return cfg


async def pending(conn, source: str, db: Path) -> int:
    """Entries in Postgres's changelog the SQLite file's checkpoint does not cover."""
    lite = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = lite.execute("SELECT value FROM _syncd_meta WHERE key = 'reverse_checkpoint'").fetchone()
    finally:
        lite.close()
    cp = json.loads(row[0]) if row else {"done": "1:1:", "target": None, "after": None}
    after = cp["after"] or (0, 0)
    return await conn.fetchval(
        f"SELECT count(*) FROM syncd.rlog_{lock_key(source):08x} "
        "WHERE txid >= txid_snapshot_xmin($1::text::txid_snapshot) "
        "AND NOT txid_visible_in_snapshot(txid, $1::text::txid_snapshot) AND NOT ($2::text IS NOT NULL AND "
        "txid_visible_in_snapshot(txid, $2::text::txid_snapshot) AND (txid, seq) <= ($3, $4))",
        cp["done"], cp["target"], after[0], after[1])


# --- throughput -------------------------------------------------------------------------------


async def throughput(rows: int, changes: int) -> tuple[float, int]:
    """Changes per second draining a backlog: `changes` row changes made in Postgres
    (half updates of existing rows, half new rows, in 1,000-row transactions)."""
    with pg_database("reverse_tp") as dsn, scratch_dir("reverse-tp") as tmp:
        db = tmp / "app.db"
        create_items(db, rows)
        (tmp / "backups").mkdir()
        subprocess.run(["cp", str(db), str(tmp / "backups" / "app-nightly.db")], check=True)
        cfg = await cut_over(tmp, dsn, [("app", db, {})], "tp")
        conn = await pg_connect(dsn)
        try:
            half = changes // 2
            for start in range(0, half, 1000):
                await conn.execute("UPDATE app.items SET qty = qty + 1, city = 'moved' WHERE id > $1 AND id <= $2",
                                   start, min(start + 1000, half))
                await conn.execute("INSERT INTO app.items (id, name, email, city, score, qty, created_at, payload) "
                                   "SELECT g, 'new ' || g, 'n' || g || '@x', 'Lyon', g / 7.0, g % 100, "
                                   "'2026-12-01 10:00:00', '\\x00ff'::bytea FROM generate_series($1::int, $2::int) g",
                                   rows + start + 1, rows + min(start + 1000, half))
            backlog = await pending(conn, "app", db)
            with Daemon(cfg, tmp / "tp.log") as d:
                first = last = None
                seen_at_first = backlog
                deadline = time.monotonic() + 600
                while True:
                    left = await pending(conn, "app", db)
                    now = time.perf_counter()
                    if first is None and left < backlog:
                        first, seen_at_first = now, left
                    if left == 0:
                        last = now
                        break
                    if not d.alive() or time.monotonic() > deadline:
                        raise RuntimeError("the way back did not drain:\n" + "\n".join(d.problems()[-10:]))
                    await asyncio.sleep(0.02)
        finally:
            await conn.close()
    assert first is not None and last is not None
    return seen_at_first / max(last - first, 1e-9), backlog


# --- latency -------------------------------------------------------------------------------------


async def latency(seconds: float, rate: float) -> list[float]:
    """Commit-to-visible seconds for each row an application writes at `rate` per second."""
    with pg_database("reverse_lat") as dsn, scratch_dir("reverse-lat") as tmp:
        db = tmp / "app.db"
        create_items(db, 1000)
        (tmp / "backups").mkdir()
        subprocess.run(["cp", str(db), str(tmp / "backups" / "app-nightly.db")], check=True)
        cfg = await cut_over(tmp, dsn, [("app", db, {})], "lat")
        committed: dict[int, float] = {}
        seen: dict[int, float] = {}
        with Daemon(cfg, tmp / "lat.log"):
            conn = await pg_connect(dsn)
            stop = asyncio.Event()

            async def watch() -> None:
                lite = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
                top = 1_000_000
                give_up = None  # 30 s after the writer stopped
                try:
                    while not stop.is_set() or len(seen) < len(committed):
                        now = time.time()
                        for (i,) in lite.execute("SELECT id FROM items WHERE id > ? ORDER BY id", (top,)):
                            seen.setdefault(i, now)
                            top = max(top, i)
                        await asyncio.sleep(0.005)
                        if stop.is_set():
                            give_up = give_up or now + 30
                            if now > give_up:
                                break
                finally:
                    lite.close()

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(2)  # the way back running and idle
            try:
                n = int(seconds * rate)
                t0 = time.perf_counter()
                for k in range(n):
                    wait = t0 + k / rate - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    i = 1_000_001 + k
                    await conn.execute("INSERT INTO app.items (id, name, qty) VALUES ($1, 'latency', 1)", i)
                    committed[i] = time.time()
                stop.set()
                await asyncio.wait_for(watcher, 60)
            finally:
                stop.set()
                await conn.close()
    never = [i for i in committed if i not in seen]
    if never:  # a row Postgres committed that SQLite never showed is a failure, not a sample left out
        raise RuntimeError(f"{len(never)} of {len(committed)} rows never reached SQLite within 30 s (first: {never[0]})")
    return [seen[i] - committed[i] for i in committed]


# --- rollback downtime ---------------------------------------------------------------------------


async def rollback_downtime() -> tuple[dict[str, float], float]:
    with pg_database("reverse_demo") as dsn, scratch_dir("reverse-demo") as tmp:
        demo_files_backed_up(tmp)  # the cutover's checklist asks for a recent backup of each
        sources = [(s.name, tmp / s.filename, s.columns) for s in data.SOURCES]
        cfg = await cut_over(tmp, dsn, sources, "demo")
        with Daemon(cfg, tmp / "demo.log") as d:
            conn = await pg_connect(dsn)
            try:
                # the application at work on Postgres: every table of every source touched
                for name, db, _ in sources:
                    for table, column in await conn.fetch(
                            "SELECT c.relname, (SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid "
                            "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum DESC LIMIT 1) "
                            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE n.nspname = $1 AND c.relkind = 'r'", name):
                        t, col = qualified(name, table), quote_ident(column)
                        await conn.execute(f"UPDATE {t} SET {col} = {col} WHERE ctid IN "
                                           f"(SELECT ctid FROM {t} LIMIT 20)")
                for name, db, _ in sources:
                    deadline = time.monotonic() + 120
                    while await pending(conn, name, db):
                        if time.monotonic() > deadline or not d.alive():
                            raise RuntimeError("the way back did not catch up:\n" + "\n".join(d.problems()[-10:]))
                        await asyncio.sleep(0.05)
            finally:
                await conn.close()
            out = must(cfg, "rollback")
            took = syncd(cfg, "status")[2]
        return {m.group(1): float(m.group(2)) for m in DOWNTIME.finditer(out)}, took


async def run(args) -> list[Figure]:
    figures = []
    rows, changes = (50_000, 50_000) if args.quick else (100_000, 100_000)
    rates = []
    for _ in range(1 if args.quick else 3):
        rate, backlog = await throughput(rows, changes)
        rates.append(rate)
    print_table("Way back throughput (a backlog of row changes drained into SQLite)",
                ["backlog", "changes/s (median)", "spread"],
                [[f"{backlog:,} entries", f"{statistics.median(rates):,.0f}", spread(rates)]])
    figures.append(Figure("reverse_stream", "way back throughput", statistics.median(rates), "changes/s", ">= 5000"))

    lat = sorted(await latency(10 if args.quick else 30, 200))
    p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print_table("Commit in Postgres to visible in SQLite, at 200 transactions/s",
                ["rows", "p50", "p99", "max"], [[f"{len(lat)}", f"{p50 * 1000:.0f} ms", f"{p99 * 1000:.0f} ms",
                                                 f"{lat[-1] * 1000:.0f} ms"]])
    figures.append(Figure("reverse_stream", "commit-to-visible p50 at 200 writes/s", p50 * 1000, "ms"))
    figures.append(Figure("reverse_stream", "commit-to-visible p99 at 200 writes/s", p99 * 1000, "ms", "< 1000"))

    downtimes, _ = await rollback_downtime()
    worst = max(downtimes.values())
    print_table("syncd rollback write downtime (Postgres frozen to SQLite unfrozen, as the command prints it)",
                ["world", "longest source", "sum over sources"],
                [[f"{len(downtimes)} demo files, one command", f"{worst:.2f} s", f"{sum(downtimes.values()):.2f} s"]])
    figures.append(Figure("reverse_stream", "rollback write downtime per demo source (longest)", worst, "s", "< 5"))
    return figures


if __name__ == "__main__":
    main_async(__doc__, run)
