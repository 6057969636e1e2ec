"""Apply the reverse stream's batches to the (frozen) SQLite file.

Runs on the SQLite worker thread. One short BEGIN IMMEDIATE transaction per batch,
through the freeze (freeze.syncd_writes), holding:

  * the rows: each key's current Postgres row upserted, or the key deleted; a value
    SQLite already holds as that very value is left as stored (values.keeps);
  * the reverse checkpoint, in `_syncd_meta`, so the file alone says what it holds;
  * the removal of the forward changelog entries these writes made (capture's
    triggers stay installed in the frozen file): a later rollback must not stream
    syncd's own copies back to Postgres.

The application's own triggers on a table are dropped for the length of the
transaction and created again before it commits: Postgres already holds what they
would produce (an audit row, a touched timestamp), and running them again would make
SQLite differ from it. They are created again in their old place, behind syncd's
capture triggers (which are made again after them): SQLite fires the newest first, and
an AFTER trigger ending in RAISE(IGNORE) that fired before capture would leave
capture untrusted, undoing the rollback at its final verification.

A table SQLite cannot take a batch for (a value with no exact SQLite form, a
constraint SQLite enforces and Postgres does not) is held: its part of the batch is
dropped and the table is marked, in the same transaction, to be copied again in full
once it fits (reload); the other tables go on.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from syncd.identifiers import quote_ident
from syncd.model import TableSpec
from syncd.printable import text_repr
from syncd.reverse import values
from syncd.reverse.checkpoint import META_KEY, RELOAD_KEY
from syncd.reverse.values import ColumnShape, NotExpressible
from syncd.sqlite import freeze
from syncd.sqlite.capture import CHANGELOG, META, _own_schema_change, write_transaction
from syncd.sqlite.connection import bound_value, fetchall_text_safe, no_such_table, not_utf8, surrogate_text
from syncd.sqlite.reader import rowid_name
from syncd.types import PgType, ValueMismatch, column_converter

LOOKUP_BATCH = 400  # keys per lookup statement (bound parameters stay well under SQLite's limit)


class SchemaMoved(Exception):
    """The file's schema changed since the tables were read: reconcile, then apply."""


class CheckpointMoved(SchemaMoved):
    """The file's checkpoint is not the one syncd last wrote or read there (an older
    copy of the file put back in its place): reconcile, which reads it again."""


class NeedKeys(Exception):
    """Rows outside the batch stand in the way (a unique value moved between rows in
    Postgres): their current Postgres rows are needed too. Nothing was written."""

    def __init__(self, tid: int, keys: list[tuple], why: str):
        super().__init__(why)
        self.tid, self.keys, self.why = tid, keys, why


@dataclass
class TableApply:
    tid: int
    spec: TableSpec
    shapes: tuple[ColumnShape, ...]  # one per spec column
    rows: list[tuple] = field(default_factory=list)  # Postgres rows, spec column order
    deletes: list[tuple] = field(default_factory=list)  # Postgres keys whose row is gone
    raw_deletes: list[tuple] = field(default_factory=list)  # stored SQLite keys no Postgres key can be


@dataclass
class ApplyPlan:
    tables: list[TableApply]
    checkpoint: str | None = None  # encoded ReverseCheckpoint to store; None: leave it
    expect: str | None = None  # the encoded checkpoint the file must hold now (with `checkpoint`)
    schema_version: int | None = None  # the version the specs were read at
    reload_add: dict[str, str] = field(default_factory=dict)  # table -> why it is copied again
    reload_done: list[str] = field(default_factory=list)


@dataclass
class ApplyOutcome:
    held: dict[int, str] = field(default_factory=dict)
    held_keys: dict[int, tuple] = field(default_factory=dict)  # tid -> the key of the row whose value does not fit
    written: int = 0  # rows inserted, updated or deleted
    kept: int = 0  # rows SQLite already held as Postgres does
    schema_version: int = 0


# --- reading what is stored -------------------------------------------------------------


def read_meta(conn: sqlite3.Connection, key: str) -> str | None:
    try:
        row = conn.execute(f"SELECT value FROM main.{quote_ident(META)} WHERE key = ?", (key,)).fetchone()
    except sqlite3.OperationalError as e:
        if not no_such_table(e):
            raise  # a busy file: its checkpoint is there, just not readable this moment
        return None
    return row[0] if row else None


