"""The command line: init is idempotent, schema touches nothing, uninstall cleans up."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import time

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import pg_rows, wait_caught_up


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT);
        CREATE TABLE b (k TEXT PRIMARY KEY, n INTEGER);
        INSERT INTO a VALUES (1, 'x'), (2, 'y');
        INSERT INTO b VALUES ('k', 1);
    """)
    conn.commit()
    conn.close()


def sqlite_objects(db) -> set[tuple[str, str]]:
    conn = sqlite3.connect(db)
    try:
        return set(conn.execute("SELECT type, name FROM sqlite_master"))
    finally:
        conn.close()


def test_version_and_help(tmp_path):
    r = run_cli(tmp_path / "x.toml", "--version")
    assert r.returncode == 0 and r.stdout.startswith("syncd ")
    # --version answers without loading the configuration or any command (they cost a second)
    probe = ("import sys; from syncd.cli import VERBS, main; main(['--version']); "
             "print(sorted(m for m in sys.modules if m in {'syncd.config', *('syncd.cli.' + v for v in VERBS)}))")
    r = subprocess.run([sys.executable, "-c", probe],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.splitlines() == [r.stdout.splitlines()[0], "[]"], r.stdout + r.stderr
    r = run_cli(tmp_path / "x.toml", "--help")
    for verb in ("init", "run", "schema", "uninstall", "status", "verify"):
        assert verb in r.stdout


async def test_init_and_the_daemon_on_a_schema_without_expressions_skip_the_sql_translator(app_db, make_config,
                                                                                            pg_dsn):
    """Reading and translating SQLite expressions (a CHECK, an expression or partial
    index, a view) is loaded where a schema has one: `syncd init` and the daemon's start
    on a schema without any do not pay for its import (a load waits on both)."""
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    translator = "{'syncd.parity.expressions', 'syncd.parity.translate'}"
    probe = (f"import sys; from syncd.cli import main; rc = main(['--config', {str(cfg)!r}, 'init']); "
             "import syncd.cli.run; "
             f"print(rc, sorted(m for m in sys.modules if m in {translator}))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "0 []", r.stdout + r.stderr
    assert await pg_rows(pg_dsn, "SELECT count(*) FROM app.a") == [(0,)]  # initialized: created, not loaded

    # A CHECK is read and translated as ever (carried to Postgres as a constraint at cutover).
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE c (id INTEGER PRIMARY KEY, n INTEGER CHECK (n > 0))")
    conn.commit()
    conn.close()
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == \
        "0 ['syncd.parity.expressions', 'syncd.parity.translate']", r.stdout + r.stderr
    r = run_cli(cfg, "schema")
    assert r.returncode == 0 and "CHECK" in r.stdout and "n > 0" in r.stdout, r.stdout + r.stderr


async def test_init_on_a_schema_with_plain_indexes_skips_the_sql_translator(app_db, make_config, pg_dsn):
    """Plain indexes (columns named, no expression, no WHERE) and UNIQUE constraints are
    carried to Postgres without reading any SQL expression: `syncd init` on such a schema,
    the common one, does without the translator's import as well."""
    make_app(app_db)
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE INDEX a_v ON a (v);
        CREATE UNIQUE INDEX a_v_id ON a (v DESC, id);
        CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT UNIQUE, code TEXT COLLATE NOCASE, UNIQUE (code, id));
    """)
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    translator = "{'syncd.parity.expressions', 'syncd.parity.translate'}"
    probe = (f"import sys; from syncd.cli import main; rc = main(['--config', {str(cfg)!r}, 'init']); "
             f"print(rc, sorted(m for m in sys.modules if m in {translator}))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "0 []", r.stdout + r.stderr
    r = run_cli(cfg, "schema")  # planned as ever
    assert 'CREATE INDEX "a_v" ON "app"."a" ("v");' in r.stdout and 'UNIQUE ("email")' in r.stdout, r.stdout


async def test_schema_touches_nothing(app_db, make_config, pg_dsn):
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    before = digest(app_db)
    r = run_cli(cfg, "schema")
    assert r.returncode == 0, r.stderr
    assert 'CREATE TABLE IF NOT EXISTS "app"."a"' in r.stdout and '"k" text' in r.stdout
    assert digest(app_db) == before
    assert not any(n.startswith("_syncd") for _, n in sqlite_objects(app_db))
    pg = await asyncpg.connect(pg_dsn)
    try:
        assert await pg.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname IN ('app', 'syncd')") == 0
    finally:
        await pg.close()


async def test_init_is_idempotent(app_db, make_config, pg_dsn):
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    first = run_cli(cfg, "init")
    assert first.returncode == 0, first.stderr
    objects = sqlite_objects(app_db)
    assert ("trigger", "_syncd_t1_ins") in objects and ("table", "_syncd_changelog") in objects

    async def pg_state():
        pg = await asyncpg.connect(pg_dsn)
        try:
            tables = await pg.fetch("SELECT table_name, state, tid FROM syncd.tables ORDER BY 1")
            cols = await pg.fetch("SELECT table_name, column_name, data_type FROM information_schema.columns "
                                  "WHERE table_schema = 'app' ORDER BY 1, 2")
            return [tuple(r) for r in tables], [tuple(r) for r in cols]
        finally:
            await pg.close()

    state = await pg_state()
    assert [t[:2] for t in state[0]] == [("a", "pending"), ("b", "pending")]
    # "pending" is the tables' state, not changes waiting: the line says what comes next
    assert "capture installed on 2 table(s) (wal journal): 2 pending (not loaded yet: `syncd run` loads them)" \
        in first.stdout, first.stdout
    second = run_cli(cfg, "init")
    assert second.returncode == 0
    assert second.stdout == first.stdout
    assert sqlite_objects(app_db) == objects
    assert await pg_state() == state


def test_init_reports_a_missing_file_and_an_unreachable_postgres(tmp_path):
    from tests.conftest import write_config
    from tests.support.pgcluster import free_port

    cfg = write_config(tmp_path / "syncd.toml", "postgresql://syncd:hunter2@127.0.0.1:1/db",
                       [{"name": "gone", "path": str(tmp_path / "gone.db")}])
    r = run_cli(cfg, "init")
    assert r.returncode == 1
    assert f"gone: ERROR SQLite file {tmp_path / 'gone.db'} does not exist" in r.stdout
    assert not (tmp_path / "gone.db").exists()  # never created by syncd
    (tmp_path / "adir.db").mkdir()
    cfg = write_config(tmp_path / "dir.toml", "postgresql://syncd:hunter2@127.0.0.1:1/db",
                       [{"name": "adir", "path": str(tmp_path / "adir.db")}])
    r = run_cli(cfg, "init")
    assert r.returncode == 1
    assert f"adir: ERROR SQLite file {tmp_path / 'adir.db'} is a directory, not a file" in r.stdout, r.stdout
    db = tmp_path / "here.db"
    make_app(db)
    cfg = write_config(tmp_path / "syncd2.toml", f"postgresql://syncd:hunter2@127.0.0.1:{free_port()}/db",
                       [{"name": "here", "path": str(db)}])
    r = run_cli(cfg, "init")
    assert r.returncode == 1
    assert "here: ERROR cannot connect to postgresql://syncd:***@127.0.0.1" in r.stdout
    assert "hunter2" not in r.stdout + r.stderr


def test_init_of_several_sources_waits_for_a_postgres_that_does_not_answer_once(tmp_path, outage):
    """Postgres drops every packet: `syncd init` of four sources waits [postgres]
    connect_timeout_seconds once and names each source as not set up, in a line of its
    own; it waited the whole timeout again for each source."""
    from tests.conftest import write_config

    proxy, dsn = outage
    sources = []
    for name in ("a", "b", "c", "d"):
        make_app(tmp_path / f"{name}.db")
        sources.append({"name": name, "path": str(tmp_path / f"{name}.db")})
    cfg = write_config(tmp_path / "syncd.toml", dsn, sources, sections={"postgres": {"connect_timeout_seconds": 1}})
    proxy.stall()
    started = time.monotonic()
    r = run_cli(cfg, "init")
    took = time.monotonic() - started
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    for name in ("a", "b", "c", "d"):
        [line] = [x for x in r.stdout.splitlines() if x.startswith(f"{name}: ERROR cannot connect to")]
        assert line.endswith("timed out"), line
    assert took < 3.2, f"init took {took:.1f} s"  # one timeout and the command's own start


async def test_uninstall_removes_capture_and_keeps_app_tables(app_db, make_config, pg_dsn, tmp_path):
    make_app(app_db)
    with sqlite3.connect(app_db) as conn:
        conn.execute("CREATE UNIQUE INDEX a_v ON a (v)")
    original = sqlite_objects(app_db)
    lookup = "SELECT count(*) FROM pg_indexes WHERE schemaname = 'app' AND starts_with(indexname, '_syncd_uq_')"
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert (await pg_rows(pg_dsn, lookup))[0][0] >= 1  # syncd's REPLACE lookup index for a_v
        r = run_cli(cfg, "uninstall")
        assert r.returncode == 1 and "already being run by syncd" in r.stdout  # refuses while the daemon runs
        assert d.stop() == 0
    conn = sqlite3.connect(app_db)
    conn.execute("INSERT INTO a VALUES (3, 'unapplied')")
    conn.commit()
    r = run_cli(cfg, "uninstall")
    assert r.returncode == 1 and "1 captured change(s) are not yet applied" in r.stdout
    r = run_cli(cfg, "uninstall", "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "removed 8 trigger(s)" in r.stdout  # insert, update, key change, delete per table
    assert sqlite_objects(app_db) == original
    assert conn.execute("SELECT count(*) FROM a").fetchone()[0] == 3
    assert (await pg_rows(pg_dsn, lookup))[0][0] == 0  # nothing streams from the file any more
    assert await pg_rows(pg_dsn, "SELECT count(*) FROM app.a") == [(2,)]  # the replica stays
    r = run_cli(cfg, "uninstall")
    assert r.returncode == 0 and "nothing to do" in r.stdout
    # Installed again: writes went unrecorded meanwhile, so the dual-write period starts
    # over (the report's "running at least N days" counted it from the first start).
    await pg_rows(pg_dsn, "UPDATE syncd.sources SET streaming_since = now() - interval '20 days'")
    with DaemonProcess(cfg, tmp_path / "again.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    [(since,)] = await pg_rows(pg_dsn, "SELECT now() - streaming_since < interval '1 hour' FROM syncd.sources")
    assert since is True


async def test_init_audits_values_before_anything_is_loaded(app_db, make_config, pg_dsn):
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE companies (rank INTEGER PRIMARY KEY, name TEXT, employees INTEGER);
        INSERT INTO companies VALUES (1, 'a', 10), (777777, 'b', 'lots of people'), (3, 'c', 'many');
    """)
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    r = run_cli(cfg, "init")
    assert r.returncode == 1, r.stdout + r.stderr  # a table not carried: the summary printed, exit 1
    assert r.stdout.splitlines()[-1] == "1 table(s) held, paused or refused (above): not replicated until fixed"
    line = next(l for l in r.stdout.splitlines() if l.strip().startswith('held "companies"'))
    assert 'table "companies" column "employees": 2 value(s) do not fit bigint' in line
    assert "keys: 3, 777777" in line and "text 'many' does not fit bigint" in line
    pg = await asyncpg.connect(pg_dsn)
    try:
        assert await pg.fetchval("SELECT count(*) FROM app.companies") == 0  # nothing loaded halfway
        assert await pg.fetchval("SELECT state FROM syncd.tables WHERE table_name = 'companies'") == "held"
    finally:
        await pg.close()


