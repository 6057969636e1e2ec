"""One large application transaction, end to end as a user sees it: from the moment its
COMMIT returns in SQLite until its last row is visible in Postgres, beside `psql \\copy`
of the same rows in the same round.

Cases, on the user's own shapes (the daemon runs with default settings and has done its
first consistency check, as a daemon that has been running a while has):

- composite key: `system_metrics (host TEXT, ts REAL, ...) PRIMARY KEY (host, ts)`,
  200k rows, one UPDATE of every row. Target: changes/s >= 0.25x \\copy rows/s.
- integer key: a 1M-row `ledger (id INTEGER PRIMARY KEY, kind, amount, note, at)`,
  one UPDATE of 200k rows. Target: >= 0.25x \\copy rows/s.
- keyless log: one INSERT of 200k rows into a table without a key (informative).
- wide rows: a 30-column table, one UPDATE of 50k rows (informative).
- backlog: 400k changes written while the daemon is stopped, then the daemon starts;
  end to end from `syncd run` until caught up, and the daemon's peak RSS during it.
  Target: < 150 MB.

"Visible" is syncd's checkpoint in Postgres reaching the changelog's end: it commits in
the same transaction as the rows. The \\copy anchor loads the changed rows (their values
after the transaction) from CSV into a fresh table of the same shape with its key in
place; only the \\copy statement is timed, as psql's \\timing reports it (psql's start and
connection, about 40 ms, are not the anchor's work). syncd and \\copy alternate within
each round; figures are medians of the per-round ratios. The reader's query plan for each shape is printed
(EXPLAIN QUERY PLAN), since composite keys cost an index lookup per change.

    python bench/change_drain.py [--quick]
"""

from __future__ import annotations

import asyncio
import csv
import random
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    ROOT, Daemon, Figure, alternate, busy_share, changelog_max, check_daemon, cpu_seconds, machine_cpu, main_async,
    median, pg_connect, pg_database, print_problems, print_table, psql, psql_timed, psql_times, scratch_dir, spread,
    wait_streaming, write_config,
)
from syncd.config import SourceSettings  # noqa: E402
from syncd.sqlite import reader  # noqa: E402
from syncd.sqlite.introspect import introspect  # noqa: E402

RATIO_TARGET = ">= 0.25"
RSS_TARGET = "< 150"
HOSTS = 50


@dataclass
class Case:
    name: str
    table: str
    ddl: str  # SQLite
    pg_ddl: str  # the \copy anchor's table, shaped as syncd makes it
    rows: int
    fill: Callable[[sqlite3.Connection, int], None]
    change: Callable[[sqlite3.Connection, int], int]  # runs the transaction (round r); returns rows changed
    changed_rows_sql: str  # SELECT of the changed rows' current values, for the \copy anchor
    target: str | None = RATIO_TARGET
    key: tuple[str, ...] = ("id",)  # the Postgres key, for the merge anchor
    # The rows the merge anchor's table holds before the merge: every row of the table
    # (Postgres merges into a table of the whole table's size, as syncd does), less a
    # case's new rows when it INSERTs (it is timed after syncd's leg of the round).
    base_rows_sql: str = ""
    inserts: bool = False


def fill_metrics(conn: sqlite3.Connection, n: int) -> None:
    rnd = random.Random(1)
    conn.executemany("INSERT INTO system_metrics VALUES (?, ?, ?, ?, ?)",
                     ((f"host-{i % HOSTS:02d}", 1_764_000_000.0 + (i // HOSTS) * 15.25, round(rnd.uniform(3, 95), 1),
                       rnd.randint(900, 7800), round(rnd.uniform(20, 80), 1)) for i in range(n)))


KINDS = ["sale", "refund", "fee", "payout", "adjustment"]


def ledger_row(i: int, rnd: random.Random) -> tuple:
    return (i, rnd.choice(KINDS), round(rnd.uniform(-500, 5000), 2), f"invoice {i} for customer {rnd.randrange(10000)}",
            f"2025-{1 + i % 12:02d}-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}")


def fill_ledger(conn: sqlite3.Connection, n: int) -> None:
    rnd = random.Random(5)
    conn.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?, ?)", (ledger_row(i, rnd) for i in range(1, n + 1)))


WIDE_COLS = 30


