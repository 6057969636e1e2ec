"""syncd fills only Postgres tables it created itself.

A Postgres table (or view, index, ...) that already has the name of a SQLite table is
someone else's: syncd refuses that one table, naming the object, and never empties,
reshapes or writes it; the other tables replicate. A source cannot replicate into
syncd's own bookkeeping schema, and two sources sharing a schema cannot take each
other's tables.
"""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg

from tests.conftest import write_config
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import pg_rows, table_states, wait_caught_up


def _app(path, tables=("items", "good")) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=wal")
    for t in tables:
        conn.execute(f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany(f"INSERT INTO {t} VALUES (?, ?)", [(i, f"{t}-{i}") for i in range(1, 6)])
    conn.commit()
    conn.close()


def test_a_source_cannot_replicate_into_the_bookkeeping_schema(tmp_path, pg_dsn):
    db = tmp_path / "app.db"
    _app(db)
    for source in ({"name": "syncd", "path": str(db)}, {"name": "app", "path": str(db), "schema": "syncd"},
                   {"name": "app", "path": str(db), "schema": "pg_catalog"},
                   # where `syncd rehearse` keeps its bookkeeping, dropped after each rehearsal with all it holds
                   {"name": "syncd_rehearsal", "path": str(db)}):
        cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [source])
        r = run_cli(cfg, "init")
        assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
        assert len(r.stderr.splitlines()) == 1 and "sources[0].schema" in r.stderr, r.stderr


async def test_an_existing_table_syncd_did_not_create_is_refused_and_left_alone(tmp_path, pg_dsn):
    db = tmp_path / "app.db"
    _app(db)
    pg = await asyncpg.connect(pg_dsn)
    try:
        await pg.execute("CREATE SCHEMA app; CREATE TABLE app.items (id int PRIMARY KEY, theirs text NOT NULL, "
                         "n numeric); INSERT INTO app.items VALUES (1, 'keep me', 1.5), (2, 'and me', NULL);"
                         "CREATE VIEW app.good AS SELECT 1 AS x")
    finally:
        await pg.close()
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn,
                       [{"name": "app", "path": str(db)}, {"name": "other", "path": str(tmp_path / "o.db")}])
    _app(tmp_path / "o.db", ("fine",))
    r = run_cli(cfg, "init")
    assert r.returncode == 1, r.stdout + r.stderr  # tables not carried
    assert 'refused "items": a Postgres table "app"."items" already exists and syncd did not create it' in r.stdout, r.stdout
    assert 'refused "good": a Postgres view "app"."good" already exists' in r.stdout

    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(tmp_path / "o.db", pg_dsn, "other", daemon=d)
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    # untouched: rows, columns and types as their owner left them
    assert await pg_rows(pg_dsn, "SELECT * FROM app.items ORDER BY id") == [(1, "keep me", 1.5), (2, "and me", None)]
    cols = await pg_rows(pg_dsn, "SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_schema = 'app' AND table_name = 'items' ORDER BY ordinal_position")
    assert cols == [("id", "integer"), ("theirs", "text"), ("n", "numeric")]
    assert await pg_rows(pg_dsn, "SELECT * FROM app.good") == [(1,)]
    states = await table_states(pg_dsn, "app")
    assert states["items"][0] == "refused" and '"app"."items"' in states["items"][1]
    assert await compare_table(str(tmp_path / "o.db"), pg_dsn, "other", "fine") == []
    r = run_cli(cfg, "status")
    assert 'table "items" not replicated: a Postgres table "app"."items" already exists' in r.stdout

    # Once its owner removes it, syncd creates its own table and replicates it.
    pg = await asyncpg.connect(pg_dsn)
    try:
        await pg.execute("DROP TABLE app.items; DROP VIEW app.good")
    finally:
        await pg.close()
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, settled=("streaming",))
        assert d.stop() == 0
    for t in ("items", "good"):
        assert await compare_table(str(db), pg_dsn, "app", t) == []


