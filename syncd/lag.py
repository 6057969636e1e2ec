"""Replication lag without timestamps in the changelog.

The triggers record no time (it would cost the application write throughput), so
syncd notes when it first *sees* each changelog position: every poll and every
file event records (max seq, now). A change's commit time is taken as the first
observation covering it, which is at most one wake-up late.

An observation (max seq, when) says the changelog held nothing past `max seq` at
`when` (each is timed before its read), so it also tells since when the
changes past the checkpoint can have been committed: `caught_up_at`, the last
time the checkpoint covered every captured change. It is kept in Postgres with
the checkpoint, so that a restarted daemon knows how old the changes it finds
waiting can be (the time of its last apply says nothing of that).
"""

from __future__ import annotations

from collections import deque


class LagTracker:
    def __init__(self, max_observations: int = 10_000):
        self._obs: deque[tuple[int, float]] = deque()  # (max seq seen, when), increasing
        self._max = max_observations
        self.applied_seq = 0
        self.caught_up_at: float | None = None  # the checkpoint last covered the whole changelog then

    def seed(self, applied_seq: int, max_seq: int, since: float) -> None:
        """Changes already pending at startup: their age is unknown, so take the
        conservative bound (the last time Postgres was known to be current)."""
        self.applied_seq = applied_seq
        self.caught_up_at = since
        self._obs.clear()
        if max_seq > applied_seq:
            self._obs.append((max_seq, since))

    def observe(self, max_seq: int, now: float) -> None:
        """The changelog held nothing past `max_seq` at `now` (taken before the read)."""
        if max_seq <= self.applied_seq:
            self.caught_up_at = now if self.caught_up_at is None else max(self.caught_up_at, now)
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

    def covered_at(self, seq: int) -> float | None:
        """The last time the changelog held nothing past `seq`, as far as observed: a
        checkpoint at `seq` leaves only changes committed after it (None: unknown)."""
        at = self.caught_up_at
        for s, t in self._obs:
            if s > seq:
                break
            at = t if at is None else max(at, t)
        return at

    def applied(self, seq: int) -> None:
        self.caught_up_at = self.covered_at(seq)
        self.applied_seq = max(self.applied_seq, seq)
        while self._obs and self._obs[0][0] <= self.applied_seq:
            self._obs.popleft()

    def reset(self, applied_seq: int) -> None:
        self.applied_seq = applied_seq
        self.caught_up_at = None
        self._obs.clear()

    def lag(self, now: float) -> float:
        if not self._obs:
            return 0.0
        return max(0.0, now - self._obs[0][1])
