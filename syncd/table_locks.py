"""Sessions holding the tables a switch (`syncd cutover`, `syncd rollback`) must take
for a moment: found in pg_locks, which every role may read (a session's state in
pg_stat_activity reads NULL for another role's session unless syncd's role may read
all statistics), named as a user finds them, and waited for without queueing a lock
request of syncd's ahead of the application's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg

from syncd.config import Settings, SourceSettings
from syncd.identifiers import qualified
from syncd.postgres.connect import close_quietly, connect
from syncd.reverse import capture

log = logging.getLogger("syncd")

# A switch's last transaction (and the undo of a freeze) takes each table for a moment,
# waiting a short lock timeout at most each time: a transaction of the application's
# holding a table (a long report, a session left idle in a transaction) is waited for,
# try after try, for [postgres] statement_timeout_seconds (as long as one statement of
# the application's may run) before the switch gives up.
RETRY_SECONDS = 0.1  # how often pg_locks is read while waiting
NO_HOLDER_SECONDS = 1.0  # a try given up with no holder found on the tables: the next waits this long
BLOCKED_SAID_AFTER_SECONDS = 2.0  # a switch's statement waiting this long for a lock names who holds it
BLOCKED_LOOK_SECONDS = 0.1  # how often pg_blocking_pids is asked meanwhile (a short lock_timeout is seen too)

HELD_SECONDS = 1.0  # one transaction holding a table's lock longer than this: stuck, or too long to wait for

_LOCKS = ("SELECT l.pid, l.virtualtransaction, coalesce(nullif(a.application_name, ''), 'an unnamed client'), "
          "a.state, c.relname FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
          "JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace "
          "WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) AND l.granted AND l.pid <> pg_backend_pid() "
          "AND left(a.application_name, $3) IS DISTINCT FROM $4 "
          # Postgres cancels an autovacuum that holds up a table change, unless it runs to
          # prevent wraparound (that one is waited for, and said). Another role's session
          # reads NULL there unless syncd's role may read all statistics: counted.
          "AND NOT coalesce(a.backend_type = 'autovacuum worker' AND a.query NOT LIKE '%to prevent wraparound%', "
          "false)")


async def _locks(conn: asyncpg.Connection, schema: str, tables: list[str]) -> list:
    """(pid, transaction, name, state, table) of the locks others' sessions hold on
    `tables` (syncd's own left out). A session's state reads NULL for another role's
    session unless syncd's role may read all statistics; pg_locks are every role's."""
    return await conn.fetch(_LOCKS, schema, tables, len(capture.WRITER_PREFIX), capture.WRITER_PREFIX)


def _by_backend(locks) -> dict[int, tuple[str, str | None, set[str]]]:
    """pid -> (application name, state, the tables it holds)."""
    out: dict[int, tuple[str, str | None, set[str]]] = {}
    for pid, _vxid, name, state, table in locks:
        out.setdefault(pid, (name, state, set()))[2].add(table)
    return out


def _backend(pid: int, name: str, state: str | None) -> str:
    return f"Postgres backend {pid} ({name}{', ' + state if state else ''})"


def _tables(rels: set[str]) -> str:
    return ", ".join(f'"{t}"' for t in sorted(rels))


async def long_holders(conn: asyncpg.Connection, schema: str, tables: list[str]) -> list[str]:
    """Transactions that hold a lock on one of the source's `tables` and still hold it
    HELD_SECONDS later (the same transaction: pg_locks, which every role may read,
    unlike other roles' session states): the switch takes each table for a moment while
    the application's writes are frozen (and, for a rollback, to undo the freeze), and
    would wait for them. A busy application's short transactions come and go meanwhile;
    syncd's own (a daemon's short transactions) are not counted, nor an autovacuum
    Postgres would cancel."""
    first = {(r[0], r[1]) for r in await _locks(conn, schema, tables)}
    if not first:
        return []
    await asyncio.sleep(HELD_SECONDS)
    held = _by_backend(r for r in await _locks(conn, schema, tables) if (r[0], r[1]) in first)
    return [f"{_backend(pid, name, state)} has held a lock on {_tables(rels)} inside one transaction for over "
            f"{HELD_SECONDS:g} s: the switch takes each table for a moment and would wait for it; end that "
            f"transaction (or SELECT pg_terminate_backend({pid})) and run it again"
            for pid, (name, state, rels) in sorted(held.items())]


class TablesBusy(Exception):
    """The switch's last transaction (or the undo of its freeze) could not take a table
    within the wait: the holders are named."""


async def while_tables_busy(attempt: Callable[[], Awaitable[None]], conn: asyncpg.Connection,
                            source: SourceSettings, tables: list[str], what: str, seconds: float,
                            blocking: dict[tuple[int, str], str] | None = None) -> None:
    """`attempt()` (one transaction), tried again while it fails for a table another
    session keeps (a lock wait or a deadlock: rolled back, nothing of it done), for
    `seconds` at most; the first wait names the sessions in the log. Between
    tries syncd only watches pg_locks until the transactions that held a table then have
    ended: no lock request of its own stays queued ahead of the application's reads.
    `blocking` (filled by blockers_named while a try runs, emptied as each begins): the
    transactions seen in the try's way at its last look, with their names. When there
    are any, those are waited for, whatever they hold (a reader that was in no one's way
    is not); when none was seen (a lock wait too short to be watched, the watch not
    connected), every session holding one of the tables is."""
    deadline = time.monotonic() + seconds
    said = False
    while True:
        if blocking is not None:
            blocking.clear()
        try:
            return await attempt()
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
            seen = dict(blocking or {})

            async def still_held(among: set[tuple[int, str]] | None = None) -> tuple[set[tuple[int, str]], str]:
                """The transactions to wait for (of those `among`) that still run, and their names."""
                locks = await _locks(conn, source.schema, tables)
                if seen:
                    held = await _running(conn, set(seen) if among is None else among)
                    on_tables = [r for r in locks if (r[0], r[1]) in held]
                    # Named with the tables they hold; one holding none of them (a row, say) as the watch saw it.
                    rest = [seen[t] for t in sorted(held - {(r[0], r[1]) for r in on_tables})]
                    return held, "; ".join(([_named(on_tables)] if on_tables else []) + rest[:5])
                locks = [r for r in locks if among is None or (r[0], r[1]) in among]
                return {(r[0], r[1]) for r in locks}, _named(locks)

            held, holders = await still_held()
            if seen and not held and time.monotonic() < deadline:
                continue  # every one seen in the way is gone already: tried again at once
            if not said:
                log.warning(f"{what} waits for {holders or 'another session'}, which keeps a table busy (an open "
                            f"transaction that used it), for {seconds:g} s at most",
                            extra={"source": source.name, "event": "switch_waiting"})
                said = True
            if not held:  # the lock was on another object, or is gone already: not tried again at once
                await asyncio.sleep(max(0.0, min(NO_HOLDER_SECONDS, deadline - time.monotonic())))
            while held and time.monotonic() < deadline:
                await asyncio.sleep(RETRY_SECONDS)
                held, names = await still_held(held)
                holders = names if held else holders
            if held or time.monotonic() >= deadline:
                waited = f" for {seconds:g} s" if seconds else ""
                raise TablesBusy(f"{what} could not take the source's tables{waited}: "
                                 f"{holders or 'another session'} kept one busy (an open transaction that used it)"
                                 ) from None


async def take_tables(conn: asyncpg.Connection, schema: str, tables: list[str], mode: str, wait: str) -> None:
    """Inside the caller's transaction: a `mode` lock on each of `tables` that exists in
    Postgres, waited for `wait` at most (then LockNotAvailableError, for while_tables_busy),
    in one statement; the transaction's lock_timeout is left as it was."""
    names = [r[0] for r in await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) AND c.relkind IN ('r', 'p') ORDER BY c.relname",
        schema, tables)]
    if not names:
        return
    prior = await conn.fetchval("SELECT current_setting('lock_timeout')")
    await conn.execute(f"SET LOCAL lock_timeout = '{wait}'")
    await conn.execute(f"LOCK TABLE {', '.join(qualified(schema, n) for n in names)} IN {mode} MODE")
    await conn.execute("SELECT set_config('lock_timeout', $1, true)", prior)


