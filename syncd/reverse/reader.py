"""Read the reverse stream's batches out of Postgres: changelog entries that certainly
committed, and the current rows they point at, from one snapshot.

One REPEATABLE READ, READ ONLY transaction per batch. Its snapshot S bounds what the
batch may take: entries visible in S and not in the checkpoint's `done` snapshot,
in (txid, seq) order (see checkpoint.py). The rows are read in S as well, so each
key's row is at least as new as every entry taken for it: applying a key's current
row covers all its changes so far (present -> upsert, absent -> delete), and the
changes of transactions still running are taken later, when they are visible.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from syncd.identifiers import qualified, quote_pg_ident
from syncd.model import TableSpec, entries_within_values
from syncd.reverse.capture import OP_INSERT, OP_TRUNCATE, REPAIR_COPY, Names
from syncd.reverse.checkpoint import ReverseCheckpoint
from syncd.reverse.values import OutOfRange, pg_token
from syncd.types import VARIABLE_WIDTH, PgType

# Output settings a session reading keys back needs (the capture functions use the same).
SESSION_SETTINGS = (
    "SET extra_float_digits = 3", "SET bytea_output = 'hex'", "SET datestyle = 'ISO, YMD'",
    "SET intervalstyle = 'postgres'", "SET timezone = 'UTC'",
)


LOCAL_SETTINGS = "; ".join(s.replace("SET ", "SET LOCAL ", 1) for s in SESSION_SETTINGS)


@dataclass(frozen=True)
class SourceTable:
    """One table as the reader reaches it in Postgres."""

    tid: int
    spec: TableSpec
    key_types: tuple[str, ...]  # format_type() of each key column in Postgres
    families: tuple[PgType | None, ...] = ()  # each column's value family in Postgres (spec order)

    def key_families(self) -> tuple[PgType | None, ...]:
        return tuple(self.families[i] for i in self.spec.key_indexes) if self.families else ()


# asyncpg makes Python dates and datetimes of date and timestamp values, which hold the
# years 1 to 9999; one value outside them (a BC date, the year 10000) would fail the
# whole statement, every time it is read. And it decodes Postgres's infinities as those
# years' first and last day (or instant), the very values a "valid until 9999-12-31"
# holds. So only finite values in the years 1 to 9999 are selected as they are: any
# other is selected as NULL and its text beside the others, and reaches the applier as
# values.OutOfRange (its table is held, naming the key and the column), and a last day
# that arrives as a value is that day, never an infinity.
_YEARS_1_TO_9999 = {
    PgType.DATE: "DATE '0001-01-01' AND DATE '9999-12-31'",
    PgType.TIMESTAMP: "TIMESTAMP '0001-01-01' AND TIMESTAMP '9999-12-31 23:59:59.999999'",
    PgType.TIMESTAMPTZ: "TIMESTAMPTZ '0001-01-01 00:00+00' AND TIMESTAMPTZ '9999-12-31 23:59:59.999999+00'",
}


@dataclass(frozen=True)
class Selected:
    """A select list whose dates and timestamps are guarded (see _YEARS_1_TO_9999)."""

    sql: str
    guarded: tuple[int, ...]  # positions in the list whose text, if out of range, follows it

    def values(self, r: Sequence) -> tuple:
        """The list's values out of a record slice starting at its first expression."""
        if not self.guarded:
            return tuple(r)
        n = len(r) - len(self.guarded)
        out = list(r[:n])
        for pos, text in zip(self.guarded, r[n:]):
            if text is not None:
                out[pos] = OutOfRange(text)
        return tuple(out)


def select_list(exprs: Sequence[str], families: Sequence[PgType | None]) -> Selected:
    """`exprs` (Postgres values of `families`; none known: nothing guarded)."""
    cols, texts, guarded = [], [], []
    for i, (e, fam) in enumerate(zip(exprs, families or [None] * len(exprs))):
        years = _YEARS_1_TO_9999.get(fam) if fam is not None else None
        if years is None:
            cols.append(e)
            continue
        fits = f"(isfinite({e}) AND {e} BETWEEN {years})"
        cols.append(f"CASE WHEN {fits} THEN {e} END")
        texts.append(f"CASE WHEN NOT {fits} THEN ({e})::text END")
        guarded.append(i)
    return Selected(", ".join(cols + texts), tuple(guarded))