async def test_two_sources_in_one_schema_do_not_take_each_others_tables(tmp_path, pg_dsn):
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    _app(a, ("items",))
    _app(b, ("items", "own"))
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "a", "path": str(a), "schema": "shared"},
                                                          {"name": "b", "path": str(b), "schema": "shared"}])
    r = run_cli(cfg, "init")
    assert r.returncode == 1, r.stdout + r.stderr  # a table not carried
    assert ('refused "items": the Postgres table "shared"."items" is the replica of source \'a\', which '
            "replicates into the same schema") in r.stdout
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(a, pg_dsn, "a", daemon=d)
        await wait_caught_up(b, pg_dsn, "b", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(a), pg_dsn, "shared", "items") == []
    assert await compare_table(str(b), pg_dsn, "shared", "own") == []


async def test_an_upgraded_install_keeps_the_tables_it_already_replicates(tmp_path, pg_dsn):
    db = tmp_path / "app.db"
    _app(db)
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, settled=("streaming",))
        assert d.stop() == 0
    # What an older syncd left: no record of the tables it created.
    pg = await asyncpg.connect(pg_dsn)
    try:
        await pg.execute("DROP TABLE syncd.owned_tables; UPDATE syncd.meta SET value = '1' WHERE key = 'version'")
    finally:
        await pg.close()
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO items VALUES (100, 'after the upgrade')")
    conn.commit()
    conn.close()
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, settled=("streaming",))
        assert d.stop() == 0
        assert "refused" not in d.log()
    assert await compare_table(str(db), pg_dsn, "app", "items") == []
    assert sorted(await pg_rows(pg_dsn, "SELECT schema_name, table_name, source FROM syncd.owned_tables")) == \
        [("app", "good", "app"), ("app", "items", "app")]


async def test_a_schema_another_session_creates_meanwhile_is_taken_as_there(tmp_path, pg_dsn):
    """Two sources sharing a schema start at once (the daemon's first start): one's CREATE
    SCHEMA IF NOT EXISTS meets the other's, not committed yet, and Postgres answers with a
    duplicate key, not "already exists". The schema is there: init goes on, no traceback."""
    import asyncio
    import subprocess

    from tests.support.daemon import syncd_cmd

    _app(tmp_path / "app.db", tables=("items",))
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(tmp_path / "app.db"),
                                                          "schema": "shared"}])
    other = await asyncpg.connect(pg_dsn)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute('CREATE SCHEMA "shared"')  # the other source's, in flight
        proc = subprocess.Popen(syncd_cmd(cfg, "init"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=str(tmp_path))
        waited = False
        for _ in range(300):  # until init waits on the schema's name (on this transaction)
            if await other.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted "
                                    "AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"):
                waited = True
                break
            assert proc.poll() is None, proc.communicate()
            await asyncio.sleep(0.1)
        await tx.commit()
        assert waited, "init never waited on the schema in flight: the two CREATE SCHEMAs did not meet"
        out, err = proc.communicate(timeout=60)
    finally:
        await other.close()
    assert proc.returncode == 0 and "Traceback" not in out + err, out + err
    assert "capture installed on 1 table(s)" in out, out


async def test_an_index_name_another_source_of_the_schema_holds_is_said_so(tmp_path, pg_dsn):
    """SQLite index names are each file's own: two files replicated into one schema may both
    have an `idx_v`. Postgres holds one; the other source's is not created, and the reason
    names the source whose index holds the name, not "an object syncd did not create"."""
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    _app(a, ("users",))
    _app(b, ("orders",))
    for path, table in ((a, "users"), (b, "orders")):
        conn = sqlite3.connect(path)
        conn.execute(f"CREATE INDEX idx_v ON {table} (v)")
        conn.commit()
        conn.close()
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "a", "path": str(a), "schema": "shared"},
                                                          {"name": "b", "path": str(b), "schema": "shared"}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(a, pg_dsn, "a", daemon=d)
        await wait_caught_up(b, pg_dsn, "b", daemon=d)
        for _ in range(300):
            if "not created:" in d.log():
                break
            await asyncio.sleep(0.1)
        assert d.stop() == 0
        log = d.log()
    line = next((ln for ln in log.splitlines() if "not created:" in ln), None)
    assert line is not None, log[-3000:]
    holder = "a" if "source=b " in line else "b"
    assert f'the name "idx_v" is taken in Postgres by source {holder}\'s index' in line, line
    assert "did not create" not in log, log[-3000:]
