"""SQLite connections, and the few threads every one of them runs its calls on.

syncd hands sqlite3 whole units of work (a batch read with its joins and value
conversion, a prune) to a thread, one hop each, where aiosqlite would hop to its
thread for every statement and fetch. bench/sqlite_calls.py measures both: per hop the
two cost the same within this machine's noise, and a hop (~0.12 ms) is small beside a
5000-row batch read (~10 ms). One hop carries a whole read transaction: its statements
stay together and off the event loop. The threads are shared and bounded ([sqlite]
threads): a daemon with a thousand files runs a handful, not a thousand.

A call can wait a long time without working: its file's application holds a lock (the
busy timeout), a write lock is tried again and again, or the file's disk stalls. So when
every thread has been on its call for STUCK_SECONDS while other calls queue, the pool
starts more threads, one for each call queued but at most as many as it holds (so it
at most doubles while they all stay stuck); they end once the pool has held more
threads than [sqlite] threads plus the stuck ones for EXTRA_IDLE_SECONDS. There is no
fixed ceiling: each stuck call holds one thread (a worker runs one call at a time, so
never more than one per file and connection), and the rest of a fleet keeps threads of
its own however many files are locked. A thread waiting in SQLite's busy handler sleeps
between its tries: 200 files kept locked cost a daemon 200 threads and about a tenth of
a core here (one file in a transaction is read again as soon as its lock is gone).
"""

from __future__ import annotations

import asyncio
import collections
import os
import queue
import sqlite3
import threading
import time
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import quote

T = TypeVar("T")


def is_busy(exc: BaseException) -> bool:
    """SQLite's "database is locked" or "busy": the application holds a lock."""
    text = str(exc)
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def no_such_table(exc: BaseException) -> bool:
    """An OperationalError saying the table is not there (capture not installed). A busy
    file must never read as one without syncd's tables."""
    return isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc)


class SourceFileError(Exception):
    """The SQLite file is missing, unreadable or not a database."""


class FileMoved(SourceFileError):
    """The file a connection was opened on is no longer at its path (deleted, renamed
    away, replaced by another): the connection must not be used again. SQLite finds a
    file's rollback journal by name, so a connection to a deleted file would take the
    journal of the new file at that path for a crashed writer's, play it back into the
    old one and delete it, under the application's open transaction ("disk I/O
    error" there, its changes left half-applied)."""


def is_sqlite_file_error(exc: BaseException, path: Path) -> bool:
    """An OS error about the SQLite file, its -wal/-shm/-journal or its directory (denied
    permission, a directory gone), not about a network connection."""
    if not isinstance(exc, OSError) or isinstance(exc, ConnectionError) or not getattr(exc, "filename", None):
        return False
    name = os.path.abspath(os.fsdecode(exc.filename))
    folder = os.path.abspath(os.path.dirname(path))
    return name == folder or os.path.dirname(name) == folder


def hard_links(path, names: int) -> str:
    """What a file with `names` directory entries (hard links) means for syncd."""
    return (f"the SQLite file {path} has {names} names (hard links): SQLite keeps a file's -wal and -journal "
            "beside the name it is opened by, so if the application opens the file by another name, syncd may "
            "miss its changes (WAL mode) or read it mid-write; configure the name the application uses")


def another_name_there(registered: str | None, path: str) -> bool:
    """Whether `registered` is there, another directory entry (a hard link) of the file at
    `path`: not that path, nor a symlink to it."""
    if not registered or registered == path:
        return False
    try:
        return os.path.samefile(registered, path) and os.path.realpath(registered) != os.path.realpath(path)
    except OSError:
        return False


def registered_under_another_name(path, registered, source: str) -> str:
    """What a source moved to another name (a hard link) of its file means, while the name
    syncd registered it at is there still: the application may write it by that one."""
    return (f"{path} is the same file as {registered}, which syncd registered {source} at (hard links: one file, "
            f"two names): syncd follows it as {path} now. SQLite keeps a file's -wal and -journal beside the name "
            f"it is opened by: the application must open it as {path} too, or syncd may miss its changes (WAL mode) "
            f"or read it mid-write; remove {registered} once it does")


def surrogate_text(raw: bytes) -> str:
    # Invalid UTF-8 survives as surrogates; the type converter then reports it.
    return raw.decode("utf-8", "surrogateescape")


