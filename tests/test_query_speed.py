"""The report's "PostgreSQL performance meets targets": per table, a primary-key lookup
and a lookup through each index syncd created, timed in SQLite and in Postgres on
sampled rows (median of a few), with the plan Postgres chose; a lookup over [cutover]
max_query_ms fails the item, naming it. Bounded: [cutover] speed_max_lookups."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.pgcluster import with_database
from tests.support.sync import first_source, pg_rows, wait_caught_up


def item(doc: dict, key: str) -> dict:
    return next(i for i in doc["checklist"] if i["key"] == key)


async def synced(app_db, make_config, pg_dsn, tmp_path, **cutover):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE person (id INTEGER PRIMARY KEY, email TEXT UNIQUE, city TEXT, age INTEGER);
        CREATE INDEX person_city ON person(city, age);
        CREATE INDEX person_email_len ON person(length(email));
        CREATE TABLE empty (k TEXT PRIMARY KEY);
    """)
    conn.executemany("INSERT INTO person VALUES (?, ?, ?, ?)",
                     [(i, f"p{i}@x", f"city{i % 50}", i % 90) for i in range(1, 3001)])
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"cutover": dict(cutover)})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log("created person: UNIQUE constraint on (email)")
        assert d.stop() == 0
    return cfg


async def test_lookups_are_timed_on_both_sides_with_postgres_plan(app_db, make_config, pg_dsn, tmp_path):
    cfg = await synced(app_db, make_config, pg_dsn, tmp_path)
    out = run_cli(cfg, "report", "--format", "json")
    doc = json.loads(out.stdout)
    perf = item(doc, "performance")
    assert perf["ok"] is True, perf
    lookups = {lk["lookup"]: lk for lk in doc["sources"][0]["schema"]["lookups"]}
    pk = lookups["primary key (id)"]
    assert pk["plan"] == "Index Scan using person_pkey" and pk["postgres_ms"] > 0 and pk["sqlite_ms"] > 0
    city = next(v for k, v in lookups.items() if k.startswith('index "person_city"'))
    assert city["plan"].startswith(("Index Scan using person_city", "Bitmap Heap Scan")) and city["sqlite_ms"] > 0
    email = next(v for k, v in lookups.items() if k.startswith('unique index "person_email_key"'))
    assert "person_email_key" in email["plan"]
    expr = next(v for k, v in lookups.items() if k.startswith('index "person_email_len"'))
    assert expr["postgres_ms"] > 0 and "expression" in expr["note"]
    assert any("empty" in e and "empty" in e for e in perf["evidence"])
    md = run_cli(cfg, "report").stdout
    assert "PostgreSQL performance meets targets (primary-key and index lookups under 50 ms" in md


async def test_a_lookup_over_the_target_fails_the_item_and_the_cap_holds(app_db, make_config, pg_dsn, tmp_path):
    cfg = await synced(app_db, make_config, pg_dsn, tmp_path, max_query_ms=0.000001, speed_max_lookups=2)
    out = run_cli(cfg, "report", "--format", "json")
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    perf = item(doc, "performance")
    assert perf["ok"] is False
    assert any(p.startswith("app.person: primary key (id):") and "over 1e-06 ms" in p for p in perf["problems"])
    assert len(doc["sources"][0]["schema"]["lookups"]) == 2
    assert any("2 further lookup(s) not timed" in p and "speed_max_lookups" in p for p in perf["problems"])


async def test_lookups_left_untimed_by_the_cap_fail_the_item(app_db, make_config, pg_dsn, tmp_path):
    """Every lookup timed is fast, but the cap left others out: a sample is no evidence."""
    cfg = await synced(app_db, make_config, pg_dsn, tmp_path, speed_max_lookups=1)
    out = run_cli(cfg, "report", "--format", "json")
    assert out.returncode == 1
    perf = item(json.loads(out.stdout), "performance")
    assert perf["ok"] is False and any("not timed" in p for p in perf["problems"]), perf


