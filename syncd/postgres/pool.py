"""Postgres connections shared by every source of one target database, within a bound.

One daemon may run a thousand sources against one Postgres whose `max_connections` is
100, beside the application. So per target database (DSN) syncd keeps:

- a pool of at most `[postgres] max_connections - 1` connections, from which each
  pipeline step (a batch with its checkpoint, a snapshot chunk, a reconcile) borrows
  one for its own transaction, and gives it back: a slow or held source occupies one
  connection at most, never the others';
- one more connection that holds every source's advisory lock (one active syncd per
  source; session-level locks need a session that lives as long as the daemon). If it
  drops, the locks go with it: every source on it takes its lock again before its next
  step, and the checkpoint guard catches a second writer meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from syncd.config import Settings, SourceSettings
from syncd.postgres.bookkeeping import (LOCK_CLASS, SourceLocked, shared_key_line, sharing, source_keys,
                                       try_lock_source)
from syncd.postgres.connect import (ASYNCPG_FAULT, PostgresUnavailable, cannot_connect, close_quietly, connect,
                                    connect_kwargs, describe, is_transient, login_failed, open_raw, prepare,
                                    unanswered_before)
from syncd.redact import scrub

log = logging.getLogger("syncd")

RELEASE_SECONDS = 5.0


class Target:
    """One target database: its pool and its lock holder."""

    def __init__(self, settings: Settings, dsn: str, max_connections: int, lock_dsn: str | None = None):
        self.settings = settings
        self.dsn = dsn
        self.lock_dsn = lock_dsn or dsn  # session-level locks need a direct connection (past a pooler)
        self.size = max(1, max_connections - 1)  # one more holds the locks
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._holder: asyncpg.Connection | None = None
        self._holder_lock = asyncio.Lock()
        self._locked: set[str] = set()  # sources whose lock the holder has
        # source -> the session running under its lock: one stopping (cancelled past its
        # grace) that lets go late must not release the lock its successor runs under.
        self._owners: dict[str, object] = {}
        self._keys: dict[str, int] = {}  # source -> its recorded key (bookkeeping.source_keys), never changes
        self._told: set[frozenset[str]] = set()  # sources sharing a key, logged once
        self.prepared = False  # the target checked and its bookkeeping made sure of, once
        self._listeners: dict[str, object] = {}  # channel -> callback, LISTENed on the holder (the way back's wake-ups)
        self._suspect: set[str] = set()  # forgotten: maybe still held by the holder's session
        self._holders_made = 0

    # --- borrowing a connection ---------------------------------------------------------

    async def _get_pool(self) -> asyncpg.Pool:
        async with self._pool_lock:
            if self._pool is None:
                try:
                    self._pool = await asyncpg.create_pool(
                        self.dsn, min_size=0, max_size=self.size, max_inactive_connection_lifetime=60.0,
                        init=prepare, connect=open_raw, **connect_kwargs(self.settings.password(), self.settings.postgres))
                except Exception as e:
                    raise cannot_connect(self.dsn, e, self.settings.password() is not None) from None
            return self._pool

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for one step, given back afterwards. A connection that failed
        (dropped, hung) is ended, never handed to the next step."""
        unanswered_before(self.dsn)
        pool = await self._get_pool()
        try:
            conn = await pool.acquire(timeout=self.settings.postgres.connect_timeout_seconds
                                      + self.settings.postgres.statement_timeout_seconds)
        except Exception as e:
            raise login_failed(self.dsn, e, self.settings.password() is not None) from None
        broken = False
        try:
            yield conn
        except BaseException as e:
            # asyncpg's own faults (InternalClientError) may leave it unsure of the
            # connection's state: never handed out again either.
            broken = (is_transient(e) or isinstance(e, (asyncio.CancelledError, ASYNCPG_FAULT))
                      or conn.is_in_transaction())
            raise
        finally:
            # asyncpg may have taken a lost connection back already: then is_closed() and
            # terminate() raise their own complaint ("connection has been released back to
            # the pool"), which must not replace the step's real error (a login refused).
            try:
                lost = conn.is_closed()
            except asyncpg.InterfaceError:
                lost = True
            if broken or lost:
                with contextlib.suppress(Exception):
                    conn.terminate()
            try:
                await pool.release(conn, timeout=RELEASE_SECONDS)
            except Exception:  # noqa: BLE001 - a connection that cannot be reset is simply dropped
                with contextlib.suppress(Exception):
                    conn.terminate()

    @property
    def in_use(self) -> int:
        """Connections open to this database: the pool's and the lock holder."""
        pool = self._pool
        n = 0 if pool is None else sum(1 for h in pool._holders if h._con is not None)  # noqa: SLF001
        return n + (1 if self._holder is not None and not self._holder.is_closed() else 0)

    # --- the sources' advisory locks ------------------------------------------------------

    def holds(self, source: str, owner: object | None = None) -> bool:
        """Whether the source's lock is held (for `owner`, if given: a lock taken for an
        earlier session of the source is taken over by lock())."""
        return (source in self._locked and self._holder is not None and not self._holder.is_closed()
                and (owner is None or self._owners.get(source) is owner))

    def key(self, source: str) -> int:
        """The source's key (bookkeeping.source_keys), known once its lock was taken."""
        return self._keys[source]

    async def _resolve(self, sources: list[str]) -> list[int]:
        """The sources' keys, recorded first where a source has none yet (on the holder:
        the bookkeeping exists, SourceSession.connect_postgres saw to it). A source that
        shares its key with another (both set up by an older syncd) is said once."""
        missing = [s for s in sources if s not in self._keys]
        if missing:
            assert self._holder is not None
            bk = self.settings.postgres.bookkeeping_schema
            got = await source_keys(self._holder, bk, missing)
            for name, others in sorted((await sharing(self._holder, bk, got)).items()):
                if frozenset((name, *others)) not in self._told:
                    self._told.add(frozenset((name, *others)))
                    log.warning(shared_key_line(name, others, got[name]), extra={"source": name, "event": "shared_key"})
            self._keys.update(got)
        return [self._keys[s] for s in sources]

    async def lock(self, source: str, owner: object | None = None) -> None:
        """Take `source`'s advisory lock on the holder connection, or raise SourceLocked
        naming whoever holds it (PostgresUnavailable if the server cannot be reached);
        for `owner`, whose unlock() alone releases it from then on."""
        async with self._holder_lock:
            await self._ensure_holder()
            assert self._holder is not None
            if owner is not None and source in self._locked:
                self._owners[source] = owner  # held for the session before (a restart): its own now
                return
            try:
                key, = await self._resolve([source])
            except Exception as e:
                self._drop_holder()
                if is_transient(e):
                    raise PostgresUnavailable(f"cannot lock source {source!r}: {describe(e)}") from None
                raise
            if source in self._suspect:
                self._suspect.discard(source)
                if await self._holder.fetchval(
                        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                        "AND pid = pg_backend_pid() AND classid = $1::oid AND objid = $2::oid AND objsubid = 2)",
                        LOCK_CLASS, key):
                    self._locked.add(source)  # still ours: taking it again would only count it twice
                    self._owners[source] = owner
                    return
            try:
                await try_lock_source(self._holder, source, key)
            except SourceLocked:
                raise
            except Exception as e:
                self._drop_holder()
                if is_transient(e):
                    raise PostgresUnavailable(f"cannot lock source {source!r}: {describe(e)}") from None
                raise
            self._locked.add(source)
            self._owners[source] = owner

    async def lock_many(self, sources: list[str]) -> dict[str, bool]:
        """Try every lock in one round trip (start-up of a big fleet); name -> taken."""
        async with self._holder_lock:
            await self._ensure_holder()
            assert self._holder is not None
            keys = await self._resolve(sources)
            rows = await self._holder.fetch(
                "SELECT k, pg_try_advisory_lock($1, k) FROM unnest($2::text[]::int[]) AS k", LOCK_CLASS,
                [str(k) for k in keys])  # text[]: see bookkeeping.sharing
            got = {r[0]: r[1] for r in rows}
            out = {s: bool(got.get(k)) for s, k in zip(sources, keys)}
            self._locked |= {s for s, ok in out.items() if ok}
            return out

    def forget(self, source: str) -> None:
        """Make sure of the lock again before the next step (the holder may have lost it)."""
        self._locked.discard(source)
        self._suspect.add(source)

    async def unlock(self, source: str, owner: object | None = None) -> None:
        """Release the source's lock; for `owner`, only while it is that session's or no
        session's yet (taken at start), not taken over by the source's next session meanwhile."""
        async with self._holder_lock:
            if owner is not None and self._owners.get(source) not in (None, owner):
                return
            self._owners.pop(source, None)
            if source in self._locked and self._holder is not None and not self._holder.is_closed():
                with contextlib.suppress(Exception):
                    await self._holder.fetchval("SELECT pg_advisory_unlock($1, $2)", LOCK_CLASS, self._keys[source])
            self._locked.discard(source)

    async def _ensure_holder(self) -> None:
        if self._holder is not None and not self._holder.is_closed():
            return
        self._locked.clear()  # a new session holds nothing
        self._holder = await connect(self.lock_dsn, self.settings.password(), self.settings.postgres)
        self._holders_made += 1
        if self._holders_made > 1:
            # The session was lost: the database may be another one since (dropped and
            # created again, restored): checked and given its bookkeeping again.
            self.prepared = False
        self._holder.add_termination_listener(lambda _conn: self._locked.clear())
        for channel, callback in self._listeners.items():
            await self._holder.add_listener(channel, callback)

    async def listen(self, channel: str, callback) -> None:
        """Call `callback` on each NOTIFY of `channel`, on the long-lived holder session (a
        pooled connection would be given back); kept across the holder's reconnects."""
        async with self._holder_lock:
            if self._listeners.get(channel) is callback and self._holder is not None and not self._holder.is_closed():
                return
            old = self._listeners.get(channel)
            self._listeners[channel] = callback
            await self._ensure_holder()
            assert self._holder is not None
            if old is not None:
                with contextlib.suppress(Exception):
                    await self._holder.remove_listener(channel, old)
            await self._holder.add_listener(channel, callback)

    def listening(self, channel: str) -> int | None:
        """The session that delivers `channel`'s NOTIFYs now (a number that changes with
        each new session), or None while none does: what was sent before it was not
        delivered to this daemon."""
        if channel not in self._listeners or self._holder is None or self._holder.is_closed():
            return None
        return self._holders_made

    async def unlisten(self, channel: str) -> None:
        async with self._holder_lock:
            callback = self._listeners.pop(channel, None)
            if callback is not None and self._holder is not None and not self._holder.is_closed():
                with contextlib.suppress(Exception):
                    await self._holder.remove_listener(channel, callback)

    async def renew(self) -> None:
        """Every pooled connection is replaced at its next use: one opened with a session
        default that has changed since (a database made read-only, then writable again)
        would fail the same way for ever."""
        if self._pool is not None:
            await self._pool.expire_connections()

    def _drop_holder(self) -> None:
        holder, self._holder = self._holder, None
        self._locked.clear()
        if holder is not None:
            holder.terminate()

    async def close(self) -> None:
        holder, self._holder = self._holder, None
        self._locked.clear()
        self._owners.clear()
        pool = None
        try:
            await close_quietly(holder)
            pool, self._pool = self._pool, None
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), RELEASE_SECONDS)
                except Exception:  # noqa: BLE001
                    pool.terminate()
        except asyncio.CancelledError:  # a stop that cannot wait on a Postgres that does not answer
            if holder is not None and not holder.is_closed():
                holder.terminate()
            pool, self._pool = pool or self._pool, None
            if pool is not None:
                pool.terminate()
            raise