def test_schema_names_the_values_that_would_hold_a_table(app_db, make_config):
    """`syncd schema` previews what `syncd init` would do: a column whose values do not
    fit the type shown is named with the table it holds, where before the preview showed
    `bigint` and nothing else, and init then held the table."""
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE companies (id INTEGER PRIMARY KEY, employees INTEGER);
        INSERT INTO companies VALUES (1, 5), (2, 'lots');
        CREATE TABLE fine (id INTEGER PRIMARY KEY, n INTEGER);
        INSERT INTO fine VALUES (1, 5);
    """)
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    r = run_cli(cfg, "schema")
    assert r.returncode == 0, r.stdout + r.stderr
    held = [line for line in r.stdout.splitlines() if line.startswith("-- HELD")]
    assert len(held) == 1 and 'table "companies" column "employees"' in held[0] and "'lots'" in held[0] \
        and "keys: 2" in held[0], r.stdout
    assert "held" in run_cli(cfg, "init").stdout


def test_init_exits_1_when_a_table_is_refused_and_0_once_none_is(tmp_path, make_config):
    """`syncd init && systemctl start syncd`: a table syncd will not carry (refused here:
    its name starts with _syncd_) makes init exit 1, its summary still printed with the
    reason, the other tables installed as ever; once the table is gone, exit 0."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE fine (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE _syncd_mine (id INTEGER PRIMARY KEY)")
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(db)}])
    r = run_cli(cfg, "init")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "capture installed on 1 table(s)" in r.stdout and 'refused "_syncd_mine": its name starts with' in r.stdout
    assert r.stdout.splitlines()[-1] == "1 table(s) held, paused or refused (above): not replicated until fixed"
    assert "Traceback" not in r.stdout + r.stderr
    conn.execute("DROP TABLE _syncd_mine")
    conn.commit()
    conn.close()
    r = run_cli(cfg, "init")
    assert r.returncode == 0 and "not replicated until fixed" not in r.stdout, r.stdout + r.stderr


