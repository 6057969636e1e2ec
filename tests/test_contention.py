"""Application writers with a normal busy_timeout never see "database is locked"
because of syncd, in WAL and in rollback-journal mode; a long application write
transaction makes syncd wait, not fail."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest

from tests.support.app import ShortTimeoutWriter, Writer, create_items, heavy_file
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, pg_rows, wait_caught_up
from tests.support.verifying import verify
from tests.support.way_back import backup_and_config, cut_over, wait_back


async def counters_copied(tmp_path, make_config, pg_dsn: str, note: bool = True):
    """A rollback-journal file of 1,000 `counters` rows, copied into Postgres, the daemon
    stopped; `hits`, left out of the source, for a writer. (file, connection, config)"""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = delete")
    cols, values = (", note TEXT", ", 'x'") if note else ("", "")
    conn.execute(f"CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER{cols})")
    conn.execute("CREATE TABLE hits (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany(f"INSERT INTO counters VALUES (?, 0{values})", ((i,) for i in range(1, 1001)))
    cfg = make_config([{"name": "app", "path": str(db), "exclude": ["hits"]}],
                      sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    return db, conn, cfg


def update_every_row(conn: sqlite3.Connection, rounds: int) -> None:
    """A backlog of `rounds` x 1,000 changes, in one transaction."""
    conn.execute("BEGIN")
    for _ in range(rounds):
        conn.execute("UPDATE counters SET n = n + 1")
    conn.execute("COMMIT")


@pytest.mark.parametrize("journal", ["wal", "delete"])
async def test_no_lock_errors_for_the_application(tmp_path, make_config, pg_dsn, journal):
    db = tmp_path / "app.db"
    create_items(db, rows=50_000, journal=journal)
    cfg = make_config([{"name": "app", "path": str(db)}],
                      sections={"stream": {"snapshot_chunk_rows": 2000}, "sqlite": {"prune_window": 200}})
    # A busy but not saturated application, for 5 s (the first load, then streaming and
    # pruning): rollback-journal commits cost several fsyncs, and past saturation
    # SQLite's busy handler starves writers by itself.
    writers = [Writer(db, seconds=5, seed=s, rate=40) for s in range(3)]
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        results = [w.result() for w in writers]
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        log = d.log()
    assert sum(r["transactions"] for r in results) > 300
    assert [r["lock_errors"] for r in results] == [0, 0, 0], [r["errors"] for r in results]
    assert "ERROR" not in log
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


@pytest.mark.parametrize("journal", ["wal", "delete"])
async def test_long_application_transaction_makes_syncd_wait(tmp_path, make_config, pg_dsn, journal):
    db = tmp_path / "app.db"
    create_items(db, rows=1000, journal=journal)
    # syncd's reads give up waiting after half a second here: the transaction outlasts several
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"sqlite": {"read_busy_timeout_ms": 500}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)

        def long_transaction():
            conn = sqlite3.connect(db, timeout=5, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")  # the strongest lock an application can hold
            for i in range(20):
                conn.execute("UPDATE items SET n = n + 1 WHERE id = ?", (i + 1,))
            time.sleep(3)
            conn.execute("COMMIT")

        t = threading.Thread(target=long_transaction)
        t.start()
        time.sleep(1)
        assert d.alive()
        t.join()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        assert "event=failing" not in d.log()
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


def test_a_write_lock_held_long_is_logged(tmp_path, caplog):
    """Should syncd ever hold a file's write lock past a second, its log says for how
    long and doing what: the first thing to read when an application saw a lock error."""
    from syncd.sqlite import capture

    db = tmp_path / "app.db"
    create_items(db, rows=10)
    conn = sqlite3.connect(db, isolation_level=None)

    def slow_work(c):
        c.execute("UPDATE items SET n = n + 1 WHERE id = 1")
        time.sleep(capture.SLOW_WRITE_SECONDS + 0.2)

    with caplog.at_level("WARNING", logger="syncd.sqlite.capture"):
        capture.write_transaction(conn, lambda c: c.execute("SELECT 1"), busy_timeout_ms=100)
        assert caplog.records == []
        capture.write_transaction(conn, slow_work, busy_timeout_ms=100)
    [record] = caplog.records
    assert str(db) in record.getMessage() and "slow_work" in record.getMessage()
    assert "held the write lock" in record.getMessage()

    def slow_and_failing(c):  # rolled back: the writers waited all the same
        slow_work(c)
        raise ValueError("no")

    caplog.clear()
    with caplog.at_level("WARNING", logger="syncd.sqlite.capture"), pytest.raises(ValueError):
        capture.write_transaction(conn, slow_and_failing, busy_timeout_ms=100)
    [record] = caplog.records
    assert "slow_and_failing" in record.getMessage()
    assert conn.execute("SELECT n FROM items WHERE id = 1").fetchone()[0] == 2  # the first one's, not the second's


async def test_the_first_load_of_heavy_rows_never_holds_a_rollback_journal_writer_off(tmp_path, make_config,
                                                                                      pg_dsn):
    """In rollback-journal mode each chunk of a table's first load is read in a
    transaction of its own, which holds every writer back: the chunk's rows follow how
    long a read takes (0.3 s at most), where 30,000 rows of 8 KB in one
    read (a chunk holds up to 50,000) held a writer with a half-second busy_timeout off past it."""
    db = tmp_path / "app.db"
    heavy_file(db, "delete", rows=30_000, size=8_000)
    cfg = make_config([{"name": "app", "path": str(db)}])
    writer = ShortTimeoutWriter(db, timeout=0.5)
    writer.start()
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=240)
            assert d.stop() == 0
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.transactions > 20 and writer.errors == [], (writer.transactions, writer.errors[:5])
    assert await compare_table(str(db), pg_dsn, "app", "docs") == []


async def test_the_way_back_writing_heavy_rows_never_holds_a_writer_off(tmp_path, make_config, pg_dsn):
    """After a cutover syncd writes Postgres's changes into the file, a batch per write
    transaction, which holds every other writer back (in WAL mode too): a batch's rows
    follow how long a write takes, where 5,000 rows of 16 KB in one transaction held
    the writer of a table the freeze leaves writable (one the source does not carry)
    past a 0.5 s busy_timeout. Batches written back to back, with only the next read
    from Postgres between them, left gaps shorter than the writer's busy handler sleeps
    (up to 100 ms): it missed them now and then and failed; syncd steps aside after
    each batch, as between a table's copies."""
    db = tmp_path / "app.db"
    heavy_file(db, "wal", rows=6_000, size=16_000)
    cfg = backup_and_config(make_config, tmp_path, db, [{"name": "app", "path": str(db), "exclude": ["hits"]}])
    writer = ShortTimeoutWriter(db, timeout=0.5)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        writer.start()
        try:
            await pg_rows(pg_dsn, "UPDATE app.docs SET n = n + 1")  # the application, on Postgres now
            await wait_back(cfg, db, pg_dsn, daemon=d, timeout=180)
        finally:
            writer.stop.set()
            writer.join(30)
        assert d.stop() == 0
    assert writer.transactions > 10 and writer.errors == [], (writer.transactions, writer.errors[:5])