def write_checkpoint(conn: sqlite3.Connection, checkpoint: str, busy_timeout_ms: int) -> None:
    """The way back's position alone, in a transaction of its own: the cutover's, that the
    file holds this cutover's position from the switch on (a copy of the file without one
    is older, pipeline._reconcile)."""
    write_transaction(conn, lambda c: _write_meta(c, META_KEY, checkpoint), busy_timeout_ms=busy_timeout_ms)


def read_reload(conn: sqlite3.Connection) -> dict[str, str]:
    text = read_meta(conn, RELOAD_KEY)
    return dict(json.loads(text)) if text else {}


def _key_shapes(t: TableApply) -> list[ColumnShape]:
    return [t.shapes[i] for i in t.spec.key_indexes]


def _key_value(shape: ColumnShape, v: Any) -> Any:
    """A real zero is one key whatever its sign, in SQLite and Postgres alike, and a REAL
    column of SQLite stores Postgres's -0.0 as 0.0."""
    return v + 0.0 if shape.family is PgType.DOUBLE and isinstance(v, float) else v


def _tokens_pg(shapes: list[ColumnShape], key: tuple) -> tuple:
    return tuple(values.pg_token(s.family, _key_value(s, v)) for s, v in zip(shapes, key))


def _tokens_sqlite(shapes: list[ColumnShape], raw: tuple) -> tuple:
    return tuple(values.sqlite_token(s.family, _key_value(s, v)) for s, v in zip(shapes, raw))


# One value, many stored spellings; and families a column without affinity may hold
# in several storage classes (integer 5 and text '5' are one text value to Postgres).
SPELLED = (PgType.TIMESTAMP, PgType.TIMESTAMPTZ, PgType.DATE, PgType.JSONB)
AMBIGUOUS = (PgType.TEXT, PgType.NUMERIC, PgType.JSON)


def simple_keys(spec: TableSpec, shapes: tuple[ColumnShape, ...]) -> bool:
    """Whether each key value has one stored form, so a lookup by the converted value
    finds the row (else a key index maps Postgres keys to the stored spellings)."""
    for i in spec.key_indexes:
        s = shapes[i]
        if s.family in SPELLED or (s.affinity == values.BLOB and s.family in AMBIGUOUS):
            return False
    return True


@dataclass
class _Found:
    handle: tuple  # ("rowid", n) or ("key", raw key values)
    row: tuple  # stored values, spec column order


class KeyIndex:
    """Postgres key tokens -> stored key of every row, for tables whose keys SQLite may
    spell in more than one way. Built by one scan, then kept current by the applier
    (syncd is the file's only writer while it is frozen); rebuilt when another
    connection wrote (data_version moved)."""

    def __init__(self) -> None:
        self.by_table: dict[str, dict[tuple, tuple]] = {}
        self.data_version: int | None = None

    def check(self, conn: sqlite3.Connection, own_writes: bool) -> None:
        dv = conn.execute("PRAGMA main.data_version").fetchone()[0]
        if self.data_version is not None and dv != self.data_version and not own_writes:
            self.by_table.clear()
        self.data_version = dv

    def get(self, conn: sqlite3.Connection, spec: TableSpec, shapes: list[ColumnShape]) -> dict[tuple, tuple]:
        idx = self.by_table.get(spec.name)
        if idx is None:
            cols = ", ".join(spec.sqlite_ref(k) for k in spec.key)
            idx = {}
            for raw in fetchall_text_safe(conn, f"SELECT {cols} FROM main.{quote_ident(spec.name)}"):
                idx[_tokens_sqlite(shapes, tuple(raw))] = tuple(raw)
            self.by_table[spec.name] = idx
        return idx

    def forget(self, name: str | None = None) -> None:
        if name is None:
            self.by_table.clear()
        else:
            self.by_table.pop(name, None)


