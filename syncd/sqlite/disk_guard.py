"""The application's disk comes first: a changelog that outgrows `[sqlite] max_changelog_mb`
(Postgres away for long) is compacted, and if that is not enough, capture is suspended.

Compaction keeps one entry per key among those not yet applied (the stream reads a
key's current row whatever its history was), in short windows of deletes. Suspension
is one short write transaction (syncd's triggers dropped, every registered table marked
for a re-snapshot, and the suspension noted in the file), then the unapplied entries
deleted (all but the newest, so positions never run backwards) in short windows too:
a gigabyte of them in one DELETE would hold the application's writers off for seconds.
From then on the application writes as if syncd were not there (entries a stop left
undeleted are replayed and pruned once Postgres answers, harmlessly). When Postgres
answers again, the pipeline re-installs capture and every table is snapshotted again
(aside, so readers never see a table empty).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time

from syncd.identifiers import quote_ident
from syncd.sqlite.capture import (CHANGELOG, META, REGISTRY, SUSPENDED_RELOAD, _own_schema_change, capture_triggers,
                                  write_transaction)
from syncd.sqlite.connection import no_such_table

CL = f"main.{quote_ident(CHANGELOG)}"
WINDOW = 20_000  # entries a compaction transaction looks at
SUSPENDED_KEY = "capture_suspended"


def compact(conn: sqlite3.Connection, after_seq: int, busy_timeout_ms: int) -> int:
    """Delete superseded unapplied entries (an older entry of a key that has a newer
    one), newest window first; returns how many. Each window is its own short write
    transaction, with a pause after it so application writers go first."""
    top = conn.execute(f"SELECT coalesce(max(seq), 0) FROM {CL}").fetchone()[0]
    seen: set[tuple] = set()
    deleted = 0
    hi = top
    while hi > after_seq:
        lo = max(after_seq, hi - WINDOW)
        rows = conn.execute(f"SELECT * FROM {CL} WHERE seq > ? AND seq <= ? ORDER BY seq DESC", (lo, hi)).fetchall()
        doomed = []
        for row in rows:
            ident = (row[1], *((type(v), v) for v in row[3:]))
            if ident in seen:
                doomed.append(row[0])
            else:
                seen.add(ident)
        if doomed:
            _paced(conn, lambda c: c.executemany(f"DELETE FROM {CL} WHERE seq = ?", [(s,) for s in doomed]),
                   busy_timeout_ms)
            deleted += len(doomed)
        hi = lo
    return deleted


def _paced(conn: sqlite3.Connection, fn, busy_timeout_ms: int) -> None:
    """fn(conn) in a short write transaction of its own, then a pause twice as long, so
    the application's writers go first between two of them."""
    started = time.monotonic()
    write_transaction(conn, fn, busy_timeout_ms=busy_timeout_ms)
    time.sleep(max(0.005, 2 * (time.monotonic() - started)))


def suspend(conn: sqlite3.Connection, after_seq: int, reason: str, busy_timeout_ms: int) -> None:
    """Stop capturing in this file until Postgres is back (see the module's docstring)."""

    def stop(c: sqlite3.Connection) -> int:
        for name in capture_triggers(c):  # not the application's _syncd_touch
            c.execute(f"DROP TRIGGER main.{quote_ident(name)}")
        c.execute(f"UPDATE main.{quote_ident(REGISTRY)} SET rearmed_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now'), "
                  "reload_reason = ?", (f"{SUSPENDED_RELOAD} (" + reason + "): changes made "
                                        "meanwhile were not recorded, so the table is snapshotted again",))
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        c.execute(f"INSERT OR REPLACE INTO main.{quote_ident(META)}(key, value) VALUES (?, ?)",
                  (SUSPENDED_KEY, f"{stamp} {reason}"))
        return c.execute(f"SELECT coalesce(max(seq), 0) FROM {CL}").fetchone()[0]

    top = write_transaction(conn, lambda c: _own_schema_change(c, stop), busy_timeout_ms=busy_timeout_ms)
    # No trigger appends to the changelog any more: the windows below are all there is.
    lo = after_seq
    while lo < top - 1:
        hi = min(top - 1, lo + WINDOW)
        _paced(conn, lambda c: c.execute(f"DELETE FROM {CL} WHERE seq > ? AND seq <= ?", (lo, hi)), busy_timeout_ms)
        lo = hi


def suspended(conn: sqlite3.Connection) -> str | None:
    """'<time> <reason>' while capture is suspended in this file, else None."""
    try:
        row = conn.execute(f"SELECT value FROM main.{quote_ident(META)} WHERE key = ?", (SUSPENDED_KEY,)).fetchone()
    except sqlite3.OperationalError as e:
        if not no_such_table(e):
            raise
        return None  # no capture installed at all
    return row[0] if row else None


def resume(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """Capture is installed again (triggers re-armed): the suspension is over."""
    write_transaction(conn, lambda c: c.execute(f"DELETE FROM main.{quote_ident(META)} WHERE key = ?",
                                                (SUSPENDED_KEY,)), busy_timeout_ms=busy_timeout_ms)
