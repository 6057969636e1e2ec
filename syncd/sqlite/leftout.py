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
from syncd.sqlite import reader

FULL_TEXT = ("fts3", "fts4", "fts5")
SPATIAL = ("rtree", "rtree_i32", "geopoly")


@dataclass(frozen=True)
class LeftOut:
    name: str
    kind: str  # view, fts5, rtree, virtual (another module), shadow, not_utf8 (its name)
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


EXCLUDED = "excluded"


def excluded(name: str, kind: str) -> LeftOut:
    """A table (or view, virtual table) the source's include/exclude settings leave out:
    the operator's choice, so not a failing item; named wherever what is not migrated is."""
    what = f"{kind} table" if kind == "virtual" else kind
    return LeftOut(name, EXCLUDED, f"a {what} the source's include/exclude settings leave out",
                   "the application will not find it in Postgres after the switch: create (and fill) it there "
                   "yourself if the application needs it")


def count_rows(conn: sqlite3.Connection, name: str) -> int | None:
    """The rows of table `name` (None for a view or a table this SQLite cannot read)."""
    row = conn.execute("SELECT type FROM main.sqlite_master WHERE name = ?", (name,)).fetchone()
    return _count(conn, name) if row is not None and row[0] == "table" else None


def _count(conn: sqlite3.Connection, name: str) -> int | None:
    try:
        # A window of rows at a time in rollback-journal mode, each its own read: one
        # count(*) of a large table held the application's writers back while it ran.
        return reader.count_rows(conn, name)
    except sqlite3.Error:  # the module is not available to this SQLite build
        return None


def _owner(name: str, virtual: dict[str, str | None]) -> str | None:
    """The virtual table a shadow table belongs to: as SQLite finds it, named by what comes
    before the last "_", without regard to case."""
    prefix = name.rpartition("_")[0].lower()
    return next((v for v in virtual if v.lower() == prefix), None)


def _own_rows(conn: sqlite3.Connection, name: str) -> dict:
    """A virtual table that stores rows of its own holds data unless it is empty (uncounted
    when this SQLite lacks its module: it may hold some)."""
    rows = _count(conn, name)
    return {"holds_data": rows != 0, "rows": rows}


def classify(conn: sqlite3.Connection, name: str, kind: str, virtual: dict[str, str | None]) -> LeftOut:
    """One object PRAGMA table_list reports as view, virtual or shadow. `virtual` maps
    every virtual table of the file to its CREATE statement (to find a shadow's owner)."""
    if kind == "view":
        return LeftOut(name, "view", "a view (no stored data)",
                       "syncd creates it in Postgres at cutover if its SELECT translates exactly (`syncd schema` "
                       "says); otherwise recreate it from its SQL, rewriting SQLite-only functions")
    if kind == "shadow":
        owner = _owner(name, virtual)
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
                           **_own_rows(conn, name))
        if content == "":
            return LeftOut(name, module, f"a contentless {module.upper()} full-text index (its text is not stored)",
                           "build a GIN index on to_tsvector() in Postgres over wherever the text lives")
        return LeftOut(name, module, f'an {module.upper()} full-text index over table "{content}"',
                       f'create a GIN index on to_tsvector() over "{content}"\'s text columns in Postgres')
    if module in SPATIAL:
        return LeftOut(name, module, f"an {module} spatial index table (its boxes are its own data)",
                       "store the geometry in Postgres (PostGIS, or box/point columns) with a GiST index; copy "
                       "its rows out of SQLite first", **_own_rows(conn, name))
    what = f"module {module}" if module else "an unknown module"
    return LeftOut(name, "virtual", f"a virtual table ({what}): its content comes from the module",
                   "recreate the equivalent in Postgres (an extension, a foreign table or a regular table)")


# The tables each module keeps its internals in, by name suffix, as PRAGMA table_xinfo reads
# them: (column, declared type, primary-key position) in order, read from what SQLite
# 3.40 and 3.54 create. `numbered` is the pattern of the per-column columns that follow
# (one for each column of the virtual table), `last` a column that may end the table.
@dataclass(frozen=True)
class _Shape:
    columns: tuple[tuple[str, str, int], ...]
    numbered: str = ""
    last: tuple[str, str, int] | None = None
    without_rowid: bool = False


