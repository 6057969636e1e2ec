"""`syncd verify`: compare every replicated table between SQLite and Postgres, by
content, and say which keys differ. Exit 0 equal, 1 differences, 2 the check failed."""

from __future__ import annotations

import argparse
import asyncio
import math

from syncd.cli import common
from syncd.config import Settings, SourceSettings
from syncd.identifiers import quote_ident, sqlite_folded
from syncd.verify import DEFAULT_WAIT_SECONDS, SourceVerifyResult, exit_code, verify_source

LISTED = 20  # differences printed per table; --json has up to 1000


def register(sub, parent) -> None:
    p = sub.add_parser(
        "verify", parents=[parent], help="compare SQLite and Postgres row by row (exit 0 equal, 1 differ, 2 error)",
        description="Compare every replicated table between SQLite and Postgres: row counts and full content, "
                    "by key. Rows that differ only because a change is still in flight are re-checked once the "
                    "stream has applied it. Tables that are not streaming are reported with their state and count "
                    "as differences. Results are kept in syncd.verify_runs. Safe while the daemon and the "
                    "application run: reads only, in short transactions.",
    )
    common.add_source_option(p)
    p.add_argument("--table", metavar="T", action="append", help="only this table (repeatable)")
    p.add_argument("--repair", action="store_true",
                   help="replay the differing keys through the stream, then verify again: Postgres is made to "
                        "match SQLite, or once cut over SQLite to match Postgres")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--wait", metavar="SECONDS", type=_seconds, default=DEFAULT_WAIT_SECONDS,
                   help=f"how long to wait for in-flight changes to be applied (default {DEFAULT_WAIT_SECONDS:g})")
    p.set_defaults(func=main)


def _seconds(text: str) -> float:
    """--wait's value: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def main(args) -> int:
    settings = common.load(args)
    common.setup_logging(args, settings)
    if args.repair:  # the stream a repair runs tries Postgres again, however long it did not answer
        from syncd.postgres.connect import remember_unanswered

        remember_unanswered(False)  # the gone files' lookup first: none left out of a repair that reaches it
    unknown: list[str] = []  # where the sources of a glob's gone files could not be looked up
    settings = common.with_gone_sources(settings, unknown, args.source)  # checked (and failing), never left out in silence
    try:
        sources = common.selected_sources(settings, args.source)
    except common.ConfigError:
        if not unknown:
            raise
        return common.fail("\n".join(unknown), 2)  # the source named may be one of them
    if not sources and unknown:
        return common.fail("\n".join(unknown), 2)
    if not sources:
        return common.fail(settings.no_sources(), 2)
    # --table without --source: each table is verified in the sources that have it.
    others_ok = bool(args.table) and args.source is None and len(sources) > 1
    results = asyncio.run(_verify(settings, sources, args.table, args.repair, args.wait, others_ok))
    if others_ok:
        # A source whose file holds the table and leaves it out says so (source._plan): not "no such table".
        left_out = [r.error for r in results if r.no_such_table and r.error and " is not replicated: " in r.error]
        results = [r for r in results if not r.no_such_table]
        found = {t.table for r in results for t in r.tables} | {n for r in results for n in r.not_compared}
        folded = {sqlite_folded(t) for t in found}  # each source's own spelling (Orders in one, ORDERS in another)
        missing = [t for t in args.table if sqlite_folded(t) not in folded and not any(r.error for r in results)]
        if missing:
            why = next((e for e in left_out if sqlite_folded(e).startswith(f"table {sqlite_folded(missing[0])!r} "
                                                                           "of source ")), None)
            if why is not None:
                return common.fail(why, 2)
            return common.fail(f"no table {missing[0]!r} in any source (neither in their SQLite files nor in "
                               "syncd's bookkeeping)", 2)
    # Files a glob matches and syncd does not replicate: their rows are nowhere in Postgres.
    left = list(settings.discovery_problems) if args.source is None else []
    code = max(exit_code(results), 1 if left else 0, 2 if unknown else 0)  # not compared: the check failed
    if args.json:
        common.say_json({"exit_code": code, "sources": [r.as_json() for r in results], "not_picked_up": left,
                         "gone_sources_not_known": unknown}, indent=2)
    else:
        for r in results:
            common.say(*render(r))
        for why in left:
            common.say(f"NOT REPLICATED: {why}")
        for why in unknown:
            common.say(f"ERROR {why}")
    return code


async def _verify(settings: Settings, sources: list[SourceSettings], tables: list[str] | None, repair: bool,
                  wait: float, others_ok: bool = False) -> list[SourceVerifyResult]:
    return [await verify_source(settings, s, tables, repair=repair, wait_seconds=wait, others_ok=others_ok)
            for s in sources]


def render(r: SourceVerifyResult) -> list[str]:
    if r.error is not None:
        return [f"{r.source}: ERROR {r.error}"]
    if r.way_back_ended is not None:
        return [f"{r.source}: not compared: SQLite no longer follows Postgres ({r.way_back_ended}): Postgres "
                "alone is the application's database now"]
    lines = []
    cut_over = r.direction == "to_sqlite"
    for t in r.tables:
        lines.append(t.summary(cut_over))
        for d in t.differences[:LISTED]:
            lines.append(f"{r.source}: {quote_ident(t.table)} {d.text(cut_over)}")
        more = t.mismatched - min(len(t.differences), LISTED)
        if more > 0:
            lines.append(f"{r.source}: {quote_ident(t.table)} ... and {more} more (--json lists up to 1000)")
    if r.repair_note:
        lines.append(f"{r.source}: repair: {r.repair_note}")
    if not r.tables:
        lines.append(f"{r.source}: no tables to verify")
    equal = sum(1 for t in r.tables if t.equal)
    way = " (cut over: SQLite follows Postgres)" if cut_over else ""
    lines.append(f"{r.source}: {equal} of {len(r.tables)} table(s) equal{way}")
    return lines
