"""`syncd schema`: print the Postgres DDL syncd would create, per source, and what
schema parity adds during dual-write and at cutover, each with its reason, and every
object left out with why. Touches nothing."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3

from syncd.cli import common
from syncd.identifiers import quote_pg_ident, sqlite_folded
from syncd.parity import dates
from syncd.parity.apply import read_sqlite, retyped_columns
from syncd.parity.plan import Options, plan_source
from syncd.parity.summary import explain_source, explain_table
from syncd.postgres import app_triggers, ddl
from syncd.postgres.connect import close_quietly, connect, describe
from syncd.sqlite import key_identity
from syncd.sqlite.audit import audit_table, misfits_text
from syncd.sqlite.connection import file_problem, left_mid_transaction, open_readonly
from syncd.sqlite.introspect import introspect
from syncd.types import PgType


def register(sub, parent) -> None:
    p = sub.add_parser("schema", parents=[parent], help="print the Postgres DDL for each source (read-only)",
                       description="Print the Postgres schema syncd would create for each source, with the "
                                   "type chosen for every column and why; the indexes, UNIQUE constraints, "
                                   "CHECKs, foreign keys, case-insensitive and typed columns and views it adds "
                                   "during dual-write or at cutover, with why; and every object it leaves out, "
                                   "with why, and every value that would hold a table. Opens the SQLite files "
                                   "read-only and reads every value, as the load's audit does.")
    common.add_source_option(p)
    p.set_defaults(func=main)


def main(args) -> int:
    settings = common.load(args)
    sources = common.selected_sources(settings, args.source)
    if args.source is None and settings.discovery_problems:  # left out: said, as comments in the SQL
        common.say(*(f"-- {problem}" for problem in settings.discovery_problems), "")
    none = common.said_no_sources(settings, sources)
    if none is not None:
        return none
    rc = 0
    for source in sources:
        problem = file_problem(source.path)
        if problem is not None:
            common.say(f"-- source {source.name}: ERROR {problem}", "")
            rc = 1
            continue
        sticky, retyped, where, quieted = asyncio.run(_types_in_postgres(settings, source))
        conn = open_readonly(source.path, settings.sqlite.read_busy_timeout_ms)
        try:
            schema = introspect(conn, source, sticky, retyped)
            views = [n for n, lo in schema.left_out.items() if lo.kind == "view"]
            options = Options.from_settings(settings)
            objects, verdicts = read_sqlite(conn, schema.tables, views, options, audit_types=True)
            held = {name: why for name, spec in schema.tables.items() if (why := _held_at_load(conn, spec))}
            text_dates = {name: _dates_kept_text(conn, spec, source) for name, spec in schema.tables.items()}
        except sqlite3.DatabaseError as e:
            common.say(f"-- source {source.name}: ERROR "
                       f"{left_mid_transaction(e, source.path) or f'cannot read {source.path}: {e}'}", "")
            rc = 1
            continue
        finally:
            conn.close()
        plan = plan_source(source.schema, schema.tables, objects, options, verdicts)
        common.say(f"-- source {source.name}: {source.path}", f"-- {where}")
        print(f"CREATE SCHEMA IF NOT EXISTS {quote_pg_ident(source.schema)};\n")
        for spec in schema.tables.values():
            print(ddl.describe_ddl(source.schema, spec))
            if spec.name in held:
                common.say(f"-- HELD: {held[spec.name]}; syncd loads and streams the table once every value fits")
            print("\n".join(explain_table(plan.for_table(spec.name)) + text_dates[spec.name]) + "\n")
        lines = explain_source(plan.items)
        if lines:
            print("\n".join(lines) + "\n")
        for trigger in quieted:
            common.say(f"-- {trigger}: disabled by syncd while SQLite is the application's database (the rows "
                       "syncd writes from SQLite hold its effects already); `syncd cutover` enables it again")
        for name, refusal in schema.refused.items():
            common.say(f"-- refused {name!r}: {refusal.reason}")
        for name, why in schema.skipped.items():
            if name not in views:  # views are in the plan above
                common.say(f"-- skipped {name!r}: {why}")
        for line in source.unmatched_tables(schema.names):
            common.say(f"-- {line}")
        print()
    return rc


def _held_at_load(conn: sqlite3.Connection, spec) -> str | None:
    """What the value audit before a load would hold the table for (snapshot.audit), or None."""
    misfits = audit_table(conn, spec)
    return misfits_text(spec.name, misfits) if misfits else key_identity.audit_collisions(conn, spec)


def _dates_kept_text(conn: sqlite3.Connection, spec, source) -> list[str]:
    """A note for each column carried as text whose every value is a date or timestamp
    of one spelling: only a column declared DATE, DATETIME or TIMESTAMP is typed, so the
    application would meet these as text in Postgres unless an override types them."""
    configured = {sqlite_folded(n) for n in source.columns_for(spec.name)}  # named as SQLite does
    names = [c.name for c in spec.columns if c.pgtype is PgType.TEXT and not c.generated
             and not dates.is_candidate(c.declared) and sqlite_folded(c.name) not in configured]
    if not names:
        return []
    try:
        found = dates.audit_quick(conn, spec, names)
    except sqlite3.Error:
        return []  # a hint only: the DDL above stands
    out = []
    for name, v in found.items():
        if not v.typed or not v.audit.values or v.format is None or v.format.kind == "epoch":
            continue
        what = "date" if v.pgtype is PgType.DATE else "timestamp"
        key = name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)
        out.append(f"-- note: column {json.dumps(name)} is declared {v.audit.declared or 'without a type'} and "
                   f"every one of its {v.audit.values} value(s) is a {what} spelled {v.format.spec}: it stays "
                   f"text in Postgres (only DATE, DATETIME and TIMESTAMP columns are typed); for the application "
                   f"to read and write {what}s there, set [sources.columns.{json.dumps(spec.name)}] "
                   f"{key} = \"{v.pgtype.value}\"")
    return out


async def _types_in_postgres(settings, source) -> tuple[dict, dict, str, list]:
    """The column types Postgres already has for the source's tables (syncd keeps them,
    as it keeps the ones schema parity gave), so the DDL shown is what is there; a line
    saying where the types come from; and the application's Postgres triggers syncd
    disabled (app_triggers.py). Postgres unreachable: the SQLite file alone."""
    conn = None
    try:
        conn = await connect(settings.dsn_for(source), settings.password(), settings.postgres)
        sticky = ddl.kept_types(await ddl.read_tables(conn, source.schema))
        retyped = await retyped_columns(conn, settings.postgres.bookkeeping_schema, source.name)
        quieted = await app_triggers.quieted(conn, settings.postgres.bookkeeping_schema, source.name)
        return sticky, retyped, ("types as the tables already in Postgres have them" if sticky
                                 else "no table in Postgres yet: types as syncd would create them"), quieted
    except Exception as e:  # noqa: BLE001 - the SQLite file alone still answers
        return {}, {}, f"Postgres not reached ({describe(e)}): types chosen from the SQLite file alone", []
    finally:
        await close_quietly(conn)
