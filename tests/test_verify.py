"""`syncd verify`: an exact replica passes, every kind of real difference is reported by
key and column, tables that are not streaming count as differences, failures are one
line with exit 2, and every run is kept in syncd.verify_runs."""

from __future__ import annotations

import sqlite3

import pytest
from prometheus_client import REGISTRY

from syncd.config import load_settings
from syncd.verify import Difference, SourceVerifyResult, TableVerifyResult, exit_code, publish_metrics, verify_source
from syncd.verify.table import TableCheck
from tests.support.app import create_items
from tests.support.daemon import DaemonProcess
from tests.support.verifying import (
    found, pg_execute, pg_fetch, sync_and_stop, tables, verify, verify_json, verify_section,
)
from tests.test_kill9 import wait_loading

SCHEMA = """
CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT, n INTEGER, r REAL, b BLOB, u);
CREATE TABLE textkey (k TEXT PRIMARY KEY, v INTEGER);
CREATE TABLE nocase (k TEXT PRIMARY KEY COLLATE NOCASE, v INTEGER);
CREATE TABLE composite (a INTEGER, b TEXT, v TEXT, PRIMARY KEY (a, b));
CREATE TABLE blobkey (k BLOB PRIMARY KEY, v REAL) WITHOUT ROWID;
"""
COMPARED = ["blobkey", "composite", "items", "nocase", "textkey"]

TEXTS = [None, "NULL", "", "é", "quote ' \" back\\slash", "new\nline", "漢字 🚀"]
INTS = [0, 2**63 - 1, -(2**63), None, 7]
REALS = [0.0, -0.0, 1e308, 5e-324, 0.1, float("inf"), None]
BLOBS = [b"", None, b"\x00\xff", bytes(range(256))]
UNTYPED = [-0.0, 0.0, 1.5, 2.5]  # no declared type: -0.0 stays -0.0


def seed(db) -> None:
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA)
    conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", [
        (i, TEXTS[i % len(TEXTS)], INTS[i % len(INTS)], REALS[i % len(REALS)], BLOBS[i % len(BLOBS)],
         UNTYPED[i % len(UNTYPED)]) for i in range(1, 201)])
    conn.executemany("INSERT INTO textkey VALUES (?, ?)", [(f"key-{i}", i) for i in range(100)] + [("é", 1), ("", 2)])
    conn.executemany("INSERT INTO nocase VALUES (?, ?)", [("abc", 1), ("Abd", 2), ("ABE", 3), ("b", 4)])
    conn.executemany("INSERT INTO composite VALUES (?, ?, ?)", [(i % 3, f"b{i}", f"v{i}") for i in range(60)])
    conn.executemany("INSERT INTO blobkey VALUES (?, ?)", [(bytes([i]), i / 7) for i in range(50)])
    conn.commit()
    conn.close()