def _handle_sql(spec: TableSpec) -> tuple[str, str]:
    """(how a row is selected, the WHERE that reaches one handle)."""
    rid = rowid_name(spec)
    if rid is not None:
        return rid, f"{rid} = ?"
    return ", ".join(spec.sqlite_ref(k) for k in spec.key), " AND ".join(f"{spec.key_sql(k)} = ?" for k in spec.key)


def find_existing(conn: sqlite3.Connection, t: TableApply, keys: list[tuple], index: KeyIndex) -> dict[tuple, _Found]:
    """Stored rows for Postgres keys, by their tokens."""
    spec = t.spec
    kshapes = _key_shapes(t)
    wanted = {_tokens_pg(kshapes, k): k for k in keys}
    raw_keys: list[tuple] = []
    if simple_keys(spec, t.shapes):
        for k in wanted.values():
            try:
                raw_keys.append(tuple(values.to_sqlite(s, v) for s, v in zip(kshapes, k)))
            except NotExpressible:
                continue  # no stored key can be this one
    else:
        idx = index.get(conn, spec, kshapes)
        raw_keys = [idx[tok] for tok in wanted if tok in idx]
    if not raw_keys:
        return {}
    select, _ = _handle_sql(spec)
    rid = rowid_name(spec)
    nh = 1 if rid is not None else len(spec.key)
    cols = ", ".join(spec.sqlite_ref(c) for c in spec.column_names)
    refs = [spec.sqlite_ref(k) for k in spec.key]
    target = refs[0] if len(refs) == 1 else "(" + ", ".join(refs) + ")"
    marks = "(" + ", ".join("?" * len(refs)) + ")" if len(refs) > 1 else "?"
    out: dict[tuple, _Found] = {}
    key_idx = spec.key_indexes
    for i in range(0, len(raw_keys), LOOKUP_BATCH):
        chunk = raw_keys[i:i + LOOKUP_BATCH]
        if len(refs) == 1:
            where = f"{target} IN ({', '.join('?' * len(chunk))})"
        else:
            where = f"{target} IN (VALUES {', '.join([marks] * len(chunk))})"
        sql = f"SELECT {select}, {cols} FROM main.{quote_ident(spec.name)} WHERE {where}"
        for r in fetchall_text_safe(conn, sql, [v for k in chunk for v in k]):
            row = tuple(r[nh:])
            tok = _tokens_sqlite(kshapes, tuple(row[j] for j in key_idx))
            if tok in wanted:  # a NOCASE or affinity match of another spelling is not this key
                kind = "rowid" if rid is not None else "key"
                out[tok] = _Found((kind, *r[:nh]), row)
    return out


# --- writing ----------------------------------------------------------------------------


# How a held table's reason ends: the way back copies it again once the row fits (a
# daemon running the source retries it; with none running, nothing does: rollback.py).
ONCE_IT_FITS = "(the table is copied again once it fits)"


class _Held(Exception):
    def __init__(self, reason: str, key: tuple | None = None):
        super().__init__(reason)
        self.key = key  # the Postgres key of the row whose value does not fit, when one does not


def _app_triggers(conn: sqlite3.Connection, table: str) -> list[tuple[str, str]]:
    """The table's triggers from its first application trigger on, in the order SQLite
    keeps them (it fires the newest first): the application's, and syncd's made after
    them (capture's, which the forward daemon keeps newest so that they fire first, and
    the freeze's). Empty when the application has none. SQLite keeps a trigger's table
    as its CREATE TRIGGER spelled it ("ON Deals" for deals): matched as SQLite matches names."""
    old = conn.text_factory
    conn.text_factory = surrogate_text  # a trigger's text is whatever bytes the application gave it
    try:
        rows = conn.execute("SELECT name, sql FROM main.sqlite_master WHERE type = 'trigger' "
                            "AND tbl_name = ? COLLATE NOCASE ORDER BY rowid", (table,)).fetchall()
    finally:
        conn.text_factory = old
    first = next((i for i, (name, _) in enumerate(rows) if not freeze.is_syncd_trigger(name)), len(rows))
    return rows[first:]