def fill_wide(conn: sqlite3.Connection, n: int) -> None:
    rnd = random.Random(9)
    marks = ", ".join("?" * (WIDE_COLS + 1))
    conn.executemany(f"INSERT INTO wide VALUES ({marks})",
                     ((i, *[(f"field {c} of row {i} " + "x" * rnd.randrange(20)) if c % 3 == 0 else
                            rnd.random() * 1000 if c % 3 == 1 else rnd.randrange(10**6) for c in range(WIDE_COLS)])
                      for i in range(1, n + 1)))


def wide_ddl(pg: bool) -> str:
    cols = []
    for c in range(WIDE_COLS):
        t = ("text" if pg else "TEXT") if c % 3 == 0 else ("double precision" if pg else "REAL") if c % 3 == 1 else \
            ("bigint" if pg else "INTEGER")
        cols.append(f"c{c} {t}")
    key = "id bigint PRIMARY KEY" if pg else "id INTEGER PRIMARY KEY"
    return f"CREATE TABLE wide ({key}, {', '.join(cols)})"


def log_insert(conn: sqlite3.Connection, r: int, n: int) -> int:
    rnd = random.Random(100 + r)
    conn.executemany("INSERT INTO metrics_log VALUES (?, ?, ?, ?)",
                     ((f"host-{i % HOSTS:02d}", rnd.choice(["load1", "iowait", "mem"]), rnd.random() * 4,
                       f"2026-01-01 00:{i // 60 % 60:02d}:{i % 60:02d}") for i in range(n)))
    return n


def cases(quick: bool) -> list[Case]:
    m = 50_000 if quick else 200_000
    big = 250_000 if quick else 1_000_000
    upd = m
    log_n = m
    wide_n = 20_000 if quick else 50_000
    return [
        Case("composite key (host TEXT, ts REAL): UPDATE of every row", "system_metrics",
             "CREATE TABLE system_metrics (host TEXT, ts REAL, cpu REAL, mem_mb INTEGER, disk_pct REAL, "
             "PRIMARY KEY (host, ts))",
             "CREATE TABLE system_metrics (host text, ts double precision, cpu double precision, mem_mb bigint, "
             "disk_pct double precision, PRIMARY KEY (host, ts))",
             m, fill_metrics, lambda c, r: c.execute("UPDATE system_metrics SET cpu = cpu + 1").rowcount,
             "SELECT * FROM system_metrics", key=("host", "ts"), base_rows_sql="SELECT * FROM system_metrics"),
        Case(f"integer key, {big // 1000}k-row table: UPDATE of {upd // 1000}k rows", "ledger",
             "CREATE TABLE ledger (id INTEGER PRIMARY KEY, kind TEXT, amount REAL, note TEXT, at TEXT)",
             "CREATE TABLE ledger (id bigint PRIMARY KEY, kind text, amount double precision, note text, at text)",
             big, fill_ledger,
             lambda c, r: c.execute(f"UPDATE ledger SET amount = amount + 1 WHERE id % {big // upd} = 0").rowcount,
             f"SELECT * FROM ledger WHERE id % {big // upd} = 0", RATIO_TARGET, base_rows_sql="SELECT * FROM ledger"),
        Case(f"keyless log: INSERT of {log_n // 1000}k rows", "metrics_log",
             "CREATE TABLE metrics_log (host TEXT, metric TEXT, value REAL, logged_at TEXT)",
             "CREATE TABLE metrics_log (_syncd_rowid bigint PRIMARY KEY, host text, metric text, "
             "value double precision, logged_at text)",
             0, lambda c, n: None, lambda c, r: log_insert(c, r, log_n),
             f"SELECT rowid, * FROM metrics_log WHERE rowid > (SELECT max(rowid) FROM metrics_log) - {log_n} "
             "ORDER BY rowid", None, key=("_syncd_rowid",),
             base_rows_sql=f"SELECT rowid, * FROM metrics_log WHERE rowid <= (SELECT max(rowid) FROM metrics_log) "
                           f"- {log_n}", inserts=True),
        Case(f"wide rows ({WIDE_COLS + 1} columns): UPDATE of {wide_n // 1000}k rows", "wide",
             wide_ddl(False), wide_ddl(True), wide_n, fill_wide,
             lambda c, r: c.execute("UPDATE wide SET c1 = c1 + 1").rowcount, "SELECT * FROM wide", None,
             base_rows_sql="SELECT * FROM wide"),
    ]