async def shorten_lock_waits(conn: asyncpg.Connection, wait: str) -> str:
    """For the rest of the caller's transaction: each lock waited for `wait` at most (then
    LockNotAvailableError, for while_tables_busy), or less where the session's own
    lock_timeout (syncd's role's, its database's) already says so. Returns the
    lock_timeout it had, to be set back for syncd's own tables."""
    return await conn.fetchval(  # the select list's first value read before set_config runs
        "SELECT prior, set_config('lock_timeout', CASE WHEN prior::interval > interval '0' AND prior::interval < "
        "$1::text::interval THEN prior ELSE $1::text END, true) FROM (SELECT current_setting('lock_timeout') AS prior) p",
        wait)


# The lock modes that keep syncd's writes (ROW EXCLUSIVE) waiting: a LOCK TABLE, an ALTER
# TABLE, a CREATE INDEX; a plain reader's ACCESS SHARE does not.
IN_THE_WAY_OF_WRITES = ("ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock")

# How a hold's reason names the sessions holding its table's lock (followed by them).
LOCK_HELD = ("another session holds a lock on it in Postgres: ", "another Postgres session holds the table past ")


def said_once(reason: str | None) -> str | None:
    """A hold's reason as it is said once: one naming the sessions holding its table's
    lock (LOCK_HELD) is the same hold while the lock lasts, whoever holds it, in
    whatever state (syncd status shows them as they are now)."""
    for marker in LOCK_HELD:
        if reason and marker in reason:
            return reason[:reason.index(marker) + len(marker)]
    return reason


