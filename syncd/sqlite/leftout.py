"""What syncd does not carry from a SQLite file, why, and what to do in Postgres instead.

Views hold no data; virtual tables (FTS3/4/5 full-text indexes, R*Tree spatial
indexes, extension modules) and their shadow tables cannot be copied as tables.
After a switch to Postgres the application still needs what they did, and some of
them hold application data that exists nowhere else (an FTS5 table without
`content=`, an R*Tree): those are named loudly, with their row counts.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from syncd.identifiers import quote_ident

FULL_TEXT = ("fts3", "fts4", "fts5")
SPATIAL = ("rtree", "rtree_i32", "geopoly")


@dataclass(frozen=True)
class LeftOut:
    name: str
    kind: str  # view, fts5, rtree, virtual (another module), shadow
    why: str  # why syncd does not carry it
    todo: str  # what to do in Postgres instead
    holds_data: bool = False  # rows of application data live only in it
    rows: int | None = None  # its row count, when it holds data and can be counted

    def describe(self) -> str:
        text = f"{self.why}; {self.todo}"
        if self.holds_data:
            count = f"{self.rows} row(s)" if self.rows is not None else "rows"
            text = f"HOLDS {count} OF APPLICATION DATA THAT IS NOT MIGRATED: {text}"
        return text


_USING = re.compile(r"\bUSING\s+([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.I | re.S)
_CONTENT = re.compile(r"(?:^|,)\s*content\s*=\s*('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|[A-Za-z0-9_]+)", re.I)


def _module(sql: str | None) -> tuple[str, str]:
    m = _USING.search(sql or "")
    return (m.group(1).lower(), m.group(2) or "") if m else ("", "")


def _content_option(args: str) -> str | None:
    """The `content=` option of an FTS table: None absent, '' contentless, else a table."""
    m = _CONTENT.search(args)
    if m is None:
        return None
    value = m.group(1)
    if value[:1] in ("'", '"'):
        value = value[1:-1].replace(value[0] * 2, value[0])
    return value


def _count(conn: sqlite3.Connection, name: str) -> int | None:
    try:
        return conn.execute(f"SELECT count(*) FROM main.{quote_ident(name)}").fetchone()[0]
    except sqlite3.Error:  # the module is not available to this SQLite build
        return None


def classify(conn: sqlite3.Connection, name: str, kind: str, virtual: dict[str, str | None]) -> LeftOut:
    """One object PRAGMA table_list reports as view, virtual or shadow. `virtual` maps
    every virtual table of the file to its CREATE statement (to find a shadow's owner)."""
    if kind == "view":
        return LeftOut(name, "view", "a view (no stored data)",
                       "syncd creates it in Postgres at cutover if its SELECT translates exactly (`syncd schema` "
                       "says); otherwise recreate it from its SQL, rewriting SQLite-only functions")
    if kind == "shadow":
        owner = max((v for v in virtual if name.startswith(v + "_")), key=len, default=None)
        of = f' of virtual table "{owner}"' if owner else ""
        return LeftOut(name, "shadow", f"a shadow table{of} (SQLite keeps the virtual table's internals in it)",
                       "nothing to do on its own: it goes with its virtual table")
    module, args = _module(virtual.get(name))
    if module in FULL_TEXT:
        content = _content_option(args)
        if content is None:
            return LeftOut(name, module, f"an {module.upper()} full-text table that stores its own text",
                           "create a regular table for its columns in Postgres (copy its rows out of SQLite: they "
                           "exist nowhere else) and a GIN index on to_tsvector() over them",
                           holds_data=True, rows=_count(conn, name))
        if content == "":
            return LeftOut(name, module, f"a contentless {module.upper()} full-text index (its text is not stored)",
                           "build a GIN index on to_tsvector() in Postgres over wherever the text lives")
        return LeftOut(name, module, f'an {module.upper()} full-text index over table "{content}"',
                       f'create a GIN index on to_tsvector() over "{content}"\'s text columns in Postgres')
    if module in SPATIAL:
        return LeftOut(name, module, f"an {module} spatial index table (its boxes are its own data)",
                       "store the geometry in Postgres (PostGIS, or box/point columns) with a GiST index; copy "
                       "its rows out of SQLite first", holds_data=True, rows=_count(conn, name))
    what = f"module {module}" if module else "an unknown module"
    return LeftOut(name, "virtual", f"a virtual table ({what}): its content comes from the module",
                   "recreate the equivalent in Postgres (an extension, a foreign table or a regular table)")


def really_a_shadow(name: str, virtual: dict[str, str | None]) -> bool:
    """Whether a table SQLite calls a shadow (by its name alone) is one: an FTS4/FTS5
    table with a content= option (external content, contentless) keeps no _content
    table, so a table of that name is the application's own, with its own rows."""
    low = name.lower()  # SQLite matches shadow names without regard to case
    owner = max((v for v in virtual if low.startswith(v.lower() + "_")), key=len, default=None)
    if owner is None or low != owner.lower() + "_content":
        return True
    module, args = _module(virtual[owner])
    return not (module in ("fts4", "fts5") and _content_option(args) is not None)


def virtual_tables(conn: sqlite3.Connection) -> dict[str, str | None]:
    return dict(conn.execute("SELECT name, sql FROM main.sqlite_master WHERE type = 'table' "
                             "AND sql LIKE 'CREATE VIRTUAL TABLE%'").fetchall())