@pytest.fixture
async def synced(app_db, make_config, pg_dsn, tmp_path):
    seed(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    return cfg


async def test_exact_replica_is_equal(synced, app_db, pg_dsn):
    out = verify(synced)
    assert out.returncode == 0, out.stdout + out.stderr
    for t in COMPARED:
        assert f'app: "{t}" equal' in out.stdout
    assert "app: 5 of 5 table(s) equal" in out.stdout

    rc, doc = verify_json(synced)
    assert rc == 0 and doc["exit_code"] == 0
    got = tables(doc)
    assert sorted(got) == COMPARED
    assert got["items"]["rows_sqlite"] == got["items"]["rows_postgres"] == 200
    assert got["textkey"]["rows_sqlite"] == 102
    assert all(t["equal"] and t["compared"] and t["state"] == "streaming" for t in got.values())


async def test_every_kind_of_difference_is_reported_by_key_and_column(synced, pg_dsn):
    await pg_execute(pg_dsn, """
        UPDATE app.items SET v = 'NULL' WHERE id = 7;         -- SQLite has NULL
        UPDATE app.items SET u = 0.0 WHERE id = 24;           -- SQLite has -0.0
        UPDATE app.items SET n = n - 1 WHERE id = 6;          -- 2^63-1 becomes 2^63-2
        UPDATE app.items SET v = 'e' || chr(769) WHERE id = 24; -- 'é' decomposed
        UPDATE app.items SET b = NULL WHERE id = 24;          -- SQLite has an empty blob
        UPDATE app.items SET r = 0.30000000000000004 WHERE id = 5;
        DELETE FROM app.items WHERE id = 100;
        INSERT INTO app.items (id, v) VALUES (1000, 'extra');
        UPDATE app.textkey SET v = -3 WHERE k = 'key-3';
        DELETE FROM app.nocase WHERE k = 'Abd';
        INSERT INTO app.nocase VALUES ('ABD', 2);             -- same key for SQLite's NOCASE, not for Postgres
        UPDATE app.composite SET v = NULL WHERE a = 1 AND b = 'b1';
        UPDATE app.blobkey SET v = -v WHERE k = '\\x05';
    """)
    rc, doc = verify_json(synced, "--wait", "2")
    assert rc == 1
    assert found(doc, "items") == {
        ("different", (7,), ("v",)),
        ("different", (24,), ("v", "b", "u")),
        ("different", (6,), ("n",)),
        ("different", (5,), ("r",)),
        ("missing", (100,), ()),
        ("extra", (1000,), ()),
    }
    assert found(doc, "textkey") == {("different", ("key-3",), ("v",))}
    assert found(doc, "nocase") == {("missing", ("Abd",), ()), ("extra", ("ABD",), ())}
    assert found(doc, "composite") == {("different", (1, "b1"), ("v",))}
    assert found(doc, "blobkey") == {("different", (b"\x05",), ("v",))}
    items = tables(doc)["items"]
    assert (items["missing"], items["extra"], items["different"], items["pending"]) == (1, 1, 4, 0)

    out = verify(synced, "--wait", "2")
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert 'app: "items" missing in Postgres: key 100' in lines
    assert 'app: "items" extra in Postgres: key 1000' in lines
    assert 'app: "items" different: key 24: columns "v", "b", "u"' in lines
    assert 'app: "composite" different: key (1, \'b1\'): column "v"' in lines
    assert any(line.startswith('app: "items" DIFFERS (200 rows in SQLite, 200 in Postgres') for line in lines)


async def test_tables_not_streaming_count_as_differences(app_db, make_config, pg_dsn, tmp_path):
    seed(app_db)
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE keyless (rowid INTEGER, oid TEXT, _rowid_ TEXT);  -- no key, and its rowid hidden
        INSERT INTO keyless VALUES (1, 'x', 'y');
        CREATE TABLE flags (id INTEGER PRIMARY KEY, ok BOOLEAN);
        INSERT INTO flags VALUES (1, 0), (2, 1), (3, 2);
    """)
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    conn.execute("CREATE TABLE later (id INTEGER PRIMARY KEY)")  # the daemon has not seen it
    conn.commit()

    rc, doc = verify_json(cfg)
    assert rc == 1
    got = tables(doc)
    assert got["keyless"]["state"] == "refused" and not got["keyless"]["compared"]
    assert "no primary key" in got["keyless"]["reason"]
    assert got["flags"]["state"] == "held" and not got["flags"]["equal"]
    assert "does not fit boolean" in got["flags"]["reason"]
    assert got["flags"]["rows_sqlite"] == 3
    assert got["later"]["state"] is None and "not registered" in got["later"]["reason"]
    assert all(got[t]["equal"] for t in COMPARED)

    out = verify(cfg, "--table", "flags")
    assert out.returncode == 1
    assert out.stdout.startswith('app: "flags" not comparable (held) (3 rows in SQLite, 0 in Postgres')


async def test_a_table_the_configuration_now_leaves_out_is_named_so(app_db, make_config, pg_dsn, tmp_path):
    """Excluded from its source after it was copied, a table is still in SQLite: verify
    says the configuration leaves it out, with its rows, not that the table is gone."""
    seed(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    cfg = make_config([{"name": "app", "path": str(app_db), "exclude": ["textkey"]}], extra=verify_section())

    rc, doc = verify_json(cfg)
    assert rc == 1
    got = tables(doc)["textkey"]
    assert not got["compared"] and (got["rows_sqlite"], got["rows_postgres"]) == (102, 102)
    assert "no longer exists" not in got["reason"], got["reason"]
    assert "a table the source's include/exclude settings leave out" in got["reason"], got["reason"]


async def test_a_check_of_a_table_the_configuration_now_leaves_out_is_no_consistency_error(app_db, make_config,
                                                                                            pg_dsn, tmp_path):
    """Verified after the table was excluded and before the daemon forgot it: the table is
    named, and no run is recorded for it, which `syncd report` would count as a
    consistency error in the dual-write window for [cutover] min_days."""
    seed(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    cfg = make_config([{"name": "app", "path": str(app_db), "exclude": ["textkey"]}], extra=verify_section())

    out = verify(cfg)
    assert out.returncode == 1 and "include/exclude settings leave out" in out.stdout, out.stdout
    runs = await pg_fetch(pg_dsn, "SELECT table_name, full_check FROM syncd.verify_runs ORDER BY id")
    assert ("textkey", False) not in [tuple(r) for r in runs], runs
    assert ("items", True) in [tuple(r) for r in runs], runs


async def test_a_table_left_out_and_named_is_said_to_be_left_out(app_db, make_config, pg_dsn, tmp_path):
    """`--table` naming a table the source leaves out (excluded, or a view): the file has
    it, and the error says why it is not verified, not that no such table exists."""
    seed(app_db)
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE VIEW textkeys AS SELECT k FROM textkey")
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db), "exclude": ["textkey"]}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    for name, why in (("textkey", "a table the source's include/exclude settings leave out"), ("textkeys", "a view")):
        out = verify(cfg, "--table", name)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "neither in the SQLite file" not in out.stdout, out.stdout
        assert f"app: ERROR table {name!r} of source 'app' is not replicated: {why}" in out.stdout, out.stdout


async def test_failures_are_one_line_without_secrets(app_db, make_config, tmp_path, pg_dsn):
    missing = make_config([{"name": "app", "path": str(tmp_path / "nope.db")}], name="missing.toml")
    out = verify(missing)
    assert out.returncode == 2
    assert out.stdout.strip() == f"app: ERROR SQLite file {tmp_path / 'nope.db'} does not exist"

    seed(app_db)
    toml = (tmp_path / "down.toml")
    toml.write_text(f'[postgres]\ndsn = "postgresql://syncd:s3cret-pw@127.0.0.1:9/x"\nconnect_timeout_seconds = 2\n'
                    f'[metrics]\nlisten = ""\n[[sources]]\nname = "app"\npath = "{app_db}"\n')
    out = verify(toml)
    assert out.returncode == 2
    assert len(out.stdout.strip().splitlines()) == 1
    assert out.stdout.startswith("app: ERROR cannot connect to postgresql://syncd:***@127.0.0.1:9/x")
    assert "s3cret" not in out.stdout + out.stderr

    good = make_config([{"name": "app", "path": str(app_db)}], name="good.toml")
    await sync_and_stop(good, app_db, pg_dsn, tmp_path / "syncd.log")
    out = verify(good, "--table", "nosuch")
    assert out.returncode == 2
    assert "no table 'nosuch' in source 'app'" in out.stdout


def test_a_wait_that_is_no_number_of_seconds_is_refused(make_config, tmp_path):
    """--wait bounds how long in-flight changes are waited for: a negative, infinite or NaN
    value is refused by name (NaN and a negative value gave up at once, reporting changes in
    flight as pending; infinity never gave up on a stopped daemon)."""
    cfg = make_config([{"name": "app", "path": str(tmp_path / "app.db")}])
    for bad in ("nan", "-1", "inf", "soon"):
        out = verify(cfg, "--wait", bad)
        assert out.returncode == 2 and out.stdout == "", (bad, out.stdout, out.stderr)
        assert f"argument --wait: {bad!r} is not a number of seconds" in out.stderr, (bad, out.stderr)
    out = verify(cfg, "--wait", "0")
    assert "argument --wait" not in out.stderr, out.stderr


async def test_every_run_is_kept_per_table(synced, pg_dsn):
    assert verify(synced).returncode == 0
    await pg_execute(pg_dsn, "DELETE FROM app.textkey WHERE k = 'key-7'; UPDATE app.items SET v = 'x' WHERE id = 9")
    assert verify(synced, "--wait", "1").returncode == 1
    runs = await pg_fetch(pg_dsn, "SELECT table_name, rows_sqlite, rows_postgres, missing, extra, different, pending, "
                                  "error, full_check, table_state, detail FROM syncd.verify_runs ORDER BY id")
    assert [r["table_name"] for r in runs] == COMPARED * 2
    first, second = runs[:5], {r["table_name"]: r for r in runs[5:]}
    assert all(r["full_check"] and r["error"] is None and r["missing"] + r["different"] == 0 for r in first)
    assert (second["textkey"]["rows_sqlite"], second["textkey"]["rows_postgres"]) == (102, 101)
    assert second["textkey"]["missing"] == 1 and '"key": ["key-7"]' in second["textkey"]["detail"]
    assert second["items"]["different"] == 1 and second["items"]["table_state"] == "streaming"


async def test_library_call_and_metrics(synced, pg_dsn):
    settings = load_settings(synced)
    await pg_execute(pg_dsn, "UPDATE app.items SET n = 1 WHERE id = 3")
    result = await verify_source(settings, settings.sources[0], ["items", "textkey"], wait_seconds=1)
    assert result.error is None and [t.table for t in result.tables] == ["items", "textkey"]
    items, textkey = result.tables
    assert items.different == 1 and items.differences[0].key == (3,) and items.differences[0].columns == ("n",)
    assert textkey.equal
    publish_metrics(result)
    value = REGISTRY.get_sample_value
    assert value("syncd_consistency_mismatched_rows", {"source": "app", "table": "items"}) == 1
    assert value("syncd_consistency_mismatched_rows", {"source": "app", "table": "textkey"}) == 0
    assert value("syncd_rows", {"source": "app", "table": "items", "side": "postgres"}) == 200
    assert value("syncd_consistency_last_check_timestamp_seconds", {"source": "app", "table": "items"}) == \
        pytest.approx(items.finished_at)


def test_metrics_for_a_table_that_was_not_compared():
    held = TableVerifyResult(source="m", table="held", state="held", rows_sqlite=100, rows_postgres=12,
                             reason="a value does not fit", finished_at=123.0)
    failed = TableVerifyResult(source="m", table="failed", state="streaming", error="SQLite: disk I/O error")
    ok = TableVerifyResult(source="m", table="ok", state="streaming", compared=True, rows_sqlite=5, rows_postgres=5,
                           finished_at=456.0)
    ok.add(Difference("pending", (1,)))
    publish_metrics(SourceVerifyResult(source="m", tables=[held, failed, ok]))
    value = REGISTRY.get_sample_value
    assert value("syncd_consistency_mismatched_rows", {"source": "m", "table": "held"}) == 88
    assert value("syncd_consistency_last_check_timestamp_seconds", {"source": "m", "table": "held"}) is None
    assert value("syncd_consistency_last_check_timestamp_seconds", {"source": "m", "table": "failed"}) is None
    assert value("syncd_consistency_mismatched_rows", {"source": "m", "table": "ok"}) == 1
    assert value("syncd_consistency_last_check_timestamp_seconds", {"source": "m", "table": "ok"}) == 456.0
    assert value("syncd_rows", {"source": "m", "table": "held", "side": "sqlite"}) == 100


async def test_a_check_that_breaks_is_reported_not_raised(synced, monkeypatch):
    """The daemon calls verify_source periodically: one table defeating the check must
    show as that table's error (exit 2), not stop the other tables or the caller."""
    settings = load_settings(synced)
    find = TableCheck.find

    async def broken(self):
        if self.spec.name == "textkey":
            raise ValueError("boom")
        await find(self)

    monkeypatch.setattr(TableCheck, "find", broken)
    result = await verify_source(settings, settings.sources[0], wait_seconds=1, record=False)
    by_name = {t.table: t for t in result.tables}
    assert by_name["textkey"].error == "internal error: ValueError: boom" and not by_name["textkey"].equal
    assert all(by_name[t].equal for t in COMPARED if t != "textkey")
    assert result.error is None and exit_code([result]) == 2


async def test_a_vacuum_while_a_keyless_table_is_checked_is_not_a_difference(app_db, make_config, pg_dsn, tmp_path,
                                                                            monkeypatch):
    """A keyless table is keyed by its rowid, which VACUUM renumbers: a check across a
    VACUUM compares different rows under one key, so it reports nothing but that."""
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE events (kind TEXT, n INTEGER)")
    conn.executemany("INSERT INTO events VALUES (?, ?)", [(f"k{i % 7}", i) for i in range(300)])
    conn.execute("DELETE FROM events WHERE n % 3 = 0")  # gaps for VACUUM to close
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    settings = load_settings(cfg)
    assert (await verify_source(settings, settings.sources[0], wait_seconds=1, record=False)).equal

    find = TableCheck.find

    async def vacuum_first(self):
        conn.execute("VACUUM")
        await find(self)

    monkeypatch.setattr(TableCheck, "find", vacuum_first)
    result = await verify_source(settings, settings.sources[0], wait_seconds=1, record=False)
    events = result.tables[0]
    assert not events.compared and events.mismatched == 0 and events.differences == []
    assert "a VACUUM renumbers its rowids" in events.reason


async def test_a_keyless_table_vacuumed_since_the_daemon_last_ran_is_not_a_difference(app_db, make_config, pg_dsn,
                                                                                     tmp_path):
    """A VACUUM while the daemon is stopped (or before it has noticed) renumbers the rowids
    a keyless table is keyed by: every row is still there, under another rowid, until the
    daemon copies the table again. `syncd verify` says so, records no missing, extra or
    different rows (which `syncd report` would count against the migration), and compares
    the table again once the daemon has followed the file."""
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE events (kind TEXT, n INTEGER)")
    conn.executemany("INSERT INTO events VALUES (?, ?)", [(f"k{i % 7}", i) for i in range(300)])
    conn.execute("DELETE FROM events WHERE n % 3 = 0")  # gaps for VACUUM to close
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    conn.execute("VACUUM")
    conn.close()

    rc, doc = verify_json(cfg, "--wait", "2")
    events = tables(doc)["events"]
    assert rc == 1 and not events["compared"], events
    assert (events["missing"], events["extra"], events["different"], events["differences"]) == (0, 0, 0, []), events
    assert "VACUUM" in events["reason"], events["reason"]
    runs = await pg_fetch(pg_dsn, "SELECT missing, extra, different, full_check FROM syncd.verify_runs "
                                  "WHERE table_name = 'events'")
    assert [tuple(r) for r in runs] == [(0, 0, 0, False)]

    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    out = verify(cfg)
    assert out.returncode == 0 and 'app: "events" equal' in out.stdout, out.stdout + out.stderr


async def test_a_table_named_without_a_source_is_verified_in_the_sources_that_have_it(tmp_path, make_config, pg_dsn):
    from tests.support.daemon import DaemonProcess, run_cli
    from tests.support.sync import wait_caught_up

    dbs = {}
    for name, table in (("shop", "orders"), ("metrics", "samples")):
        dbs[name] = tmp_path / f"{name}.db"
        conn = sqlite3.connect(dbs[name])
        conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute(f"INSERT INTO {table} VALUES (1, 'a')")
        conn.commit()
        conn.close()
    cfg = make_config([{"name": n, "path": str(p)} for n, p in dbs.items()],
                      sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        for name, db in dbs.items():
            await wait_caught_up(db, pg_dsn, name, daemon=d)
        assert d.stop() == 0
    r = run_cli(cfg, "verify", "--table", "orders")
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'shop: "orders" equal' in r.stdout and "metrics" not in r.stdout
    both = run_cli(cfg, "verify", "--table", "orders", "--table", "samples")
    assert both.returncode == 0 and "shop: 1 of 1 table(s) equal" in both.stdout
    assert "metrics: 1 of 1 table(s) equal" in both.stdout
    none = run_cli(cfg, "verify", "--table", "nosuch")
    assert none.returncode == 2 and "no table 'nosuch' in any source" in none.stderr, none.stdout + none.stderr
    one = run_cli(cfg, "verify", "--source", "metrics", "--table", "orders")  # a source named: its own tables only
    assert one.returncode == 2 and "no table 'orders' in source 'metrics'" in one.stdout, one.stdout + one.stderr


async def test_a_load_whose_daemon_was_killed_is_not_said_to_be_in_progress(tmp_path, make_config, pg_dsn):
    """A first load stopped by a kill of its daemon (or a crash): verify said "its initial
    snapshot is in progress" of a load nothing was running, which a user would wait on."""
    db = tmp_path / "app.db"
    create_items(db, table="bulk", rows=200_000)
    cfg = make_config([{"name": "app", "path": str(db)}], extra=verify_section(),
                      sections={"stream": {"snapshot_chunk_rows": 5000}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("syncd running")
        await wait_loading(pg_dsn, "bulk", d)
        d.kill9()
    out = verify(cfg)
    assert out.returncode == 1, out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if '"bulk" not comparable (loading)' in x)
    assert "in progress" not in line, line
    assert "no daemon runs the source" in line, line


async def test_a_table_named_without_a_source_and_left_out_where_it_is_is_said_to_be_left_out(tmp_path, make_config,
                                                                                             pg_dsn):
    from tests.support.daemon import DaemonProcess, run_cli
    from tests.support.sync import wait_caught_up

    dbs = {}
    for name in ("shop", "metrics"):
        dbs[name] = tmp_path / f"{name}.db"
        conn = sqlite3.connect(dbs[name])
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, v TEXT)")
        if name == "shop":
            conn.execute("CREATE TABLE audit (id INTEGER PRIMARY KEY, v TEXT)")
        conn.commit()
        conn.close()
    cfg = make_config([{"name": "shop", "path": str(dbs["shop"]), "exclude": ["audit"]},
                       {"name": "metrics", "path": str(dbs["metrics"])}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        for name, db in dbs.items():
            await wait_caught_up(db, pg_dsn, name, daemon=d)
        assert d.stop() == 0
    out = run_cli(cfg, "verify", "--table", "audit")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "neither in their SQLite files" not in out.stderr, out.stderr
    assert ("table 'audit' of source 'shop' is not replicated: a table the source's include/exclude settings "
            "leave out") in out.stderr, out.stdout + out.stderr


async def test_a_check_postgres_does_not_answer_in_time_says_what_it_waited_for(app_db, make_config, pg_dsn):
    """A session keeps syncd's bookkeeping locked past [postgres] statement_timeout_seconds:
    the check's line says no answer came within that setting, what may hold it and to try
    again, not a bare "Postgres: timed out"."""
    import asyncio

    import asyncpg

    from tests.support.daemon import run_cli

    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"postgres": {"statement_timeout_seconds": 1}})
    assert run_cli(cfg, "init").returncode == 0
    holder = await asyncpg.connect(pg_dsn)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE syncd.sources IN ACCESS EXCLUSIVE MODE")
            out = await asyncio.to_thread(verify, cfg)
    finally:
        await holder.close()
    assert out.returncode == 2, out.stdout + out.stderr
    [line] = out.stdout.splitlines()
    assert line.startswith("app: ERROR Postgres: timed out: a statement got no answer within [postgres] "
                           "statement_timeout_seconds"), line
    assert "try again" in line, line


async def test_a_table_named_in_another_case_of_a_to_z_is_the_files_table(tmp_path, make_config, pg_dsn):
    """SQLite names tables A-Z in any case (ORDERS is orders), as [sources] tables and
    exclude match them: `--table ORDERS` said there was no such table in the file, and
    `syncd resync --table ORDERS` that no such table was replicated."""
    from tests.support.daemon import DaemonProcess, run_cli
    from tests.support.sync import wait_caught_up

    dbs = {}
    for name, tables in (("shop", ("Orders",)), ("metrics", ("samples", "ORDERS"))):
        dbs[name] = tmp_path / f"{name}.db"
        conn = sqlite3.connect(dbs[name])
        for table in tables:
            conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, v TEXT)")
            conn.execute(f"INSERT INTO {table} VALUES (1, 'a')")
        conn.execute("CREATE TABLE audit (id INTEGER PRIMARY KEY, v TEXT)")
        conn.commit()
        conn.close()
    cfg = make_config([{"name": "shop", "path": str(dbs["shop"]), "exclude": ["audit"]},
                       {"name": "metrics", "path": str(dbs["metrics"]), "exclude": ["audit"]}],
                      sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        for name, db in dbs.items():
            await wait_caught_up(db, pg_dsn, name, daemon=d)
        assert d.stop() == 0
    one = run_cli(cfg, "verify", "--source", "shop", "--table", "ORDERS")
    assert one.returncode == 0 and 'shop: "Orders" equal' in one.stdout, one.stdout + one.stderr
    every = run_cli(cfg, "verify", "--table", "orders", "--table", "SAMPLES")
    assert every.returncode == 0, every.stdout + every.stderr
    assert "shop: 1 of 1 table(s) equal" in every.stdout and "metrics: 2 of 2 table(s) equal" in every.stdout
    for args in (("--source", "shop", "--table", "AUDIT"), ("--table", "AUDIT")):
        left = run_cli(cfg, "verify", *args)
        assert left.returncode == 2, left.stdout + left.stderr
        assert "is not replicated: a table the source's include/exclude settings leave out" in left.stdout + left.stderr
    resync = run_cli(cfg, "resync", "--source", "shop", "--table", "ORDERS")
    assert resync.returncode == 0 and "resync of 'Orders' requested" in resync.stdout, resync.stdout + resync.stderr