@dataclass
class TableBatch:
    tid: int
    name: str
    rows: list[tuple] = field(default_factory=list)  # current Postgres rows, spec column order
    deletes: list[tuple] = field(default_factory=list)  # keys (Postgres values) with no row now
    truncated: bool = False  # a TRUNCATE in the batch: the table is copied again instead
    copy_reason: str = ""  # why, as the first such entry says (copy_reason)
    ops: Counter = field(default_factory=Counter)

    @property
    def size(self) -> int:
        return len(self.rows) + len(self.deletes)


@dataclass
class ReverseBatch:
    before: ReverseCheckpoint
    after: ReverseCheckpoint
    entries: int = 0
    tables: dict[int, TableBatch] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)  # tid -> entries of tables not followed now
    first_at: dict[int, float] = field(default_factory=dict)  # tid -> when its oldest entry was written (Postgres clock)
    oldest_at: float | None = None  # when the oldest entry taken was written (Postgres clock)
    newest_at: float | None = None
    clock_offset: float = 0.0  # Postgres clock minus this host's, when the batch was read

    @property
    def empty(self) -> bool:
        return self.entries == 0


def _rows_sql(schema: str, st: SourceTable, budget: int | None = None) -> tuple[str, Selected]:
    """The current rows of keys given as text arrays, in the arrays' order: per key its
    ordinal, whether the row found has the key's very spelling, the key and the row's
    values (see Selected). `budget`: the table's value_bytes_sql() (bytes of its
    variable-width values) follows the flag, and rows stop after the one whose bytes,
    added to the rows' before it, pass `budget` (the rest are never sent)."""
    spec = st.spec
    nkey = len(spec.key)
    cols = ", ".join(f"k{i}" for i in range(nkey))
    arrays = ", ".join(f"${i + 1}::text[]" for i in range(nkey))
    typed = [f"c.k{i}::{t}" for i, t in enumerate(st.key_types)]
    on = " AND ".join(f"t.{quote_pg_ident(k)} = c.k{i}::{st.key_types[i]}" for i, k in enumerate(spec.key))
    # A non-deterministic collation (or citext) can match a row whose key is spelled
    # otherwise: that key is gone; the row found has an entry of its own. The spelling is
    # compared byte for byte: a column's collation (a cutover's NOCASE) survives ::text.
    exact = " AND ".join(f'(t.{quote_pg_ident(k)}::text COLLATE "C") = c.k{i}' for i, k in enumerate(spec.key))
    values = [f"t.{quote_pg_ident(c)}" for c in spec.column_names]
    sel = select_list(typed + values, st.key_families() + st.families if st.families else ())
    source = (f"FROM unnest({arrays}) WITH ORDINALITY AS c({cols}, ord) "
              f"LEFT JOIN {qualified(schema, spec.name)} AS t ON {on}")
    if budget is None:
        return f"SELECT c.ord, coalesce({exact}, false), {sel.sql} {source} ORDER BY c.ord", sel
    size = value_bytes_sql(st, "t")
    # The running total is of sizes only: the values themselves stay in Postgres's
    # TOAST until a row is sent. The list is renamed as a whole: a column may be called anything.
    out = [f"v{i}" for i in range(len(typed) + len(values) + len(sel.guarded))]
    return (f"SELECT o, x, n, {', '.join(out)} FROM (SELECT c.ord, coalesce({exact}, false), {size}, "
            f"sum({size}) OVER (ORDER BY c.ord), {sel.sql} {source}) AS s(o, x, n, upto, {', '.join(out)}) "
            f"WHERE upto - n <= ${nkey + 1}::bigint ORDER BY o"), sel


def sized_columns(st: SourceTable) -> tuple[int, ...]:
    """Positions (spec order) of the columns whose values may be of any length in Postgres
    (types.VARIABLE_WIDTH): a table without any is read without being measured."""
    families = st.families or tuple(c.pgtype for c in st.spec.columns)
    return tuple(i for i, fam in enumerate(families) if fam in VARIABLE_WIDTH)


