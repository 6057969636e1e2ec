"""File-system wake-ups: one watchdog observer for every source directory.

In WAL mode a commit touches only the -wal file, in rollback mode the main file and
the -journal; syncd listens for all of them. Events may be coalesced or missed
(inotify queue overflow, network filesystems), which is why the pipeline also
polls on a timer.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger("syncd.wakeup")

SUFFIXES = ("", "-wal", "-journal")


class _DirectoryHandler(FileSystemEventHandler):
    def __init__(self, watcher: "FileWatcher", directory: str):
        self.watcher = watcher
        self.directory = directory

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # reads, including syncd's own, are not changes
        for p in (event.src_path, getattr(event, "dest_path", "")):
            if p:
                self.watcher.dispatch(os.fsdecode(p))


class FileWatcher:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.observer = Observer()
        self.observer.daemon = True
        self._targets: dict[str, list[Callable[[], None]]] = defaultdict(list)
        self._watched: dict[str, object] = {}

    def add(self, db_path: Path, callback: Callable[[], None]) -> bool:
        """Call `callback` (on the event loop) whenever the database or its journal
        changes. Returns False if the directory cannot be watched (polling still works)."""
        db = str(db_path.resolve()) if os.path.exists(db_path) else str(db_path.absolute())
        for suffix in SUFFIXES:
            self._targets[db + suffix].append(callback)
        directory = os.path.dirname(db)
        if directory in self._watched:
            return True
        try:
            self._watched[directory] = self.observer.schedule(_DirectoryHandler(self, directory), directory,
                                                              recursive=False)
        except OSError as e:
            log.warning("cannot watch %s (%s); relying on periodic checks", directory, e.strerror or e)
            return False
        return True

    def remove(self, callback: Callable[[], None]) -> None:
        # By equality: `pipeline.wakeup` is a new bound-method object at each access.
        for path in list(self._targets):
            self._targets[path] = [c for c in self._targets[path] if c != callback]
            if not self._targets[path]:
                del self._targets[path]

    def dispatch(self, path: str) -> None:
        for cb in self._targets.get(path, ()):
            self.loop.call_soon_threadsafe(cb)

    def start(self) -> None:
        self.observer.start()

    def stop(self) -> None:
        # watchdog logs an ERROR when an event races the stop; nothing is lost by it.
        logging.getLogger("watchdog").setLevel(logging.CRITICAL)
        self.observer.stop()
        self.observer.join(timeout=2)