def export_csv(db: Path, sql: str, out: Path) -> int:
    conn = sqlite3.connect(db)
    n = 0
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        for row in conn.execute(sql):
            w.writerow([repr(v) if isinstance(v, float) else v for v in row])
            n += 1
    conn.close()
    return n


def copy_anchor(case: Case, csv_path: Path) -> float:
    with pg_database("anchor") as dsn:
        psql(dsn, case.pg_ddl)
        return psql_timed(dsn, f"\\copy {case.table} FROM '{csv_path}' WITH (FORMAT csv)\n")


# The other statement shapes one could apply a staged batch with, timed beside syncd's
# INSERT ... ON CONFLICT over the same rows: UPDATE ... FROM for the keys the table
# holds then INSERT ... WHERE NOT EXISTS for the rest, and Postgres 15's MERGE.
# Timed for the cases that UPDATE: into the keyless log's empty table of the first round,
# the INSERT ... WHERE NOT EXISTS is planned as a scan of the table for each staged row,
# which goes on reading the rows the statement inserts (quadratic: minutes for 200k rows).
SHAPES = {"update_from": "UPDATE ... FROM + INSERT ... WHERE NOT EXISTS", "merge_into": "MERGE"}


def merge_anchor(case: Case, csv_path: Path, base_path: Path, shape: str = "upsert") -> tuple[float, float]:
    """Postgres alone applying the same rows the way syncd does (COPY into a temporary
    stage, then INSERT ... ON CONFLICT DO UPDATE into a table of every row of the
    SQLite table, the changed ones in it already unless the case inserts them), by psql
    from the CSV, its statements timed: Postgres's own stage and merge on the table's
    real size, with no SQLite read and no Python (text COPY, where syncd sends binary).
    Returns the whole and the merge statement alone: the same statement syncd runs over
    the same rows, so a floor for any apply that stages and merges, however it stages.
    `shape` (one of SHAPES) merges with another statement shape instead, to the same
    table: the ceiling of that shape, measured the same way."""
    with pg_database("merge") as dsn:
        psql(dsn, case.pg_ddl)
        psql(dsn, f"\\copy {case.table} FROM '{base_path}' WITH (FORMAT csv)")
        psql(dsn, f"VACUUM ANALYZE {case.table}")
        cols = [line.split()[0] for line in case.pg_ddl.split("(", 1)[1].rsplit(")", 1)[0].split(", ")
                if not line.startswith("PRIMARY KEY") and line.split()[0].isidentifier()]
        non_key = [c for c in cols if c not in case.key]
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in non_key)
        on = " AND ".join(f"t.{k} = s.{k}" for k in case.key)
        values = ", ".join(f"s.{c}" for c in cols)
        if shape == "update_from":
            statements = (f"UPDATE {case.table} AS t SET {', '.join(f'{c} = s.{c}' for c in non_key)} "
                          f"FROM stage AS s WHERE {on};\n"
                          f"INSERT INTO {case.table} SELECT {values} FROM stage AS s "
                          f"WHERE NOT EXISTS (SELECT 1 FROM {case.table} AS t WHERE {on});\n")
        elif shape == "merge_into":
            statements = (f"MERGE INTO {case.table} AS t USING stage AS s ON {on} "
                          f"WHEN MATCHED THEN UPDATE SET {', '.join(f'{c} = s.{c}' for c in non_key)} "
                          f"WHEN NOT MATCHED THEN INSERT VALUES ({values});\n")
        else:
            statements = (f"INSERT INTO {case.table} SELECT * FROM stage ON CONFLICT ({', '.join(case.key)}) "
                          f"DO UPDATE SET {sets};\n")
        times = psql_times(dsn, "BEGIN;\n"
                               f"CREATE TEMP TABLE stage (LIKE {case.table}) ON COMMIT DROP;\n"
                               f"\\copy stage FROM '{csv_path}' WITH (FORMAT csv)\n"
                               f"{statements}"
                               "COMMIT;\n")
        return sum(times), sum(times[3:-1])  # BEGIN, CREATE, \copy, the merge's statements, COMMIT


