"""Schema parity as the report, the status page and `syncd schema` show it: the plan
(with each date column's audit), which planned objects Postgres holds now, orphan
counts and lookup timings, measured now. One gather, so they cannot disagree."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg

from syncd.config import Settings, SourceSettings
from syncd.model import TableSpec
from syncd.parity import orphans, speed
from syncd.parity.apply import read_pg_objects, read_sqlite
from syncd.parity.plan import CUTOVER, DUAL_WRITE, Item, Options, plan_source
from syncd.postgres.connect import describe
from syncd.sqlite.leftout import LeftOut
from syncd.sqlite.connection import open_readonly

CACHE_SECONDS = 600.0  # the daemon's status page measures at most this often (the report: every time)
_cache: dict[tuple, tuple[float, "ParityFacts"]] = {}


@dataclass
class ParityFacts:
    items: list[Item] = field(default_factory=list)
    present: set[str] = field(default_factory=set)  # planned object names Postgres holds now
    orphans: list[orphans.OrphanCount] = field(default_factory=list)
    speed: speed.SpeedFacts | None = None
    error: str | None = None
    streaming: frozenset[str] | None = None  # the tables streaming now, when the caller knows them
    refused: dict[str, str] = field(default_factory=dict)  # object name -> why Postgres refused it last
    cut_over: bool = False  # Postgres is the application's: nothing builds a missing object any more
    measured_at: dt.datetime | None = None  # when: a measurement reused may be up to CACHE_SECONDS old

    @property
    def carried(self) -> list[Item]:
        return [i for i in self.items if not i.left_out and i.kind != "trigger"]

    @property
    def not_carried(self) -> list[Item]:
        return [i for i in self.items if i.left_out]

    def status(self, item: Item) -> str:
        """Where an object stands now, in a few words."""
        if item.left_out:
            return "not carried"
        if item.kind in ("nocase", "type"):
            return "at cutover" if (item.cutover or item.dual_write) else "as is"
        if item.name and item.name in self.present:
            return "in Postgres now"
        if self.missing(item):
            return f"not in Postgres: {self.why_missing(item)}"
        if item.dual_write:
            return "waits for the table to stream" if item.needs_streaming or item.after_load else "not yet created"
        return "at cutover"


    def missing(self, item: Item) -> bool:
        """A dual-write object whose table streams and which Postgres does not hold:
        the daemon's attempt failed (queries through it are slow until it exists)."""
        return (not item.left_out and bool(item.dual_write) and item.kind in ("index", "unique")
                and item.name is not None and item.name not in self.present
                and self.streaming is not None and item.table in self.streaming)


    def why_missing(self, item: Item) -> str:
        why = self.refused.get(item.name or "")
        return f"Postgres refused it: {why}" if why else "not built yet, or refused (the daemon's log says why)"

    def missing_entries(self) -> list[LeftOut]:
        """Objects the daemon could not create, in the report's "not migrated" list
        while they are missing (the cutover tries once more, and says how it went)."""
        todo = ("create it by hand in Postgres (the application's database now: syncd no longer builds it)"
                if self.cut_over else
                "the daemon tries again hourly (five minutes after a lock wait) and when it restarts, `syncd cutover` "
                "in its final transaction: fix what Postgres names (a row, a value), or create an equivalent index "
                "by hand after the switch")
        return [LeftOut(f"{i.table}: {i.what}", i.kind, f"not in Postgres: {self.why_missing(i)}", todo)
                for i in self.carried if self.missing(i)]


def left_out_entries(items: list[Item]) -> list[LeftOut]:
    """Objects not carried, in the report's and the page's "not migrated" list."""
    out = []
    for i in items:
        if not i.left_out:
            continue
        name = f"{i.table}: {i.what}" if i.table else i.what
        out.append(LeftOut(name, i.kind, i.left_out, _todo(i)))
    return out


def _todo(i: Item) -> str:
    if i.todo:
        return i.todo
    return {
        "index": "create an equivalent index in Postgres by hand if the application's queries need it",
        "unique": "enforce it in Postgres by hand (a unique index) once it can be, or in the application",
        "check": "add an equivalent CHECK in Postgres by hand, or enforce it in the application",
        "foreign key": "add the foreign key in Postgres by hand once its data allows",
        "view": "recreate the view in Postgres by hand",
        "trigger": "write it as a Postgres trigger function if the application relies on it",
        "type": "the application reads this column as text after the switch; fix the listed rows to have it typed",
        "nocase": "compare with lower() on both sides, or choose [cutover] nocase",
        "generated": "make it a GENERATED ALWAYS AS (...) STORED column in Postgres after the cutover, or have "
                     "the application write its value",
    }.get(i.kind, "see `syncd schema`")


class Turn(Protocol):
    """A source's turn to time its lookups (see gather)."""

    async def wait(self) -> int:
        """Once it is this source's turn: how many lookups it may time."""

    def done(self, timed: int) -> None:
        """The source timed this many; the next source's turn."""


