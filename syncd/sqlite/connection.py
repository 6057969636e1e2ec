"""One SQLite connection living on its own thread.

syncd hands sqlite3 whole units of work (a batch read with its joins and value
conversion, a prune) to one dedicated thread per connection, one hop each, where
aiosqlite would hop to its thread for every statement and fetch. bench/sqlite_calls.py
measures both: per hop the two cost the same within this machine's noise (aiosqlite
0.90-1.05x of this thread), and a hop (~0.12 ms) is small beside a 5000-row batch read
(~10 ms). The thread is kept because one hop carries a whole read transaction: its
statements stay together and off the event loop.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import quote

T = TypeVar("T")


class SourceFileError(Exception):
    """The SQLite file is missing, unreadable or not a database."""


def _surrogate_text(raw: bytes) -> str:
    # Invalid UTF-8 survives as surrogates; the type converter then reports it.
    return raw.decode("utf-8", "surrogateescape")


def open_connection(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """Open an existing SQLite file read-write without ever creating it."""
    if not path.exists():
        raise SourceFileError(f"SQLite file {path} does not exist")
    uri = f"file:{quote(str(path))}?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                               timeout=busy_timeout_ms / 1000)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("SELECT count(*) FROM main.sqlite_master").fetchone()
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            raise  # the application holds a lock: a reason to wait, not a missing file
        raise SourceFileError(f"cannot open SQLite file {path}: {e}") from None
    except sqlite3.DatabaseError as e:
        raise SourceFileError(f"cannot open SQLite file {path}: {e}") from None
    return conn


def fetchall_text_safe(conn: sqlite3.Connection, sql: str, params: Any = ()) -> list[tuple]:
    """fetchall() that survives text that is not valid UTF-8 (SQLite does not check)."""
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as e:
        if "decode" not in str(e):
            raise
    old = conn.text_factory
    conn.text_factory = _surrogate_text
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.text_factory = old


class SqliteWorker:
    """A connection plus the single thread allowed to use it.

    The thread takes calls from a queue and hands each result back with
    call_soon_threadsafe: one hop each way, cheaper than run_in_executor's
    concurrent.futures round trip (bench/sqlite_calls.py)."""

    def __init__(self, path: Path, name: str, busy_timeout_ms: int):
        self.path = path
        self.name = name
        self.busy_timeout_ms = busy_timeout_ms
        self.conn: sqlite3.Connection | None = None
        self.inode: tuple[int, int] | None = None
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    async def open(self) -> None:
        def _open() -> tuple[sqlite3.Connection, tuple[int, int]]:
            conn = open_connection(self.path, self.busy_timeout_ms)
            st = os.stat(self.path)
            return conn, (st.st_dev, st.st_ino)

        self.conn, self.inode = await self._submit(_open)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.conn is None:
            await self.open()
        conn = self.conn
        return await self._submit(fn, conn, *args)

    async def _submit(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed.is_set():
            raise RuntimeError(f"SQLite worker {self.name} is shut down")
        if self._thread is None:
            # The thread holds the queue, not the worker: a worker dropped without
            # shutdown() is still collected, and its finalizer ends the thread.
            self._thread = threading.Thread(target=_serve, args=(self._calls, self._closed),
                                            name=f"sqlite-{self.name}", daemon=True)
            self._thread.start()
            weakref.finalize(self, self._calls.put, None)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._calls.put((loop, future, fn, args))
        return await future

    def interrupt(self) -> None:
        """Abort whatever query is running (used on shutdown); safe from any thread."""
        if self.conn is not None:
            self.conn.interrupt()

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            def _close() -> None:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.close()

            try:
                await self._submit(_close)
            except sqlite3.Error:
                pass

    def shutdown(self) -> None:
        """Stop the thread once it finishes the call in hand; calls still queued are cancelled."""
        self._closed.set()
        self._calls.put(None)


def _serve(calls: queue.SimpleQueue, closed: threading.Event) -> None:
    while (call := calls.get()) is not None:
        loop, future, fn, args = call
        result = None
        if closed.is_set() or future.cancelled():  # a racy read, as a pool's cancel() is
            _hand_back(loop, future, None, None, cancel=True)
            continue
        try:
            result = fn(*args)
        except StopIteration:  # a future refuses it and would never settle
            _hand_back(loop, future, None, RuntimeError(f"StopIteration escaped {fn!r}"))
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            _hand_back(loop, future, None, e)
        else:
            _hand_back(loop, future, result, None)
        del call, future, fn, args, result  # nothing a caller handed over lingers here


def _hand_back(loop: asyncio.AbstractEventLoop, future: asyncio.Future, result: Any,
               error: BaseException | None, cancel: bool = False) -> None:
    def settle() -> None:
        if future.done():
            return  # the awaiting task was cancelled meanwhile
        if cancel:
            future.cancel()
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:
        pass  # the event loop is closed: nobody is waiting any more
