"""`syncd cutover [--source NAME ...] [--dry-run] [--allow-orphans]`: switch sources'
applications from SQLite to Postgres. Scriptable, asks nothing: exit 0 when every
source is switched (or already was), 1 when one is refused or undone (every reason
printed), 2 configuration error."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg

from syncd.cli import common, interrupted
from syncd.config import Settings, SourceSettings
from syncd.cutover import CutoverResult, cutover, on_postgres
from syncd.postgres.connect import PostgresUnavailable, describe, postgres_lost
from syncd.sqlite.capture import LockTimeout
from syncd.sqlite.connection import SourceFileError


def register(sub, parent) -> None:
    p = sub.add_parser(
        "cutover", parents=[parent], help="switch the application to Postgres (exit 0 done, 1 refused)",
        description="Per source: check the report's checklist, freeze the SQLite file for the application (its "
                    "writes fail with a message, readers are unaffected), drain the last changes, verify every "
                    "row, set Postgres's identities past SQLite's high marks, try an INSERT without an id per "
                    "table, and record the switch. Anything failing undoes the freeze. Works with the daemon "
                    "running or stopped; prints the measured write downtime.",
    )
    common.add_source_option(p)
    p.add_argument("--dry-run", action="store_true", help="check everything, change nothing; print the plan")
    p.add_argument("--allow-orphans", action="store_true",
                   help="create foreign keys with orphan rows as NOT VALID instead of refusing")
    p.set_defaults(func=main)


def main(args) -> int:
    settings, sources, unknown = common.switch_sources(args)
    try:
        results = asyncio.run(_all(settings, sources, args.dry_run, args.allow_orphans))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, SIGTERM, SIGHUP
        return interrupted.report(settings, sources, "cutover")
    for r in results:
        common.say(*render(r))
    # A file a glob matches but syncd does not pick up: its rows are nowhere in Postgres.
    left = list(settings.discovery_problems) if args.source is None else []
    for problem in left:
        common.say(f"not cut over: {problem}")
    for why in unknown:  # a glob's sources whose file is gone, not known: none of them is cut over
        common.say(f"not cut over: {why}")
    if len(results) + len(left) > 1:  # a script, or an operator scrolling back, reads where each source stands
        summary = common.switch_summary(results, "cutover", "cut over", args.dry_run)
        if left:  # counted too: the last line is where a fleet stands
            summary += (f"; {len(left)} file{'s' if len(left) > 1 else ''} a glob matches not picked up, not cut "
                        "over (said above)")
        if unknown:
            summary += "; the sources of the glob's files that are gone not known (said above)"
        common.say(summary)
    return 0 if all(r.ok for r in results) and not left and not unknown else 1


async def _all(settings: Settings, sources: list[SourceSettings], dry_run: bool,
               allow_orphans: bool) -> list[CutoverResult]:
    common.stop_like_ctrl_c()  # a switch in progress undoes itself before the command stops
    out = []
    for s in sources:  # one after another: each freezes its own file for as short as it can
        try:
            out.append(await cutover(settings, s, dry_run=dry_run, allow_orphans=allow_orphans))
        except (PostgresUnavailable, SourceFileError) as e:  # nothing changed
            out.append(CutoverResult(source=s.name, problems=[str(e)]))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, sqlite3.Error, LockTimeout) as e:
            # Before the freeze nothing changed; after it, _run settles the switch itself.
            what = (f"SQLite file {s.path}: {describe(e)}" if isinstance(e, (sqlite3.Error, LockTimeout))
                    else postgres_lost(e) or f"Postgres: {describe(e)}" if on_postgres(e) else describe(e))
            out.append(CutoverResult(source=s.name, problems=[what if dry_run else (
                f"{what}; anything left frozen is undone by the daemon at its next check ([stream] "
                "held_table_retry_seconds), or by the next `syncd cutover`")]))  # a dry run freezes nothing
    return out


def render(r: CutoverResult) -> list[str]:
    if r.already:
        done = ("undid a rollback that stopped before finishing (below)" if r.plan  # said first: it changed things
                else "nothing to do")
        return [f"{r.source}: already cut over ({r.already}); {done}", *(f"  . {p}" for p in r.plan)]
    if r.problems:
        head = "UNDONE" if r.undone else "OUTCOME UNKNOWN" if r.unknown else "REFUSED"
        return [f"{r.source}: {head}: {r.problems[0]}", *(f"  - {p}" for p in r.problems[1:]),
                *(f"  . {p}" for p in r.plan)]
    if r.dry_run:
        return [f"{r.source}: ready to cut over (dry run, nothing changed)", *(f"  . {p}" for p in r.plan)]
    return [f"{r.source}: cut over to Postgres; write downtime {r.downtime_seconds:.2f} s (freeze to done)",
            *(f"  . {p}" for p in r.plan)]
