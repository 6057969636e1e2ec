"""Evidence of SQLite backups: the files `[cutover] backup_glob` matches.

The pattern is relative to the configuration file's directory and may name the
source as `{source}` (one pattern, one backup set per source); without it every
source is judged by the same set of files. A backup counts as recent when the newest
matching file was modified less than `[cutover] backup_max_age_days` ago: the
runbook keeps backups for that long, so an older newest file means the backup job
stopped.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass
class BackupFacts:
    pattern: str  # as searched, {source} filled in
    count: int
    newest: str | None
    newest_age_days: float | None
    newest_bytes: int | None
    newest_is_sqlite: bool | None  # False: compressed or not a database (still counted)
    oldest_age_days: float | None
    not_counted: list[str] = field(default_factory=list)  # matched, yet no backup: empty, or the live file


def find_backups(pattern: str, source: str, base: Path, now: dt.datetime, live: Path | None = None) -> BackupFacts:
    """The backups of `source`; `live`, its database file, is never one (nor its -wal,
    -shm or -journal), however the pattern reads, and an empty file (a backup job that
    failed half-way) is no backup either."""
    expanded = pattern.replace("{source}", source)
    full = expanded if os.path.isabs(expanded) else str(base / expanded)
    # SQLite keeps -wal, -shm and -journal beside the file a symlink leads to
    itself = set() if live is None else {os.path.realpath(live) + s for s in ("", "-wal", "-shm", "-journal")}
    files, not_counted = [], []
    for p in glob.glob(full, recursive=True):
        try:
            st = os.stat(p)
        except OSError:
            continue
        if not os.path.isfile(p):
            continue
        if os.path.realpath(p) in itself:
            not_counted.append(f"{p} (the live database)")
        elif st.st_size == 0:
            not_counted.append(f"{p} (empty)")
        else:
            files.append((st.st_mtime, st.st_size, p))
    if not files:
        return BackupFacts(full, 0, None, None, None, None, None, not_counted)
    files.sort()
    mtime, size, newest = files[-1]
    age = lambda t: (now.timestamp() - t) / 86400  # noqa: E731
    return BackupFacts(full, len(files), newest, age(mtime), size, _is_sqlite(newest), age(files[0][0]), not_counted)


def _is_sqlite(path: str) -> bool | None:
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return None