async def test_verifying_heavy_rows_never_holds_a_rollback_journal_writer_off(tmp_path, make_config, pg_dsn):
    """`syncd verify` hashes a chunk's rows cell by cell under one read lock while that
    lock is short: a chunk of 30,000 rows of 16 KB held a writer with a half-second
    busy_timeout off past it in rollback-journal mode (the daemon's check of 10,000,
    the default [verify] chunk_rows, did too while it streamed). A read goes on in the
    next transaction once it has held the file 0.3 s, whatever the chunk's size."""
    db = tmp_path / "app.db"
    heavy_file(db, "delete", rows=30_000, size=16_000)
    cfg = make_config([{"name": "app", "path": str(db), "exclude": ["hits"]}],
                      sections={"verify": {"interval_seconds": 0, "chunk_rows": 50_000}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=240)
        assert d.stop() == 0
    writer = ShortTimeoutWriter(db, timeout=0.5)
    writer.start()
    try:
        done = verify(cfg, "--wait", "1")  # no daemon applies the backlog: waiting longer shows nothing more
    finally:
        writer.stop.set()
        writer.join(30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 of 1 table(s) equal" in done.stdout, done.stdout
    assert writer.transactions > 5 and writer.errors == [], (writer.transactions, writer.errors[:5])


async def test_a_file_switched_to_a_rollback_journal_while_syncd_had_it_closed_is_loaded_a_chunk_at_a_time(
        tmp_path, make_config, pg_dsn):
    """A WAL file's table waits, held by its audit, while syncd gives the idle file's
    connection back. The application switches the file to a rollback journal meanwhile
    (it can only then) and fixes the value: the load that follows reads a chunk per
    transaction, as in any rollback-journal file, not the whole table in one read that
    holds every writer off until it ends."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, n INTEGER, s TEXT)")
    conn.execute("CREATE TABLE hits (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("BEGIN")  # 600k rows: loaded in one read, they hold the writer off for seconds
    conn.executemany("INSERT INTO big VALUES (?, ?, ?)", ((i, i, f"row {i} {'z' * 60}") for i in range(1, 600_001)))
    conn.execute("UPDATE big SET n = 'abc' WHERE id = 7")  # no bigint: the audit holds the table
    conn.execute("COMMIT")
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db)}],
                      sections={"stream": {"held_table_retry_seconds": 2}, "sqlite": {"idle_close_seconds": 0.3},
                                "verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("table=big event=table_held", timeout=120)
        app = sqlite3.connect(db, isolation_level=None, timeout=0.05)
        deadline = time.monotonic() + 60
        while True:  # refused while syncd has the WAL file open
            try:
                if app.execute("PRAGMA journal_mode=delete").fetchone()[0] == "delete":
                    break
            except sqlite3.OperationalError:
                pass
            assert time.monotonic() < deadline, "syncd never gave the idle file's connection back"
            time.sleep(0.02)
        app.execute("UPDATE big SET n = 7 WHERE id = 7")
        app.close()
        writer = ShortTimeoutWriter(db, timeout=0.5)
        writer.start()
        try:
            d.wait_log("table=big event=snapshot_finished", timeout=180)
        finally:
            writer.stop.set()
            writer.join(30)
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=120)
        assert d.stop() == 0
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert writer.transactions > 5 and writer.errors == [], (writer.transactions, writer.errors[:5])
    assert await compare_table(str(db), pg_dsn, "app", "big") == []


async def test_the_cutover_never_holds_a_rollback_journal_writer_of_a_table_it_leaves_writable_off(
        tmp_path, make_config, pg_dsn):
    """The cutover reads how the file spells each date column's values before it types
    the column in Postgres. The file is frozen then, but not for a table the source does
    not carry: its application writes on. In rollback-journal mode each of those reads
    holds that writer back for as long as it runs, and checking every value of a column
    in one statement (here 20,000 rows of 16 KB on 512-byte pages, whose date sits past
    each row's text) held a writer with a half-second busy_timeout off past it."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA page_size = 512")
    conn.execute("PRAGMA journal_mode = delete")
    conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT, at DATETIME)")
    conn.execute("CREATE TABLE hits (id INTEGER PRIMARY KEY, v TEXT)")
    pad = "x" * 16_000
    conn.executemany("INSERT INTO docs VALUES (?, ?, ?)",
                     ((i, f"{i}{pad}", f"2024-01-{1 + i % 28:02d} 10:{i % 60:02d}:00") for i in range(1, 20_001)))
    conn.commit()
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db, [{"name": "app", "path": str(db), "exclude": ["hits"]}])
    writer = ShortTimeoutWriter(db, timeout=0.5)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=240)
        writer.start()
        try:
            await cut_over(cfg, db, pg_dsn, daemon=d)
        finally:
            writer.stop.set()
            writer.join(30)
        assert d.stop() == 0
    assert writer.transactions > 10 and writer.errors == [], (writer.transactions, writer.errors[:5])
    assert (await pg_rows(pg_dsn, "SELECT data_type FROM information_schema.columns WHERE table_schema = 'app' "
                                  "AND table_name = 'docs' AND column_name = 'at'"))[0][0].startswith("timestamp")


