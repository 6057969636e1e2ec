"""Sources found by a glob: `path = "/srv/tenants/*.db"` with `name = "tenant_{stem}"`
(schema likewise) stands for one source per file, now and later.

Each file matched becomes an ordinary source: {stem} is the file name without its
extension, {name} the file name, {parent} its directory's name. A file whose name
would make an invalid or duplicate source name, or a schema a configured source may
not have (syncd's bookkeeping schema, Postgres's own), is not picked up, and says so (the
daemon logs it, `syncd status` lists it): nothing is skipped in silence. The daemon
expands the globs again every [stream] discover_interval_seconds, so files that appear
are snapshotted and streamed without a restart; a file that disappears keeps its
source, shown as missing.
"""

from __future__ import annotations

import glob
import os
import re
import stat
import time
from pathlib import Path

from syncd.config import REHEARSAL_SUFFIX, Settings, SourceSettings, _file_id, _real, is_glob, rehearsal_name_problem
from syncd.identifiers import PG_MAX_IDENTIFIER_BYTES
from syncd.sqlite.connection import not_utf8

NAME = re.compile(r"[A-Za-z0-9_.\-]+")


class NotPickedUp(str):
    """A line saying why a file a glob matches is not picked up, with its reason as
    syncd_files_not_picked_up counts it (metrics.NOT_PICKED_UP)."""

    reason = "name"
    same_as: str | None = None  # the carried file this one is a hard link of

    def __new__(cls, text: str, reason: str, same_as: str | None = None) -> "NotPickedUp":
        out = super().__new__(cls, text)
        out.reason = reason
        out.same_as = same_as
        return out


def glob_matches(path: str | Path, pattern: str | Path) -> bool:
    """Whether glob.glob(`pattern`) finds `path`: name by name, a * never spanning a /
    (fnmatch on the whole path lets it: /srv/t/*.db would match /srv/t/eu/acme.db), nor
    taking a name that starts with '.' unless the pattern's name does."""
    import fnmatch

    parts, pats = Path(path).parts, Path(pattern).parts
    return len(parts) == len(pats) and all(
        fnmatch.fnmatchcase(a, p) and not (a.startswith(".") and not p.startswith(".") and glob.has_magic(p))
        for a, p in zip(parts, pats))


def _fill(template: str, file: Path) -> str:
    return template.replace("{stem}", file.stem).replace("{name}", file.name).replace("{parent}", file.parent.name)


# A directory's modification time moves in ticks, coarse ones on older kernels (a
# jiffy, up to 10 ms) and on some network filesystems: one this recent may yet be the
# time of a file created after the look.
RECENT_NS = 2_000_000_000


def signature(settings: Settings) -> tuple:
    """Changes whenever a file is added to or removed from a directory a glob looks in
    (its modification time moves): the daemon expands the globs again only then. While a
    directory's time is within RECENT_NS of now, every signature differs: a file created
    in the tick of the last look leaves the time as it was, and is found by looking again."""
    out: list[tuple] = []
    now = time.time_ns()
    for pattern in settings.patterns:
        for d in sorted({Path(p) for p in glob.glob(str(pattern.path.parent))} or {pattern.path.parent}):
            try:
                mtime = d.stat().st_mtime_ns
            except OSError:
                out.append((str(d), None))
                continue
            out.append((str(d), mtime))
            if mtime > now - RECENT_NS:
                out.append(("recent", time.monotonic_ns()))
    return tuple(out)


def matches(pattern: SourceSettings) -> list[tuple[Path, Path, tuple[int, int]]]:
    """(file, its real path, its (device, inode)) for every regular file the glob
    matches, SQLite's own -wal/-shm/-journal files aside; a symlink to a file the glob
    matches by its own name is left out (one file, one source: its own name keeps it,
    whichever sorts first). A fleet's directory holds thousands: each file costs one
    lstat, its directory's real path is looked up once."""
    out, links = [], []
    real_dirs: dict[str, str] = {}
    for p in glob.glob(str(pattern.path)):
        if p.endswith(("-wal", "-shm", "-journal")):
            continue
        try:
            st = os.lstat(p)
        except OSError:
            continue  # gone since the glob saw it
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(p)
            try:
                st = os.stat(real)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                links.append((Path(p), Path(real), (st.st_dev, st.st_ino)))
            continue
        elif stat.S_ISREG(st.st_mode):
            head, tail = os.path.split(p)
            if head not in real_dirs:
                real_dirs[head] = os.path.realpath(head or ".")
            real = os.path.join(real_dirs[head], tail)
        else:
            continue
        out.append((Path(p), Path(real), (st.st_dev, st.st_ino)))
    own = {real for _file, real, _key in out}
    return sorted(out + [link for link in links if link[1] not in own])


