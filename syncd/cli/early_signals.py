"""Remember a SIGTERM/SIGINT that arrives while `syncd run` is still starting (imports,
config), so the daemon stops cleanly right after it has started, with exit 0."""

from __future__ import annotations

import signal

requested = False


def _note(signum, frame) -> None:
    global requested
    requested = True


def install() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _note)
