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


def test_an_answer_given_with_its_output_closed_exits_with_its_own_code(tmp_path):
    """Started with its standard output closed (a cron line's `>&-`), a verb still exits
    with its own code, without a traceback: here the configuration's error (3)."""
    r = subprocess.run(f"{sys.executable} -m syncd --config {tmp_path / 'missing.toml'} status >&-", shell=True,
                       capture_output=False, stderr=subprocess.PIPE, text=True, timeout=60)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 3, (r.returncode, r.stderr)
