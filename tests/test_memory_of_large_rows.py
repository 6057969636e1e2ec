"""The daemon's memory stays bounded whatever a row weighs. `[stream] batch_size` and
`snapshot_chunk_rows` count rows; a table of 1 MB attachments must not make a batch
(and the one read ahead beside it) or a load's chunk hold hundreds of megabytes: both
are also cut by the bytes of their values. The initial load of 300 such rows and an
UPDATE rewriting all of them in one transaction keep the daemon's peak RSS well under
what those rows weigh together, and every row arrives as SQLite holds it."""

from __future__ import annotations

import hashlib
import sqlite3

from tests.support.daemon import DaemonProcess, peak_rss_mb, run_cli
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


async def test_batches_cut_by_bytes_across_tables_lose_and_repeat_nothing(tmp_path, make_config, pg_dsn):
    """One transaction interleaving heavy rows of three tables (a rowid key, a TEXT key
    WITHOUT ROWID, a key of [sources.keys]) with light rows of a table of numbers only:
    the batches are cut by bytes inside each heavy table and between them, and every
    table arrives exactly as SQLite holds it."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE attachments (id INTEGER PRIMARY KEY, data BLOB)")
    conn.execute("CREATE TABLE notes (slug TEXT PRIMARY KEY, body TEXT) WITHOUT ROWID")
    conn.execute("CREATE TABLE docs (code TEXT, body TEXT)")  # keyed by [sources.keys]
    conn.execute("CREATE TABLE counts (id INTEGER PRIMARY KEY, n INTEGER)")
    cfg = make_config([{"name": "app", "path": str(db), "keys": {"docs": ["code"]}}],
                      sections={"verify": {"interval_seconds": 0}})
    tables = {"attachments": "id, md5(data)", "notes": "slug, md5(body)", "docs": "code, md5(body)",
              "counts": "id, n"}
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute("BEGIN")
        for i in range(1, 121):  # about 60 MB in all: several 16 MB batches
            conn.execute("INSERT INTO attachments VALUES (?, randomblob(?))", (i, 300_000))
            conn.execute("INSERT INTO counts VALUES (?, ?)", (i, i * i))
            conn.execute("INSERT INTO notes VALUES (?, ?)", (f"n{i:03d}", "x" * 100_000 + str(i)))
            conn.execute("INSERT INTO docs VALUES (?, ?)", (f"d{i:03d}", "y" * 100_000 + str(i)))
            conn.execute("UPDATE counts SET n = n + 1 WHERE id = ?", (max(1, i - 7),))
        conn.execute("COMMIT")
        await wait_caught_up(db, pg_dsn, "app", timeout=120, daemon=d)
        for table, cols in tables.items():
            order = cols.split(",")[0]
            sqlite_side = conn.execute(f"SELECT {cols.replace('md5(', 'length(')} FROM {table} ORDER BY {order}")
            pg_side = await pg_rows(pg_dsn, f"SELECT {cols.replace('md5(', 'octet_length(')} FROM app.{table} "
                                            f"ORDER BY {order}")
            assert pg_side == sqlite_side.fetchall(), table
        verify = run_cli(cfg, "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert d.stop() == 0
    conn.close()
