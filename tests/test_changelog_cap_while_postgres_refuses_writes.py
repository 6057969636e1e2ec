"""The changelog's cap ([sqlite] max_changelog_mb) holds whatever keeps Postgres from
taking the changes, not only a Postgres that cannot be reached: a failover that lands
syncd on a standby (or a database set default_transaction_read_only) answers every
connection and refuses every write, for as long as nobody fixes it. The application's
disk must come first then too (docs/operations.md, "Disk full": the changelog "cannot be
what fills the disk")."""

from __future__ import annotations

import sqlite3

import asyncpg

from tests.conftest import FAST_FAILOVER, write_config
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.sync import pg_rows, wait_caught_up


def changelog_entries(db) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT count(*) FROM _syncd_changelog").fetchone()[0]
    finally:
        conn.close()


async def test_the_changelog_cap_holds_while_postgres_takes_no_writes(tmp_path, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("CREATE TABLE wide (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO wide VALUES (0, 'a');")
    name = pg_dsn.rsplit("/", 1)[1]
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(db)}],
                       sections={**FAST_FAILOVER, "sqlite": {"max_changelog_mb": 0.25}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        await pg_rows(pg_dsn, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        await pg_rows(pg_dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        conn.execute("INSERT INTO wide VALUES (1, 'b')")  # work, so the pipeline meets the read-only target
        d.wait_log("Postgres takes no writes in this database")
        # 40,000 distinct keys: about 0.8 MB of changelog, over the 0.25 MB cap, nothing to compact.
        for start in range(2, 40_002, 2_000):
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO wide VALUES (?, 'x')", [(i,) for i in range(start, start + 2_000)])
            conn.execute("COMMIT")
        # The daemon measures the changelog every 5 s; 20 s is ample for it to act.
        try:
            wait_for(lambda: "CAPTURE SUSPENDED" in d.log(), 20, "capture suspended over the cap", d)
        except AssertionError:
            raise AssertionError(f"the changelog holds {changelog_entries(db)} entries, over [sqlite] "
                                 "max_changelog_mb (0.25 MB), and syncd neither compacted it nor suspended "
                                 "capture while Postgres refused its writes") from None
        admin = await asyncpg.connect(pg_dsn.rsplit("/", 1)[0] + "/postgres")
        try:
            await admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        finally:
            await admin.close()
        d.wait_log("capture resumed", timeout=60)
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=60)
        assert await compare_table(str(db), pg_dsn, "app", "wide") == []
        assert d.stop() == 0
    conn.close()
