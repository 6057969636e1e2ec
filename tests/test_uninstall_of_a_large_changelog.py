"""`syncd uninstall --force` beside a running application, when the changelog has grown
large (Postgres away for a while, or the daemon stopped, while the application went on
writing: up to [sqlite] max_changelog_mb, a gigabyte by default, before capture is
suspended). Dropping the changelog frees every page it holds, and one DROP TABLE of
half a gigabyte of entries held the file's write lock for seconds: an application writer
with a busy_timeout of 2 s failed with "database is locked". The entries must go in
short write transactions first, as the disk guard deletes them, and an uninstall
stopped halfway must leave a file the daemon recovers from (its tables loaded again)."""

from __future__ import annotations

import sqlite3

from tests.support.app import ShortTimeoutWriter
from tests.support.daemon import run_cli

ROWS = 800_000
ROUNDS = 5  # 4M changelog entries of 130-byte keys: about 530 MB


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=delete")
    conn.execute("CREATE TABLE events (id TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID")
    conn.execute("CREATE TABLE hits (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < ?) "
                 "INSERT INTO events SELECT printf('%08d-%s', i, hex(randomblob(60))), i FROM r", (ROWS,))
    conn.commit()
    conn.close()


def test_uninstalling_a_large_changelog_never_holds_a_writer_off(tmp_path, make_config):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = make_config([{"name": "app", "path": str(db), "exclude": ["hits"]}])
    done = run_cli(cfg, "init")
    assert done.returncode == 0, done.stdout + done.stderr
    conn = sqlite3.connect(db)
    for _ in range(ROUNDS):  # the application's writes, with no daemon streaming them
        conn.execute("UPDATE events SET n = n + 1")
        conn.commit()
    assert conn.execute("SELECT count(*) FROM _syncd_changelog").fetchone()[0] >= ROWS * ROUNDS
    conn.close()

    writer = ShortTimeoutWriter(db, timeout=2.0)
    writer.start()
    try:
        done = run_cli(cfg, "uninstall", "--force", timeout=600)
    finally:
        writer.stop.set()
        writer.join(30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "removed 4 trigger(s), the changelog and the registry" in done.stdout, done.stdout
    conn = sqlite3.connect(db)
    left = conn.execute("SELECT name FROM sqlite_master WHERE name LIKE '\\_syncd%' ESCAPE '\\'").fetchall()
    conn.close()
    assert left == []
    assert writer.transactions > 20 and writer.errors == [], (writer.transactions, writer.errors[:5])


def test_uninstalling_a_long_changelog_never_holds_a_writer_with_a_short_busy_timeout_off(tmp_path, make_config):
    """Before it empties a long changelog in short transactions, the uninstall reads
    where it begins and ends. Read in one statement, SQLite walks every entry for the
    two: 10 million entries of a thousand busy rows held a rollback-journal writer with
    a half-second busy_timeout off."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=delete")
    conn.execute("CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER)")
    conn.execute("CREATE TABLE hits (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO counters VALUES (?, 0)", ((i,) for i in range(1, 1001)))
    cfg = make_config([{"name": "app", "path": str(db), "exclude": ["hits"]}])
    done = run_cli(cfg, "init")
    assert done.returncode == 0, done.stdout + done.stderr
    conn.execute("BEGIN")  # the application's writes, with no daemon streaming them
    for _ in range(10_000):
        conn.execute("UPDATE counters SET n = n + 1")
    conn.execute("COMMIT")
    conn.close()
    writer = ShortTimeoutWriter(db, timeout=0.5)
    writer.start()
    try:
        done = run_cli(cfg, "uninstall", "--force", timeout=600)
    finally:
        writer.stop.set()
        writer.join(30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "removed 4 trigger(s), the changelog and the registry" in done.stdout, done.stdout
    assert writer.transactions > 20 and writer.errors == [], (writer.transactions, writer.errors[:5])