_FTS3 = {  # FTS3 and FTS4
    "content": _Shape((("docid", "INTEGER", 1),), numbered=r"c[0-9]+.*", last=("langid", "", 0)),
    "segments": _Shape((("blockid", "INTEGER", 1), ("block", "BLOB", 0))),
    "segdir": _Shape((("level", "INTEGER", 1), ("idx", "INTEGER", 2), ("start_block", "INTEGER", 0),
                      ("leaves_end_block", "INTEGER", 0), ("end_block", "INTEGER", 0), ("root", "BLOB", 0))),
    "docsize": _Shape((("docid", "INTEGER", 1), ("size", "BLOB", 0))),
    "stat": _Shape((("id", "INTEGER", 1), ("value", "BLOB", 0))),
}
_RTREE = {  # rtree, rtree_i32, geopoly
    "node": _Shape((("nodeno", "INTEGER", 1), ("data", "", 0))),
    "rowid": _Shape((("rowid", "INTEGER", 1), ("nodeno", "", 0)), numbered=r"a[0-9]+"),
    "parent": _Shape((("nodeno", "INTEGER", 1), ("parentnode", "", 0))),
}
SHADOW_SHAPES: dict[str, dict[str, _Shape]] = {
    "fts3": _FTS3, "fts4": _FTS3,
    "fts5": {
        "data": _Shape((("id", "INTEGER", 1), ("block", "BLOB", 0))),
        "idx": _Shape((("segid", "", 1), ("term", "", 2), ("pgno", "", 0)), without_rowid=True),
        "content": _Shape((("id", "INTEGER", 1),), numbered=r"[cl][0-9]+"),  # l<n>: locale=1
        "docsize": _Shape((("id", "INTEGER", 1), ("sz", "BLOB", 0)), last=("origin", "INTEGER", 0)),
        "config": _Shape((("k", "", 1), ("v", "", 0)), without_rowid=True),
    },
    "rtree": _RTREE, "rtree_i32": _RTREE, "geopoly": _RTREE,
}


def _shape_matches(shape: _Shape, columns: list[tuple[str, str, int]], without_rowid: bool) -> bool:
    head, rest = columns[:len(shape.columns)], columns[len(shape.columns):]
    if without_rowid != shape.without_rowid or tuple(head) != shape.columns:
        return False
    if shape.last is not None and rest[-1:] == [shape.last]:
        rest = rest[:-1]
    return all(shape.numbered and re.fullmatch(shape.numbered, name, re.S) and (type_, pk) == ("", 0)
               for name, type_, pk in rest)


def really_a_shadow(conn: sqlite3.Connection, name: str, without_rowid: bool, virtual: dict[str, str | None]) -> bool:
    """Whether a table SQLite calls a shadow is one. SQLite goes by the name alone (the part
    after the last "_" is one its virtual table's module keeps internals under), so an
    application table named, say, docs_docsize beside an FTS5 table `docs` that keeps no
    _docsize (columnsize=0) is called a shadow too. It is one only if its columns are
    exactly those the module creates for that name; a module syncd does not know is
    taken at SQLite's word."""
    owner = _owner(name, virtual)
    module = _module(virtual[owner])[0] if owner else ""
    shape = SHADOW_SHAPES.get(module, {}).get(name.rpartition("_")[2].lower())
    if shape is None:
        return True
    rows = conn.execute(f"PRAGMA main.table_xinfo({quote_ident(name)})").fetchall()
    # cid, name, type, notnull, dflt_value, pk, hidden: a module declares no NOT NULL (bar the key
    # of a WITHOUT ROWID table, which SQLite makes so), default or generated column
    if any((r[3] and not (without_rowid and r[5])) or r[4] is not None or r[6] for r in rows):
        return False
    return _shape_matches(shape, [(r[1], r[2] or "", r[5]) for r in rows], without_rowid)


def virtual_tables(conn: sqlite3.Connection) -> dict[str, str | None]:
    return dict(conn.execute("SELECT name, sql FROM main.sqlite_master WHERE type = 'table' "
                             "AND sql LIKE 'CREATE VIRTUAL TABLE%'").fetchall())
