"""How many rows syncd's next transaction on an application's SQLite file takes, from
how long the last one held the file.

A write transaction holds every other writer back (in WAL mode too), and in
rollback-journal mode a read transaction does as well. Rows may weigh bytes or tens
of kilobytes, so a fixed number of rows per transaction is no bound on the hold: the
number follows the time instead, halved after a transaction that held the file longer
than HOLD_SECONDS and doubled, up to the configured size, after one that took less
than a quarter of it. An application writer with a busy_timeout of a second is never
kept waiting near it.
"""

from __future__ import annotations

HOLD_SECONDS = 0.3
FIRST_ROWS = 1_000  # the first transaction's rows: a table's rows may weigh kilobytes each


class RowsPerHold:
    def __init__(self, most: int, first: int = FIRST_ROWS):
        self.most = max(1, most)
        self.rows = max(1, min(self.most, first))

    def held(self, seconds: float, rows: int) -> None:
        """A transaction of `rows` rows (asked for: fewer may have been there) held the
        file `seconds`."""
        if seconds > HOLD_SECONDS:
            self.rows = max(1, min(self.rows, rows) // 2)
        elif seconds < HOLD_SECONDS / 4 and rows >= self.rows:
            self.rows = min(self.most, rows * 2)


# SQLite's busy handler sleeps up to 100 ms between two looks at the lock: an application
# writer waiting in it finds the file free only in a gap about that long.
BUSY_POLL_SECONDS = 0.1


def step_aside(held: float) -> float:
    """How long syncd leaves the file alone after a write transaction that held it
    `held` seconds, one of many back to back (a table copied again), so that the
    application's writers waiting in their busy handler go first."""
    return max(BUSY_POLL_SECONDS, held)
