"""A failing daemon, told to Postgres: `syncd status` reads it when the daemon's endpoint
does not answer (disabled, or unreachable from where status runs).

The daemon's other states need no note: status sees an unreachable Postgres, a missing
file and another lock holder for itself, and held or paused tables are in bookkeeping.
A file that is there and that the daemon cannot read (pages damaged) is noted too: status
reads its changelog, which may be whole, and saw nothing wrong.
A note is trusted only while the daemon that wrote it holds the source's lock, and only
if written since that lock's connection began (status compares the two): a note left by
a daemon killed while failing is never shown as today's.
"""

from __future__ import annotations

import asyncio
import time

from syncd.postgres.connect import describe, login_refused

FAILING = "failing"
SOURCE_MISSING = "source_missing"  # the pipeline's state of a file it cannot read, there or not
POSTGRES_DOWN = "postgres_unreachable"
# Postgres answered and refused syncd's role at login (a password rotated, the role gone):
# retried as an outage is, but named for what it is, in the log, status and sd_notify.
POSTGRES_LOGIN_REFUSED = "postgres_login_refused"


def outage(exc: BaseException, dsn: str, unreachable: str) -> tuple[str, str]:
    """The state a failure to reach Postgres puts a source in, and its line: a login
    Postgres refused named as such (by role, never with the password), anything else
    `unreachable`."""
    refused = login_refused(exc, dsn)
    return (POSTGRES_LOGIN_REFUSED, refused) if refused else (POSTGRES_DOWN, unreachable)


REFRESH_SECONDS = 30.0  # a failing note is confirmed this often (a new lock connection needs a newer one)
WRITE_TIMEOUT_SECONDS = 5.0


class FailingNote:
    def __init__(self) -> None:
        self.published: str | None = None
        self.at = 0.0

    async def publish(self, health: str, detail: str, session) -> None:
        """Write the note when it changed, or every REFRESH_SECONDS while failing. Best
        effort: a note not written is tried again at the next step, and never fails one."""
        if health in (POSTGRES_DOWN, POSTGRES_LOGIN_REFUSED):
            return  # nothing to write to; status sees the outage itself
        want = (detail or "failing") if health == FAILING or (health == SOURCE_MISSING
                                                              and _there(session.source.path)) else None
        now = time.monotonic()
        if want == self.published and (want is None or now - self.at < REFRESH_SECONDS):
            return
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                async with session.target.connection() as conn:
                    await session.bk.note_failing(conn, want)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the note is a courtesy to status
            session.debug(f"could not note the health in Postgres: {describe(e)}")
            return
        self.published, self.at = want, now


def _there(path) -> bool:
    try:
        return path.exists()
    except OSError:  # in a folder syncd may not enter: status cannot tell either
        return True
