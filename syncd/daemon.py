"""The long-running process: every source's pipeline, signals, metrics, sd_notify."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from syncd import metrics
from syncd.printable import listed
from syncd.cli import early_signals
from syncd.config import ConfigError, Settings, SourceSettings, load_settings
from syncd.endpoint import Endpoint
from syncd.endpoint_client import url_host
from syncd.fleet import FleetPoller, FleetRechecker, VerifyScheduler, WayBackWatch
from syncd.health_note import outage
from syncd.identifiers import quote_pg_ident
from syncd.log import loop_exception_handler
from syncd.page.live import LivePage
from syncd.model import NOT_FOLLOWED, TO_POSTGRES, TO_SQLITE
from syncd.pipeline import SNAPSHOTTING, SOURCE_MISSING, STREAMING, Pipeline
from syncd.postgres import bookkeeping as bk
from syncd.postgres.bookkeeping import SourceLocked
from syncd.postgres.connect import PostgresUnavailable, describe
from syncd.postgres.pool import Targets, stats as pool_stats
from syncd.postgres.target import UnsupportedTarget
from syncd.sdnotify import Notifier
from syncd.sqlite.audit import format_key
from syncd import parity
from syncd.parity import orphans
from syncd.sqlite.connection import THREADS
from syncd.wakeup import FileWatcher

if TYPE_CHECKING:
    from syncd.reverse.pipeline import ReversePipeline

log = logging.getLogger("syncd")

STARTING_AT_ONCE = 32
SHUTDOWN_GRACE_SECONDS = 8.0  # systemd's default stop timeout is 90 s; the promise is 10 s
# A stop's end: the target databases are closed by then, however many do not answer.
STOP_SECONDS = 9.5
HOUSEKEEPING_SECONDS = 1.0
FULL_CHECK_SPACING_SECONDS = 1.0  # between two sources' just-in-case full checks, fleet-wide
SUMMARY_CHARS = 400  # systemd's STATUS= line (`systemctl status`)
EXTEND_WINDOW_SECONDS = 60.0
EXTEND_EVERY_SECONDS = 10.0
# Seconds after a pipeline stopped (a reload, a switch, a file gone) before the stopped
# ones' leftovers are collected, once for all that stopped meanwhile (_collect_stopped).
COLLECT_AFTER_STOP_SECONDS = 2.0
# One of the daemon's loops (discovery, housekeeping, the checks' scheduler, ...) that
# ended on an unexpected error is started again after this long, doubled at each failure
# in a row up to LOOP_RESTART_MAX_SECONDS; a loop that ran LOOP_HEALTHY_SECONDS before it
# failed starts its streak afresh. `syncd status` says so for LOOP_FAILURE_SHOWN_SECONDS.
LOOP_RESTART_SECONDS = 1.0
LOOP_RESTART_MAX_SECONDS = 30.0
LOOP_HEALTHY_SECONDS = 60.0
LOOP_FAILURE_SHOWN_SECONDS = 300.0


class StartupError(Exception):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Daemon:
    def __init__(self, settings: Settings, config_path: Path | None,
                 log_overrides: tuple[str | None, str | None] = (None, None)):
        self.settings = settings
        self.config_path = config_path
        self.log_overrides = log_overrides  # --log-format, --log-level: they win over [log]
        self.pipelines: dict[str, Pipeline] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self.stop_event = asyncio.Event()
        self._stop_requested_at: float | None = None
        self.notifier = Notifier()
        self.endpoint: Endpoint | None = None
        self.watcher: FileWatcher | None = None
        self.started_at = time.time()
        self.ready_sent = False
        self.switching: set[str] = set()  # sources whose pipeline is being replaced (direction switched)
        self.page = LivePage(lambda: self.settings, self.status_now)  # GET /, and the lag/apply-rate ring
        self.targets = Targets(settings)  # per target database: a bounded pool and the lock holder
        # Sources starting at once (capture, reconcile, first snapshot): a fleet of a
        # thousand comes up in waves instead of opening everything together.
        self.admission = asyncio.Semaphore(STARTING_AT_ONCE)
        self.verifier = VerifyScheduler(self)
        self._outcomes: dict[str, str] = {}  # source -> last consistency outcome logged
        # Files not picked up, said once (at start, or by discovery): kept across discovery's restarts.
        self.told_discovery: set[str] = set(settings.discovery_problems)
        self._stopped_at: float | None = None  # monotonic time the first pipeline not collected yet stopped
        # Set once every configured source is launched: a SIGHUP while the daemon starts
        # (its locks taken, Postgres slow to answer) is reloaded after that, not meanwhile.
        self.launched = asyncio.Event()
        # One reload at a time: a SIGHUP during a reload (stopping a source can take a
        # while) reloads once it is over, against the configuration it left.
        self.reload_lock = asyncio.Lock()
        self._reload_stopped: dict[str, Pipeline | None] = {}  # the sources the reload in progress stopped
        self._reload_took = False  # the reload in progress has taken the new configuration
        self.fleet_loops: list[asyncio.Task] = []  # FleetPoller, FleetRechecker, WayBackWatch
        # loop -> (wall time, what went wrong) of its last unexpected failure (_supervised)
        self.loop_failures: dict[str, tuple[float, str]] = {}
        self.reloads_taken = 0  # configurations a reload has taken (a discovery pass checks it)
        # Monotonic time housekeeping last went through a whole tick (set at its first start):
        # failing again and again, it stops pinging systemd's watchdog past the watchdog's
        # interval, so that systemd restarts the daemon (_housekeeping).
        self.housekept_at: float | None = None
        self.watchdog_withheld = False
        # source -> the target database whose lock on it a reload holds while it restarts it
        self._handed_over: dict[str, object] = {}

    # --- lifecycle -------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(loop_exception_handler)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        if early_signals.requested:
            self.request_stop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        if early_signals.reload_requested:  # a SIGHUP while starting: reloaded once started
            asyncio.ensure_future(self.reload())
        try:
            self._start_endpoint()
        except StartupError:
            # The address is taken by a syncd running these sources, most likely (a second
            # `syncd run` of the same configuration): refused as such, naming it.
            running = await _run_elsewhere(self.settings)
            if running is not None:
                raise StartupError(running, 1) from None
            raise
        THREADS.resize(self.settings.sqlite.threads)
        metrics.PER_TABLE = self.settings.metrics.per_table
        metrics.STARTED_AT = time.time()
        _raise_open_files_limit()
        self.watcher = FileWatcher(loop)
        self.watcher.start()
        try:
            for source in self.settings.sources:
                self.pipelines[source.name] = self._make(source)
            if not await self._unless_stopped(self._check_locks()):
                log.info("syncd stopped", extra={"event": "stopped"})
                return 0
            for p in self.pipelines.values():
                self._launch(p)
            self.launched.set()
            log.info(f"syncd running: {len(self.pipelines)} source(s)", extra={"event": "started"})
            if not self.pipelines:
                log.warning(f"{self.settings.no_sources()}: nothing to stream until one is found",
                            extra={"event": "discovery"})
            for problem in self.settings.discovery_problems:
                log.warning(problem, extra={"event": "discovery"})
            metrics.not_picked_up(self.settings.discovery_problems)
            loops = [asyncio.create_task(self._supervised(name, start), name=name) for name, start in (
                ("housekeeping", self._housekeeping), ("consistency checks", self.verifier.run),
                ("status page", self.page.run), ("discovery", self._discover),
                ("foreign-key orphan counts",
                 lambda: orphans.watch(lambda: self.settings, lambda: self.pipelines, self.targets)))]
            self._start_fleet_loops()
            await self.stop_event.wait()
            loops += self.fleet_loops
            for t in loops:
                t.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self._shutdown()
            return 0
        finally:
            left = None
            if self._stop_requested_at is not None:
                left = max(STOP_SECONDS - (time.monotonic() - self._stop_requested_at), 0.5)
            await self.targets.close(within=left)
            if self.watcher:
                self.watcher.stop()
            if self.endpoint:
                self.endpoint.stop()

    def _start_fleet_loops(self) -> None:
        """The fleet-wide polls and looks at Postgres, with the settings of now (a reload
        that changes [stream], [postgres] or [sqlite] starts them again)."""
        self.fleet_loops = [asyncio.create_task(self._supervised(name, start), name=name) for name, start in (
            ("polls", lambda: FleetPoller(self.settings, lambda: self.pipelines).run()),
            ("rechecks", lambda: FleetRechecker(self.settings, self.targets, lambda: self.pipelines).run()),
            ("way back watch", lambda: WayBackWatch(self.settings, lambda: self.pipelines).run()))]

    async def _supervised(self, name: str, start) -> None:
        """Run one of the daemon's loops (`start()` makes it), and start it again after an
        unexpected error: said as an error naming the loop and what went wrong (once for
        failures alike in a row), counted in syncd_daemon_loop_restarts_total and shown
        by `syncd status`. Without it, the loop ended without a word and its work (new
        files found, failed sources restarted, the watchdog's ping) stopped for good."""
        delay = LOOP_RESTART_SECONDS
        said = None
        while True:
            began = time.monotonic()
            try:
                await start()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the loop runs again; the error is said
                why = describe(e)
                if time.monotonic() - began >= LOOP_HEALTHY_SECONDS:
                    delay, said = LOOP_RESTART_SECONDS, None  # ran a while: a new streak
                self.loop_failures[name] = (time.time(), why)
                metrics.loop_restarts_total.labels(name).inc()
                if why != said:
                    said = why
                    log.error(f"the daemon's {name} loop failed: {why}; started again in {delay:g} s",
                              exc_info=True, extra={"event": "loop_failed"})
            await asyncio.sleep(delay)
            delay = min(delay * 2, LOOP_RESTART_MAX_SECONDS)

    async def _unless_stopped(self, work) -> bool:
        """Await `work` unless a stop comes first (SIGTERM while Postgres keeps the start
        waiting: its bookkeeping locked by another session, a server slow to answer):
        then `work` is cancelled, and False returned."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.stop_event.wait())
        try:
            await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            task.result()  # its StartupError, if any
            return True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False

    def request_stop(self) -> None:
        if not self.stop_event.is_set():
            log.info("stop requested: finishing the batch in flight", extra={"event": "stopping"})
            self._stop_requested_at = time.monotonic()
            self.notifier.stopping()
            self.stop_event.set()

    async def _shutdown(self) -> None:
        for p in self.pipelines.values():
            p.stop()
        tasks = list(self.tasks.values())
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_SECONDS)
            for t in pending:
                t.cancel()  # a hung Postgres call: the server rolls the transaction back
            if pending:
                late = sorted(name for name, t in self.tasks.items() if t in pending)
                log.warning(f"{len(late)} source(s) had not stopped within {SHUTDOWN_GRACE_SECONDS:g} s, waiting "
                            "on Postgres: stopped without waiting further; what they had not applied stays "
                            "captured (in SQLite, or in Postgres for a cut-over source) for the next start: "
                            f"{', '.join(late)}", extra={"event": "stopping"})
                await asyncio.wait(pending, timeout=1.0)
        log.info("syncd stopped", extra={"event": "stopped"})

    def _start_endpoint(self) -> None:
        addr = self.settings.metrics.address
        if addr is None:
            return
        try:
            self.endpoint = Endpoint.from_settings(self.settings.metrics, self.status_now, routes=self.page.routes())
        except OSError as e:
            raise StartupError(f"metrics.listen: cannot listen on {self.settings.metrics.listen}: {e.strerror}", 1)
        self.endpoint.start()
        # addr, not the listen text: ":9464" listens on loopback
        log.info(f"status page on http://{url_host(addr[0])}:{addr[1]}/ (metrics at /metrics)",
                 extra={"event": "metrics"})

    def _make(self, source: SourceSettings, direction: str = TO_POSTGRES) -> Pipeline | ReversePipeline:
        """The pipeline for the way the source flows: SQLite -> Postgres, or, after a
        cutover, Postgres -> SQLite (the way back; reverse/pipeline.py)."""
        kind: type[Pipeline | ReversePipeline] = Pipeline
        if direction == TO_SQLITE:  # imported only by a daemon with a source cut over
            from syncd.reverse.pipeline import ReversePipeline

            kind = ReversePipeline
        p = kind(self.settings, source, self.targets.for_source(source))
        p.own_poller = False  # FleetPoller polls every source at a bounded rate
        p.admission = self.admission
        p.fleet_rechecks = True  # FleetRechecker asks Postgres for every source at once
        # The rare just-in-case full reconcile: about one source a second across the
        # fleet (each costs ~15 ms of CPU and a few dozen statements). A source's first
        # one falls at random in the fleet's spacing after the configured interval, so
        # sources started (or cut over) together do not all fall due in the same second,
        # however few they are; each keeps its place after that.
        interval = self.settings.stream.schema_check_interval_seconds
        spread = FULL_CHECK_SPACING_SECONDS * len(self.settings.sources)
        p.recheck_every = max(interval, spread)
        p.last_full_check += interval - p.recheck_every + random.uniform(0, spread)
        if self.watcher is not None:
            self.watcher.add(source.path, p.wakeup)
        return p

    def _launch(self, p: Pipeline) -> None:
        self.tasks[p.name] = asyncio.create_task(p.run(), name=f"pipeline-{p.name}")

    async def _check_locks(self) -> None:
        """Refuse to start if another syncd runs any of these sources: every source's lock
        is tried at once per target database. With Postgres down this cannot be known
        yet; the pipelines check again when it is back."""
        groups: dict[int, list[Pipeline]] = {}
        for p in self.pipelines.values():
            groups.setdefault(id(p.session.target), []).append(p)
        for pipes in groups.values():
            target = pipes[0].session.target
            try:
                await pipes[0].session.connect_postgres(lock=False)  # the target is fit, bookkeeping exists
                taken = await target.lock_many([p.name for p in pipes])
                for p in pipes:
                    if not taken[p.name]:
                        await target.lock(p.name)  # raises SourceLocked naming the holder
                for p in pipes:
                    p.pg_ok = True
                await self._start_each_way(target, pipes)
            except (SourceLocked, UnsupportedTarget) as e:
                await self.targets.close()
                for q in self.pipelines.values():
                    await q.session.close()
                # A database in an encoding syncd refuses is refused again at every start:
                # exit status 2, which systemd does not restart on (RestartPreventExitStatus=2),
                # like a configuration refused. Another syncd holding a source may let go: 1.
                raise StartupError(str(e), 2 if isinstance(e, UnsupportedTarget) else 1) from None
            except PostgresUnavailable as e:
                health, what = outage(e, target.dsn, str(e))
                log.warning(f"{what}; starting anyway, capture continues and syncd retries", extra={"event": health})
            except Exception as e:  # noqa: BLE001 - anything else is retried by the pipelines
                log.warning(f"Postgres not ready: {describe(e)}")

    async def _start_each_way(self, target, pipes: list[Pipeline]) -> None:
        """A source cut over to Postgres starts with the way back (its lock stays held)."""
        q = quote_pg_ident(self.settings.postgres.bookkeeping_schema)
        async with target.connection() as conn:
            rows = await conn.fetch(f"SELECT source, direction FROM {q}.sources WHERE source = ANY($1::text[])",
                                    [p.name for p in pipes])
        for name, direction in rows:
            p = self.pipelines.get(name)
            if p is not None and direction != p.direction:
                if self.watcher is not None:
                    self.watcher.remove(p.wakeup)
                self.pipelines[name] = self._make(p.source, direction)

    async def _bookkept_directions(self, sources: list[SourceSettings]) -> dict[str, str]:
        """The way each of `sources` flows as bookkeeping has it, for a source started
        while the daemon runs (a reload, discovery): one cut over starts with the way back,
        as at start-up, not forward (which opened and wrote the file of a way back that
        has ended, and said the source was cut over just now). A source Postgres cannot
        tell of now is left out: it starts forward and turns around once Postgres answers."""
        groups: dict[int, tuple] = {}
        for source in sources:
            target = self.targets.for_source(source)
            groups.setdefault(id(target), (target, []))[1].append(source.name)
        q = quote_pg_ident(self.settings.postgres.bookkeeping_schema)
        out: dict[str, str] = {}
        for target, names in groups.values():
            try:
                async with target.connection() as conn:
                    rows = await conn.fetch(f"SELECT source, direction FROM {q}.sources "
                                            "WHERE source = ANY($1::text[])", names)
            except Exception:  # noqa: BLE001 - Postgres away, or no bookkeeping yet: started forward
                continue
            out.update({name: direction for name, direction in rows if direction})
        return out

    # --- discovery ---------------------------------------------------------------------

    async def _discover(self) -> None:
        """Files a source's path glob matches now, picked up without a restart; sources
        whose file is gone (from bookkeeping, after a restart) kept, shown as missing."""
        from syncd import discovery

        told = self.told_discovery
        first = True
        seen = None
        remembered_in: set[str] = set()  # target databases whose gone sources were read
        while True:
            if not first or not self.settings.patterns:
                await asyncio.sleep(self.settings.stream.discover_interval_seconds)
            if not self.settings.patterns:
                continue  # none yet: a reload may bring one
            reloads_taken = self.reloads_taken  # what this pass found is started only if none took meanwhile
            if await self._drop_forgotten():
                seen = None  # its name is free: a file the template gives it is picked up now
            now = discovery.signature(self.settings)
            # The globs' target databases: with every file of a glob gone, no source made one yet.
            for pattern in self.settings.patterns:
                self.targets.for_source(pattern)
            unread = [t for t in self.targets.all if t.dsn not in remembered_in]
            if now == seen and not unread:
                continue  # no file added or removed in the globs' directories
            seen = now
            # A source of the daemon's whose pipeline a reload or a switch has stopped meanwhile
            # is theirs to start again, not a file found.
            known = {s.name for s in self.settings.sources}
            back: list[SourceSettings] = []
            for target in unread:
                try:
                    async with target.connection() as conn:
                        back += [s for s in await discovery.remembered(
                            self.settings, conn, self.settings.postgres.bookkeeping_schema, target.dsn)
                                 if s.name not in self.pipelines and s.name not in known and s not in back]
                    remembered_in.add(target.dsn)
                except Exception:  # noqa: BLE001 - Postgres away: asked again at the next look
                    pass
            # Expanded with the gone files' sources known: each keeps its name from a file
            # the template gives it since (that file is not picked up, and says so).
            found = discovery.expand(self.settings.model_copy(update={"sources": [*self.settings.sources, *back]}))
            for problem in found.discovery_problems:
                if problem not in told:
                    told.add(problem)
                    log.warning(problem, extra={"event": "discovery"})
            metrics.not_picked_up(found.discovery_problems)
            held = {s.name for s in back}
            added = back + [s for s in found.sources
                            if s.name not in self.pipelines and s.name not in held and s.name not in known]
            first = False
            ways = await self._bookkept_directions(added) if added else {}
            if self.reloads_taken != reloads_taken or self.reload_lock.locked():
                seen = None  # a reload took (or is taking) a new configuration meanwhile: looked at again
                continue
            # The files not picked up as of this look, for what judges the fleet (the status
            # page's checklist): not those of the daemon's start.
            self.settings = self.settings.model_copy(update={"discovery_problems": list(found.discovery_problems)})
            for source in added:
                if source.name in self.pipelines or source.name in {s.name for s in self.settings.sources}:
                    continue  # a reload started it meanwhile
                self.settings = self.settings.model_copy(update={"sources": [*self.settings.sources, source]})
                p = self._make(source, ways.get(source.name, TO_POSTGRES))
                self.pipelines[source.name] = p
                self._launch(p)
                log.info(f"source found at {source.path}" if os.path.exists(source.path) else
                         f"source's file {source.path} is gone: kept, shown as missing",
                         extra={"source": source.name, "event": "discovered"})

    def _gone(self) -> list[Pipeline]:
        """Sources from a glob whose file is gone (shown as missing), or out of syncd's
        reach (in a folder it may not enter: os.path.exists, where Path.exists raises)."""
        configured = {s.name for s in self.settings.configured}
        return [p for p in self.pipelines.values()
                if p.name not in configured and p.health == SOURCE_MISSING and not os.path.exists(p.source.path)]

    async def _drop_forgotten(self) -> bool:
        """A glob's source whose file is gone, and whose bookkeeping `syncd uninstall
        --forget` removed since, is no longer followed (no longer shown as missing).
        True when one was dropped."""
        gone = self._gone()
        if not gone:
            return False
        dropped = False
        kept: set[str] = set()
        for target in {id(p.session.target): p.session.target for p in gone}.values():
            names = [p.name for p in gone if p.session.target is target]
            try:
                async with target.connection() as conn:
                    kept |= {r[0] for r in await conn.fetch(
                        f"SELECT source FROM {quote_pg_ident(self.settings.postgres.bookkeeping_schema)}.sources "
                        "WHERE source = ANY($1::text[])", names)}
            except Exception:  # noqa: BLE001 - Postgres away: asked again at the next look
                kept |= set(names)
        forgotten = [p for p in gone if p.name not in kept]
        if not forgotten:
            return False
        # Never beside a reload: one reading the configuration meanwhile would keep the
        # source (a gone file's) and start it again once it is let go here.
        async with self.reload_lock:
            for p in forgotten:
                if p.name not in {s.name for s in self.settings.sources} or os.path.exists(p.source.path):
                    continue  # removed by a reload meanwhile, or its file is back
                dropped = True
                await self._stop_pipeline(p.name)
                metrics.forget_source(p.name)
                self.page.history.forget(p.name)
                self.settings = self.settings.model_copy(
                    update={"sources": [s for s in self.settings.sources if s.name != p.name]})
                log.warning(f"the source's file {p.source.path} is gone and Postgres records nothing of it (forgotten "
                            "by syncd uninstall --forget, or never registered): no longer followed",
                            extra={"source": p.name, "event": "source_forgotten"})
        return dropped

    # --- reload ----------------------------------------------------------------------

    def _relog(self, new: Settings) -> None:
        """[log] changed: the new format and level from now on, where the command line
        does not set them."""
        from syncd import log as logs

        fmt, level = self.log_overrides
        logs.setup(fmt or new.log.format, level or new.log.level)
        kept = [f"{flag} {value}" for flag, value in (("--log-format", fmt), ("--log-level", level)) if value]
        note = f" ({', '.join(kept)} on the command line kept)" if kept else ""
        log.warning(f"logging: format {fmt or new.log.format}, level {level or new.log.level}{note}",
                    extra={"event": "reload"})

    async def reload(self) -> None:
        """SIGHUP: re-read the configuration; start added sources, stop removed ones,
        restart changed ones, leave the rest alone."""
        if not self.launched.is_set():
            log.info("reload requested while starting: the configuration is read again once every source is "
                     "launched", extra={"event": "reload"})
            await self.launched.wait()
        if self._stopping_anyway():
            return
        if self.ready_sent:  # before, systemd is still waiting for the start to finish
            self.notifier.reloading()
        async with self.reload_lock:
            if not self._stopping_anyway():  # a stop requested while the reload before ran
                self._reload_stopped = {}
                self._reload_took = False
                try:
                    await self._reload()
                except Exception as e:  # noqa: BLE001 - run from a signal: nobody else would read it
                    kept = "" if self._reload_took else "; the configuration before the reload is kept"
                    log.error(f"reload failed: {describe(e)}{kept}", exc_info=True, extra={"event": "reload_failed"})
                    self._start_stopped(describe(e))
                    self._reloaded()  # systemd is not left waiting for the reload's end
                finally:
                    await self._let_go_of_handed_over()

    async def _let_go_of_handed_over(self) -> None:
        """The locks a reload held for the sources it restarts: let go of each whose source
        was not started again on the same target database (a stop, a failure, another DSN).
        A target the reload closed let go of its locks with its session."""
        handed, self._handed_over = self._handed_over, {}
        for name, target in handed.items():
            p = self.pipelines.get(name)
            if (p is None or p.session.target is not target) and target in self.targets.all:
                await _let_go(target, name)

    def _start_stopped(self, why: str) -> None:
        """A reload that failed after it stopped sources (to restart them with new settings,
        or to remove them) left them stopped, said only as "reload failed": each is started
        again with the configuration the daemon runs now (the one before the reload unless
        the reload got as far as taking the new one), and said, one line each."""
        for name, old in self._reload_stopped.items():
            if self.stop_event.is_set() or old is None or name in self.pipelines or name in self.switching:
                continue
            source = next((s for s in self.settings.sources if s.name == name), None)
            if source is None:
                continue  # removed from the configuration, which the daemon runs now
            same = source == old.source and _shared(self.settings) == _shared(old.settings)
            how = "as before the reload" if same else "with the new settings"
            try:
                p = self._make(source, old.session.direction)
                self.pipelines[name] = p
                self._launch(p)
            except Exception as e:  # noqa: BLE001 - said, with the reload's own error
                log.error(f"the source the failed reload stopped could not be started again: {describe(e)} "
                          f"(the reload failed: {why})", exc_info=True, extra={"source": name, "event": "reload_failed"})
                continue
            log.warning(f"the source the failed reload stopped is started again, {how} (the reload failed: {why})",
                        extra={"source": name, "event": "reload_failed"})

    def _stopping_anyway(self) -> bool:
        """A SIGHUP once a stop is requested: nothing is started that the stop would not see."""
        if self.stop_event.is_set():
            log.info("reload requested while stopping: the configuration is not read again",
                     extra={"event": "reload"})
        return self.stop_event.is_set()

    async def _reload(self) -> None:
        try:
            new = load_settings(self.config_path) if self.config_path else self.settings
        except ConfigError as e:
            log.error(f"reload failed, keeping the running configuration: {e}", extra={"event": "reload_failed"})
            self._reloaded()
            return
        if new.patterns and new is not self.settings:
            # The globs expanded again as the running daemon's discovery does: a file it
            # carries keeps the name it runs under (one of its hard links sorting first
            # would otherwise take it over, stopping the source that follows it).
            from syncd import discovery

            configured = {s.name for s in self.settings.configured}
            carried = [s for s in self.settings.sources if s.name not in configured
                       and any(discovery.glob_matches(s.path, g.path) for g in new.patterns)]
            new = discovery.expand(new.model_copy(update={"sources": [*new.configured, *carried]}))
        old_by_name = {s.name: s for s in self.settings.sources}
        # A glob's source whose file is gone is no file the globs match now: kept, shown
        # as missing, as at start-up (until `syncd uninstall --forget` forgets it).
        taken = {s.name for s in new.sources}
        # Its own glob's: matched as the glob matches files (its * takes no '/'), under the name it makes.
        from syncd.discovery import _fill, glob_matches

        gone = [next((g.model_copy(update={"name": p.name, "path": p.source.path, "schema_": p.source.schema_})
                      for g in new.patterns if glob_matches(p.source.path, g.path) and _fill(g.name, p.source.path) ==
                      p.name), None)
                for p in self._gone() if p.name not in taken]
        new = new.model_copy(update={"sources": [*new.sources, *(g for g in gone if g is not None)]})
        new_by_name = {s.name: s for s in new.sources}
        shared_changed = _shared(self.settings) != _shared(new)
        if new.metrics != self.settings.metrics:
            log.warning("metrics settings changed; they take effect at the next restart")
        log_changed = new.log != self.settings.log  # applied once the new configuration is taken
        directions = {name: p.direction for name, p in self.pipelines.items()}
        # The way back ends with the rollback window ([cutover] keep_sqlite_days): its
        # pipelines run with the reloaded one.
        window_changed = new.cutover != self.settings.cutover
        stopped = []
        for name in old_by_name:
            if name not in new_by_name or new_by_name[name] != old_by_name[name] or shared_changed \
                    or (window_changed and directions.get(name) == TO_SQLITE):
                stopped.append(name)
        # Together: a source slow to stop (a step waiting for a lock) holds up no other's stop.
        # One turning around is left to the switch, which runs it with the settings then current.
        stopping = {name: self.pipelines.get(name) for name in stopped if name not in self.switching}
        self._reload_stopped = stopping  # started again if the reload fails from here on
        for name, p in stopping.items():
            if p is not None and name in new_by_name:
                # Restarted below, either way: its lock stays held meanwhile (another source slow
                # to stop holds the restart up), so no daemon is said to be missing from it.
                p.session.handing_over = True
                self._handed_over[name] = p.session.target
        await asyncio.gather(*(self._stop_pipeline(name) for name in stopping))
        for name, p in stopping.items():
            if p is not None and p.session.direction != p.direction and name in new_by_name:
                # Turned around while it stopped (a cutover or rollback it saw): restarted the other way.
                directions[name] = p.session.direction
                self._turned(name, p.direction, p.session.direction)
        for name in stopped:
            if name not in new_by_name:
                metrics.forget_source(name)
                self.page.history.forget(name)
                log.info("source removed from the configuration: stopped", extra={"source": name, "event": "reload"})
        if self.stop_event.is_set():  # requested while the reload stopped sources: its stop would not see them
            log.info("stop requested during the reload: no source is started", extra={"event": "reload"})
            return
        # The new configuration is taken once the connections and threads follow it: a failure
        # before keeps the one the daemon ran, whole (its sources started again as before).
        THREADS.resize(new.sqlite.threads)  # [sqlite] threads: the pool's size from now on
        try:
            await self.targets.renew(new)  # a changed DSN or [postgres] setting is used from now on
        except Exception:
            THREADS.resize(self.settings.sqlite.threads)
            raise
        # Files discovery found while this reload stopped sources: the daemon's sources too,
        # as the new globs give them (their own dsn, schema...), else as discovery made them.
        from syncd import discovery

        found_now = {s.name: s for s in discovery.expand(new).sources}
        meanwhile = {name: found_now.get(name, p.source) for name, p in self.pipelines.items()
                     if name not in old_by_name and name not in new_by_name}
        if meanwhile:
            new = new.model_copy(update={"sources": [*new.sources, *meanwhile.values()]})
        self.settings = new
        self.reloads_taken += 1  # a discovery pass begun before does not start what it found then
        self._reload_took = True
        if log_changed:
            self._relog(new)
        metrics.not_picked_up(new.discovery_problems)
        # Sources discovery started while this reload ran, with the settings of before: on
        # connections the new [postgres] settings closed, they would write on through them
        # (to the database of before) unseen. Started again with the new ones, as the others.
        wanted = {**meanwhile, **new_by_name}
        stale = {name: p for name, p in self.pipelines.items() if name not in self.switching and (
            _shared(p.settings) != _shared(new) or p.session.target not in self.targets.all
            or p.source != wanted.get(name, p.source))}
        self._reload_stopped.update(stale)  # started again if the reload fails from here on
        for name, p in stale.items():
            if p.session.target in self.targets.all:  # its lock stays held across the restart
                p.session.handing_over = True
                self._handed_over[name] = p.session.target
        await asyncio.gather(*(self._stop_pipeline(name) for name in stale))
        directions.update({name: p.session.direction for name, p in stale.items()})
        if shared_changed:  # the fleet-wide loops' intervals and timeouts too
            for t in self.fleet_loops:
                t.cancel()
            await asyncio.gather(*self.fleet_loops, return_exceptions=True)
            if not self.stop_event.is_set():
                self._start_fleet_loops()
        # A source not running before (added, or added back): as bookkeeping has it.
        directions.update(await self._bookkept_directions(
            [s for name, s in new_by_name.items() if name not in directions and name not in self.pipelines]))
        if self.stop_event.is_set():  # requested while Postgres was asked: its stop would not see them
            log.info("stop requested during the reload: no source is started", extra={"event": "reload"})
            return
        for name, source in {**{name: p.source for name, p in stale.items()}, **wanted}.items():
            if name not in self.pipelines and name not in self.switching:
                try:
                    p = self._make(source, directions.get(name, TO_POSTGRES))
                    self.pipelines[name] = p
                    self._launch(p)
                except Exception as e:  # noqa: BLE001 - the others start; this one at the next reload
                    log.error(f"the source could not be started: {describe(e)} (tried again at the next reload)",
                              exc_info=True, extra={"source": name, "event": "reload_failed"})
                    continue
                what = "restarted with new settings" if name in old_by_name or name in stale else "added"
                log.info(f"source {what}", extra={"source": name, "event": "reload"})
        log.info(f"configuration reloaded: {len(self.pipelines)} source(s)", extra={"event": "reloaded"})
        self._reloaded()

    def _reloaded(self) -> None:
        """A reload over, said to systemd: READY=1, as after RELOADING=1; before the start
        has said it (every source streaming), only the status."""
        if self.ready_sent:
            self.notifier.ready(self._summary())
        else:
            self.notifier.status(self._summary())

    async def _stop_pipeline(self, name: str) -> None:
        p = self.pipelines.pop(name, None)
        task = self.tasks.pop(name, None)
        if p is None:
            return
        if self.watcher:
            self.watcher.remove(p.wakeup)
        p.stop()
        if task is not None:
            done, pending = await asyncio.wait([task], timeout=SHUTDOWN_GRACE_SECONDS)
            for t in pending:
                t.cancel()
        self._stopped()

    def _stopped(self) -> None:
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()

    def _collect_stopped(self) -> None:
        """A stopped pipeline's objects form reference cycles (its tasks, callbacks and
        sessions point at each other), which only the cyclic collector frees; syncd runs
        that rarely on its own (cli/__init__.py GC_THRESHOLDS), so a daemon reloaded
        often kept every stopped source's memory for long. A while after the first stop,
        one full collection frees those stopped meanwhile (about 0.1 s at 300 sources)."""
        if self._stopped_at is not None and time.monotonic() - self._stopped_at >= COLLECT_AFTER_STOP_SECONDS:
            self._stopped_at = None
            gc.collect()

    # --- periodic consistency check --------------------------------------------------

    async def verify_one(self, p: Pipeline) -> None:
        """One source's periodic full check (VerifyScheduler decides when), on a connection
        of its target's pool; with [verify] repair, the differences found are replayed
        through the stream, as `syncd verify --repair` does (each repair is logged,
        counted and kept in the history as an error)."""
        from syncd.verify import publish_metrics, verify_source  # at the first check, not at start

        name = p.name
        try:
            async with p.session.target.connection() as conn:
                if await p.session.bk.switch_open(conn):
                    # A cutover or rollback verifies the source itself; a check of the daemon's
                    # meanwhile would only keep its tables from the switch's last transaction.
                    log.debug("consistency check left to the switch in progress", extra={"source": name,
                                                                                          "event": "verify_skipped"})
                    return
                result = await verify_source(self.settings, p.source, record=True,
                                             repair=self.settings.verify.repair, in_daemon=True, connection=conn,
                                             replaying=lambda: self.verifier.replaying.add(name))
                # A table not compared now keeps what the last comparing check found, across restarts.
                unseen = [t.table for t in result.tables if not (t.compared and t.error is None)
                          and metrics.shown_value(metrics.consistency_mismatched_rows, name, t.table) is None]
                earlier = await _last_compared(conn, self.settings.postgres.bookkeeping_schema, name, unseen) \
                    if unseen else {}
        except PostgresUnavailable:
            return  # the pipeline says so; the check runs again next interval
        if all(s.name != name for s in self.settings.sources):
            # Removed meanwhile (a reload, forgotten): its series were dropped and stay so. (Not
            # its pipeline missing: a reload or a switch restarting it takes it out a while.)
            return
        publish_metrics(result, earlier)
        _log_repairs(name, result)
        outcome = _outcome(result)
        if self._outcomes.get(name) != outcome:
            self._outcomes[name] = outcome
            level = logging.INFO if _calm(result) else logging.WARNING
            log.log(level, f"consistency check: {outcome}", extra={"source": name, "event": "verify"})
        if result.error or any(t.mismatched or t.error or t.repaired for t in result.tables):
            metrics.errors_total.labels(name, "verify").inc()

    # --- housekeeping: health, status, sd_notify ---------------------------------------------

    async def _housekeeping(self) -> None:
        last_ping = last_extend = 0.0
        if self.housekept_at is None:
            self.housekept_at = time.monotonic()
        while True:
            now = time.time()
            if self.page.history.due(now):
                self.page.sample(now, {p.name: _or_nan(p.lag_figure(now)) for p in list(self.pipelines.values())})
            up = [p.pg_ok for p in self.pipelines.values()]
            # A source that has not asked Postgres (its file unreadable since it was found)
            # has no say, unless none has asked yet. With no source at all, nothing asked
            # Postgres: not known (NaN), as a lag not known yet.
            known = [x for x in up if x is not None]
            metrics.postgres_up.set(metrics.UNKNOWN if not up else 1 if known and all(known) else 0)
            metrics.connection_gauges(pool_stats(self.targets))
            if not self.ready_sent and all(p.ready.is_set() for p in self.pipelines.values()):
                self.notifier.ready(self._summary())
                self.ready_sent = True
            elif self.ready_sent:
                self.notifier.status(self._summary())
            elif self._alive(EXTEND_WINDOW_SECONDS) and time.monotonic() - last_extend >= EXTEND_EVERY_SECONDS:
                # Still snapshotting, and making progress: a long initial load is not a failed start.
                self.notifier.status(self._summary())
                self.notifier.extend_start_timeout(EXTEND_WINDOW_SECONDS)
                last_extend = time.monotonic()
            wd = self.notifier.watchdog_seconds
            if wd and time.monotonic() - last_ping >= wd / 2 and self._alive(wd) and self._housekept(wd):
                self.notifier.watchdog()
                last_ping = time.monotonic()
            self._collect_stopped()
            for name, task in list(self.tasks.items()):
                if task.done() and not self.stop_event.is_set():
                    exc = task.exception() if not task.cancelled() else None
                    log.error(f"pipeline ended unexpectedly ({exc!r}); restarting it",
                              extra={"source": name, "event": "pipeline_restart"})
                    self._stopped()
                    old = self.pipelines[name]
                    if self.watcher:
                        self.watcher.remove(old.wakeup)
                    self.pipelines[name] = self._make(old.source, old.direction)  # its threads were shut down
                    self._launch(self.pipelines[name])
            for name, p in list(self.pipelines.items()):
                if p.session.direction != p.direction and name not in self.switching and not self.stop_event.is_set():
                    self.switching.add(name)
                    asyncio.ensure_future(self._switch(name, p.session.direction))
            self.housekept_at = time.monotonic()
            self.watchdog_withheld = False
            # Look often enough that a ping is never late by a whole tick.
            await asyncio.sleep(min(HOUSEKEEPING_SECONDS, wd / 4) if wd else HOUSEKEEPING_SECONDS)

    def _housekept(self, wd: float) -> bool:
        """Housekeeping went through a whole tick within the watchdog's interval. One that
        fails every time it is started again (its supervisor pings on each start) no longer
        pings past that: failed sources are no longer restarted, switches no longer run, and
        systemd, its watchdog no longer pinged, restarts the daemon; said once, with why."""
        assert self.housekept_at is not None
        since = time.monotonic() - self.housekept_at
        if since < wd:
            return True
        if not self.watchdog_withheld:
            self.watchdog_withheld = True
            why = self.loop_failures.get("housekeeping", (0.0, "it did not finish a round"))[1]
            log.error(f"the daemon's housekeeping has not finished a round for {since:.1f} s, longer than systemd's "
                      f"watchdog interval ({wd:g} s): no longer pinging the watchdog, so that systemd restarts "
                      f"syncd (housekeeping: {why})", extra={"event": "watchdog_withheld"})
        return False

    async def _switch(self, name: str, direction: str) -> None:
        """A cutover or rollback turned the source around: the pipeline for the other
        way takes over (the old one finishes its step and hands it the source's lock: held
        throughout, so status never says meanwhile that no daemon runs the source). Never
        beside a reload: the pipeline runs the source as configured once the reload is over."""
        try:
            async with self.reload_lock:
                await self._switch_now(name, direction)
        finally:
            self.switching.discard(name)

    async def _switch_now(self, name: str, direction: str) -> None:
        old = None
        try:
            old = self.pipelines.get(name)
            if old is None:
                return
            old.session.handing_over = True  # the source's lock stays held for the next pipeline
            await self._stop_pipeline(name)
            self._turned(name, old.direction, direction)
            source = next((s for s in self.settings.sources if s.name == name), None)
            if self.stop_event.is_set() or source is None:
                await _let_go(old.session.target, name)
                return
            p = self._make(source, direction)
            self.pipelines[name] = p
            self._launch(p)
        except Exception as e:  # noqa: BLE001 - housekeeping tries again next tick
            log.error(f"switching the pipeline's direction failed: {describe(e)}", exc_info=True,
                      extra={"source": name, "event": "direction_switch_failed"})
            if name not in self.pipelines and old is not None:
                await _let_go(old.session.target, name)  # nothing runs the source: status must say so

    def _turned(self, name: str, old_direction: str, direction: str) -> None:
        """A source's pipeline for one way stopped, the other's to start: said, and the
        old way's gauges zeroed."""
        metrics.replication_lag_seconds.labels(name, direction=old_direction).set(0)
        metrics.pending_changes.labels(name, direction=old_direction).set(0)
        way = "Postgres -> SQLite (the way back, after a cutover)" if direction == TO_SQLITE \
            else "SQLite -> Postgres (after a rollback)"
        log.info(f"the source now flows {way}", extra={"source": name, "event": "direction_switched"})

    def _alive(self, window: float) -> bool:
        """No pipeline is stuck in one step for the whole window (a wedged loop)."""
        now = time.monotonic()
        return all(p.busy_for(now) < window for p in self.pipelines.values())

    def _summary(self) -> str:
        if not self.pipelines:
            return self.settings.no_sources()
        parts: list[str] = []
        length = 0
        for p in list(self.pipelines.values()):
            if length > SUMMARY_CHARS:
                break  # a fleet: the first sources fill it, the rest is not looked at every second
            lag = p.lag_seconds(time.time())
            if p.health == STREAMING:
                way = " back from Postgres" if p.direction == TO_SQLITE else ""
                parts.append(f"{p.name}: streaming{way}, lag {lag:.1f}s")
            elif p.health == SNAPSHOTTING:
                rows = [t.row for t in list(p.session.tables.values()) if t.state == "loading"]
                done = sum(r.snapshot_rows for r in rows)
                total = sum(r.snapshot_total or 0 for r in rows)
                parts.append(f"{p.name}: snapshotting {done}/{total} rows" if total else f"{p.name}: snapshotting")
            else:
                parts.append(f"{p.name}: {p.health.replace('_', ' ')}")
            length += len(parts[-1]) + 2
        return "; ".join(parts)[:SUMMARY_CHARS]

    def status_now(self) -> dict:
        """The live state for /status. Called on the endpoint's thread: it only reads,
        and copies every collection before walking it."""
        sources = {}
        now = time.time()
        for p in list(self.pipelines.values()):
            s = p.session
            ended = getattr(p, "retired", None) is not None  # the way back has ended: nothing flows any more
            sources[p.name] = {
                "path": str(p.source.path),  # which file: another daemon may run a source of the same name
                "health": p.health,
                "direction": s.direction,
                "detail": p.detail or p._last_error or "",
                "lag_seconds": _rounded(p.lag_figure(now)),  # None until the pipeline knows it
                "pending_changes": p.pending,
                "applied_seq": s.applied_seq,
                "applied_at": s.applied_at,
                "postgres_up": p.pg_ok,
                "step_seconds": round(p.busy_for(time.monotonic()), 1),
                "tables": {
                    t.name: {
                        "state": NOT_FOLLOWED if ended else t.state,
                        "reason": t.row.reason,
                        "snapshot_rows": t.row.snapshot_rows,
                        "snapshot_total": t.row.snapshot_total,
                    }
                    for t in list(s.tables.values())
                },
                "refused": dict(list(s.refused.items())),
                "skipped": dict(list(s.skipped.items())),
                "foreign_key_orphans": parity.orphan_counts(s),
            }
        failed = {name: {"failed_at": at, "error": why} for name, (at, why) in list(self.loop_failures.items())
                  if now - at < LOOP_FAILURE_SHOWN_SECONDS}
        return {"pid": os.getpid(), "started_at": self.started_at, "sources": sources,
                "verify_behind_seconds": round(self.verifier.behind_seconds, 1), "loops_failed": failed}


async def _run_elsewhere(settings: Settings) -> str | None:
    """Which of `settings`' sources another process runs (holds its lock), said as a second
    daemon's start says it; None when none does or Postgres cannot be asked."""
    from syncd.postgres.connect import close_quietly, connect
    from syncd.verify.postgres_side import lock_holder

    for dsn in dict.fromkeys(settings.direct_dsn_for(s) for s in settings.sources):
        names = [s.name for s in settings.sources if settings.direct_dsn_for(s) == dsn]
        try:
            conn = await connect(dsn, settings.password(), settings.postgres)
        except Exception:  # noqa: BLE001 - Postgres away: the address's own error is said
            continue
        try:
            keys = await bk.source_keys(conn, settings.postgres.bookkeeping_schema, names, assign=False)
            for name in names:
                holder = await lock_holder(conn, keys[name])
                if holder is not None:
                    return f"source {name!r} is already being run by {holder}"
        except Exception:  # noqa: BLE001 - no bookkeeping yet, say: nothing runs them
            continue
        finally:
            await close_quietly(conn)
    return None


async def _let_go(target, name: str) -> None:
    """Release a source's lock handed over to a pipeline that never came (a switch ended by
    a stop, a source gone from the configuration, a failure): lock() confirms it is still
    this session's (Target.forget), unlock() lets it go. Postgres away: it went with the session."""
    with contextlib.suppress(Exception):
        await target.lock(name)
        await target.unlock(name)


def _raise_open_files_limit() -> None:
    """Each source keeps a SQLite file open (three descriptors in WAL mode): a fleet needs
    more than the usual soft limit of 1024. Raised to the hard limit the service allows."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
        except (ValueError, OSError):
            pass


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _or_nan(seconds: float | None) -> float:
    """A lag not known yet, as the charts' history keeps a missing sample."""
    return float("nan") if seconds is None else seconds


def _outcome(result) -> str:
    if result.error:
        return f"failed: {result.error}"
    failed = [t for t in result.tables if t.error]
    if failed:
        return f"failed for {', '.join(t.table for t in failed[:5])}: {failed[0].error}"
    differing = [t.table for t in result.tables if t.mismatched]
    if differing:
        note = f"; repair: {result.repair_note}" if result.repair_note else ""
        return f"{len(differing)} table(s) differ ({', '.join(differing[:5])}); see `syncd verify`{note}"
    uncompared = [t for t in result.tables if not t.compared]
    if uncompared:
        # A table not compared (held, still loading) is never reported equal.
        names = listed([f'"{t.table}" ({t.state or "not registered"})' for t in uncompared])
        rest = len(result.tables) - len(uncompared)
        return f"{len(uncompared)} table(s) not compared: {names}; {rest} equal"
    if any(t.repaired for t in result.tables):
        return "equal after repair"
    return "equal"


def _calm(result) -> bool:
    """Nothing in a check's result to warn about: no failure, no difference, and any
    table not compared is only still on its way (pending, loading or catching up)."""
    if result.error or any(t.error or t.mismatched for t in result.tables):
        return False
    return all(t.compared or t.state in bk.ON_THE_WAY for t in result.tables)


LOGGED_KEYS = 10  # keys named in a repair's log line


async def _last_compared(conn, bk_schema: str, source: str, tables: list[str]) -> dict[str, int]:
    """Each table's rows found different by its last check that compared it (since its
    rows were last copied), as syncd.verify_runs keeps them; {} if they cannot be read."""
    q = quote_pg_ident(bk_schema)
    try:
        rows = await conn.fetch(
            f"""SELECT DISTINCT ON (v.table_name) v.table_name, v.missing + v.extra + v.different + v.pending
                FROM {q}.verify_runs v JOIN {q}.tables t ON t.source = v.source AND t.table_name = v.table_name
                WHERE v.source = $1 AND v.table_name = ANY($2::text[]) AND v.full_check AND v.error IS NULL
                  AND v.started_at >= coalesce(t.snapshot_finished_at, '-infinity')
                ORDER BY v.table_name, v.started_at DESC, v.finished_at DESC, v.id DESC""", source, tables)
    except Exception as e:  # noqa: BLE001 - the gauge then shows the row-count gap, as before
        log.debug(f"last compared checks not read: {describe(e)}", extra={"source": source, "event": "verify"})
        return {}
    return {r[0]: int(r[1]) for r in rows}


def _log_repairs(source: str, result) -> None:
    """One line per repaired table: how many rows, of which kind, and which keys."""
    from syncd.verify.result import kind_words

    words = kind_words(result.direction == TO_SQLITE)
    for t in result.tables:
        if not t.repaired:
            continue
        counts = [(sum(1 for d in t.replayed if d.kind == kind), text) for kind, text in words.items()]
        what = ", ".join(f"{n} {text}" for n, text in counts if n)
        if t.repaired > len(t.replayed):  # a table copied again in full: more rows than were listed by key
            what += f"{', ' if what else ''}{t.repaired - len(t.replayed)} {'more ' if what else ''}not listed by key"
        keys = ""
        if t.replayed:
            shown = min(len(t.replayed), LOGGED_KEYS)
            total = max(len(t.replayed), t.repaired)
            keys = (": keys " + ", ".join(format_key(d.key) for d in t.replayed[:shown])
                    + (f" and {total - shown} more" if total > shown else ""))
        state = "now equal" if t.equal else f"{t.mismatched} row(s) still differ"
        log.warning(f'consistency check repaired {t.repaired} row(s) of "{t.table}" ({what}){keys}; {state}',
                    extra={"source": source, "table": t.table, "event": "verify_repaired"})


def _shared(settings: Settings) -> tuple:
    """Settings every pipeline depends on besides its own source entry."""
    return (settings.postgres, settings.stream, settings.sqlite)
