"""Remember a SIGTERM/SIGINT that arrives while `syncd run` is still starting (imports,
config), so the daemon stops cleanly right after it has started, with exit 0; and a
SIGHUP then, so the daemon reloads its configuration once it has started instead of
ending at once (SIGHUP's default)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

requested = False
reload_requested = False
_waiting = False  # in a wait that a stop ends at once (interruptible())


class Stopped(BaseException):
    """A stop while `syncd run` waited on Postgres before the daemon started: nothing runs
    yet, nothing is to finish. A BaseException: no `except Exception` takes it for a failure."""


def _note(signum, frame) -> None:
    global requested
    requested = True
    if _waiting:
        raise Stopped


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """A wait before the daemon starts (its configuration's names asked of Postgres, which
    may not answer for the connection's whole timeout) that SIGTERM or SIGINT ends at once,
    raising Stopped; without install() (another verb) nothing changes."""
    global _waiting
    if requested:
        raise Stopped
    _waiting = True
    try:
        yield
    finally:
        _waiting = False


def _note_reload(signum, frame) -> None:
    global reload_requested
    reload_requested = True


def install() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _note)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # started under nohup: stays ignored meanwhile
        signal.signal(signal.SIGHUP, _note_reload)
