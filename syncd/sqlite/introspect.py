"""Read a SQLite file's schema into TableSpecs: columns, types, keys, unique indexes."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

from syncd.config import SourceSettings
from syncd.identifiers import pg_name_problem, quote_ident, sqlite_folded
from syncd.model import (ROWID_ALIASES, ROWID_COLUMN, Column, Refusal, SourceSchema, TableSpec, UniqueSet,
                         unshadowed_rowid_name)
from syncd.sqlite import leftout, windows
from syncd.sqlite.capture import CHANGELOG, META, REGISTRY
from syncd.sqlite.connection import not_utf8, surrogate_text
from syncd.types import NO_VALUES_YET, TYPED_AT_CUTOVER, PgType, infer_from_values, map_declared_type

log = logging.getLogger(__name__)

SYNCD_PREFIX = "_syncd_"


# syncd's own tables in the application's file; any other `_syncd_` table is the user's
# and is refused by name, never silently ignored.
OWN_TABLES = frozenset({CHANGELOG, META, REGISTRY})
BUILTIN_COLLATIONS = frozenset({"BINARY", "NOCASE", "RTRIM"})


def is_internal(name: str) -> bool:
    return name.startswith("sqlite_") or name in OWN_TABLES


def list_tables(conn: sqlite3.Connection) -> list[tuple[str, str, bool, bool]]:
    """(name, kind, without_rowid, strict) for every object in the main schema; kind is
    table, view, virtual or shadow as PRAGMA table_list reports it, bar an application
    table SQLite takes for a shadow by its name (leftout.really_a_shadow)."""
    rows = [r for r in conn.execute("PRAGMA main.table_list").fetchall() if r[0] == "main"]
    virtual = leftout.virtual_tables(conn) if any(r[2] == "shadow" for r in rows) else {}
    return [(r[1], "table" if r[2] == "shadow" and not leftout.really_a_shadow(conn, r[1], bool(r[4]), virtual)
             else r[2], bool(r[4]), bool(r[5])) for r in rows]


def _columns(conn: sqlite3.Connection, table: str, strict: bool = False) -> list[tuple]:
    # cid, name, type, notnull, dflt_value, pk, hidden
    rows = [r for r in conn.execute(f"PRAGMA main.table_xinfo({quote_ident(table)})") if r[6] in (0, 2, 3)]
    if strict:
        # A STRICT table's ANY column keeps every value as written, with no affinity
        # (text '007' stays text): what a column without a declared type does. Elsewhere
        # ANY is just a type name of NUMERIC affinity ('007' becomes the integer 7).
        rows = [(*r[:2], "", *r[3:]) if (r[2] or "").strip().upper() == "ANY" else r for r in rows]
    return rows


def _unique_indexes(conn: sqlite3.Connection, table: str) -> list[tuple[str, bool, list[tuple[int, str | None, str]]]]:
    """(index name, partial, [(cid, column name, collation)]) for each unique index."""
    out = []
    for _seq, name, unique, _origin, partial in conn.execute(f"PRAGMA main.index_list({quote_ident(table)})"):
        if not unique:
            continue
        cols = [
            (r[1], r[2], r[4])
            for r in conn.execute(f"PRAGMA main.index_xinfo({quote_ident(name)})")
            if r[5]  # key columns only, not the trailing rowid / PK columns
        ]
        out.append((name, bool(partial), cols))
    return sorted(out)


def _foreign_collation(conn: sqlite3.Connection, table: str) -> str | None:
    """Why `table` cannot be carried when its key or an index orders a column by a
    collation the application defines for itself (sqlite3's create_collation): syncd's
    connections lack it, and SQLite reads no row through such an index without it (a
    count, a lookup by key). A column merely declared with one is read as it is."""
    for _seq, index, _unique, origin, _partial in conn.execute(f"PRAGMA main.index_list({quote_ident(table)})"):
        for r in conn.execute(f"PRAGMA main.index_xinfo({quote_ident(index)})"):
            if not r[5] or (r[4] or "BINARY").upper() in BUILTIN_COLLATIONS:
                continue
            what = {"pk": "its primary key", "u": f"its UNIQUE constraint ({index})"}.get(origin, f'index "{index}"')
            column = f'column "{r[2]}"' if r[2] is not None else "an expression"
            return (f"{what} orders {column} by the collation {r[4]}, which the application defines for itself "
                    "(create_collation): syncd's connections lack it, and SQLite reads no row through that "
                    "index without it; order it by one of SQLite's (BINARY, NOCASE, RTRIM), or leave the table "
                    "out with exclude in its [[sources]]")
    return None


def _pk_indexed(conn: sqlite3.Connection, table: str) -> bool:
    """Whether the table's primary key is kept in an index of its own. A single INTEGER
    PRIMARY KEY column is the rowid itself and has none, except when declared
    `INTEGER PRIMARY KEY DESC` in the column's definition: by a quirk SQLite keeps for
    compatibility, that is an ordinary key, whose values and the rowids run apart."""
    return any(origin == "pk" for _seq, _name, _unique, origin, _partial
               in conn.execute(f"PRAGMA main.index_list({quote_ident(table)})"))


def rowid_column_name(column_names: list[str] | tuple[str, ...]) -> str:
    """The Postgres name of a keyless table's rowid column: `_syncd_rowid`, or the first
    free `_syncd_rowid_<n>` should the table have a column of that name."""
    taken = {c.lower() for c in column_names}
    name, n = ROWID_COLUMN, 1
    while name.lower() in taken:
        name, n = f"{ROWID_COLUMN}_{n}", n + 1
    return name


def _infer_types(conn: sqlite3.Connection, raw: RawTable, names: list[str]) -> dict[str, tuple[PgType, str | None]]:
    """Pick types for columns whose declared type says nothing, from what they store
    (counted window by window: no statement holds the read lock for the whole table)."""
    if not names:
        return {}
    parts = []
    for n in names:
        q = quote_ident(n)
        for cls in ("integer", "real", "text", "blob"):
            parts.append(f"coalesce(sum(typeof({q}) = '{cls}'), 0)")
    totals = [0] * len(parts)
    order = windows.ordering([c[1] for c in raw.columns], raw.without_rowid, raw.pk, raw.key_collations(raw.pk))
    for rows in windows.scan(conn, raw.name, order, ", ".join(parts)):
        totals = [a + b for a, b in zip(totals, rows[0])]
    result = {}
    for i, n in enumerate(names):
        ints, reals, texts, blobs = totals[i * 4 : i * 4 + 4]
        result[n] = infer_from_values({"integer": ints, "real": reals, "text": texts, "blob": blobs})
    return result


def _pg_name_problem(raw_table: "RawTable") -> str | None:
    """Why the table's name or a column's cannot be a Postgres name (too long)."""
    problem = pg_name_problem(raw_table.name, "its name")
    for r in raw_table.columns:
        shown = r[1] if len(r[1]) <= 40 else r[1][:40] + "…"
        problem = problem or pg_name_problem(r[1], f"column {shown!r}")
    return problem


@dataclass
class RawTable:
    """A table's schema as PRAGMAs report it, read inside the schema's read transaction."""

    name: str
    without_rowid: bool
    columns: list[tuple]  # table_xinfo rows: cid, name, type, notnull, dflt_value, pk, hidden
    uniques: list[tuple[str, bool, list[tuple[int, str | None, str]]]]
    pk_indexed: bool = False  # the primary key has an index of its own: it is not the rowid

    @property
    def pk(self) -> tuple[str, ...]:
        return tuple(n for _, n in sorted((r[5], r[1]) for r in self.columns if r[5]))

    def key_collations(self, key: tuple[str, ...]) -> tuple[str | None, ...]:
        """Per column of `key`, the collation of a (whole, plain-column) unique index on
        exactly those columns, the primary key's first; None for each where there is none
        or its collation is not one of SQLite's own (a connection of syncd's has no other)."""
        for _name, partial, cols in self.uniques:
            if partial or any(c[0] < 0 for c in cols) or sorted(c[1] for c in cols) != sorted(key):
                continue
            by_name = {c[1]: (c[2] or "BINARY").upper() for c in cols}
            return tuple(by_name[k] if by_name[k] in BUILTIN_COLLATIONS else None for k in key)
        return tuple(None for _ in key)


def describe_table(
    conn: sqlite3.Connection,
    raw_table: RawTable,
    source: SourceSettings,
    sticky_types: Mapping[str, PgType] | None = None,
    retyped: Mapping[str, tuple[PgType, str | None]] | None = None,
) -> TableSpec | Refusal:
    """Build the TableSpec for one table, or a Refusal saying why it cannot be replicated.

    `sticky_types` holds the Postgres types already chosen for columns whose type was
    inferred from values, so a later, different mix of values does not flip the type.
    `retyped` holds the types schema parity gave columns, with their SQLite spelling
    (bookkeeping `columns`): they stay, so values keep converting to them (only values
    in that spelling: types.column_converter); a configured override still wins.
    """
    table, without_rowid, raw = raw_table.name, raw_table.without_rowid, raw_table.columns
    unfit = _pg_name_problem(raw_table)
    if unfit:
        return Refusal(table, unfit)
    if not raw:
        return Refusal(table, "has no columns syncd can read")
    sticky = sticky_types or {}
    typed = retyped or {}
    # Column names as SQLite compares them (A-Z in any case): "Email" names column email.
    actual = {sqlite_folded(r[1]): r[1] for r in raw}
    overrides = {actual.get(sqlite_folded(c), c): t for c, t in source.columns_for(table).items()}
    unknown = set(overrides) - {r[1] for r in raw}
    if unknown:
        named = ", ".join(f'"{c}"' for c in sorted(unknown))
        have = ", ".join(f'"{r[1]}"' for r in raw)
        return Refusal(table, f"[sources.columns] names column(s) {named} the table does not have (renamed or "
                              f"dropped in SQLite?); its columns are {have}: name them as they are now to "
                              "replicate the table")

    chosen: dict[str, tuple[PgType, str | None]] = {}
    formats: dict[str, str | None] = {}
    needs_inference = []
    inferred: set[str] = set()  # typed from the values (or kept so from Postgres)
    for r in raw:
        name, declared = r[1], r[2] or ""
        override = source.column_override(table, name)
        if override is not None:
            chosen[name] = (override, f"configured override ({overrides[name]})")
            continue
        if name in typed:
            pgtype, formats[name] = typed[name]
            spelled = f"; spelled {formats[name]} in SQLite" if formats[name] is not None else ""
            chosen[name] = (pgtype, f"{pgtype.value}: typed by schema parity (every value converted exactly and "
                                    f"back{spelled})")
            continue
        mapped = map_declared_type(declared)
        if mapped is not None:
            chosen[name] = (mapped, None)
            continue
        inferred.add(name)
        if name in sticky:
            later = f"; {TYPED_AT_CUTOVER}" if sticky[name] is PgType.TEXT else ""
            chosen[name] = (sticky[name], f"type kept from the existing Postgres column{later}")
        else:
            needs_inference.append(name)
    for name, (pgtype, note) in _infer_types(conn, raw_table, needs_inference).items():
        if note == NO_VALUES_YET:
            declared = next(r[2] or "" for r in raw if r[1] == name)
            untyped = "no declared type" if not declared.strip() else f"declared {declared!r}, which names no type"
            note = f"{untyped} and {note}"
        chosen[name] = (pgtype, note or "chosen from the stored values (no usable declared type)")

    columns = tuple(
        Column(
            name=r[1],
            declared=r[2] or "",
            pgtype=chosen[r[1]][0],
            notnull=bool(r[3]),
            default_sql=r[4],
            type_note=chosen[r[1]][1],
            generated=r[6] in (2, 3),
            sqlite_format=formats.get(r[1]),
            inferred=r[1] in inferred,
        )
        for r in raw
    )
    names = [c.name for c in columns]
    uniques = raw_table.uniques
    notnull = {c.name for c in columns if c.notnull}

    configured = source.keys_for(table)
    if configured is not None:
        configured = [actual.get(sqlite_folded(k), k) for k in configured]
    # [sources.keys] "t" = ["rowid"] (or another of its names no column shadows): keyed
    # on the rowid as a table without a key is, the way out for a primary key holding
    # NULLs, which SQLite allows in a rowid table and Postgres does not.
    by_rowid = (configured is not None and len(configured) == 1 and not without_rowid
                and configured[0].lower() in ROWID_ALIASES and configured[0].lower() not in {n.lower() for n in names})
    pk_cols = raw_table.pk
    if by_rowid and len(pk_cols) == 1 and not raw_table.pk_indexed and next(
            (r[2] or "") for r in raw if r[1] == pk_cols[0]).strip().upper() == "INTEGER":
        return Refusal(table, f'[sources.keys] names the rowid, which is its INTEGER PRIMARY KEY "{pk_cols[0]}" '
                              "already: leave the table out of [sources.keys]")
    if configured and not by_rowid:
        missing = [k for k in configured if k not in names]
        if missing:
            return Refusal(table, f"[sources.keys] names unknown column(s) {missing}")
        key, origin = tuple(configured), "configured"
    else:
        pk = sorted((r[5], r[1]) for r in raw if r[5]) if not by_rowid else []
        if pk:
            key, origin = tuple(n for _, n in pk), "primary key"
        else:
            candidates = [
                (idx, cols)
                for idx, partial, cols in uniques
                if not partial and all(c[0] >= 0 and c[1] in notnull for c in cols) and not by_rowid
            ]
            if candidates:
                idx, cols = candidates[0]
                key, origin = tuple(c[1] for c in cols), f"unique index {idx}"
            else:
                # Keyless: rows are told apart by their rowid, carried into Postgres in a
                # column of syncd's own. VACUUM may renumber it: reconcile reloads such a
                # table whenever the schema moved without syncd (see capture.note_schema).
                alias = unshadowed_rowid_name(names)
                if alias is None:
                    return Refusal(
                        table,
                        "has no primary key and its columns named rowid, oid and _rowid_ hide the rowid that "
                        f'would tell its rows apart; name key columns in [sources.keys] "{table}" = ["col", ...]',
                    )
                rid = Column(name=rowid_column_name(names), declared="", pgtype=PgType.BIGINT, notnull=True,
                             default_sql=None, sqlite_expr=alias,
                             type_note="the SQLite rowid ([sources.keys] keys the table on it)" if by_rowid else
                             "the SQLite rowid (the table has no key; syncd keys it on the rowid)")
                columns = (*columns, rid)
                key, origin = (rid.name,), "rowid ([sources.keys])" if by_rowid else "rowid (no primary key)"

    for k in key:
        col = next((c for c in columns if c.name == k), None)
        if col is not None and col.pgtype in (PgType.JSON, PgType.JSONB):
            why = ("which Postgres cannot compare, so cannot key a table on" if col.pgtype is PgType.JSON else
                   """which holds '{"a":1}' and '{"a": 1}' (or keys in another order, or twice) as one value: rows """
                   "SQLite tells apart would be merged in Postgres in silence")
            return Refusal(table, f'key column "{k}" is {col.pgtype.value} ({col.type_note}), {why}; give it text '
                                  "in [sources.columns] (or key the table on other columns in [sources.keys])")

    notes = []
    if origin.startswith("rowid"):
        why = "keyed on the rowid by [sources.keys]" if by_rowid else "no primary key"
        notes.append(f'{why}: rows are told apart by their SQLite rowid, kept in Postgres column "{key[0]}"; '
                     "VACUUM may renumber rowids, so the table is reloaded (aside, swapped in one transaction) "
                     "whenever the file's schema changes without syncd")
    unique_sets = []
    for idx, _partial, cols in uniques:
        if any(c[0] < 0 for c in cols):
            if any(c[0] == -2 for c in cols):
                notes.append(
                    f"unique expression index {idx!r}: rows an INSERT OR REPLACE removes through it "
                    "are caught by the periodic verify (and repaired), not when the batch is applied"
                )
            continue
        names_ = tuple(c[1] for c in cols)
        collations = tuple(c[2] or "BINARY" for c in cols)
        if (set(names_) == set(key) and all(c.upper() == "BINARY" for c in collations)
                and not any(c.numbers_as_text for c in columns if c.name in key)):
            # A REPLACE through the key itself reuses the same key: the insert records it.
            # Under NOCASE or RTRIM it replaces a row whose key differs byte-wise, and in a
            # column without a type one holding 1 for 1.0 (another key in Postgres): watch it.
            continue
        unique_sets.append(UniqueSet(names_, collations))

    return TableSpec(
        name=table,
        columns=columns,
        key=key,
        key_collations=raw_table.key_collations(key) if origin != "configured" else tuple(None for _ in key),
        without_rowid=without_rowid,
        key_origin=origin,
        unique_sets=tuple(unique_sets),
        notes=tuple(notes),
        rowid_alias=(not without_rowid and origin == "primary key" and len(key) == 1 and not raw_table.pk_indexed
                     and next(c.declared for c in columns if c.name == key[0]).strip().upper() == "INTEGER"),
    )


def _not_utf8_tables(conn: sqlite3.Connection) -> set[str]:
    """The tables whose CREATE TABLE text, as SQLite keeps it, is not valid UTF-8 (a CHECK,
    a DEFAULT or a name in it): SQLite keeps whatever bytes it was given."""
    old = conn.text_factory
    conn.text_factory = surrogate_text
    try:
        return {name for name, sql in conn.execute("SELECT name, sql FROM main.sqlite_master WHERE type = 'table'")
                if not_utf8(sql)}
    finally:
        conn.text_factory = old


def _not_utf8_schema(conn: sqlite3.Connection, table: str) -> str:
    """Why a table whose schema holds text that is not valid UTF-8 (a column's name,
    declared type or DEFAULT, an index's name, a CHECK) cannot be carried, naming the
    part at fault."""
    old = conn.text_factory
    conn.text_factory = surrogate_text
    try:
        columns = _columns(conn, table)
        indexes = conn.execute(f"PRAGMA main.index_list({quote_ident(table)})").fetchall()
    finally:
        conn.text_factory = old
    what = "its CREATE TABLE text (a CHECK constraint, say)"
    for r in columns:
        if not_utf8(r[1]):
            what = f"the name of column {_shown(r[1])}"
        elif not_utf8(r[2]):
            what = f"the declared type of column {_shown(r[1])}"
        elif not_utf8(r[4]):
            what = f"the DEFAULT {_shown(r[4], '')} of column {_shown(r[1])}"
        else:
            continue
        break
    else:
        what = next((f"the name of index {_shown(r[1])}" for r in indexes if not_utf8(r[1])), what)
    return (f"{what} is text that is not valid UTF-8, which Postgres cannot hold; give the table a definition "
            "in valid UTF-8 in SQLite to replicate it")


def _shown(text: str, quote: str = '"') -> str:
    """`text` quoted, each of its bytes that is not UTF-8 written as an escape (\\xff)."""
    return quote + text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") + quote


def introspect(
    conn: sqlite3.Connection,
    source: SourceSettings,
    sticky_types: Mapping[str, Mapping[str, PgType]] | None = None,
    retyped: Mapping[str, Mapping[str, tuple[PgType, str | None]]] | None = None,
) -> SourceSchema:
    """The source's schema. Its `version` is SQLite's schema_version read in the same
    transaction as the PRAGMAs, so a batch read can tell whether its columns are current."""
    schema = SourceSchema()
    sticky_types = sticky_types or {}
    raws = []
    conn.execute("BEGIN")
    try:
        schema.version = schema_version(conn)
        virtual = leftout.virtual_tables(conn)
        not_utf8_sql = _not_utf8_tables(conn)
        old = conn.text_factory
        conn.text_factory = surrogate_text  # an object's name is whatever bytes the application gave SQLite
        try:
            objects = list_tables(conn)
        finally:
            conn.text_factory = old
        for name, kind, without_rowid, strict in objects:
            if not_utf8(name) and source.wants_table(name):
                # No statement syncd runs can name it (they are UTF-8), nor Postgres hold its
                # name: left where it is, said with its bytes as escapes.
                shown = _shown(name, "")
                schema.left_out[shown] = leftout.LeftOut(
                    shown, "not_utf8", f"a {kind} whose name is not valid UTF-8 (no statement syncd runs can name "
                                       "it, and Postgres cannot hold the name)", "rename it in SQLite to carry it",
                    holds_data=kind in ("table", "virtual"))
                continue
            if is_internal(name):
                continue
            if not source.wants_table(name):
                # A virtual table's shadow goes with it, left out either way: said as a shadow.
                shown = _shown(name, "") if not_utf8(name) else name
                schema.left_out[shown] = (leftout.classify(conn, name, kind, virtual) if kind == "shadow"
                                          and not not_utf8(name) else leftout.excluded(shown, kind))
                continue
            if name.startswith(SYNCD_PREFIX) and kind == "table":
                schema.refused[name] = Refusal(name, f"its name starts with {SYNCD_PREFIX}, which syncd reserves for "
                                                     "its own tables; rename it to replicate it")
                continue
            if kind in ("view", "virtual", "shadow"):
                schema.left_out[name] = leftout.classify(conn, name, kind, virtual)
            elif kind != "table":
                schema.left_out[name] = leftout.LeftOut(name, kind, f"a {kind} object", "nothing syncd can carry")
            elif name in not_utf8_sql:
                schema.refused[name] = Refusal(name, _not_utf8_schema(conn, name))
            else:
                try:  # an index's name may be bytes that are not UTF-8 too
                    foreign = _foreign_collation(conn, name)
                    if foreign is not None:
                        schema.refused[name] = Refusal(name, foreign)
                        continue
                    raws.append(RawTable(name, without_rowid, _columns(conn, name, strict),
                                         _unique_indexes(conn, name), _pk_indexed(conn, name)))
                except sqlite3.OperationalError as e:
                    if "decode" not in str(e):
                        raise
                    schema.refused[name] = Refusal(name, _not_utf8_schema(conn, name))
    finally:
        conn.execute("COMMIT")
    for raw in raws:  # type inference scans data: outside the schema's transaction
        spec = describe_table(conn, raw, source, sticky_types.get(raw.name), (retyped or {}).get(raw.name))
        if isinstance(spec, Refusal):
            schema.refused[raw.name] = spec
        else:
            schema.tables[raw.name] = spec
    return schema


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA main.schema_version").fetchone()[0]


def journal_mode(conn: sqlite3.Connection) -> str:
    # Reading the mode never changes it.
    return conn.execute("PRAGMA main.journal_mode").fetchone()[0].lower()
