"""Capture suspended to protect the disk ([sqlite] max_changelog_mb), then Postgres
answers for a moment and is gone again, as a flapping network or a restarting server
does: the suspension must still protect the disk. Whatever syncd had done towards
resuming capture when Postgres went away again, the changelog stays under its cap, and
once Postgres is back for good Postgres equals SQLite."""

from __future__ import annotations

import sqlite3

from syncd.sqlite.reader import changelog_bytes
from tests.conftest import FAST_FAILOVER, write_config
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.sync import wait_caught_up

CAP_MB = 0.25


def changelog_mb(db) -> float:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return changelog_bytes(conn) / 1048576
    finally:
        conn.close()


def write_distinct(conn, start: int, n: int) -> None:
    for first in range(start, start + n, 2_000):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO wide VALUES (?, 'x')", [(i,) for i in range(first, first + 2_000)])
        conn.execute("COMMIT")


async def test_a_suspension_holds_when_postgres_answers_for_a_moment_and_goes_again(outage, tmp_path, pg_dsn):
    proxy, dsn = outage
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("CREATE TABLE wide (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO wide VALUES (0, 'a');")
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}],
                       sections={**FAST_FAILOVER, "sqlite": {"max_changelog_mb": CAP_MB}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        proxy.refuse()
        conn.execute("INSERT INTO wide VALUES (1, 'b')")  # work, so the idle pipeline asks Postgres
        d.wait_log("Postgres unreachable")
        write_distinct(conn, 2, 40_000)  # about 0.8 MB of changelog, nothing to compact
        d.wait_log("CAPTURE SUSPENDED", timeout=30)
        # Postgres answers again, and is gone once syncd has told it of the suspension.
        proxy.lose_reply_after(b"capture_suspended", b"capture_suspended", refuse_after=True)
        proxy.heal()
        wait_for(proxy.reply_lost.is_set, 30, "Postgres answering for a moment", d)
        write_distinct(conn, 100_000, 40_000)  # another 0.8 MB worth of changes, Postgres away
        # The daemon measures the changelog every 5 s: 20 s is ample for it to act.
        try:
            wait_for(lambda: changelog_mb(db) <= CAP_MB, 20, "the changelog back under its cap", d)
        except AssertionError:
            raise AssertionError(
                f"the changelog holds {changelog_mb(db):.2f} MB, over [sqlite] max_changelog_mb ({CAP_MB} MB), "
                f"with Postgres away after a moment back: {d.log().count('CAPTURE SUSPENDED')} suspension(s), "
                f"{d.log().count('changelog_compacted')} compaction(s) logged") from None
        proxy.heal()
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=60)
        assert await compare_table(str(db), pg_dsn, "app", "wide") == []
        assert d.stop() == 0
    conn.close()
