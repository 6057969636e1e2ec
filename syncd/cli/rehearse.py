"""`syncd rehearse [--source NAME ...] [--allow-orphans]`: test the rollback plan on a copy
of each source before the switch: load, verify, back up, cut over, write in Postgres,
roll back (every row verified), with the measured downtimes; the live file and its
replica are not touched (rehearsal.py). Exit 0 when every rehearsal succeeded, 1 when one
failed (its step and reason printed), 2 configuration error, 130 interrupted (what the
interrupted rehearsal made is removed on the way out; whatever is left is named)."""

from __future__ import annotations

import asyncio

import asyncpg

from syncd.cli import common
from syncd.config import Settings, SourceSettings
from syncd.postgres.connect import PostgresUnavailable, describe, remember_unanswered
from syncd.rehearsal import RehearsalResult, left_behind, rehearse


def register(sub, parent) -> None:
    p = sub.add_parser(
        "rehearse", parents=[parent], help="cut over and roll back a copy of each source (the rollback plan, tested)",
        description="Per source: copy the SQLite file (online backup; the application keeps writing), replicate the "
                    "copy into schemas of its own in the same Postgres database, verify it, back it up, run "
                    "`syncd cutover` on it, write to Postgres, run `syncd rollback` (every row verified), and "
                    "remove everything it made. Records the result and the measured downtimes for `syncd report` "
                    "(\"Rollback plan tested\"). The live file and its replica are not touched.",
    )
    common.add_source_option(p)
    p.add_argument("--allow-orphans", action="store_true",
                   help="as `syncd cutover --allow-orphans`: foreign keys with orphan rows made NOT VALID")
    p.set_defaults(func=main)


def main(args) -> int:
    settings, sources, unknown = common.switch_sources(args)
    try:
        results = asyncio.run(_all(settings, sources, args.allow_orphans))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, SIGTERM, SIGHUP
        remember_unanswered(True)  # what is left is asked of a Postgres that does not answer once, not per source
        common.say("syncd rehearse: interrupted", *asyncio.run(_after_interrupt(settings, sources)))
        return 130
    for r in results:
        common.say(*render(r))
    for why in unknown:  # a glob's sources whose file is gone, not known: none of them is rehearsed
        common.say(f"not rehearsed: {why}")
    return 0 if all(r.ok for r in results) and not unknown else 1


async def _all(settings: Settings, sources: list[SourceSettings], allow_orphans: bool) -> list[RehearsalResult]:
    common.stop_like_ctrl_c()  # the rehearsal in progress removes its schemas and its copies first
    out = []
    for s in sources:
        try:
            out.append(await rehearse(settings, s, allow_orphans=allow_orphans))
        except PostgresUnavailable as e:
            out.append(RehearsalResult(source=s.name, problems=[str(e)]))
    return out


async def _after_interrupt(settings: Settings, sources: list[SourceSettings]) -> list[str]:
    """Per source, what the interrupted rehearsal left in Postgres; the live file and its
    replica were never touched."""
    lines = []
    for s in sources:
        try:
            left = await left_behind(settings, s)
        except (PostgresUnavailable, asyncpg.PostgresError, OSError) as e:
            lines.append(f"{s.name}: cannot tell whether a rehearsal schema is left: {describe(e)}")
            continue
        if left:
            names = ", ".join(f'"{n}"' for n in left)
            lines.append(f"{s.name}: rehearsal schema(s) {names} left in Postgres; the next `syncd rehearse` "
                         "removes them")
    return lines or ["what the rehearsal had made is removed; the live files and their replicas were not touched"]


def render(r: RehearsalResult) -> list[str]:
    steps = [f"  . {name}: {note} ({seconds:.2f} s)" for name, seconds, note in r.steps if note]
    if not r.ok:
        return [f"{r.source}: REHEARSAL FAILED: {r.problems[0] if r.problems else 'no reason recorded'}",
                *(f"  - {p}" for p in r.problems[1:]), *steps]
    return [f"{r.source}: rollback rehearsed on a copy: cut over (write downtime {r.cutover_downtime:.2f} s) and "
            f"rolled back (write downtime {r.rollback_downtime:.2f} s), {r.rows:,} row(s) verified", *steps]