def expand(settings: Settings) -> Settings:
    """`settings` with every glob source replaced by one source per file it matches now."""
    fixed = list(settings.configured) if settings.configured or settings.patterns else \
        [s for s in settings.sources if not is_glob(s.path)]
    taken = {s.name for s in fixed}
    # The globs themselves, by their text: a source found by one has a file's path, which
    # may hold '[' or '?' (a folder `eu[1]`) and is no pattern for all that.
    globs = {str(p.path) for p in settings.patterns}
    # real path -> the source that has it and the glob it came from (None: configured
    # by itself, which keeps its file whatever glob matches it too).
    taken_paths: dict[Path, tuple[str, Path | None]] = {_real(s.path): (s.name, None) for s in fixed}
    # One file under several names (hard links) is one source too: the name configured,
    # or carried already (a running daemon's sources), or else the first found, keeps it.
    # The sources found before (a running daemon's), each with its file's real path.
    before = [(s, _real(s.path)) for s in settings.sources if str(s.path) not in globs]
    carried: dict[tuple[int, int], Path] = {}
    for s in [*fixed, *(s for s, _real_path in before)]:
        key = _file_id(s.path)
        if key is not None:
            carried.setdefault(key, s.path)
    # A running daemon's sources keep their files: a name found since for one of them
    # (a symlink from another folder the glob matches) is no second source.
    running = {real: s.path for s, real in before}
    # A glob's source whose file is gone (shown as missing) keeps its name until it is
    # forgotten: a file the template gives that name meanwhile is another file, not it.
    # (os.path.exists: a file in a folder syncd may not enter is out of reach, as gone;
    # Path.exists raises "Permission denied" there, which ended every look.)
    gone = {s.name: s.path for s, _real_path in before if s.name not in taken and not os.path.exists(s.path)}
    found: list[SourceSettings] = []
    problems: list[str] = []
    looked = [(pattern, matches(pattern)) for pattern in settings.patterns]
    # A running source's file the globs still match keeps the source's name: a file the
    # template gives that name too (another tenant's, in a folder that sorts first) is not
    # picked up, rather than taking the source over and loading its rows in place of these.
    matched = {real for _pattern, files in looked for _file, real, _key in files}
    holding = {s.name: (s.path, real) for s, real in before if s.name not in taken and real in matched}
    held_by = {real: name for name, (_path, real) in holding.items()}
    for pattern, files in looked:
        for file, real, key in files:
            if not_utf8(str(file)):
                # Postgres keeps every source's path, and SQLite opens a file by a URI:
                # neither holds a name that is not UTF-8. Said with its bytes as escapes.
                shown = str(file).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                problems.append(f"{shown} (from {pattern.path}) is not picked up: its path is not valid UTF-8; "
                                "rename the file (or its folder) to carry it")
                continue
            if real in taken_paths:
                holder, other_glob = taken_paths[real]
                if other_glob is not None and other_glob != pattern.path:
                    # Two globs on one file: the first keeps it, the second's settings never
                    # apply to it, which its user may not expect.
                    problems.append(NotPickedUp(
                        f"{file} (from {pattern.path}) is not picked up as {_fill(pattern.name, file)!r}: it is "
                        f"source {holder!r} already (from {other_glob}); one file is one source: make the globs "
                        "match different files", "same_file"))
                continue  # configured by itself, found by an earlier glob, or a link to a file found
            if running.get(real, file) != file:
                continue  # the same file as a source syncd runs under its own name
            keeper = held_by.get(real)
            later = next((q for q in settings.patterns if q is not pattern and glob_matches(file, q.path)
                          and _fill(q.name, file) == keeper), None) if keeper is not None else None
            if later is not None and keeper != _fill(pattern.name, file):
                # A glob added before the one syncd runs (or registered) the file by: that name keeps it.
                problems.append(NotPickedUp(
                    f"{file} (from {pattern.path}) is not picked up as {_fill(pattern.name, file)!r}: it is source "
                    f"{keeper!r} already (from {later.path}); one file is one source: make the globs match "
                    "different files", "same_file"))
                continue
            taken_paths[real] = ("", None)  # one look at each file: not picked up here, by no later glob either
            other = carried.get(key)
            if other is not None and other != file and _real(other) != real:
                problems.append(NotPickedUp(
                    f"{file} (from {pattern.path}) is not picked up: it is the same file as {other} (hard links: "
                    f"one file, two names), which syncd carries. SQLite keeps a file's -wal and -journal beside "
                    f"the name it is opened by: the application must open it as {other} too, or syncd may miss "
                    "its changes", "same_file", same_as=str(other)))
                continue
            name = _fill(pattern.name, file)
            schema = _fill(pattern.schema_, file) if pattern.schema_ else name
            why = None
            if not NAME.fullmatch(name):
                why = f"its source name {name!r} may only use letters, digits, '_', '.' and '-'"
            elif name in taken:
                why = f"its source name {name!r} is already taken"
            elif (rehearsal := rehearsal_name_problem(name, taken)) is not None:
                why = f"its source name {rehearsal}"
            elif name in holding and holding[name][1] != real:
                why = f"its source name {name!r} is already taken by {holding[name][0]}"
            elif name in gone:
                why = (f"its source name {name!r} is the source of {gone[name]}, whose file is gone (shown as "
                       f"missing); if that file is gone for good, `syncd uninstall --forget --source {name}` and "
                       "this file is picked up as a new source")
            elif len(schema.encode()) > PG_MAX_IDENTIFIER_BYTES:
                why = f"its schema {schema!r} is longer than {PG_MAX_IDENTIFIER_BYTES} bytes"
            elif schema == settings.postgres.bookkeeping_schema:
                why = f"its schema {schema!r} is syncd's own bookkeeping schema ([postgres] bookkeeping_schema)"
            elif schema == settings.postgres.bookkeeping_schema + REHEARSAL_SUFFIX:
                why = f"its schema {schema!r} is where `syncd rehearse` keeps its bookkeeping (dropped after each)"
            elif schema.startswith("pg_") or schema == "information_schema":
                why = f"its schema {schema!r} is reserved by Postgres"
            if why:
                problems.append(NotPickedUp(f"{file} (from {pattern.path}) is not picked up: {why}",
                                            "schema" if why.startswith("its schema") else "name"))
                continue
            taken.add(name)
            taken_paths[real] = (name, pattern.path)
            carried.setdefault(key, file)
            found.append(pattern.model_copy(update={"name": name, "path": file, "schema_": schema}))
    return settings.model_copy(update={"sources": fixed + found, "discovery_problems": problems})