async def test_following_a_schema_change_behind_a_long_backlog_never_holds_a_rollback_journal_writer_off(
        tmp_path, make_config, pg_dsn):
    """After the application changes its schema, syncd compares a sample of each table's
    rows with Postgres, leaving out the rows changed since Postgres last saw them, which
    it finds in the changelog. Behind a long backlog (here 10 million changes of a
    thousand busy rows, made while the daemon was stopped) that read of the changelog in
    one statement held a rollback-journal writer with a half-second busy_timeout off."""
    db, conn, cfg = await counters_copied(tmp_path, make_config, pg_dsn)
    [(applied,)] = await pg_rows(pg_dsn, "SELECT applied_seq FROM syncd.sources WHERE source = 'app'")
    update_every_row(conn, 10_000)
    conn.execute("CREATE INDEX counters_n ON counters (n)")
    conn.close()
    writer = ShortTimeoutWriter(db, timeout=0.5)
    writer.start()
    try:
        with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
            async def streaming_again() -> bool:
                return (await pg_rows(pg_dsn, "SELECT applied_seq FROM syncd.sources WHERE source = 'app'"))[0][0] \
                    > applied + 100_000

            await eventually(streaming_again, 180, "the backlog streaming after the schema change", d)
            assert d.stop() == 0
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.transactions > 10 and writer.errors == [], (writer.transactions, writer.errors[:5])


