"""What syncd does not carry (views, virtual tables and their shadow tables, column
defaults with no exact Postgres form, what the configuration excludes) is named
where a user looks: `syncd schema`, the log, `syncd status` and the migration report,
each with why and what to do in Postgres. A virtual table holding application data of
its own keeps the report from saying the data is migrated."""

from __future__ import annotations

import json
import sqlite3

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import wait_caught_up

SCHEMA = """
CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT, body TEXT);
CREATE VIEW recent_notes AS SELECT * FROM notes WHERE id > 1;
CREATE VIRTUAL TABLE notes_search USING fts5(title, body);
CREATE VIRTUAL TABLE notes_index USING fts5(title, body, content='notes', content_rowid='id');
CREATE VIRTUAL TABLE notes_terms USING fts5(body, content='');
CREATE VIRTUAL TABLE places USING rtree(id, min_x, max_x, min_y, max_y);
CREATE TABLE audit (id INTEGER PRIMARY KEY, at TEXT DEFAULT (datetime('now', 'localtime')),
                    stamped TEXT DEFAULT (datetime('now')));
INSERT INTO notes VALUES (1, 'a', 'first'), (2, 'b', 'second');
INSERT INTO notes_search VALUES ('kept only here', 'this text is nowhere else'), ('two', 'rows');
INSERT INTO places VALUES (1, 0, 1, 0, 1);
"""


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA)
    conn.commit()
    conn.close()


async def replicate_then_write(cfg, conn: sqlite3.Connection, app_db, pg_dsn, tmp_path, sql: str) -> None:
    """The daemon loads the file, then streams one write made on `conn`, and stops."""
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute(sql)
        conn.commit()
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0


def test_schema_names_each_object_left_out_and_what_to_do(app_db, make_config):
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    r = run_cli(cfg, "schema")
    assert r.returncode == 0, r.stderr
    lines = {line.split("'")[1]: line for line in r.stdout.splitlines() if line.startswith("-- skipped")}
    # a view whose SELECT translates is created at cutover (docs/schema.md), said with its statement
    assert "recent_notes" not in lines
    assert '-- cutover: view "recent_notes"' in r.stdout and 'CREATE VIEW "app"."recent_notes" AS' in r.stdout
    assert lines["notes_search"].startswith("-- skipped 'notes_search': HOLDS 2 row(s) OF APPLICATION DATA")
    assert "GIN index on to_tsvector()" in lines["notes_search"]
    assert 'full-text index over table "notes"' in lines["notes_index"] and "HOLDS" not in lines["notes_index"]
    assert "contentless" in lines["notes_terms"]
    assert "HOLDS 1 row(s)" in lines["places"] and "GiST" in lines["places"]
    assert 'shadow table of virtual table "notes_search"' in lines["notes_search_content"]
    assert 'shadow table of virtual table "places"' in lines["places_node"]


async def test_report_and_status_name_data_left_behind(app_db, make_config, pg_dsn, tmp_path):
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log("HOLDS 2 row(s) OF APPLICATION DATA")
        assert d.stop() == 0

    r = run_cli(cfg, "report")
    assert r.returncode == 1
    assert "Not migrated (the application will miss these after the switch)" in r.stdout
    assert "| `notes_search` | an FTS5 full-text table that stores its own text | ❌ yes, 2 row(s) |" in r.stdout
    doc = json.loads(run_cli(cfg, "report", "--format", "json").stdout)
    migrated = next(i for i in doc["checklist"] if i["key"] == "migrated")
    assert not migrated["ok"]
    assert any(p.startswith("app.notes_search: 2 row(s) of application data") for p in migrated["problems"])
    assert any(p.startswith("app.places: 1 row(s)") for p in migrated["problems"])
    kinds = {o["name"]: o["kind"] for o in doc["sources"][0]["not_migrated"]}
    assert kinds["notes_index"] == "fts5" and kinds["places"] == "rtree" and "recent_notes" not in kinds
    # a default syncd cannot carry: after the switch an INSERT leaving the column out stores NULL
    assert kinds["audit.at"] == "default" and "audit.stamped" not in kinds
    assert "| `audit.at` | the column's default datetime('now', 'localtime') not carried" in r.stdout
    views = [o for o in doc["sources"][0]["schema"]["objects"] if o["kind"] == "view"]
    assert [(v["sqlite"], v["stage"]) for v in views] == [('view "recent_notes"', "cutover")]

    status = run_cli(cfg, "status")
    assert "2 not replicated" in status.stdout
    assert 'WARNING: app: not migrated: "notes_search" HOLDS 2 row(s)' in status.stdout

    # Once the user has dealt with them, excluding them is a decision the report accepts.
    cfg = make_config([{"name": "app", "path": str(app_db), "exclude": ["notes_search", "places"]}])
    doc = json.loads(run_cli(cfg, "report", "--format", "json").stdout)
    migrated = next(i for i in doc["checklist"] if i["key"] == "migrated")
    assert not any("application data" in p for p in migrated["problems"])
    # the item on all data migrated says how much of it is not, by that decision
    assert "app.notes_search: 2 row(s) not migrated: the source's include/exclude settings leave it out" in \
        migrated["evidence"], migrated
    # and it stays named, with what is left behind, wherever what is not migrated is
    excluded = {o["name"]: (o["kind"], o["holds_data"], o["rows"]) for o in doc["sources"][0]["not_migrated"]
                if o["kind"] == "excluded"}
    assert excluded == {"notes_search": ("excluded", False, 2), "places": ("excluded", False, 1)}
    assert "| `notes_search` | a virtual table the source's include/exclude settings leave out | 2 row(s), left out " \
           "as configured |" in run_cli(cfg, "report").stdout
    assert "-- skipped 'places': a virtual table the source's include/exclude settings leave out" in \
        run_cli(cfg, "schema").stdout
    # a shadow table left out with its virtual table is still said as the shadow it is
    cfg = make_config([{"name": "app", "path": str(app_db), "tables": ["notes", "audit"]}])
    kinds = {o["name"]: o["kind"] for o in json.loads(run_cli(cfg, "report", "--format", "json").stdout)
             ["sources"][0]["not_migrated"]}
    assert kinds["notes_search"] == "excluded" and kinds["notes_search_content"] == "shadow", kinds


