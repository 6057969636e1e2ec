"""An application deletes its SQLite file and creates a new one at the same path (a
tenant reset, say) while syncd streams the old one. syncd's connection to the deleted
file must not touch the new file: a connection reading a deleted file takes the new
file's rollback journal (same name beside it) for a crashed writer's and plays it back,
deleting it under the application's open transaction, which then fails with "disk I/O
error" while its changes stay in the file. The application's writes all succeed, and
Postgres ends holding the new file's rows, none of the old one's."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import wait_caught_up

# The application: delete the file, create it again, and write to it at once, many small
# transactions (each one a rollback journal beside the file while it runs).
RESET = """
import os, sqlite3, sys
path, rounds = sys.argv[1], int(sys.argv[2])
errors = []
for r in range(rounds):
    os.unlink(path)
    conn = sqlite3.connect(path, timeout=5)
    try:
        conn.execute("PRAGMA journal_mode=delete")
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
        conn.commit()
        for i in range(200):
            conn.execute("INSERT INTO items VALUES (?, ?)", (i, f"round {r} row {i}"))
            conn.commit()
    except sqlite3.Error as e:
        errors.append(f"round {r}: {e}")
    finally:
        conn.close()
    if r < rounds - 1:
        # the old file streams on a while before the next reset
        conn = sqlite3.connect(path, timeout=5)
        conn.execute("UPDATE items SET v = 'before the reset'")
        conn.commit()
        conn.close()
        import time; time.sleep(1.0)
print("\\n".join(errors))
"""


def tenant(path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=delete")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"old file {i}") for i in range(500)])
    conn.commit()
    conn.close()


async def test_a_file_deleted_and_created_again_fails_none_of_the_applications_writes(tmp_path, make_config, pg_dsn):
    d = tmp_path / "tenants"
    d.mkdir()
    db = d / "acme.db"
    tenant(db)
    cfg = make_config([{"name": "t_{stem}", "path": str(d / "*.db")}],
                      sections={"stream": {"discover_interval_seconds": 0.5}, "verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as daemon:
        await wait_caught_up(db, pg_dsn, "t_acme", daemon=daemon)
        app = subprocess.run([sys.executable, "-c", RESET, str(db), "5"], capture_output=True, text=True, timeout=120)
        assert app.returncode == 0, app.stderr
        assert app.stdout.strip() == "", f"the application's writes failed:\n{app.stdout}"
        await wait_caught_up(db, pg_dsn, "t_acme", timeout=60, daemon=daemon)
        assert daemon.stop() == 0
    assert await compare_table(str(db), pg_dsn, "t_acme", "items") == []


async def test_a_file_put_back_after_a_while_is_followed_again_within_seconds(tmp_path, make_config, pg_dsn):
    """A tenant's file moved away for half a minute (a restore, a move gone wrong) and put
    back: the daemon's poll finds it there and follows it again at once, as it finds a new
    file, not at the end of a retry's backoff, which by then had grown to half a minute
    (the file's changes waiting all that while)."""
    import time

    from tests.support.daemon import wait_for

    db = tmp_path / "app.db"
    tenant(db)
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        db.rename(tmp_path / "away.db")
        d.wait_log(f"SQLite file {db} does not exist; waiting for it to come back", 30)
        gone_at = time.monotonic()
        # Past the retries a backoff of 0.2 s doubling makes within 30 s: the next is 25 s on.
        time.sleep(max(0.0, gone_at + 31 - time.monotonic()))
        (tmp_path / "away.db").rename(db)
        back_at = time.monotonic()
        wait_for(lambda: "recovered: the SQLite file is back" in d.log(), 60, "the file followed again", d)
        took = time.monotonic() - back_at
        assert took < 10, took
        assert d.stop() == 0


async def test_a_file_gone_while_closed_for_idleness_is_retried_at_the_backoff_pace(tmp_path, make_config, pg_dsn):
    """The poll wakes a source closed for idleness whenever its file looks changed, and
    a gone file looks changed at every look: the wait between two retries must still
    end only when the file is back, else every poll is a retry (hundreds of archived
    tenants retried every second, and syncd_retries_total counting each)."""
    import os
    import re
    import time
    import urllib.request

    from tests.support.daemon import wait_for
    from tests.support.ports import free_port

    db = tmp_path / "app.db"
    tenant(db)
    port = free_port()
    cfg = make_config([{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{port}",
                      sections={"verify": {"interval_seconds": 0}, "sqlite": {"idle_close_seconds": 0.5}})

    def open_on(path, pid: int) -> bool:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(path)):
                    return True
            except OSError:
                pass
        return False

    def retries() -> int:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        m = re.search(r'^syncd_retries_total\{source="app"\} (\S+)$', text, re.M)
        return int(float(m.group(1))) if m else 0

    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        wait_for(lambda: not open_on(db, d.pid), 30, "the idle source's file closed", d)
        db.rename(tmp_path / "away.db")
        d.wait_log(f"SQLite file {db} does not exist; waiting for it to come back", 30)
        time.sleep(4)  # the backoff past its first steps (0.2 s doubling: the next is seconds away)
        before = retries()
        time.sleep(10)
        # At the backoff's pace two or three more; a retry at every poll made dozens.
        assert retries() - before <= 6, retries() - before
        assert d.stop() == 0