async def test_verifying_behind_a_long_backlog_never_holds_a_rollback_journal_writer_off(tmp_path, make_config,
                                                                                         pg_dsn):
    """`syncd verify` takes a table's row totals at one checkpoint, with what the
    changelog holds past it read in the same transaction: the end of the changelog, how
    many entries lie past the checkpoint and which keys they name. Behind a long backlog
    (here 10 million changes of a thousand busy rows, made while the daemon was stopped)
    reading those took one statement over every entry, and held a rollback-journal
    writer with a half-second busy_timeout off."""
    db, conn, cfg = await counters_copied(tmp_path, make_config, pg_dsn)
    update_every_row(conn, 10_000)
    conn.close()
    writer = ShortTimeoutWriter(db, timeout=0.5)
    writer.start()
    try:
        done = verify(cfg, "--wait", "1")  # no daemon applies the backlog: waiting longer shows nothing more
    finally:
        writer.stop.set()
        writer.join(30)
    assert "not equal" not in done.stdout, done.stdout  # rows in flight are pending, not different
    assert writer.transactions > 10 and writer.errors == [], (writer.transactions, writer.errors[:5])


async def test_reporting_behind_a_long_backlog_never_holds_a_rollback_journal_writer_off(tmp_path, make_config,
                                                                                         pg_dsn):
    """`syncd report` (and the status page, which measures the same facts) counts each
    table's rows with the changes on their way in one read transaction, to tell a count
    the changes account for from a real difference. Behind a long backlog (10 million
    changes of a thousand busy rows, made while the daemon was stopped) listing those
    changes walked every entry inside that read, and held a rollback-journal writer with
    a half-second busy_timeout off; so did counting the entries past the checkpoint."""
    db, conn, cfg = await counters_copied(tmp_path, make_config, pg_dsn)
    update_every_row(conn, 10_000)
    conn.close()
    writer = ShortTimeoutWriter(db, timeout=0.5)
    writer.start()
    try:
        done = run_cli(cfg, "report", "--format", "json")
    finally:
        writer.stop.set()
        writer.join(30)
    assert done.returncode in (0, 1) and "counters" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert writer.transactions > 10 and writer.errors == [], (writer.transactions, writer.errors[:5])


async def test_status_of_a_changelog_at_its_cap_never_holds_a_rollback_journal_writer_off(tmp_path, make_config,
                                                                                          pg_dsn):
    """`syncd status` (a monitoring check, run every minute) counts the changes waiting in
    each file. A changelog may grow to [sqlite] max_changelog_mb, a gigabyte by default,
    about 25 million entries, while the daemon is stopped or Postgres away: one count over
    all of them held a rollback-journal writer with a half-second busy_timeout off."""
    db, conn, cfg = await counters_copied(tmp_path, make_config, pg_dsn, note=False)
    update_every_row(conn, 25_000)
    conn.close()
    writer = ShortTimeoutWriter(db, timeout=0.5)
    writer.start()
    try:
        runs = [run_cli(cfg, "status", "--json") for _ in range(3)]
    finally:
        writer.stop.set()
        writer.join(30)
    assert all('"pending_changes": 25000000' in r.stdout for r in runs), runs[-1].stdout
    assert writer.transactions > 10 and writer.errors == [], (writer.transactions, writer.errors[:5])


