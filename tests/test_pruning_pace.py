"""Pruning the changelog commits into the application's file, and an application
transaction that read before such a commit and writes after it fails at once with
SQLITE_BUSY, busy_timeout or not. So under a steady trickle of writes syncd prunes
seldom (every 10 s at most), and still prunes what is left once the writes stop (before an idle source closes its
file)."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from tests.support.daemon import DaemonProcess
from tests.support.sync import eventually, wait_caught_up

WRITING_SECONDS = 17  # two of the 10 s periods at most; a 5 s pace would fit four prunes


def make_app(db) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None, timeout=5)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE readings (id INTEGER PRIMARY KEY, v REAL)")
    return conn


def pruned_seq(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM _syncd_meta WHERE key = 'pruned_seq'").fetchone()
    return row[0] if row else None


async def test_a_steady_trickle_of_writes_sees_few_prunes(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    app = make_app(db)
    # a source idle for 2 s closes its file: what is left is pruned first, not 10 s on
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"sqlite": {"idle_close_seconds": 2}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        notes = [pruned_seq(app)]
        end = time.monotonic() + WRITING_SECONDS
        i = 0
        while time.monotonic() < end:
            i += 1
            app.execute("INSERT INTO readings VALUES (?, ?)", (i, i / 7))
            note = pruned_seq(app)
            if note != notes[-1]:
                notes.append(note)
            await asyncio.sleep(0.05)
        prunes = len(notes) - 1
        # 340 changes over 17 s: once at the first change, then every 10 s (2), never every
        # few seconds (4 at a 5 s pace, 9 at the old 2 s pace)
        assert 1 <= prunes <= 3, (prunes, notes)

        async def pruned() -> bool:  # all but the newest entry, which keeps max(seq) from moving back
            top = app.execute("SELECT max(seq) FROM _syncd_changelog").fetchone()[0]
            return pruned_seq(app) == str(top) and app.execute(
                "SELECT count(*) FROM _syncd_changelog WHERE seq < ?", (top,)).fetchone()[0] == 0

        await eventually(pruned, 30, "the changelog pruned to its last entry once the writes stopped", d)
