"""`syncd schema`: print the Postgres DDL syncd would create, per source. Touches nothing."""

from __future__ import annotations

import sqlite3
from urllib.parse import quote

from syncd.cli import common
from syncd.identifiers import quote_pg_ident
from syncd.postgres import ddl
from syncd.sqlite.introspect import introspect


def register(sub, parent) -> None:
    p = sub.add_parser("schema", parents=[parent], help="print the Postgres DDL for each source (read-only)",
                       description="Print the Postgres schema syncd would create for each source, with the "
                                   "type chosen for every column and why. Opens the SQLite files read-only.")
    common.add_source_option(p)
    p.set_defaults(func=main)


def main(args) -> int:
    settings = common.load(args)
    rc = 0
    for source in common.selected_sources(settings, args.source):
        if not source.path.exists():
            common.say(f"-- source {source.name}: ERROR SQLite file {source.path} does not exist", "")
            rc = 1
            continue
        conn = sqlite3.connect(f"file:{quote(str(source.path))}?mode=ro", uri=True)
        try:
            schema = introspect(conn, source)
        except sqlite3.DatabaseError as e:
            common.say(f"-- source {source.name}: ERROR cannot read {source.path}: {e}", "")
            rc = 1
            continue
        finally:
            conn.close()
        common.say(f"-- source {source.name}: {source.path}")
        print(f"CREATE SCHEMA IF NOT EXISTS {quote_pg_ident(source.schema)};\n")
        for spec in schema.tables.values():
            print(ddl.describe_ddl(source.schema, spec) + "\n")
        for name, refusal in schema.refused.items():
            common.say(f"-- refused {name!r}: {refusal.reason}")
        for name, why in schema.skipped.items():
            common.say(f"-- skipped {name!r}: {why}")
        print()
    return rc
