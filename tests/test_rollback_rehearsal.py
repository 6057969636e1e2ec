"""`syncd rehearse`: the rollback plan tested on the user's own data before the switch. A
copy of each source's file is replicated, verified, backed up, cut over, written to in
Postgres and rolled back (every row verified) in schemas of its own; the live file and
its replica stay as they were, and the report's item "Rollback plan tested" judges the
recorded result."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess

from tests.support.daemon import run_cli, syncd_cmd
from tests.support.verifying import pg_fetch, sync_and_stop, verify


def make_app(path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE customers (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL COLLATE NOCASE UNIQUE);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER REFERENCES customers(id), total REAL,
                             placed DATETIME);
        CREATE TABLE metrics (host TEXT, ts REAL, value REAL, PRIMARY KEY (host, ts));
        CREATE TABLE log (at TEXT, line TEXT);
    """)
    conn.executemany("INSERT INTO customers (name) VALUES (?)", [(f"c{i}",) for i in range(50)])
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)",
                     [(i, 1 + i % 50, i * 1.25, f"2026-11-{1 + i % 28:02d} 10:00:00") for i in range(300)])
    conn.executemany("INSERT INTO metrics VALUES (?, ?, ?)", [(f"h{i % 3}", i / 7, i * 0.5) for i in range(200)])
    conn.executemany("INSERT INTO log VALUES (?, ?)", [("2026-11-30", "same line")] * 40)
    conn.commit()
    conn.close()


async def schemas(dsn: str) -> set[str]:
    rows = await pg_fetch(dsn, "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
                               "AND nspname <> 'information_schema'")
    return {r[0] for r in rows}


def sqlite_state(path) -> tuple[list, list]:
    conn = sqlite3.connect(path)
    try:
        objects = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        rows = [conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                for t in ("customers", "orders", "metrics", "log")]
        return objects, rows
    finally:
        conn.close()


def report_item(cfg) -> dict:
    doc = json.loads(run_cli(cfg, "report", "--format", "json").stdout)
    return next(i for i in doc["checklist"] if i["key"] == "rollback_rehearsed")


