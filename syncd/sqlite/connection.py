"""One SQLite connection living on its own thread.

syncd hands sqlite3 whole units of work (a batch read with its joins and value
conversion, a prune) to one dedicated thread per connection, one hop each, where
aiosqlite would hop to its thread for every statement and fetch. bench/sqlite_calls.py
measures both: per single small query aiosqlite's hop is cheaper, per syncd-style unit
of work (several statements) the single hop wins, and the thread also keeps a read
transaction's statements together and off the event loop.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
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
    """A connection plus the single thread allowed to use it."""

    def __init__(self, path: Path, name: str, busy_timeout_ms: int):
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{name}")
        self.conn: sqlite3.Connection | None = None
        self.inode: tuple[int, int] | None = None

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
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

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
        self._executor.shutdown(wait=False, cancel_futures=True)