def value_bytes_sql(st: SourceTable, alias: str) -> str:
    """SQL of the bytes a row's variable-width values weigh, as octet_length() reads them
    (of a text or bytea from its TOAST header, without reading the value)."""
    families = st.families or tuple(c.pgtype for c in st.spec.columns)
    parts = []
    for i in sized_columns(st):
        ref = f"{alias}.{quote_pg_ident(st.spec.columns[i].name)}"
        parts.append(f"coalesce(octet_length({ref}{'' if families[i] == PgType.BYTEA else '::text'}), 0)")
    return "(" + " + ".join(parts) + ")"


async def read_batch(conn: asyncpg.Connection, names: Names, schema: str, tables: dict[int, SourceTable],
                     cp: ReverseCheckpoint, limit: int) -> ReverseBatch:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute(LOCAL_SETTINGS)  # the key text compared below is spelled as the triggers spell it
        now_snap, pg_now = await conn.fetchrow(
            "SELECT txid_current_snapshot()::text, extract(epoch FROM clock_timestamp())::float8")
        offset = pg_now - time.time()
        target = cp.target or now_snap
        after = cp.after or (0, 0)
        entries = await conn.fetch(
            f"SELECT txid, seq, tid, op, key, extract(epoch FROM at) FROM {names.changelog} "
            "WHERE txid >= txid_snapshot_xmin($1::text::txid_snapshot) "
            "AND txid < txid_snapshot_xmax($2::text::txid_snapshot) "
            "AND NOT txid_visible_in_snapshot(txid, $1::text::txid_snapshot) "
            "AND txid_visible_in_snapshot(txid, $2::text::txid_snapshot) AND (txid, seq) > ($3, $4) "
            "ORDER BY txid, seq LIMIT $5",
            cp.done, target, after[0], after[1], limit)
        # A wide table's changes are cut to about as many values as `limit` narrow ones:
        # the rest are read by the next batch, as when the limit itself is reached.
        keep = entries_within_values((e[2] for e in entries), limit,
                                     {tid: len(st.spec.columns) for tid, st in tables.items()})
        complete = len(entries) < limit and keep is None
        entries = entries if keep is None else entries[:keep]
        if not entries:
            return ReverseBatch(before=cp, after=cp.advanced(target, cp.after, complete), clock_offset=offset)
        wanted = _wanted(tables, entries)
        read, cut = await _read_sized(conn, schema, wanted, len(entries))
        if cut < len(entries):  # large rows: the rest are read by the next batch, as when the limit is reached
            entries, complete = entries[:cut], False
        batch = ReverseBatch(before=cp, after=cp.advanced(target, (entries[-1][0], entries[-1][1]), complete),
                             entries=len(entries), clock_offset=offset)
        await _fill(conn, schema, wanted, read, batch, entries)
        return batch


# About this many bytes of values make one batch of the way back at most (a batch is one
# SQLite transaction, holding SQLite's write lock while it is written): a batch of large
# rows is cut short, as a wide table's is, and the rest is read by the next batch. The
# rows of tables with variable-width columns are measured in Postgres (value_bytes_sql)
# before they are sent: a batch never reads much more than this into memory.
BATCH_VALUE_BYTES = 32 * 1024 * 1024


def copy_reason(key: list | None) -> str:
    """Why an OP_TRUNCATE entry has the table copied again, from its key (capture.KEY_GONE)."""
    if key is None:
        return "emptied in Postgres (TRUNCATE)"
    if list(key) == REPAIR_COPY:
        return "asked for by `syncd verify --repair`"
    return "written in Postgres while its key column was renamed or dropped"


@dataclass
class _Wanted:
    """One followed table's part of a batch's entries: each key's first op and the
    position of its first entry, and the position of its first TRUNCATE (keys first seen
    after it are never read: the table is copied again if the batch reaches it)."""

    st: SourceTable
    keys: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    truncated_at: int | None = None
    copy_key: list | None = None  # that entry's key: why the table is copied again (copy_reason)

    def before(self, cut: int) -> list[tuple[tuple, int, int]]:
        """(key, first op, position) of the keys first seen before position `cut`, in order."""
        return [(k, op, pos) for k, (op, pos) in self.keys.items() if pos < cut]


