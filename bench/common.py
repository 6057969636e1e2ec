"""What every benchmark shares: a scratch directory and Postgres database that are
always removed, a realistic application table, the daemon as a subprocess, and the
printed table of figures.

The machine these run on is shared and noisy, so a benchmark never compares two
figures taken minutes apart: it alternates the things it compares, repeats, and
reports medians and ratios of neighbouring runs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import operator
import json
import os
import random
import re
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
ADMIN_DSN = os.environ.get("SYNCD_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

# A table an application might really have: integer key, a few texts, a real, an
# integer, a date kept as text (the usual SQLite habit) and a small blob.
ITEMS_DDL = (
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT, city TEXT, "
    "score REAL, qty INTEGER, created_at DATETIME, payload BLOB)"
)
ITEMS_INSERT = "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
CITIES = ["Lyon", "Porto", "Kraków", "Zürich", "Osaka", "Austin", "Nairobi", "Lima"]
EPOCH = dt.datetime(2020, 1, 1)


def item_row(i: int, rnd: random.Random) -> tuple:
    created = EPOCH + dt.timedelta(seconds=rnd.randrange(5 * 365 * 86400))
    return (
        i,
        f"customer {i} {rnd.choice(CITIES)}",
        f"user{i}@example.org",
        rnd.choice(CITIES),
        rnd.random() * 1000,
        rnd.randrange(10_000),
        created.strftime("%Y-%m-%d %H:%M:%S"),
        rnd.randbytes(16),
    )


def create_items(db: Path, rows: int, journal: str = "wal", seed: int = 1) -> None:
    """An application file with `rows` rows in `items`."""
    rnd = random.Random(seed)
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA journal_mode={journal}")
    conn.execute(ITEMS_DDL)
    step = 50_000
    for start in range(1, rows + 1, step):
        conn.executemany(ITEMS_INSERT, (item_row(i, rnd) for i in range(start, min(rows, start + step - 1) + 1)))
        conn.commit()
    conn.close()


def demo_files_backed_up(directory: Path) -> None:
    """The demo's files in `directory`, each with a backup of its own in the backups
    folder (taken now), as a nightly job would leave them: the cutover's checklist asks
    for one of every source, and the demo's own folder holds backups of some only (to
    show that item unmet)."""
    from syncd.demo import data

    data.make_files(directory)
    for source in data.SOURCES:
        src = sqlite3.connect(f"file:{directory / source.filename}?mode=ro", uri=True)
        dst = sqlite3.connect(directory / data.BACKUPS / f"{source.name}-nightly.db")
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()


def changelog_max(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT coalesce(max(seq), 0) FROM _syncd_changelog").fetchone()[0]
    finally:
        conn.close()


# --- figures ----------------------------------------------------------------------------


COMPARE = {">=": operator.ge, "<=": operator.le, "<": operator.lt, ">": operator.gt}


@dataclass
class Figure:
    """One result line: what was measured, its value, and the target it is held to."""

    bench: str
    name: str
    value: float
    unit: str
    target: str | None = None  # e.g. ">= 0.6"
    note: str = ""

    @property
    def verdict(self) -> str:
        if not self.target:
            return ""
        op, limit = self.target.split()
        return "PASS" if COMPARE[op](self.value, float(limit)) else "MISS"

    def shown(self) -> str:
        if self.target and self.unit == "x":
            limit = float(self.target.split()[1])
            if f"{self.value:.2f}" == f"{limit:.2f}":  # 0.449x is a MISS of >= 0.45: show why
                return f"{self.value:.3f}x"
        return fmt(self.value, self.unit)


def fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit in ("ms", "µs"):
        return f"{value:.1f} {unit}"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:,.0f} {unit}"


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    """min–max of the repeats, to show how noisy a figure was."""
    if len(xs) < 2:
        return ""
    f = "{:,.0f}" if max(xs) >= 100 else "{:.3g}"
    return f"{f.format(min(xs))}–{f.format(max(xs))}"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("  " + "  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print("  " + "  ".join("-" * w for w in widths))
    for r in rows:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def print_figures(figures: list[Figure]) -> None:
    rows = [[f.name, f.shown(), f.target or "", f.verdict, f.note] for f in figures]
    print_table("Figures", ["figure", "value", "target", "", "note"], rows)


def compile_syncd() -> None:
    """Byte-compile syncd as `pip install` does for its users. Run from this checkout
    under PYTHONDONTWRITEBYTECODE, every syncd process would otherwise compile each
    module from source at start (0.1-0.3 s a process here), which no installed user pays."""
    import compileall

    compileall.compile_dir(str(ROOT / "syncd"), quiet=1)


def parse_args(doc: str | None) -> argparse.Namespace:
    compile_syncd()
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (a smoke run)")
    ap.add_argument("--report", metavar="JSON", help="also write the figures here (used by run_all.py)")
    return ap.parse_args()


def finish(args: argparse.Namespace, figures: list[Figure], started: float) -> None:
    print_figures(figures)
    print(f"\n({time.monotonic() - started:.0f} s)")
    if args.report:
        Path(args.report).write_text(json.dumps([asdict(f) for f in figures]))


def main_async(doc: str | None, run) -> None:
    """A benchmark's main(): parse the flags, run `run(args)` on an event loop, print."""
    args = parse_args(doc)
    started = time.monotonic()
    finish(args, asyncio.run(run(args)), started)


# --- scratch space ----------------------------------------------------------------------


