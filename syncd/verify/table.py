"""Compare one streaming table: find the keys that may differ cheaply, then decide
each of them exactly.

Finding (data-diff's approach): the key space is cut into chunks of `chunk_rows`
rows, each into CELLS cells, with boundaries sampled from SQLite in key order. Both
sides summarise every cell as (rows, sum of row hashes); only cells that disagree are
cut further, and small ones are compared key by key (each row's hash). Under
concurrent writes this finds every real difference plus rows merely in flight. A
table whose key does not sort alike on both sides is one range, compared key by key
when it differs (its keys and hashes are held in memory then).

Deciding: a candidate key is read from Postgres together with the checkpoint (one
snapshot: the checkpoint commits with the data it covers), then from SQLite together
with the changelog entries after that checkpoint (one read transaction). If the rows
match, the key is fine. If they differ and no change to the key was recorded after
the checkpoint, Postgres holds a value the stream can no longer explain: a real
difference. Otherwise the change is in flight: wait until the stream has applied it
(the checkpoint passes the changelog's end as read) and look again. The inference
needs every changelog entry after the checkpoint to still be there; pruning only
removes applied entries, so the round counts as conclusive only if the checkpoint
did not move meanwhile or no entry after it is missing (sequence numbers are dense).

Counting: rows are compared as multisets, never merged. Two SQLite rows whose keys
are distinct in SQLite but one key in Postgres (integer 1 and text '1' in a column
with no declared type, two spellings of one instant under a `timestamp` override)
are reported by key, each counted as missing: Postgres can hold only one of them.
Last, the row totals of both sides are taken at one checkpoint (the keys changed
after it set aside); a table is equal only if they agree too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from syncd.model import TableSpec
from syncd.postgres.bookkeeping import source_key
from syncd.printable import listed
from syncd.verify import sqlite_side
from syncd.verify.keyspace import _UNKNOWN as _UNKNOWN_FORM
from syncd.verify.keyspace import EVERYTHING, Bound, KeyRange, KeySpace, sqlite_value
from syncd.sqlite.audit import format_key
from syncd.verify.postgres_side import PgRow, PostgresTable, _extreme, checkpoint, counts_at_checkpoint, lock_holder, rows_at_checkpoint
from syncd.verify.result import DIFFERENT, EXTRA, MAX_LISTED, MISSING, PENDING, Difference, TableVerifyResult
from syncd.verify.rowhash import MISFIT, RowTokens, SqliteRowHash, fold, misfit_reason
from syncd.types import canonical, converter_of

CELLS = 64  # cells a chunk is summarised in: a differing row costs reading one cell (156 rows by default)
SPLIT = 16  # how many parts a differing range too big to read is cut into
LEAF_ROWS = 1000  # a differing range this small is read row by row
MAX_DEPTH = 12
UNINDEXED_CHUNKS = 16  # without a usable index every chunk scans the table: few, large chunks
MAX_CANDIDATES = 100_000  # beyond this, differences are counted as found, not re-checked one by one
LOOKAHEAD = 2  # chunks the SQLite side may run ahead of Postgres
LEAF_BATCH = 32  # ranges read row by row per batch (bounds the rows held at once)
POLL_SECONDS = 0.1

SqliteRun = Callable[..., Awaitable[Any]]

log = logging.getLogger("syncd.verify")


@dataclass
class Candidate:
    ident: tuple  # the key's tokens (the same from either side)
    kind: str  # what the range comparison saw
    raws: list[tuple] = field(default_factory=list)  # SQLite's forms (more than one: they share the Postgres key)
    pg: tuple | None = None  # Postgres's form

    @property
    def raw(self) -> tuple | None:
        return self.raws[0] if self.raws else None


@dataclass
class SqliteRow:
    row: tuple
    raw_key: tuple
    tokens: tuple[str, ...]


class TableCheck:
    def __init__(self, run: SqliteRun, pg: asyncpg.Connection, ks: KeySpace, tid: int, *, source: str,
                 target_schema: str, bk_schema: str, chunk_rows: int, utf8_database: bool = False):
        self.run = run
        self.pg = pg
        self.ks = ks
        self.spec: TableSpec = ks.spec
        self.tid = tid
        self.source = source
        self.bk_schema = bk_schema
        self.chunk_rows = chunk_rows
        self.pt = PostgresTable(pg, target_schema, ks, utf8_database)
        self.hasher = SqliteRowHash(self.spec, f"_syncd_verify_{tid}")
        self.tokens = RowTokens(self.spec)
        self.candidates: dict[tuple, Candidate] = {}
        self.overflow: Counter = Counter()  # kind -> differences beyond MAX_CANDIDATES
        self.rows_sqlite = 0
        self.rows_postgres = 0
        self.reverse = None  # after a cutover: what is in flight comes from the way back (reverse/evidence.py)
        # Whether a difference is only in columns computed where a repair writes (verify/source.py).
        self.computed_only: Callable[[Difference], bool] = lambda d: False

    # --- finding ---------------------------------------------------------------------

    async def find(self) -> None:
        await self.run(self.hasher.register)
        if not self.ks.orderable:
            differing = await self._scan_once(EVERYTHING)
        else:
            total = await self.run(sqlite_side.count_rows, self.spec)
            chunk = self.chunk_rows if self.ks.indexed else max(self.chunk_rows, math.ceil(total / UNINDEXED_CHUNKS))
            differing = await self._scan(max(1, math.ceil(chunk / CELLS)))
        await self._investigate(differing, depth=0)

    async def _investigate(self, differing: list[tuple[KeyRange, int, int]], depth: int) -> None:
        """Read small differing ranges row by row, in batches; cut the others again."""
        small = [r for r, s_rows, p_rows in differing if self._is_leaf(s_rows, p_rows, depth)]
        for i in range(0, len(small), LEAF_BATCH):
            await self._leaves(small[i : i + LEAF_BATCH])
        for r, s_rows, p_rows in differing:
            if not self._is_leaf(s_rows, p_rows, depth):
                await self._bisect(r, s_rows, p_rows, depth)

    def _is_leaf(self, s_rows: int, p_rows: int, depth: int) -> bool:
        return not self.ks.orderable or depth >= MAX_DEPTH or max(s_rows, p_rows) <= LEAF_ROWS

    async def _scan_once(self, r: KeyRange) -> list[tuple[KeyRange, int, int]]:
        sq, pg = await asyncio.gather(self.run(sqlite_side.cell_sums, self.ks, self.hasher, r, []),
                                      self.pt.cell_sums(r, []))
        return self._tally([(r, [])], [sq], [pg])

    async def _scan(self, cell_rows: int) -> list[tuple[KeyRange, int, int]]:
        """Summarise every chunk on both sides; returns the cells that differ.

        The two sides work through the chunks each at its own pace (the SQLite thread
        and the Postgres connection are separate CPUs' worth of work), at most
        LOOKAHEAD chunks apart so a chunk is read on both sides at nearly the same time."""
        chunks: list[tuple[KeyRange, list[Bound]]] = []
        sqlite_sums: list[list[tuple[int, int]]] = []
        pg_sums: dict[int, list[tuple[int, int]]] = {}
        ready: asyncio.Queue = asyncio.Queue(maxsize=LOOKAHEAD)

        async def sqlite_side_() -> None:
            lo: Bound | None = None
            while True:
                inner, hi = await self.run(sqlite_side.chunk_bounds, self.ks, lo, CELLS, cell_rows)
                r = KeyRange(lo, hi)
                chunks.append((r, inner))
                await ready.put(len(chunks) - 1)
                sqlite_sums.append(await self.run(sqlite_side.cell_sums, self.ks, self.hasher, r, inner))
                if hi is None:
                    break
                lo = hi
            await ready.put(None)  # on failure _together cancels the Postgres side instead

        async def postgres_side() -> None:
            while (i := await ready.get()) is not None:
                pg_sums[i] = await self.pt.cell_sums(*chunks[i])

        await _together(sqlite_side_(), postgres_side())
        return self._tally(chunks, sqlite_sums, [pg_sums[i] for i in range(len(chunks))])

    def _tally(self, chunks, sqlite_sums, pg_sums) -> list[tuple[KeyRange, int, int]]:
        differing = []
        for (r, inner), sq, pg in zip(chunks, sqlite_sums, pg_sums):
            for cell, (s_rows, s_sum), (p_rows, p_sum) in zip(sqlite_side.split(r, inner), sq, pg):
                self.rows_sqlite += s_rows
                self.rows_postgres += p_rows
                if s_rows != p_rows or fold(s_sum) != fold(p_sum):
                    differing.append((cell, s_rows, p_rows))
        return differing

    async def _cells(self, r: KeyRange, bounds: list[Bound], depth: int) -> None:
        sq, pg = await asyncio.gather(
            self.run(sqlite_side.cell_sums, self.ks, self.hasher, r, bounds),
            self.pt.cell_sums(r, bounds),
        )
        differing = [(cell, s_rows, p_rows)
                     for cell, (s_rows, s_sum), (p_rows, p_sum) in zip(sqlite_side.split(r, bounds), sq, pg)
                     if s_rows != p_rows or fold(s_sum) != fold(p_sum)]
        await self._investigate(differing, depth)

    async def _bisect(self, r: KeyRange, s_rows: int, p_rows: int, depth: int) -> None:
        biggest = max(s_rows, p_rows)
        step = math.ceil(biggest / SPLIT)
        if s_rows >= p_rows:  # cut where the rows are
            found = await self.run(sqlite_side.sample, self.ks, r, None, step)
            bounds = [self.ks.from_sqlite(k) for _, k in found]
        else:
            bounds = [self.ks.from_postgres(k) for _, k in await self.pt.sample(r, step)]
        usable = [b for b in bounds if b is not None]
        if not usable:
            await self._leaves([r])
            return
        await self._cells(r, usable, depth + 1)

    async def _leaves(self, ranges: list[KeyRange]) -> None:
        """Compare ranges key by key (by row hash; the rows themselves are read again,
        in full, only for the keys that differ), each side going through all of them
        at its own pace. Rows are grouped by key, never merged: a key with other than
        one row on each side is a candidate whatever the hashes say."""
        if not ranges:
            return
        # The ranges are disjoint: one key space for the batch, no matter which range.
        mine, prows = await asyncio.gather(self.run(self._sqlite_hashes, ranges), self.pt.range_hashes(ranges))
        nkey = len(self.ks.key)
        theirs: dict[tuple, list] = {}
        for p in prows:
            theirs.setdefault(tuple(p[nkey]), []).append(p)
        for ident in mine.keys() | theirs.keys():
            ss, ps = mine.get(ident, []), theirs.get(ident, [])
            if len(ss) == 1 and len(ps) == 1 and fold(ss[0][1]) == fold(ps[0][nkey + 1]):
                continue
            kind = MISSING if not ps else EXTRA if not ss else DIFFERENT
            self._candidate(ident, kind, [raw for raw, _ in ss], tuple(ps[0][:nkey]) if ps else None)

    def _sqlite_hashes(self, conn, ranges: list[KeyRange]) -> dict[tuple, list[tuple[tuple, int]]]:
        """On the SQLite thread: ident -> [(raw key, row hash), ...] of the rows in
        `ranges` (a row whose key has a NULL is counted by null_key_rows instead)."""
        keyed: dict[tuple, list[tuple[tuple, int]]] = {}
        for r in ranges:
            for row in sqlite_side.range_hashes(conn, self.ks, self.hasher, r):
                raw = tuple(row[:-1])
                if None in raw:
                    continue
                keyed.setdefault(self.ident(self.tokens.fast_key(raw), raw), []).append((raw, row[-1]))
        return keyed

    def _candidate(self, ident: tuple, kind: str, raws: list[tuple], pg: tuple | None) -> None:
        c = self.candidates.get(ident)
        if c is None:
            if len(self.candidates) >= MAX_CANDIDATES:
                self.overflow[kind] += max(1, len(raws))
                return
            self.candidates[ident] = c = Candidate(ident, kind)
        c.raws += [r for r in raws if r not in c.raws]
        c.pg = c.pg if pg is None else pg

    def _sqlite_row(self, row: tuple) -> "_Keyed":
        tokens = self.tokens.fast_row(row)
        raw_key = tuple(row[i] for i in self.tokens.key_idx)
        return _Keyed(self.ident(self.tokens.key_of_row(tokens), raw_key), SqliteRow(row, raw_key, tokens))

    def ident(self, key_tokens: tuple[str, ...] | None, raw_key: tuple) -> tuple:
        """A key's identity: its tokens; a key that cannot exist in Postgres keeps its
        SQLite values (two such keys must not collide)."""
        if key_tokens is None or MISFIT in key_tokens:
            return (MISFIT, *map(repr, raw_key))
        return key_tokens

    # --- deciding --------------------------------------------------------------------

    async def decide(self, wait_seconds: float) -> tuple[list[Difference], list[Difference], str | None]:
        """(differences, pending, why pending) for the candidates found."""
        if self.reverse is not None:  # cut over: changes travel from Postgres (reverse/evidence.py)
            return await self.reverse.decide(self, wait_seconds)
        deadline = time.monotonic() + wait_seconds
        open_ = dict(self.candidates)
        found: list[Difference] = []
        waited: set[tuple] = set()  # rows gone from SQLite with no entry, waited on once (_replaced_maybe)
        first_seq: int | None = None
        seq = entries = 0
        while open_:
            seq, prows = await rows_at_checkpoint(self.pt, self.bk_schema, self.source, self._pg_keys(open_))
            first_seq = seq if first_seq is None else first_seq
            lookups = [c.raws or self._raws_from_pg(c) for c in open_.values()]
            raws = [k for ks in lookups for k in ks]
            scan = any(not ks for ks in lookups)  # a key whose SQLite form is unknown: read them all
            ev = await self.run(sqlite_side.rows_with_evidence, self.spec, self.tid, raws, scan, seq)
            entries = ev.entries_after
            seq_after = await checkpoint(self.pg, self.bk_schema, self.source)
            complete = seq_after == seq or ev.entries_after == ev.max_seq - seq
            conclusive = complete and ev.changed_keys is not None and ev.max_seq >= seq
            changed = {self.ident(self.tokens.key(k), k) for k in (ev.changed_keys or [])}
            mine: dict[tuple, list[SqliteRow]] = {}
            for row in ev.rows:
                x = self._sqlite_row(row)
                if None not in x.row.raw_key:
                    mine.setdefault(x.tokens_key, []).append(x.row)
            theirs: dict[tuple, list[PgRow]] = {}
            for p in prows:
                theirs.setdefault(self.tokens.key_of_row(p.tokens), []).append(p)
            still: dict[tuple, Candidate] = {}
            for ident, c in open_.items():
                ss, ps = mine.get(ident, []), theirs.get(ident, [])
                if len(ss) > 1:  # SQLite alone decides this: no change in flight makes room for both
                    found += self._shared_key(c, ss)
                    continue
                if len(ps) > 1:
                    found.append(Difference(EXTRA, self._display_key(c), raw_key=None, repairable=False,
                                            note=f"{len(ps)} rows in Postgres have this key"))
                    continue
                s, p = (ss[0] if ss else None), (ps[0] if ps else None)
                if (s is None and p is None) or (s is not None and p is not None and s.tokens == p.tokens):
                    continue  # equal now
                in_flight = not conclusive or ident in changed or (
                    s is None and ident not in waited and self._replaced_maybe(ev.max_seq, seq))
                if not in_flight:
                    found.append(self._difference(c, s, p))
                    continue
                if s is None:
                    waited.add(ident)
                still[ident] = c
            log.debug("re-check %s: %d key(s) left of %d, checkpoint %d, changelog end %d, %s", self.spec.name,
                      len(still), len(open_), seq, ev.max_seq, "conclusive" if conclusive else "inconclusive")
            open_ = still
            if not open_ or time.monotonic() >= deadline:
                break
            if not await self._wait_for(ev.max_seq, deadline):
                break
        if not open_:
            return found, [], None
        pending = [self._pending(c) for c in open_.values()]
        return found, pending, await self._pending_reason(entries, first_seq, wait_seconds)

    def _replaced_maybe(self, max_seq: int, seq: int) -> bool:
        """Whether a row Postgres holds and SQLite no longer does, with no changelog entry
        of its own, may yet be in flight: an INSERT OR REPLACE through one of the table's
        unique sets removes the row it collides with without a trigger firing, and the
        stream removes it from Postgres when it applies the replacing row (collisions.py),
        an entry after checkpoint `seq`. Such a row is waited on once: still there once
        the stream has applied everything written before it was read, it is real."""
        return bool(self.spec.unique_sets) and max_seq > seq

    def _pg_keys(self, cands: dict[tuple, Candidate]) -> list[tuple]:
        keys = []
        for c in cands.values():
            if c.pg is None and c.raw is not None:
                b = self.ks.from_sqlite(c.raw)
                c.pg = b.pg if b is not None else None
            if c.pg is not None:
                keys.append(c.pg)
        return keys

    async def _wait_for(self, seq: int, deadline: float) -> bool:
        """Wait until the stream has applied everything up to `seq`."""
        while time.monotonic() < deadline:
            applied = await checkpoint(self.pg, self.bk_schema, self.source)
            if applied is not None and applied >= seq:
                return True
            await asyncio.sleep(POLL_SECONDS)
        return False

    async def _pending_reason(self, entries: int, first_seq: int | None, wait_seconds: float) -> str:
        now = await checkpoint(self.pg, self.bk_schema, self.source)
        text = f"{entries} change(s) not yet applied"
        if first_seq is not None and now == first_seq:
            holder = await lock_holder(self.pg, await source_key(self.pg, self.bk_schema, self.source, assign=False))
            if holder is None:
                text += f"; the checkpoint did not move in {wait_seconds:g} s: is the daemon running?"
            else:
                text += f"; the checkpoint did not move in {wait_seconds:g} s although {holder} runs the source"
        else:
            text += f"; still changing after {wait_seconds:g} s of waiting for the stream"
        return text

    def _display_key(self, c: Candidate) -> tuple:
        if c.raw is not None:
            return c.raw
        assert c.pg is not None
        b = self.ks.from_postgres(c.pg)
        if b is not None:
            return b.raw
        out = []
        for k, v in zip(self.ks.key, c.pg):
            r = sqlite_value(self.spec.column(k).pgtype, v, self.spec.column(k))
            out.append(v if r is _UNKNOWN_FORM else r)  # no known SQLite form: Postgres's own value
        return tuple(out)

    def _raw_key(self, c: Candidate) -> tuple | None:
        if c.raw is not None:
            return c.raw
        b = self.ks.from_postgres(c.pg) if c.pg is not None else None
        return b.raw if b is not None else None

    def _replay_key(self, pg: tuple | None) -> tuple | None:
        """For a row only Postgres holds under a key with no one SQLite form (a date or
        timestamp an override types: many spellings read as one instant), a spelling the
        stream reads as that very key, or None. Replayed, it deletes the row: the stream
        first looks the key up under its other spellings (key_identity.survivors)."""
        if pg is None:
            return None
        raw = []
        for k, v in zip(self.ks.key, pg):
            col = self.spec.column(k)
            r = sqlite_value(col.pgtype, v, col)
            if r is _UNKNOWN_FORM:
                if not isinstance(v, (dt.date, dt.datetime)) or _extreme(v):
                    return None  # asyncpg sends the first and last day (instant) as an infinity
                r = v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v.isoformat()
                try:
                    if canonical(col.pgtype, converter_of(col)(r)) != canonical(col.pgtype, v):
                        return None
                except ValueError:
                    return None
            raw.append(r)
        return tuple(raw)

    def _raws_from_pg(self, c: Candidate) -> list[tuple]:
        raw = self._raw_key(c)
        return [] if raw is None else [raw]

    def _shared_key(self, c: Candidate, rows: list[SqliteRow]) -> list[Difference]:
        """Distinct SQLite rows that are one key in Postgres: each is missing there
        (Postgres holds at most one of them), and a replay cannot fix that."""
        keys = [r.raw_key for r in rows]
        keys_listed = listed([format_key(k) for k in keys])
        note = (f"{len(keys)} SQLite rows, keys {keys_listed}, are one key in Postgres, "
                "which can hold only one of them; a replay cannot fix this: keep one spelling per key in SQLite")
        c.raws = keys
        return [Difference(MISSING, k, note=note, raw_key=k, repairable=False) for k in keys]

    def _difference(self, c: Candidate, s: SqliteRow | None, p: PgRow | None) -> Difference:
        if s is not None:
            c.raws = [s.raw_key]
        if p is not None:
            c.pg = p.key
        key = self._display_key(c)
        if p is None:
            assert s is not None
            return Difference(MISSING, key, note=self._misfits(s), raw_key=self._raw_key(c), pg_key=c.pg)
        if s is None:
            tokens = self.tokens.key_of_row(p.tokens)
            if any(t[1:].lstrip("-") == "infinity" for t in tokens):
                # An infinity reads as the first or last day in Python: no SQLite key is it,
                # and a replay by key would reach the day's row instead.
                key = tuple(t[1:] if t[1:].lstrip("-") == "infinity" else v for t, v in zip(tokens, key))
                return Difference(EXTRA, key, raw_key=None, pg_key=c.pg, repairable=False,
                                  note="no SQLite value is infinity, and a replay cannot remove the row: "
                                       "delete it in Postgres")
            return Difference(EXTRA, key, raw_key=self._raw_key(c) or self._replay_key(c.pg), pg_key=c.pg)
        cols = tuple(name for name, a, b in zip(self.spec.column_names, s.tokens, p.tokens) if a != b)
        return Difference(DIFFERENT, key, cols, note=self._misfits(s), raw_key=self._raw_key(c), pg_key=c.pg)

    def _misfits(self, s: SqliteRow) -> str | None:
        for col, value, tok in zip(self.spec.columns, s.row, s.tokens):
            if tok == MISFIT:
                why = misfit_reason(col.pgtype, value, converter_of(col)) or "does not fit"
                if self.reverse is not None:  # cut over: no stream reads SQLite's rows any more
                    return f'column "{col.name}": {why}; `syncd verify --repair` writes Postgres\'s row over it'
                return f'column "{col.name}": {why}; the stream holds the table until the row is fixed'
        return None

    def _pending(self, c: Candidate) -> Difference:
        return Difference(PENDING, self._display_key(c), note=f"looked {c.kind}", raw_key=self._raw_key(c),
                          pg_key=c.pg)

    # --- the whole table -----------------------------------------------------------------

    async def check(self, result: TableVerifyResult, wait_seconds: float) -> None:
        await self.find()
        result.rows_sqlite, result.rows_postgres = self.rows_sqlite, self.rows_postgres
        if any(not self.spec.column(k).notnull for k in self.spec.key):
            nulls = await self.run(sqlite_side.null_key_rows, self.spec)
            for _ in range(nulls):
                result.add(Difference(MISSING, tuple(None for _ in self.spec.key),
                                      note="a row whose key is NULL: Postgres cannot hold it"))
        found, pending, reason = await self.decide(wait_seconds)
        for d in sorted(found + pending, key=key_order):  # listed (and cut at MAX_LISTED) in key order
            if len(result.differences) >= MAX_LISTED and self.computed_only(d):
                result.computed_unlisted += 1
            result.add(d)
        if reason:
            result.reason = reason
        await self._totals(result, wait_seconds)
        if self.overflow:
            result.missing += self.overflow[MISSING]
            result.extra += self.overflow[EXTRA]
            result.different += self.overflow[DIFFERENT]
            more = sum(self.overflow.values())
            note = f"{more} further difference(s) counted as found, not re-checked one by one (over {MAX_CANDIDATES})"
            result.add_reason(note)
        result.compared = True


    async def _totals(self, result: TableVerifyResult, wait_seconds: float) -> None:
        """Row totals at one checkpoint, into the result and into the verdict.

        The range scan's totals add up chunks read at different moments; these are
        read at one checkpoint, with the keys changed after it counted apart on both
        sides (their rows are in flight). If no key was found to differ, the rest
        must count the same: otherwise rows went missing in a way no key showed, and
        the table is not equal."""
        if self.reverse is not None:
            await self.reverse.totals(self, result, wait_seconds)
            return
        deadline = time.monotonic() + max(1.0, wait_seconds)
        while True:
            t = await counts_at_checkpoint(self.pt, self.bk_schema, self.source,
                                           lambda seq: self.run(sqlite_side.counts_with_changes, self.spec, self.tid, seq))
            if t is not None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL_SECONDS)
        if t is None:  # the changelog moved under every attempt
            if result.mismatched == 0 and self.rows_sqlite != self.rows_postgres:
                result.pending += abs(self.rows_sqlite - self.rows_postgres)
                note = (f"row totals differ ({self.rows_sqlite} in SQLite, {self.rows_postgres} in Postgres) and "
                        f"could not be taken at one checkpoint in {max(1.0, wait_seconds):g} s")
                result.add_reason(note)
            return
        result.rows_sqlite, result.rows_postgres = t.sqlite_rows, t.postgres_rows
        gap = t.sqlite_settled - t.postgres_settled
        if gap == 0 and t.sqlite_rows != t.postgres_rows:
            result.in_flight = (f"the totals differ by rows in flight: the {t.sqlite_settled} not changed since "
                                f"checkpoint {t.seq} count alike on both sides")
        if gap == 0 or result.mismatched:
            return
        if gap < 0 and t.in_flight and self.spec.unique_sets:
            # Rows an INSERT OR REPLACE removed through a unique set have no entry of their
            # own: until the stream applies the replacing rows, they are extra in flight.
            result.pending += -gap
            note = (f"at checkpoint {t.seq}, {-gap} row(s) more in Postgres than in SQLite, no key found to differ, "
                    "while changes were in flight: rows an INSERT OR REPLACE removed may not be applied yet")
            result.add_reason(note)
            return
        if gap > 0:
            result.missing += gap
        else:
            result.extra += -gap
        note = (f"at checkpoint {t.seq}, {t.sqlite_settled} row(s) in SQLite and {t.postgres_settled} in Postgres "
                f"(keys changed since set aside), yet no key was found to differ; run `syncd resync` for the table")
        result.add_reason(note)
        log.warning("%s: %s", self.spec.name, note)


def key_order(d: Difference) -> tuple:
    """Sort key for differences: by key, values of different kinds kept apart."""
    def one(v: Any) -> tuple:
        if v is None:
            return (0, 0)
        if isinstance(v, (int, float)):
            return (1, v)
        if isinstance(v, str):
            return (2, v)
        if isinstance(v, bytes):
            return (3, v)
        return (4, repr(v))

    return tuple(one(v) for v in d.key)


async def _together(*coros) -> None:
    """Run coroutines concurrently; if one fails, cancel the others and raise its error."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception() is not None:
                raise t.exception()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class _Keyed:
    tokens_key: tuple
    row: SqliteRow