def query_plan(db: Path, table: str) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        spec = introspect(conn, SourceSettings(name="app", path=db)).tables[table]
        return [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + reader._join_sql(spec), (0, 0, 1))]
    finally:
        conn.close()


async def wait_applied(conn, top: int, daemon: Daemon, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while True:
        seq = await conn.fetchval("SELECT applied_seq FROM syncd.sources WHERE source = 'app'")
        if seq is not None and seq >= top:
            return time.perf_counter()
        if not daemon.alive():
            raise RuntimeError("syncd exited:\n" + "\n".join(daemon.problems()[-10:]))
        if time.monotonic() > deadline:
            raise RuntimeError(f"syncd did not apply up to {top} in {timeout:.0f} s (at {seq})")
        await asyncio.sleep(0.005)


async def first_check_done(d: Daemon, timeout: float = 120) -> None:
    """The daemon's first consistency check runs once a source has caught up; a daemon
    that has run a while has done it, so the measurement waits for it."""
    deadline = time.monotonic() + timeout
    while d.event_time("verify") is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the daemon's first consistency check did not finish")
        await asyncio.sleep(0.05)


def init(cfg: Path, problems: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "syncd", "--config", str(cfg), "init"], capture_output=True,
                         text=True, cwd=str(ROOT))
    if out.returncode != 0:
        problems.append(f"syncd init failed: {out.stdout[-300:]} {out.stderr[-300:]}")


async def run_case(case: Case, rounds: int, tmp: Path, problems: list[str]) -> dict:
    db = tmp / f"{case.table}.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(case.ddl)
    conn.execute("BEGIN")
    case.fill(conn, case.rows)
    conn.execute("COMMIT")
    conn.close()
    got: dict[str, list[float]] = {"syncd": [], "copy": [], "merge": [], "merge_stmt": [], "ratio": [], "rows": [],
                                   "cpu": [], "busy": [], **{shape: [] for shape in SHAPES}}
    with pg_database("drain") as dsn:
        cfg = write_config(tmp / f"{case.table}.toml", dsn, db)
        init(cfg, problems)
        with Daemon(cfg, tmp / f"{case.table}.log") as d:
            pg = await pg_connect(dsn)
            await wait_streaming(pg, db, d, timeout=600)
            await first_check_done(d)
            for r in range(rounds):
                took = {}
                order = alternate(r, ["syncd", "copy", "merge", *([] if case.inserts else SHAPES)])
                if case.inserts:  # the merge inserts this round's new rows into the table as it was before them
                    order.remove("merge")
                    order.insert(order.index("syncd") + 1, "merge")
                for who in order:
                    if who == "syncd":
                        app = sqlite3.connect(db, isolation_level=None)
                        app.execute("BEGIN")
                        n = case.change(app, r)
                        app.execute("COMMIT")
                        committed = time.perf_counter()
                        cpu0, machine0 = cpu_seconds(d.proc.pid), machine_cpu()
                        app.close()
                        took["syncd"] = await wait_applied(pg, changelog_max(db), d) - committed
                        got["cpu"].append(cpu_seconds(d.proc.pid) - cpu0)
                        got["busy"].append(busy_share(machine0, machine_cpu()))
                        got["rows"].append(n)
                    else:
                        csv_path = tmp / f"{case.table}.csv"
                        if not csv_path.exists() or (case.inserts and who == "merge"):
                            export_csv(db, case.changed_rows_sql, csv_path)  # new rows: this round's
                        if who == "copy":
                            took[who] = copy_anchor(case, csv_path)
                        else:
                            base_path = tmp / f"{case.table}.base.csv"
                            if case.inserts or not base_path.exists():  # an UPDATE keeps the table's size
                                export_csv(db, case.base_rows_sql, base_path)
                            if who in SHAPES:
                                took[who] = merge_anchor(case, csv_path, base_path, who)[1]
                            else:
                                took[who], took["merge_stmt"] = merge_anchor(case, csv_path, base_path)
                n = got["rows"][-1]
                got["syncd"].append(n / took["syncd"])
                got["copy"].append(n / took["copy"])
                got["merge"].append(n / took["merge"])
                got["merge_stmt"].append(n / took["merge_stmt"])
                for shape in SHAPES:
                    if shape in took:
                        got[shape].append(n / took[shape])
                got["ratio"].append(got["syncd"][-1] / got["copy"][-1])
                print(f"  {case.table} round {r + 1}: {n:,} changes visible after {took['syncd']:.2f} s "
                      f"({got['syncd'][-1]:,.0f}/s); \\copy {took['copy']:.2f} s ({got['copy'][-1]:,.0f} rows/s); "
                      f"{got['ratio'][-1]:.2f}x; Postgres alone merging them {took['merge']:.2f} s "
                      f"(the merge statement "
                      f"{took['merge_stmt']:.2f} s"
                      + "".join(f"; {SHAPES[shape]} {took[shape]:.2f} s" for shape in SHAPES if shape in took)
                      + "); daemon CPU "
                      f"{got['cpu'][-1]:.2f} s, machine busy {100 * got['busy'][-1]:.0f}%", flush=True)
            await pg.close()
            got["hwm_mb"] = peak_rss_kb(d.proc.pid) / 1024  # type: ignore[assignment]
            check_daemon(d, d.stop(), problems)
    got["plan"] = query_plan(db, case.table)  # type: ignore[assignment]
    return got


