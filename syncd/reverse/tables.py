"""Which tables the way back follows, and the schema changes it carries into SQLite.

After a cutover the application changes Postgres's schema, not SQLite's. Per table:

  * a column Postgres gained (ADD COLUMN) is added to SQLite, with a declared type
    whose affinity keeps the values as they come back, and the table is copied again
    (its existing rows get their values for it);
  * a table Postgres gained is created in SQLite (columns, primary key), captured and
    frozen like the others, and copied;
  * what SQLite cannot express (a type with no exact SQLite form, a table without a
    primary key, a partitioned table), what would lose data (a column or table
    dropped, a key changed) or what SQLite's application would read differently (a
    column changed to another kind of value) pauses the table with a message saying
    what to do: never skipped in silence. A rollback is refused while a table is paused.

Everything here is idempotent and derived from what both sides hold durably, so a
crash halfway is simply redone.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field

import asyncpg

from syncd.identifiers import quote_ident, quote_pg_ident, sqlite_folded
from syncd.model import TableSpec
from syncd.postgres import ddl
from syncd.reverse import values
from syncd.reverse.applier import _write_meta, read_reload
from syncd.reverse.checkpoint import RELOAD_KEY
from syncd.reverse.values import ColumnShape
from syncd.sqlite.capture import _own_schema_change, write_transaction
from syncd.sqlite.connection import surrogate_text
from syncd.sqlite_sql import affinity
from syncd.types import PgType

SPELLED = (PgType.TIMESTAMP, PgType.TIMESTAMPTZ, PgType.DATE)
FORMAT_SAMPLE = 50


@dataclass
class PgColumnInfo:
    name: str
    type_name: str
    notnull: bool
    default: str | None  # pg_get_expr of the default, if any
    identity: bool = False  # GENERATED ... AS IDENTITY in Postgres

    @property
    def numbered(self) -> bool:
        """Postgres numbers the column's rows itself (an identity, or a serial's nextval DEFAULT)."""
        return self.identity or (self.default or "").lstrip().lower().startswith("nextval(")


@dataclass
class PgTableInfo:
    name: str
    columns: list[PgColumnInfo]
    key: tuple[str, ...]
    partitioned: bool = False  # PARTITION BY: no rows of its own
    children: tuple[str, ...] = ()  # its partitions (or INHERITS children), schema-qualified outside `schema`
    parent: str | None = None  # the table it is a partition (or INHERITS child) of
    parent_here: bool = True  # that table is in the same schema (its reason names this one)

    def column(self, name: str) -> PgColumnInfo | None:
        return next((c for c in self.columns if c.name == name), None)


def made_by_the_application(name: str, source, owners: dict[str, str]) -> bool:
    """Whether a table of the source's schema in Postgres is one the way back takes up
    as the application's own (created there after the cutover): the source wants it,
    it is not one a drop in SQLite left in Postgres (kept aside there, never the
    application's table again), and it is no other source's replica. (One named as
    SQLite's or syncd's own tables are is paused: name_clashes.)"""
    return (source.wants_table(name) and not ddl.is_aside(name)
            and owners.get(name) in (None, source.name))


async def not_taken_up(conn: asyncpg.Connection, source, b) -> list[str]:
    """Tables in Postgres the way back would follow but has not taken up yet (made by
    the application moments ago, or while no daemon ran): SQLite has none of their rows."""
    known = await b.load_tables(conn)
    owners = await b.owners(conn, source.schema)
    return [name for name, pgt in sorted((await read_pg_tables(conn, source.schema)).items())
            if name not in known and made_by_the_application(name, source, owners) and ddl.ASIDE_MARK not in name
            and not (pgt.parent is not None and pgt.parent_here)]


async def read_pg_tables(conn: asyncpg.Connection, schema: str,
                         base: dict[str, ddl.PgTable] | None = None) -> dict[str, PgTableInfo]:
    """Every table of `schema` with its columns (type, NOT NULL, default), key and
    partitioning (partitions are tables here too, as Postgres lists them). `base`: the
    schema's ddl.read_tables, when the caller has read it already."""
    if base is None:
        base = await ddl.read_tables(conn, schema)
    defaults = {(r[0], r[1]): r[2] for r in await conn.fetch(
        "SELECT c.relname, a.attname, pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d "
        "JOIN pg_class c ON c.oid = d.adrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE n.nspname = $1", schema)}
    out = {name: PgTableInfo(name, [PgColumnInfo(c.name, c.type_name, c.notnull, defaults.get((name, c.name)),
                                                 c.identity) for c in t.columns], tuple(t.key))
           for name, t in base.items()}
    for r in await conn.fetch(
            "SELECT p.relname, pn.nspname, c.relname, cn.nspname FROM pg_inherits i "
            "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace "
            "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace "
            "WHERE (pn.nspname = $1 OR cn.nspname = $1) AND p.relkind IN ('r', 'p') ORDER BY 3", schema):
        parent, child = out.get(r[0]) if r[1] == schema else None, out.get(r[2]) if r[3] == schema else None
        if parent is not None:
            parent.children += (r[2] if r[3] == schema else f"{r[3]}.{r[2]}",)
        if child is not None:
            child.parent, child.parent_here = (r[0] if r[1] == schema else f"{r[1]}.{r[0]}"), r[1] == schema
    for (name,) in await conn.fetch("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                    "WHERE n.nspname = $1 AND c.relkind = 'p'", schema):
        if name in out:
            out[name].partitioned = True
    return out


async def read_formats(conn: asyncpg.Connection, bk_schema: str, source: str) -> dict[tuple[str, str], str]:
    """(table, column) -> the SQLite spelling schema parity recorded for a retyped column."""
    rows = await conn.fetch(f"SELECT table_name, column_name, sqlite_format FROM {quote_pg_ident(bk_schema)}.columns "
                            "WHERE source = $1 AND sqlite_format IS NOT NULL", source)
    return {(r[0], r[1]): r[2] for r in rows}


async def record_format(conn: asyncpg.Connection, bk_schema: str, source: str, table: str, column: str,
                        pgtype: str, fmt: str) -> None:
    await conn.execute(f"INSERT INTO {quote_pg_ident(bk_schema)}.columns (source, table_name, column_name, pgtype, "
                       "sqlite_format) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                       source, table, column, pgtype, fmt)


async def adopt(conn: asyncpg.Connection, b, schema: str, table: str) -> bool:
    """A table the application created in Postgres after the cutover becomes this
    source's (recorded as syncd's, like one syncd created): the way back follows it into
    SQLite, and after a rollback the stream from SQLite writes it. False when another
    source already has it."""
    from syncd.postgres.bookkeeping import OWNED_TABLES

    await conn.execute(f"INSERT INTO {b.s}.{OWNED_TABLES}(schema_name, table_name, source) VALUES ($1, $2, $3) "
                       "ON CONFLICT (schema_name, table_name) DO NOTHING", schema, table, b.source)
    return (await b.owners(conn, schema)).get(table) == b.source


# --- judging a table ----------------------------------------------------------------------


@dataclass
class Decision:
    kind: str  # "follow" | "add_columns" | "create" | "pause" | "ignore" | "forget"
    reason: str | None = None
    add: list[PgColumnInfo] = field(default_factory=list)


FOLLOW, ADD_COLUMNS, CREATE, PAUSE, IGNORE = "follow", "add_columns", "create", "pause", "ignore"
FORGET = "forget"  # bookkeeping has a table SQLite never had and Postgres no longer has as a table of its own


def _not_expressible(pgt: PgTableInfo, names: list[str]) -> str | None:
    bad = [(c.name, c.type_name) for c in pgt.columns if c.name in names and values.family(c.type_name) is None]
    if not bad:
        return None
    what = ", ".join(f'"{n}" ({t})' for n, t in bad)
    return (f"column(s) {what} have a Postgres type SQLite has no exact form for; change the type in Postgres "
            "(integer, numeric, text, bytea, boolean, json, timestamp or date types come back exactly)")


def _not_one_table(spec: TableSpec | None, pgt: PgTableInfo, known: bool) -> Decision | None:
    """A partitioned table (or one with INHERITS children), or a table that became a
    partition: the way back does not follow them. A write straight to a partition fires
    no statement trigger of its parent, and ATTACH/DETACH PARTITION moves rows with no
    trigger at all, so SQLite could not be kept equal. A partition SQLite never had is
    its parent's rows (named in the parent's reason), not a table of its own."""
    if pgt.partitioned or pgt.children:
        what = "partitioned" if pgt.partitioned else "given child tables (INHERITS)"
        parts = ", ".join(f'"{c}"' for c in pgt.children[:5]) + (", ..." if len(pgt.children) > 5 else "")
        return Decision(PAUSE, f"{what} in Postgres after the cutover{f' ({parts})' if parts else ''}: the way back "
                               "does not follow partitioned tables (writes to a partition and ATTACH/DETACH PARTITION "
                               "escape its capture), so SQLite does not get this table's rows; make it one plain "
                               "table again in Postgres to resume")
    if pgt.parent is not None and (spec is not None or not pgt.parent_here):
        return Decision(PAUSE, f'made a partition (or INHERITS child) of "{pgt.parent}" in Postgres after the cutover: '
                               "the way back does not follow partitioned tables, so SQLite does not get this table's "
                               "changes; make it one plain table again in Postgres to resume")
    if pgt.parent is not None:
        return Decision(FORGET if known else IGNORE)
    return None


def judge(spec: TableSpec | None, pgt: PgTableInfo | None, known: bool,
          typed: frozenset[str] = frozenset()) -> Decision:
    """What the way back does with one table. `known`: syncd's bookkeeping has it;
    `typed`: its columns schema parity typed (dates SQLite spells, a date type in Postgres)."""
    if pgt is not None and (split := _not_one_table(spec, pgt, known)) is not None:
        return split
    if spec is not None and pgt is not None:
        if tuple(pgt.key) != tuple(spec.key):
            return Decision(PAUSE, f"the primary key differs between Postgres ({', '.join(pgt.key) or 'none'}) "
                                   f"and SQLite ({', '.join(spec.key)}); give Postgres SQLite's key again")
        pg_names = [c.name for c in pgt.columns]
        gone = [c for c in spec.column_names if c not in pg_names]
        if gone:
            cols = ", ".join(f'"{c}"' for c in gone)
            return Decision(PAUSE, f"column(s) {cols} exist in SQLite but no longer in Postgres (dropped or renamed "
                                   "there after the cutover); SQLite keeps them with their values. Add them back "
                                   "in Postgres (or drop them in SQLite yourself) to resume")
        why = _not_expressible(pgt, pg_names)
        if why:
            return Decision(PAUSE, why)
        moved = [f"{c.name}: {pgt.column(c.name).type_name} in Postgres, {c.pgtype} expected" for c in spec.columns
                 if values.family(pgt.column(c.name).type_name) is not c.pgtype and c.name not in typed]
        if moved:
            # Its values would reach SQLite as another kind of value than the application reads there.
            return Decision(PAUSE, f"a column's type was changed in Postgres after the cutover to another kind of "
                                   f"value ({'; '.join(moved)}), which the way back does not follow; give it its "
                                   "old type again to compare the table (and to roll back)")
        extra = [c for c in pgt.columns if c.name not in spec.column_names and not ddl.is_aside(c.name)]
        if extra:
            return Decision(ADD_COLUMNS, add=extra)
        return Decision(FOLLOW)
    if pgt is not None:
        if not pgt.key:
            return Decision(PAUSE, "a table created in Postgres after the cutover without a primary key: SQLite "
                                   "could not tell its rows apart; give it a primary key in Postgres")
        why = _not_expressible(pgt, [c.name for c in pgt.columns])
        if why:
            return Decision(PAUSE, f"a table created in Postgres after the cutover: {why}")
        return Decision(CREATE)
    if spec is not None and known:
        return Decision(PAUSE, DROPPED)
    return Decision(FORGET) if known and spec is None else Decision(IGNORE)


LEFT_OUT = ("left out of the source's configuration (`tables`/`exclude`) after the cutover: Postgres's changes to "
            "it are not written to SQLite while so (a rollback refuses meanwhile). Configure it again to copy it "
            "from Postgres and follow it")
DROPPED = ("the table was dropped in Postgres after the cutover; SQLite keeps its rows. Create it again in Postgres "
           "(or drop it in SQLite yourself) to resume")


def renamed(decisions: dict[str, Decision], specs: dict[str, TableSpec], pg_tables: dict[str, PgTableInfo],
            made: frozenset[str] = frozenset()) -> None:
    """A table gone from Postgres while one table there has just its columns and key
    was renamed there, most likely: its pause says so (the new name is followed as a
    table of its own). `made`: the tables syncd created in Postgres under their names
    (SQLite's own, replicated before the cutover), none of which a rename made."""
    kept = (FOLLOW, ADD_COLUMNS, CREATE)
    for name, d in decisions.items():
        spec = specs.get(name)
        if d.kind != PAUSE or d.reason != DROPPED or spec is None:
            continue
        shape = ([c.lower() for c in spec.column_names], [k.lower() for k in spec.key])
        alike = [other for other, o in decisions.items()
                 if other != name and o.kind in kept and other in pg_tables and other not in made
                 and ([c.name.lower() for c in pg_tables[other].columns if not ddl.is_aside(c.name)],
                      [k.lower() for k in pg_tables[other].key]) == shape]
        if len(alike) == 1:
            d.reason = (f'the table is no longer in Postgres: renamed there to "{alike[0]}" after the cutover, it '
                        f'seems (that table has its columns and key; SQLite follows it as a table of its own). '
                        f'SQLite keeps this one\'s rows: drop it in SQLite yourself once "{alike[0]}" holds what you '
                        "need (or give the table its old name in Postgres again) to resume")


def sqlite_names(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(type, name) of everything in the file's schema: tables, indexes, views and
    triggers share one namespace."""
    old = conn.text_factory
    conn.text_factory = surrogate_text  # a name is whatever bytes the application gave SQLite
    try:
        return [(r[0], r[1]) for r in conn.execute("SELECT type, name FROM main.sqlite_master")]
    finally:
        conn.text_factory = old


def name_clashes(decisions: dict[str, Decision], specs: dict[str, TableSpec], pg_tables: dict[str, PgTableInfo],
                 taken: list[tuple[str, str]]) -> None:
    """A table or column Postgres gained whose name SQLite takes for one it has already
    ("T" beside "t": SQLite ignores case in names) cannot be created there: that table
    is paused, naming both, instead of failing the whole way back."""
    have: dict[str, list[tuple[str, str]]] = {}
    for kind, n in taken:
        have.setdefault(sqlite_folded(n), []).append((kind, n))
    for name, d in decisions.items():
        if d.kind == CREATE:
            have.setdefault(sqlite_folded(name), []).append(("new", name))
    for name, d in decisions.items():
        clash = None
        if d.kind == CREATE and sqlite_folded(name).startswith("sqlite_"):
            decisions[name] = Decision(PAUSE, f'the table "{name}" created in Postgres after the cutover has a name '
                                              'SQLite keeps for its own tables (beginning with "sqlite_"), so SQLite '
                                              "cannot follow; rename it in Postgres to resume")
            continue
        if d.kind == CREATE and sqlite_folded(name).startswith("_syncd_"):
            decisions[name] = Decision(PAUSE, f'the table "{name}" created in Postgres after the cutover has a name '
                                              'syncd keeps for its own tables in SQLite (beginning with "_syncd_"), so '
                                              "SQLite cannot follow; rename it in Postgres to resume")
            continue
        if d.kind == CREATE:
            # a table of exactly its name is the one create_table made already
            other = next((n for kind, n in have[sqlite_folded(name)]
                          if n != name or kind not in ("table", "new")), None)
            if other is not None:
                clash = f'the table "{name}" created in Postgres after the cutover and "{other}"'
            else:
                clash = _columns_clash([], [c.name for c in pg_tables[name].columns])
        elif d.kind == ADD_COLUMNS:
            clash = _columns_clash(specs[name].column_names, [c.name for c in d.add])
        if clash is not None:
            decisions[name] = Decision(PAUSE, f"{clash} are one name to SQLite (it ignores case in names), so "
                                              "SQLite cannot follow; rename it in Postgres to resume")


def _columns_clash(have: list[str], added: list[str]) -> str | None:
    seen = {sqlite_folded(c): c for c in have}
    for c in added:
        other = seen.get(sqlite_folded(c))
        if other is not None:
            return f'the column "{c}" added in Postgres after the cutover and "{other}"'
        seen[sqlite_folded(c)] = c
    return None


# --- SQLite DDL ---------------------------------------------------------------------------


_LITERAL = re.compile(r"^'((?:[^']|'')*)'(?:::[\w\s]+)?$|^(-?\d+(?:\.\d+)?)(?:::[\w\s]+)?$")


def default_sql(c: PgColumnInfo) -> str | None:
    """A Postgres column default SQLite can state exactly (a constant), or None."""
    if c.default is None:
        return None
    d = c.default.strip()
    if d.lower() in ("true", "false"):
        return "1" if d.lower() == "true" else "0"
    m = _LITERAL.match(d)
    if m is None:
        return None
    if m.group(2) is not None:
        return m.group(2)
    return "'" + m.group(1) + "'"


def column_ddl(c: PgColumnInfo, in_key: bool) -> str:
    declared = values.declared_for(c.type_name)
    assert declared is not None
    parts = [quote_ident(c.name)]
    if declared:
        parts.append(declared)
    default = default_sql(c)
    if default is not None:
        parts.append(f"DEFAULT {default}")
    # ADD COLUMN cannot add NOT NULL without a default; a key column is NOT NULL anyway.
    if c.notnull and (default is not None or in_key):
        parts.insert(2 if declared else 1, "NOT NULL")
    return " ".join(parts)


def create_table_sql(pgt: PgTableInfo) -> str:
    cols = [column_ddl(c, c.name in pgt.key) for c in pgt.columns]
    if len(pgt.key) == 1 and values.family(pgt.column(pgt.key[0]).type_name) is PgType.BIGINT:
        # An integer key becomes SQLite's INTEGER PRIMARY KEY (the rowid): new rows get ids as before.
        # One Postgres numbers (an identity, a serial) is AUTOINCREMENT too: after a rollback SQLite
        # goes on past every id Postgres handed out (rollback.keep_autoincrement_past), never giving
        # again the id of a row deleted there.
        i = [c.name for c in pgt.columns].index(pgt.key[0])
        numbered = " AUTOINCREMENT" if pgt.columns[i].numbered else ""
        cols[i] = f"{quote_ident(pgt.key[0])} INTEGER PRIMARY KEY{numbered}"
    else:
        cols.append(f"PRIMARY KEY ({', '.join(quote_ident(k) for k in pgt.key)})")
    return f"CREATE TABLE main.{quote_ident(pgt.name)} ({', '.join(cols)})"


def add_columns(conn: sqlite3.Connection, table: str, cols: list[PgColumnInfo], busy_timeout_ms: int) -> None:
    """ADD COLUMN each, and mark the table to be copied again, in one transaction."""

    def change(c: sqlite3.Connection) -> None:
        have = {r[1] for r in c.execute(f"PRAGMA main.table_xinfo({quote_ident(table)})")}
        for col in cols:
            if col.name not in have:
                c.execute(f"ALTER TABLE main.{quote_ident(table)} ADD COLUMN {column_ddl(col, False)}")
        _mark(c, table, "column(s) added in Postgres: their values are copied")

    write_transaction(conn, lambda c: _own_schema_change(c, change), busy_timeout_ms=busy_timeout_ms)


def create_table(conn: sqlite3.Connection, pgt: PgTableInfo, busy_timeout_ms: int) -> None:
    def change(c: sqlite3.Connection) -> None:
        if c.execute("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?", (pgt.name,)).fetchone():
            return
        c.execute(create_table_sql(pgt))
        _mark(c, pgt.name, "table created in Postgres: its rows are copied")

    write_transaction(conn, lambda c: _own_schema_change(c, change), busy_timeout_ms=busy_timeout_ms)


def _mark(c: sqlite3.Connection, table: str, why: str) -> None:
    reload = read_reload(c)
    reload[table] = why
    _write_meta(c, RELOAD_KEY, _dumps(reload))


def _dumps(reload: dict[str, str]) -> str:
    return json.dumps(sorted(reload.items()))


# --- shapes ---------------------------------------------------------------------------------


def sample_values(conn: sqlite3.Connection, spec: TableSpec, column: str) -> list:
    ref = spec.sqlite_ref(column)
    return [r[0] for r in conn.execute(
        f"SELECT {ref} FROM main.{quote_ident(spec.name)} WHERE {ref} IS NOT NULL LIMIT {FORMAT_SAMPLE}")]


def shapes_for(spec: TableSpec, pgt: PgTableInfo, formats: dict[str, str],
               samples: dict[str, list]) -> tuple[ColumnShape, ...]:
    """How each of the table's columns comes back (spec column order). `formats`: the
    recorded spelling per column; `samples`: stored values of instant columns without one."""
    out = []
    for c in spec.columns:
        pgc = pgt.column(c.name)
        fam = values.family(pgc.type_name) if pgc is not None else None
        if fam is None:
            fam = c.pgtype  # judge() pauses such a table before any value is converted
        aff = values.INTEGER if c.sqlite_expr is not None else affinity(c.declared)  # the rowid
        fmt = formats.get(c.name)
        recorded = fmt is not None
        if fmt is None and fam in SPELLED:
            fmt = values.most_common_format(samples.get(c.name, []))
        out.append(ColumnShape(c.name, fam, aff, fmt, recorded))
    return tuple(out)
