"""Evidence of SQLite backups: the files `[cutover] backup_glob` matches.

The pattern is relative to the configuration file's directory and may name the
source as `{source}` (one pattern, one backup set per source). A backup counts as
recent when the newest matching file credited to the source was modified less than
`[cutover] backup_max_age_days` ago: the runbook keeps backups for that long, so an
older newest file means the backup job stopped.

A file syncd may not read (its mode) is never credited, nor one that holds no SQLite
database, plain or compressed with gzip, bzip2 or xz, or first in a tar archive: each is
named, as not counted (a zstd, zip, gpg or age file for what it is: syncd cannot look into it).
A file is credited by what it holds, not by its name alone: a copy of another source
(the capture id syncd wrote into that file, or the other source's tables) is never
evidence for this one, whatever the pattern says. A compressed backup, which syncd does
not open as a database, is credited only where the pattern names `{source}` or there is
one source; otherwise nothing tells whose it is.
"""

from __future__ import annotations

import datetime as dt
import errno
import glob
import io
import os
import pwd
import sqlite3
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from syncd.identifiers import quote_ident
from syncd.sqlite.capture import META
from syncd.sqlite.connection import surrogate_text

SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass(frozen=True)
class Identity:
    """What tells one SQLite file's content from another's."""
    capture_id: str | None  # written by syncd's capture into the file (None: never installed there)
    tables: frozenset[str]  # the application's tables, folded to lower case


@dataclass
class BackupFacts:
    pattern: str  # as searched, {source} filled in
    count: int
    newest: str | None
    newest_age_days: float | None
    newest_bytes: int | None
    newest_is_sqlite: bool | None  # False: a compressed database (still counted)
    oldest_age_days: float | None
    not_counted: list[str] = field(default_factory=list)  # matched, yet no backup of this source, and why
    others: int = 0  # matched a pattern without {source}: plainly other sources' backups (not listed)
    unreadable: str | None = None  # the pattern's folder, which this user may not list: why nothing matched
    not_counted_by_reason: dict[str, list[str]] = field(default_factory=dict)  # why -> the files not counted so

    def not_counted_grouped(self) -> list[str]:
        """`not_counted` with the files one reason holds back in one entry (thirty nightly
        backups in a form syncd cannot read are one line, not thirty)."""
        def files(paths: list[str]) -> str:
            if len(paths) == 2:
                return f"{paths[0]} and {paths[1]}"
            return f"{paths[0]}, {paths[1]} and {len(paths) - 2} more"

        return [f"{paths[0]} ({why})" if len(paths) == 1 else f"{len(paths)} files ({files(paths)}): {why}"
                for why, paths in self.not_counted_by_reason.items()]


# (realpath, mtime_ns, size) -> identity, the least recently used dropped past IDENTITIES_KEPT
_identities: OrderedDict[tuple[str, int, int], Identity | None] = OrderedDict()
IDENTITIES_KEPT = 100_000


def identity(path: str | Path) -> Identity | None:
    """A backup's identity, or None where it is no SQLite database syncd can read. It is
    opened immutable (nothing written beside it, not even a -shm, and no lock taken or
    waited for) and remembered while its size and time stay."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (os.path.realpath(path), st.st_mtime_ns, st.st_size)
    if key in _identities:
        _identities.move_to_end(key)
        return _identities[key]
    found = _read_identity(path, "mode=ro&immutable=1", busy_timeout_ms=0)
    _identities[key] = found
    if len(_identities) > IDENTITIES_KEPT:
        _identities.popitem(last=False)
    return found


def live_identity(path: str | Path, busy_timeout_ms: int) -> Identity | None:
    """A source's file as it is now, or None where syncd cannot read it (its application
    held it locked past `busy_timeout_ms`, [sqlite] read_busy_timeout_ms, say)."""
    if not os.path.exists(path):
        return None
    return _read_identity(path, "mode=ro", busy_timeout_ms)


def _read_identity(path: str | Path, mode: str, busy_timeout_ms: int) -> Identity | None:
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?{mode}", uri=True, timeout=busy_timeout_ms / 1000,
                               isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        conn.text_factory = surrogate_text  # a table's name is whatever bytes the application gave SQLite
        names = [r[0] for r in conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")]
        conn.text_factory = str
        capture_id = None
        if META in names:
            row = conn.execute(f"SELECT value FROM main.{quote_ident(META)} WHERE key = 'capture_id'").fetchone()
            capture_id = row[0] if row else None
        tables = frozenset(n.lower() for n in names if not n.lower().startswith(("_syncd", "sqlite_")))
        return Identity(capture_id, tables)
    except sqlite3.Error:  # locked, not a database, encrypted, or compressed behind a SQLite-looking name
        return None
    finally:
        conn.close()


def _likeness(a: Identity, b: Identity) -> float:
    """How much of two files' tables they share (0: none, 1: the same tables)."""
    if not a.tables or not b.tables:
        return 0.0
    return len(a.tables & b.tables) / len(a.tables | b.tables)


