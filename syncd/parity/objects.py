"""What a SQLite file holds besides columns: indexes, UNIQUE constraints, FOREIGN KEYs,
CHECKs, column collations, views and the application's own triggers.

Read in one read transaction from the PRAGMAs (index_list, index_xinfo,
foreign_key_list) and, where no PRAGMA says it (CHECK bodies, column collations, a
foreign key's DEFERRABLE, index expressions and predicates, view bodies), from the
CREATE statements, taken apart with SQLite's own tokenizer. The text kept here is only
ever parsed again (translate.py) or shown escaped; it never reaches Postgres.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field

from syncd.identifiers import quote_ident, sqlite_folded
from syncd.sqlite.connection import not_utf8, surrogate_text
from syncd.sqlite.freeze import is_syncd_trigger
from syncd.sqlite_sql import Kind, SqlSyntaxError, Token, identifier_value, significant, tokenize

SYNCD_PREFIX = "_syncd_"


@dataclass(frozen=True)
class IndexColumn:
    name: str | None  # the table column, or None for an expression
    expr: str | None  # the expression's SQLite text (for an expression column)
    descending: bool = False
    collation: str = "BINARY"


@dataclass(frozen=True)
class Index:
    name: str  # SQLite's (sqlite_autoindex_<table>_<n> for a UNIQUE constraint)
    table: str
    unique: bool
    origin: str  # "c": CREATE INDEX, "u": a UNIQUE constraint, "pk": the primary key
    columns: tuple[IndexColumn, ...]
    where: str | None = None  # a partial index's predicate, SQLite text
    problem: str | None = None  # why its text could not be read

    @property
    def partial(self) -> bool:
        return self.where is not None

    @property
    def plain(self) -> bool:
        """Columns only: no expression, no predicate."""
        return self.where is None and all(c.name is not None for c in self.columns)


@dataclass(frozen=True)
class ForeignKey:
    table: str
    columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...] | None  # None: the parent's primary key
    on_update: str = "NO ACTION"
    on_delete: str = "NO ACTION"
    deferrable: bool = False  # DEFERRABLE INITIALLY DEFERRED in SQLite
    name: str | None = None  # CONSTRAINT name, when the schema gives one


@dataclass(frozen=True)
class Check:
    table: str
    body: str  # SQLite text between the parentheses
    name: str | None = None
    column: str | None = None  # for a column constraint


@dataclass(frozen=True)
class View:
    name: str
    select: str | None  # the body after AS, SQLite text
    columns: tuple[str, ...]  # output names, as SQLite reports them
    problem: str | None = None


@dataclass(frozen=True)
class Trigger:
    name: str
    table: str
    sql: str


@dataclass
class TableObjects:
    indexes: list[Index] = field(default_factory=list)
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    collations: dict[str, str] = field(default_factory=dict)  # column -> NOCASE / RTRIM / other non-BINARY
    problem: str | None = None  # the CREATE TABLE text could not be read (CHECKs unknown)


@dataclass
class SourceObjects:
    version: int = 0  # schema_version these were read at
    tables: dict[str, TableObjects] = field(default_factory=dict)
    views: list[View] = field(default_factory=list)
    triggers: list[Trigger] = field(default_factory=list)

    def table(self, name: str) -> TableObjects:
        return self.tables.get(name) or TableObjects()


# --- reading --------------------------------------------------------------------------


def read_objects(conn: sqlite3.Connection, tables: Iterable[str], views: Iterable[str] = ()) -> SourceObjects:
    """Every object of `tables` (replicated tables) and the file's views (only those
    named in `views`, the ones the source's configuration wants) and triggers, in
    one read transaction."""
    out = SourceObjects()
    wanted = list(tables)
    conn.execute("BEGIN")
    try:
        out.version = conn.execute("PRAGMA main.schema_version").fetchone()[0]
        # SQLite keeps whatever bytes a schema was given: an object's text that is not UTF-8
        # is read with those bytes kept (surrogates), and said of the object it is in.
        old = conn.text_factory
        conn.text_factory = surrogate_text
        try:
            master = {(r[0], r[1]): (r[2], r[3]) for r in conn.execute(
                "SELECT type, name, tbl_name, sql FROM main.sqlite_master WHERE type IN ('table', 'index', 'view', "
                "'trigger')")}
        finally:
            conn.text_factory = old
        for name in wanted:
            out.tables[name] = _table(conn, name, (master.get(("table", name)) or (None, None))[1], master)
        for name in views:
            sql = (master.get(("view", name)) or (None, None))[1]
            out.views.append(_view(conn, name, sql))
        # A trigger's table is kept as its CREATE TRIGGER spelled it ("ON Deals" for deals):
        # matched as SQLite matches names, ignoring the case of A-Z.
        named = {sqlite_folded(n): n for n in [*wanted, *views]}
        for (kind, name), (tbl, sql) in sorted(master.items()):
            if kind == "trigger" and not is_syncd_trigger(name) and sql and sqlite_folded(tbl) in named:
                out.triggers.append(Trigger(name, named[sqlite_folded(tbl)], sql))
    finally:
        conn.execute("COMMIT")
    return out


def _table(conn: sqlite3.Connection, table: str, sql: str | None, master: dict) -> TableObjects:
    obj = TableObjects()
    q = quote_ident(table)
    try:
        parsed = parse_create_table(sql or "")
    except SqlSyntaxError as e:
        parsed = None
        obj.problem = f"its CREATE TABLE text could not be read ({e}): CHECK constraints and collations unknown"
    if parsed is not None:
        obj.checks = [Check(table, body, name, column) for body, name, column in parsed.checks]
        obj.collations = {c: coll for c, coll in parsed.collations.items() if coll.upper() != "BINARY"}
    # As SQLite names columns, A-Z in any case: "É" and "é" are two columns (str.lower() made them one).
    columns = {sqlite_folded(r[1]): r[1] for r in conn.execute(f"PRAGMA main.table_xinfo({q})")}
    for col, coll in list(obj.collations.items()):
        real = columns.get(sqlite_folded(col))
        del obj.collations[col]
        if real is not None:
            obj.collations[real] = coll.upper()
    for _seq, name, unique, origin, partial in conn.execute(f"PRAGMA main.index_list({q})").fetchall():
        obj.indexes.append(_index(conn, table, name, bool(unique), origin, bool(partial),
                                  (master.get(("index", name)) or (None, None))[1]))
    fks: dict[int, list] = {}
    for row in conn.execute(f"PRAGMA main.foreign_key_list({q})").fetchall():
        fks.setdefault(row[0], []).append(row)
    for fid in sorted(fks):
        rows = sorted(fks[fid], key=lambda r: r[1])
        parent = rows[0][2]
        cols = tuple(columns.get(sqlite_folded(r[3]), r[3]) for r in rows)
        to = tuple(r[4] for r in rows)
        deferrable, cname = (parsed.fk_options(cols, parent) if parsed else (False, None))
        obj.foreign_keys.append(ForeignKey(table, cols, parent, None if all(t is None for t in to) else
                                           tuple(t or "" for t in to), rows[0][5].upper(), rows[0][6].upper(),
                                           deferrable, cname))
    obj.foreign_keys.reverse()  # PRAGMA lists them last first
    return obj


def _index(conn: sqlite3.Connection, table: str, name: str, unique: bool, origin: str, partial: bool,
           sql: str | None) -> Index:
    xinfo = [r for r in conn.execute(f"PRAGMA main.index_xinfo({quote_ident(name)})").fetchall() if r[5]]
    exprs: list[str] = []
    where = None
    problem = None
    if sql and not_utf8(sql):
        problem = "its CREATE INDEX text is not valid UTF-8"
    elif sql and (partial or any(r[1] == -2 for r in xinfo)):
        try:
            exprs, where = parse_create_index(sql)
        except SqlSyntaxError as e:
            problem = f"its CREATE INDEX text could not be read ({e})"
    columns = []
    for i, (_seqno, cid, cname, desc, coll, _key) in enumerate(xinfo):
        if cid == -2:
            text = exprs[i] if i < len(exprs) else None
            if text is None:
                problem = problem or "its expression could not be read"
            columns.append(IndexColumn(None, text, bool(desc), (coll or "BINARY").upper()))
        elif cid == -1:
            columns.append(IndexColumn(None, None, bool(desc), "BINARY"))
            problem = problem or "it indexes the rowid"
        else:
            columns.append(IndexColumn(cname, None, bool(desc), (coll or "BINARY").upper()))
    if partial and where is None and problem is None:
        problem = "its WHERE clause could not be read"
    return Index(name, table, unique, origin, tuple(columns), where, problem)


def _view(conn: sqlite3.Connection, name: str, sql: str | None) -> View:
    try:
        names = tuple(r[1] for r in conn.execute(f"PRAGMA main.table_info({quote_ident(name)})"))
    except sqlite3.Error as e:
        return View(name, None, (), f"SQLite cannot read it: {e}")
    if sql and not_utf8(sql):
        return View(name, None, names, "its text is not valid UTF-8")
    try:
        body = view_body(sql or "")
    except SqlSyntaxError as e:
        return View(name, None, names, f"its text could not be read ({e})")
    if body is None:
        return View(name, None, names, "its text could not be read")
    return View(name, body, names)


# --- taking CREATE statements apart ---------------------------------------------------


@dataclass
class ParsedTable:
    checks: list[tuple[str, str | None, str | None]] = field(default_factory=list)  # body, name, column
    collations: dict[str, str] = field(default_factory=dict)
    fks: list[tuple[tuple[str, ...], str, bool, str | None]] = field(default_factory=list)  # cols, parent, deferred, name
    null_conflicts: dict[str, str] = field(default_factory=dict)  # column -> its NOT NULL's ON CONFLICT action
    # (columns, "PRIMARY KEY" or "UNIQUE", the ON CONFLICT action) of each such constraint that has one
    key_conflicts: list[tuple[tuple[str, ...], str, str]] = field(default_factory=list)

    def fk_options(self, columns: tuple[str, ...], parent: str) -> tuple[bool, str | None]:
        want = (tuple(sqlite_folded(c) for c in columns), sqlite_folded(parent))
        for cols, par, deferred, name in self.fks:
            if (tuple(sqlite_folded(c) for c in cols), sqlite_folded(par)) == want:
                return deferred, name
        return False, None


_TABLE_CONSTRAINT = {"CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"}
_COLUMN_CONSTRAINT = {"CONSTRAINT", "PRIMARY", "NOT", "NULL", "UNIQUE", "CHECK", "DEFAULT", "COLLATE",
                      "REFERENCES", "GENERATED", "AS"}


def _word(t: Token | None) -> str | None:
    return t.text.upper() if t is not None and t.kind is Kind.WORD else None


def _close(tokens: list[Token], i: int) -> int:
    """Index of the ')' matching the '(' at tokens[i]."""
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j].kind is Kind.PUNCT and tokens[j].text == "(":
            depth += 1
        elif tokens[j].kind is Kind.PUNCT and tokens[j].text == ")":
            depth -= 1
            if depth == 0:
                return j
    raise SqlSyntaxError("unbalanced parentheses")


def _split(tokens: list[Token], lo: int, hi: int) -> list[tuple[int, int]]:
    """Spans [a, b) of the comma-separated items in tokens[lo:hi] (top level only)."""
    spans, depth, start = [], 0, lo
    for j in range(lo, hi):
        t = tokens[j]
        if t.kind is Kind.PUNCT and t.text == "(":
            depth += 1
        elif t.kind is Kind.PUNCT and t.text == ")":
            depth -= 1
        elif t.kind is Kind.PUNCT and t.text == "," and depth == 0:
            spans.append((start, j))
            start = j + 1
    spans.append((start, hi))
    return [s for s in spans if s[0] < s[1]]


def _text(sql: str, tokens: list[Token], a: int, b: int) -> str:
    """The original text of tokens[a:b] (comments inside included)."""
    end = tokens[b - 1].start + len(tokens[b - 1].text)
    return sql[tokens[a].start:end]


def _names(tokens: list[Token], i: int) -> tuple[list[str], int]:
    """A parenthesized name list at tokens[i] ('('): the names (ASC/DESC/COLLATE dropped)
    and the index after ')'."""
    end = _close(tokens, i)
    names = []
    for a, _b in _split(tokens, i + 1, end):
        names.append(identifier_value(tokens[a]))
    return names, end + 1


def parse_create_table(sql: str) -> ParsedTable | None:
    """CHECKs, column collations and foreign-key options of a CREATE TABLE statement;
    None for CREATE TABLE ... AS SELECT (it has none). Raises SqlSyntaxError."""
    tokens = significant(tokenize(sql))
    out = ParsedTable()
    open_at = next((i for i, t in enumerate(tokens) if t.kind is Kind.PUNCT and t.text == "("), None)
    if open_at is None:
        return None
    if any(_word(t) == "AS" for t in tokens[:open_at]):
        return None
    close_at = _close(tokens, open_at)
    for a, b in _split(tokens, open_at + 1, close_at):
        first = _word(tokens[a])
        if first in _TABLE_CONSTRAINT:
            _table_constraint(sql, tokens, a, b, out)
        else:
            _column_def(sql, tokens, a, b, out)
    return out


def _constraint_name(tokens: list[Token], j: int) -> tuple[str | None, int]:
    if _word(tokens[j]) == "CONSTRAINT" and j + 1 < len(tokens):
        return identifier_value(tokens[j + 1]), j + 2
    return None, j


def _table_constraint(sql: str, tokens: list[Token], a: int, b: int, out: ParsedTable) -> None:
    name, j = _constraint_name(tokens, a)
    w = _word(tokens[j]) if j < b else None
    if w == "CHECK" and j + 1 < b:
        end = _close(tokens, j + 1)
        out.checks.append((_text(sql, tokens, j + 2, end), name, None))
    elif w == "FOREIGN" and j + 2 < b:
        cols, k = _names(tokens, j + 2)
        out.fks.append(_references(tokens, k, b, tuple(cols), name))
    elif w in ("PRIMARY", "UNIQUE"):
        at = j + (2 if w == "PRIMARY" else 1)
        if at < b and tokens[at].text == "(":
            cols, k = _names(tokens, at)
            _key_conflict(tokens, k, b, tuple(cols), w, out)


def _key_conflict(tokens: list[Token], k: int, b: int, cols: tuple[str, ...], w: str, out: ParsedTable) -> int | None:
    """An ON CONFLICT clause at tokens[k] of a PRIMARY KEY or UNIQUE: recorded; the index after it, or None."""
    if k + 2 < b and _word(tokens[k]) == "ON" and _word(tokens[k + 1]) == "CONFLICT":
        out.key_conflicts.append((cols, "PRIMARY KEY" if w == "PRIMARY" else "UNIQUE", _word(tokens[k + 2]) or ""))
        return k + 3
    return None


def _references(tokens: list[Token], k: int, b: int, cols: tuple[str, ...], name: str | None):
    """A REFERENCES clause at tokens[k]: (cols, parent, deferred, name)."""
    parent = identifier_value(tokens[k + 1]) if k + 1 < b and _word(tokens[k]) == "REFERENCES" else ""
    deferred = False
    words = [_word(t) for t in tokens[k:b]]
    for i, w in enumerate(words):
        if w == "DEFERRABLE" and (i == 0 or words[i - 1] != "NOT"):
            # DEFERRABLE alone or INITIALLY IMMEDIATE is immediate in SQLite
            deferred = words[i + 1:i + 3] == ["INITIALLY", "DEFERRED"]
        if w in ("CONSTRAINT",) and i > 0:
            break  # the next constraint of a column definition
    return cols, parent, deferred, name


def _column_def(sql: str, tokens: list[Token], a: int, b: int, out: ParsedTable) -> None:
    column = identifier_value(tokens[a])
    j = a + 1
    name = None
    while j < b:
        w = _word(tokens[j])
        if w == "CONSTRAINT" and j + 1 < b:
            name = identifier_value(tokens[j + 1])
            j += 2
            continue
        if w == "CHECK" and j + 1 < b and tokens[j + 1].text == "(":
            end = _close(tokens, j + 1)
            out.checks.append((_text(sql, tokens, j + 2, end), name, column))
            j, name = end + 1, None
            continue
        if (w == "NOT" and j + 4 < b and _word(tokens[j + 1]) == "NULL" and _word(tokens[j + 2]) == "ON"
                and _word(tokens[j + 3]) == "CONFLICT"):
            out.null_conflicts[column] = _word(tokens[j + 4]) or ""
            j, name = j + 5, None
            continue
        if w in ("PRIMARY", "UNIQUE"):
            k = j + 1
            while k < b and _word(tokens[k]) in ("KEY", "ASC", "DESC"):
                k += 1
            after = _key_conflict(tokens, k, b, (column,), w, out)
            if after is not None:
                j, name = after, None
                continue
        if w == "COLLATE" and j + 1 < b:
            out.collations[column] = identifier_value(tokens[j + 1])
            j, name = j + 2, None
            continue
        if w == "REFERENCES" and j + 1 < b:
            out.fks.append(_references(tokens, j, b, (column,), name))
            name = None
        if tokens[j].kind is Kind.PUNCT and tokens[j].text == "(":
            j = _close(tokens, j) + 1  # DEFAULT (...), a type size, GENERATED AS (...)
            continue
        j += 1


def parse_create_index(sql: str) -> tuple[list[str], str | None]:
    """The indexed items' SQLite text and the WHERE predicate's, of a CREATE INDEX."""
    tokens = significant(tokenize(sql))
    open_at = next((i for i, t in enumerate(tokens) if t.kind is Kind.PUNCT and t.text == "("), None)
    if open_at is None:
        raise SqlSyntaxError("no column list")
    close_at = _close(tokens, open_at)
    items = []
    for a, b in _split(tokens, open_at + 1, close_at):
        while b > a + 1 and _word(tokens[b - 1]) in ("ASC", "DESC"):
            b -= 1
        if b > a + 2 and _word(tokens[b - 2]) == "COLLATE":
            b -= 2
        items.append(_text(sql, tokens, a, b))
    where = None
    rest = tokens[close_at + 1:]
    if rest:
        if _word(rest[0]) != "WHERE" or len(rest) < 2:
            raise SqlSyntaxError("unexpected text after the column list")
        where = _text(sql, tokens, close_at + 2, len(tokens))
    return items, where


def view_body(sql: str) -> str | None:
    """The SELECT of a CREATE VIEW statement (text after the top-level AS)."""
    tokens = significant(tokenize(sql))
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t.kind is Kind.PUNCT and t.text == "(":
            i = _close(tokens, i) + 1  # the optional column list
            continue
        if _word(t) == "AS":
            return _text(sql, tokens, i + 1, len(tokens)) if i + 1 < len(tokens) else None
        i += 1
    return None