async def remembered(settings: Settings, conn, bk_schema: str, dsn: str) -> list[SourceSettings]:
    """Sources syncd ran from a glob whose file is gone now: still shown (as missing),
    never dropped in silence. Read from the bookkeeping of one target database."""
    if not settings.patterns:
        return []
    rows = await _registered_rows(conn, bk_schema)
    known = {s.name for s in settings.sources}
    out = []
    for name, path, schema in rows:
        if name in known or not path or os.path.exists(path):
            continue
        for pattern in settings.patterns:
            # Matched as the glob matches files (its * takes no '/'), under the name its
            # template makes: a source another configuration runs from the same database
            # (a glob in a folder of this one's, say) is not this one's.
            if (glob_matches(path, pattern.path) and _fill(pattern.name, Path(path)) == name
                    and settings.dsn_for(pattern) == dsn):
                out.append(pattern.model_copy(update={"name": name, "path": Path(path),
                                                      "schema_": schema or name}))
                break
    return [s for s in out if s.name not in await _run_elsewhere(conn, bk_schema, [s.name for s in out])]


async def _run_elsewhere(conn, bk_schema: str, sources: list[str]) -> set[str]:
    """Of `sources`, those whose lock a daemon of another host holds: run where their file
    is (a fleet of hosts sharing the database), not gone. A daemon of this host lets a gone
    file's lock go, but only after it notices: until then the file is gone all the same."""
    from syncd.postgres.bookkeeping import LOCK_CLASS, application_name, source_keys

    if not sources:
        return set()
    here = application_name().rsplit(" pid ", 1)[0] + " pid "  # `syncd <this host> pid `
    try:
        keys = await source_keys(conn, bk_schema, sources, assign=False)
        rows = await conn.fetch(
            "SELECT k.source FROM unnest($2::text[], $3::int[]) AS k (source, key) WHERE EXISTS (SELECT 1 FROM "
            "pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::oid AND l.objid = k.key::oid "
            "AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.pid AND left(a.application_name, $4) = $5))",
            LOCK_CLASS, list(keys), list(keys.values()), len(here), here)
    except Exception:  # noqa: BLE001 - not known: each shown as missing, as before
        return set()
    return {r[0] for r in rows}


# Target databases whose registered sources got no answer in this command (a statement
# timed out, a slow server): the gone files' lookup says so at once instead of waiting
# [postgres] statement_timeout_seconds again, while the command keeps what got no answer
# (postgres.connect.remember_unanswered; a switch and the daemon ask again).
_lookup_unanswered: dict[str, BaseException] = {}


