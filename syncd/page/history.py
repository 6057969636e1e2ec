"""Lag and apply rate per source over the last hour, kept in memory by the daemon for
the status page's charts.

A fixed ring of samples: one shared column of sample times and, per source, two
float32 columns (lag seconds, changes applied per second). One hour at one sample
every 5 s is 720 slots, about 6 KB per source, so a thousand sources stay near 6 MB.
Nothing here touches SQLite or Postgres; the daemon's loop records, the HTTP thread
reads a copy."""

from __future__ import annotations

import math
import threading
from array import array
from dataclasses import dataclass, field

WINDOW_SECONDS = 3600.0
INTERVAL_SECONDS = 5.0
NAN = float("nan")


@dataclass
class SourceSeries:
    lag_seconds: list[float]  # NaN: no sample (the source was not running then)
    applied_per_second: list[float]


@dataclass
class HistoryView:
    """A copy of the ring, oldest sample first, for rendering or JSON."""

    window_seconds: float
    interval_seconds: float
    times: list[float] = field(default_factory=list)  # Unix times
    sources: dict[str, SourceSeries] = field(default_factory=dict)

    def as_json(self) -> dict:
        def clean(values: list[float]) -> list[float | None]:
            return [None if math.isnan(v) else round(v, 3) for v in values]

        return {"window_seconds": self.window_seconds, "interval_seconds": self.interval_seconds,
                "times": [round(t, 3) for t in self.times],
                "sources": {name: {"lag_seconds": clean(s.lag_seconds),
                                   "applied_per_second": clean(s.applied_per_second)}
                            for name, s in self.sources.items()}}

    @classmethod
    def from_json(cls, doc: dict) -> "HistoryView":
        def back(values: list) -> list[float]:
            return [NAN if v is None else float(v) for v in values]

        return cls(float(doc["window_seconds"]), float(doc["interval_seconds"]), [float(t) for t in doc["times"]],
                   {name: SourceSeries(back(s["lag_seconds"]), back(s["applied_per_second"]))
                    for name, s in doc["sources"].items()})


class LiveHistory:
    def __init__(self, window_seconds: float = WINDOW_SECONDS, interval_seconds: float = INTERVAL_SECONDS):
        self.window_seconds = window_seconds
        self.interval_seconds = interval_seconds
        self.capacity = max(2, int(window_seconds / interval_seconds))
        self._times = array("d", [NAN]) * self.capacity
        self._lag: dict[str, array] = {}
        self._rate: dict[str, array] = {}
        self._totals: dict[str, tuple[float, float]] = {}  # source -> (when, applied total) at the last sample
        self._next = 0  # the slot the next sample goes into
        self._count = 0
        self._last: float | None = None
        self._lock = threading.Lock()

    def due(self, now: float) -> bool:
        return self._last is None or now - self._last >= self.interval_seconds

    def record(self, now: float, samples: dict[str, tuple[float, float]]) -> None:
        """One sample per source: (lag seconds, changes applied since the daemon
        started). The rate is the applied count's growth since that source's previous
        sample (a counter that went back, after a source was reloaded, counts as 0)."""
        with self._lock:
            slot = self._next
            self._times[slot] = now
            for name in list(self._lag):
                if name not in samples:
                    self._lag[name][slot] = self._rate[name][slot] = NAN
            for name, (lag, total) in samples.items():
                if name not in self._lag:
                    self._lag[name] = array("f", [NAN]) * self.capacity
                    self._rate[name] = array("f", [NAN]) * self.capacity
                before = self._totals.get(name)
                rate = NAN
                if before is not None and now > before[0]:
                    rate = max(0.0, total - before[1]) / (now - before[0])
                self._totals[name] = (now, total)
                self._lag[name][slot] = lag
                self._rate[name][slot] = rate
            self._next = (slot + 1) % self.capacity
            self._count = min(self._count + 1, self.capacity)
            self._last = now

    def forget(self, name: str) -> None:
        with self._lock:
            self._lag.pop(name, None)
            self._rate.pop(name, None)
            self._totals.pop(name, None)

    def view(self) -> HistoryView:
        with self._lock:
            start = (self._next - self._count) % self.capacity
            order = [(start + i) % self.capacity for i in range(self._count)]
            return HistoryView(
                self.window_seconds, self.interval_seconds, [self._times[i] for i in order],
                {name: SourceSeries([self._lag[name][i] for i in order], [self._rate[name][i] for i in order])
                 for name in self._lag})
