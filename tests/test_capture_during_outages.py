"""Capture never waits for Postgres: a schema change during an outage is met with
capture from the SQLite side at once, and a changelog that outgrows
[sqlite] max_changelog_mb is compacted, then capture suspended, so the application's
writes never fail because of syncd; once Postgres answers everything is made whole."""

from __future__ import annotations

import sqlite3
import time

from tests.conftest import FAST_FAILOVER, write_config
from tests.test_metrics import scrape
from tests.support.app import ShortTimeoutWriter
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.pgcluster import free_port
from tests.support.sync import changelog_max, wait_caught_up


def triggers_on(db, table: str) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? "
                                           "AND name LIKE '\\_syncd\\_%' ESCAPE '\\'", (table,))}
    finally:
        conn.close()


async def test_schema_changes_during_an_outage_are_captured_at_once(outage, tmp_path, pg_dsn):
    proxy, dsn = outage
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO items VALUES (1, 'a');")
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}], sections=FAST_FAILOVER)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        proxy.refuse()
        # An idle pipeline asks nothing of Postgres: a change makes it notice the outage.
        conn.execute("INSERT INTO items VALUES (2, 'b')")
        d.wait_log("Postgres unreachable")
        conn.executescript("""
            CREATE TABLE late (id INTEGER PRIMARY KEY, v TEXT);
            BEGIN;
            CREATE TABLE new_items (id INTEGER PRIMARY KEY, v TEXT, extra TEXT);
            INSERT INTO new_items (id, v) SELECT id, v FROM items;
            DROP TABLE items;
            ALTER TABLE new_items RENAME TO items;
            COMMIT;
        """)
        wait_for(lambda: len(triggers_on(db, "late")) >= 4 and len(triggers_on(db, "items")) >= 4, 30,
                 "capture on the new and the rebuilt table while Postgres is away", d)
        conn.execute("INSERT INTO late VALUES (1, 'written during the outage')")
        conn.execute("UPDATE items SET extra = 'also during the outage'")
        assert changelog_max(db) > 0
        proxy.heal()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        for table in ("late", "items"):
            assert await compare_table(str(db), pg_dsn, "app", table) == [], table
        assert d.stop() == 0


def suspended_gauge(port: int) -> float | None:
    try:
        return scrape(port).get('syncd_capture_suspended{source="app"}')
    except OSError:  # not listening yet
        return None


