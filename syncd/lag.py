"""Replication lag without timestamps in the changelog.

The triggers record no time (it would cost the application write throughput), so
syncd notes when it first *sees* each changelog position: every poll and every
file event records (max seq, now). A change's commit time is taken as the first
observation covering it, which is at most one wake-up late.
"""

from __future__ import annotations

from collections import deque


class LagTracker:
    def __init__(self, max_observations: int = 10_000):
        self._obs: deque[tuple[int, float]] = deque()  # (max seq seen, when), increasing
        self._max = max_observations
        self.applied_seq = 0

    def seed(self, applied_seq: int, max_seq: int, since: float) -> None:
        """Changes already pending at startup: their age is unknown, so take the
        conservative bound (the last time Postgres was known to be current)."""
        self.applied_seq = applied_seq
        self._obs.clear()
        if max_seq > applied_seq:
            self._obs.append((max_seq, since))

    def observe(self, max_seq: int, now: float) -> None:
        if max_seq <= self.applied_seq:
            return
        if self._obs and max_seq <= self._obs[-1][0]:
            return
        self._obs.append((max_seq, now))
        if len(self._obs) > self._max:
            # Merge the two oldest: keeps the older time, so lag is never understated.
            first = self._obs.popleft()
            second = self._obs.popleft()
            self._obs.appendleft((second[0], first[1]))

    def first_seen(self, seq: int) -> float | None:
        """When syncd first saw changelog position `seq`."""
        for s, t in self._obs:
            if s >= seq:
                return t
        return None

    def applied(self, seq: int) -> None:
        self.applied_seq = max(self.applied_seq, seq)
        while self._obs and self._obs[0][0] <= self.applied_seq:
            self._obs.popleft()

    def reset(self, applied_seq: int) -> None:
        self.applied_seq = applied_seq
        self._obs.clear()

    def lag(self, now: float) -> float:
        if not self._obs:
            return 0.0
        return max(0.0, now - self._obs[0][1])
