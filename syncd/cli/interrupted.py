"""What Ctrl-C (or SIGTERM or SIGHUP: cli/common.stop_like_ctrl_c) left of `syncd cutover`
or `syncd rollback`: a switch the command had started undoes itself before the command
stops (or, killed, is undone by the daemon or the next run); this says, per source, what
Postgres recorded of this run's switch."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg

from syncd.cli import common
from syncd.config import Settings, SourceSettings
from syncd.cutover import STARTED_SWITCHES
from syncd.identifiers import quote_pg_ident
from syncd.postgres.connect import PostgresUnavailable, close_quietly, connect, describe, remember_unanswered
from syncd.sqlite import freeze
from syncd.sqlite.connection import open_readonly

DONE = {"cutover": "cut over to Postgres before the interrupt", "rollback": "rolled back to SQLite before the interrupt"}
WORD = {"cutover": "cut over", "rollback": "rolled back"}


def report(settings: Settings, sources: list[SourceSettings], kind: str) -> int:
    """Print each source's outcome; exit code 130, as for any Ctrl-C (whichever of the three
    signals stopped it: one code for "interrupted, see what it said")."""
    # No switch started: nothing changed, and no Postgres is asked (one that does not
    # answer kept the Ctrl-C waiting for each source, to say it could not tell). Asked, a
    # target that does not answer is waited for once.
    remember_unanswered(True)
    lines = asyncio.run(_outcomes(settings, sources, kind, list(STARTED_SWITCHES))) if STARTED_SWITCHES else []
    common.say(f"syncd {kind}: interrupted", *(lines or ["no switch had started: nothing changed"]))
    if len(sources) > 1:  # a fleet: where it stands, those not reached counted too
        done = sum(1 for ln in lines if f": {DONE[kind]}" in ln)
        unsettled = sum(1 for ln in lines if ": interrupted at step " in ln)
        unknown = sum(1 for ln in lines if ": cannot tell what became" in ln)  # its Postgres did not answer
        common.say(f"syncd {kind}: interrupted: {done} of {len(sources)} source(s) {WORD[kind]} before it; "
                   + (f"{unsettled} stopped mid-switch (said above); " if unsettled else "")
                   + (f"{unknown} not known (said above); " if unknown else "")
                   + f"the other {len(sources) - done - unsettled - unknown} unchanged")
    return 130


async def _outcomes(settings: Settings, sources: list[SourceSettings], kind: str, ids: list[int]) -> list[str]:
    table = f"{quote_pg_ident(settings.postgres.bookkeeping_schema)}.switches"
    lines = []
    for s in sources:
        conn = None
        try:
            conn = await connect(settings.direct_dsn_for(s), settings.password(), settings.postgres)
            row = await conn.fetchrow(f"SELECT state, detail->>'reason' FROM {table} WHERE source = $1 AND kind = $2 "
                                      "AND id = ANY($3::bigint[]) ORDER BY id DESC LIMIT 1", s.name, kind, ids)
        except asyncpg.UndefinedTableError:
            row = None
        except (PostgresUnavailable, asyncpg.PostgresError, OSError) as e:
            lines.append(f"{s.name}: cannot tell what became of it: {describe(e)}; `syncd status` shows its direction")
            continue
        finally:
            await close_quietly(conn)
        if row is None:
            continue  # not reached before the interrupt: nothing changed
        state, reason = row
        frozen = _still_frozen(s.path) if state == "done" and kind == "rollback" else False
        if frozen:
            # Interrupted after its turn, before the file was unfrozen: done, and the file
            # still refuses the application's writes until someone unfreezes it (or, not
            # read, may: it is not said to take them).
            what = ("is STILL FROZEN for the application: the" if frozen is True
                    else f"MAY STILL BE FROZEN for the application: it could not be read ({frozen}); if it is, the")
            lines.append(f"{s.name}: {DONE[kind]}, but the SQLite file {what} daemon unfreezes it at its next check "
                         "([stream] held_table_retry_seconds), or run `syncd rollback` again")
        elif state == "done":
            lines.append(f"{s.name}: {DONE[kind]}")
        elif state == "undone":
            lines.append(f"{s.name}: UNDONE: {reason or 'interrupted'}; nothing changed")
        else:
            lines.append(f"{s.name}: interrupted at step {state!r}: a running daemon undoes it at its next check "
                         f"([stream] held_table_retry_seconds); without one, the next `syncd {kind}` does")
    return lines


def _still_frozen(path: Path) -> bool | str:
    """Whether the SQLite file still refuses the application's writes (read only), or,
    where the file cannot be read (busy, gone), why: it may be."""
    try:
        conn = open_readonly(path, 5000)
    except sqlite3.Error as e:
        return describe(e)
    try:
        return freeze.frozen(conn) is not None
    except sqlite3.Error as e:
        return describe(e)
    finally:
        conn.close()