def psql(dsn: str, sql: str) -> str:
    out = subprocess.run(["psql", dsn, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {out.stderr.strip()}")
    return out.stdout.strip()


def psql_timed(dsn: str, script: str) -> float:
    """Run a psql script and return the seconds its statements took as psql's \\timing
    reports them (each from sending it to its result): psql's own start and connection,
    about 40 ms here, are not an anchor's work."""
    return sum(psql_times(dsn, script))


def psql_times(dsn: str, script: str) -> list[float]:
    """psql_timed's seconds, one per statement (and backslash command) in order."""
    out = subprocess.run(["psql", dsn, "-v", "ON_ERROR_STOP=1", "-qAt", "-f", "-"], input="\\timing on\n" + script,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {out.stderr.strip()}")
    times = re.findall(r"^Time: ([0-9.]+) ms", out.stdout, re.M)
    if not times:
        raise RuntimeError(f"psql printed no timing: {out.stdout[-300:]!r}")
    return [float(t) / 1000 for t in times]


def with_database(dsn: str, name: str) -> str:
    p = urlsplit(dsn)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))


@contextmanager
def pg_database(label: str) -> Iterator[str]:
    """A fresh database `bench_<label>_<hex>`, dropped afterwards; yields its DSN."""
    name = f"bench_{label}_{secrets.token_hex(4)}"
    psql(ADMIN_DSN, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(ADMIN_DSN, name)
    finally:
        psql(ADMIN_DSN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_dir(label: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"syncd-bench-{label}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_db(db: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


# --- the daemon -------------------------------------------------------------------------


def write_config(path: Path, dsn: str, db: Path, source: str = "app", **stream) -> Path:
    """A syncd.toml with syncd's defaults except: no metrics listener (several daemons
    may run at once) and whatever [stream] settings are passed."""
    lines = ["[postgres]", f'dsn = "{dsn}"', "", "[metrics]", 'listen = ""', ""]
    if stream:
        lines.append("[stream]")
        lines.extend(f"{k} = {v}" for k, v in stream.items())
        lines.append("")
    lines += ["[[sources]]", f'name = "{source}"', f'path = "{db}"', ""]
    path.write_text("\n".join(lines))
    return path


class Daemon:
    """`syncd run` as systemd would start it, logging JSON lines to a file."""

    def __init__(self, config: Path, log: Path, env: dict | None = None):
        self.log_path = log
        self._log = open(log, "wb")  # one log per start: event_time reads the first match
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "--config", str(config), "--log-format", "json", "run"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=str(ROOT), env={**os.environ, **(env or {})},
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def lines(self) -> list[dict]:
        if not self._log.closed:
            self._log.flush()
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"level": "raw", "msg": line})
        return out

    def event_time(self, event: str) -> float | None:
        """Wall-clock time of the daemon's first log line with this event."""
        for rec in self.lines():
            if rec.get("event") == event:
                return dt.datetime.fromisoformat(rec["ts"]).timestamp()
        return None

    def problems(self) -> list[str]:
        """Log lines an operator would worry about."""
        return [f"{r.get('level')}: {r.get('msg')}" for r in self.lines() if r.get("level") in ("error", "warning", "raw")]

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return -9
        finally:
            self._log.close()

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.stop()
        if not self._log.closed:
            self._log.close()


def check_daemon(d: Daemon, rc: int, seen: list[str]) -> None:
    """Collect the daemon's exit problems and warnings into `seen` (printed at the end)."""
    if rc != 0:
        seen.append(f"daemon exited with {rc}")
    seen.extend(p for p in d.problems() if p not in seen)


def print_problems(seen: list[str]) -> None:
    if seen:
        print("\nsyncd reported problems during the run:")
        for p in seen[:20]:
            print(f"  {p[:300]}")


async def pg_connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn)


async def progress(conn, source: str = "app") -> tuple[int | None, dict[str, str]]:
    """(applied_seq, table -> state) from syncd's bookkeeping; (None, {}) before it exists."""
    try:
        seq = await conn.fetchval("SELECT applied_seq FROM syncd.sources WHERE source = $1", source)
        rows = await conn.fetch("SELECT table_name, state FROM syncd.tables WHERE source = $1", source)
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        return None, {}
    return seq, {r[0]: r[1] for r in rows}


async def wait_streaming(conn, db: Path, daemon: Daemon, timeout: float = 300, interval: float = 0.02,
                         source: str = "app") -> float:
    """Wait until every table streams and the checkpoint reached the changelog's end;
    returns the time.time() it was first seen."""
    deadline = time.monotonic() + timeout
    while True:
        seq, states = await progress(conn, source)
        if seq is not None and states and all(s == "streaming" for s in states.values()):
            if seq >= changelog_max(db):
                return time.time()
        if not daemon.alive():
            raise RuntimeError("syncd exited:\n" + "\n".join(daemon.problems()[-10:]))
        if time.monotonic() > deadline:
            raise RuntimeError(f"syncd did not catch up in {timeout:.0f} s (applied {seq}, states {states})")
        await asyncio.sleep(interval)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, every core summed."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


def busy_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    """The share of the machine's CPU time that was busy between two machine_cpu() readings."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else float("nan")


def alternate(round_no: int, items: list) -> list:
    """The order to run `items` in on round `round_no`: rotated, so no contender always goes first."""
    k = round_no % len(items)
    return items[k:] + items[:k]

