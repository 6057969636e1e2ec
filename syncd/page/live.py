"""The status page as the daemon serves it.

Measuring touches SQLite and Postgres, so it never runs on the HTTP thread: the
daemon's event loop measures (an Overview, with a timeout) and keeps the latest one;
a request renders from that cache. A request that finds the cache older than
MAX_AGE_SECONDS asks the loop for a new measurement and waits at most WAIT_SECONDS
for it, then serves what there is, saying how old it is. Nobody looking, nothing
measured: the cost is paid only while the page is open."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from syncd import metrics
from syncd.config import Settings
from syncd.page.history import LiveHistory
from syncd.postgres.connect import describe

if TYPE_CHECKING:
    from syncd.report.overview import Overview

log = logging.getLogger("syncd")

MAX_AGE_SECONDS = 5.0
WAIT_SECONDS = 3.0
MEASURE_TIMEOUT_SECONDS = 60.0
REFRESH_SECONDS = 10  # how often an open page asks again

HTML = "text/html; charset=utf-8"
JSON = "application/json"


def applied_totals() -> dict[str, float]:
    """Changes applied per source since the daemon started (syncd_changes_applied_total)."""
    out: dict[str, float] = {}
    for (source, _op, _direction), n in list(metrics.applied_by_op.items()):
        out[source] = out.get(source, 0.0) + n
    return out


class LivePage:
    def __init__(self, settings: Callable[[], Settings], status: Callable[[], dict],
                 history: LiveHistory | None = None):
        self._settings = settings
        self._status = status  # the daemon's status_now, called on the loop
        self.history = history or LiveHistory()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wanted: asyncio.Event | None = None
        self._cond = threading.Condition()
        self._overview: Overview | None = None
        self._measured = 0.0  # monotonic time of the cached overview
        self._error: str | None = None  # the last measurement failed: when and why
        self._error_reason: str | None = None

    # --- the loop side ---------------------------------------------------------------

    def sample(self, now: float, lags: dict[str, float]) -> None:
        """Record lag and the applied count of every source, when a sample is due."""
        if self.history.due(now):
            totals = applied_totals()
            self.history.record(now, {name: (lag, totals.get(name, 0.0)) for name, lag in lags.items()})

    async def run(self) -> None:
        """Measure whenever a request finds the cache stale; runs until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wanted = asyncio.Event()
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await self.measure()

    async def measure(self) -> None:
        try:
            live = self._status()
            from syncd.report.overview import gather_overview  # imported once a page is asked for

            ov = await asyncio.wait_for(gather_overview(self._settings(), live=live, row_keys=False), MEASURE_TIMEOUT_SECONDS)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the page says so and keeps the last measurement
            reason = describe(e)
            if reason != self._error_reason:
                log.warning(f"status page: could not measure: {reason}", extra={"event": "page"})
            with self._cond:
                self._error = f"measurement failed at {time.strftime('%H:%M:%S UTC', time.gmtime())}: {reason}"
                self._error_reason = reason
                self._measured = time.monotonic()  # do not retry on every request
                self._cond.notify_all()
            return
        with self._cond:
            self._overview, self._error, self._error_reason, self._measured = ov, None, None, time.monotonic()
            self._cond.notify_all()

    # --- the HTTP side (the endpoint's threads) --------------------------------------

    def _fresh(self, max_age: float, wait: float) -> tuple[Overview | None, str | None]:
        with self._cond:
            asked = time.monotonic()
            if self._overview is None or asked - self._measured > max_age:
                loop, wanted = self._loop, self._wanted
                try:
                    if loop is not None and wanted is not None:
                        loop.call_soon_threadsafe(wanted.set)
                        self._cond.wait_for(lambda: self._measured >= asked, timeout=wait)
                except RuntimeError:
                    pass  # the loop has closed: the daemon is stopping, serve what there is
            return self._overview, self._error

    def html(self) -> tuple[bytes, str]:
        ov, error = self._fresh(MAX_AGE_SECONDS, WAIT_SECONDS)
        notice = None
        if error:
            notice = f"Showing an earlier measurement: the {error}" if ov else error[0].upper() + error[1:]
        from syncd.report.html import page

        return page(ov, self.history.view(), live=True, refresh_seconds=REFRESH_SECONDS,
                    notice=notice).encode(), HTML

    def history_json(self) -> tuple[bytes, str]:
        return json.dumps(self.history.view().as_json()).encode(), JSON

    def routes(self) -> dict[str, Callable[[], tuple[bytes, str]]]:
        return {"/": self.html, "/history": self.history_json}
