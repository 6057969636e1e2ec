"""`syncd uninstall`: remove syncd's triggers and changelog from the SQLite files.
Application tables are untouched; Postgres's tables too (for a source cut over to
Postgres, the way back's capture there is removed: nothing would read it any more)."""

from __future__ import annotations

import asyncio
import sqlite3

from syncd.cli import common
from syncd.config import Settings, SourceSettings
from syncd.model import TO_POSTGRES
from syncd.postgres.bookkeeping import Bookkeeping, SourceLocked, source_key, try_lock_source, unlock_source
from syncd.postgres.connect import PostgresUnavailable, close_quietly, connect
from syncd.sqlite import capture, reader
from syncd.sqlite.connection import SourceFileError, cannot_write, open_connection


def register(sub, parent) -> None:
    p = sub.add_parser("uninstall", parents=[parent], help="remove syncd's triggers and changelog from SQLite",
                       description="Remove the capture triggers, changelog and registry syncd installed in each "
                                   "SQLite file. Refuses while a daemon runs the source, and while changes are "
                                   "still waiting to be applied unless --force (with Postgres unreachable, --force "
                                   "goes ahead without either check: stop the daemon first).")
    common.add_source_option(p)
    p.add_argument("--force", action="store_true",
                   help="uninstall even with unapplied changes or Postgres unreachable")
    p.add_argument("--forget", action="store_true",
                   help="for a source whose SQLite file is gone for good: remove its bookkeeping from Postgres "
                        "(its tables there stay, with their rows); needs --source")
    p.set_defaults(func=main)


def main(args) -> int:
    settings = common.load(args)
    common.setup_logging(args, settings)
    if args.forget:
        return _forget_each(settings, args.source)
    rc = 0
    for source in common.selected_sources(settings, args.source):
        try:
            common.say(asyncio.run(_uninstall(settings, source, args.force)))
        except (SourceFileError, SourceLocked, Refused, capture.CaptureStateError) as e:
            common.say(f"{source.name}: ERROR {e}")
            rc = 1
        except (sqlite3.OperationalError, capture.LockTimeout) as e:
            if unwritable := cannot_write(e, source.path):
                common.say(f"{source.name}: ERROR {unwritable}")
                rc = 1
                continue
            if not capture.contended(e):
                raise
            common.say(f"{source.name}: ERROR {source.path} is locked by another connection ({e}); "
                       "try again once it is free")
            rc = 1
    return rc


class Refused(Exception):
    pass


def _forget_each(settings: Settings, selected) -> int:
    from syncd.forget import Refused as ForgetRefused
    from syncd.forget import forget

    if selected is None:
        raise common.ConfigError("--forget needs --source: name the sources whose file is gone for good")
    unknown: list[str] = []  # where the sources of a glob's gone files could not be looked up
    try:
        chosen = common.selected_sources(common.with_gone_sources(settings, unknown, selected), selected)
    except common.ConfigError:
        # A glob's source whose file is gone is known from Postgres's bookkeeping alone:
        # with that Postgres unreachable (or not answering), the name is not unknown, only
        # not to be looked up.
        if not unknown:
            raise
        for name in [selected] if isinstance(selected, str) else selected:
            common.say(f"{name}: ERROR cannot look up a source whose file is gone: {unknown[0]}")
        return 1
    rc = 1 if unknown else 0
    for why in unknown:  # a name's glob may match sources not known there: not forgotten
        common.say(f"ERROR {why}")
    for source in chosen:
        try:
            common.say(asyncio.run(forget(settings, source)))
        except (ForgetRefused, SourceLocked, PostgresUnavailable) as e:
            common.say(f"{source.name}: ERROR {e}")
            rc = 1
    return rc


