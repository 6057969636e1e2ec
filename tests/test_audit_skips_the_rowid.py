"""The value audit reads no value it knows fits: an INTEGER PRIMARY KEY is the rowid,
which SQLite keeps a 64-bit integer and never NULL, so the audit's scan leaves it out
(it was a fifth of the conditions of a five-column table, on every row). What the key
is typed as still decides: a key carried as another Postgres type is checked."""

from __future__ import annotations

import sqlite3

from syncd.config import SourceSettings
from syncd.sqlite import audit
from syncd.sqlite.introspect import introspect


def spec_of(db, ddl: str, columns: dict | None = None):
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(ddl)
    source = SourceSettings(name="app", path=str(db), columns=columns or {})
    return conn, introspect(conn, source).tables["t"]


def test_the_rowid_is_not_among_what_the_audit_reads(tmp_path):
    conn, spec = spec_of(tmp_path / "app.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT, n INTEGER)")
    assert spec.rowid_alias
    conditions = audit.scan_conditions(spec)
    assert '"id"' not in conditions.candidates and '"id"' not in conditions.unconverted
    assert '"note"' in conditions.candidates and '"n"' in conditions.unconverted


def test_a_key_that_is_not_the_rowid_is_read(tmp_path):
    conn, spec = spec_of(tmp_path / "app.db", "CREATE TABLE t (code TEXT PRIMARY KEY, n INTEGER)")
    conditions = audit.scan_conditions(spec)
    assert '"code" IS NULL' in conditions.candidates  # SQLite lets a TEXT PRIMARY KEY hold NULL


def test_a_rowid_carried_as_another_type_is_read(tmp_path):
    conn, spec = spec_of(tmp_path / "app.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT)",
                         columns={"t": {"id": "boolean"}})
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(0, "a"), (1, "b"), (7, "c")])
    assert '"id"' in audit.scan_conditions(spec).candidates
    misfits = audit.audit_table(conn, spec)
    assert [(m.column, m.count, m.sample_keys) for m in misfits] == [("id", 1, [(7,)])]


def test_a_table_keyed_on_its_rowid_still_finds_misfits_elsewhere(tmp_path):
    conn, spec = spec_of(tmp_path / "app.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT, n INTEGER)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?)",
                     [(1, "fine", 1), (2, "a NUL " + "\x00" + " inside", 2), (3, "fine", "many"), (4, None, None)])
    misfits = {m.column: m for m in audit.audit_table(conn, spec)}
    assert set(misfits) == {"note", "n"}
    assert misfits["note"].sample_keys == [(2,)] and misfits["n"].sample_keys == [(3,)]
    misfits, plain = audit.audit_scan(conn, spec)
    assert not plain


def test_a_keyless_table_is_read_without_its_rowid_column(tmp_path):
    conn, spec = spec_of(tmp_path / "app.db", "CREATE TABLE t (note TEXT, n INTEGER)")
    assert spec.rowid_keyed
    rowid = next(c for c in spec.columns if c.sqlite_expr is not None)
    conditions = audit.scan_conditions(spec)
    assert rowid.sqlite_expr not in conditions.candidates and rowid.sqlite_expr not in conditions.unconverted
    conn.executemany("INSERT INTO t VALUES (?, ?)", [("fine", 1), ("fine", "many")])
    assert [(m.column, m.count) for m in audit.audit_table(conn, spec)] == [("n", 1)]
