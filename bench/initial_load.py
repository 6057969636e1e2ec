"""Initial load of a SQLite file into Postgres, end to end as a user does it: syncd vs
pgloader reading the same file vs `psql \\copy` of the same rows from CSV (the floor).

Shapes: the user's narrow `ledger (id INTEGER PRIMARY KEY, kind TEXT, amount REAL, note
TEXT, at TEXT)`, 1M rows (the target), a wider `items` table with a blob, and the same
ledger with two indexes (on kind, on at), timed until every index is built too
(informative).

- syncd: `syncd init`, then `syncd run`, timed from the moment `init` is started until
  syncd.tables says the table left `loading` (its last chunk committed: every row is
  visible). Process starts, capture install, the value audit and the COPY all count;
  the phases are shown apart.
- syncd run alone: the same without `syncd init` (`syncd run` initializes a source it
  finds new, as the README's walkthrough does), one process start fewer.
- pgloader: the whole `pgloader sqlite:///... postgresql:///...` process. Not installed
  by the project: `apt-get install pgloader` (Debian) brings it; without it that
  comparison is skipped.
- psql \\copy: the rows exported to CSV beforehand; only the \\copy is timed, into a
  table of the same shape syncd creates, primary key in place.
- psql \\copy, key after: the same \\copy into the table without its primary key, then
  the key added (one index build), as pgloader does it.

- a plain Python load (bench/plain_loader.py): the standard sqlite3 module reading the
  table in chunks, one thread reading ahead, asyncpg COPYing each chunk in a transaction
  of its own into the table with its primary key; only the load timed. One
  straightforward load on syncd's stack (Python, sqlite3, asyncpg), with none of what
  syncd adds. Its process's CPU time is shown as a share of one core, and the same load
  on two Postgres connections at once (two COPYs, commits in chunk order) beside it:
  when two connections gain nothing and the share is near one core, the one Python
  process bounds the load, not Postgres. Its Postgres backend's CPU time is added to
  its own and shown as a share of all the cores it may run on, beside how busy the whole
  machine was meanwhile (every process): near 100%, no split of the load across
  processes or connections could make it much faster here.

The contenders alternate within each round; figures are medians of per-round ratios.
Target (ledger): syncd <= 0.5x pgloader's time.

The floor, measured in each round: Python starting and importing what `syncd init` and
`syncd run` need (nothing else: no config, no file, no connection), plus the round's
faster `psql \\copy` (with the key, or key after). No syncd load can take less; where
the floor is above the target itself, the target is out of reach on that machine, and
the bench says so. The plain-Python anchor: the same process starts plus the plain
Python load, what one straightforward load on syncd's stack takes (not a proven
minimum). The stack floor: two Python starts importing syncd's stack alone (asyncio,
sqlite3, asyncpg, pydantic-settings: what any process built on it imports before it
can read a configuration and reach both databases), plus the plain Python load; with
init's value audit added (its time read from init's debug log), it is what syncd would
take were all its own work but the audit free.

    python bench/initial_load.py [--quick]
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    ROOT, Daemon, Figure, alternate, check_daemon, create_items, main_async, median, pg_connect, pg_database,
    print_problems, print_table, psql, psql_timed, remove_db, scratch_dir, spread, write_config,
)

COPY_DDL = {
    "ledger": "CREATE TABLE ledger (id bigint PRIMARY KEY, kind text, amount double precision, note text, at text)",
    "items": "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, email text, city text, "
             "score double precision, qty bigint, created_at text, payload bytea)",
}
KINDS = ["sale", "refund", "fee", "payout", "adjustment"]
FLOORS = ["floor", "floor-run", "python-floor", "stack-floor"]
CORES = len(os.sched_getaffinity(0))  # the cores this process (and its children) may run on


@dataclass(frozen=True)
class Shape:
    name: str
    table: str
    indexes: tuple[str, ...] = ()  # CREATE INDEX statements, the same in SQLite and Postgres

    def index_count(self) -> int:
        return 1 + len(self.indexes)  # and the primary key's


SHAPES = [
    Shape("ledger", "ledger"),
    Shape("items", "items"),
    Shape("ledger, two indexes", "ledger", ("CREATE INDEX ledger_kind ON ledger (kind)",
                                            "CREATE INDEX ledger_at ON ledger (at)")),
]


def create_ledger(db: Path, rows: int) -> None:
    rnd = random.Random(5)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, kind TEXT, amount REAL, note TEXT, at TEXT)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?, ?)", (
        (i, rnd.choice(KINDS), round(rnd.uniform(-500, 5000), 2), f"invoice {i} for customer {rnd.randrange(10000)}",
         f"2025-{1 + i % 12:02d}-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}")
        for i in range(1, rows + 1)))
    conn.execute("COMMIT")
    conn.close()


def export_csv(db: Path, table: str, out: Path) -> None:
    conn = sqlite3.connect(db)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        for row in conn.execute(f"SELECT * FROM {table} ORDER BY id"):
            w.writerow(["\\x" + v.hex() if isinstance(v, bytes) else repr(v) if isinstance(v, float) else v
                        for v in row])
    conn.close()


def copy_on_disk(pristine: Path, db: Path) -> None:
    """A fresh copy of `pristine` at `db`, written out to disk before the clock starts, as a
    user's file has long been. Left in the page cache unwritten, the copy was flushed by
    the first fsync that came: `syncd init`'s, of its last checkpoint as it closed the
    file (the 77 MB ledger: 65 ms of init's time, against 14 ms for the same file on
    disk), a cost of the bench's copy that pgloader, which only reads its own, never met."""
    shutil.copyfile(pristine, db)
    fd = os.open(db, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pg_count(dsn: str, table: str) -> int:
    return int(psql(dsn, f"SELECT count(*) FROM {table}"))


def process_start(verb: str) -> float:
    """Seconds for Python to start, import what `syncd <verb>` needs, and exit."""
    return _python_start(f"import syncd.cli.{verb}")


# What any syncd process imports before it can read its configuration and reach both
# databases, whatever syncd itself does: the stack syncd is built on.
STACK_IMPORTS = "import asyncio, sqlite3, asyncpg, pydantic_settings"


def stack_start() -> float:
    """Seconds for Python to start, import syncd's stack alone (none of syncd), and exit."""
    return _python_start(STACK_IMPORTS)


def _python_start(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(ROOT))
    return time.perf_counter() - t


def audit_seconds(init_log: str) -> float:
    """The seconds `syncd init`'s value audit took, from its JSON debug log."""
    for line in init_log.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "audited":
            return float(re.search(r"audited in ([0-9.]+) s", rec["msg"]).group(1))
    raise RuntimeError("syncd init logged no value audit")


async def load_syncd(tmp: Path, pristine: Path, shape: Shape, rows: int, problems: list[str],
                     with_init: bool = True) -> dict:
    """Until every row is visible and, for a shape with indexes, every index is built."""
    table = shape.table
    db = tmp / "syncd.db"
    remove_db(db)
    copy_on_disk(pristine, db)
    with pg_database("load") as dsn:
        cfg = write_config(tmp / "syncd.toml", dsn, db)
        started = time.time()
        if with_init:
            out = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), "--log-format", "json",
                                  "--log-level", "debug", "init"], capture_output=True, text=True, cwd=str(ROOT))
            if out.returncode != 0:
                raise RuntimeError(f"syncd init failed: {out.stdout[-1000:]} {out.stderr[-1000:]}")
        inited = time.time()
        audited = audit_seconds(out.stderr) if with_init else 0.0
        with Daemon(cfg, tmp / "syncd.log") as d:
            conn = None
            while True:  # poll tightly: the finish time is when this first sees it
                if not d.alive():
                    raise RuntimeError("syncd exited:\n" + "\n".join(d.problems()[-10:]))
                try:
                    conn = conn or await pg_connect(dsn)
                    state = await conn.fetchval("SELECT state FROM syncd.tables WHERE table_name = $1", table)
                    if shape.indexes and state == "streaming":
                        built = await conn.fetchval("SELECT count(*) FROM pg_indexes WHERE schemaname = 'app' "
                                                    "AND tablename = $1", table)
                        state = "indexed" if built >= shape.index_count() else state
                except Exception:  # bookkeeping not created yet
                    state = None
                if state in (("indexed",) if shape.indexes else ("catchup", "streaming")):
                    done = time.time()
                    break
                await asyncio.sleep(0.01)
            phases = await conn.fetchrow(
                "SELECT extract(epoch FROM snapshot_started_at) AS s, extract(epoch FROM snapshot_finished_at) AS f "
                "FROM syncd.tables WHERE table_name = $1", table)
            await conn.close()
            running = d.event_time("started")
            check_daemon(d, d.stop(), problems)
        loaded = pg_count(dsn, f"app.{table}")
    if loaded != rows:
        problems.append(f"syncd loaded {loaded} rows, expected {rows}")
    return {"load": done - started, "init": inited - started, "audit": audited, "startup": running - inited,
            "before_copy": float(phases["s"]) - running, "copy": float(phases["f"]) - float(phases["s"])}


