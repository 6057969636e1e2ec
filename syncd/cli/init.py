"""`syncd init`: install capture in every source and create everything in Postgres.
Idempotent; safe to re-run at any time, also while the daemon runs."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg

from syncd.cli import common
from syncd.config import Settings, SourceSettings
from syncd.postgres import bookkeeping as bk
from syncd.postgres.bookkeeping import SourceLocked
from syncd.postgres.connect import PostgresUnavailable, privilege_refused
from syncd.postgres.target import UnsupportedTarget
from syncd.reconcile import reconcile
from syncd.session import SourceSession, changed
from syncd.snapshot import audit
from syncd.sqlite.capture import CaptureStateError, LockTimeout, contended
from syncd.sqlite.connection import SourceFileError, cannot_write


def register(sub, parent) -> None:
    p = sub.add_parser("init", parents=[parent], help="install capture and create the Postgres side (idempotent)",
                       description="Install the changelog and triggers in each SQLite file, create schemas, "
                                   "tables and syncd's bookkeeping in Postgres, and audit stored values. "
                                   "Safe to re-run at any time.")
    common.add_source_option(p)
    p.set_defaults(func=main)


def main(args) -> int:
    settings = common.load(args)
    common.setup_logging(args, settings)
    sources = common.selected_sources(settings, args.source)
    if args.source is None and settings.discovery_problems:  # not set up: said, never skipped in silence
        common.say(*settings.discovery_problems)
    none = common.said_no_sources(settings, sources)
    if none is not None:
        return none
    return asyncio.run(_init(settings, sources))


async def _init(settings: Settings, sources: list[SourceSettings]) -> int:
    rc = 0
    stopped = 0  # tables held, paused or refused: not carried until fixed
    for source in sources:
        try:
            lines, not_carried = await init_source(settings, source)
        except SourceLocked as e:
            common.say(f"{source.name}: {e}; nothing to do, the running daemon keeps it initialized")
            continue
        except (SourceFileError, PostgresUnavailable, UnsupportedTarget, CaptureStateError) as e:
            common.say(f"{source.name}: ERROR {e}")
            rc = 1
            continue
        except asyncpg.PostgresError as e:
            refused = privilege_refused(e, settings.dsn_for(source))
            if refused is None:
                raise
            common.say(f"{source.name}: ERROR {refused}")
            rc = 1
            continue
        except (sqlite3.OperationalError, LockTimeout) as e:
            if unwritable := cannot_write(e, source.path):
                common.say(f"{source.name}: ERROR {unwritable}")
                rc = 1
                continue
            if not contended(e):
                raise
            common.say(f"{source.name}: ERROR {source.path} is locked by another connection ({e}); "
                       "try again once it is free")
            rc = 1
            continue
        common.say(*lines)
        stopped += not_carried
    if stopped:
        # Exit 1, as `syncd verify` does for differences: `syncd init && systemctl start
        # syncd` must not read a table that will not be carried as done.
        common.say(f"{stopped} table(s) held, paused or refused (above): not replicated until fixed")
        rc = 1
    return rc


async def init_source(settings: Settings, source: SourceSettings) -> tuple[list[str], int]:
    """The summary's lines, and how many tables are held, paused or refused."""
    session = SourceSession(settings, source)
    try:
        await session.worker.open()  # first: a missing file must not leave half an install
        await session.connect_postgres(lock=True)
        async with session.step():
            await reconcile(session)
            for t in session.tables.values():
                if t.state == bk.PENDING:
                    reason = await audit(session, t, note=True)
                    if reason is not None:
                        row = changed(t.row, state=bk.HELD, reason=reason, resume_to=bk.PENDING)
                        await session.save_row(session.pg, row)
                        t.row = row
        stopped = sum(t.state in (bk.HELD, bk.PAUSED) for t in session.tables.values()) + len(session.refused)
        return _summary(session), stopped
    finally:
        await session.close()


def _summary(session: SourceSession) -> list[str]:
    s = session.source
    lines = [f'{s.name}: {s.path} -> Postgres schema "{session.target_schema}"']
    counts: dict[str, int] = {}
    for t in session.tables.values():
        counts[t.state] = counts.get(t.state, 0) + 1
    state_text = ", ".join(f"{n} {state}" + (" (not loaded yet: `syncd run` loads them)" if state == bk.PENDING else "")
                           for state, n in sorted(counts.items())) or "no tables"
    mode = session.journal_mode
    lines.append(f"  capture installed on {len(session.tables)} table(s) ({mode} journal): {state_text}")
    for t in sorted(session.tables.values(), key=lambda t: t.name):
        if t.state in (bk.HELD, bk.PAUSED):
            lines.append(f'  {t.state} "{t.name}": {t.row.reason}')
    for name, reason in sorted(session.refused.items()):
        lines.append(f'  refused "{name}": {reason}')
    for name, why in sorted(session.skipped.items()):
        lines.append(f'  skipped "{name}": {why}')
    lines.extend(f"  {line}" for line in session.unmatched)
    return lines