def _wanted(tables: dict[int, SourceTable], entries: list) -> dict[int, _Wanted]:
    wanted: dict[int, _Wanted] = {}
    for pos, (_txid, _seq, tid, op, key, _at) in enumerate(entries):
        st = tables.get(tid)
        if st is None:
            continue
        w = wanted.get(tid)
        if w is None:
            w = wanted[tid] = _Wanted(st)
        if op == OP_TRUNCATE:
            if w.truncated_at is None:
                w.truncated_at, w.copy_key = pos, key
        elif w.truncated_at is None:
            w.keys.setdefault(tuple(key), (op, pos))  # the first op says insert or not
    return wanted


async def _read_sized(conn: asyncpg.Connection, schema: str, wanted: dict[int, _Wanted],
                      n: int) -> tuple[dict[int, list[tuple[tuple, int, int, asyncpg.Record]]], int]:
    """The rows of the tables with variable-width columns, read first, each within
    BATCH_VALUE_BYTES (Postgres stops sending a table's rows after the one passing it),
    and where the batch of `n` entries ends: before the first entry (never the first of
    all) whose row brings the batch's values past BATCH_VALUE_BYTES. A table whose rows
    passed the budget has placed the end at that row at the latest, so each table read
    after it is asked only for the keys before the end, and the rows read beyond it are
    dropped as it moves earlier: about twice the budget at most is held at once.
    Returns, per table read, (key, first op, position of its first entry, record)."""
    budget = BATCH_VALUE_BYTES
    sizes: dict[int, int] = {}  # position of a key's first entry -> bytes its row brought
    read: dict[int, list[tuple[tuple, int, int, asyncpg.Record]]] = {}
    cut = n
    for tid, w in wanted.items():
        ordered = w.before(cut)
        if not ordered or not sized_columns(w.st):
            continue
        sql, _sel = _rows_sql(schema, w.st, budget)
        got = []
        for r in await conn.fetch(sql, *[list(col) for col in zip(*(k for k, _, _ in ordered))], budget):
            key, op, pos = ordered[r[0] - 1]
            sizes[pos] = sizes.get(pos, 0) + r[2]
            got.append((key, op, pos, r))
        read[tid] = got
        spent = 0
        for pos in sorted(sizes):
            spent += sizes[pos]
            if spent > budget:
                cut = min(cut, max(pos, 1))
                break
        if cut < n:
            read = {t: [x for x in rows if x[2] < cut] for t, rows in read.items()}
    return read, cut


async def _fill(conn: asyncpg.Connection, schema: str, wanted: dict[int, _Wanted],
                read: dict[int, list[tuple[tuple, int, int, asyncpg.Record]]], batch: ReverseBatch,
                entries: list) -> None:
    """Put the rows of `entries` (the batch's, read by _read_sized or now) into `batch`."""
    stamps = [float(e[5]) for e in entries]
    batch.oldest_at, batch.newest_at = min(stamps), max(stamps)
    for _txid, _seq, tid, _op, _key, at in entries:
        batch.first_at.setdefault(tid, float(at))  # in (txid, seq) order: commits of one table may come out of time order
        batch.first_at[tid] = min(batch.first_at[tid], float(at))
        if tid not in wanted:
            batch.skipped[tid] += 1
        elif tid not in batch.tables:
            batch.tables[tid] = TableBatch(tid, wanted[tid].st.spec.name)
    cut = len(entries)
    for tid, tb in batch.tables.items():
        w = wanted[tid]
        if w.truncated_at is not None and w.truncated_at < cut:
            tb.truncated = True  # copied again in full: its rows and keys are not needed
            tb.copy_reason = copy_reason(w.copy_key)
            continue
        sql, sel = _rows_sql(schema, w.st)
        rows = read.get(tid)
        if rows is None:  # a table of fixed-width columns only: read as it is, never measured
            ordered = w.before(cut)
            if not ordered:
                continue
            rows = [(*ordered[r[0] - 1], r) for r in await conn.fetch(
                sql, *[list(col) for col in zip(*(k for k, _, _ in ordered))])]
            first = 2
        else:
            first = 3  # after the row's bytes
        nkey = len(w.st.spec.key)
        for _key, first_op, _pos, r in rows:
            got = sel.values(r[first:])
            if r[1]:
                tb.rows.append(got[nkey:])
                tb.ops["insert" if first_op == OP_INSERT else "update"] += 1
            else:
                tb.deletes.append(got[:nkey])
                tb.ops["delete"] += 1