async def test_a_copy_is_cut_over_and_rolled_back_and_the_live_side_is_untouched(app_db, make_config, pg_dsn,
                                                                                  tmp_path):
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    assert not report_item(cfg)["ok"]  # never rehearsed
    before_file = sqlite_state(app_db)
    before_pg = await pg_fetch(pg_dsn, "SELECT (SELECT count(*) FROM app.orders), (SELECT count(*) FROM app.log), "
                                       "(SELECT sum(total) FROM app.orders)")
    before_schemas = await schemas(pg_dsn)

    out = run_cli(cfg, "rehearse", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "app: rollback rehearsed on a copy" in out.stdout and "590 row(s) verified" in out.stdout, out.stdout
    for step in ("copy", "load", "verify", "backup", "cutover", "write in Postgres", "rollback"):
        assert f"  . {step}: " in out.stdout, out.stdout

    # The live file, its replica and Postgres's schemas are as they were.
    assert sqlite_state(app_db) == before_file
    assert await pg_fetch(pg_dsn, "SELECT (SELECT count(*) FROM app.orders), (SELECT count(*) FROM app.log), "
                                  "(SELECT sum(total) FROM app.orders)") == before_pg
    assert await schemas(pg_dsn) == before_schemas
    assert verify(cfg).returncode == 0
    conn = sqlite3.connect(app_db)  # the application writes its file as before
    conn.execute("INSERT INTO orders VALUES (1000, 1, 1.0, '2026-12-01 00:00:00')")
    conn.commit()
    conn.close()

    recorded = await pg_fetch(pg_dsn, "SELECT ok, rows_verified, changes, cutover_downtime_seconds, "
                                      "rollback_downtime_seconds FROM syncd.rehearsals")
    assert len(recorded) == 1
    ok, rows, changes, cut, back = recorded[0]
    assert ok and rows == 590 and changes > 0 and cut > 0 and back > 0
    item = report_item(cfg)
    assert item["ok"], item
    assert "app: rehearsed" in item["evidence"][0] and "590 row(s) verified" in item["evidence"][0]


async def test_a_rehearsal_the_cutover_refuses_says_why(app_db, make_config, pg_dsn, tmp_path):
    make_app(app_db)
    conn = sqlite3.connect(app_db)
    conn.execute("INSERT INTO orders VALUES (999, 4242, 1.0, '2026-12-01 00:00:00')")  # its customer is missing
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    before_schemas = await schemas(pg_dsn)

    out = run_cli(cfg, "rehearse", timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "app: REHEARSAL FAILED: syncd cutover refused or undone" in out.stdout, out.stdout
    assert "orphan" in out.stdout.lower(), out.stdout
    assert await schemas(pg_dsn) == before_schemas  # what it made is gone
    item = report_item(cfg)
    assert not item["ok"] and "app: the last rehearsal" in item["problems"][0] and "failed" in item["problems"][0]

    out = run_cli(cfg, "rehearse", "--allow-orphans", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert report_item(cfg)["ok"]


async def test_a_schema_no_rehearsal_made_is_left_alone(app_db, make_config, pg_dsn, tmp_path):
    from tests.support.verifying import pg_execute

    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    await pg_execute(pg_dsn, "CREATE SCHEMA app_rehearsal")
    await pg_execute(pg_dsn, "CREATE TABLE app_rehearsal.precious AS SELECT 1 AS v")
    out = run_cli(cfg, "rehearse", timeout=300)
    assert out.returncode == 1
    assert 'Postgres schema "app_rehearsal" exists and no rehearsal made it' in out.stdout, out.stdout
    assert await pg_fetch(pg_dsn, "SELECT v FROM app_rehearsal.precious") == [(1,)]


async def test_a_rehearsal_killed_halfway_is_cleared_by_the_next(app_db, make_config, pg_dsn, tmp_path):
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    before_schemas = await schemas(pg_dsn)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(syncd_cmd(cfg, "rehearse"), stdout=subprocess.PIPE, text=True, cwd=str(cfg.parent),
                            env={**os.environ, "SYNCD_CUTOVER_HOLD_AT": "frozen", "TMPDIR": str(tmp)})
    try:
        assert proc.stdout.readline().strip() == "holding at frozen"
        assert {"app_rehearsal", "syncd_rehearsal"} <= await schemas(pg_dsn)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [p.name for p in tmp.glob("syncd-rehearsal-*/copy.db")]  # its copy of the data, left behind
    out = run_cli(cfg, "rehearse", timeout=300, env={"TMPDIR": str(tmp)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert await schemas(pg_dsn) == before_schemas
    assert list(tmp.iterdir()) == []  # the copy the killed rehearsal left is gone with its own
    assert verify(cfg).returncode == 0


async def test_an_interrupted_rehearsal_removes_what_it_made_and_says_so(app_db, make_config, pg_dsn, tmp_path):
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    before_file, before_schemas = sqlite_state(app_db), await schemas(pg_dsn)
    proc = subprocess.Popen(syncd_cmd(cfg, "rehearse"), stdout=subprocess.PIPE, text=True, cwd=str(cfg.parent),
                            env={**os.environ, "SYNCD_CUTOVER_HOLD_AT": "frozen"})
    try:
        assert proc.stdout.readline().strip() == "holding at frozen"
        assert {"app_rehearsal", "syncd_rehearsal"} <= await schemas(pg_dsn)
        proc.send_signal(signal.SIGINT)  # Ctrl-C in the middle of the copy's cutover
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "syncd rehearse: interrupted" in out, out
    assert "what the rehearsal had made is removed" in out, out
    assert await schemas(pg_dsn) == before_schemas
    assert sqlite_state(app_db) == before_file
    assert verify(cfg).returncode == 0
    assert not report_item(cfg)["ok"]  # an interrupted rehearsal tested nothing


async def test_a_table_created_after_the_rehearsal_was_not_rehearsed(app_db, make_config, pg_dsn, tmp_path):
    """A rehearsal is evidence for the tables its copy held: a table the application
    created since (replicated and verified like the others) has never been through a
    cutover and a rollback, so the item fails for it, named, until `syncd rehearse` again."""
    conn = sqlite3.connect(app_db)
    conn.executescript("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);"
                       "INSERT INTO customers VALUES (1, 'ada'), (2, 'grace');")
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    out = run_cli(cfg, "rehearse", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert report_item(cfg)["ok"]

    conn = sqlite3.connect(app_db)
    conn.executescript("CREATE TABLE invoices (id INTEGER PRIMARY KEY, customer INTEGER, total REAL);"
                       "INSERT INTO invoices VALUES (1, 1, 9.5), (2, 2, 20.25);")
    conn.close()
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    assert verify(cfg).returncode == 0
    item = report_item(cfg)
    assert not item["ok"], item
    assert any(p.startswith("app: the last rehearsal") and '"invoices"' in p and "syncd rehearse" in p
               for p in item["problems"]), item

    out = run_cli(cfg, "rehearse", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert report_item(cfg)["ok"]


async def test_a_table_whose_definition_changed_after_the_rehearsal_was_not_rehearsed(app_db, make_config, pg_dsn,
                                                                                       tmp_path):
    """Nor is a table the application altered since (a column added): the cutover and the
    rollback of its new definition were never tried."""
    conn = sqlite3.connect(app_db)
    conn.executescript("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);"
                       "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);"
                       "INSERT INTO customers VALUES (1, 'ada'), (2, 'grace'); INSERT INTO notes VALUES (1, 'x');")
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    out = run_cli(cfg, "rehearse", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr

    conn = sqlite3.connect(app_db)
    conn.executescript("ALTER TABLE customers ADD COLUMN joined DATETIME;"
                       "UPDATE customers SET joined = '2026-12-01 10:00:00';")
    conn.close()
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    assert verify(cfg).returncode == 0
    item = report_item(cfg)
    assert not item["ok"], item
    problem = next(p for p in item["problems"] if p.startswith("app: the last rehearsal"))
    assert 'table "customers"' in problem and '"notes"' not in problem and "syncd rehearse" in problem, problem

    out = run_cli(cfg, "rehearse", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert report_item(cfg)["ok"]


async def test_a_rehearsal_of_another_file_is_not_one_of_this_source(app_db, make_config, pg_dsn, tmp_path):
    """The source once named a staging copy (same tables, other rows) and was rehearsed
    then; it names the live file now. What was cut over and rolled back was the copy: the
    item fails, naming both files, until the live one is rehearsed."""
    staging = tmp_path / "staging.db"
    for path, rows in ((staging, "(1, 'test')"), (app_db, "(1, 'ada'), (2, 'grace'), (3, 'linus')")):
        conn = sqlite3.connect(path)
        conn.executescript(f"CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);"
                           f"INSERT INTO customers VALUES {rows};")
        conn.close()
    cfg = make_config([{"name": "app", "path": str(staging)}])
    await sync_and_stop(cfg, staging, pg_dsn, tmp_path / "syncd.log")
    out = run_cli(cfg, "rehearse", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert report_item(cfg)["ok"]

    cfg = make_config([{"name": "app", "path": str(app_db)}])
    item = report_item(cfg)
    assert not item["ok"], item
    problem = next(p for p in item["problems"] if p.startswith("app: the last rehearsal"))
    assert f"copied another file ({staging}), not {app_db}" in problem and "syncd rehearse" in problem, problem


async def test_a_bookkeeping_schema_too_long_for_the_rehearsals_own_is_said(app_db, make_config, pg_dsn, tmp_path):
    """The rehearsal keeps its bookkeeping in [postgres] bookkeeping_schema + "_rehearsal":
    a bookkeeping schema a few bytes short of Postgres's 63 makes that name too long. The
    rehearsal fails with one line saying so, not a traceback, and makes nothing."""
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"postgres": {"bookkeeping_schema": "b" * 60}})
    before_schemas = await schemas(pg_dsn)
    out = run_cli(cfg, "rehearse", timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert f'"{"b" * 60}_rehearsal" is longer than' in out.stdout, out.stdout + out.stderr
    assert await schemas(pg_dsn) - before_schemas <= {"b" * 60}  # syncd's own bookkeeping, nothing of the rehearsal's