async def test_an_application_table_named_like_a_shadow_table_is_replicated(app_db, make_config, pg_dsn, tmp_path):
    """SQLite calls any table named <fts5 table>_content a shadow table by its name, but
    an FTS5 table with content= keeps none: a table of that name is the application's,
    replicated and verified like any other (it was left out, and verify said equal)."""
    from tests.support.compare import compare_table

    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE comments_fts_content (id INTEGER PRIMARY KEY, body TEXT);
        INSERT INTO comments_fts_content VALUES (1, 'first'), (2, 'second');
        CREATE VIRTUAL TABLE comments_fts USING fts5(body, content='comments_fts_content', content_rowid='id');
        CREATE VIRTUAL TABLE notes_fts USING fts5(body);
        CREATE TABLE mixed_fts_content (id INTEGER PRIMARY KEY, body TEXT);
        INSERT INTO mixed_fts_content VALUES (1, 'case');
        CREATE VIRTUAL TABLE Mixed_FTS USING fts5(body, content='mixed_fts_content', content_rowid='id');
    """)
    conn.commit()
    kinds = {r[1]: r[2] for r in conn.execute("PRAGMA table_list")}
    assert kinds["comments_fts_content"] == kinds["notes_fts_content"] == "shadow"  # as SQLite sees them
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    await replicate_then_write(cfg, conn, app_db, pg_dsn, tmp_path,
                               "INSERT INTO comments_fts_content VALUES (3, 'third')")
    assert await compare_table(str(app_db), pg_dsn, "app", "comments_fts_content") == []
    assert await compare_table(str(app_db), pg_dsn, "app", "mixed_fts_content") == []  # names match without case
    schema = run_cli(cfg, "schema").stdout
    assert "skipped 'notes_fts_content': a shadow table" in schema  # the real one stays left out
    assert "skipped 'comments_fts_content'" not in schema
    v = run_cli(cfg, "verify")
    assert v.returncode == 0 and '"comments_fts_content" equal' in v.stdout, v.stdout


# Each module's shadow tables, as SQLite creates them, beside application tables that
# SQLite also calls shadows, by their names alone.
LOOKALIKES = """
CREATE TABLE docs_docsize (id INTEGER PRIMARY KEY, owner TEXT, bytes INTEGER);
INSERT INTO docs_docsize VALUES (1, 'ada', 100), (2, 'bob', 200), (3, 'cy', 300);
CREATE VIRTUAL TABLE docs USING fts5(body, content='', columnsize=0);
CREATE TABLE e_docsize (id INTEGER PRIMARY KEY, sz BLOB, note TEXT);
INSERT INTO e_docsize VALUES (1, x'01', 'one more column than FTS5 gives it');
CREATE VIRTUAL TABLE e USING fts5(body, content='x', columnsize=0);
CREATE TABLE n_docsize (docid INTEGER PRIMARY KEY, size TEXT);
INSERT INTO n_docsize VALUES (1, 'large'), (2, 'small');
CREATE TABLE n_stat (id INTEGER PRIMARY KEY, metric TEXT, value REAL);
INSERT INTO n_stat VALUES (1, 'p99', 0.25);
CREATE VIRTUAL TABLE n USING fts4(body, matchinfo=fts3);
CREATE VIRTUAL TABLE f5 USING fts5(a, b);
CREATE VIRTUAL TABLE f4 USING fts4(a, "b c", languageid="lid");
CREATE VIRTUAL TABLE f3 USING fts3(a);
CREATE VIRTUAL TABLE r USING rtree(id, x0, x1, +aux);
CREATE VIRTUAL TABLE ri USING rtree_i32(id, x0, x1);
CREATE VIRTUAL TABLE u USING fts5(a, b UNINDEXED, content='');
-- what SQLite 3.45+ creates for fts5(..., content='', contentless_unindexed=1): a real shadow
CREATE TABLE u_content (id INTEGER PRIMARY KEY, c1);
"""
APPLICATION_TABLES = {"docs_docsize", "e_docsize", "n_docsize", "n_stat"}


def test_only_tables_shaped_as_a_module_creates_them_are_shadow_tables(tmp_path):
    from syncd.sqlite.introspect import list_tables

    conn = sqlite3.connect(tmp_path / "shapes.db")
    conn.executescript(LOOKALIKES)
    conn.execute("INSERT INTO f3(f3) VALUES ('automerge=2')")  # FTS3 keeps an f3_stat from here on
    sqlite_says = {r[1] for r in conn.execute("PRAGMA table_list") if r[2] == "shadow"}
    syncd_says = {name for name, kind, _, _ in list_tables(conn) if kind == "shadow"}
    assert APPLICATION_TABLES <= sqlite_says
    assert sqlite_says - syncd_says == APPLICATION_TABLES
    assert len(syncd_says) == 34  # every table the modules created: 3+3+3 beside those, 5+5+4 FTS, 3+3 R*Tree, 5


async def test_an_application_table_named_like_any_shadow_table_is_replicated(app_db, make_config, pg_dsn,
                                                                              tmp_path):
    """SQLite calls a table a shadow by its name alone: docs_docsize beside an FTS5 table
    `docs` with columnsize=0, which keeps no _docsize of its own, is one. A table whose
    columns are not the module's is the application's: replicated, verified and reported
    like any other (it was left out while verify, status and report said complete)."""
    from tests.support.compare import compare_table

    conn = sqlite3.connect(app_db)
    conn.executescript(LOOKALIKES)
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    await replicate_then_write(cfg, conn, app_db, pg_dsn, tmp_path, "INSERT INTO docs_docsize VALUES (4, 'dee', 400)")
    for name in sorted(APPLICATION_TABLES):
        assert await compare_table(str(app_db), pg_dsn, "app", name) == [], name
    v = run_cli(cfg, "verify")
    assert v.returncode == 0 and "4 of 4 table(s) equal" in v.stdout, v.stdout
    schema = run_cli(cfg, "schema").stdout
    assert "skipped 'docs_data': a shadow table" in schema and "skipped 'u_content': a shadow table" in schema
    assert not [n for n in APPLICATION_TABLES if f"skipped '{n}'" in schema]
    doc = json.loads(run_cli(cfg, "report", "--format", "json").stdout)
    report = {t["table"]: t for t in doc["sources"][0]["tables"]}
    assert report["docs_docsize"]["rows_sqlite"] == report["docs_docsize"]["rows_postgres"] == 4
    not_migrated = {o["name"] for o in doc["sources"][0]["not_migrated"]}
    assert not_migrated & APPLICATION_TABLES == set() and "docs_config" in not_migrated


def test_an_empty_virtual_table_holds_no_data(app_db, make_config):
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE VIRTUAL TABLE notes_search USING fts5(title, body);
        CREATE VIRTUAL TABLE places USING rtree(id, min_x, max_x);
        CREATE VIRTUAL TABLE more_places USING rtree(id, min_x, max_x);
        INSERT INTO more_places VALUES (1, 0, 1);
    """)
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    r = run_cli(cfg, "report")
    assert "| `notes_search` | an FTS5 full-text table that stores its own text | no |" in r.stdout, r.stdout
    assert "| `places` | an rtree spatial index table (its boxes are its own data) | no |" in r.stdout
    assert "| `more_places` | an rtree spatial index table (its boxes are its own data) | ❌ yes, 1 row(s) |" in r.stdout


