"""Remember a SIGTERM/SIGINT that arrives while `syncd run` is still starting (imports,
config), so the daemon stops cleanly right after it has started, with exit 0; and a
SIGHUP then, so the daemon reloads its configuration once it has started instead of
ending at once (SIGHUP's default)."""

from __future__ import annotations

import signal

requested = False
reload_requested = False


def _note(signum, frame) -> None:
    global requested
    requested = True


def _note_reload(signum, frame) -> None:
    global reload_requested
    reload_requested = True


def install() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _note)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # started under nohup: stays ignored meanwhile
        signal.signal(signal.SIGHUP, _note_reload)
