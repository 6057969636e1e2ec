"""After a verb that answers (status, verify, cutover, rollback, ...) the command leaves
without Python's teardown, but only once every SQLite connection is closed: a
connection's close is what folds a WAL file back into the database and removes it."""

from __future__ import annotations

import subprocess
import sys

from syncd.cli import QUICK_EXIT_AT_ANY_CODE

# In a process of its own: the test process may hold other tests' connections.
CHECK = """
import sqlite3, sys
from syncd.cli import _no_sqlite_connection_open as none_open
seen = [none_open()]
conn = sqlite3.connect(sys.argv[1])
conn.execute("PRAGMA journal_mode=wal")
conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
seen.append(none_open())
conn.close()
seen.append(none_open())
print(seen)
"""


def test_a_sqlite_connection_left_open_keeps_the_teardown(tmp_path):
    assert {"status", "verify", "cutover", "rollback"} <= set(QUICK_EXIT_AT_ANY_CODE)
    out = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path / "app.db")], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[True, False, True]", out
    assert not (tmp_path / "app.db-wal").exists()
