"""The daemon's memory stays bounded whatever a row weighs. `[stream] batch_size` and
`snapshot_chunk_rows` count rows; a table of 1 MB attachments must not make a batch
(and the one read ahead beside it) or a load's chunk hold hundreds of megabytes: both
are also cut by the bytes of their values. The initial load of 300 such rows and an
UPDATE rewriting all of them in one transaction keep the daemon's peak RSS well under
what those rows weigh together, and every row arrives as SQLite holds it."""

from __future__ import annotations

import hashlib
import sqlite3

from tests.support.daemon import DaemonProcess, peak_rss_mb
from tests.support.sync import pg_rows, wait_caught_up

ROWS = 300
SIZE = 1024 * 1024  # 300 x 1 MB: 300 MB of values in one table
PEAK_RSS_MB = 250  # a daemon holding every row at once (or twice) is far above this


def digests(conn: sqlite3.Connection) -> list[tuple]:
    return [(i, name, hashlib.md5(data).hexdigest())
            for i, name, data in conn.execute("SELECT id, name, data FROM attachments ORDER BY id")]


async def test_loading_and_streaming_large_rows_keeps_memory_bounded(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE attachments (id INTEGER PRIMARY KEY, name TEXT, data BLOB)")
    conn.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                 "INSERT INTO attachments SELECT i, 'file ' || i, randomblob(?) FROM n", (ROWS, SIZE))
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
    pg_digests = "SELECT id, name, md5(data) FROM app.attachments ORDER BY id"
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", timeout=120, daemon=d)
        loaded_peak = peak_rss_mb(d.pid)
        assert await pg_rows(pg_dsn, pg_digests) == digests(conn)

        conn.execute("UPDATE attachments SET data = randomblob(?), name = name || ' v2'", (SIZE,))  # one transaction
        await wait_caught_up(db, pg_dsn, "app", timeout=120, daemon=d)
        streamed_peak = peak_rss_mb(d.pid)
        assert await pg_rows(pg_dsn, pg_digests) == digests(conn)
        assert d.stop() == 0
    conn.close()
    peaks = f"peak RSS {loaded_peak:.0f} MB after the initial load, {streamed_peak:.0f} MB after the UPDATE's stream"
    assert loaded_peak < PEAK_RSS_MB and streamed_peak < PEAK_RSS_MB, peaks