def peak_rss_kb(pid: int) -> int:
    """The process's peak RSS so far (VmHWM), its initial load included."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


async def backlog(tmp: Path, changes: int, problems: list[str]) -> dict:
    """`changes` queued while the daemon is stopped (mixed: updates of a 1M-row table in
    transactions of 5,000, inserts), then `syncd run` until caught up; the daemon's RSS
    sampled every 20 ms."""
    db = tmp / "backlog.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, kind TEXT, amount REAL, note TEXT, at TEXT)")
    rows = max(changes, 100_000)
    conn.execute("BEGIN")
    fill_ledger(conn, rows)
    conn.execute("COMMIT")
    conn.close()
    with pg_database("backlog") as dsn:
        cfg = write_config(tmp / "backlog.toml", dsn, db)
        init(cfg, problems)
        with Daemon(cfg, tmp / "backlog-load.log") as d:
            pg = await pg_connect(dsn)
            await wait_streaming(pg, db, d, timeout=600)
            check_daemon(d, d.stop(), problems)
        app = sqlite3.connect(db, isolation_level=None)
        rnd = random.Random(3)
        done, step = 0, 5000
        while done < changes:
            app.execute("BEGIN")
            if (done // step) % 4 == 3:
                app.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?, ?)",
                                (ledger_row(rows + done + i + 1, rnd) for i in range(step)))
            else:
                lo = rnd.randrange(1, rows - step)
                app.execute("UPDATE ledger SET amount = amount + 1 WHERE id BETWEEN ? AND ?", (lo, lo + step - 1))
            app.execute("COMMIT")
            done += step
        app.close()
        top = changelog_max(db)
        started = time.perf_counter()
        peak = 0
        with Daemon(cfg, tmp / "backlog.log") as d:
            while True:
                peak = max(peak, rss_kb(d.proc.pid))
                seq = await pg.fetchval("SELECT applied_seq FROM syncd.sources WHERE source = 'app'")
                if seq >= top:
                    break
                if not d.alive():
                    raise RuntimeError("syncd exited:\n" + "\n".join(d.problems()[-10:]))
                await asyncio.sleep(0.02)
            took = time.perf_counter() - started
            peak = max(peak, rss_kb(d.proc.pid))
            check_daemon(d, d.stop(), problems)
        await pg.close()
    return {"changes": changes, "took": took, "rss_mb": peak / 1024}


async def run(args) -> list[Figure]:
    rounds = 1 if args.quick else 3
    problems: list[str] = []
    results = []
    with scratch_dir("drain") as tmp:
        for case in cases(args.quick):
            results.append((case, await run_case(case, rounds, tmp, problems)))
        back = await backlog(tmp, 100_000 if args.quick else 400_000, problems)

    rows = []
    for case, got in results:
        merge_ratio = median([m / c for m, c in zip(got["merge"], got["copy"])])
        stmt_ratio = median([m / c for m, c in zip(got["merge_stmt"], got["copy"])])
        rows.append([case.name, f"{median(got['syncd']):,.0f}/s", f"{median(got['copy']):,.0f} rows/s",
                     f"{median(got['ratio']):.2f}x", spread(got["ratio"]), case.target or "(informative)",
                     f"{median(got['merge']):,.0f} rows/s ({merge_ratio:.2f}x)", f"{stmt_ratio:.2f}x",
                     *[f"{median([m / c for m, c in zip(got[shape], got['copy'])]):.2f}x" if got[shape] else "-"
                       for shape in SHAPES],
                     f"{median([c / (n / r) for c, n, r in zip(got['cpu'], got['rows'], got['syncd'])]):.2f}",
                     f"{100 * median(got['busy']):.0f}%", f"{got['hwm_mb']:.0f} MB"])
    print_table(f"One large transaction, COMMIT to last row visible in Postgres (median of {rounds} rounds)",
                ["case", "syncd changes/s", "psql \\copy same rows", "ratio", "ratio range", "target",
                 "Postgres alone: stage + merge (/ \\copy)", "its merge statement alone",
                 *[f"{name} instead" for name in SHAPES.values()], "daemon CPU s per wall s",
                 "machine busy",
                 "daemon peak RSS"], rows)
    print("  Postgres alone: psql COPYing the same rows (CSV) into a temporary stage and merging them with\n"
          "  INSERT ... ON CONFLICT DO UPDATE into a table holding every row of the SQLite table (the keyless\n"
          "  log's new rows left out, so they arrive as inserts), as syncd applies them, its statements timed\n"
          "  (psql's \\timing): Postgres's own stage and merge on the table's real size, with no SQLite read\n"
          "  and no Python. syncd near it applies as fast as Postgres merges; \\copy is timed the same way.\n"
          "  Its merge statement alone: the INSERT ... ON CONFLICT of those rows from the stage, the statement\n"
          "  syncd itself runs (in batches) over the same rows: a floor for any apply that stages and merges.\n"
          "  Instead: the same rows merged from the same stage into the same table by another statement shape\n"
          "  (UPDATE ... FROM for the keys the table holds, then INSERT ... WHERE NOT EXISTS; Postgres 15's\n"
          "  MERGE), timed the same way: whether another statement would lift that floor.\n"
          "  Daemon CPU per wall second and machine busy (both cores), from COMMIT to visible: a daemon near\n"
          "  1.0 on a machine near 100% busy is bound by its own Python work (one core, the GIL) beside\n"
          "  Postgres on the other core; only less CPU per change moves that figure.")
    for case, got in results:
        print(f"  reader query plan, {case.table}: " + " | ".join(got["plan"]))
    print_table("Backlog written while the daemon was stopped, then `syncd run` until caught up",
                ["changes", "start to caught up", "changes/s (end to end)", "daemon peak RSS"],
                [[f"{back['changes']:,}", f"{back['took']:.2f} s", f"{back['changes'] / back['took']:,.0f}",
                  f"{back['rss_mb']:.0f} MB"]])
    print_problems(problems)
    figures = []
    for case, got in results:
        figures.append(Figure("change_drain", f"{case.table}: syncd changes/s / \\copy rows/s",
                              median(got["ratio"]), "x", case.target,
                              note=f"{median(got['syncd']):,.0f} vs {median(got['copy']):,.0f}/s; Postgres alone "
                                   f"merging them {median([m / c for m, c in zip(got['merge'], got['copy'])]):.2f}x "
                                   f"(its merge statement alone "
                                   f"{median([m / c for m, c in zip(got['merge_stmt'], got['copy'])]):.2f}x); "
                                   f"daemon CPU {median([c / (n / r) for c, n, r in zip(got['cpu'], got['rows'], got['syncd'])]):.2f} "
                                   f"s per wall s, machine {100 * median(got['busy']):.0f}% busy"))
    figures.append(Figure("change_drain", f"daemon peak RSS draining a {back['changes'] // 1000}k backlog",
                          back["rss_mb"], "MB", RSS_TARGET,
                          note=f"{back['changes'] / back['took']:,.0f} changes/s from `syncd run`"))
    if problems:
        figures.append(Figure("change_drain", "syncd problems (errors/warnings)", len(problems), "", "<= 0"))
    return figures


def main() -> None:
    main_async(__doc__, run)


if __name__ == "__main__":
    main()
