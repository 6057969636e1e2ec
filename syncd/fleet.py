"""Daemon-wide loops that keep a thousand sources cheap: each does for every source, at a
bounded rate or in one query, what each source would otherwise do on its own timer.

- FleetPoller: the safety net under file-system events (PRAGMA data_version and the
  changelog's end), round robin over every source, at most [stream]
  max_polls_per_second; with few sources each is still polled every
  poll_interval_seconds.
- FleetRechecker: per target database, one query for every source's resync requests,
  direction (a cutover or rollback) and unfinished switches, every
  held_table_retry_seconds; only the sources concerned are woken.
- WayBackWatch: per target database, every DIRECTION_CHECK_SECONDS, one query for
  the forward sources' recheck flags (a cutover noticed then, not at the next recheck)
  and one for every cut-over source's direction (a rollback) and whether its changelog
  in Postgres holds anything, and, every held_table_retry_seconds, what the way back's
  rechecks look for (tables rewritten or changed by the application's DDL, a rollback's
  freeze): only the sources concerned are woken, NOTIFY waking each for its changes.
- VerifyScheduler: full consistency checks, the source checked longest ago first, at
  most [verify] concurrency at once, each on a connection borrowed from its target's
  pool; says when the fleet's checks fall behind [verify] interval_seconds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from syncd import metrics
from syncd.config import Settings
from syncd.postgres.pool import Targets
from syncd.postgres.connect import describe, statement_cancelled
from syncd.redact import scrub

if TYPE_CHECKING:
    from syncd.pipeline import Pipeline

log = logging.getLogger("syncd")

TICK_SECONDS = 0.1
THIN_EVERY_SECONDS = 3600.0  # how often VerifyScheduler thins the verification history (verify/history.py)
# At the daemon's stop, how long a check whose repair is replaying (its rows queued in the
# changelog, which the stream applies meanwhile) may go on to see it applied and put it
# on the run that found the rows; then it is cancelled, as every other check at once.
REPLAY_GRACE_SECONDS = 2.0


def by_target(pipelines) -> list[list["Pipeline"]]:
    """The pipelines grouped by the target database they write to (one pool each)."""
    groups: dict[int, list["Pipeline"]] = {}
    for p in pipelines:
        groups.setdefault(id(p.session.target), []).append(p)
    return list(groups.values())


class FleetPoller:
    def __init__(self, settings: Settings, pipelines: Callable[[], dict[str, "Pipeline"]]):
        self.settings = settings
        self.pipelines = pipelines
        self._next = 0
        # Polls run side by side: one of a file its application keeps locked waits out
        # its busy timeout without holding up the others' (one poll per source at a time).
        self._polling: dict[str, asyncio.Task] = {}

    def period(self, n: int) -> float:
        """How often each of `n` sources is polled."""
        s = self.settings.stream
        return max(s.poll_interval_seconds, n / s.max_polls_per_second)

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            polls = list(self._polling.values())
            for t in polls:
                t.cancel()
            await asyncio.gather(*polls, return_exceptions=True)

    async def _run(self) -> None:
        credit = 0.0
        while True:
            await asyncio.sleep(TICK_SECONDS)
            pipes = list(self.pipelines().values())
            if not pipes:
                continue
            credit += len(pipes) * TICK_SECONDS / self.period(len(pipes))
            for _ in range(int(credit)):
                p = pipes[self._next % len(pipes)]
                self._next += 1
                if not p.stopping and p.name not in self._polling:
                    task = asyncio.create_task(p.poll_once(), name=f"poll-{p.name}")
                    self._polling[p.name] = task
                    task.add_done_callback(lambda t, name=p.name: self._done(name, t))
            credit -= int(credit)

    def _done(self, name: str, task: asyncio.Task) -> None:
        if self._polling.get(name) is task:
            del self._polling[name]
        if not task.cancelled() and task.exception() is not None:
            log.error("polling source %s failed: %s", name, task.exception())


class FleetRechecker:
    def __init__(self, settings: Settings, targets: Targets, pipelines: Callable[[], dict[str, "Pipeline"]]):
        self.settings = settings
        self.targets = targets
        self.pipelines = pipelines

    async def run(self) -> None:
        from syncd.pipeline import RecheckFlags, fetch_recheck_flags

        bk = self.settings.postgres.bookkeeping_schema
        while True:
            await asyncio.sleep(self.settings.stream.held_table_retry_seconds)
            for pipes in by_target(self.pipelines().values()):
                target = pipes[0].session.target
                try:
                    async with target.connection() as conn:
                        from syncd.identifiers import quote_pg_ident
                        flags = await fetch_recheck_flags(conn, quote_pg_ident(bk), [p.name for p in pipes])
                except Exception:  # noqa: BLE001 - Postgres away: each pipeline finds out and says so
                    for p in pipes:
                        if p.pg_ok is not False:
                            p.check_postgres = True
                            p.wakeup()
                    continue
                for p in pipes:
                    f = flags.get(p.name, RecheckFlags(False, p.session.direction, False))
                    paused = any(t.state == "paused" for t in p.session.tables.values())
                    if (f.requested or f.open_switch or paused or f.direction != p.session.direction
                            or getattr(p, "freeze_unsettled", False)):  # the forward pipeline's (pipeline.py)
                        p.recheck_flags = f
                        p.wakeup()


WATCH_CHUNK = 500  # sources per query of WayBackWatch


class WayBackWatch:
    def __init__(self, settings: Settings, pipelines: Callable[[], dict[str, "Pipeline"]]):
        self.settings = settings
        self.pipelines = pipelines
        self.failing: set[str] = set()  # target DSNs whose last watch failed (said once per streak)

    async def run(self) -> None:
        from syncd.model import TO_POSTGRES, TO_SQLITE
        from syncd.reverse.pipeline import DIRECTION_CHECK_SECONDS

        rechecked = -math.inf
        while True:
            await asyncio.sleep(DIRECTION_CHECK_SECONDS)
            now = time.monotonic()
            recheck = now - rechecked >= self.settings.stream.held_table_retry_seconds
            if recheck:
                rechecked = now
            live = [p for p in self.pipelines().values() if not p.stopping]
            back = [p for p in live if p.direction == TO_SQLITE and p.listened_on is not None]
            # Forward sources not known to be cut over yet: a cutover is noticed here too.
            # Not through an outage: their reconnection reconciles, which reads the direction.
            onward = [p for p in live if p.direction == TO_POSTGRES and p.session.direction == TO_POSTGRES
                      and p.pg_ok is not False]
            polled = set()
            for pipes in by_target(back + onward):
                ways_back = [p for p in pipes if p.direction == TO_SQLITE]
                forward = [p for p in pipes if p.direction != TO_SQLITE]
                chunks = [ways_back[i:i + WATCH_CHUNK] for i in range(0, len(ways_back), WATCH_CHUNK)] or [[]]
                failed = None
                for k, chunk in enumerate(chunks):
                    try:
                        await self._look(chunk, forward if k == 0 else [], recheck)
                    except Exception as e:  # noqa: BLE001 - Postgres away: the sources' own cycles run (watched_at)
                        failed = failed or e
                        for p in chunk:  # a forward source's own retries and rechecks need no waking
                            p.wakeup()
                self._tell(pipes[0].session.target.dsn, failed)
                polled.add(pipes[0].session.target.dsn)
            self.failing &= polled  # a target no longer watched starts afresh when it is again

    def _tell(self, dsn: str, failed: Exception | None) -> None:
        """Say when the watch of a target database starts failing and when it works again,
        once each: not at every poll."""
        if failed is not None and dsn not in self.failing:
            self.failing.add(dsn)
            log.warning(f"the daemon's watch of {scrub(dsn)} (cutovers, rollbacks, the way back's changes) failed: "
                        f"{self._why(failed, dsn)}; each source looks at Postgres on its own meanwhile",
                        extra={"event": "way_back_watch_failed"})
        elif failed is None and dsn in self.failing:
            self.failing.discard(dsn)
            log.info(f"the daemon's watch of {scrub(dsn)} works again", extra={"event": "way_back_watch_recovered"})

    def _why(self, failed: Exception, dsn: str) -> str:
        """The failure as the sources' own lines say it: a statement the role's
        statement_timeout cancelled is named as such, with the role."""
        return statement_cancelled(failed, dsn, self.settings.postgres.statement_timeout_seconds) or describe(failed)

    async def _look(self, pipes: list, forward: list, recheck: bool) -> None:
        """A query for `pipes` (cut-over sources: direction, changes waiting), one for
        `forward` (sources streaming to Postgres: the recheck's flags, their direction
        among them), and at a recheck another for `pipes`."""
        from syncd.identifiers import quote_pg_ident
        from syncd.pipeline import RecheckFlags, fetch_recheck_flags
        from syncd.reverse.capture import FREEZE_TRIGGER, freeze_triggers_from, table_columns_from

        bk = quote_pg_ident(self.settings.postgres.bookkeeping_schema)
        looked = time.monotonic()
        rows = []
        async with (pipes or forward)[0].session.target.connection() as conn:
            if pipes:
                waiting = " UNION ALL ".join(
                    f"SELECT ${i + 1}::text, "
                    + (f"EXISTS (SELECT 1 FROM {p.names.changelog})" if p.retired is None and p.checkpoint is not None
                       else "false")
                    for i, p in enumerate(pipes))
                rows = await conn.fetch(f"SELECT w.source, s.direction, w.waiting FROM ({waiting}) AS w (source, "
                                        f"waiting) LEFT JOIN {bk}.sources s ON s.source = w.source",
                                        *[p.name for p in pipes])
            if forward:  # a forward source a cutover turned around: woken with the recheck's flags
                flags = await fetch_recheck_flags(conn, bk, [p.name for p in forward])
                for p in forward:
                    f = flags.get(p.name)
                    if f is not None and f.direction != p.session.direction:
                        p.recheck_flags = f
                        p.wakeup()
            facts = {}
            if recheck and pipes:
                facts = {r[0]: (r[1], r[2]) for r in await conn.fetch(
                    "SELECT w.source, (SELECT md5(string_agg(c.relname || ' ' || c.relfilenode || ' ' || a.attname "
                    "|| ' ' || format_type(a.atttypid, a.atttypmod), ',' ORDER BY c.relname, a.attnum)) "
                    f"{table_columns_from('w.nsp')}), "
                    f"EXISTS (SELECT 1 {freeze_triggers_from('w.nsp', '$4', '$5', 'w.freezing')}) "
                    f"OR EXISTS (SELECT 1 FROM {bk}.switches x WHERE x.source = w.source AND x.kind = 'rollback' "
                    "AND x.state IN ('started', 'frozen')) "
                    "FROM unnest($1::text[], $2::text[], $3::text[]) AS w (source, nsp, freezing)",
                    [p.name for p in pipes], [p.source.schema for p in pipes],
                    [p.names.freeze_function_name for p in pipes], FREEZE_TRIGGER,
                    self.settings.postgres.bookkeeping_schema)}
        by_name = {p.name: p for p in pipes}
        for name, direction, waiting in rows:
            p = by_name[name]
            wake = bool(waiting)  # changes NOTIFY did not bring (or not yet)
            if direction is not None and direction != p.session.direction:
                p.recheck_flags = RecheckFlags(False, direction, False)  # a rollback turned it around
                wake = True
            if name in facts:
                p.fingerprint, rollback = facts[name]
                if rollback or p.fingerprint != p.seen_fingerprint:
                    p.recheck_due = True
                    wake = True
            p.watched_at = looked
            if wake:
                p.wakeup()


class VerifyScheduler:
    """The periodic full check of every streaming source (see the module docstring)."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.last_run: dict[str, float] = {}
        self.deferred: dict[str, float] = {}
        self.running: set[str] = set()
        self.behind_seconds = 0.0  # how far the oldest check is past its interval
        self.thinned_at = -math.inf
        self._thinning: asyncio.Task | None = None
        self._checks: set[asyncio.Task] = set()  # the checks running: they end with the daemon's stop
        self._no_room: set[int] = set()  # targets whose pool leaves no connection for a check (told once)
        self.replaying: set[str] = set()  # sources whose check is replaying its repair

    def due(self, now: float) -> list["Pipeline"]:
        from syncd.pipeline import STREAMING

        d = self.daemon
        interval = d.settings.verify.interval_seconds
        out = []
        for name, p in list(d.pipelines.items()):
            if name in self.running or p.health != STREAMING:
                continue
            if now - self.last_run.get(name, -math.inf) < interval:
                continue
            # A source working through a backlog is checked once it has caught up, or one
            # interval later at the latest: a write load that never lets it catch up must
            # not switch verification off.
            if p.max_seq_seen - p.session.applied_seq > d.settings.stream.batch_size:
                if now - self.deferred.setdefault(name, now) < interval:
                    continue
            out.append(p)
        out.sort(key=lambda p: self.last_run.get(p.name, -math.inf))
        return out

    def _with_room(self, due: list["Pipeline"]) -> list["Pipeline"]:
        """The due checks that may start now: at most [verify] concurrency at once, and on
        each target at most its pool's size less one. A check holds its pooled connection
        while it waits for the stream to apply rows in flight: the stream's steps need at
        least one connection left, or check and stream wait on each other until the
        check gives up (and takes those rows for differences)."""
        d = self.daemon
        left = d.settings.verify.concurrency - len(self.running)
        busy: dict[int, int] = {}
        for name in self.running:
            q = d.pipelines.get(name)
            if q is not None:
                busy[id(q.session.target)] = busy.get(id(q.session.target), 0) + 1
        out = []
        for p in due:
            if left <= 0:
                break
            target = p.session.target
            room = target.size - 1
            if room <= 0:
                if id(target) not in self._no_room:
                    self._no_room.add(id(target))
                    log.warning(f"no periodic consistency checks of the sources in {scrub(target.dsn)}: "
                                f"[postgres] max_connections = {d.settings.postgres.max_connections} leaves one "
                                "pooled connection, which their stream needs; set it to 3 or more, or run "
                                "`syncd verify` (it connects on its own)", extra={"event": "verify_skipped"})
                continue
            if busy.get(id(target), 0) >= room:
                continue
            busy[id(target)] = busy.get(id(target), 0) + 1
            left -= 1
            out.append(p)
        return out

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            # A check replaying its repair finishes it, a moment at most: cancelled, it left
            # the run that found the rows without the repair the stream applied.
            replaying = [t for t in self._checks if t.get_name().removeprefix("verify-") in self.replaying]
            if replaying:
                await asyncio.wait(replaying, timeout=REPLAY_GRACE_SECONDS)
            # Ended with the stop, not left holding a connection the daemon's close waits for.
            checks = list(self._checks) + ([self._thinning] if self._thinning is not None else [])
            for t in checks:
                t.cancel()
            await asyncio.gather(*checks, return_exceptions=True)

    async def _run(self) -> None:
        d = self.daemon
        while True:
            interval = d.settings.verify.interval_seconds
            if interval > 0 and not d.stop_event.is_set():
                now = time.monotonic()
                # Of the sources a check can run on: one missing or failing is reported as
                # such, not as checks falling behind (no concurrency would check it).
                from syncd.pipeline import STREAMING
                oldest = min((self.last_run.get(n, now) for n, p in list(d.pipelines.items())
                              if p.health == STREAMING), default=now)
                self.behind_seconds = max(0.0, now - oldest - interval) if self.last_run else 0.0
                metrics.verify_behind_seconds.set(self.behind_seconds)
                for p in self._with_room(self.due(now)):
                    self.running.add(p.name)
                    self.deferred.pop(p.name, None)
                    self.last_run[p.name] = now
                    check = asyncio.create_task(self._one(p), name=f"verify-{p.name}")
                    self._checks.add(check)
                    check.add_done_callback(self._checks.discard)
            elif self.behind_seconds:  # checks turned off (a reload): none is behind
                self.behind_seconds = 0.0
                metrics.verify_behind_seconds.set(0)
            # Once every source has started (the first loads' work comes first), then hourly.
            if time.monotonic() - self.thinned_at >= THIN_EVERY_SECONDS and not d.stop_event.is_set() \
                    and (self._thinning is None or self._thinning.done()) \
                    and all(p.ready.is_set() for p in list(d.pipelines.values())):
                self.thinned_at = time.monotonic()  # beside the checks: a first thinning of months takes a while
                self._thinning = asyncio.create_task(self._thin(), name="verify-history-thinning")
            await asyncio.sleep(1.0)

    async def _thin(self) -> None:
        """Merge old clean runs in each target's verification history (verify/history.py)."""
        from syncd.verify.history import thin  # verification's modules load at the first need

        s = self.daemon.settings
        now = dt.datetime.now(dt.timezone.utc)
        hourly = now - dt.timedelta(days=s.verify.keep_every_run_days)
        daily = hourly - dt.timedelta(days=s.cutover.min_days + 1)
        for pipes in by_target(self.daemon.pipelines.values()):
            try:
                async with pipes[0].session.target.connection() as conn:
                    merged = await thin(conn, s.postgres.bookkeeping_schema, [p.name for p in pipes], hourly, daily)
            except Exception as e:  # noqa: BLE001 - Postgres away or busy: the next hour tries again
                log.warning(f"thinning the verification history failed: {describe(e)}",
                            extra={"event": "verify_history_thinned"})
                continue
            if merged:
                log.info(f"verification history: {merged} clean run(s) older than {s.verify.keep_every_run_days:g} "
                         "day(s) merged into the runs they were alike with (still counted)",
                         extra={"event": "verify_history_thinned"})

    async def _one(self, p: "Pipeline") -> None:
        try:
            await self.daemon.verify_one(p)
        finally:
            self.running.discard(p.name)
            self.replaying.discard(p.name)

    def forget(self, name: str) -> None:
        self.last_run.pop(name, None)
        self.deferred.pop(name, None)