def not_utf8(value: Any) -> bool:
    """Text SQLite holds that is not valid UTF-8 (read with its bytes kept as surrogates,
    surrogate_text): no Postgres value is such text."""
    if type(value) is not str or value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def bound_value(v: Any) -> tuple[str, Any]:
    """The placeholder and parameter for one value read from SQLite. Text that is not
    UTF-8, which Python cannot bind as text, is bound as its bytes and cast back: the very
    value SQLite holds."""
    if not_utf8(v):
        return "CAST(? AS TEXT)", v.encode("utf-8", "surrogateescape")
    return "?", v


# Prepared statements kept per connection. Each costs a few KB of SQLite memory, and
# Python's default keeps 128: with a connection per source that was most of a fleet
# daemon's memory. syncd's hot statements per connection (a batch's reads, the poll)
# are few; the rest (introspection) runs rarely and is cheap to prepare again.
STATEMENT_CACHE = 8


def empty_file(path) -> SourceFileError:
    """A 0-byte file: not a database yet, or one being replaced (a truncating copy).
    Opened, it would read as a file without tables, and syncd would write its own."""
    return SourceFileError(f"SQLite file {path} is empty (0 bytes): not a database yet, or being replaced")


def damaged(exc: sqlite3.Error, path) -> SourceFileError | None:
    """SQLite's word that the file itself is damaged (pages overwritten, a copy cut short),
    met on any read, as one line naming the file; else None."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None or code & 0xFF not in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return None
    return SourceFileError(f"SQLite file {path} is damaged: {exc} (`PRAGMA integrity_check` says where; "
                           "restore it from a backup)")


def cannot_write(exc: BaseException, path) -> str | None:
    """SQLite's word that syncd may read the file but not write it (its permissions, its
    -wal's or its directory's, a read-only mount), as one line naming the file; else None.
    Not a file renamed or deleted under the connection (READONLY_DBMOVED): FileMoved's."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.Error) or code is None or code & 0xFF != sqlite3.SQLITE_READONLY \
            or code == sqlite3.SQLITE_READONLY_DBMOVED:
        return None
    return (f"syncd cannot write the SQLite file {path} ({exc}): its changelog and triggers live there; give "
            "syncd's user write access to the file, its -wal and -shm files and its directory")


AWAITS_RECOVERY = "at the file's next read-write open"  # in every left_mid_transaction() line