UNCOVERED = ("txid >= txid_snapshot_xmin($1::text::txid_snapshot) "
             "AND NOT txid_visible_in_snapshot(txid, $1::text::txid_snapshot) "
             "AND NOT ($2::text IS NOT NULL AND txid_visible_in_snapshot(txid, $2::text::txid_snapshot) "
             "AND (txid, seq) <= ($3, $4))")


async def pending(conn: asyncpg.Connection, names: Names, cp: ReverseCheckpoint) -> tuple[int, float]:
    """(entries the checkpoint does not cover, seconds since the oldest of them was
    written; 0 when none). A batch split over several SQLite transactions counts down
    as its parts are applied."""
    after = cp.after or (0, 0)
    row = await conn.fetchrow(
        f"SELECT count(*), extract(epoch FROM clock_timestamp() - min(at)) FROM {names.changelog} WHERE {UNCOVERED}",
        cp.done, cp.target, after[0], after[1])
    return int(row[0]), max(0.0, float(row[1] or 0.0))


async def oldest_uncovered(conn: asyncpg.Connection, names: Names, cp: ReverseCheckpoint, tid: int) -> float | None:
    """Seconds since the oldest of a table's entries the checkpoint does not cover was
    written; None when it has none."""
    after = cp.after or (0, 0)
    age = await conn.fetchval(
        f"SELECT extract(epoch FROM clock_timestamp() - min(at)) FROM {names.changelog} WHERE {UNCOVERED} "
        "AND tid = $5", cp.done, cp.target, after[0], after[1], tid)
    return None if age is None else max(0.0, float(age))


async def truncated_tids(conn: asyncpg.Connection, names: Names, cp: ReverseCheckpoint) -> set[int]:
    """Tables with a TRUNCATE the checkpoint does not cover yet: the stream copies each
    again once it reads that entry."""
    after = cp.after or (0, 0)
    rows = await conn.fetch(f"SELECT DISTINCT tid FROM {names.changelog} WHERE op = {OP_TRUNCATE} AND {UNCOVERED}",
                            cp.done, cp.target, after[0], after[1])
    return {r[0] for r in rows}


async def behind_seconds(conn: asyncpg.Connection, names: Names) -> float:
    """Seconds since the oldest of the source's held or paused tables (also one being
    copied again after its hold) stopped following Postgres: its behind_since, as the
    daemon noted it (kept across its retries), or its bookkeeping row's last save where a
    syncd before that column left none; 0 when none is. A paused table's behind_since is
    its oldest change not applied: none yet while it has missed none."""
    age = await conn.fetchval(
        "SELECT extract(epoch FROM clock_timestamp() - min(coalesce((to_jsonb(t)->>'behind_since')::timestamptz, "
        "CASE WHEN t.state = 'held' OR (t.state = 'paused' AND NOT to_jsonb(t) ? 'behind_since') "
        "THEN t.updated_at END))) "
        f"FROM {quote_pg_ident(names.bk)}.tables t WHERE t.source = $1 AND t.state IN ('held', 'paused', 'loading')",
        names.source)
    return max(0.0, float(age or 0.0))


async def prune(conn: asyncpg.Connection, names: Names, done: str, n: int) -> int:
    """Delete the entries SQLite has applied (visible in its checkpoint's `done`), and
    record that checkpoint's n with them (a file with a lower one lacks what went)."""
    return await conn.fetchval(
        f"WITH gone AS (DELETE FROM {names.changelog} WHERE txid < txid_snapshot_xmax($1::text::txid_snapshot) "
        "AND txid_visible_in_snapshot(txid, $1::text::txid_snapshot) RETURNING 1), "
        f"noted AS (UPDATE {names.registry} SET pruned_n = greatest(pruned_n, $2) WHERE source = $3) "
        "SELECT count(*) FROM gone", done, n, names.source)


