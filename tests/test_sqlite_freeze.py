"""A frozen SQLite file refuses the application's writes with a message saying where
the data went; readers are untouched, syncd's own writes pass, and unfreezing gives
the file back. Holds with trusted_schema off and across the application's renames."""

from __future__ import annotations

import sqlite3

import pytest

from syncd.sqlite import capture, freeze

MESSAGE = "moved to PostgreSQL by syncd at 2026-12-01 10:00 UTC; write to Postgres"


def every_table(_table: str) -> bool:
    return True


def make(db) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');"
                       "CREATE TABLE log (line TEXT); CREATE VIRTUAL TABLE fts USING fts5(body);")
    capture.install_base(conn, 100)
    return conn


@pytest.mark.parametrize("trusted_schema", ["ON", "OFF"])
def test_frozen_file_refuses_the_application_and_lets_syncd_write(tmp_path, trusted_schema):
    db = tmp_path / "app.db"
    syncd = make(db)
    assert freeze.freeze(syncd, MESSAGE, 100, every_table) == 2  # t and log; the FTS table cannot carry triggers
    assert freeze.frozen(syncd) == MESSAGE
    app = sqlite3.connect(db, isolation_level=None)
    app.execute(f"PRAGMA trusted_schema = {trusted_schema}")
    for sql in ("INSERT INTO t VALUES (2, 'b')", "UPDATE t SET v = 'x'", "DELETE FROM t", "INSERT INTO log VALUES ('l')"):
        with pytest.raises(sqlite3.IntegrityError, match="moved to PostgreSQL by syncd"):
            app.execute(sql)
    assert app.execute("SELECT * FROM t").fetchall() == [(1, "a")]  # readers unaffected
    syncd.execute("BEGIN IMMEDIATE")
    with freeze.syncd_writes(syncd):
        syncd.execute("INSERT INTO t VALUES (3, 'from postgres')")
        syncd.execute("UPDATE t SET v = 'also' WHERE id = 1")
    syncd.execute("COMMIT")
    assert app.execute("SELECT * FROM t ORDER BY id").fetchall() == [(1, "also"), (3, "from postgres")]
    assert app.execute("SELECT count(*) FROM _syncd_meta WHERE key = 'syncd_writing'").fetchone()[0] == 0
    with pytest.raises(sqlite3.IntegrityError):
        app.execute("INSERT INTO t VALUES (4, 'still frozen')")
    freeze.unfreeze(syncd, 100)
    assert freeze.frozen(syncd) is None
    app.execute("INSERT INTO t VALUES (4, 'writable again')")


@pytest.mark.parametrize("legacy", ["ON", "OFF"])
def test_freeze_survives_the_applications_renames(tmp_path, legacy):
    db = tmp_path / "app.db"
    syncd = make(db)
    freeze.freeze(syncd, MESSAGE, 100, every_table)
    app = sqlite3.connect(db, isolation_level=None)
    app.execute(f"PRAGMA legacy_alter_table = {legacy}")
    app.execute("ALTER TABLE t RENAME TO t2")  # DDL is not a write the triggers see
    with pytest.raises(sqlite3.IntegrityError, match="moved to PostgreSQL"):
        app.execute("INSERT INTO t2 VALUES (5, 'e')")
    syncd.execute("BEGIN IMMEDIATE")
    with freeze.syncd_writes(syncd):
        syncd.execute("INSERT INTO t2 VALUES (6, 'f')")
    syncd.execute("COMMIT")
    freeze.unfreeze(syncd, 100)
    app.execute("INSERT INTO t2 VALUES (7, 'g')")


def test_tables_the_source_does_not_replicate_stay_writable(tmp_path):
    """A table left out by `tables`/`exclude` is not in Postgres: the application has
    nowhere else to write it, so the freeze leaves it alone."""
    db = tmp_path / "app.db"
    syncd = make(db)
    assert freeze.left_writable(syncd, lambda t: t != "log") == ["log"]
    assert freeze.freeze(syncd, MESSAGE, 100, lambda t: t != "log") == 1
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("INSERT INTO log VALUES ('written after the freeze')")
    with pytest.raises(sqlite3.IntegrityError, match="moved to PostgreSQL by syncd"):
        app.execute("INSERT INTO t VALUES (2, 'b')")
