"""`syncd rollback [--source NAME ...] [--dry-run]`: switch cut-over sources' applications
back from Postgres to SQLite. Scriptable, asks nothing: exit 0 when every source is
switched back (or never was cut over), 1 when one is refused or undone, or switched back
with its file not unfrozen yet (every reason printed), 2 configuration error."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg

from syncd.cli import common, interrupted
from syncd.config import Settings, SourceSettings
from syncd.postgres.connect import PostgresUnavailable, describe, postgres_lost
from syncd.sqlite.connection import SourceFileError
from syncd.sqlite.capture import LockTimeout
from syncd.cutover import on_postgres
from syncd.rollback import RollbackResult, rollback


def register(sub, parent) -> None:
    p = sub.add_parser(
        "rollback", parents=[parent], help="switch the application back to SQLite (exit 0 done, 1 refused)",
        description="Per cut-over source: check that SQLite follows Postgres, freeze Postgres for the application "
                    "(its writes fail with a message; syncd's own pass), bring SQLite up to the last change, "
                    "verify every row, turn the direction around (the forward stream resumes from SQLite) and "
                    "unfreeze SQLite. Anything failing undoes the freeze. Works with the daemon running or "
                    "stopped; prints the measured write downtime. A later `syncd cutover` switches again.",
    )
    common.add_source_option(p)
    p.add_argument("--dry-run", action="store_true", help="check everything, change nothing; print the plan")
    p.set_defaults(func=main)


def main(args) -> int:
    settings, sources, unknown = common.switch_sources(args)
    try:
        results = asyncio.run(_all(settings, sources, args.dry_run))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, SIGTERM, SIGHUP
        return interrupted.report(settings, sources, "rollback")
    for r in results:
        common.say(*render(r))
    for why in unknown:  # a glob's sources whose file is gone, not known: none of them is rolled back
        common.say(f"not rolled back: {why}")
    if len(results) > 1:  # a script, or an operator scrolling back, reads where each source stands
        common.say(common.switch_summary(results, "rollback", "rolled back", args.dry_run, "on SQLite already")
                   + ("; the sources of the glob's files that are gone not known (said above)" if unknown else ""))
    return 0 if all(r.ok for r in results) and not unknown else 1


async def _all(settings: Settings, sources: list[SourceSettings], dry_run: bool) -> list[RollbackResult]:
    common.stop_like_ctrl_c()  # a switch in progress undoes itself before the command stops
    out = []
    for s in sources:  # one after another: each freezes Postgres for as short as it can
        try:
            out.append(await rollback(settings, s, dry_run=dry_run))
        except (PostgresUnavailable, SourceFileError) as e:  # nothing changed
            out.append(RollbackResult(source=s.name, problems=[str(e)]))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, sqlite3.Error, LockTimeout) as e:
            # Whatever froze stays recorded: the daemon (or the next run) undoes it.
            what = (f"SQLite file {s.path}: {describe(e)}" if isinstance(e, (sqlite3.Error, LockTimeout))
                    else postgres_lost(e) or f"Postgres: {describe(e)}" if on_postgres(e) else describe(e))
            out.append(RollbackResult(source=s.name, problems=[what if dry_run else (
                f"{what}; anything left frozen is undone by the daemon at its next check ([stream] "
                "held_table_retry_seconds), or by the next `syncd rollback`")]))  # a dry run freezes nothing
    return out


def render(r: RollbackResult) -> list[str]:
    notes = [f"  . {p}" for p in r.plan]
    if r.already:
        return [f"{r.source}: not cut over ({r.already}); nothing to do", *notes]
    if r.problems:
        head = "UNDONE" if r.undone else "OUTCOME UNKNOWN" if r.unknown else "UNDO PENDING" if r.undo_pending \
            else "REFUSED"
        return [f"{r.source}: {head}: {r.problems[0]}", *(f"  - {p}" for p in r.problems[1:]), *notes]
    if r.dry_run:
        return [f"{r.source}: ready to roll back (dry run, nothing changed)", *notes]
    if r.still_frozen:
        return [f"{r.source}: rolled back to SQLite, but the SQLite file is STILL FROZEN for the application: "
                f"{r.still_frozen}", *notes]
    return [f"{r.source}: rolled back to SQLite; write downtime {r.downtime_seconds:.2f} s (freeze to done)", *notes]
