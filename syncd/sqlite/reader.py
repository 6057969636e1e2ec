"""Read changes out of a SQLite file: changelog batches with current row values.

A batch is read in one SQLite read transaction: the changelog range and the rows it
points at come from the same snapshot of the file. Repeated changes to one key
coalesce to that key's current state: present -> upsert, absent -> delete.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Callable

from syncd.identifiers import quote_ident
from syncd.model import BATCH_VALUE_BYTES, TableSpec, entries_within_values, unshadowed_rowid_name
from syncd.sqlite import windows
from syncd.sqlite.capture import CHANGELOG, META, OP_INSERT, changelog_ends, slot
from syncd.sqlite.connection import empty_file, fetch_within, fetchall_text_safe, no_such_table, weigher
from syncd.sqlite.hold import RowsPerHold
from syncd.types import needs_conversion_filter

CL = quote_ident(CHANGELOG)


@dataclass
class TableChanges:
    tid: int
    spec: TableSpec
    upserts: list[tuple] = field(default_factory=list)  # full SQLite rows, column order of spec
    deletes: list[tuple] = field(default_factory=list)  # keys
    ops: Counter = field(default_factory=Counter)  # insert / update / delete, per coalesced key
    null_keys: int = 0  # changes whose key is NULL: Postgres cannot hold such a row
    # A [sources.keys] key more than one SQLite row holds, exactly: (key, rows). Postgres
    # can hold one of them; the coalescing below would keep one and drop the rest unseen.
    duplicate: tuple[tuple, int] | None = None

    @property
    def size(self) -> int:
        return len(self.upserts) + len(self.deletes)


@dataclass
class ChangeBatch:
    after_seq: int
    last_seq: int
    entries: int = 0
    tables: dict[int, TableChanges] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)  # tid -> entries left queued (table not streaming)
    schema_changed: bool = False  # the file's schema moved since syncd last looked: reconcile first
    fingerprint: str = ""  # of every entry in (after_seq, last_seq]: see fingerprint()
    max_seq: int = 0  # the changelog's newest entry when the batch was read: what is still queued
    read_at: float = 0.0  # time.time() just before the read: the changelog held nothing past max_seq then

    @property
    def empty(self) -> bool:
        return self.entries == 0


def _weigher(spec: TableSpec, first: int) -> Callable[[list[tuple]], int] | None:
    """What rows whose columns start at `first` weigh (connection.weigher), or None for a
    table without variable-width columns, whose rows are never weighed."""
    names = spec.column_names
    return weigher([first + names.index(c) for c in spec.sized_columns])


def _join_sql(spec: TableSpec, with_seq: bool = False) -> str:
    """Per changelog entry of one table in the range, in seq order: the key, the op,
    flags, the current row. Repeated keys are coalesced in Python (_collect): a
    GROUP BY here sorts every entry through a temporary b-tree, which cost SQLite
    twice the join itself (bench/change_drain.py prints both plans). `with_seq`: the
    entry's seq comes between the flags and the row (_read_sized).

    Flags are worked out in SQL so the common case costs Python nothing: `nullkey`
    (a NULL in the key), `present` (the row exists), `exact` (the row found has
    exactly the recorded key: a non-BINARY collation or an affinity can match
    another stored key)."""
    nkey = len(spec.key)
    c_slots = ", ".join(f"c.{slot(i)}" for i in range(nkey))
    ref = spec.sqlite_ref
    # Under the key's own collation: a BINARY key on a NOCASE column holds 'a' and 'A' apart.
    on = " AND ".join(f"{spec.key_sql(k, 't.')} = c.{slot(i)}" for i, k in enumerate(spec.key))
    nullkey = " OR ".join(f"c.{slot(i)} IS NULL" for i in range(nkey))
    exact = " AND ".join(
        f"(t.{ref(k)} = c.{slot(i)} COLLATE BINARY AND typeof(t.{ref(k)}) = typeof(c.{slot(i)}))"
        for i, k in enumerate(spec.key)
    )
    cols = ", ".join(f"t.{ref(c)}" for c in spec.column_names)
    first_key = ref(spec.key[0])
    # 1 and 1.0 are one value to Python and to SQLite's `=`, but two keys to Postgres:
    # which slots hold a real makes (key..., mask) tell them apart (_distinct_keys).
    reals = " + ".join(f"{1 << i} * (typeof(c.{slot(i)}) = 'real')" for i in range(nkey))
    size = "c.seq, " if with_seq else ""
    return (
        f"SELECT {c_slots}, {reals}, c.op, {nullkey}, t.{first_key} IS NOT NULL, coalesce({exact}, 0), {size}{cols} "
        f"FROM main.{CL} AS c LEFT JOIN main.{quote_ident(spec.name)} AS t ON {on} "
        f"WHERE c.seq > ? AND c.seq <= ? AND c.tid = ? ORDER BY c.seq"
    )


def _join_first(spec: TableSpec, with_seq: bool) -> int:
    """Where a _join_sql row's columns start: after the key, mask, op, nullkey, present,
    exact (and, with_seq, the entry's seq)."""
    return len(spec.key) + (6 if with_seq else 5)


def _distinct_keys(rows: list[tuple], nkey: int) -> list[tuple]:
    """The first entry of each distinct recorded key, in seq order. A row starts with
    the key and the mask of its slots holding a real (see _join_sql): integer 1 and
    real 1.0 are equal in Python, but two keys to Postgres."""
    if nkey == 1 and not any(map(itemgetter(1), rows)):
        idents = list(map(itemgetter(0), rows))  # no real key: the value alone tells keys apart
    else:
        idents = list(map(itemgetter(slice(0, nkey + 1)), rows))
    if len(set(idents)) == len(idents):
        return rows  # every key once (one large transaction's UPDATE): nothing to drop
    seen: set = set()
    add = seen.add
    out = []
    for ident, r in zip(idents, rows):
        if ident not in seen:
            add(ident)
            out.append(r)
    return out


def _collect(changes: TableChanges, rows: list[tuple], with_seq: bool = False) -> None:
    spec = changes.spec
    nkey = len(spec.key)
    first = _join_first(spec, with_seq)
    key_idx = spec.key_indexes
    upserts, deletes = changes.upserts, changes.deletes
    rows = _distinct_keys(rows, nkey)
    if rows and set(map(itemgetter(nkey + 2, nkey + 3, nkey + 4), rows)) == {(0, 1, 1)}:
        # The common case, each key's row there under exactly its recorded key: no NULL
        # key, no delete, no collation match; the rows go as they are, without a branch each.
        upserts.extend(map(itemgetter(slice(first, None)), rows))
        inserted = Counter(map(itemgetter(nkey + 1), rows))[OP_INSERT]
        changes.ops.update(insert=inserted, update=len(rows) - inserted, delete=0)
        return
    inserted = updated = deleted = 0
    merged: set[tuple] | None = None  # rows reached through a non-exact match, to upsert once
    for r in rows:
        if r[nkey + 2]:
            changes.null_keys += 1
            continue
        if r[nkey + 3]:
            if r[nkey + 4]:
                upserts.append(r[first:])
            else:
                # A non-BINARY collation (or affinity) matched a different stored key:
                # the recorded key itself is gone; the row found is upserted once.
                deletes.append(r[:nkey])
                deleted += 1
                row = r[first:]
                found = tuple(row[i] for i in key_idx)
                merged = merged if merged is not None else set()
                if found in merged:
                    continue
                merged.add(found)
                upserts.append(row)
            if r[nkey + 1] == OP_INSERT:
                inserted += 1
            else:
                updated += 1
        else:
            deletes.append(r[:nkey])
            deleted += 1
    if merged:
        exact_keys = {tuple(row[i] for i in key_idx) for row in upserts}
        if len(exact_keys) < len(upserts):  # a merged row also matched exactly: keep one
            seen: set[tuple] = set()
            unique = []
            for row in upserts:
                k = tuple(row[i] for i in key_idx)
                if k not in seen:
                    seen.add(k)
                    unique.append(row)
            upserts[:] = unique
    changes.ops.update(insert=inserted, update=updated, delete=deleted)


def fingerprint(entries: list[tuple]) -> str:
    """A digest of changelog entries (seq, tid, op, key...) exactly as stored.

    Postgres keeps one per applied batch; a file whose entries in an applied range
    differ (restored from a backup, then written to) is told apart from the one
    Postgres followed. Trailing NULL key slots are dropped so a changelog that gained
    a slot since still digests the same.

    The digest is of each entry's repr() and a newline. It is built as one text:
    repr() escapes every newline inside a value, so ", None)" right before a newline
    can only be a trailing NULL slot (seq, tid and op are never NULL)."""
    if not entries:
        return hashlib.blake2b(digest_size=16).hexdigest()
    return _digest("\n".join(map(repr, map(tuple, entries))) + "\n")


def _digest(text: str) -> str:
    while ", None)\n" in text:  # one trailing NULL slot fewer per pass, in every entry at once
        text = text.replace(", None)\n", ")\n")
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def _batch_entries(conn: sqlite3.Connection, where: str, params: tuple, limit: int) -> list[tuple]:
    """Up to `limit` changelog entries matching `where`, in seq order. Entries are read
    only as wide as their widest key: the key slots no entry of the batch uses are
    NULL in every one, and fingerprint() drops trailing NULL slots anyway. An integer
    key's entry is then 4 values instead of 3 and every slot: 200k entries read and
    digested in 220 ms instead of 344 ms, same digest."""
    cols = [quote_ident(r[1]) for r in conn.execute(f"PRAGMA main.table_info({CL})")]
    slots = cols[3:]  # after seq, tid, op
    used = len(slots)
    if used > 1:
        widest = " ".join(f"WHEN {slots[i]} IS NOT NULL THEN {i + 1}" for i in range(used - 1, 0, -1))
        used = conn.execute(f"SELECT max(CASE {widest} ELSE 1 END) FROM (SELECT {', '.join(slots)} FROM main.{CL} "
                            f"WHERE {where} ORDER BY seq LIMIT ?)", (*params, limit)).fetchone()[0] or 1
    return fetchall_text_safe(conn, f"SELECT {', '.join(cols[:3 + used])} FROM main.{CL} WHERE {where} "
                                      "ORDER BY seq LIMIT ?", (*params, limit))


def _within_values(entries: list[tuple], limit: int, streaming: dict[int, TableSpec]) -> list[tuple]:
    """The first of `entries` whose rows hold about as many values as `limit` entries of
    narrow rows (model.entries_within_values)."""
    keep = entries_within_values(map(itemgetter(1), entries), limit,
                                 {tid: len(spec.columns) for tid, spec in streaming.items()})
    return entries if keep is None else entries[:keep]


def _read_sized(conn: sqlite3.Connection, after_seq: int, entries: list[tuple],
                streaming: dict[int, TableSpec]) -> tuple[dict[int, list[tuple]], int]:
    """The rows of the entries of tables with variable-width columns (_join_sql), read
    first, and where the batch ends: at the last entry, or earlier, at the entry whose
    row brings the batch's values past BATCH_VALUE_BYTES. A cut keeps every entry up to
    it, of every table (seq order), and so at least the first. Tables without such
    columns are read afterwards, up to where the batch ends, and never weighed.

    A table's rows are its entries' in order, one each, so the entry of a row is found
    among `entries`; only a [sources.keys] key, whose entry may match two rows, reads
    each row's seq with it (_join_sql, with_seq)."""
    last_seq = entries[-1][0]
    budget = BATCH_VALUE_BYTES
    read: dict[int, list[tuple]] = {}
    seqs: dict[int, list[int]] = {}

    def seq_of_row(tid: int, rows: list[tuple], i: int) -> int:
        spec = streaming[tid]
        if spec.key_origin == "configured":
            return rows[i][_join_first(spec, True) - 1]
        if tid not in seqs:
            seqs[tid] = [e[0] for e in entries if e[1] == tid]
        return seqs[tid][i]

    for tid in sorted(set(map(itemgetter(1), entries))):
        spec = streaming.get(tid)
        if spec is None or not spec.sized_columns:
            continue
        configured = spec.key_origin == "configured"
        weigh = _weigher(spec, _join_first(spec, configured))
        assert weigh is not None
        sql = _join_sql(spec, with_seq=configured)
        rows, whole, weight = fetch_within(conn, sql, (after_seq, last_seq, tid), budget, weigh)
        budget -= weight
        read[tid] = rows
        if not whole:
            last_seq = seq_of_row(tid, rows, len(rows) - 1)
            if configured:
                # An entry of a [sources.keys] key may match two rows, one of them past
                # the cut: read again in full up to it, the duplicate is then seen.
                del read[tid]
    if last_seq < entries[-1][0]:
        for tid, rows in read.items():  # read before the batch was cut (further): drop what lies past the cut
            keep = len(rows)
            while keep and seq_of_row(tid, rows, keep - 1) > last_seq:
                keep -= 1
            read[tid] = rows[:keep]
    return read, last_seq


def fingerprint_range(conn: sqlite3.Connection, after_seq: int, last_seq: int) -> str | None:
    """The fingerprint of the file's entries in (after_seq, last_seq], or None when the
    range's last entry is not there."""
    conn.execute("BEGIN")
    try:
        entries = fetchall_text_safe(conn, f"SELECT * FROM main.{CL} WHERE seq > ? AND seq <= ? ORDER BY seq",
                                     (after_seq, last_seq))
    finally:
        conn.execute("COMMIT")
    if not entries or entries[-1][0] != last_seq:
        return None
    return fingerprint(entries)


def duplicated_key(conn: sqlite3.Connection, spec: TableSpec, after_seq: int, last_seq: int,
                   tid: int) -> tuple[tuple, int] | None:
    """A key of the range's entries that more than one row holds byte for byte (a
    [sources.keys] key is not a constraint in SQLite), with how many rows hold it."""
    ref = spec.sqlite_ref
    keys = ", ".join(ref(k) for k in spec.key)
    slots = ", ".join(slot(i) for i in range(len(spec.key)))
    exact = ", ".join(f"{ref(k)} COLLATE BINARY, typeof({ref(k)})" for k in spec.key)
    row = conn.execute(
        f"SELECT {keys}, count(*) FROM main.{quote_ident(spec.name)} "
        f"WHERE ({keys}) IN (SELECT {slots} FROM main.{CL} WHERE seq > ? AND seq <= ? AND tid = ?) "
        f"GROUP BY {exact} HAVING count(*) > 1 LIMIT 1", (after_seq, last_seq, tid)).fetchone()
    return None if row is None else (tuple(row[:-1]), row[-1])


def _has_null_key(conn: sqlite3.Connection, spec: TableSpec) -> bool:
    cond = " OR ".join(f"{spec.sqlite_ref(k)} IS NULL" for k in spec.key)
    return conn.execute(f"SELECT 1 FROM main.{quote_ident(spec.name)} WHERE {cond} LIMIT 1").fetchone() is not None


def read_changes(
    conn: sqlite3.Connection,
    after_seq: int,
    limit: int,
    streaming: dict[int, TableSpec],
    only_tid: int | None = None,
    upto_seq: int | None = None,
    schema_version: int | None = None,
) -> ChangeBatch:
    """Read up to `limit` changelog entries after `after_seq` and the current rows
    they point at, in one read transaction.

    Entries of tables not in `streaming` are counted in `skipped` and left queued.
    With `only_tid`, only that table's entries are read (a table catching up alone).
    With `schema_version`, nothing is read if the schema moved since: rows read with
    a stale column list would lose the new columns' values.
    """
    read_at = time.time()
    conn.execute("BEGIN")
    try:
        if schema_version is not None:
            if conn.execute("PRAGMA main.schema_version").fetchone()[0] != schema_version:
                return ChangeBatch(after_seq=after_seq, last_seq=after_seq, schema_changed=True, read_at=read_at)
        where = "seq > ?"
        params: list[Any] = [after_seq]
        if upto_seq is not None:
            where += " AND seq <= ?"
            params.append(upto_seq)
        if only_tid is not None:
            where += " AND tid = ?"
            params.append(only_tid)
        entries = _within_values(_batch_entries(conn, where, tuple(params), limit), limit, streaming)
        if not entries:
            return ChangeBatch(after_seq=after_seq, last_seq=after_seq, read_at=read_at)
        sized, last_seq = _read_sized(conn, after_seq, entries, streaming)
        if last_seq < entries[-1][0]:
            entries = entries[:bisect_right(entries, last_seq, key=itemgetter(0))]
        batch = ChangeBatch(after_seq=after_seq, last_seq=last_seq, entries=len(entries),
                            fingerprint=fingerprint(entries), max_seq=max_seq(conn), read_at=read_at)
        per_tid = Counter(map(itemgetter(1), entries))
        for tid in sorted(per_tid):
            spec = streaming.get(tid)
            if spec is None:
                batch.skipped[tid] += per_tid[tid]
                continue
            rows = sized.get(tid)
            if rows is None:
                rows = fetchall_text_safe(conn, _join_sql(spec), (after_seq, batch.last_seq, tid))
            changes = TableChanges(tid=tid, spec=spec)
            if spec.key_origin == "configured" and len(rows) > per_tid[tid]:  # an entry matched two rows
                changes.duplicate = duplicated_key(conn, spec, after_seq, batch.last_seq, tid)
            _collect(changes, rows, with_seq=tid in sized and spec.key_origin == "configured")
            if changes.null_keys and not _has_null_key(conn, spec):
                changes.null_keys = 0  # those rows got a key (or went): their changes are recorded too
            batch.tables[tid] = changes
        return batch
    finally:
        conn.execute("COMMIT")


@dataclass(frozen=True)
class PollInfo:
    data_version: int
    schema_version: int
    max_seq: int
    inode: tuple[int, int] | None  # None: the file is gone
    capture_id: str | None = None  # the file's, from syncd's meta table (None: not installed)
    read_at: float = 0.0  # time.time() just before the read: the changelog held nothing past max_seq then


def file_signature(path: str) -> tuple:
    """Inode, size and modification time of the database and its -wal file: any commit
    moves one of them (a check that needs no connection). SQLite keeps the -wal file
    beside the file a symlink leads to, not beside the link."""
    if os.path.islink(path):
        path = os.path.realpath(path)
    out = []
    for p in (path, path + "-wal"):
        try:
            st = os.stat(p)
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def poll(conn: sqlite3.Connection, path: str) -> PollInfo:
    """The cheap periodic check: has anything changed, and how far has the changelog got?"""
    try:
        st = os.stat(path)
        inode: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except FileNotFoundError:
        inode = None
    else:
        if st.st_size == 0:
            raise empty_file(path)
    read_at = time.time()
    conn.execute("BEGIN")  # one shared lock for the three reads, not three
    try:
        dv = conn.execute("PRAGMA main.data_version").fetchone()[0]
        sv = conn.execute("PRAGMA main.schema_version").fetchone()[0]
        try:
            max_seq = conn.execute(f"SELECT coalesce(max(seq), 0) FROM main.{CL}").fetchone()[0]
        except sqlite3.OperationalError as e:
            if not no_such_table(e):
                raise
            max_seq = -1  # changelog missing: capture was removed
        capture_id = current_capture_id(conn)
    finally:
        conn.execute("COMMIT")
    return PollInfo(dv, sv, max_seq, inode, capture_id, read_at)


def current_capture_id(conn: sqlite3.Connection) -> str | None:
    """The capture id the file holds now: another file copied over this one in place
    (same inode) brings its own."""
    try:
        row = conn.execute(f"SELECT value FROM main.{quote_ident(META)} WHERE key = 'capture_id'").fetchone()
    except sqlite3.OperationalError as e:
        if not no_such_table(e):
            raise
        return None
    return row[0] if row else None


MEASURE_BELOW_ENTRIES = 2_000_000  # in rollback-journal mode, larger changelogs are extrapolated
DEFAULT_BYTES_PER_ENTRY = 40.0  # until a file's changelog has been measured (18 for an integer key)
_bytes_per_entry: dict[str, float] = {}  # file -> last measured bytes per entry


def changelog_bytes(conn: sqlite3.Connection) -> int:
    """Bytes the changelog occupies in the file, walking its pages (dbstat: ~70 ms for
    2M entries from the page cache). In WAL mode the walk's read lock blocks no
    writer, so it is always measured. In rollback-journal mode it would hold back the
    application's commits, so a changelog above MEASURE_BELOW_ENTRIES (Postgres away
    for a while) is sized from its entry count and the last measured bytes per entry."""
    try:
        low, high = changelog_ends(conn)
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return 0  # capture not installed (yet, or any more)
        raise
    if not high:
        return conn.execute("PRAGMA main.page_size").fetchone()[0]  # empty: its root page, all it occupies
    file = conn.execute("PRAGMA main.database_list").fetchone()[2]
    span = high - low + 1  # at least the entry count (a held table leaves gaps)
    per_entry = _bytes_per_entry.get(file, DEFAULT_BYTES_PER_ENTRY)
    if span > MEASURE_BELOW_ENTRIES and conn.execute("PRAGMA main.journal_mode").fetchone()[0].lower() != "wal":
        return int(span * per_entry)
    try:
        size = conn.execute("SELECT coalesce(sum(pgsize), 0) FROM dbstat('main', 1) WHERE name = ?",
                            (CHANGELOG,)).fetchone()[0]
    except sqlite3.OperationalError:  # built without DBSTAT
        return int(span * per_entry)
    if span >= 1000:
        entries = conn.execute(f"SELECT count(*) FROM main.{CL}").fetchone()[0]
        if entries:
            _bytes_per_entry[file] = size / entries
    return size


def prune_window(conn: sqlite3.Connection, start: int, size: int, below_seq: int,
                 keep: dict[int, int]) -> tuple[int, int]:
    """Delete applied entries with start <= seq < min(start + window, below_seq), except
    entries of tables in `keep` (tid -> from_seq) newer than their from_seq. Call inside
    a write transaction. Looking at a bounded window keeps the transaction short however
    many entries a held table keeps. The entry at below_seq itself stays: it keeps
    max(seq) from ever moving backwards. Returns (deleted, where the next window starts)."""
    end = min(start + size, below_seq)
    where = ["seq >= ?", "seq < ?"]
    params: list[Any] = [start, end]
    for tid, from_seq in sorted(keep.items()):
        where.append("NOT (tid = ? AND seq > ?)")
        params.extend([tid, from_seq])
    cur = conn.execute(f"DELETE FROM main.{CL} WHERE {' AND '.join(where)}", params)
    return cur.rowcount, end


# Changelog positions changed_keys reads per statement: behind a long backlog (Postgres
# away, the daemon stopped) one statement over all of it held a rollback-journal file's
# writers back for seconds; this many take a few tens of milliseconds.
CHANGED_KEYS_WINDOW = 100_000


def changed_keys(conn: sqlite3.Connection, tid: int, nkey: int, after_seq: int, limit: int = 100_000) -> set[tuple]:
    """Keys (SQLite form) of table `tid` with changes after `after_seq`, at most `limit`,
    read a window of positions per statement (outside a transaction: each its own)."""
    slots = ", ".join(slot(i) for i in range(nkey))
    top = max_seq(conn)
    keys: set[tuple] = set()
    lo = after_seq
    while lo < top and len(keys) < limit:
        hi = min(top, lo + CHANGED_KEYS_WINDOW)
        rows = fetchall_text_safe(conn, f"SELECT DISTINCT {slots} FROM main.{CL} WHERE tid = ? AND seq > ? "
                                        "AND seq <= ? LIMIT ?", (tid, lo, hi, limit))
        keys.update(tuple(r) for r in rows)
        lo = hi
    return set(list(keys)[:limit]) if len(keys) > limit else keys


# Changelog positions entries_after counts per statement (a few tens of milliseconds).
COUNT_WINDOW = 1_000_000


def entries_after(conn: sqlite3.Connection, after_seq: int) -> int:
    """Changelog entries after `after_seq`, counted a window of positions per statement
    (outside a transaction: each its own). One count over a long backlog held a
    rollback-journal file's writers back for as long as it ran."""
    return _entries_between(conn, after_seq, max_seq(conn))


def entries_below(conn: sqlite3.Connection, below_seq: int) -> int:
    """Changelog entries before `below_seq`, counted as entries_after counts."""
    first = min_seq(conn)
    return _entries_between(conn, first - 1, below_seq - 1) if first else 0  # 0: empty


def _entries_between(conn: sqlite3.Connection, lo: int, top: int) -> int:
    """Entries at positions above `lo` up to `top`, a window of COUNT_WINDOW positions per
    statement (outside a transaction: each its own)."""
    total = 0
    while lo < top:
        hi = min(top, lo + COUNT_WINDOW)
        total += conn.execute(f"SELECT count(*) FROM main.{CL} WHERE seq > ? AND seq <= ?", (lo, hi)).fetchone()[0]
        lo = hi
    return total


def min_seq(conn: sqlite3.Connection) -> int:
    return conn.execute(f"SELECT coalesce(min(seq), 0) FROM main.{CL}").fetchone()[0]


def max_seq(conn: sqlite3.Connection) -> int:
    return conn.execute(f"SELECT coalesce(max(seq), 0) FROM main.{CL}").fetchone()[0]


def queued_behind(conn: sqlite3.Connection, tables: dict[int, int], applied_seq: int) -> dict[int, int]:
    """Changelog entries of held or paused tables (tid -> the position their queue starts
    after) that the checkpoint has moved past: they wait all the same."""
    return {tid: conn.execute(f"SELECT count(*) FROM main.{CL} WHERE seq > ? AND seq <= ? AND tid = ?",
                              (after, applied_seq, tid)).fetchone()[0] if after < applied_seq else 0
            for tid, after in tables.items()}


def rowid_name(spec: TableSpec) -> str | None:
    """A name reaching the rowid that no column shadows, or None (WITHOUT ROWID)."""
    return None if spec.without_rowid else unshadowed_rowid_name(c.name for c in spec.stored_columns)


def rowid_key_name(spec: TableSpec) -> str | None:
    """What [sources.keys] names to key the table on its rowid: "rowid", or the name that
    reaches it when a column of the table takes that one; None when none can (WITHOUT ROWID)."""
    name = rowid_name(spec)
    return "rowid" if name is not None and "rowid" not in {c.name.lower() for c in spec.stored_columns} else name


def snapshot_position_kind(spec: TableSpec) -> str:
    """How a load remembers where it is.

    "rowid": an INTEGER PRIMARY KEY, stable forever, or the rowid a keyless table is
    keyed by (a VACUUM renumbering it moves the schema version, which stops the load
    and reloads the table from the start). "key": the key's own index (a
    primary key or unique index); slower to walk but stable. "rowid-unstable": a key
    configured in [sources.keys] has no index to walk, and VACUUM may renumber the
    rowid, so such a load restarts from the beginning instead of resuming."""
    if (spec.rowid_alias or spec.rowid_keyed) and rowid_name(spec):
        return "rowid"
    if spec.key_origin != "configured" or spec.without_rowid or rowid_name(spec) is None:
        return "key"
    return "rowid-unstable"


def _chunk_query(spec: TableSpec, after: tuple | None, limit: int, columns: str) -> tuple[str, list[Any], str]:
    """`SELECT ... FROM table AS s WHERE ... ORDER BY ... LIMIT ?` for the chunk after
    `after`, with how its position is kept: "alias" (the key is the rowid: the last
    row's key), "rowid" (the rowid, selected first) or "key" (the key's columns). The
    WHERE and ORDER BY terms name the table's columns as `s.<column>`: a result column
    the caller names alike (an alias) can then never be what a chunk is ordered by."""
    table = f"main.{quote_ident(spec.name)} AS s"
    rid = rowid_name(spec) if snapshot_position_kind(spec) != "key" else None
    if rid is not None:
        where = f"WHERE s.{rid} > ?" if after is not None else ""
        params: list[Any] = [after[0]] if after is not None else []
        if spec.rowid_alias or spec.rowid_keyed:
            # The key is the rowid (an INTEGER PRIMARY KEY, or syncd's rowid column of a
            # keyless table): the last row's key is the position, no copy of each row.
            return f"SELECT {columns} FROM {table} {where} ORDER BY s.{rid} LIMIT ?", [*params, limit], "alias"
        return (f"SELECT s.{rid}, {columns} FROM {table} {where} ORDER BY s.{rid} LIMIT ?", [*params, limit],
                "rowid")
    # Paged the way the key is unique (its index's collation), and still along that index.
    order = [windows.term(f"s.{spec.sqlite_ref(k)}", c)
             for k, c in zip(spec.key, spec.key_collations or (None,) * len(spec.key))]
    if after is not None:
        where = f"WHERE {windows.past(order)}"
        params = list(after)
    else:
        where, params = "", []
    return f"SELECT {columns} FROM {table} {where} ORDER BY {windows.ordered_by(order)} LIMIT ?", [*params, limit], \
        "key"


def read_snapshot_chunk(
    conn: sqlite3.Connection, spec: TableSpec, after: tuple | None, limit: int
) -> tuple[list[tuple], tuple | None]:
    """Up to `limit` rows in storage order after position `after`, fewer once a table
    with variable-width columns' rows weigh BATCH_VALUE_BYTES together; returns the rows
    and the position of the last one. The caller owns the read transaction."""
    cols = ", ".join(f"s.{spec.sqlite_ref(c)}" for c in spec.column_names)
    sql, params, kind = _chunk_query(spec, after, limit, cols)
    weigh = _weigher(spec, int(kind == "rowid"))  # the rowid comes before the row
    if weigh is None:
        rows = fetchall_text_safe(conn, sql, params)
    else:
        rows, _, _ = fetch_within(conn, sql, params, BATCH_VALUE_BYTES, weigh)
    if not rows:
        return [], after
    if kind == "alias":
        return rows, (rows[-1][spec.key_indexes[0]],)
    if kind == "rowid":
        return [r[1:] for r in rows], (rows[-1][0],)
    idx = spec.key_indexes
    return rows, tuple(rows[-1][i] for i in idx)


def read_chunk_apart(conn: sqlite3.Connection, spec: TableSpec, after: tuple | None,
                     reads: RowsPerHold) -> tuple[bool, tuple | None]:
    """read_snapshot_chunk of `reads.rows` rows in a read transaction of its own, its hold
    timed into `reads` (rollback-journal mode, where a read holds the application's commits
    back): (whether any row was read, the position read up to)."""
    began, limit = time.monotonic(), reads.rows
    conn.execute("BEGIN")
    try:
        rows, pos = read_snapshot_chunk(conn, spec, after, limit)
    finally:
        conn.execute("ROLLBACK")  # read only; a COMMIT after damage met fails on it again
        reads.held(time.monotonic() - began, limit)
    return bool(rows), pos


def exact_key(values) -> tuple:
    """A key as SQLite tells its values apart: (storage type, value) per column, so that
    integer 1, text '1' and real 1.0 are three keys, as Python's equality would not have them."""
    return tuple((type(v), v) for v in values)


def changed_keys_since(conn: sqlite3.Connection, tid: int, nkey: int, after_seq: int,
                       keys: set[tuple]) -> int:
    """Add to `keys` the exact keys (exact_key) of table `tid`'s changelog entries after
    `after_seq`; returns the newest seq read (`after_seq` if none)."""
    slots = ", ".join(slot(i) for i in range(nkey))
    top = after_seq
    for r in fetchall_text_safe(conn, f"SELECT seq, {slots} FROM main.{CL} WHERE seq > ? AND tid = ?",
                                (after_seq, tid)):
        top = max(top, r[0])
        keys.add(exact_key(r[1:]))
    return top


def snapshot_chunk_needs_conversion(conn: sqlite3.Connection, spec: TableSpec, after: tuple | None,
                                    limit: int) -> bool:
    """Whether any value of the chunk read_snapshot_chunk reads (same arguments, same
    read transaction) is not already what asyncpg is sent for its column: an integer
    in a REAL column, a NUL in a text, any value of a type always converted (a date,
    numeric, boolean...). SQLite answers this without Python's GIL, so a chunk of
    values that need nothing skips the per-row conversion, the load's costliest
    Python work."""
    conds = [needs_conversion_filter(c.pgtype, f"c{i}") for i, c in enumerate(spec.columns)]
    if any(c is None for c in conds):
        return True
    # COLLATE BINARY: a column of the subquery keeps its own collation, which SQLite looks
    # up to read it there, and the application may define one syncd's connection lacks.
    cols = ", ".join(f"s.{spec.sqlite_ref(c.name)} COLLATE BINARY AS c{i}" for i, c in enumerate(spec.columns))
    sql, params, _ = _chunk_query(spec, after, limit, cols)
    hit = conn.execute(f"SELECT 1 FROM ({sql}) WHERE {' OR '.join(conds)} LIMIT 1", params).fetchone()
    return hit is not None


COUNT_MOST_ROWS = 10_000_000  # rows a window of count_rows reads at most
COUNT_FIRST_ROWS = 10_000


def count_rows(conn: sqlite3.Connection, table: str) -> int:
    """The rows of `table`. count(*) walks every page of the table, a second and more for
    half a gigabyte of rows: in rollback-journal mode, where a read holds the application's
    writers back for as long as it runs, a rowid table is counted a window of rows at a
    time, each its own read, as long as sqlite/hold.py lets one hold the file."""
    t = f"main.{quote_ident(table)}"
    kind = conn.execute("SELECT type, wr FROM pragma_table_list WHERE schema = 'main' AND name = ?",
                        (table,)).fetchone()
    rowid = unshadowed_rowid_name(r[1] for r in conn.execute(f"PRAGMA main.table_info({quote_ident(table)})"))
    if (conn.in_transaction or kind is None or kind != ("table", 0) or rowid is None
            or conn.execute("PRAGMA main.journal_mode").fetchone()[0].lower() == "wal"):
        return conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
    reads = RowsPerHold(COUNT_MOST_ROWS, first=COUNT_FIRST_ROWS)
    total, after = 0, None
    while True:
        began = time.monotonic()
        limit = reads.rows
        where = "" if after is None else f"WHERE {rowid} > ? "
        n, last = conn.execute(f"SELECT count(*), max(r) FROM (SELECT {rowid} AS r FROM {t} {where}"
                               f"ORDER BY {rowid} LIMIT ?)", (() if after is None else (after,)) + (limit,)).fetchone()
        reads.held(time.monotonic() - began, limit)
        total += n
        if n < limit:
            return total
        after = last


def holds_values(conn: sqlite3.Connection, table: str, column: str) -> bool:
    """Whether any row of `table` holds a value (not NULL) in `column` (already quoted)."""
    return conn.execute(f"SELECT 1 FROM main.{quote_ident(table)} WHERE {column} IS NOT NULL LIMIT 1").fetchone() \
        is not None


def has_more_rows(conn: sqlite3.Connection, table: str, n: int) -> bool:
    """Whether `table` holds more than `n` rows, without counting them all."""
    return conn.execute(f"SELECT 1 FROM main.{quote_ident(table)} LIMIT 1 OFFSET ?", (n,)).fetchone() is not None