class Targets:
    """Every target database of the daemon, by DSN."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._by_dsn: dict[str, Target] = {}

    def for_source(self, source: SourceSettings) -> Target:
        dsn = self.settings.dsn_for(source)
        target = self._by_dsn.get(dsn)
        if target is None:
            target = self._by_dsn[dsn] = Target(self.settings, dsn, self.settings.postgres.max_connections,
                                                self.settings.direct_dsn_for(source))
        return target

    @property
    def all(self) -> list[Target]:
        return list(self._by_dsn.values())

    async def renew(self, settings: Settings) -> None:
        """A reloaded configuration: new targets are made with it. With other [postgres]
        settings every target is closed (its pipelines are stopped first): they connect
        again with the new ones; otherwise only targets no source names any more go."""
        if settings.postgres != self.settings.postgres:
            await self.close()
        else:
            wanted = {settings.dsn_for(s) for s in settings.sources}
            for dsn in [d for d in self._by_dsn if d not in wanted]:
                await self._by_dsn.pop(dsn).close()
        self.settings = settings

    async def close(self, within: float | None = None) -> None:
        """Close every target, together; those not closed `within` seconds (a Postgres
        that does not answer) have their connections dropped."""
        closing = [asyncio.ensure_future(t.close()) for t in self._by_dsn.values()]
        self._by_dsn.clear()
        if closing:
            done, pending = await asyncio.wait(closing, timeout=within)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending)


def stats(targets: Targets) -> dict[str, Any]:
    return {scrub(t.dsn): t.in_use for t in targets.all}
