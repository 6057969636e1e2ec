"""A large table is audited two windows at a time, on two connections to its file.
The audit must find exactly what it finds on one connection: every misfit, its count,
and its sample keys in the table's order, whichever connection read their window."""

from __future__ import annotations

import os
import shutil
import sqlite3

from syncd.config import SourceSettings
from syncd.sqlite import audit
from syncd.sqlite.introspect import introspect

ROWS = 130_000  # seven windows of 20,000 rows


def make_table(path, rows: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=delete")
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER, note TEXT)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?)", ((i, i % 97, f"order {i}") for i in range(1, rows + 1)))
    conn.execute("COMMIT")
    conn.close()


def test_two_connections_find_what_one_finds(tmp_path, monkeypatch):
    db = tmp_path / "app.db"
    make_table(db, ROWS)
    conn = sqlite3.connect(db, isolation_level=None)
    # misfits in windows read by either connection: 1, 2, 3 and 7 (1-based)
    for i in (7, 20_005, 20_006, 45_000, 59_999, 129_999):
        conn.execute("UPDATE orders SET qty = 'many' WHERE id = ?", (i,))
    for i in (40_001, 125_000):
        conn.execute("UPDATE orders SET note = 'a NUL ' || char(0) || ' inside' WHERE id = ?", (i,))
    spec = introspect(conn, SourceSettings(name="app", path=str(db))).tables["orders"]
    inode = file_id(db)

    helper = audit._helper_connection(conn, spec, inode)
    assert helper is not None, "a table this large is audited on two connections"
    helper.close()
    two = audit.audit_table(conn, spec, inode)
    monkeypatch.setattr(audit, "TWO_CONNECTIONS_ROWS", 10**9)
    assert audit._helper_connection(conn, spec, inode) is None
    one = audit.audit_table(conn, spec, inode)

    assert [m.describe("orders") for m in two] == [m.describe("orders") for m in one]
    by_column = {m.column: m for m in two}
    assert by_column["qty"].count == 6
    assert by_column["qty"].sample_keys == [(7,), (20_005,), (20_006,), (45_000,), (59_999,)]
    assert by_column["note"].count == 2
    assert by_column["note"].sample_keys == [(40_001,), (125_000,)]


def file_id(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def test_a_small_table_keeps_one_connection(tmp_path):
    db = tmp_path / "app.db"
    make_table(db, 1_000)
    conn = sqlite3.connect(db, isolation_level=None)
    spec = introspect(conn, SourceSettings(name="app", path=str(db))).tables["orders"]
    assert audit._helper_connection(conn, spec, file_id(db)) is None
    assert audit.audit_table(conn, spec, file_id(db)) == []


def test_a_replaced_file_is_audited_on_its_own_connection_only(tmp_path):
    """The second connection opens the file by its path: once another file is there, it
    would read that one, so the audit stays on the connection it was given."""
    db = tmp_path / "app.db"
    make_table(db, ROWS)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("UPDATE orders SET qty = 'many' WHERE id = 99999")
    spec = introspect(conn, SourceSettings(name="app", path=str(db))).tables["orders"]
    opened_on = file_id(db)
    shutil.copyfile(db, tmp_path / "copy.db")
    other = sqlite3.connect(tmp_path / "copy.db")
    other.execute("UPDATE orders SET qty = 'lots' WHERE id = 25000")  # a window the helper would read
    other.commit()
    other.close()
    os.replace(tmp_path / "copy.db", db)  # conn still reads the file it opened
    assert audit._helper_connection(conn, spec, opened_on) is None
    (misfit,) = audit.audit_table(conn, spec, opened_on)
    assert misfit.sample_keys == [(99999,)] and misfit.count == 1