def _not_made_again(table: str, triggers: list[tuple[str, str]]) -> str | None:
    """Why the table is held when one of the application's `triggers` is text that is not
    UTF-8: it could be set aside while Postgres's rows are written, but not made again
    (a statement syncd runs is UTF-8), so the table waits with its trigger in place."""
    name = next((n for n, sql in triggers if not freeze.is_syncd_trigger(n) and (not_utf8(sql) or not_utf8(n))),
                None)
    if name is None:
        return None
    return (f'table "{table}": the application\'s trigger {text_repr(name)} on it is text that is not valid UTF-8: '
            "syncd sets the application's triggers aside while it writes Postgres's rows (their effects are in "
            "Postgres already) and cannot make this one again; give it a definition in valid UTF-8 (the table is "
            "copied again once it has one)")


def _lift(c: sqlite3.Connection, triggers: list[tuple[str, str]]) -> None:
    """Drop the application's triggers among `triggers` (syncd's stay and fire)."""
    for name, _ in triggers:
        if not freeze.is_syncd_trigger(name):
            c.execute(f"DROP TRIGGER main.{quote_ident(name)}")


def _restore(c: sqlite3.Connection, triggers: list[tuple[str, str]]) -> None:
    """Create `triggers` again in their order: syncd's among them are dropped first, so
    that each keeps its place relative to the application's (capture fires first)."""
    for name, _ in triggers:
        if freeze.is_syncd_trigger(name):
            c.execute(f"DROP TRIGGER main.{quote_ident(name)}")
    for _, sql in triggers:
        c.execute(sql)


def _unique_sets(conn: sqlite3.Connection, table: str) -> list[list[str]]:
    """Column lists of every unique index (the primary key's included)."""
    out = []
    for _seq, name, unique, _origin, _partial in conn.execute(f"PRAGMA main.index_list({quote_ident(table)})"):
        if not unique:
            continue
        cols = [r[2] for r in conn.execute(f"PRAGMA main.index_xinfo({quote_ident(name)})") if r[5]]
        if all(c is not None for c in cols):
            out.append(cols)
    return out


