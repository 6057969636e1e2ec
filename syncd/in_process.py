"""A source's stream run inside a command (`syncd cutover`, `syncd rollback`, `syncd verify
--repair`) when no daemon runs the source, and its stop.

The stop waits for the stream to end without swallowing the command's own cancel: a
Ctrl-C or stop signal that lands while the stream winds down still interrupts the
command (which undoes its switch), instead of being taken for the stream's end.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from syncd.cutover import hold_at

STOP_SECONDS = 15.0


class Stream(Protocol):
    async def run(self) -> None: ...

    def stop(self) -> None: ...


def start(stream: Stream, name: str, verb: str) -> asyncio.Task:
    """`stream` running in a task; `verb` (CUTOVER, ROLLBACK) names the tests' hold hook
    that keeps the task from ending once the stream stopped."""
    async def run() -> None:
        await stream.run()
        await hold_at(verb, "stopping-stream")

    return asyncio.create_task(run(), name=name)


async def stop(stream: Stream, task: asyncio.Task, seconds: float = STOP_SECONDS) -> None:
    """Ask `stream` to stop and wait up to `seconds` for its task; then cancel it. A failure
    of the stream is left to its health; a cancel of the caller goes on once the task ended."""
    stream.stop()
    try:
        await asyncio.wait({task}, timeout=seconds)
    finally:  # after the wait, or when the caller is cancelled during it
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=seconds)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: the stream's own health and detail tell it