async def gather(settings: Settings, source: SourceSettings, pg: asyncpg.Connection,
                 specs: dict[str, TableSpec], views: list[str], *, timings: bool = True,
                 max_age: float = 0.0, budget: int | None = None,
                 turn: Turn | None = None) -> ParityFacts:
    """Measure one source now (or reuse a measurement at most `max_age` seconds old).
    `turn`, when given, is waited for just before the lookups are timed, and told how many
    were: a report measuring several sources at once times them one source at a time, in
    order (a measurement taken so is neither reused nor kept)."""
    key = (settings.config_path, source.name, timings, budget)
    hit = _cache.get(key)
    if max_age > 0 and turn is None and hit is not None and time.monotonic() - hit[0] < max_age:
        return hit[1]
    facts = ParityFacts(measured_at=dt.datetime.now(dt.timezone.utc))
    options = Options.from_settings(settings)
    try:
        def read():
            c = open_readonly(source.path, settings.sqlite.read_busy_timeout_ms)
            try:
                return read_sqlite(c, specs, views, options, audit_types=True)
            finally:
                c.close()

        objects, verdicts = await asyncio.to_thread(read)
    except (sqlite3.Error, OSError) as e:
        facts.error = f"cannot read the indexes and constraints of {source.path}: {e}"
        return facts
    plan = plan_source(source.schema, specs, objects, options, verdicts)
    facts.items = plan.items
    try:
        have = await read_pg_objects(pg, source.schema)
        facts.present = {k[2] for k, o in have.items() if o.kind in ("index", "view", "constraint")}
        facts.orphans = await orphans.count(pg, source.schema, plan.items, specs)
        if timings:
            if turn is not None:
                budget = await turn.wait()
            try:
                facts.speed = await speed.measure(pg, source.path, source.schema, specs, plan.items,
                                                  settings.cutover.max_query_ms,
                                                  budget if budget is not None else settings.cutover.speed_max_lookups,
                                                  settings.sqlite.read_busy_timeout_ms)
            finally:
                if turn is not None:
                    turn.done(len(facts.speed.lookups) if facts.speed is not None else 0)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as e:
        facts.error = f"Postgres: {describe(e)}"
    if turn is None:  # a measurement taken in turn is neither reused nor kept
        if _settled(facts):
            _cache[key] = (time.monotonic(), facts)
        else:
            _cache.pop(key, None)  # measured again next time: a table may be created by then
    return facts


def _settled(facts: ParityFacts) -> bool:
    """Worth keeping for CACHE_SECONDS: nothing failed or was missing (a measurement
    taken before the snapshot created the tables must not stand for ten minutes)."""
    if facts.error or any(o.orphans is None for o in facts.orphans):
        return False
    sp = facts.speed
    return sp is None or (not sp.errors and all(lk.postgres_ms is not None for lk in sp.lookups))


__all__ = ["CUTOVER", "DUAL_WRITE", "ParityFacts", "gather", "left_out_entries"]


# --- `syncd schema` -------------------------------------------------------------------------


def _comment(text: str) -> str:
    from syncd.printable import escape_controls

    return "-- " + escape_controls(text)


def explain_table(items: list[Item]) -> list[str]:
    """The lines `syncd schema` prints after a table's CREATE TABLE: each object with
    when it is created and why, the statements syncd runs, and what it leaves out."""
    out = []
    for i in items:
        if i.left_out:
            out.append(_comment(f"NOT CARRIED: {i.what}: {i.left_out}"))
            continue
        if i.kind == "type" and not (i.dual_write or i.cutover):
            out.append(_comment(f"{i.what}: {i.why}"))
            continue
        when = DUAL_WRITE if i.dual_write else CUTOVER
        out.append(_comment(f"{when}: {i.what}: {i.why}"))
        if i.kind == "type":
            v = i.verdict
            if v is not None and v.pgtype is not None and v.format is not None:
                out.append(_comment(f"  ALTER COLUMN ... TYPE {v.pgtype.value}, SQLite spelling {v.format.spec} "
                                    "recorded for the way back"))
            elif v is not None and v.pgtype is not None:
                out.append(_comment(f"  ALTER COLUMN ... TYPE {v.pgtype.value}"))
            continue
        if i.kind == "nocase":
            continue
        for sql in i.dual_write:
            out.append(sql + ";")
        if i.dual_write and i.cutover:
            out.append(_comment("  at cutover:"))
        for sql in i.cutover:
            out.append(sql + ";")
    return out


def explain_source(items: list[Item]) -> list[str]:
    """Views: objects of the file rather than of a table."""
    out = []
    for i in items:
        if i.kind != "view":
            continue
        if i.left_out:
            out.append(_comment(f"NOT CARRIED: {i.what}: {i.left_out}"))
        else:
            out.append(_comment(f"{CUTOVER}: {i.what}: {i.why}"))
            out += [sql + ";" for sql in i.cutover]
    return out