class TableWriter:
    """Statements for one table, on the applier's connection."""

    def __init__(self, conn: sqlite3.Connection, t: TableApply, index: KeyIndex):
        self.conn = conn
        self.t = t
        self.spec = t.spec
        self.index = index
        self.table = f"main.{quote_ident(t.spec.name)}"
        spec = t.spec
        # INSERT names every column, the rowid alias of a keyless table included, but a
        # generated one: SQLite computes it (and refuses a value for it).
        self.generated = {i for i, c in enumerate(spec.columns) if c.generated}
        self.insert_cols = [spec.sqlite_ref(c) for c in spec.column_names]
        self.writable = [i for i in range(len(self.insert_cols)) if i not in self.generated]
        cols = [self.insert_cols[i] for i in self.writable]
        # OR ABORT overrides a constraint's own ON CONFLICT REPLACE (or IGNORE): SQLite would
        # otherwise delete, without a word, a row holding a value a batch row takes, which
        # Postgres keeps; a conflict raises, and apply's swap and NeedKeys settle it.
        self.insert_sql = (f"INSERT OR ABORT INTO {self.table} ({', '.join(cols)}) "
                           f"VALUES ({', '.join('?' * len(cols))})")
        _select, self.handle_where = _handle_sql(spec)
        self.kshapes = _key_shapes(t)
        self.indexed = not simple_keys(spec, t.shapes)
        self.written = self.kept = 0
        self.last: list[Any] | None = None  # the row last inserted or updated: the one a refusal is about
        # The converters of the columns whose spelling schema parity recorded: a stored value
        # not in it is written again (_spelled).
        self.spellings = {i: column_converter(shape.family, shape.fmt, shape.affinity)
                          for i, shape in enumerate(t.shapes) if shape.recorded}

    def convert(self, pg_row: tuple, existing: _Found | None) -> tuple[list[Any], list[int]]:
        """The SQLite values for a Postgres row, and which columns change."""
        out, changed = [], []
        for i, (shape, v) in enumerate(zip(self.t.shapes, pg_row)):
            if i in self.generated:  # SQLite's own value: never written
                out.append(existing.row[i] if existing is not None else None)
                continue
            if existing is not None and values.keeps(shape, existing.row[i], v) and self._spelled(i, existing.row[i]):
                out.append(existing.row[i])
                continue
            try:
                out.append(values.to_sqlite(shape, v))
            except NotExpressible as e:
                key = tuple(pg_row[j] for j in self.spec.key_indexes)
                raise _Held(f'table "{self.spec.name}" key {_show(key)} column "{shape.name}": {e}; '
                            f"fix the value in Postgres {ONCE_IT_FITS}", key) from None
            changed.append(i)
        return out, changed

    def _spelled(self, i: int, stored: Any) -> bool:
        """Whether column i's stored value is in the spelling schema parity recorded for the
        column, as `syncd verify` requires (types.column_converter): the same instant spelled
        otherwise (written behind syncd's back) is written again, not kept."""
        conv = self.spellings.get(i)
        if conv is None or stored is None:
            return True
        try:
            conv(stored)
        except ValueMismatch:
            return False
        return True

    def delete(self, found: _Found) -> None:
        self.conn.execute(f"DELETE FROM {self.table} WHERE {self.handle_where}", found.handle[1:])
        self._forget(found.row)
        self.written += 1

    def update(self, found: _Found, new: list[Any], changed: list[int]) -> None:
        self.last = new
        names = [self.insert_cols[i] for i in changed]
        sets = ", ".join(f"{n} = ?" for n in names)
        self.conn.execute(f"UPDATE OR ABORT {self.table} SET {sets} WHERE {self.handle_where}",
                          (*(new[i] for i in changed), *found.handle[1:]))
        if any(i in self.spec.key_indexes for i in changed):
            self._forget(found.row)
            self._remember(new)
        self.written += 1

    def insert(self, new: list[Any]) -> None:
        self.last = new
        self.conn.execute(self.insert_sql, [new[i] for i in self.writable])
        self._remember(new)
        self.written += 1

    def _remember(self, row: list[Any] | tuple) -> None:
        if self.indexed and self.spec.name in self.index.by_table:
            raw = tuple(row[i] for i in self.spec.key_indexes)
            self.index.by_table[self.spec.name][_tokens_sqlite(self.kshapes, raw)] = raw

    def _forget(self, row: tuple) -> None:
        if self.indexed and self.spec.name in self.index.by_table:
            raw = tuple(row[i] for i in self.spec.key_indexes)
            self.index.by_table[self.spec.name].pop(_tokens_sqlite(self.kshapes, raw), None)

    def apply(self, swap: bool) -> None:
        """Deletes, then upserts. With `swap`, every batch row that exists is deleted
        first and inserted again: unique values moving between the batch's rows (a
        swap in one Postgres transaction) then never meet half way."""
        t = self.t
        existing = find_existing(self.conn, t, [tuple(r[i] for i in self.spec.key_indexes) for r in t.rows]
                                 + list(t.deletes), self.index)
        # A key gone in one spelling and present in another that is the same value to
        # SQLite (numeric 7 deleted, 7.0 inserted) is one row: upserted, never deleted.
        present = {_tokens_pg(self.kshapes, tuple(r[i] for i in self.spec.key_indexes)) for r in t.rows} \
            if t.deletes else set()
        for key in t.deletes:
            tok = _tokens_pg(self.kshapes, key)
            found = existing.get(tok) if tok not in present else None
            if found is not None:
                self.delete(found)
        for raw in t.raw_deletes:
            bound = [bound_value(v) for v in raw]
            where = " AND ".join(f"{self.spec.sqlite_ref(k)} = {mark}" for k, (mark, _) in zip(self.spec.key, bound))
            self.written += self.conn.execute(f"DELETE FROM {self.table} WHERE {where}",
                                              [param for _, param in bound]).rowcount
            self.index.forget(self.spec.name)
        plans = []
        for pg_row in t.rows:
            tok = _tokens_pg(self.kshapes, tuple(pg_row[i] for i in self.spec.key_indexes))
            found = existing.get(tok)
            new, changed = self.convert(pg_row, found)
            plans.append((found, new, changed))
        if swap:
            for found, new, changed in plans:
                if found is not None and changed:
                    self.delete(found)
            for found, new, changed in plans:
                if found is None or changed:
                    self.insert(new)
                else:
                    self.kept += 1
            return
        for found, new, changed in plans:
            if found is None:
                self.insert(new)
            elif changed:
                self.update(found, new, changed)
            else:
                self.kept += 1

    def blockers(self) -> list[tuple]:
        """Rows outside the batch holding a unique value a batch row needs: their
        stored keys (found after a swap-mode apply failed)."""
        spec, t = self.spec, self.t
        batch = {_tokens_pg(self.kshapes, tuple(r[i] for i in spec.key_indexes)) for r in t.rows}
        out: dict[tuple, tuple] = {}
        names = spec.column_names
        for cols in _unique_sets(self.conn, spec.name):
            if not all(c in names for c in cols):
                continue
            idx = [names.index(c) for c in cols]
            where = " AND ".join(f"{quote_ident(c)} = ?" for c in cols)
            keys = ", ".join(spec.sqlite_ref(k) for k in spec.key)
            for pg_row in t.rows:
                try:
                    vals, _ = self.convert(pg_row, None)
                except _Held:
                    continue
                probe = [vals[i] for i in idx]
                if any(v is None for v in probe):
                    continue
                for raw in fetchall_text_safe(self.conn, f"SELECT {keys} FROM {self.table} WHERE {where}", probe):
                    tok = _tokens_sqlite(self.kshapes, tuple(raw))
                    if tok not in batch:
                        out[tok] = tuple(raw)
        return list(out.values())