async def test_schema_shows_the_types_postgres_has(app_db, make_config, pg_dsn):
    """A typeless column's type is chosen from the values there at the first load and
    kept: `syncd schema` shows the type Postgres has, not one chosen from today's values."""
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE kv (k PRIMARY KEY, v)")
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    r = run_cli(cfg, "schema")
    assert "-- no table in Postgres yet: types as syncd would create them" in r.stdout, r.stdout
    assert run_cli(cfg, "init").returncode == 0
    conn.executemany("INSERT INTO kv VALUES (?, ?)", [(1, 42), (2, 7)])
    conn.commit()
    conn.close()
    r = run_cli(cfg, "schema")
    assert "-- types as the tables already in Postgres have them" in r.stdout, r.stdout
    assert "--   v: text <- type kept from the existing Postgres column" in r.stdout, r.stdout
    pg = await asyncpg.connect(pg_dsn)
    try:
        assert await pg.fetchval("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                                 "WHERE attrelid = 'app.kv'::regclass AND attname = 'v'") == "text"
    finally:
        await pg.close()


def run_while_locked(cfg, db, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """`syncd ARGS` while the application holds `db` locked (rollback-journal mode, BEGIN
    EXCLUSIVE: no reader gets in), and how long it took."""
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA journal_mode = delete")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        r = run_cli(cfg, *args)
        return r, time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_uninstall_on_a_file_its_application_holds_locked_says_so(app_db, make_config, pg_dsn, tmp_path):
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"sqlite": {"read_busy_timeout_ms": 200}})
    assert run_cli(cfg, "init").returncode == 0
    r, _ = run_while_locked(cfg, app_db, "uninstall")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"app: ERROR {app_db} is locked by another connection" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    assert "removed" in run_cli(cfg, "uninstall").stdout  # once free, it goes through


