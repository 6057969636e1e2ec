"""A file its application keeps locked reads as busy, never as a file without syncd's
bookkeeping: "database is locked" is a reason to wait and read again, while "no such
table" means capture is not installed. Taking one for the other would unfreeze a
cut-over file, lose the way back's checkpoint or call capture removed."""

from __future__ import annotations

import sqlite3

import pytest

from syncd.reverse import applier
from syncd.reverse.checkpoint import META_KEY
from syncd.sqlite import capture, disk_guard, freeze, reader


@pytest.fixture
def locked_file(tmp_path):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    capture.install_base(conn, busy_timeout_ms=100)
    conn.execute("PRAGMA busy_timeout = 50")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # rollback-journal mode: no reader gets in
    try:
        yield conn, str(db)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        conn.close()


READS = {
    "the freeze message": lambda conn, path: freeze.frozen(conn),
    "capture suspended": lambda conn, path: disk_guard.suspended(conn),
    "the capture id": lambda conn, path: reader.current_capture_id(conn),
    "the way back's checkpoint": lambda conn, path: applier.read_meta(conn, META_KEY),
    "the poll": lambda conn, path: reader.poll(conn, path),
}


@pytest.mark.parametrize("what", list(READS))
def test_a_locked_file_reads_as_busy(locked_file, what):
    conn, path = locked_file
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        READS[what](conn, path)
    assert not conn.in_transaction


@pytest.mark.parametrize("what", list(READS)[:4])
def test_a_file_without_capture_reads_as_such(tmp_path, what):
    db = tmp_path / "plain.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
    assert READS[what](conn, str(db)) is None
    conn.close()
