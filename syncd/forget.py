"""Forgetting a source whose SQLite file is gone for good (`syncd uninstall --forget`).

A source syncd ran from a glob keeps being shown, as missing and CRITICAL, once its file
is deleted: nothing goes away in silence. When the file is gone for good (a tenant
removed, a file renamed), the operator says so, and syncd removes what it keeps in
Postgres to follow the file: the source's bookkeeping, a way back's capture, the
guards and indexes it made for the stream, a reload's table left half filled. The
replica's tables stay, with their rows, and so do the source's history (events,
verification runs) and its key; a file that comes back under the same name later is a
new source, loaded again into its tables."""

from __future__ import annotations

from syncd.config import Settings, SourceSettings
from syncd.identifiers import qualified
from syncd.model import TO_POSTGRES
from syncd.postgres.bookkeeping import (OWNED_TABLES, Bookkeeping, bookkeeping_exists, source_key, try_lock_source,
                                       unlock_source)
from syncd.postgres.connect import close_quietly, connect


class Refused(Exception):
    """The source cannot be forgotten now; the message says why and what to do."""


async def forget(settings: Settings, source: SourceSettings) -> str:
    """Remove the source's bookkeeping from Postgres, its file being gone. Refused while
    the file is there, or while another syncd runs the source or switches it."""
    from syncd import cutover, rollback
    from syncd.postgres import app_triggers, cutover_guard

    try:
        there = source.path.exists()
    except OSError as e:  # a folder syncd may not enter: the file may be there still, not known to be gone
        raise Refused(f"SQLite file {source.path} cannot be reached: {e.strerror}; --forget is for a source whose "
                      "file is gone for good: let syncd into its folder to tell") from None
    if there:
        raise Refused(f"{source.path} exists: --forget is for a source whose file is gone for good (without it, "
                      "`syncd uninstall` removes capture from the file)")
    bk_schema = settings.postgres.bookkeeping_schema
    # Direct (past any pooler): the source's and the switch's locks are this session's.
    pg = await connect(settings.direct_dsn_for(source), settings.password(), settings.postgres)
    try:
        b = Bookkeeping(bk_schema, source.name)
        if not await bookkeeping_exists(pg, bk_schema) or await b.load_source(pg) is None:
            return f"{source.name}: nothing recorded in Postgres for it; nothing to forget"
        b.key = key = await source_key(pg, bk_schema, source.name)
        await try_lock_source(pg, source.name, key)
        if not await cutover.take_switch_lock(pg, key):
            raise Refused(f"a cutover or rollback of this source is running: "
                          f"{await cutover.switch_holder(pg, key) or 'another session'}; let it finish first")
        notes = []
        if await b.direction(pg) == TO_POSTGRES:
            # A cutover that stopped before finishing: its record is closed and its guard,
            # which would refuse the application's writes in Postgres, goes.
            await cutover.close_abandoned(pg, b, "the source's file is gone")
            if await cutover_guard.unguard(pg, bk_schema, source.name, key, source.schema):
                notes.append("the cutover's guard trigger is left on a busy table (it passes every write now)")
        else:
            undone = await rollback.undo_abandoned(settings, source, pg)
            if undone:
                notes.append(undone)
        ended = await rollback.end_way_back(pg, settings, source, "the SQLite file is gone; the source is forgotten "
                                                                  "(syncd uninstall --forget)")
        if ended:
            notes.append(f"removed the way back's capture from {ended} Postgres table(s)")
        await rollback.drop_lookup_indexes(pg, settings, source)
        async with pg.transaction():
            enabled = await app_triggers.restore(pg, bk_schema, source.name, source.schema)
            aside = await pg.fetch(f"SELECT tid FROM {b.s}.tables WHERE source = $1 AND load_aside "
                                   "AND tid IS NOT NULL", source.name)
            for r in aside:
                await pg.execute(f"DROP TABLE IF EXISTS {qualified(bk_schema, b.aside_table(r[0]))}")
            tables = await pg.fetchval(f"SELECT count(*) FROM {b.s}.{OWNED_TABLES} WHERE source = $1 "
                                       "AND schema_name = $2", source.name, source.schema)
            await pg.execute(f"DELETE FROM {b.s}.sources WHERE source = $1", source.name)  # its tables' rows too
            await b.event(pg, "source_forgotten", None, f"its SQLite file {source.path} is gone")
        app_triggers.say(source.name, enabled, disabled=False)
        notes += [app_triggers.line(t, disabled=False) for t in enabled]
        await cutover.release_switch_lock(pg, key)
        await unlock_source(pg, key)
    finally:
        await close_quietly(pg)
    if source.name in {s.name for s in settings.configured}:
        notes.append("remove its [[sources]] entry from the configuration too, or it is shown as missing")
    more = "".join(f"; {n}" for n in notes)
    return (f"{source.name}: forgot the source, its file {source.path} gone: its bookkeeping in Postgres is "
            f"removed, its {tables} table(s) in schema {source.schema!r} stay with their rows{more}")