async def test_table_patterns_name_tables_as_sqlite_does_in_any_case(tmp_path, make_config, pg_dsn):
    """SQLite names tables ignoring the case of A-Z: `exclude = ["Secrets"]` leaves out the
    table secrets (never copies it into Postgres), and `tables = ["NOTES*"]` takes notes."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
        CREATE TABLE secrets (id INTEGER PRIMARY KEY, password TEXT);
        CREATE TABLE other (id INTEGER PRIMARY KEY);
        INSERT INTO notes VALUES (1, 'kept');
        INSERT INTO secrets VALUES (1, 'hunter2');
    """)
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db), "tables": ["NOTES*", "Secret?"], "exclude": ["SeCrEtS"]}])
    r = run_cli(cfg, "init")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "capture installed on 1 table(s)" in r.stdout, r.stdout
    r = run_cli(cfg, "schema")
    lines = {line.split("'")[1]: line for line in r.stdout.splitlines() if line.startswith("-- skipped")}
    assert "include/exclude settings leave out" in lines["secrets"], r.stdout
    assert "include/exclude settings leave out" in lines["other"], r.stdout
    assert "notes" not in lines, r.stdout
    conn = await asyncpg.connect(pg_dsn)
    try:
        tables = {r[0] for r in await conn.fetch("SELECT table_name FROM information_schema.tables "
                                                 "WHERE table_schema = 'app'")}
    finally:
        await conn.close()
    assert tables == {"notes"}
