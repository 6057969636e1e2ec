"""The changelog's cap ([sqlite] max_changelog_mb) holds while Postgres is up but a table
is held: a held table keeps its queued changes for as long as the hold lasts (days,
if nobody fixes the row), and every write the application makes to it adds one more.
syncd keeps one entry per key of the held table's queue (the stream reads each key's
current row anyway), so the application's disk is not filled by syncd, and the table,
once fixed, resumes and ends equal to SQLite with nothing lost."""

from __future__ import annotations

import sqlite3

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.sync import pg_rows, table_states, wait_caught_up


def entries_of(db, tid_of: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT count(*) FROM _syncd_changelog WHERE tid = (SELECT tid FROM _syncd_tables "
                            "WHERE name = ?)", (tid_of,)).fetchone()[0]
    finally:
        conn.close()


async def test_a_held_tables_queue_is_compacted_under_the_cap_and_resumes_whole(tmp_path, make_config, pg_dsn):
    db = tmp_path / "a.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE companies (rank INTEGER PRIMARY KEY, name TEXT, employees INTEGER);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
    """)
    conn.executemany("INSERT INTO companies VALUES (?, ?, ?)", [(i, f"co{i}", i) for i in range(1, 21)])
    cfg = make_config([{"name": "a", "path": str(db)}], sections={"sqlite": {"max_changelog_mb": 0.25}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "a", daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE a.companies ADD CONSTRAINT small CHECK (employees < 1000) NOT VALID")
        conn.execute("INSERT INTO companies VALUES (100, 'big', 5000)")  # Postgres refuses it: the table is held
        wait_for(lambda: "table held" in d.log(), 30, "the hold", d)
        # 40,000 updates of 20 keys: about 0.7 MB of changelog, over the 0.25 MB cap.
        for n in range(20):
            conn.execute("BEGIN")
            conn.executemany("UPDATE companies SET employees = ?, name = ? WHERE rank = ?",
                             [((n * 2_000 + i) % 900, f"v{n}-{i}", 1 + i % 20) for i in range(2_000)])
            conn.execute("COMMIT")
        conn.execute("INSERT INTO notes VALUES (1, 'the other table streams on')")
        try:
            wait_for(lambda: entries_of(db, "companies") <= 21, 40, "the held table's queue compacted", d)
        except AssertionError:
            raise AssertionError(f"the held table keeps {entries_of(db, 'companies')} changelog entries, over "
                                 "[sqlite] max_changelog_mb (0.25 MB), while Postgres is up") from None
        wait_for(lambda: "kept one entry per key of the held table(s)" in d.log(), 10, "the compaction said", d)
        line = next(l for l in d.log().splitlines() if "of the held table(s)" in l)
        assert '"companies"' in line and "max_changelog_mb" in line, line
        assert (await table_states(pg_dsn, "a"))["companies"][0] == "held"
        await wait_caught_up(db, pg_dsn, "a", daemon=d, settled=("streaming", "held"))
        assert await compare_table(str(db), pg_dsn, "a", "notes") == []
        assert d.stop() == 0
    # The batches Postgres applied still prove the file is the one it followed: no re-snapshot.
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(db, pg_dsn, "a", daemon=d, settled=("streaming", "held"))
        await pg_rows(pg_dsn, "ALTER TABLE a.companies DROP CONSTRAINT small")  # fixed in Postgres
        await wait_caught_up(db, pg_dsn, "a", daemon=d, timeout=90)
        assert await compare_table(str(db), pg_dsn, "a", "companies") == []
        assert "capture_reset" not in d.log() and "re-snapshotting" not in d.log(), d.log()
        assert d.stop() == 0
    conn.close()


async def test_a_held_table_over_the_cap_is_said_loudly(tmp_path, make_config, pg_dsn):
    """Distinct keys cannot be compacted: syncd says the changelog is over the cap, naming
    the held table and what to do, in its log and in `syncd status`."""
    db = tmp_path / "a.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE companies (rank INTEGER PRIMARY KEY, name TEXT, employees INTEGER);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
        INSERT INTO companies VALUES (1, 'co1', 1);
    """)
    cfg = make_config([{"name": "a", "path": str(db)}], sections={"sqlite": {"max_changelog_mb": 0.25}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "a", daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE a.companies ADD CONSTRAINT small CHECK (employees < 1000) NOT VALID")
        conn.execute("INSERT INTO companies VALUES (2, 'big', 5000)")
        wait_for(lambda: "table held" in d.log(), 30, "the hold", d)
        for start in range(10, 40_010, 2_000):
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO companies VALUES (?, 'x', 1)", [(i,) for i in range(start, start + 2_000)])
            conn.execute("COMMIT")
        conn.execute("INSERT INTO notes VALUES (1, 'the other table streams on')")
        wait_for(lambda: "CHANGELOG OVER" in d.log(), 40, "the changelog said to be over the cap", d)
        line = next(l for l in d.log().splitlines() if "CHANGELOG OVER" in l)
        assert '"companies"' in line and "max_changelog_mb" in line, line
        out = run_cli(cfg, "status")
        assert "over [sqlite] max_changelog_mb" in out.stdout and '"companies"' in out.stdout, out.stdout
        await pg_rows(pg_dsn, "ALTER TABLE a.companies DROP CONSTRAINT small")
        await wait_caught_up(db, pg_dsn, "a", daemon=d, timeout=90)
        assert await compare_table(str(db), pg_dsn, "a", "companies") == []
        assert d.stop() == 0
    conn.close()