def _show(key: tuple) -> str:
    from syncd.sqlite.audit import format_key
    return format_key(key)


def _apply_table(conn: sqlite3.Connection, t: TableApply, index: KeyIndex) -> tuple[int, int]:
    """Apply one table inside a savepoint. Returns (written, kept). Raises _Held (the
    table's part is rolled back) or NeedKeys."""
    conn.execute("SAVEPOINT syncd_table")
    try:
        w = TableWriter(conn, t, index)
        try:
            w.apply(swap=False)
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK TO syncd_table")
            index.forget(t.spec.name)
            w = TableWriter(conn, t, index)
            try:
                w.apply(swap=True)
            except sqlite3.IntegrityError as e:
                conn.execute("ROLLBACK TO syncd_table")
                index.forget(t.spec.name)
                row = "a row" if w.last is None else \
                    f"the row of key {_show(tuple(w.last[i] for i in t.spec.key_indexes))}"
                if "UNIQUE" not in str(e).upper():
                    raise _Held(f'table "{t.spec.name}": SQLite refuses {row} Postgres holds ({e}); make the '
                                f"row valid for SQLite in Postgres, or relax the SQLite constraint {ONCE_IT_FITS}") from None
                blockers = TableWriter(conn, t, index).blockers()
                if blockers:
                    raise NeedKeys(t.tid, blockers, str(e)) from None
                raise _Held(f'table "{t.spec.name}": SQLite refuses {row} Postgres holds ({e}): Postgres holds '
                            "rows a unique index of SQLite forbids (it lacks that constraint); fix the rows in "
                            f"Postgres {ONCE_IT_FITS}") from None
        conn.execute("RELEASE syncd_table")
        return w.written, w.kept
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK TO syncd_table")
            conn.execute("RELEASE syncd_table")
        raise


def reload_key_token(shapes: list[ColumnShape], key: tuple, pg: bool) -> tuple:
    """A key's tokens as a reload tells keys apart (`pg`: as Postgres returned it, else as
    stored in SQLite)."""
    return _tokens_pg(shapes, key) if pg else _tokens_sqlite(shapes, key)


def keys_not_in(conn: sqlite3.Connection, spec: TableSpec, shapes: tuple[ColumnShape, ...],
                keep: set[tuple]) -> list[tuple]:
    """Stored keys whose tokens (reload_key_token) are not in `keep` (a reload's last step)."""
    kshapes = [shapes[i] for i in spec.key_indexes]
    keys = ", ".join(spec.sqlite_ref(k) for k in spec.key)
    out = []
    for raw in fetchall_text_safe(conn, f"SELECT {keys} FROM main.{quote_ident(spec.name)}"):
        if reload_key_token(kshapes, tuple(raw), pg=False) not in keep:
            out.append(tuple(raw))
    return out