async def table_holders(conn: asyncpg.Connection, schema: str, tables: list[str],
                        in_the_way: tuple[str, ...] = ()) -> str:
    """The other sessions holding a lock on any of `tables`, as a user finds them in
    pg_stat_activity (to end or wait for): writers in a long transaction, say. Those
    holding one of the lock modes `in_the_way` are named first (a plain reader beside
    them keeps nothing waiting)."""
    first: set[int] = set()
    if in_the_way:
        first = {r[0] for r in await conn.fetch(
            "SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) "
            "AND l.granted AND l.mode = ANY($3::text[])", schema, tables, list(in_the_way))}
    return _named(await _locks(conn, schema, tables), first)


async def holding(conn: asyncpg.Connection, schema: str, table: str,
                  among: set[tuple[int, str]] | None = None) -> set[tuple[int, str]]:
    """The transactions ((backend pid, virtual transaction), as pg_locks names them) of
    others' sessions holding a lock on `table` (of those `among`, if given)."""
    held = {(r[0], r[1]) for r in await _locks(conn, schema, [table])}
    return held if among is None else held & among


async def _running(conn: asyncpg.Connection, transactions: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """Those of `transactions` ((backend pid, virtual transaction), as pg_locks names
    them) still running: each holds the lock on its own virtual transaction id until it
    ends."""
    rows = await conn.fetch("SELECT pid, virtualtransaction FROM pg_locks WHERE locktype = 'virtualxid' AND granted "
                            "AND pid = ANY($1::int[])", [p for p, _v in transactions])
    return {(r[0], r[1]) for r in rows} & transactions


def _named(locks, first: frozenset[int] | set[int] = frozenset()) -> str:
    """The first few sessions holding `locks` (as _locks reads them), with their tables;
    the backends `first` before the others."""
    held = sorted(_by_backend(locks).items(), key=lambda item: (item[0] not in first, item[0]))[:5]
    return "; ".join(f"{_backend(pid, name, state)} on {_tables(rels)}" for pid, (name, state, rels) in held) \
        or "another session"


@contextlib.asynccontextmanager
async def blockers_named(settings: Settings, source: SourceSettings, conn: asyncpg.Connection,
                         what: str) -> AsyncIterator[dict[tuple[int, str], str]]:
    """While the block runs on `conn` (a switch's last transaction): should `conn`'s backend wait
    BLOCKED_SAID_AFTER_SECONDS for sessions holding a lock it needs, they are named in the
    log, once, as a user finds them in pg_stat_activity. Yields the transactions
    ((backend pid, virtual transaction): name) in its way at the last look that found
    any, for while_tables_busy's `blocking`. Watched on a connection of its own; a watch
    that fails is given up in silence (the switch goes on as it would)."""
    pid = conn.get_server_pid()
    seen: dict[tuple[int, str], str] = {}

    async def watch() -> None:
        watcher = await connect(settings.direct_dsn_for(source), settings.password(), settings.postgres)
        try:
            since, said = None, False
            while True:
                await asyncio.sleep(BLOCKED_LOOK_SECONDS)
                rows = await watcher.fetch(
                    "SELECT a.pid, coalesce(nullif(a.application_name, ''), 'an unnamed client'), a.state, "
                    "(SELECT l.virtualtransaction FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'virtualxid' "
                    "AND l.granted AND l.virtualxid = l.virtualtransaction LIMIT 1) "
                    "FROM pg_stat_activity a WHERE a.pid = ANY(pg_blocking_pids($1)) ORDER BY a.pid", pid)
                if rows:  # the blockers of this wait: one gone past, no longer in the way, is not kept
                    seen.clear()
                    seen.update({(r[0], r[3]): _backend(r[0], r[1], r[2]) for r in rows if r[3] is not None})
                if not rows:
                    since = None
                    continue
                since = since or time.monotonic()
                if not said and time.monotonic() - since >= BLOCKED_SAID_AFTER_SECONDS:
                    who = "; ".join(_backend(r[0], r[1], r[2]) for r in rows[:5])
                    log.warning(f"{what} waits for {who}, which holds a lock it needs (an open transaction): it "
                                "waits [postgres] statement_timeout_seconds at most in all; ending that transaction "
                                "lets it go on", extra={"source": source.name, "event": "switch_waiting"})
                    said = True
        finally:
            await close_quietly(watcher)

    task = asyncio.create_task(watch())
    try:
        yield seen
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # its own failure or cancellation, not the caller's
