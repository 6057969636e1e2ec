"""What `syncd verify` reads from (and, repairing, writes to) a SQLite file.

Every function runs on the verify connection's own thread in short read
transactions: at most one chunk of rows (`[verify] chunk_rows`) each, and in
rollback-journal mode, where a reader holds the application's commits back, never
much longer than sqlite/hold.py's HOLD_SECONDS (heavy rows make a chunk's read
long). A key's row is read together with the changelog entries that name it, in one
transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from syncd.identifiers import quote_ident
from syncd.model import TableSpec, unshadowed_rowid_name
from syncd.sqlite import capture, reader
from syncd.sqlite.capture import CHANGELOG, slot
from syncd.sqlite.connection import bound_value, fetchall_text_safe
from syncd.sqlite.hold import HOLD_SECONDS
from syncd.verify.keyspace import Bound, KeyRange, KeySpace, cell_case, quoted_sqlite_table
from syncd.verify.rowhash import SqliteRowHash

CL = f"main.{quote_ident(CHANGELOG)}"
LOOKUP_BATCH = 500  # keys per lookup statement
MAX_CHANGED_KEYS = 200_000  # beyond this, every candidate counts as changed (in flight)
MAX_VIEW_ENTRIES = 500_000  # changelog entries past the checkpoint a view reads; beyond, as above


@contextmanager
def read_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction; ended with ROLLBACK, which for a reader only drops its
    lock and cannot fail on a busy file the way COMMIT can."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


class ReadHold:
    """read_transaction() for work done in parts: in rollback-journal mode `due()` says
    when the transaction has held the file HOLD_SECONDS, and `renew()` ends it and
    begins the next, so a writer waiting meanwhile gets its turn. In WAL mode, where a
    reader holds no writer back, nothing is ever due."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.wal = conn.execute("PRAGMA main.journal_mode").fetchone()[0].lower() == "wal"
        self.began = 0.0

    def __enter__(self) -> "ReadHold":
        self.conn.execute("BEGIN")
        self.began = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def due(self) -> bool:
        return not self.wal and time.monotonic() - self.began > HOLD_SECONDS

    def renew(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.execute("BEGIN")
        self.began = time.monotonic()


# What a statement calling the row hash functions raises when SQLite hands them text
# that is not UTF-8: Python decodes a function's arguments strictly, and says so either
# as the decoding error or as SQLite's error for the function that failed.
HASH_FAILED = (UnicodeDecodeError, sqlite3.OperationalError)


def _not_decoded(e: Exception) -> None:
    """Raise `e` again unless it is the row hash functions' failure on undecodable text."""
    if isinstance(e, sqlite3.OperationalError) and not str(e).startswith("user-defined "):
        raise e


def bound_key(raw: Sequence[Any], binary: Sequence[bool] = ()) -> tuple[str, list[Any]]:
    """Placeholders and parameters for a raw key, as ks.sqlite_marks() lays them out
    (bound_value for each value; COLLATE BINARY where `binary`, ks.sqlite_binary, says)."""
    marks, params = [], []
    for i, v in enumerate(raw):
        mark, param = bound_value(v)
        marks.append(mark + (" COLLATE BINARY" if i < len(binary) and binary[i] else ""))
        params.append(param)
    return (marks[0] if len(marks) == 1 else "(" + ", ".join(marks) + ")"), params


def count_rows(conn: sqlite3.Connection, spec: TableSpec) -> int:
    return reader.count_rows(conn, spec.name)  # a window at a time in rollback-journal mode


def null_key_rows(conn: sqlite3.Connection, spec: TableSpec) -> int:
    """Rows whose key has a NULL: Postgres cannot hold them (the stream holds the table)."""
    cond = " OR ".join(f"{spec.sqlite_ref(k)} IS NULL" for k in spec.key)
    return conn.execute(f"SELECT count(*) FROM {quoted_sqlite_table(spec)} WHERE {cond}").fetchone()[0]


def sample(conn: sqlite3.Connection, ks: KeySpace, r: KeyRange, limit: int | None, step: int) -> list[tuple[int, tuple]]:
    """(position, key) of the rows at positions step+1, 2*step+1, ... (1-based, in key
    order) among the first `limit` + 1 rows of range `r`."""
    # The subqueries' columns get names of their own: a rowid alias is no column name there.
    aliases = [f"_syncd_k{i}" for i in range(len(ks.key))]
    keys = ", ".join(aliases)
    named = ", ".join(f"{ref} AS {a}" for ref, a in zip(ks.sqlite_refs(), aliases))
    where, params = ks.sqlite_where(r)
    lim = "LIMIT ?" if limit is not None else ""
    if limit is not None:
        params.append(limit + 1)
    sql = (
        f"SELECT _syncd_rn, {keys} FROM ("
        f"SELECT {keys}, row_number() OVER (ORDER BY {ks.sqlite_order(aliases)}) AS _syncd_rn FROM ("
        f"SELECT {named} FROM {quoted_sqlite_table(ks.spec)} WHERE {where} ORDER BY {ks.sqlite_order()} {lim})"
        f") WHERE _syncd_rn > 1 AND (_syncd_rn - 1) % ? = 0 ORDER BY _syncd_rn"
    )
    return [(row[0], tuple(row[1:])) for row in fetchall_text_safe(conn, sql, (*params, step))]


MISFIT_STEPS = 64  # keys tried past a chunk end that cannot exist in Postgres


def chunk_bounds(conn: sqlite3.Connection, ks: KeySpace, lo: Bound | None, cells: int,
                 cell_rows: int) -> tuple[list[Bound], Bound | None]:
    """Where the chunk starting at `lo` splits into `cells` cells of `cell_rows` rows:
    (the inner boundaries, the next chunk's first key or None at the end).

    With an index in key order each boundary is one short walk from the one before
    (LIMIT 1 OFFSET n); without one, one sorted pass numbers the rows instead."""
    if not ks.sqlite_indexed:
        found = [k for _, k in sample(conn, ks, KeyRange(lo, None), cells * cell_rows, cell_rows)]
    else:
        keys = ", ".join(ks.sqlite_refs())
        table, order = quoted_sqlite_table(ks.spec), ks.sqlite_order()
        first = f"SELECT {keys} FROM {table} ORDER BY {order} LIMIT 1 OFFSET ?"
        found = []
        raw = lo.raw if lo is not None else None
        with read_transaction(conn):
            for _ in range(cells):
                if raw is None:
                    rows = fetchall_text_safe(conn, first, (cell_rows,))
                else:
                    marks, params = bound_key(raw, ks.sqlite_binary)
                    rows = fetchall_text_safe(conn, f"SELECT {keys} FROM {table} WHERE {ks.sqlite_key()} >= {marks} "
                                                    f"ORDER BY {order} LIMIT 1 OFFSET ?", (*params, cell_rows))
                if not rows:
                    break
                raw = tuple(rows[0])
                found.append(raw)
    inner = [b for b in (ks.from_sqlite(k) for k in found[: cells - 1]) if b is not None]
    if len(found) < cells:
        return inner + [b for b in (ks.from_sqlite(k) for k in found[cells - 1:]) if b is not None], None
    hi = ks.from_sqlite(found[-1])
    if hi is None:  # a key Postgres cannot hold: end the chunk at the next one that fits
        hi = _next_fitting(conn, ks, found[-1])
    elif lo is not None and hi.raw == lo.raw:
        # More rows than the chunk holds share the key it starts at (a [sources.keys] key
        # SQLite does not hold unique): the chunk takes them all, or the next would start here again.
        hi = _next_fitting(conn, ks, lo.raw)
    return inner, hi


def _next_fitting(conn: sqlite3.Connection, ks: KeySpace, raw: tuple) -> Bound | None:
    keys = ", ".join(ks.sqlite_refs())
    marks, params = bound_key(raw, ks.sqlite_binary)
    sql = (f"SELECT {keys} FROM {quoted_sqlite_table(ks.spec)} WHERE {ks.sqlite_key()} > {marks} "
           f"ORDER BY {ks.sqlite_order()} LIMIT ?")
    for row in fetchall_text_safe(conn, sql, (*params, MISFIT_STEPS)):
        b = ks.from_sqlite(tuple(row))
        if b is not None:
            return b
    return None  # run on to the end of the table


def cell_sums(conn: sqlite3.Connection, ks: KeySpace, hasher: SqliteRowHash, r: KeyRange,
              bounds: Sequence[Bound]) -> list[tuple[int, int]]:
    """(rows, hash sum) of each cell of `r` split at `bounds`.

    With an index in key order each cell is its own short query; without one, one
    scan of the range assigns rows to cells (a query per cell would scan each time)."""
    table = quoted_sqlite_table(ks.spec)
    if ks.sqlite_indexed or not bounds:
        out = []
        with ReadHold(conn) as hold:  # the chunk's cells under one lock, not one each, while it is short
            for cell in split(r, bounds):
                if hold.due():
                    hold.renew()  # 10,000 rows of 16 KB hashed under one lock held a writer 0.6 s
                where, params = ks.sqlite_where(cell)
                try:
                    n, total = conn.execute(f"SELECT count(*), {hasher.sql} FROM {table} WHERE {where}",
                                            params).fetchone()
                except HASH_FAILED as e:  # text that is not UTF-8: hashed in Python instead
                    _not_decoded(e)
                    rows = fetchall_text_safe(conn, f"SELECT {hasher.columns_sql} FROM {table} WHERE {where}", params)
                    n, total = len(rows), sum(hasher.python_hash(r) for r in rows)
                out.append((n, total or 0))  # over no rows SQLite never calls finalize: NULL
        return out
    cell_params: list[Any] = []

    def mark(i: int) -> str:
        cell_params.extend(bounds[i].raw)
        return ks.sqlite_marks()

    cell = cell_case(ks.sqlite_key(), len(bounds), mark)
    where, params = ks.sqlite_where(r)
    sql = (f"SELECT {cell} AS _syncd_cell, count(*), {hasher.sql} "
           f"FROM {table} WHERE {where} GROUP BY _syncd_cell")
    out = [(0, 0)] * (len(bounds) + 1)
    try:
        for i, n, total in conn.execute(sql, (*cell_params, *params)).fetchall():
            out[i] = (n, total)
    except HASH_FAILED as e:  # text that is not UTF-8: hashed in Python instead
        _not_decoded(e)
        sums: dict[int, list[int]] = {}
        rows = fetchall_text_safe(conn, f"SELECT {cell} AS _syncd_cell, {hasher.columns_sql} FROM {table} "
                                        f"WHERE {where}", (*cell_params, *params))
        for row in rows:
            got = sums.setdefault(row[0], [0, 0])
            got[0] += 1
            got[1] += hasher.python_hash(row[1:])
        out = [(0, 0)] * (len(bounds) + 1)
        for c, (n, total) in sums.items():
            out[c] = (n, total)
    return out


def split(r: KeyRange, bounds: Sequence[Bound]) -> list[KeyRange]:
    edges = [r.lo, *bounds, r.hi]
    return [KeyRange(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def range_hashes(conn: sqlite3.Connection, ks: KeySpace, hasher: SqliteRowHash, r: KeyRange) -> list[tuple]:
    """(key values..., row hash) of every row in range `r`."""
    keys = ", ".join(ks.sqlite_refs())
    where, params = ks.sqlite_where(r)
    table = quoted_sqlite_table(ks.spec)
    try:
        return fetchall_text_safe(conn, f"SELECT {keys}, {hasher.row_sql} FROM {table} WHERE {where}", params)
    except HASH_FAILED as e:  # text that is not UTF-8: hashed in Python instead
        _not_decoded(e)
        n = len(ks.key)
        rows = fetchall_text_safe(conn, f"SELECT {keys}, {hasher.columns_sql} FROM {table} WHERE {where}", params)
        return [(*row[:n], hasher.python_hash(row[n:])) for row in rows]


def _rowid_ref(spec: TableSpec) -> str | None:
    """A name reaching the rowid of a table that has one (not shadowed by a column)."""
    return None if spec.without_rowid else unshadowed_rowid_name(spec.column_names)


def _rows_by_key(conn: sqlite3.Connection, spec: TableSpec, keys: Sequence[tuple],
                 seen: set | None = None) -> list[tuple]:
    """Rows for raw keys, by the key's own comparison (so a NOCASE key also finds a
    row whose case changed: the caller matches rows to keys exactly). Each row once:
    two spellings of a NOCASE key looked up in different batches find the same row, which
    would read as two rows under one key. `seen` carries the rows found by earlier calls
    (by rowid; a WITHOUT ROWID table's by its primary key, which no two rows share)."""
    seen = set() if seen is None else seen
    rowid = _rowid_ref(spec)
    cols = ", ".join(spec.sqlite_ref(c) for c in spec.column_names)
    if rowid is not None:
        cols = f"{rowid}, {cols}"
    nkey = len(spec.key)
    refs = [spec.sqlite_ref(k) for k in spec.key]
    key_cols = refs[0] if nkey == 1 else "(" + ", ".join(refs) + ")"
    out: list[tuple] = []
    for i in range(0, len(keys), LOOKUP_BATCH):
        chunk = [bound_key(k) for k in keys[i : i + LOOKUP_BATCH]]
        row_marks = [marks if nkey > 1 else f"({marks})" for marks, _ in chunk]
        sql = (f"SELECT {cols} FROM {quoted_sqlite_table(spec)} "
               f"WHERE {key_cols} IN (VALUES {', '.join(row_marks)})")
        for row in fetchall_text_safe(conn, sql, [v for _, params in chunk for v in params]):
            if rowid is not None:
                ident, row = row[0], tuple(row[1:])
            else:
                ident = tuple(row[j] for j in spec.key_indexes)
            if ident not in seen:
                seen.add(ident)
                out.append(row)
    return out


@dataclass
class KeyEvidence:
    """Rows for some keys, each read in one transaction with the changelog's state."""

    rows: list[tuple]
    max_seq: int
    entries_after: int  # changelog entries with seq > the given checkpoint
    changed_keys: list[tuple] | None  # raw keys of this table changed after it; None: too many to list


def rows_with_evidence(conn: sqlite3.Connection, spec: TableSpec, tid: int, keys: Sequence[tuple],
                       scan: bool, after_seq: int) -> KeyEvidence:
    """Current rows for `keys` (every row when `scan`: some keys have no known SQLite
    form) and, from the same snapshot, which of this table's keys changed after
    `after_seq`. In rollback-journal mode a long read is cut into several transactions,
    each with its own view of the changelog (ReadHold); the evidence is what they all
    say together: any key changed in one counts as changed, the newest changelog end
    is the one to wait for, and if entries after `after_seq` were gone in any of them,
    no key's change can be ruled out."""
    nkey = len(spec.key)
    slots = ", ".join(slot(i) for i in range(nkey))
    rows: list[tuple] = []
    seen: set = set()  # the rows found so far, each taken once (_rows_by_key)
    views: list[tuple[int, int, list[tuple] | None]] = []
    with ReadHold(conn) as hold:
        if scan:
            cols = ", ".join(spec.sqlite_ref(c) for c in spec.column_names)
            rows = fetchall_text_safe(conn, f"SELECT {cols} FROM {quoted_sqlite_table(spec)}")
        else:
            for i in range(0, len(keys), LOOKUP_BATCH):
                if i and hold.due():
                    views.append(_changelog_view(conn, tid, after_seq, slots))
                    hold.renew()
                rows += _rows_by_key(conn, spec, keys[i : i + LOOKUP_BATCH], seen)
        views.append(_changelog_view(conn, tid, after_seq, slots))
    max_seq, after, changed = views[-1]
    for seen_max, seen_after, seen_changed in views[:-1]:
        if changed is None or seen_changed is None or seen_after != seen_max - after_seq:
            changed = None
        else:
            changed = list(dict.fromkeys(changed + seen_changed))
    return KeyEvidence(rows, max_seq, after, changed)


def _changelog_view(conn: sqlite3.Connection, tid: int, after_seq: int,
                    slots: str) -> tuple[int, int, list[tuple] | None]:
    """(the changelog's newest entry, its entries after `after_seq`, the keys of table
    `tid` those name, None when more than MAX_CHANGED_KEYS), as the transaction in
    progress sees them."""
    max_seq = conn.execute(f"SELECT coalesce(max(seq), 0) FROM {CL}").fetchone()[0]
    if max_seq - after_seq > MAX_VIEW_ENTRIES:
        # A backlog this long (Postgres away, the daemon stopped) is not walked inside the
        # read, which in rollback-journal mode holds the application's writers back for as
        # long as it runs: its keys are not listed, and every candidate counts as changed
        # (its length is told by its ends).
        return max_seq, max_seq - after_seq, None
    after = conn.execute(f"SELECT count(*) FROM {CL} WHERE seq > ?", (after_seq,)).fetchone()[0]
    changed: list[tuple] | None = fetchall_text_safe(
        conn, f"SELECT DISTINCT {slots} FROM {CL} WHERE tid = ? AND seq > ? LIMIT ?",
        (tid, after_seq, MAX_CHANGED_KEYS + 1),
    )
    if changed is not None and len(changed) > MAX_CHANGED_KEYS:
        changed = None
    return max_seq, after, changed


@dataclass
class ChangeCounts:
    """Row totals read in one transaction with the changelog's state."""

    rows: int  # every row of the table
    changed_rows: int  # rows whose key has a changelog entry after the checkpoint
    max_seq: int
    entries_after: int
    changed_keys: list[tuple] | None  # None: too many to list


def counts_with_changes(conn: sqlite3.Connection, spec: TableSpec, tid: int, after_seq: int) -> ChangeCounts:
    """The table's row count and, from the same snapshot, how many of its rows have
    a key changed after `after_seq` (compared byte for byte, as Postgres compares)."""
    nkey = len(spec.key)
    slots = ", ".join(slot(i) for i in range(nkey))
    refs = [f"{spec.sqlite_ref(k)} COLLATE BINARY" for k in spec.key]
    key = refs[0] if nkey == 1 else "(" + ", ".join(refs) + ")"
    table = quoted_sqlite_table(spec)
    with read_transaction(conn):
        rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        max_seq, after, changed = _changelog_view(conn, tid, after_seq, slots)
        # Unlisted keys leave the totals unknown at this checkpoint: not counted either.
        changed_rows = 0 if changed is None else conn.execute(
            f"SELECT count(*) FROM {table} WHERE {key} IN (SELECT {slots} FROM {CL} WHERE tid = ? AND seq > ?)",
            (tid, after_seq)).fetchone()[0]
    return ChangeCounts(rows, changed_rows, max_seq, after, changed)


def enqueue(conn: sqlite3.Connection, tid: int, entries: Sequence[tuple[int, tuple[Any, ...]]],
            busy_timeout_ms: int) -> int:
    """Record (op, raw key) changelog entries for table `tid`, in short write
    transactions, as if the application had touched those rows: the stream then
    applies each key's *current* state. Returns the changelog's max seq after."""
    last = 0
    read_timeout = conn.execute("PRAGMA busy_timeout").fetchone()[0]  # write_transaction shortens it
    try:
        last = _enqueue(conn, tid, entries, busy_timeout_ms)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(read_timeout)}")
    return last


def _enqueue(conn: sqlite3.Connection, tid: int, entries: Sequence[tuple[int, tuple[Any, ...]]],
             busy_timeout_ms: int) -> int:
    last = 0
    for i in range(0, len(entries), LOOKUP_BATCH):
        chunk = entries[i : i + LOOKUP_BATCH]
        nkey = len(chunk[0][1])
        slots = ", ".join(slot(j) for j in range(nkey))
        marks = ", ".join(["?"] * (nkey + 2))

        def write(c: sqlite3.Connection, chunk=chunk) -> int:
            c.executemany(f"INSERT INTO {CL}(tid, op, {slots}) VALUES ({marks})",
                          [(tid, op, *key) for op, key in chunk])
            return c.execute(f"SELECT max(seq) FROM {CL}").fetchone()[0]

        last = capture.write_transaction(conn, write, busy_timeout_ms=busy_timeout_ms)
    return last
