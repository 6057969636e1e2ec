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
from dataclasses import dataclass
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


def find_backups(pattern: str, source: str, base: Path, now: dt.datetime) -> BackupFacts:
    expanded = pattern.replace("{source}", source)
    full = expanded if os.path.isabs(expanded) else str(base / expanded)
    files = []
    for p in glob.glob(full, recursive=True):
        try:
            st = os.stat(p)
        except OSError:
            continue
        if os.path.isfile(p):
            files.append((st.st_mtime, st.st_size, p))
    if not files:
        return BackupFacts(full, 0, None, None, None, None, None)
    files.sort()
    mtime, size, newest = files[-1]
    age = lambda t: (now.timestamp() - t) / 86400  # noqa: E731
    return BackupFacts(full, len(files), newest, age(mtime), size, _is_sqlite(newest), age(files[0][0]))


def _is_sqlite(path: str) -> bool | None:
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return None
