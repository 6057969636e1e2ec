"""Audit stored values before loading: report every column whose values do not fit
its Postgres type, instead of failing halfway through a load."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from syncd.identifiers import quote_ident
from syncd.model import TableSpec
from syncd.printable import text_repr
from syncd.sqlite import windows
from syncd.sqlite.connection import SourceFileError, no_such_table, open_connection, surrogate_text
from syncd.sqlite.reader import rowid_key_name
from syncd.types import PgType, ValueMismatch, audit_prefilter, converter_of, needs_conversion_filter

SAMPLE_KEYS = 5
NULL_KEY = "a primary key"  # Misfit.pgtype of the rows whose key holds a NULL


@dataclass
class Misfit:
    column: str
    pgtype: str
    count: int = 0
    sample_keys: list[tuple] = field(default_factory=list)
    example: str = ""
    rowid: str | None = "rowid"  # a name reaching the table's rowid, to key it on; None: WITHOUT ROWID, or shadowed

    def describe(self, table: str) -> str:
        keys = ", ".join(format_key(k) for k in self.sample_keys)
        if self.pgtype == NULL_KEY:
            return (f'table "{table}": {self.count} row(s) with a NULL in the key ({self.column}), which Postgres '
                    "cannot store: give those rows a key value in SQLite"
                    + ("" if not self.rowid else ", or key the table on its rowid (as a table without a key) with "
                       f'[sources.keys] "{table}" = ["{self.rowid}"]'))
        return (
            f'table "{table}" column "{self.column}": {self.count} value(s) do not fit {self.pgtype} '
            f"(e.g. {self.example}; keys: {keys}); fix the rows or set "
            f'[sources.columns."{table}"] "{self.column}" = "<type>"'
        )


def format_key(key: tuple) -> str:
    parts = []
    for v in key:
        if isinstance(v, bytes):
            parts.append(f"x'{v.hex()}'")
        elif isinstance(v, (dt.date, dt.datetime)):  # a typed key read from Postgres: as Postgres shows it
            parts.append(repr(str(v)))
        elif isinstance(v, Decimal):
            parts.append(str(v))
        elif isinstance(v, str):
            parts.append(text_repr(v))
        else:
            parts.append(repr(v))
    return parts[0] if len(parts) == 1 else "(" + ", ".join(parts) + ")"


def audit_table(conn: sqlite3.Connection, spec: TableSpec, inode: tuple[int, int] | None = None) -> list[Misfit]:
    """Scan the table once and return the misfits, worst first. Call outside any
    transaction: each window is a short statement of its own. `inode` is the file
    `conn` was opened on (device, inode): with it, a large table is read on a second
    connection too, while the file at that path is still that one."""
    return audit_scan(conn, spec, inode)[0]


def misfits_text(table: str, misfits: list[Misfit]) -> str:
    """The misfits of a table as its hold reason says them (the first three columns)."""
    text = "; ".join(m.describe(table) for m in misfits[:3])
    return text + (f"; and {len(misfits) - 3} more column(s)" if len(misfits) > 3 else "")


@dataclass(frozen=True)
class ScanConditions:
    """What the audit's scan selects (SQLite boolean expressions): `candidates`, every
    row holding a value that might not fit its column's type (types.audit_prefilter) or
    a NULL in its key; `unconverted`, every row holding a value not sent as stored
    (types.needs_conversion_filter) or a NULL key, None where a column's type converts
    every value. Every type with that filter has its candidates among the values it
    selects, so `unconverted` selects every candidate too."""

    candidates: str
    unconverted: str | None


def scan_conditions(spec: TableSpec) -> ScanConditions:
    """The audit's conditions for `spec`, leaving out the rowid carried as bigint: SQLite
    keeps it a 64-bit integer, never NULL, so it can neither misfit nor need converting
    (an INTEGER PRIMARY KEY, read on every row, was a fifth of a five-column table's)."""
    candidates, unconverted = [], []
    for col in spec.columns:
        ref = spec.sqlite_ref(col.name)
        if _is_rowid(spec, col.name) and col.pgtype is PgType.BIGINT and col.sqlite_format is None:
            continue
        # A column typed in a spelling (Column.sqlite_format) checks every value.
        pf = audit_prefilter(col.pgtype, ref) if col.sqlite_format is None else None
        candidates.append(pf if pf is not None else f"{ref} IS NOT NULL")
        unconverted.append(needs_conversion_filter(col.pgtype, ref))
    null_keys = [f"{spec.sqlite_ref(k)} IS NULL" for k in spec.key if not _is_rowid(spec, k)]

    def either(conds: list[str]) -> str:
        return " OR ".join(f"({c})" for c in conds) or "0"

    return ScanConditions(either(candidates + null_keys),
                          None if None in unconverted else either([c for c in unconverted if c] + null_keys))


def _is_rowid(spec: TableSpec, name: str) -> bool:
    """Column `name` is the table's rowid: its INTEGER PRIMARY KEY, or syncd's rowid
    column of a keyless table."""
    return spec.column(name).sqlite_expr is not None or (spec.rowid_alias and spec.key == (name,))


def audit_scan(conn: sqlite3.Connection, spec: TableSpec,
               inode: tuple[int, int] | None = None) -> tuple[list[Misfit], bool]:
    """audit_table(), and whether the scan saw only values already sent as they are
    stored (`plain`: each of its column's storage class or NULL, no NUL in a text; see
    types.needs_conversion_filter). While no such value has shown up, each window also
    selects the rows that need conversion (in SQLite, without the GIL); the first one
    found settles it, and the windows after it select misfit candidates only. The
    candidates are a subset of those rows for every type that has the filter, so a
    plain table's scan returns no row at all."""
    nkey = len(spec.key)
    key_cols = [spec.sqlite_ref(k) for k in spec.key]
    cols = ", ".join(spec.sqlite_ref(c.name) for c in spec.columns)
    convs = [converter_of(c) for c in spec.columns]
    misfits: dict[str, Misfit] = {}
    order = windows.table_ordering(spec)
    old_factory = conn.text_factory
    conn.text_factory = surrogate_text
    # Window by window, each its own statement, converting only once a window is read:
    # the read lock is never held while Python works (rollback-journal writers wait on it).
    # A large table's windows are read two at a time, on two connections.
    select, conditions = f"{', '.join(key_cols)}, {cols}", scan_conditions(spec)
    plain = conditions.unconverted is not None

    def where() -> str:
        return conditions.unconverted if plain and conditions.unconverted is not None else conditions.candidates

    helper: sqlite3.Connection | None = None
    scanned = None
    try:
        helper = _helper_connection(conn, spec, inode)
        scanned = (windows.scan(conn, spec.name, order, select, where) if helper is None
                   else windows.scan_two(conn, helper, spec.name, order, select, where))
        for row in (row for rows in scanned for row in rows):
            plain = False
            key = row[:nkey]
            values = row[nkey:]
            if any(v is None for v in key):
                m = misfits.setdefault("\x00key", Misfit(", ".join(spec.key), NULL_KEY,
                                                                rowid=rowid_key_name(spec)))
                m.count += 1
                m.example = "NULL key"
                if len(m.sample_keys) < SAMPLE_KEYS:
                    m.sample_keys.append(("rows with NULL key",))
                continue
            for i, col in enumerate(spec.columns):
                try:
                    convs[i](values[i])
                except ValueMismatch as e:
                    m = misfits.setdefault(col.name, Misfit(col.name, col.pgtype.value))
                    m.count += 1
                    if not m.example:
                        m.example = str(e)
                    if len(m.sample_keys) < SAMPLE_KEYS:
                        m.sample_keys.append(key)
    finally:
        conn.text_factory = old_factory
        try:
            if scanned is not None:
                scanned.close()  # waits for a window the helper is still reading
        finally:
            if helper is not None:
                helper.close()
    return sorted(misfits.values(), key=lambda m: -m.count), plain


# A table with more rows than this is audited on two connections at once.
TWO_CONNECTIONS_ROWS = 100_000


def _helper_connection(conn: sqlite3.Connection, spec: TableSpec,
                       inode: tuple[int, int] | None) -> sqlite3.Connection | None:
    """A second connection to `conn`'s file for a table large enough to be worth it;
    None for a small table (a fleet's files stay at one connection each), or when the
    file at `conn`'s path is not (or no longer) the `inode` it was opened on."""
    if inode is None:
        return None
    table = f"main.{quote_ident(spec.name)}"
    if conn.execute(f"SELECT 1 FROM {table} LIMIT 1 OFFSET ?", (TWO_CONNECTIONS_ROWS,)).fetchone() is None:
        return None
    path = next((r[2] for r in conn.execute("PRAGMA database_list") if r[1] == "main"), "")
    if not path:
        return None
    timeout_ms = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    try:
        helper = open_connection(Path(path), timeout_ms)
    except (sqlite3.Error, SourceFileError):
        return None  # the audit reads on one connection, as for a small table
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is None or (st.st_dev, st.st_ino) != inode:  # replaced since: the helper would read another file
        helper.close()
        return None
    helper.text_factory = surrogate_text
    return helper


# --- an audit already done ---------------------------------------------------------
#
# `syncd init` audits every table it is about to load; the daemon, started right after,
# would scan the same rows again. A passed audit is noted in the file's own bookkeeping
# (META), with what it was done against, and trusted only while that still holds: the
# same schema version, the same column types, and no captured change to the table since
# (every change is in the changelog, and nothing after the noted position was pruned).


def _audit_key(tid: int) -> str:
    return f"audited_{tid}"


def _types_mark(spec: TableSpec) -> str:
    return json.dumps([spec.name, list(spec.key), [[c.name, c.pgtype.value] for c in spec.columns]])


def audit_position(conn: sqlite3.Connection) -> tuple[int, int]:
    """(schema version, changelog max seq) to note with an audit about to start."""
    from syncd.sqlite import capture

    version = conn.execute("PRAGMA main.schema_version").fetchone()[0]
    seq = conn.execute(f"SELECT coalesce(max(seq), 0) FROM main.{quote_ident(capture.CHANGELOG)}").fetchone()[0]
    return version, seq


def passed_note(spec: TableSpec, position: tuple[int, int], plain: bool) -> dict:
    """What a passed audit is noted as: where it started (schema version, changelog
    position), the column types it checked against, and whether every value was
    already sent as stored (audit_scan's `plain`)."""
    return {"schema": position[0], "seq": position[1], "types": _types_mark(spec), "plain": plain}


def note_audit_passed(conn: sqlite3.Connection, tid: int, spec: TableSpec, position: tuple[int, int],
                      busy_timeout_ms: int, plain: bool = False) -> None:
    from syncd.sqlite import capture

    value = json.dumps(passed_note(spec, position, plain))
    capture.write_transaction(
        conn, lambda c: c.execute(f"INSERT OR REPLACE INTO main.{quote_ident(capture.META)}(key, value) VALUES (?, ?)",
                                  (_audit_key(tid), value)), busy_timeout_ms=busy_timeout_ms)


def audit_still_holds(conn: sqlite3.Connection, tid: int, spec: TableSpec) -> dict | None:
    """The note of a passed audit of table `tid` ({"schema", "seq", "types", "plain"}), if
    one was noted and nothing it depends on moved; else None."""
    from syncd.sqlite import capture

    meta = quote_ident(capture.META)
    conn.execute("BEGIN")
    try:
        row = conn.execute(f"SELECT value FROM main.{meta} WHERE key = ?", (_audit_key(tid),)).fetchone()
        if row is None:
            return None
        noted = json.loads(row[0])
        return noted if unchanged_since(conn, tid, spec, noted) else None
    except sqlite3.OperationalError as e:
        if not no_such_table(e):
            raise  # a busy file: the note is there, just not readable this moment
        return None  # no bookkeeping yet: audit
    except (ValueError, KeyError, TypeError):
        return None  # a note this version cannot read: audit again
    finally:
        conn.execute("COMMIT")


def unchanged_since(conn: sqlite3.Connection, tid: int, spec: TableSpec, note: dict) -> bool:
    """Whether table `tid` holds, as `conn` reads it now, exactly the rows it held when
    the audit `note` (passed_note) was taken: the same schema version and column types,
    and no change to the table captured after its position (nothing after it pruned
    either, so none can be missing). Call inside the read transaction the answer is about."""
    from syncd.sqlite import capture

    meta, cl = quote_ident(capture.META), quote_ident(capture.CHANGELOG)
    seq = note["seq"]
    pruned = conn.execute(f"SELECT value FROM main.{meta} WHERE key = 'pruned_seq'").fetchone()
    if (note["schema"] != conn.execute("PRAGMA main.schema_version").fetchone()[0]
            or note.get("types") != _types_mark(spec) or (pruned is not None and int(pruned[0]) > seq)):
        return False
    return conn.execute(f"SELECT 1 FROM main.{cl} WHERE seq > ? AND tid = ? LIMIT 1", (seq, tid)).fetchone() is None