def load_copy(csv_path: Path, shape: Shape, rows: int, problems: list[str], key_after: bool = False) -> float:
    """\\copy into the table with its key and indexes, or (key_after) without them and
    then each built."""
    table = shape.table
    with pg_database("copy") as dsn:
        psql(dsn, COPY_DDL[table].replace(" PRIMARY KEY", " NOT NULL") if key_after else COPY_DDL[table])
        if not key_after:
            for sql in shape.indexes:
                psql(dsn, sql)
        # Its statements timed (psql's \\timing): psql's start and connection are not the load's work.
        script = f"\\copy {table} FROM '{csv_path}' WITH (FORMAT csv)\n"
        if key_after:
            script += f"ALTER TABLE {table} ADD PRIMARY KEY (id);\n" + "".join(f"{sql};\n" for sql in shape.indexes)
        elapsed = psql_timed(dsn, script)
        if pg_count(dsn, table) != rows:
            problems.append("psql \\copy loaded the wrong number of rows")
    return elapsed


def load_plain_python(pristine: Path, shape: Shape, rows: int, problems: list[str],
                      connections: int = 1) -> tuple[float, float, float, float]:
    """(seconds, CPU seconds of the loading process meanwhile, of its Postgres backends
    meanwhile: nan where the server's processes cannot be read, the machine's busy share
    meanwhile)."""
    table = shape.table
    with pg_database("plain") as dsn:
        after = [a for sql in shape.indexes for a in ("--after", sql)]
        out = subprocess.run([sys.executable, str(ROOT / "bench" / "plain_loader.py"), str(pristine), table, dsn,
                              COPY_DDL[table], *after, "--connections", str(connections)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"the plain Python load failed: {out.stderr[-2000:]}")
        if pg_count(dsn, table) != rows:
            problems.append("the plain Python load loaded the wrong number of rows")
    elapsed, cpu, pg_cpu, busy = map(float, out.stdout.split())
    return elapsed, cpu, pg_cpu, busy


def load_pgloader(tmp: Path, pristine: Path, shape: Shape, rows: int, problems: list[str]) -> float:
    table = shape.table
    db = tmp / "pgloader.db"
    remove_db(db)
    copy_on_disk(pristine, db)
    with pg_database("pgloader") as dsn:
        t = time.perf_counter()
        out = subprocess.run(["pgloader", "--quiet", "--root-dir", str(tmp / "pgloader"), f"sqlite://{db}", dsn],
                             capture_output=True, text=True)
        elapsed = time.perf_counter() - t
        if out.returncode != 0:
            raise RuntimeError(f"pgloader failed: {out.stderr[-2000:]}")
        if pg_count(dsn, f"public.{table}") != rows:
            problems.append("pgloader loaded the wrong number of rows")
    return elapsed


async def load_shape(shape: Shape, rows: int, rounds: int, have_pgloader: bool, problems: list[str]) -> dict:
    table = shape.table
    with scratch_dir("load") as tmp:
        pristine, csv_path = tmp / "pristine.db", tmp / f"{table}.csv"
        if table == "ledger":
            create_ledger(pristine, rows)
        else:
            create_items(pristine, rows)
        if shape.indexes:
            conn = sqlite3.connect(pristine)
            for sql in shape.indexes:
                conn.execute(sql)
            conn.close()
        export_csv(pristine, table, csv_path)
        print(f"{shape.name}: {rows:,} rows; SQLite file {pristine.stat().st_size / 2**20:.0f} MiB, CSV "
              f"{csv_path.stat().st_size / 2**20:.0f} MiB", flush=True)
        contenders = ["syncd", "syncd-run", "copy", "copy-key-after", "python", "python-2"]
        contenders += ["pgloader"] if have_pgloader else []
        times: dict[str, list[float]] = {c: [] for c in contenders + FLOORS}
        details: list[dict] = []
        python_cpu: list[float] = []  # the plain load's CPU share of one core
        load_share: list[float] = []  # its and its backend's CPU share of every core it may use
        machine_busy: list[float] = []  # the whole machine's busy share meanwhile
        ratios: dict[str, list[float]] = {k: [] for k in ("pgl", "copy", "run-pgl", "floor-pgl", "floor-run-pgl",
                                                           "python-floor-pgl", "stack-floor-pgl",
                                                           "stack-audit-pgl")}
        for r in range(rounds):
            got = {}
            for c in alternate(r, contenders):
                if c == "syncd":
                    info = await load_syncd(tmp, pristine, shape, rows, problems)
                    details.append(info)
                    got[c] = info["load"]
                elif c == "syncd-run":
                    got[c] = (await load_syncd(tmp, pristine, shape, rows, problems, with_init=False))["load"]
                elif c in ("copy", "copy-key-after"):
                    got[c] = load_copy(csv_path, shape, rows, problems, key_after=c == "copy-key-after")
                elif c in ("python", "python-2"):
                    got[c], cpu, pg_cpu, busy = load_plain_python(pristine, shape, rows, problems,
                                                                  2 if c == "python-2" else 1)
                    if c == "python":
                        python_cpu.append(cpu / got[c])
                        load_share.append((cpu + pg_cpu) / (got[c] * CORES))
                        machine_busy.append(busy)
                else:
                    got[c] = load_pgloader(tmp, pristine, shape, rows, problems)
                times[c].append(got[c])
            start_init, start_run, start_stack = process_start("init"), process_start("run"), stack_start()
            fastest_copy = min(got["copy"], got["copy-key-after"])
            got["floor"] = start_init + start_run + fastest_copy
            got["floor-run"] = start_run + fastest_copy
            got["python-floor"] = start_init + start_run + got["python"]
            got["stack-floor"] = 2 * start_stack + got["python"]
            for f in FLOORS:
                times[f].append(got[f])
            ratios["copy"].append(got["syncd"] / got["copy"])
            if have_pgloader:
                for key, c in (("pgl", "syncd"), ("run-pgl", "syncd-run"), ("floor-pgl", "floor"),
                               ("floor-run-pgl", "floor-run"), ("python-floor-pgl", "python-floor"),
                               ("stack-floor-pgl", "stack-floor")):
                    ratios[key].append(got[c] / got["pgloader"])
                ratios["stack-audit-pgl"].append((got["stack-floor"] + details[-1]["audit"]) / got["pgloader"])
            print(f"  round {r + 1}: " + ", ".join(f"{c} {got[c]:.2f} s" for c in contenders)
                  + f"; process starts: init {start_init:.2f} s, run {start_run:.2f} s, the stack alone "
                  f"{start_stack:.2f} s", flush=True)
    return {"times": times, "details": details, "ratios": ratios, "contenders": contenders,
            "python_cpu": python_cpu, "load_share": load_share, "machine_busy": machine_busy}


async def run(args) -> list[Figure]:
    rounds = 1 if args.quick else 3
    have_pgloader = shutil.which("pgloader") is not None
    problems: list[str] = []
    sizes = {"ledger": 200_000 if args.quick else 1_000_000, "items": 100_000 if args.quick else 500_000}
    shapes = {s.name: sizes[s.table] for s in SHAPES}
    results = {s.name: await load_shape(s, sizes[s.table], rounds, have_pgloader, problems) for s in SHAPES}

    names = {"syncd": "syncd init + run, until every row is visible", "syncd-run": "syncd run alone, the same",
             "copy": "psql \\copy from CSV (copy only)",
             "copy-key-after": "psql \\copy, then the primary key added",
             "pgloader": "pgloader (whole run)",
             "floor": "floor: init's and run's process starts + faster \\copy",
             "floor-run": "floor: run's process start + faster \\copy",
             "python": "plain Python load: sqlite3 -> asyncpg COPY (load only)",
             "python-2": "the same plain load on two Postgres connections (two COPYs at once)",
             "python-floor": "plain-Python anchor: init's and run's process starts + plain Python load",
             "stack-floor": "stack floor: two Python starts importing syncd's stack alone + plain Python load"}
    figures = []
    for table, res in results.items():
        rows, times, details = shapes[table], res["times"], res["details"]
        table_rows = [[names[c], f"{median(times[c]):.2f} s", f"{rows / median(times[c]):,.0f}", spread(times[c])]
                      for c in res["contenders"] + FLOORS]
        print_table(f"Initial load of {table}, {rows:,} rows (median of {rounds})",
                    ["method", "time", "rows/s", "range (s)"], table_rows)
        if "index" in table:
            print("  with indexes: syncd timed until every index is built too; \\copy with the key and indexes in "
                  "place, or each built after; the plain Python load builds them after; pgloader builds them too")
        print(f"  syncd phases (median): init {median([d['init'] for d in details]):.2f} s "
              f"(its value audit {median([d['audit'] for d in details]):.2f} s), "
              f"run: process start {median([d['startup'] for d in details]):.2f} s, "
              f"capture+reconcile+count {median([d['before_copy'] for d in details]):.2f} s, "
              f"COPY {median([d['copy'] for d in details]):.2f} s")
        share, two = median(res["python_cpu"]), median(times["python-2"]) / median(times["python"])
        print(f"  the plain Python load's own process used {share:.0%} of one core while it ran; on two Postgres "
              f"connections it took {two:.2f}x its time on one"
              + (": the one Python process (one GIL), not Postgres, bounds a load on this stack"
                 if share >= 0.8 and two >= 0.9 else ""))
        own = [b for b in res["load_share"] if not math.isnan(b)]
        busy = median(res["machine_busy"])
        print("  that process and its Postgres backend together used "
              + (f"{median(own):.0%}" if own else "an unknown share (the backend's processes are not on this machine)")
              + f" of the {CORES} cores; the whole machine was {busy:.0%} busy meanwhile: no split of the load across "
              f"processes or connections could make it more than {1 / max(busy, 1e-6):.2f}x faster here")
        ratios = res["ratios"]
        print(f"  syncd / \\copy: {median(ratios['copy']):.2f}x")
        if have_pgloader:
            print(f"  / pgloader: syncd init + run {median(ratios['pgl']):.2f}x, its floor "
                  f"{median(ratios['floor-pgl']):.2f}x; syncd run alone {median(ratios['run-pgl']):.2f}x, its floor "
                  f"{median(ratios['floor-run-pgl']):.2f}x")
            print(f"  the plain-Python anchor of init + run (process starts + the plain Python load): "
                  f"{median(ratios['python-floor-pgl']):.2f}x pgloader")
            print(f"  the stack floor (two Python starts importing only {STACK_IMPORTS[7:]}, and the plain Python "
                  f"load): {median(ratios['stack-floor-pgl']):.2f}x pgloader; with init's value audit added: "
                  f"{median(ratios['stack-audit-pgl']):.2f}x")
            if table == "ledger" and median(ratios["floor-pgl"]) > 0.5:
                print("  the floor of init + run is above 0.5x pgloader here: that target is out of reach on this "
                      "machine whatever the load does")
            elif table == "ledger" and median(ratios["stack-audit-pgl"]) > 0.5:
                print("  the stack floor with init's value audit is above 0.5x pgloader here: on this stack, that "
                      "target is out of reach while syncd audits every value before it loads")
            figures.append(Figure("initial_load", f"{table}: syncd time / pgloader time", median(ratios["pgl"]), "x",
                                  "<= 0.5" if table == "ledger" else None,
                                  note=f"{median(times['syncd']):.2f} s vs {median(times['pgloader']):.2f} s; "
                                       f"floor {median(ratios['floor-pgl']):.2f}x, plain-Python anchor "
                                       f"{median(ratios['python-floor-pgl']):.2f}x, stack floor "
                                       f"{median(ratios['stack-floor-pgl']):.2f}x (+ audit "
                                       f"{median(ratios['stack-audit-pgl']):.2f}x)"))
            figures.append(Figure("initial_load", f"{table}: syncd run alone / pgloader time",
                                  median(ratios["run-pgl"]), "x",
                                  note=f"{median(times['syncd-run']):.2f} s; "
                                       f"floor {median(ratios['floor-run-pgl']):.2f}x"))
        figures.append(Figure("initial_load", f"{table}: syncd time / psql \\copy time", median(ratios["copy"]), "x",
                              note="informative: \\copy with the key" + (" and indexes" if "index" in table else "")
                              + " in place"))
    if not have_pgloader:
        print("pgloader is not installed (apt-get install pgloader): that comparison is skipped")
    print_problems(problems)
    if problems:
        figures.append(Figure("initial_load", "syncd problems (errors/warnings, wrong counts)", len(problems), "",
                              "<= 0"))
    return figures


def main() -> None:
    main_async(__doc__, run)


if __name__ == "__main__":
    main()
