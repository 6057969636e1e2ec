"""Read a SQLite file's schema into TableSpecs: columns, types, keys, unique indexes."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping

from syncd.config import SourceSettings
from syncd.identifiers import quote_ident
from syncd.model import Column, Refusal, SourceSchema, TableSpec, UniqueSet
from syncd.types import PgType, infer_from_values, map_declared_type

log = logging.getLogger(__name__)

SYNCD_PREFIX = "_syncd_"


def is_internal(name: str) -> bool:
    return name.startswith("sqlite_") or name.startswith(SYNCD_PREFIX)


def list_tables(conn: sqlite3.Connection) -> list[tuple[str, str, bool]]:
    """(name, kind, without_rowid) for every object in the main schema; kind is
    table, view, virtual or shadow as PRAGMA table_list reports it."""
    rows = conn.execute("PRAGMA main.table_list").fetchall()
    return [(r[1], r[2], bool(r[4])) for r in rows if r[0] == "main"]


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple]:
    # cid, name, type, notnull, dflt_value, pk, hidden
    return [r for r in conn.execute(f"PRAGMA main.table_xinfo({quote_ident(table)})") if r[6] in (0, 2, 3)]


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


def _infer_types(conn: sqlite3.Connection, table: str, names: list[str]) -> dict[str, tuple[PgType, str | None]]:
    """One scan of the table to pick types for columns whose declared type says nothing."""
    if not names:
        return {}
    parts = []
    for n in names:
        q = quote_ident(n)
        for cls in ("integer", "real", "text", "blob"):
            parts.append(f"sum(typeof({q}) = '{cls}')")
    row = conn.execute(f"SELECT {', '.join(parts)} FROM main.{quote_ident(table)}").fetchone()
    result = {}
    for i, n in enumerate(names):
        ints, reals, texts, blobs = row[i * 4 : i * 4 + 4]
        classes = {"integer": ints or 0, "real": reals or 0, "text": texts or 0, "blob": blobs or 0}
        result[n] = infer_from_values(classes)
    return result


def describe_table(
    conn: sqlite3.Connection,
    table: str,
    without_rowid: bool,
    source: SourceSettings,
    sticky_types: Mapping[str, PgType] | None = None,
) -> TableSpec | Refusal:
    """Build the TableSpec for one table, or a Refusal saying why it cannot be replicated.

    `sticky_types` holds the Postgres types already chosen for columns whose type was
    inferred from values, so a later, different mix of values does not flip the type.
    """
    raw = _columns(conn, table)
    if not raw:
        return Refusal(table, "has no columns syncd can read")
    sticky = sticky_types or {}
    overrides = source.columns.get(table, {})
    unknown = set(overrides) - {r[1] for r in raw}
    if unknown:
        return Refusal(table, f"[sources.columns] names unknown column(s) {sorted(unknown)}")

    chosen: dict[str, tuple[PgType, str | None]] = {}
    needs_inference = []
    for r in raw:
        name, declared = r[1], r[2] or ""
        override = source.column_override(table, name)
        if override is not None:
            chosen[name] = (override, f"configured override ({overrides[name]})")
            continue
        mapped = map_declared_type(declared)
        if mapped is not None:
            chosen[name] = (mapped, None)
        elif name in sticky:
            chosen[name] = (sticky[name], "type kept from the existing Postgres column")
        else:
            needs_inference.append(name)
    for name, (pgtype, note) in _infer_types(conn, table, needs_inference).items():
        chosen[name] = (pgtype, note or "chosen from the stored values (no usable declared type)")

    columns = tuple(
        Column(
            name=r[1],
            declared=r[2] or "",
            pgtype=chosen[r[1]][0],
            notnull=bool(r[3]),
            default_sql=r[4],
            type_note=chosen[r[1]][1],
        )
        for r in raw
    )
    names = [c.name for c in columns]
    uniques = _unique_indexes(conn, table)
    notnull = {c.name for c in columns if c.notnull}

    configured = source.keys.get(table)
    if configured:
        missing = [k for k in configured if k not in names]
        if missing:
            return Refusal(table, f"[sources.keys] names unknown column(s) {missing}")
        key, origin = tuple(configured), "configured"
    else:
        pk = sorted((r[5], r[1]) for r in raw if r[5])
        if pk:
            key, origin = tuple(n for _, n in pk), "primary key"
        else:
            candidates = [
                (idx, cols)
                for idx, partial, cols in uniques
                if not partial and all(c[0] >= 0 and c[1] in notnull for c in cols)
            ]
            if not candidates:
                return Refusal(
                    table,
                    "has no primary key and no unique index on NOT NULL columns; its rowid can change "
                    "on VACUUM, so rows cannot be tracked reliably. Add a key, or name key columns in "
                    f'[sources.keys] "{table}" = ["col", ...]',
                )
            idx, cols = candidates[0]
            key, origin = tuple(c[1] for c in cols), f"unique index {idx}"

    notes = []
    unique_sets = []
    for idx, _partial, cols in uniques:
        if any(c[0] < 0 for c in cols):
            if any(c[0] == -2 for c in cols):
                notes.append(
                    f"unique expression index {idx!r}: rows an INSERT OR REPLACE removes through it "
                    "are caught by the periodic verify, not by capture"
                )
            continue
        names_ = tuple(c[1] for c in cols)
        collations = tuple(c[2] or "BINARY" for c in cols)
        if set(names_) == set(key) and all(c.upper() == "BINARY" for c in collations):
            # A REPLACE through the key itself reuses the same key: the insert records it.
            # Under NOCASE or RTRIM it replaces a row whose key differs byte-wise: watch it.
            continue
        unique_sets.append(UniqueSet(names_, collations))

    return TableSpec(
        name=table,
        columns=columns,
        key=key,
        without_rowid=without_rowid,
        key_origin=origin,
        unique_sets=tuple(unique_sets),
        notes=tuple(notes),
    )


def introspect(
    conn: sqlite3.Connection,
    source: SourceSettings,
    sticky_types: Mapping[str, Mapping[str, PgType]] | None = None,
) -> SourceSchema:
    schema = SourceSchema()
    sticky_types = sticky_types or {}
    for name, kind, without_rowid in list_tables(conn):
        if is_internal(name) or not source.wants_table(name):
            continue
        if kind == "view":
            schema.skipped[name] = "view (not stored data)"
            continue
        if kind in ("virtual", "shadow"):
            schema.skipped[name] = f"{kind} table (not replicated; its content lives elsewhere)"
            continue
        if kind != "table":
            schema.skipped[name] = f"{kind} object"
            continue
        spec = describe_table(conn, name, without_rowid, source, sticky_types.get(name))
        if isinstance(spec, Refusal):
            schema.refused[name] = spec
        else:
            schema.tables[name] = spec
    return schema


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA main.schema_version").fetchone()[0]


def journal_mode(conn: sqlite3.Connection) -> str:
    # Reading the mode never changes it.
    return conn.execute("PRAGMA main.journal_mode").fetchone()[0].lower()