async def read_keys(conn: asyncpg.Connection, schema: str, st: SourceTable,
                    keys: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """Current rows for keys given as Postgres values: (rows found, keys with no row),
    each key of the second list as given."""
    spec = st.spec
    arrays = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(st.key_types))
    cols = ", ".join(f"k{i}" for i in range(len(spec.key)))
    on = " AND ".join(f"t.{quote_pg_ident(k)} = c.k{i}" for i, k in enumerate(spec.key))
    sel = select_list([f"t.{quote_pg_ident(c)}" for c in spec.column_names], st.families)
    sql = (f"SELECT t.ctid IS NOT NULL, c.ord, {sel.sql} "
           f"FROM unnest({arrays}) WITH ORDINALITY AS c({cols}, ord) "
           f"LEFT JOIN {qualified(schema, spec.name)} AS t ON {on}")
    rows, missing = [], []
    families = st.families or tuple(c.pgtype for c in spec.columns)
    kfam = [families[i] or spec.columns[i].pgtype for i in spec.key_indexes]

    def token(key) -> tuple:
        return tuple(pg_token(f, v) for f, v in zip(kfam, key))

    try:
        got = await conn.fetch(sql, *[list(col) for col in zip(*keys)])
    except asyncpg.DataError:  # a key Postgres's type cannot hold ('not-a-uuid' for a uuid key)
        if len(keys) == 1:
            return [], [tuple(keys[0])]  # no Postgres row can have it
        half = len(keys) // 2
        first, second = await read_keys(conn, schema, st, keys[:half]), await read_keys(conn, schema, st, keys[half:])
        return first[0] + second[0], first[1] + second[1]
    for r in got:
        asked = tuple(keys[r[1] - 1])
        row = sel.values(r[2:]) if r[0] else None
        # A case-insensitive collation (a cutover's NOCASE) or citext finds the row of
        # another spelling ('SALES' for 'Sales'): to SQLite that is another key, and this
        # one is gone. So does a key passed through the column's type (a TEXT key Postgres
        # retyped to uuid or character(n)): 'ABC…'::uuid finds the row the way back writes
        # as 'abc…', and 'c1'::character(8) the one it writes as 'c1      '. The key is
        # compared as given, never as Postgres's type spells it back.
        if row is not None and token(tuple(row[i] for i in spec.key_indexes)) == token(asked):
            rows.append(row)
        else:
            missing.append(asked)
    return rows, missing


async def read_chunk(conn: asyncpg.Connection, schema: str, st: SourceTable, after: tuple | None,
                     limit: int) -> tuple[list[tuple], bool]:
    """Up to `limit` rows in key order after key `after` (a reload's next chunk), and
    whether they end the table. A table with variable-width columns is read within
    BATCH_VALUE_BYTES: Postgres stops sending after the row whose values pass it (its
    running total worked out from value_bytes_sql(), the values left in TOAST), so a
    chunk of large rows is cut short and the rest is read by the next chunk."""
    spec = st.spec
    keys = ", ".join(quote_pg_ident(k) for k in spec.key)
    sel = select_list([quote_pg_ident(c) for c in spec.column_names], st.families)
    where, args = "", []
    if after is not None:
        marks = ", ".join(f"${i + 1}::{t}" for i, t in enumerate(st.key_types))
        where, args = f"WHERE ({keys}) > ({marks}) ", list(after)
    source = f"FROM {qualified(schema, spec.name)} AS t {where}"
    if not sized_columns(st):  # fixed-width columns only: read as it is, never measured
        rows = [sel.values(r) for r in await conn.fetch(
            f"SELECT {sel.sql} {source}ORDER BY {keys} LIMIT ${len(args) + 1}", *args, limit)]
        return rows, len(rows) < limit
    size = value_bytes_sql(st, "t")
    # Qualified, the keys cannot meet an output's name (a key column called "sum").
    ordered = ", ".join(f"t.{quote_pg_ident(k)}" for k in spec.key)
    out = [f"v{i}" for i in range(len(spec.column_names) + len(sel.guarded))]  # a column may be called anything
    got = await conn.fetch(
        f"SELECT n, {', '.join(out)} FROM (SELECT row_number() OVER w, {size}, sum({size}) OVER w, {sel.sql} "
        f"{source}WINDOW w AS (ORDER BY {ordered}) ORDER BY {ordered} LIMIT ${len(args) + 1}) "
        f"AS s(o, n, upto, {', '.join(out)}) WHERE upto - n <= ${len(args) + 2}::bigint ORDER BY o",
        *args, limit, BATCH_VALUE_BYTES)
    # Rows stopped short of `limit` end the table unless the budget stopped them.
    ended = len(got) < limit and sum(r[0] for r in got) <= BATCH_VALUE_BYTES
    return [sel.values(r[1:]) for r in got], ended