def left_mid_transaction(exc: BaseException, path) -> str | None:
    """SQLite's word that a read-only connection cannot read the file until a read-write
    one has recovered it: a writer stopped mid-transaction (killed, crashed) left its
    rollback journal, or a WAL file, that only a connection able to write plays back. As
    one line naming the file and what ends it; else None."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.Error) or code not in (sqlite3.SQLITE_READONLY_ROLLBACK,
                                                          sqlite3.SQLITE_READONLY_RECOVERY):
        return None
    if code == sqlite3.SQLITE_READONLY_ROLLBACK:
        left = (f"was left mid-transaction by a writer that stopped ({path}-journal holds its unfinished "
                "changes): SQLite rolls it back")
    else:
        left = (f"has a write-ahead log ({path}-wal) that a read-write connection must recover first: SQLite "
                "plays its committed transactions back")
    return (f"the SQLite file {path} {left} {AWAITS_RECOVERY} (the application's, or the syncd daemon's); until "
            "then a read-only reader such as this one cannot read the file")


def _emptied(path: Path) -> bool:
    try:
        return os.stat(path).st_size == 0
    except OSError:
        return False


def open_readonly(path, busy_timeout_ms: int) -> sqlite3.Connection:
    """A read-only connection to the file at `path` (never creating it), usable from any
    thread, whose reads wait `busy_timeout_ms` at most for a lock its application holds
    (then sqlite3.OperationalError: database is locked)."""
    return sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=busy_timeout_ms / 1000,
                           isolation_level=None, check_same_thread=False)


def out_of_reach(exc: BaseException) -> SourceFileError | None:
    """A look at a source's file that its folder refused (one syncd may not enter, made so
    while syncd ran): the file is out of reach, not Postgres failing."""
    if isinstance(exc, PermissionError) and exc.filename is not None:
        return SourceFileError(f"SQLite file {exc.filename} cannot be reached: {exc.strerror}")
    return None


def file_problem(path: Path) -> SourceFileError | None:
    """What keeps the file at `path` from being opened as a source's database before
    SQLite is asked (which would say "disk I/O error" of a directory), or None."""
    try:
        there = path.exists()
    except OSError as e:  # a folder syncd may not enter: Path.exists raises "Permission denied"
        return SourceFileError(f"SQLite file {path} cannot be reached: {e.strerror}")
    if not there:
        return SourceFileError(f"SQLite file {path} does not exist")
    if path.is_dir():
        return SourceFileError(f"SQLite file {path} is a directory, not a file: point the source's path at the "
                               "database file in it")
    if not path.is_file():  # it has no size of its own: it was said to be empty, as a file being replaced is
        kind = "named pipe" if path.is_fifo() else "socket" if path.is_socket() else "device"
        return SourceFileError(f"SQLite file {path} is a {kind}, not a file: point the source's path at the "
                               "database file")
    if _emptied(path):
        return empty_file(path)
    return None


def open_connection(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """Open an existing SQLite file read-write without ever creating it."""
    problem = file_problem(path)
    if problem is not None:
        raise problem
    uri = f"file:{quote(str(path))}?mode=rw"
    conn = None
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                               timeout=busy_timeout_ms / 1000, cached_statements=STATEMENT_CACHE)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("SELECT count(*) FROM main.sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        # Closed here, not left to the cyclic collector (which syncd runs rarely): a file
        # tried again while it stays bad would hold one more open file at every try.
        if conn is not None:
            conn.close()
        if isinstance(e, sqlite3.OperationalError) and is_busy(e):
            raise  # the application holds a lock: a reason to wait, not a missing file
        raise SourceFileError(f"cannot open SQLite file {path}: {e}") from None
    return conn


def fetchall_text_safe(conn: sqlite3.Connection, sql: str, params: Any = ()) -> list[tuple]:
    """fetchall() that survives text that is not valid UTF-8 (SQLite does not check)."""
    return _text_safe(conn, lambda: conn.execute(sql, params).fetchall())


def _text_safe(conn: sqlite3.Connection, read: Callable[[], T]) -> T:
    """read(), once more with invalid UTF-8 read as surrogates where it met some."""
    try:
        return read()
    except sqlite3.OperationalError as e:
        if "decode" not in str(e):
            raise
    old = conn.text_factory
    conn.text_factory = surrogate_text
    try:
        return read()
    finally:
        conn.text_factory = old


# Rows fetched at a time by fetch_within while they are light (fetchall's speed, within
# noise; 256 cost a 200k-row read 5-10% more), fewer as rows grow heavy: a piece is sized
# for rows HEADROOM times as heavy as the last piece's, so rows growing heavier within a
# batch overshoot its budget by one piece at most.
PIECE_ROWS, HEADROOM = 1024, 64


def weigher(positions: list[int]) -> Callable[[list[tuple]], int] | None:
    """A function of rows to what their values at `positions` weigh, in bytes (a text's
    in characters; a number in such a column, 8), or None where there is nothing to
    weigh. One pass per column in C over rows that weigh a few bytes a value: about what
    fetching them costs, where SQLite working out length() in the query cost 15-25% more."""
    if not positions:
        return None
    getters = [itemgetter(i) for i in positions]

    def weigh(rows: list[tuple]) -> int:
        total = 0
        for get in getters:
            try:
                total += sum(map(len, filter(None, map(get, rows))))
            except TypeError:  # a number among the texts (a NUMERIC or untyped column)
                total += sum(len(v) if isinstance(v, (str, bytes)) else 8 for v in map(get, rows) if v is not None)
        return total

    return weigh


def fetch_within(conn: sqlite3.Connection, sql: str, params: Any, budget: int,
                 weigh: Callable[[list[tuple]], int]) -> tuple[list[tuple], bool, int]:
    """Rows of `sql` until their values weigh more than `budget` bytes (weigh: see
    weigher). Returns the rows, the one passing the budget included (so at least one
    when there is any), whether every row was read, and what the rows weigh. Fetched a
    piece at a time, a smaller piece as rows grow heavy: an uncut read costs about what
    fetchall() does. Survives text that is not valid UTF-8, as fetchall_text_safe does."""
    return _text_safe(conn, lambda: _fetch_within(conn, sql, params, budget, weigh))


def _fetch_within(conn: sqlite3.Connection, sql: str, params: Any, budget: int,
                  weigh: Callable[[list[tuple]], int]) -> tuple[list[tuple], bool, int]:
    cur = conn.execute(sql, params)
    rows: list[tuple] = []
    spent, n = 0, 1
    try:
        while part := cur.fetchmany(n):
            piece = weigh(part)
            if spent + piece > budget:
                for i, row in enumerate(part):
                    spent += weigh([row])
                    if spent > budget:
                        rows += part[:i + 1]
                        return rows, False, spent
            spent += piece
            rows += part
            n = max(1, min(PIECE_ROWS, (budget - spent) * len(part) // (HEADROOM * max(1, piece))))
        return rows, True, spent
    finally:
        cur.close()


class SqliteThreads:
    """The threads every SqliteWorker's calls run on, shared and bounded: a daemon with a
    thousand files needs a few threads, not a thousand. Each worker's calls still run
    one at a time and in order (its connection is never used by two threads at once);
    results are handed back with call_soon_threadsafe, one hop each way. Threads stuck
    on long waits get company (see the module docstring)."""

    def __init__(self, size: int):
        self.size = size
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: dict[threading.Thread, float | None] = {}  # each thread: since when on a call
        self._lock = threading.Lock()
        self._queued = threading.Event()  # calls wait for a thread: the watch is on
        self._watch: threading.Thread | None = None
        self._needed_at = 0.0  # when the extra threads were last all needed

    def resize(self, size: int) -> None:
        with self._lock:
            self.size = max(1, size)

    def put(self, worker: "SqliteWorker") -> None:
        with self._lock:
            if not any(since is None for since in self._threads.values()) and len(self._threads) < self.size:
                self._start()
            if self._watch is None or not self._watch.is_alive():
                self._watch = threading.Thread(target=self._watch_stuck, name="watch-sqlite-threads", daemon=True)
                self._watch.start()
        self._calls.put(worker)
        self._queued.set()

    @property
    def threads(self) -> int:
        with self._lock:
            return len(self._threads)

    def _start(self) -> None:
        """Under the lock."""
        t = threading.Thread(target=self._serve, name=f"sqlite-{len(self._threads)}", daemon=True)
        self._threads[t] = None
        t.start()

    def _serve(self) -> None:
        me = threading.current_thread()
        while True:
            # A thread past [sqlite] threads ends once not needed: one started for stuck
            # calls, or, [sqlite] threads lowered by a reload, one the pool had before.
            if self._surplus(me):
                return
            try:
                worker = self._calls.get(timeout=1.0)
            except queue.Empty:
                continue
            with self._lock:
                self._threads[me] = time.monotonic()
            try:
                worker._run_next()  # noqa: SLF001 - the pool and its workers are one mechanism
            except Exception:  # noqa: BLE001 - a call's own errors go to its caller; the thread must live on
                pass
            finally:
                with self._lock:
                    self._threads[me] = None

    def _surplus(self, me: threading.Thread) -> bool:
        """Whether thread `me`, started for stuck ones, may end (and leaves the pool if
        so): there are more threads than [sqlite] threads plus those stuck now, and have
        been for EXTRA_IDLE_SECONDS. Asked between calls: a pool kept busy by healthy
        files shrinks too once the locks are gone."""
        now = time.monotonic()
        with self._lock:
            stuck = sum(1 for since in self._threads.values() if since is not None and now - since >= STUCK_SECONDS)
            if len(self._threads) <= self.size + stuck:
                self._needed_at = now
                return False
            if now - self._needed_at < EXTRA_IDLE_SECONDS:
                return False
            del self._threads[me]
            return True

    def _watch_stuck(self) -> None:
        """While calls queue, start a thread for each queued call, at most as many as
        there are, when every one has been on its call for STUCK_SECONDS (waiting on a
        locked file, mostly)."""
        while True:
            self._queued.wait()
            time.sleep(WATCH_SECONDS)
            if self._calls.empty():
                self._queued.clear()
                if self._calls.empty():
                    continue
                self._queued.set()  # a call came in between: keep watching
            now = time.monotonic()
            with self._lock:
                busy = list(self._threads.values())
                if busy and all(since is not None and now - since >= STUCK_SECONDS for since in busy):
                    # At most doubling each time: a deep queue behind a few slow calls (a
                    # fleet's first catch-up on a slow disk) must not start a thread per file
                    # at once; only threads that stay stuck double the pool again.
                    for _ in range(min(max(1, self._calls.qsize()), len(busy))):
                        self._start()
                    self._needed_at = now


# A thread on one call this long, while others wait, counts as stuck; threads started
# besides [sqlite] threads end once not needed for this long.
STUCK_SECONDS = 0.2
EXTRA_IDLE_SECONDS = 10.0
WATCH_SECONDS = STUCK_SECONDS / 4  # how often the watch looks, while calls queue

DEFAULT_THREADS = 4
THREADS = SqliteThreads(DEFAULT_THREADS)

# The call in hand's bound on waiting for the file's write lock (SqliteWorker.write_wait),
# for capture.write_transaction to read on its thread.
_CALL = threading.local()


def write_wait() -> float | None:
    """How long syncd's write in the call in hand may wait for the file's write lock, if
    its worker bounds that (None: the write's own deadline)."""
    return getattr(_CALL, "write_wait", None)


class SqliteWorker:
    """A connection whose calls run one at a time, in order, on the shared threads."""

    def __init__(self, path: Path, name: str, busy_timeout_ms: int):
        self.path = path
        self.name = name
        self.busy_timeout_ms = busy_timeout_ms
        self.conn: sqlite3.Connection | None = None
        self.inode: tuple[int, int] | None = None
        self.names = 1  # the file's directory entries (hard links) when opened
        self._pending: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False  # a call of this worker is queued on or running on a thread
        self._closed = False
        # Set while the worker's pipeline holds a pooled Postgres connection: its writes
        # into the file wait this long at most for the write lock (capture.write_transaction),
        # so a file its application keeps write-locked fails the step soon instead of
        # keeping the connection from the rest of the fleet.
        self.write_wait: float | None = None

    async def open(self) -> None:
        def _open() -> tuple[sqlite3.Connection, tuple[int, int], int]:
            conn = open_connection(self.path, self.busy_timeout_ms)
            st = os.stat(self.path)
            return conn, (st.st_dev, st.st_ino), st.st_nlink

        self.conn, self.inode, self.names = await self._submit(_open)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.conn is None:
            await self.open()
        conn = self.conn
        return await self._submit(self._on_its_file, fn, conn, *args)

    def _on_its_file(self, fn: Callable[..., T], conn: sqlite3.Connection, *args: Any) -> T:
        """`fn(conn, ...)`, if the file `conn` was opened on is still the one at its path
        (one stat: see FileMoved); else FileMoved, and the caller opens the file afresh."""
        try:
            st = os.stat(self.path)
            here: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            here = None
        if self.inode is not None and here != self.inode:
            gone = "deleted" if here is None else "replaced by another file"
            raise FileMoved(f"SQLite file {self.path} was {gone} since syncd opened it")
        return fn(conn, *args)

    async def _submit(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError(f"SQLite worker {self.name} is shut down")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            self._pending.append((loop, future, fn, args, self.write_wait))
            start = not self._scheduled
            self._scheduled = True
        if start:
            THREADS.put(self)
        return await future

    def _run_next(self) -> None:
        """On a pool thread: run this worker's oldest call, then hand the worker back to
        the pool if more calls wait (others' calls interleave meanwhile)."""
        with self._lock:
            call = self._pending.popleft()
        loop, future, fn, args, _CALL.write_wait = call
        result = None
        if self._closed or future.cancelled():  # a racy read, as a pool's cancel() is
            _hand_back(loop, future, None, None, cancel=True)
        else:
            try:
                result = fn(*args)
            except StopIteration:  # a future refuses it and would never settle
                _hand_back(loop, future, None, RuntimeError(f"StopIteration escaped {fn!r}"))
            except sqlite3.Error as e:
                # A file emptied under an open connection reads as one without tables.
                _hand_back(loop, future, None, empty_file(self.path) if _emptied(self.path)
                           else damaged(e, self.path) or e)
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
                _hand_back(loop, future, None, e)
            else:
                _hand_back(loop, future, result, None)
            del result
        _CALL.write_wait = None
        del call, future, fn, args  # nothing a caller handed over lingers here
        with self._lock:
            more = bool(self._pending)
            self._scheduled = more
        if more:
            THREADS.put(self)

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
        """No more calls; those still queued are cancelled, the one in hand finishes."""
        self._closed = True


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
