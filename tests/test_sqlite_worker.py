"""syncd's SQLite thread: one connection, one thread, results and errors handed back
to the awaiting task, nothing left running once it is shut down or dropped."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
import time

import pytest

from syncd.sqlite.connection import SourceFileError, SqliteWorker


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"sqlite-{name}"]


async def test_results_and_errors_come_back_in_order(tmp_path):
    db = tmp_path / "app.db"
    sqlite3.connect(db).execute("CREATE TABLE t (id INTEGER PRIMARY KEY)").connection.commit()
    w = SqliteWorker(db, "order", 1000)
    try:
        assert await w.run(lambda c: c.execute("SELECT 41 + 1").fetchone()) == (42,)
        with pytest.raises(sqlite3.OperationalError, match="no such column: nope"):
            await w.run(lambda c: c.execute("SELECT nope FROM t").fetchall())
        # the thread survives an error, and calls run one after another on it
        seen = await asyncio.gather(*(w.run(lambda c, i=i: (i, threading.current_thread().name))
                                      for i in range(20)))
        assert seen == [(i, "sqlite-order") for i in range(20)]
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


async def test_shutdown_cancels_queued_calls_and_ends_the_thread(tmp_path):
    db = tmp_path / "app.db"
    sqlite3.connect(db).close()
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
    deadline = time.monotonic() + 5
    while _threads("shut") and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert _threads("shut") == []


async def test_a_dropped_worker_ends_its_thread(tmp_path):
    db = tmp_path / "app.db"
    sqlite3.connect(db).close()
    w = SqliteWorker(db, "dropped", 1000)
    await w.run(lambda c: c.execute("SELECT 1").fetchone())
    assert len(_threads("dropped")) == 1
    del w
    gc.collect()
    deadline = time.monotonic() + 5
    while _threads("dropped") and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert _threads("dropped") == []