async def test_counting_a_large_table_never_holds_a_rollback_journal_writer_off(tmp_path, make_config, pg_dsn):
    """A load starts by counting the table's rows, as a verification does: count(*) walks
    every page of the table, and 500,000 rows of 1 KB (half a gigabyte) in one read held a
    writer with a half-second busy_timeout off past it in rollback-journal mode. The rows
    are counted a window at a time there, each window its own read, as short as a chunk's."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = delete")
    conn.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, s TEXT)")
    conn.execute("CREATE TABLE hits (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500000) "
                 "INSERT INTO big SELECT i, printf('%.*c', 1000, 'z') FROM n")
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db), "exclude": ["hits"]}],
                      sections={"verify": {"interval_seconds": 0}})
    writer = ShortTimeoutWriter(db, timeout=0.5)
    writer.start()
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            d.wait_log("snapshot started: 500000 rows", timeout=120)
            time.sleep(1)
            assert d.stop() == 0
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.transactions > 20 and writer.errors == [], (writer.transactions, writer.errors[:5])


async def a_large_table_left_out(tmp_path, make_config, pg_dsn):
    """A rollback-journal file whose `docs` is copied into Postgres (the daemon stopped
    then) and whose `log`, 1,000,000 rows of one 512-byte page each, the source leaves
    out: counting `log` in one read takes past a 0.5 s busy_timeout. (file, config)"""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA page_size = 512")
    conn.execute("PRAGMA journal_mode = delete")
    conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("CREATE TABLE hits (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, line TEXT)")
    conn.executemany("INSERT INTO docs VALUES (?, 'x')", ((i,) for i in range(1, 101)))
    conn.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) "
                 "INSERT INTO log SELECT i, printf('%.*c', 400, 'z') FROM n")
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db), "exclude": ["hits", "log"]}],
                      sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    return db, cfg


async def test_reporting_a_large_table_left_out_never_holds_a_rollback_journal_writer_off(tmp_path, make_config,
                                                                                         pg_dsn):
    """`syncd report` says how many rows each table the source leaves out holds (what the
    application will not find in Postgres after the switch). Counted in one read, a
    left-out table of 1,000,000 rows held a rollback-journal writer with a 0.5 s
    busy_timeout off past it; it is counted a window of rows at a time, each window its
    own short read, as a carried table is."""
    db, cfg = await a_large_table_left_out(tmp_path, make_config, pg_dsn)
    writer = ShortTimeoutWriter(db, timeout=0.5)
    writer.start()
    try:
        done = run_cli(cfg, "report", "--format", "json")
    finally:
        writer.stop.set()
        writer.join(30)
    assert done.returncode in (0, 1) and "1000000" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert writer.transactions > 5 and writer.errors == [], (writer.transactions, writer.errors[:5])


async def a_large_table_made_while_stopped(tmp_path, make_config, pg_dsn):
    """A rollback-journal file whose `docs` was copied into Postgres with 100 rows, the
    daemon stopped, then 50 rows added to `docs` (on their way) and `events` made with
    1,000,000 rows of one 512-byte page each: counting those in one read takes past a
    0.5 s busy_timeout. (file, config)"""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA page_size = 512")
    conn.execute("PRAGMA journal_mode = delete")
    conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("CREATE TABLE hits (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO docs VALUES (?, 'x')", ((i,) for i in range(1, 101)))
    cfg = backup_and_config(make_config, tmp_path, db, [{"name": "app", "path": str(db), "exclude": ["hits"]}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    conn.executemany("INSERT INTO docs VALUES (?, 'x')", ((i,) for i in range(101, 151)))
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, line TEXT)")
    conn.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) "
                 "INSERT INTO events SELECT i, printf('%.*c', 400, 'z') FROM n")
    conn.close()
    return db, cfg

async def test_reporting_a_large_table_never_holds_a_rollback_journal_writer_off(tmp_path, make_config, pg_dsn):
    """`syncd report` (and the cutover's checklist, which reads the same facts) counts each
    table's rows with the changes on their way. Counted in one read, a table of 1,000,000
    rows held a rollback-journal writer with a 0.5 s busy_timeout off past it; the rows
    are counted a window at a time, each window its own short read, and the changes on
    their way, read after them, still account for the count."""
    db, cfg = await a_large_table_made_while_stopped(tmp_path, make_config, pg_dsn)
    writer = ShortTimeoutWriter(db, timeout=0.5)
    writer.start()
    try:
        done = run_cli(cfg, "report", "--format", "json")
    finally:
        writer.stop.set()
        writer.join(30)
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    tables = {t["table"]: t for s in json.loads(done.stdout)["sources"] for t in s["tables"]}
    assert (tables["docs"]["rows_sqlite"], tables["docs"]["rows_postgres"], tables["docs"]["counts_match"]) == \
        (150, 100, True), tables["docs"]
    assert tables["events"]["rows_sqlite"] == 1_000_000, tables["events"]
    assert writer.transactions > 5 and writer.errors == [], (writer.transactions, writer.errors[:5])


async def test_a_cutover_dry_run_counting_a_large_table_never_holds_a_rollback_journal_writer_off(
        tmp_path, make_config, pg_dsn):
    """`syncd cutover --dry-run` says how many rows the switch will verify and how many
    changes it will drain, the expected downtime, while the application writes on.
    Counted in one read per table, a table of 1,000,000 rows held a rollback-journal
    writer with a 0.5 s busy_timeout off past it; the rows are counted a window at a
    time, each window its own short read."""
    db, cfg = await a_large_table_made_while_stopped(tmp_path, make_config, pg_dsn)
    writer = ShortTimeoutWriter(db, timeout=0.5)
    writer.start()
    try:
        done = run_cli(cfg, "cutover", "--dry-run")
    finally:
        writer.stop.set()
        writer.join(30)
    assert "1000150 row(s) to verify, 50 change(s) to drain" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert writer.transactions > 5 and writer.errors == [], (writer.transactions, writer.errors[:5])