@dataclass(frozen=True)
class Verdict:
    why: str  # why the file is no backup of the source
    of: str | None = None  # the other source it plainly backs up


def whose(backup: Identity | None, source: str, sources: dict[str, Identity | None], named: bool) -> Verdict | None:
    """Why the file is no backup of `source` (None: it is one). `sources`: every
    configured source's live identity; `named`: the pattern names the source, so the
    file's name already says whose it is."""
    mine = sources.get(source)
    told = named or len(sources) < 2
    if backup is None:
        return None if told else Verdict("not a plain SQLite file (compressed?), so nothing tells which source it "
                                         "backs up; put {source} in backup_glob")
    if mine is not None and mine.capture_id is not None and backup.capture_id == mine.capture_id:
        return None
    if backup.capture_id is not None:
        for other, ident in sources.items():
            if other != source and ident is not None and ident.capture_id == backup.capture_id:
                return Verdict(f"a backup of {other}", other)
    if mine is None or not mine.tables:
        return None if told else Verdict("the source's file cannot be read to tell its backups apart")
    own = _likeness(backup, mine)
    rivals = sorted(((_likeness(backup, ident), other) for other, ident in sources.items()
                     if other != source and ident is not None), reverse=True)
    if own == 0:
        if not named and rivals and rivals[0][0] > 0:
            return Verdict(f"holds {rivals[0][1]}'s tables rather than {source}'s", rivals[0][1])
        return Verdict(f"holds none of {source}'s tables")
    if named:
        return None  # its name says whose; only a capture id or tables of no kin overrule it
    if rivals and rivals[0][0] > 0:
        # Sources sharing tables (one schema, rolled out at different times, say): tables
        # tell nothing about whose a backup older than syncd is.
        return Verdict(f"shares tables with {rivals[0][1]} and carries no capture id of either, so nothing tells "
                       "which it backs up; put {source} in backup_glob")
    return None


FUTURE_SECONDS = 300.0  # a backup's time this far past the report's is not believed (clocks apart a little are)


def find_backups(pattern: str, source: str, base: Path, now: dt.datetime, live: Path | None,
                 sources: dict[str, Identity | None], live_files: dict[str, Path] | None = None) -> BackupFacts:
    """The backups of `source`; `live`, its database file, is never one (nor its -wal,
    -shm or -journal), nor is another source's (`live_files`: name -> file), however
    the pattern reads, and an empty file (a backup job that failed half-way) is no
    backup either. `sources` (every configured source's live identity, `source`'s
    among them) lets a file be credited by its content."""
    expanded = pattern.replace("{source}", source)
    full = expanded if os.path.isabs(expanded) else str(base / expanded)
    named = "{source}" in pattern
    # SQLite keeps -wal, -shm and -journal beside the file a symlink leads to
    itself = set() if live is None else {os.path.realpath(live) + s for s in ("", "-wal", "-shm", "-journal")}
    theirs = {os.path.realpath(path) + s: name for name, path in (live_files or {}).items() if name != source
              for s in ("", "-wal", "-shm", "-journal")}
    files, not_counted, others = [], [], 0
    by_reason: dict[str, list[str]] = {}

    def skip(path: str, why: str) -> None:
        not_counted.append(f"{path} ({why})")
        by_reason.setdefault(why, []).append(path)

    links: dict[tuple[int, int], str] | None = None  # the live files' inodes, read once a hard link is met
    for p in sorted(glob.glob(full, recursive=True)):
        try:
            st = os.stat(p)
        except OSError:
            continue
        if not os.path.isfile(p):
            continue
        real = os.path.realpath(p)
        if st.st_nlink > 1:  # a hard link (`ln`, `cp -l`) may be a live file under another name: its inode tells
            if links is None:
                links = {i: path for path in (*itself, *theirs) if (i := _inode(path)) is not None}
            real = links.get((st.st_dev, st.st_ino), real)
        if real in itself:
            skip(p, "the live database")
        elif real in theirs:
            skip(p, f"the live database of {theirs[real]}")
        elif st.st_size == 0:
            skip(p, "empty")
        elif st.st_mtime > now.timestamp() + FUTURE_SECONDS:
            # Written by a host whose clock runs ahead, or unpacked with another's dates:
            # when it was taken is not known, so it is not the recent backup.
            when = dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            skip(p, f"dated in the future, {when}: a clock ahead?")
        elif (unread := _unreadable_file(p)) is not None:
            skip(p, unread)  # nothing shows it is a backup, nor whose
        elif (broken := _damaged(p, st.st_size)) is not None:
            skip(p, broken)
        elif (empty := _holds_no_database(p)) is not None:
            skip(p, empty)
        elif (no := whose(identity(p), source, sources, named)) is not None:
            if not named and no.of is not None:
                others += 1  # a shared folder: the other sources' own backups, each credited there
            else:
                skip(p, no.why)
        else:
            files.append((st.st_mtime, st.st_size, p))
    if not files:
        return BackupFacts(full, 0, None, None, None, None, None, not_counted, others, _unreadable(full), by_reason)
    files.sort()
    mtime, size, newest = files[-1]
    age = lambda t: (now.timestamp() - t) / 86400  # noqa: E731
    return BackupFacts(full, len(files), newest, age(mtime), size, _is_sqlite(newest), age(files[0][0]), not_counted,
                       others, None, by_reason)


