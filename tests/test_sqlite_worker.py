"""syncd's SQLite workers: each a connection whose calls run one at a time and in order,
results and errors handed back to the awaiting task, on a few threads every worker
shares, so a thousand files need a handful of threads, not a thousand."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest

from syncd.sqlite.connection import THREADS, SourceFileError, SqliteWorker


def new_file(path):
    """A SQLite file with one empty table."""
    sqlite3.connect(path).execute("CREATE TABLE t (v)").connection.commit()
    return path


async def _no_extra_threads_left(timeout: float = 30) -> None:
    """Waits until the shared pool is back to its [sqlite] threads (those started for
    stuck calls end once idle)."""
    deadline = time.monotonic() + timeout
    while THREADS.threads > THREADS.size and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert THREADS.threads <= THREADS.size, f"{THREADS.threads} threads, [sqlite] threads {THREADS.size}"


async def test_results_and_errors_come_back_in_order(tmp_path):
    db = tmp_path / "app.db"
    sqlite3.connect(db).execute("CREATE TABLE t (id INTEGER PRIMARY KEY)").connection.commit()
    w = SqliteWorker(db, "order", 1000)
    try:
        assert await w.run(lambda c: c.execute("SELECT 41 + 1").fetchone()) == (42,)
        with pytest.raises(sqlite3.OperationalError, match="no such column: nope"):
            await w.run(lambda c: c.execute("SELECT nope FROM t").fetchall())
        # the worker survives an error, and its calls run one after another, in order
        running = []

        def call(c, i):
            running.append(i)
            assert len(running) == 1, "two calls of one worker at once"
            time.sleep(0.001)
            running.pop()
            return i

        assert await asyncio.gather(*(w.run(call, i) for i in range(20))) == list(range(20))
        # StopIteration cannot be set on a future: it arrives as a RuntimeError, never a hang
        with pytest.raises(RuntimeError, match="StopIteration"):
            await asyncio.wait_for(w.run(lambda c: next(iter(()))), 5)
    finally:
        await w.close()
        w.shutdown()


async def test_missing_file_is_a_clear_error(tmp_path):
    w = SqliteWorker(tmp_path / "absent.db", "absent", 1000)
    with pytest.raises(SourceFileError, match="absent.db does not exist"):
        await w.open()
    assert not (tmp_path / "absent.db").exists()
    w.shutdown()


async def test_shutdown_cancels_queued_calls(tmp_path):
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")  # a database, not an empty file
    conn.close()
    w = SqliteWorker(db, "shut", 1000)
    await w.open()
    started = threading.Event()

    def slow(_conn):
        started.set()
        time.sleep(0.3)
        return "done"

    first = asyncio.ensure_future(w.run(slow))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
    queued = asyncio.ensure_future(w.run(lambda c: "never"))
    await asyncio.sleep(0)
    w.shutdown()
    assert await first == "done"  # the call in hand finishes
    with pytest.raises(asyncio.CancelledError):
        await queued
    with pytest.raises(RuntimeError, match="shut down"):
        await w.run(lambda c: None)


async def test_a_thousand_workers_share_a_few_threads(tmp_path, monkeypatch):
    await _no_extra_threads_left()  # threads an earlier test's stuck calls started
    # Calls slowed only by a loaded machine must not count as stuck here (company for
    # stuck calls has its own test below): 0.2 s behind a thousand queued calls is not rare
    from syncd.sqlite import connection
    monkeypatch.setattr(connection, "STUCK_SECONDS", 60.0)
    workers = []
    for i in range(1000):
        db = tmp_path / f"t{i}.db"
        sqlite3.connect(db).execute("CREATE TABLE t (v)").connection.commit()
        workers.append(SqliteWorker(db, f"w{i}", 1000))
    try:
        got = await asyncio.gather(*(w.run(lambda c, i=i: (c.execute("SELECT ?", (i,)).fetchone()[0],
                                                           threading.get_ident()))
                                     for i, w in enumerate(workers)))
        assert [value for value, _ in got] == list(range(1000))
        assert 1 <= len({thread for _, thread in got}) <= THREADS.size
        # one slow worker does not hold the others up while threads are free
        blocker = asyncio.ensure_future(workers[0].run(lambda c: time.sleep(1.0)))
        await asyncio.sleep(0.05)
        t = time.monotonic()
        await asyncio.gather(*(w.run(lambda c: c.execute("SELECT 1").fetchone()) for w in workers[1:100]))
        assert time.monotonic() - t < 0.9
        await blocker
    finally:
        for w in workers:
            await w.close()
            w.shutdown()


async def test_an_empty_file_is_no_database(tmp_path):
    """A 0-byte file (a database not made yet, or one a truncating copy is replacing)
    is refused, named, and left as it is."""
    db = tmp_path / "app.db"
    db.write_bytes(b"")
    w = SqliteWorker(db, "empty", 1000)
    with pytest.raises(SourceFileError, match=r"is empty \(0 bytes\)"):
        await w.open()
    assert db.stat().st_size == 0


async def test_files_kept_locked_do_not_hold_up_the_others(tmp_path, monkeypatch):
    """Every thread waiting on a file its application keeps locked (the busy timeout):
    the pool starts more threads, so another file's call still runs at once; they end
    once idle."""
    from syncd.sqlite import connection

    monkeypatch.setattr(connection, "EXTRA_IDLE_SECONDS", 0.5)
    locked = []
    holders = []
    for i in range(THREADS.size + 2):
        db = tmp_path / f"locked{i}.db"
        setup = sqlite3.connect(db)
        setup.execute("CREATE TABLE t (v)")
        setup.commit()
        setup.close()
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # rollback-journal mode: no reader gets in
        holders.append(holder)
        locked.append(SqliteWorker(db, f"locked{i}", 2500))
    free_db = tmp_path / "free.db"
    sqlite3.connect(free_db).execute("CREATE TABLE t (v)").connection.commit()
    free = SqliteWorker(free_db, "free", 1000)
    try:
        waiting = [asyncio.ensure_future(w.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()))
                   for w in locked]
        await asyncio.sleep(0.5)  # every thread is now in a busy handler
        t = time.monotonic()
        assert await asyncio.wait_for(free.run(lambda c: c.execute("SELECT 7").fetchone()[0]), 10) == 7
        took = time.monotonic() - t
        assert took < 1.5, f"a free file's call waited {took:.2f} s behind locked ones"
        assert not any(f.done() for f in waiting), "a lock ended early: the test proves nothing"
        for h in holders:
            h.execute("COMMIT")
        assert [r for r in await asyncio.gather(*waiting)] == [(0,)] * len(locked)
        # the threads started for the stuck ones end once idle
        await _no_extra_threads_left(10)
    finally:
        for h in holders:
            h.close()
        for w in [*locked, free]:
            await w.close()
            w.shutdown()


async def test_threads_started_for_locked_files_end_while_other_files_keep_working(tmp_path, monkeypatch):
    """Once the locks are gone, the pool shrinks back to [sqlite] threads, also while
    the daemon keeps working (other files' polls and batches, about 50 calls a second,
    spread over every thread)."""
    from syncd.sqlite import connection

    monkeypatch.setattr(connection, "EXTRA_IDLE_SECONDS", 0.5)

    holders, locked = [], []
    for i in range(THREADS.size + 6):
        db = new_file(tmp_path / f"locked{i}.db")
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # rollback-journal mode: no reader gets in
        holders.append(holder)
        locked.append(SqliteWorker(db, f"locked{i}", 2000))
    busy = [SqliteWorker(new_file(tmp_path / f"busy{i}.db"), f"busy{i}", 1000) for i in range(10)]

    async def steady_work():
        i = 0
        while True:
            await busy[i % len(busy)].run(lambda c: c.execute("SELECT count(*) FROM t").fetchone())
            i += 1
            await asyncio.sleep(0.02)

    work = asyncio.ensure_future(steady_work())
    try:
        waiting = [asyncio.ensure_future(w.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()))
                   for w in locked]
        await asyncio.sleep(1.5)
        assert THREADS.threads > THREADS.size  # the pool grew for the stuck calls
        for h in holders:
            h.execute("COMMIT")
        await asyncio.gather(*waiting)
        await _no_extra_threads_left(10)
    finally:
        work.cancel()
        for h in holders:
            h.close()
        for w in [*locked, *busy]:
            await w.close()
            w.shutdown()


async def test_more_locked_files_than_any_fixed_number_of_threads(tmp_path):
    """However many files their applications keep locked, each waiting out its busy
    timeout on a thread, another file's call still runs at once: the pool keeps a thread
    for it beside every stuck one."""
    holders, locked = [], []
    for i in range(THREADS.size + 80):
        db = new_file(tmp_path / f"locked{i}.db")
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # rollback-journal mode: no reader gets in
        holders.append(holder)
        locked.append(SqliteWorker(db, f"locked{i}", 20_000))
    free = SqliteWorker(new_file(tmp_path / "free.db"), "free", 1000)
    try:
        waiting = [asyncio.ensure_future(w.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()))
                   for w in locked]
        deadline = time.monotonic() + 15
        while THREADS.threads < len(locked) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # the pool grows a thread at a time for the stuck calls
        for _ in range(3):
            t = time.monotonic()
            assert await asyncio.wait_for(free.run(lambda c: c.execute("SELECT 7").fetchone()[0]), 30) == 7
            took = time.monotonic() - t
            assert took < 1.5, f"a free file's call waited {took:.2f} s behind {len(locked)} locked ones"
        assert not any(f.done() for f in waiting), "a lock ended early: the test proves nothing"
        for h in holders:
            h.execute("COMMIT")
        assert [r for r in await asyncio.gather(*waiting)] == [(0,)] * len(locked)
    finally:
        for h in holders:
            h.close()
        for w in [*locked, free]:
            await w.close()
            w.shutdown()


async def test_a_deep_queue_behind_a_few_slow_calls_does_not_start_a_thread_per_file(tmp_path):
    """A fleet's first catch-up queues a call for every file; a few slow ones ahead of
    them (a large table read, a slow disk) make the pool grow, at most doubling while its
    threads all stay stuck, not by a thread for every file queued."""
    before = THREADS.threads
    slow = [SqliteWorker(new_file(tmp_path / f"slow{i}.db"), f"slow{i}", 1000)
            for i in range(max(before, THREADS.size))]
    quick = [SqliteWorker(new_file(tmp_path / f"quick{i}.db"), f"quick{i}", 1000) for i in range(300)]
    try:
        for w in [*slow, *quick]:
            await w.open()
        busy = [asyncio.ensure_future(w.run(lambda c: time.sleep(1.5))) for w in slow]
        await asyncio.sleep(0.05)
        calls = [asyncio.ensure_future(w.run(lambda c: (time.sleep(0.01), c.execute("SELECT 1").fetchone())[1]))
                 for w in quick]
        most = 0
        while not all(f.done() for f in calls):
            most = max(most, THREADS.threads)
            await asyncio.sleep(0.01)
        assert [f.result() for f in calls] == [(1,)] * len(quick)
        await asyncio.gather(*busy)
        assert most <= 2 * len(slow) + 1, f"{most} threads for {len(slow)} slow calls and {len(quick)} quick ones"
    finally:
        for w in [*slow, *quick]:
            await w.close()
            w.shutdown()


async def test_a_worker_bounds_its_writes_wait_for_the_write_lock(tmp_path):
    """While a worker's write_wait is set (its pipeline holds a Postgres connection),
    syncd's writes give up on a file its application keeps write-locked after that long,
    not after the write's own deadline; calls submitted without it keep that deadline."""
    from syncd.sqlite.capture import LockTimeout, wait_write_lock, write_transaction

    def write(conn, sql):
        return write_transaction(conn, lambda c: c.execute(sql), busy_timeout_ms=50, deadline_seconds=120)

    db = new_file(tmp_path / "app.db")
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("BEGIN IMMEDIATE")  # a write transaction: reads still work
    w = SqliteWorker(db, "bounded", 1000)
    try:
        assert await w.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()) == (0,)
        w.write_wait = 0.3
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            await w.run(write, "INSERT INTO t VALUES (1)")
        assert time.monotonic() - started < 5
        w.write_wait = None
        with pytest.raises(LockTimeout):
            await w.run(wait_write_lock, 50, 0.3)
        waiting = asyncio.ensure_future(w.run(write, "INSERT INTO t VALUES (2)"))
        await asyncio.sleep(1.0)
        assert not waiting.done()  # the write's own deadline: it waits for the lock
        app.execute("COMMIT")
        await asyncio.wait_for(waiting, 10)
        await w.run(wait_write_lock, 50, 0.3)
        assert app.execute("SELECT v FROM t").fetchall() == [(2,)]
    finally:
        app.close()
        await w.close()
        w.shutdown()


async def test_threads_past_a_lowered_size_end_once_idle(tmp_path, monkeypatch):
    """[sqlite] threads lowered (a reload): the threads the pool had before past the new
    number end once idle, as those started for stuck calls do; they stayed for good."""
    from syncd.sqlite import connection

    monkeypatch.setattr(connection, "EXTRA_IDLE_SECONDS", 0.5)
    await _no_extra_threads_left()
    size = THREADS.size
    workers = [SqliteWorker(new_file(tmp_path / f"f{i}.db"), f"f{i}", 1000) for i in range(8)]
    try:
        THREADS.resize(size + 4)
        calls = []
        for w in workers:
            calls.append(asyncio.ensure_future(w.run(lambda c: time.sleep(0.2))))
            await asyncio.sleep(0.01)  # each call on a thread before the next comes
        await asyncio.gather(*calls)
        assert THREADS.threads > size  # every worker at once: the pool grew to the larger number
        THREADS.resize(size)
        await _no_extra_threads_left(10)
    finally:
        THREADS.resize(size)
        for w in workers:
            await w.close()
            w.shutdown()