class SqliteSink:
    """The reverse stream's writer for one file; lives on that file's worker thread."""

    def __init__(self, busy_timeout_ms: int):
        self.busy_timeout_ms = busy_timeout_ms
        self.index = KeyIndex()

    def apply(self, conn: sqlite3.Connection, plan: ApplyPlan) -> ApplyOutcome:
        return write_transaction(conn, lambda c: self._apply(c, plan), busy_timeout_ms=self.busy_timeout_ms)

    def _apply(self, conn: sqlite3.Connection, plan: ApplyPlan) -> ApplyOutcome:
        version = conn.execute("PRAGMA main.schema_version").fetchone()[0]
        if plan.schema_version is not None and version != plan.schema_version:
            raise SchemaMoved(f"the SQLite schema moved (version {version}, expected {plan.schema_version})")
        if plan.checkpoint is not None and read_meta(conn, META_KEY) != plan.expect:
            raise CheckpointMoved("the way back's checkpoint in the SQLite file is not the one syncd last wrote")
        self.index.check(conn, own_writes=False)
        out = ApplyOutcome()
        begin_max = _changelog_max(conn)
        reload = read_reload(conn)
        with freeze.syncd_writes(conn):
            for t in plan.tables:
                if not t.rows and not t.deletes and not t.raw_deletes:
                    continue
                triggers = _app_triggers(conn, t.spec.name)
                unmade = _not_made_again(t.spec.name, triggers)
                if unmade is not None:
                    out.held[t.tid] = reload[t.spec.name] = unmade
                    continue
                if triggers:
                    _own_schema_change(conn, lambda c: _lift(c, triggers))
                try:
                    written, kept = _apply_table(conn, t, self.index)
                    out.written += written
                    out.kept += kept
                except _Held as e:
                    out.held[t.tid] = str(e)
                    if e.key is not None:
                        out.held_keys[t.tid] = e.key
                    reload[t.spec.name] = str(e)
                finally:
                    if triggers:
                        _own_schema_change(conn, lambda c: _restore(c, triggers))
            for name, why in plan.reload_add.items():
                reload[name] = why
            for name in plan.reload_done:
                if not any(t.spec.name == name for t in plan.tables if t.tid in out.held):
                    reload.pop(name, None)
            _write_meta(conn, RELOAD_KEY, json.dumps(sorted(reload.items())) if reload else None)
            if plan.checkpoint is not None:
                _write_meta(conn, META_KEY, plan.checkpoint)
        if begin_max is not None:
            conn.execute(f"DELETE FROM main.{quote_ident(CHANGELOG)} WHERE seq > ?", (begin_max,))
        out.schema_version = conn.execute("PRAGMA main.schema_version").fetchone()[0]
        self.index.check(conn, own_writes=True)
        return out

    def mark(self, conn: sqlite3.Connection, add: dict[str, str], done: list[str]) -> dict[str, str]:
        """Change the reload set alone (a table paused, a reload finished)."""
        def change(c: sqlite3.Connection) -> dict[str, str]:
            reload = read_reload(c)
            reload.update(add)
            for name in done:
                reload.pop(name, None)
            _write_meta(c, RELOAD_KEY, json.dumps(sorted(reload.items())) if reload else None)
            return reload

        return write_transaction(conn, change, busy_timeout_ms=self.busy_timeout_ms)


def _changelog_max(conn: sqlite3.Connection) -> int | None:
    try:
        return conn.execute(f"SELECT coalesce(max(seq), 0) FROM main.{quote_ident(CHANGELOG)}").fetchone()[0]
    except sqlite3.OperationalError as e:
        if not no_such_table(e):
            raise
        return None


def _write_meta(conn: sqlite3.Connection, key: str, value: str | None) -> None:
    if value is None:
        conn.execute(f"DELETE FROM main.{quote_ident(META)} WHERE key = ?", (key,))
    else:
        conn.execute(f"INSERT OR REPLACE INTO main.{quote_ident(META)}(key, value) VALUES (?, ?)", (key, value))


def run_on(sink: SqliteSink, method: str) -> Callable:
    """A function for SqliteWorker.run that calls one of the sink's methods."""
    return lambda conn, *args: getattr(sink, method)(conn, *args)