async def test_a_changelog_over_its_cap_is_compacted_then_capture_suspended(outage, tmp_path, pg_dsn):
    proxy, dsn = outage
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("CREATE TABLE hot (id INTEGER PRIMARY KEY, n INTEGER);"
                       "CREATE TABLE wide (id INTEGER PRIMARY KEY, v TEXT);"
                       "INSERT INTO hot VALUES (1, 0);")
    cap_mb = 0.25
    port = free_port()
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}],
                       metrics_listen=f"127.0.0.1:{port}",
                       sections={**FAST_FAILOVER, "sqlite": {"max_changelog_mb": cap_mb}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        proxy.refuse()
        conn.execute("UPDATE hot SET n = -1 WHERE id = 1")  # work, so the idle pipeline asks Postgres
        d.wait_log("Postgres unreachable")
        # One key changed over and over: compaction alone brings it back under the cap.
        for start in range(0, 20_000, 100):  # 100 single-row UPDATEs per transaction: 20,000 entries
            conn.execute("BEGIN")
            for i in range(start, start + 100):
                conn.execute("UPDATE hot SET n = ? WHERE id = 1", (i,))
            conn.execute("COMMIT")
        d.wait_log("kept one entry per key", timeout=60)
        assert "CAPTURE SUSPENDED" not in d.log()
        assert changelog_max(db) > 0
        # Many distinct keys: nothing to compact, so capture is suspended; the
        # application's writes go on, none fails. Written at an application's pace, not
        # flat out: the daemon measures the changelog every few seconds, and every row
        # written before it does is one more to load and compare once Postgres is back.
        failures = 0
        deadline = time.monotonic() + 60
        i = 0
        while "CAPTURE SUSPENDED" not in d.log():
            assert time.monotonic() < deadline, d.log()[-3000:]
            try:
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO wide VALUES (?, ?)", [(i + j, "x" * 20) for j in range(500)])
                conn.execute("COMMIT")
            except sqlite3.Error:
                failures += 1
                conn.execute("ROLLBACK")
            i += 500
            time.sleep(0.02)
        for _ in range(20):  # after the suspension the application writes as if syncd were not there
            conn.execute("INSERT INTO wide VALUES (?, 'after')", (i,))
            i += 1
        assert failures == 0
        assert triggers_on(db, "wide") == set()
        status = run_cli(cfg, "status")
        assert status.returncode == 2 and "capture suspended since" in status.stdout, status.stdout
        assert scrape(port)['syncd_capture_suspended{source="app"}'] == 1
        assert d.stop() == 0
    # Restarted while the file is suspended and Postgres still away: the gauge (and the
    # SyncdCaptureSuspended alert on it) still says so.
    with DaemonProcess(cfg, tmp_path / "restarted.log") as d:
        wait_for(lambda: suspended_gauge(port) == 1, 30, "the restarted daemon's gauge to say suspended", d)
        proxy.heal()
        d.wait_log("capture resumed")
        assert scrape(port)['syncd_capture_suspended{source="app"}'] == 0
        report = run_cli(cfg, "report")  # the suspension stays in the dual-write window's history
        assert "capture was suspended to protect the disk" in report.stdout
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        for table in ("hot", "wide"):
            assert await compare_table(str(db), pg_dsn, "app", table) == [], table
        assert len(triggers_on(db, "wide")) >= 4
        assert run_cli(cfg, "status").returncode in (0, 1)
        assert d.stop() == 0



def applied_entries_left(db, applied: int) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM _syncd_changelog WHERE seq <= ?", (applied,)).fetchone()[0]
    finally:
        conn.close()


async def applied_not_pruned(cfg, tmp_path, db, pg_dsn, writes, conn) -> int:
    """The daemon applies `writes` (statement, parameters), one commit each, in several
    batches, and stops before the next prune (10 s on) would remove their entries: the
    changelog position they end at, its entries still in the file."""
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        for sql, params in writes:
            conn.execute(sql, params)
            time.sleep(0.02)
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    applied = changelog_max(db)
    assert applied_entries_left(db, applied) > 1
    return applied


async def test_a_daemon_started_during_an_outage_compacts_no_change_postgres_may_hold(outage, tmp_path, pg_dsn):
    """Restarted while Postgres is away (a reboot, an upgrade), the daemon does not know
    how far Postgres got: entries it applied, not yet pruned, are the proof that the
    file is the one Postgres followed. Compacted with the rest, they were not there when
    Postgres answered: the file was said to have been restored or replaced, and every
    table was snapshotted again."""
    proxy, dsn = outage
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("CREATE TABLE hot (id INTEGER PRIMARY KEY, n INTEGER); INSERT INTO hot VALUES (1, 0);")
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}],
                       sections={**FAST_FAILOVER, "sqlite": {"max_changelog_mb": 0.25}})
    applied = await applied_not_pruned(cfg, tmp_path, db, pg_dsn, [
        ("UPDATE hot SET n = ? WHERE id = 1", (i,)) for i in range(20)], conn)
    proxy.refuse()
    with DaemonProcess(cfg, tmp_path / "restarted.log") as d:
        d.wait_log("Postgres unreachable")
        for start in range(0, 20_000, 100):  # one key over and over: compaction brings it under the cap
            conn.execute("BEGIN")
            for i in range(start, start + 100):
                conn.execute("UPDATE hot SET n = ? WHERE id = 1", (i,))
            conn.execute("COMMIT")
        d.wait_log("kept one entry per key", timeout=60)
        assert applied_entries_left(db, applied) > 1
        proxy.heal()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await compare_table(str(db), pg_dsn, "app", "hot") == []
        log = d.own_log()
        assert "re-snapshotting" not in log and "snapshot started" not in log, log[-3000:]
        assert d.stop() == 0
    conn.close()


async def test_a_suspension_by_a_daemon_started_during_an_outage_is_no_file_restored(outage, tmp_path, pg_dsn):
    """Suspended by a daemon started while Postgres is away, capture deletes the queued
    entries, those Postgres holds (applied, not yet pruned) with the rest: the daemon
    cannot tell them apart without Postgres, and every table is snapshotted again anyway.
    Once Postgres answered, the file was also said to have been restored or replaced."""
    proxy, dsn = outage
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("CREATE TABLE wide (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO wide VALUES (0, 'a');")
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}],
                       sections={**FAST_FAILOVER, "sqlite": {"max_changelog_mb": 0.25}})
    await applied_not_pruned(cfg, tmp_path, db, pg_dsn, [
        ("INSERT INTO wide VALUES (?, 'b')", (i,)) for i in range(1, 21)], conn)
    proxy.refuse()
    with DaemonProcess(cfg, tmp_path / "restarted.log") as d:
        d.wait_log("Postgres unreachable")
        for start in range(100, 20_100, 2_000):  # distinct keys: nothing to compact
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO wide VALUES (?, 'x')", [(i,) for i in range(start, start + 2_000)])
            conn.execute("COMMIT")
        d.wait_log("CAPTURE SUSPENDED", timeout=60)
        proxy.heal()
        d.wait_log("capture resumed")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await compare_table(str(db), pg_dsn, "app", "wide") == []
        log = d.own_log()
        assert "restored or replaced" not in log, log[-3000:]
        assert d.stop() == 0
    conn.close()