def _unreadable(pattern: str) -> str | None:
    """The folder of `pattern` (its part before any wildcard), said when this process may
    not list it, nor enter a folder above it: glob then finds nothing there, which is no
    evidence that no backup exists."""
    parts = Path(pattern).parts[:-1]
    for i in range(1, len(parts) + 1):
        if glob.has_magic(parts[i - 1]):
            break
        folder = os.path.join(*parts[:i])
        if not os.path.isdir(folder):
            return None
        last = i == len(parts) or glob.has_magic(parts[i])
        if not os.access(folder, os.R_OK | os.X_OK if last else os.X_OK):
            return (f"syncd may not read the folder {folder} (running as {_running_as()}), so it sees no backup there: "
                    "let it read the folder (its group, or its mode)")
    return None


def _running_as() -> str:
    """The user syncd runs as, as a message names it."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _unreadable_file(path: str) -> str | None:
    """Why this process cannot read the file `path` (its mode, say: a backup job's 0600
    as root), or None. Such a file tells nothing of what it holds, so it is no evidence."""
    try:
        with open(path, "rb") as f:
            f.read(len(SQLITE_HEADER))
    except OSError as e:
        return _unread(e)
    return None


def _unread(e: OSError) -> str:
    """Why a file listed a moment ago could not be read: its mode, or it is gone."""
    if e.errno in (errno.EACCES, errno.EPERM):
        return (f"syncd may not read it (running as {_running_as()}: {e.strerror or e}), so nothing shows it is a backup: "
                "let it read the file (its group, or its mode)")
    if e.errno == errno.ENOENT:
        return "gone before syncd could read it (removed or renamed meanwhile: a backup job rotating its files?)"
    return f"syncd could not read it ({e.strerror or e}), so nothing shows it is a backup"


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _damaged(path: str, size: int) -> str | None:
    """Why a file that begins as a SQLite database is none a restore could use (a backup
    job killed half-way, a disk that filled up, a copy that stopped), or None. What does
    not begin as one (compressed, say) is not judged here: whose() says what it counts for."""
    try:
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError:
        return None
    if not head.startswith(SQLITE_HEADER):
        return None
    if len(head) < 100:
        return f"cut short: {size} bytes, less than SQLite's 100-byte header"
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    if page < 512 or page & (page - 1):
        return "damaged: its header names no valid page size"
    pages = int.from_bytes(head[28:32], "big")
    if pages and head[24:28] == head[92:96] and size < pages * page:  # the header's own size is valid
        return f"cut short: {size:,} bytes of the {pages * page:,} its header says"
    if size % page:
        return f"cut short: {size:,} bytes, not a whole number of {page}-byte pages"
    if identity(path) is None:
        return "damaged: it begins as a SQLite database and cannot be read as one"
    return None


# Compressed backups syncd can look into (Python's own modules), by their first bytes.
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "lzma"}
# Forms syncd cannot look into, by their first bytes: named for what they are.
_OPAQUE = {
    b"\x28\xb5\x2f\xfd": "a zstd file",
    b"PK\x03\x04": "a zip archive",
    b"age-encryption.org/": "an age encrypted file",
    b"-----BEGIN AGE ENCRYPTED FILE-----": "an age encrypted file",
    b"-----BEGIN PGP MESSAGE-----": "an OpenPGP (gpg) encrypted file",
}
_KEEP = "keep a plain, gzip, bzip2 or xz copy (or a tar of one, the database first) it can read"
_TAR_MAGIC = (257, b"ustar")  # where a tar archive's first header says it is one (POSIX and GNU)
_TAR_DIRECTORIES = 100  # directory entries passed over to reach an archive's first file
# The most of an archive (unpacked) read to find its first file: a tar header declares its own
# size, and a pax or long-name header is read whole, so a damaged or hostile archive could
# otherwise have the report read gigabytes into memory.
_TAR_BUDGET = 1 << 20


def _holds_no_database(path: str) -> str | None:
    """Why a file that does not begin as a SQLite database holds none syncd can see (a
    job's log, an error page, compressed or not; a zstd, zip, gpg or age file it cannot
    look into), or None: it is one, or a gzip, bzip2 or xz stream that begins as one, or
    a tar archive (plain or so compressed) whose first file does (only first bytes are
    unpacked, and the archive's first headers read)."""
    import bz2
    import gzip
    import lzma
    import zlib

    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return _unread(e)  # gone since _unreadable_file read it, say: still no backup
    if head.startswith(SQLITE_HEADER):
        return None
    kind = next((k for magic, k in _COMPRESSED.items() if head.startswith(magic)), None)
    if kind is None:
        if _is_tar(head):
            return _tar_without_database(path, None, "a tar archive")
        opaque = next((what for magic, what in _OPAQUE.items() if head.startswith(magic)), None)
        if opaque is None and _openpgp(head):
            opaque = "an OpenPGP (gpg) encrypted file"
        if opaque is not None:
            return f"{opaque} syncd cannot look into: {_KEEP}"
        return ("holds no SQLite database: it neither begins as one nor is a tar, gzip, bzip2 or xz file syncd can "
                "look into")
    opener = {"gzip": gzip.open, "bz2": bz2.open, "lzma": lzma.open}[kind]
    try:
        with opener(path, "rb") as f:
            inner = f.read(512)
    except (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError) as e:
        return f"holds no SQLite database syncd can read: a damaged {kind} file ({e})"
    if inner.startswith(SQLITE_HEADER):
        return None
    if _is_tar(inner):
        return _tar_without_database(path, opener, f"a {kind} tar archive")
    return f"holds no SQLite database: a {kind} file of something else"


def _is_tar(head: bytes) -> bool:
    at, magic = _TAR_MAGIC
    return head[at : at + len(magic)] == magic


class _Budget(io.RawIOBase):
    """`raw` read no further than `left` bytes, then at its end."""

    def __init__(self, raw, left: int):
        self.raw, self.left = raw, left

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.raw.read(min(len(b), self.left)) if self.left > 0 else b""
        b[: len(data)] = data
        self.left -= len(data)
        return len(data)


def _tar_without_database(path: str, opener, what: str) -> str | None:
    """Why the tar archive `path` (unpacked by `opener`, None: a plain one) shows no SQLite
    database, or None: its first file (directories passed over) begins as one. Only the
    archive's first headers and that file's first bytes are read, at most _TAR_BUDGET
    bytes in all."""
    import lzma
    import tarfile
    import zlib

    try:
        with (opener or open)(path, "rb") as raw, \
                tarfile.open(fileobj=_Budget(raw, _TAR_BUDGET), mode="r|") as t:
            for _ in range(_TAR_DIRECTORIES):
                m = t.next()
                if m is None or not m.isdir():
                    break
            else:
                m = None
            if m is None:
                return f"holds no SQLite database: {what} with no file in its first entries"
            if not m.isfile():
                return (f"holds no SQLite database syncd can find: {what} whose first entry, {m.name}, is no file: "
                        f"put the database first in the archive, or keep a plain, gzip, bzip2 or xz copy")
            f = t.extractfile(m)
            first = f.read(len(SQLITE_HEADER)) if f is not None else b""
    except (OSError, EOFError, ValueError, tarfile.TarError, zlib.error, lzma.LZMAError) as e:
        return f"holds no SQLite database syncd can read: a damaged {what.removeprefix('a ')} ({e})"
    if first.startswith(SQLITE_HEADER):
        return None
    return (f"holds no SQLite database syncd can find: {what} whose first file, {m.name}, is none (syncd looks only "
            "at the first): put the database first in the archive, or keep a plain, gzip, bzip2 or xz copy")


def _openpgp(head: bytes) -> bool:
    """Whether `head` begins an OpenPGP message encrypted to a key or a passphrase (gpg
    --encrypt, gpg --symmetric): its first packet, a session key's, and that packet's version."""
    if len(head) < 3 or not head[0] & 0x80:
        return False
    b = head[0]
    if b & 0x40:  # the new packet format
        tag, lengths = b & 0x3F, 1 if head[1] < 192 else 2 if head[1] < 224 else 5 if head[1] == 255 else 0
    else:
        tag, lengths = (b >> 2) & 0x0F, {0: 1, 1: 2, 2: 4}.get(b & 3, 0)
    if not lengths or len(head) <= 1 + lengths:
        return False
    version = head[1 + lengths]
    return (tag == 1 and version in (3, 6)) or (tag == 3 and version in (4, 5, 6))


def _is_sqlite(path: str) -> bool | None:
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return None