async def test_schema_on_a_file_its_application_holds_locked_waits_read_busy_timeout_ms(app_db, make_config, pg_dsn):
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"sqlite": {"read_busy_timeout_ms": 200}})
    r, took = run_while_locked(cfg, app_db, "schema")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"-- source app: ERROR cannot read {app_db}: database is locked" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    assert took < 4, f"{took:.1f} s"  # a wait of 0.2 s where Python's default 5 s was waited before
    assert run_cli(cfg, "schema").returncode == 0  # once free, it reads


async def test_init_on_a_file_its_application_holds_locked_says_so(app_db, make_config, pg_dsn):
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"sqlite": {"read_busy_timeout_ms": 200}})
    r, _ = run_while_locked(cfg, app_db, "init")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"app: ERROR {app_db} is locked by another connection" in r.stdout, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert run_cli(cfg, "init").returncode == 0  # once free, it goes through


def test_an_sqlite_older_than_syncd_needs_is_said_in_one_line(tmp_path):
    """An SQLite before 3.37 ignores PRAGMA table_list without an error: syncd would see no
    table and carry none. Every command ends with one line naming the SQLite it found."""
    from syncd.cli import sqlite_too_old

    assert sqlite_too_old(sqlite3.sqlite_version_info) is None
    said = sqlite_too_old((3, 34, 1))
    assert said is not None and "SQLite 3.34.1" in said and "3.37.0 or newer" in said
    run = subprocess.run([sys.executable, "-c", "import sys, syncd.cli as c; c.sqlite_version_info = lambda: (3, 34, 1); "
                          "sys.exit(c.main(['--config', sys.argv[1], 'status']))", str(tmp_path / "none.toml")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [f"syncd: {said}"], run.stderr