async def _uninstall(settings: Settings, source: SourceSettings, force: bool) -> str:
    conn = open_connection(source.path, settings.sqlite.read_busy_timeout_ms)
    pg = None
    try:
        state = capture.read_state(conn)
        if not state.installed and not state.triggers:
            return f"{source.name}: no capture installed in {source.path}; nothing to do"
        note = ""
        try:
            # Direct (past any pooler): the source's and the switch's locks are this session's.
            pg = await connect(settings.direct_dsn_for(source), settings.password(), settings.postgres)
            key = await source_key(pg, settings.postgres.bookkeeping_schema, source.name)
            await try_lock_source(pg, source.name, key)
            applied = 0
            row = await Bookkeeping(settings.postgres.bookkeeping_schema, source.name).load_source(pg) \
                if await _has_bookkeeping(pg, settings) else None
            if row is not None:
                note += await _settle_switch(settings, source, pg, conn, key)
            if row is not None and row.capture_id == state.capture_id:
                applied = row.applied_seq
            pending = reader.entries_after(conn, applied) if state.key_slots else 0
            if pending and not force:
                raise Refused(f"{pending} captured change(s) are not yet applied to Postgres; run the daemon "
                              "until it catches up, or pass --force to discard them")
            behind, reloads = await _way_back_behind(pg, settings, source, conn)
            if (behind or reloads) and not force:
                what = " and ".join(x for x in (f"{behind} change(s) made in Postgres" if behind else "",
                                                f"{reloads} table(s) to copy again" if reloads else "") if x)
                raise Refused(f"{what} are not yet written to the SQLite file (the way back after the cutover); "
                              "run the daemon until it catches up, or pass --force to uninstall anyway: they stay "
                              "in Postgres and never reach the SQLite file")
            from syncd.rollback import end_way_back

            ended = await end_way_back(pg, settings, source, "capture uninstalled (syncd uninstall)")
            if ended:
                note = (f"; removed the way back's capture from {ended} Postgres table(s): a rollback is no "
                        "longer possible")
            if row is not None:  # no stream from this file any more: syncd's lookup indexes on the replica go
                from syncd.postgres import app_triggers
                from syncd.rollback import drop_lookup_indexes

                await drop_lookup_indexes(pg, settings, source)
                # The application's own triggers syncd kept from running on its rows run again.
                async with pg.transaction():
                    enabled = await app_triggers.restore(pg, settings.postgres.bookkeeping_schema, source.name,
                                                         source.schema)
                app_triggers.say(source.name, enabled, disabled=False)
                note += "".join(f"; {app_triggers.line(t, disabled=False)}" for t in enabled)
            await unlock_source(pg, key)
        except PostgresUnavailable as e:
            if not force:
                raise Refused(f"{e}; cannot check for unapplied changes or a running daemon (use --force)") from None
        # pg's session keeps the switch lock until capture is gone: no cutover starts meanwhile.
        dropped, frozen = capture.uninstall(conn, settings.sqlite.write_busy_timeout_ms)
        if frozen:
            note += (f"; the file stays frozen (it was cut over to Postgres): its {frozen} table(s) refuse the "
                     "application's writes with syncd's message (drop the _syncd_freeze_* triggers to write it again)")
        return f"{source.name}: removed {dropped} trigger(s), the changelog and the registry from {source.path}{note}"
    finally:
        await close_quietly(pg)
        conn.close()


class _ThisConnection:
    """The uninstall's own SQLite connection, where a switch's undo wants a worker."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    async def run(self, fn, *args):
        return fn(self.conn, *args)


async def _settle_switch(settings: Settings, source: SourceSettings, pg, conn: sqlite3.Connection, key: int) -> str:
    """Refuse while a cutover or rollback of the source runs; undo one that stopped
    before finishing (as the daemon or the next switch would): the file a cutover froze,
    or Postgres a rollback froze, takes the application's writes again instead of staying
    frozen for good once capture is gone. The switch lock stays held (this session) until
    the uninstall's connection closes. Returns what was undone, for the output."""
    from syncd import cutover, rollback

    if not await cutover.take_switch_lock(pg, key):
        raise Refused(f"a cutover or rollback of this source is running: "
                      f"{await cutover.switch_holder(pg, key) or 'another session'}; "
                      "let it finish, then uninstall")
    direction = await Bookkeeping(settings.postgres.bookkeeping_schema, source.name).direction(pg)
    if direction == TO_POSTGRES:
        done = await cutover.undo_abandoned(settings, source, pg, _ThisConnection(conn))
    else:
        done = await rollback.undo_abandoned(settings, source, pg)
    return f"; {done}" if done else ""


async def _has_bookkeeping(pg, settings: Settings) -> bool:
    from syncd.postgres.bookkeeping import bookkeeping_exists

    return await bookkeeping_exists(pg, settings.postgres.bookkeeping_schema)


async def _way_back_behind(pg, settings: Settings, source: SourceSettings, conn: sqlite3.Connection) -> tuple[int, int]:
    """For a source cut over to Postgres whose way back is live: (Postgres's changes the
    file has not received, tables waiting to be copied into it again); (0, 0) otherwise."""
    from syncd.reverse import applier
    from syncd.reverse import capture as reverse_capture
    from syncd.reverse.checkpoint import META_KEY
    from syncd.rollback import reverse_behind

    names = await reverse_capture.names_of(pg, settings.postgres.bookkeeping_schema, source.name)
    gen = await reverse_capture.generation(pg, names)
    if gen is None or gen.retired_at is not None:
        return 0, 0
    return await reverse_behind(pg, names, applier.read_meta(conn, META_KEY), len(applier.read_reload(conn)))