async def test_an_index_on_lower_serves_the_query_written_as_in_sqlite(app_db, make_config, pg_dsn, tmp_path):
    """An index on lower(x) is there for queries written `WHERE lower(x) = ?`, which after
    the switch Postgres runs with its own lower(). A plain one is made of Postgres's
    lower(), so that query uses it (a plain index never changes an answer); a unique
    one keeps SQLite's ASCII-only folding, which decides the rows it refuses. Each is
    timed as the application's query writes it, not through an expression no query
    names."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT, email TEXT);
        CREATE INDEX notes_title_lower ON notes(lower(title));
        CREATE UNIQUE INDEX notes_email_upper ON notes(upper(email));
    """)
    conn.executemany("INSERT INTO notes VALUES (?, ?, ?)", [(i, f"Title {i}", f"n{i}@x") for i in range(1, 3001)])
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"cutover": {}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log('created notes: index "notes_title_lower"')
        assert d.stop() == 0
    defs = dict(await pg_rows(pg_dsn, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'notes'"))
    assert defs["notes_title_lower"].endswith("(lower(title))"), defs
    assert "translate(email" in defs["notes_email_upper"], defs
    pg = await asyncpg.connect(pg_dsn, server_settings={"enable_seqscan": "off"})
    try:
        plan = await pg.fetch("EXPLAIN SELECT * FROM app.notes WHERE lower(title) = 'title 7'")
    finally:
        await pg.close()
    assert any("notes_title_lower" in r[0] for r in plan), plan
    doc = json.loads(run_cli(cfg, "report", "--format", "json").stdout)
    lookups = {lk["lookup"]: lk for lk in doc["sources"][0]["schema"]["lookups"]}
    title = next(v for k, v in lookups.items() if k.startswith('index "notes_title_lower"'))
    assert title["plan"].startswith(("Index Scan using notes_title_lower", "Bitmap Heap Scan")), title
    # the query the application writes, upper(email) = ..., cannot use the exact unique index
    email = next(v for k, v in lookups.items() if k.startswith('unique index "notes_email_upper"'))
    assert email["postgres_ms"] > 0 and email["plan"].startswith("Seq Scan"), email
    said = "a query written upper(email) uses no index in Postgres: this one keeps SQLite's own meaning of it"
    assert said in email["note"], email
    assert said in run_cli(cfg, "schema").stdout


async def test_an_index_on_a_sparse_column_is_timed_on_rows_that_hold_a_value(app_db, make_config, pg_dsn,
                                                                              tmp_path):
    """Rows spread over the table may all leave an index's columns NULL (every 10th row
    tagged here): the lookup is timed on rows that hold a value, not skipped while the
    item passes. An index no row is in yet (a column always NULL so far) has nothing to
    look up, and says so."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE orders (id INTEGER PRIMARY KEY, tag TEXT, note TEXT);
        CREATE INDEX orders_tag ON orders(tag);
        CREATE INDEX orders_tag_len ON orders(length(tag));
        CREATE INDEX orders_note ON orders(note);
    """)
    conn.executemany("INSERT INTO orders VALUES (?, ?, NULL)", [(i, f"t{i}" if i % 10 == 0 else None)
                                                                 for i in range(1, 3001)])
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"cutover": {}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    doc = json.loads(run_cli(cfg, "report", "--format", "json").stdout)
    lookups = {lk["lookup"]: lk for lk in doc["sources"][0]["schema"]["lookups"]}
    tag = next(v for k, v in lookups.items() if k.startswith('index "orders_tag"'))
    assert tag["postgres_ms"] > 0 and tag["sqlite_ms"] > 0, tag
    assert next(v for k, v in lookups.items() if k.startswith('index "orders_tag_len"'))["postgres_ms"] > 0
    note = next(v for k, v in lookups.items() if k.startswith('index "orders_note"'))
    assert note["postgres_ms"] is None and note["note"] == "no row holds a value there: nothing to look up"
    perf = item(doc, "performance")
    assert perf["ok"] is True, perf
    assert any(e.startswith('app.orders: index "orders_note"') and "nothing to look up" in e
               for e in perf["evidence"]), perf


async def test_the_pages_cached_measurement_never_keeps_a_table_not_yet_in_postgres(app_db, make_config, pg_dsn,
                                                                                     tmp_path):
    """The daemon's page reuses a measurement for minutes; one taken before the snapshot
    created the tables (lookups failing, orphans not counted) is measured again."""
    import asyncpg

    from syncd.parity import summary

    cfg = await synced(app_db, make_config, pg_dsn, tmp_path)
    settings, source, specs = first_source(cfg)
    pg = await asyncpg.connect(pg_dsn)
    try:
        await pg.execute("ALTER TABLE app.person RENAME TO person_away")
        early = await summary.gather(settings, source, pg, specs, [], max_age=600)
        assert any(lk.table == "person" and lk.postgres_ms is None for lk in early.speed.lookups)
        await pg.execute("ALTER TABLE app.person_away RENAME TO person")
        later = await summary.gather(settings, source, pg, specs, [], max_age=600)
        assert all(lk.postgres_ms is not None for lk in later.speed.lookups if lk.table == "person")
        assert await summary.gather(settings, source, pg, specs, [], max_age=600) is later  # settled: kept
    finally:
        await pg.close()


async def test_the_cap_is_spent_on_the_sources_in_their_order_every_run(tmp_path, make_config, pg_dsn):
    """`syncd report` measures several sources of one database at once, each on its own
    connection, but times their lookups one source after another in the configuration's
    order: the cap falls on the same lookups every run, and the sources after it are
    named as not timed."""
    sources = []
    for n in range(7):
        path = tmp_path / f"shop{n}.db"
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=wal")
        conn.executescript("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT);"
                           "CREATE TABLE notes (k TEXT PRIMARY KEY, body TEXT);")
        conn.executemany("INSERT INTO orders VALUES (?, ?)", [(i, f"item {i}") for i in range(1, 201)])
        conn.executemany("INSERT INTO notes VALUES (?, ?)", [(f"k{i}", "body") for i in range(1, 51)])
        conn.close()
        sources.append({"name": f"shop{n}", "path": str(path)})
    cfg = make_config(sources, sections={"cutover": {"speed_max_lookups": 5}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        for s in sources:
            await wait_caught_up(Path(s["path"]), pg_dsn, s["name"], daemon=d)
        assert d.stop() == 0
    timed = []
    for _ in range(2):
        out = run_cli(cfg, "report", "--format", "json")
        doc = json.loads(out.stdout)
        timed.append([sorted(lk["lookup"].split(" (")[0] + " " + lk["table"] for lk in s["schema"]["lookups"] or [])
                      for s in doc["sources"]])
        problems = item(doc, "performance")["problems"]
        assert out.returncode == 1 and any(p.startswith("shop2: 1 further lookup(s) not timed") for p in problems), \
            problems
        assert [s["source"] for s in doc["sources"]] == [s["name"] for s in sources]
    assert timed[0] == timed[1]
    assert [len(t) for t in timed[0]] == [2, 2, 1, 0, 0, 0, 0], timed[0]


async def test_a_source_that_cannot_be_measured_ends_a_report_over_several_databases(
        tmp_path, make_config, pg_dsn, pg_server, fresh_databases):
    """Sources of two databases, measured at once, their lookups timed in the
    configuration's order: when one source's measuring fails (its table locked past the
    statement timeout),
    the report ends, naming the failure, and no source waits for the turn of one that
    will never be measured."""
    other = fresh_databases.take()
    try:
        other_dsn = with_database(pg_server, other)
        sources = []
        for name, dsn in (("a1", pg_dsn), ("b1", other_dsn), ("b2", other_dsn), ("b3", other_dsn), ("a2", pg_dsn)):
            path = tmp_path / f"{name}.db"
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=wal")
            conn.executescript("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT);"
                               "INSERT INTO orders VALUES (1, 'one'), (2, 'two');")
            conn.close()
            sources.append({"name": name, "path": str(path), "dsn": dsn})
        cfg = make_config(sources, sections={"postgres": {"max_connections": 2, "statement_timeout_seconds": 2}})
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            for s in sources:
                await wait_caught_up(Path(s["path"]), s["dsn"], s["name"], daemon=d)
            assert d.stop() == 0
        pg = await asyncpg.connect(other_dsn)
        try:
            async with pg.transaction():  # b1's table locked past [postgres] statement_timeout_seconds
                await pg.execute("LOCK TABLE b1.orders IN ACCESS EXCLUSIVE MODE")
                out = run_cli(cfg, "report", "--format", "json", timeout=60)  # TimeoutExpired: it hung
        finally:
            await pg.close()
        assert out.returncode == 2 and "timed out" in out.stderr, out.stdout[-2000:] + out.stderr[-2000:]
    finally:
        fresh_databases.give_back(other)


async def test_lookups_that_find_no_row_in_postgres_are_no_evidence(app_db, make_config, pg_dsn, tmp_path):
    """Postgres's tables emptied (a copy that moved none of the rows, say): every lookup of a
    row sampled from SQLite finds nothing there, in no time. The item fails, naming the
    lookups, rather than passing on timings of tables that hold none of the user's data."""
    from tests.support.verifying import pg_execute

    cfg = await synced(app_db, make_config, pg_dsn, tmp_path)
    await pg_execute(pg_dsn, "DELETE FROM app.person")
    out = run_cli(cfg, "report", "--format", "json")
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr
    doc = json.loads(out.stdout)
    perf = item(doc, "performance")
    assert perf["ok"] is False, perf
    pk = next(p for p in perf["problems"] if p.startswith("app.person: primary key (id):"))
    assert "none of the 3 row(s) sampled from SQLite is in Postgres" in pk, pk
    assert not any(e.startswith("app.person:") for e in perf["evidence"]), perf