async def gone_sources(settings: Settings, selected: str | list[str] | None = None,
                       unknown: list[str] | None = None) -> list[SourceSettings]:
    """Sources syncd ran from a glob whose file is gone, from every target database's
    bookkeeping (`remembered`), those `selected` names (glob patterns) only. A database
    that cannot be reached or asked adds a line saying so to `unknown` (its sources of
    gone files are not known: never none in silence)."""
    import fnmatch

    from syncd.postgres.connect import remembering_unanswered

    names = [selected] if isinstance(selected, str) else list(selected or [])
    if names and all(not glob.has_magic(n) and n in {s.name for s in settings.sources} for n in names):
        return []  # sources with files (a gone file's source is none of them): nothing to look up
    out = []
    async for dsn, conn in _each_target(settings, unknown):
        try:
            if dsn in _lookup_unanswered and remembering_unanswered():
                raise _lookup_unanswered[dsn]  # waited for once in this command (as_registered): not again
            out += await remembered(settings, conn, settings.postgres.bookkeeping_schema, dsn)
        except Exception as e:  # noqa: BLE001 - refused, timed out, the connection lost: said, not "none"
            if unknown is None:
                raise
            unknown.append(not_looked_up(dsn, e, settings))
    if names:
        out = [s for s in out if any(fnmatch.fnmatchcase(s.name, n) for n in names)]
    return out


def not_looked_up(dsn: str, exc: BaseException, settings: Settings) -> str:
    """One line: the glob's registered sources could not be looked up in `dsn` (shown
    without its password), and why."""
    from syncd.postgres.connect import (PostgresUnavailable, describe, login_refused, postgres_lost,
                                        privilege_refused, statement_cancelled)
    from syncd.redact import scrub

    if isinstance(exc, PostgresUnavailable):
        why = login_refused(exc, dsn) or f"Postgres unreachable: {exc}"
    else:
        why = (privilege_refused(exc, dsn) or postgres_lost(exc)
               or statement_cancelled(exc, dsn, settings.postgres.statement_timeout_seconds)
               or f"Postgres: {describe(exc)}")
        why = f"could not look up the glob's registered sources in {scrub(dsn)}: {why}"
    return f"{why}; the sources of the glob's files that are gone are not known"


async def as_registered(settings: Settings) -> Settings:
    """`settings` expanded again where one file has several names the globs match (hard
    links): the name syncd registered it under keeps it, as in the daemon that ran it,
    not whichever name sorts first (which would start a second source on the file by a
    name the application may not write by, and leave the registered one out). A source
    whose file is gone keeps its name from a file the template gives it since, as in the
    daemon that shows it missing. Postgres away: `settings` as they are."""
    from syncd.postgres.connect import QUERY_CANCELED, remembering_unanswered, sqlstate

    if not settings.patterns:
        return settings
    carried = []
    found = {s.name for s in settings.sources}
    held = False
    async for dsn, conn in _each_target(settings):  # Postgres away: the globs' own order
        try:
            rows = await _registered_rows(conn, settings.postgres.bookkeeping_schema)
        except Exception as e:  # noqa: BLE001 - not asked: the globs' own order (the gone files' lookup says so)
            if remembering_unanswered() and (isinstance(e, TimeoutError) or sqlstate(e) == QUERY_CANCELED):
                _lookup_unanswered[dsn] = e
            continue
        for name, path, _schema in rows:
            if not path:
                continue
            # A gone file's source holds its name (expand): matched as the glob matches files.
            there = os.path.isfile(path)
            if not there and (os.path.exists(path) or name not in found):
                continue
            for pattern in settings.patterns:
                if (glob_matches(path, pattern.path) and settings.dsn_for(pattern) == dsn
                        and _fill(pattern.name, Path(path)) == name):
                    carried.append(pattern.model_copy(update={"name": name, "path": Path(path)}))
                    held = held or not there
                    break
    if not carried or not (held or settings.discovery_problems):
        return settings
    return expand(settings.model_copy(update={"sources": [*settings.configured, *carried]}))


async def _registered_rows(conn, bk_schema: str) -> list:
    """(source, its SQLite path, its target schema) of every source one target database's
    bookkeeping holds; none before there is bookkeeping. Any other failure (a privilege
    refused, a statement timed out, the connection lost) is raised: not "none"."""
    import asyncpg

    from syncd.identifiers import quote_pg_ident

    try:
        return await conn.fetch(f"SELECT source, sqlite_path, target_schema FROM {quote_pg_ident(bk_schema)}.sources")
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):  # no bookkeeping yet: nothing registered
        return []


async def _each_target(settings: Settings, unknown: list[str] | None = None):
    """(dsn, connection) for each target database the globs load into, one at a time,
    closed after; a database that cannot be reached is passed over, said in `unknown`."""
    from syncd.postgres.connect import close_quietly, connect

    for dsn in dict.fromkeys(settings.dsn_for(p) for p in settings.patterns):
        try:
            conn = await connect(dsn, settings.password(), settings.postgres)
        except Exception as e:  # noqa: BLE001 - Postgres away
            if unknown is not None:
                unknown.append(not_looked_up(dsn, e, settings))
            continue
        try:
            yield dsn, conn
        finally:
            await close_quietly(conn)