async def test_suspending_capture_never_holds_the_writers_off(outage, tmp_path, pg_dsn):
    """Suspension deletes the unapplied entries in short windows, after one short
    transaction that drops the triggers: at the default cap of a gigabyte one DELETE
    of them all held the file's write lock for seconds. Here 400,000 entries with
    200-byte keys over a 30 MB cap, and a writer whose busy_timeout is a quarter of a
    second (one DELETE held it off about as long) sees no lock error."""
    proxy, dsn = outage
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")  # a reader never holds a WAL writer off: only a write lock can
    conn.executescript("CREATE TABLE notes (k TEXT PRIMARY KEY, v INTEGER);"
                       "CREATE TABLE hits (id INTEGER PRIMARY KEY, v TEXT);")
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}],
                       sections={**FAST_FAILOVER, "sqlite": {"max_changelog_mb": 30}})
    writer = ShortTimeoutWriter(db, timeout=0.25, pause=0.01)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        proxy.refuse()
        conn.execute("INSERT INTO hits(v) VALUES ('work')")  # the idle pipeline asks Postgres
        d.wait_log("Postgres unreachable")
        pad = "k" * 200
        conn.execute("BEGIN")  # one transaction: the cap is crossed once every entry is in
        conn.executemany("INSERT INTO notes VALUES (?, ?)", ((f"{i}{pad}", i) for i in range(400_000)))
        conn.execute("COMMIT")
        writer.start()
        try:
            wait_for(lambda: "CAPTURE SUSPENDED" in d.log(), 120, "the suspension", d)
        finally:
            writer.stop.set()
            writer.join(30)
        left = sqlite3.connect(db)
        assert left.execute("SELECT count(*) FROM _syncd_changelog").fetchone()[0] < 100  # 400,000 were there
        left.close()
        assert d.stop() == 0
    conn.close()
    assert writer.transactions > 50 and writer.errors == [], (writer.transactions, writer.errors[:5])


def changelog_gauge(port: int) -> float | None:
    try:
        return scrape(port).get('syncd_changelog_bytes{source="app"}')
    except OSError:
        return None


async def test_measuring_a_long_changelog_during_an_outage_never_holds_the_writers_off(outage, tmp_path, pg_dsn):
    """While Postgres is away the daemon measures the changelog every few seconds. In a
    rollback-journal file a long one is sized from its first and last positions, not
    walked, since a read holds the application's commits back while it runs; but those
    two positions were read in one statement, which SQLite answers by walking every
    entry: 10 million of them held a writer with a half-second busy_timeout off."""
    proxy, dsn = outage
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = delete")
    conn.execute("CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER)")
    conn.execute("CREATE TABLE hits (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO counters VALUES (?, 0)", ((i,) for i in range(1, 1001)))
    port = free_port()
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}],
                       metrics_listen=f"127.0.0.1:{port}", sections=FAST_FAILOVER)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        proxy.refuse()
        conn.execute("UPDATE counters SET n = -1 WHERE id = 1")  # work, so the idle pipeline asks Postgres
        d.wait_log("Postgres unreachable")
        conn.execute("BEGIN")  # the application goes on writing: 10 million changes wait
        for _ in range(10_000):
            conn.execute("UPDATE counters SET n = n + 1")
        conn.execute("COMMIT")
        writer = ShortTimeoutWriter(db, timeout=0.5)  # its own rows are captured: the changelog moves
        writer.start()
        try:
            seen = [changelog_gauge(port)]
            for _ in range(2):  # two measurements since the writer started: one whole one beside it
                wait_for(lambda: changelog_gauge(port) not in seen, 60, "the changelog measured again", d)
                seen.append(changelog_gauge(port))
        finally:
            writer.stop.set()
            writer.join(30)
        assert seen[-1] > 100 * 1024 * 1024, seen
        assert d.stop() == 0
    assert writer.transactions > 10 and writer.errors == [], (writer.transactions, writer.errors[:5])


async def test_a_batch_whose_commit_reply_was_lost_is_not_compacted_away(outage, tmp_path, pg_dsn):
    """Postgres committed a batch and went away before its reply came: the daemon's
    checkpoint is short of Postgres's. Compacted past the daemon's checkpoint, the batch's
    entries were not there when Postgres answered: the file was said to have been restored
    or replaced, and every table was snapshotted again."""
    proxy, dsn = outage
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("CREATE TABLE hot (id INTEGER PRIMARY KEY, n INTEGER); INSERT INTO hot VALUES (1, 0);")
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}],
                       sections={**FAST_FAILOVER, "sqlite": {"max_changelog_mb": 0.25}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        proxy.lose_reply_after(b"applied_batches(source, after_seq", b"COMMIT", refuse_after=True)
        for i in range(5):
            conn.execute("UPDATE hot SET n = ? WHERE id = 1", (i,))
        wait_for(proxy.reply_lost.is_set, 30, "a batch's commit whose reply is lost", d)
        proxy.refuse()  # Postgres gone: the daemon's other connections too (its lock's, the pool's)
        d.wait_log("Postgres unreachable")
        for start in range(0, 20_000, 100):  # one key over and over: compaction brings it under the cap
            conn.execute("BEGIN")
            for i in range(start, start + 100):
                conn.execute("UPDATE hot SET n = ? WHERE id = 1", (i,))
            conn.execute("COMMIT")
        d.wait_log("kept one entry per key", timeout=60)
        proxy.heal()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await compare_table(str(db), pg_dsn, "app", "hot") == []
        log = d.own_log()
        assert "restored or replaced" not in log and log.count("snapshot started") == 1, log[-3000:]
        assert d.stop() == 0
    conn.close()
