"""The value audit `syncd init` (and the daemon, before a table's first load) runs over
every row reads a table window by window, each window one statement; in
rollback-journal mode a statement's read lock holds every application commit back.
A window is a fixed 20,000 rows whatever they weigh: over rows of 100 KB of text
(documents, pages, JSON payloads) one window reads 2 GB and holds the file for
seconds, and an application writer with a busy_timeout of 2 s fails with "database is
locked". The load that follows reads its chunks by time (sqlite/hold.py); the audit
must too."""

from __future__ import annotations

from tests.support.app import ShortTimeoutWriter, heavy_file
from tests.support.daemon import run_cli


async def test_init_auditing_heavy_rows_never_holds_a_rollback_journal_writer_off(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    heavy_file(db, "delete", rows=21_000, size=100_000)
    cfg = make_config([{"name": "app", "path": str(db), "exclude": ["hits"]}])
    writer = ShortTimeoutWriter(db, timeout=2.0)
    writer.start()
    try:
        done = run_cli(cfg, "init", timeout=600)
    finally:
        writer.stop.set()
        writer.join(30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 pending" in done.stdout, done.stdout
    assert writer.transactions > 20 and writer.errors == [], (writer.transactions, writer.errors[:5])
