"""`syncd verify` never says a source is equal while rows of its SQLite file are nowhere
in Postgres: a virtual table that stores application data of its own (an FTS5 table
without `content=`, an R*Tree) cannot be replicated, so verify reports it as a table it
could not compare, with its row count, and exits 1, as it does for a refused table or
a file a glob matches that syncd does not replicate. Virtual tables holding nothing of
their own (an index over another table's text, a contentless index, an empty one) are
not differences, and once the user excludes a data-holding one in the configuration
(a decision, as for the report) verify passes again."""

from __future__ import annotations

import sqlite3

from tests.support.verifying import sync_and_stop, tables, verify, verify_json, verify_section

SCHEMA = """
CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT, body TEXT);
CREATE VIRTUAL TABLE notes_search USING fts5(title, body);
CREATE VIRTUAL TABLE notes_index USING fts5(title, body, content='notes', content_rowid='id');
CREATE VIRTUAL TABLE notes_terms USING fts5(body, content='');
CREATE VIRTUAL TABLE drafts_search USING fts5(body);
CREATE VIRTUAL TABLE places USING rtree(id, min_x, max_x, min_y, max_y);
INSERT INTO notes VALUES (1, 'a', 'first'), (2, 'b', 'second');
INSERT INTO notes_search VALUES ('kept only here', 'this text is nowhere else'), ('two', 'rows');
INSERT INTO places VALUES (1, 0, 1, 0, 1);
"""


async def test_a_virtual_table_holding_data_keeps_verify_from_saying_equal(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db)
    conn.executescript(SCHEMA)
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")

    out = verify(cfg, "--wait", "2")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith('app: "notes" equal') for line in lines), out.stdout
    search = [line for line in lines if line.startswith('app: "notes_search" ')]
    assert len(search) == 1 and "2 row(s)" in search[0] and "not comparable" in search[0], out.stdout
    assert any(line.startswith('app: "places" ') and "1 row(s)" in line for line in lines), out.stdout
    for quiet in ("notes_index", "notes_terms", "drafts_search"):  # nothing of their own in them
        assert not any(line.startswith(f'app: "{quiet}"') for line in lines), out.stdout
    assert "app: 1 of 3 table(s) equal" in lines, out.stdout

    rc, doc = verify_json(cfg, "--wait", "2")
    got = tables(doc)
    assert rc == 1 and doc["exit_code"] == 1
    assert sorted(got) == ["notes", "notes_search", "places"]
    assert got["notes"]["equal"]
    assert not got["notes_search"]["equal"] and not got["notes_search"]["compared"]
    assert got["notes_search"]["rows_sqlite"] == 2 and got["notes_search"]["rows_postgres"] is None

    # The table named on its own is found, not "no table in the SQLite file".
    out = verify(cfg, "--table", "notes_search", "--wait", "2")
    assert out.returncode == 1 and 'app: "notes_search" not comparable' in out.stdout, out.stdout + out.stderr

    # Excluding them is the user's decision: nothing left out holds data any more.
    excluded = make_config([{"name": "app", "path": str(app_db), "exclude": ["notes_search", "places"]}],
                           extra=verify_section(), name="excluded.toml")
    out = verify(excluded, "--wait", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "app: 1 of 1 table(s) equal" in out.stdout
