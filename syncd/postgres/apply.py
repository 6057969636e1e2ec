"""Write changes into Postgres: upserts and deletes by key, and snapshot COPY.

Small batches go through one statement over unnest()ed arrays (one round trip);
large ones are COPYed into a per-connection temp table and merged from there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import asyncpg

from syncd.identifiers import qualified, quote_pg_ident
from syncd.model import TableSpec
from syncd.types import VARIABLE_WIDTH, PgType

COPY_THRESHOLD = 200  # rows; bench/stream.py measures COPY+merge ahead of unnest() from ~50-200 rows
# Postgres refuses (and closes the connection on) a protocol message over 1 GB, so one
# unnest() statement carries at most about this many characters/bytes of values: rows
# large together go out in several statements of the same transaction.
STATEMENT_VALUE_BYTES = 128 * 1024 * 1024


def _value_size(row: tuple) -> int:
    return sum(len(v) * (4 if isinstance(v, str) else 1) if isinstance(v, (str, bytes, bytearray, memoryview))
               else 8 for v in row)


def statement_parts(records: list[tuple], cap: int = STATEMENT_VALUE_BYTES) -> list[list[tuple]]:
    """`records` in consecutive parts whose values stay within `cap` bytes (at worst
    4 bytes per character of text), one row at least per part."""
    parts: list[list[tuple]] = [[]]
    spent = 0
    for r in records:
        n = _value_size(r)
        if parts[-1] and spent + n > cap:
            parts.append([])
            spent = 0
        parts[-1].append(r)
        spent += n
    return parts


def _array_type(pgtype: str) -> str:
    return f"{pgtype}[]"


class TableWriter:
    """Prepared SQL for one replicated table on one connection.

    `computed`: the columns Postgres generates (PgTable.generated), as a column the
    application made GENERATED ALWAYS AS (...) STORED after a cutover is once SQLite is
    the application's again. Postgres refuses any value there, so every write leaves
    them out (the upsert, its stage, a load's COPY) and Postgres computes them from the
    row; verification still compares them with SQLite's values."""

    def __init__(self, schema: str, spec: TableSpec, tid: int, computed: frozenset[str] = frozenset()):
        self.spec = spec
        self.schema = schema
        self.table = qualified(schema, spec.name)
        # Positions in a record (spec's columns) of the values written: all but `computed`.
        self.written = tuple(i for i, c in enumerate(spec.columns) if c.name not in computed)
        self.written_names = [spec.columns[i].name for i in self.written]
        cols = [quote_pg_ident(n) for n in self.written_names]
        types = [spec.columns[i].pgtype.value for i in self.written]
        # Connections are borrowed from a pool, each with temp tables of its own: a stage
        # named for its shape is always the right one on whichever connection a batch gets.
        shape = hashlib.blake2b(repr((cols, types)).encode(), digest_size=6).hexdigest()
        self.stage = quote_pg_ident(f"_syncd_stage_{tid}_{shape}")
        self.stage_columns = ", ".join(f"{c} {t}" for c, t in zip(cols, types))
        key = [quote_pg_ident(k) for k in spec.key]
        non_key = [quote_pg_ident(n) for n in self.written_names if n not in spec.key]
        # A double precision key is set too: Postgres's = holds -0 and 0 as one key, as
        # SQLite does, and the row must take the zero SQLite now has (0.0 -> -0.0 is no
        # key change to either side, but a change of value).
        non_key += [quote_pg_ident(k) for k in spec.key
                    if spec.column(k).pgtype is PgType.DOUBLE and k not in computed]
        # A text key column may compare case-insensitively in Postgres (a cutover's NOCASE,
        # kept after a rollback), where SQLite tells 'é' from 'É' apart: a row is matched
        # only under exactly its own key, byte for byte. An upsert that lands on another
        # spelling's row changes nothing there, and is counted and refused (KeySpellingClash).
        text_pos = [i for i, k in enumerate(spec.key) if spec.column(k).pgtype is PgType.TEXT]

        def exact(left: str, right: list[str]) -> str:
            return " AND ".join(f'({left}{key[i]}::text COLLATE "C") = ({right[i]}::text COLLATE "C")'
                                for i in text_pos)

        self.counted = bool(text_pos)
        # Keys and rows of fixed-width values only cannot add up to STATEMENT_VALUE_BYTES
        # in a batch: they go out in one statement without being measured row by row.
        self.keys_sized = any(spec.column(k).pgtype in VARIABLE_WIDTH for k in spec.key)
        self.rows_sized = any(spec.columns[i].pgtype in VARIABLE_WIDTH for i in self.written)
        if text_pos and not non_key:
            non_key = [key[text_pos[0]]]  # DO NOTHING would not count a row it kept
        if non_key:
            conflict = f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET " + ", ".join(
                f"{c} = EXCLUDED.{c}" for c in non_key
            )
            if text_pos:
                conflict += " WHERE " + exact("t.", [f"EXCLUDED.{k}" for k in key])
        else:
            conflict = f"ON CONFLICT ({', '.join(key)}) DO NOTHING"
        params = ", ".join(f"${i + 1}::{_array_type(t)}" for i, t in enumerate(types))
        # SQLite's ids go in as they are, also into a key the application made GENERATED
        # ALWAYS AS IDENTITY in Postgres after a cutover (a no-op for any other column).
        into = f"INSERT INTO {self.table} AS t ({', '.join(cols)}) OVERRIDING SYSTEM VALUE"
        self.upsert_unnest = f"{into} SELECT * FROM unnest({params}) {conflict}"
        self.upsert_from_stage = f"{into} SELECT {', '.join(cols)} FROM pg_temp.{self.stage} {conflict}"
        key_types = [spec.column(k).pgtype.value for k in spec.key]
        kparams = ", ".join(f"${i + 1}::{_array_type(t)}" for i, t in enumerate(key_types))
        dcols = ", ".join(f"d{i}" for i in range(len(key)))
        d = [f"d.d{i}" for i in range(len(key))]
        same = " AND ".join(f"t.{k} = d.d{i}" for i, k in enumerate(key))
        match = same + (" AND " + exact("t.", d) if text_pos else "")
        self.delete_unnest = f"DELETE FROM {self.table} AS t USING unnest({kparams}) AS d({dcols}) WHERE {match}"
        # Which row an upserted key lands on: the upsert again, changing nothing, returning
        # the key of the row it met (tried for one row, in a savepoint undone after).
        self.probe_sql = (f"INSERT INTO {self.table} AS t ({', '.join(cols)}) SELECT * FROM unnest({params}) "
                          f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {key[0]} = t.{key[0]} "
                          f"RETURNING {', '.join(f't.{k}' for k in key)}")

    async def _ensure_stage(self, conn: asyncpg.Connection) -> None:
        """Made on first use on each connection (and again if a rolled-back savepoint
        took it along); empty after every commit."""
        await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {self.stage} ({self.stage_columns}) ON COMMIT DELETE ROWS")

    async def delete(self, conn: asyncpg.Connection, keys: list[tuple]) -> None:
        if not keys:
            return
        for part in statement_parts(keys) if self.keys_sized else [keys]:
            await conn.execute(self.delete_unnest, *[list(col) for col in zip(*part)])

    def _written(self, records: list[tuple]) -> list[tuple]:
        """`records` with only the values written (none of a column Postgres computes)."""
        if len(self.written) == len(self.spec.columns):
            return records
        return [tuple(r[i] for i in self.written) for r in records]

    def arrays(self, records: list[tuple]) -> list[list]:
        """The written values of `records`, one array per column (the unnest parameters)."""
        columns = list(zip(*records))
        return [list(columns[i]) for i in self.written]

    async def upsert(self, conn: asyncpg.Connection, records: list[tuple]) -> None:
        if not records:
            return
        if len(records) >= COPY_THRESHOLD:
            await self._ensure_stage(conn)
            await self._copy_stage(conn, self._written(records))
            status = await conn.execute(self.upsert_from_stage)
            written = int(status.rsplit(" ", 1)[-1])
        else:
            written = 0
            for part in statement_parts(records) if self.rows_sized else [records]:
                status = await conn.execute(self.upsert_unnest, *self.arrays(part))
                written += int(status.rsplit(" ", 1)[-1])
        if self.counted and written < len(records):
            await self._clash(conn, records)

    async def _clash(self, conn: asyncpg.Connection, records: list[tuple]) -> None:
        """Some upserted rows met a row under another spelling of their key (the key
        column compares case-insensitively in Postgres) and were not written: refused,
        so no two SQLite rows are ever merged into one; for one row, naming both keys
        (the hold's search narrows a batch down to the row)."""
        why = ONE_KEY_TO_POSTGRES
        if len(records) > 1:
            raise KeySpellingClash(f"of {len(records)} rows, one or more and a row Postgres holds under another "
                                   f"spelling of the key {why}")
        ours = tuple(records[0][i] for i in self.spec.key_indexes)
        theirs = None
        try:
            async with conn.transaction():
                theirs = await conn.fetchrow(self.probe_sql, *self.arrays(records[:1]))
                raise _Rollback()
        except _Rollback:
            pass
        shown = f"Postgres's row under key {_show(tuple(theirs))}" if theirs else "a row Postgres holds"
        raise KeySpellingClash(f"SQLite's key {_show(ours)} and {shown} {why}")

    async def _copy_stage(self, conn: asyncpg.Connection, records: list[tuple]) -> None:
        name = self.stage[1:-1].replace('""', '"')
        # The stage is empty here: ON COMMIT DELETE ROWS, and a ROLLBACK discards the COPY.
        await conn.copy_records_to_table(name, records=records, schema_name="pg_temp")

    async def copy_in(self, conn: asyncpg.Connection, records: list[tuple],
                      into: tuple[str, str] | None = None) -> None:
        """Snapshot load: COPY straight into the (freshly truncated) table, or into
        `into` = (schema, table), the aside table of a reload."""
        schema, name = into or (self.schema, self.spec.name)
        await conn.copy_records_to_table(name, records=self._written(records), columns=self.written_names,
                                         schema_name=schema)


ONE_KEY_TO_POSTGRES = (
    "are one key to Postgres, whose key column compares them alike (a case-insensitive collation or citext, as a "
    "cutover's COLLATE NOCASE makes it), while SQLite holds them apart; nothing was merged: make the key column exact "
    'again in Postgres (ALTER TABLE ... ALTER COLUMN ... TYPE text COLLATE "default"), or change one of the keys in '
    "SQLite, and the table resumes")
ONE_STATEMENT_TWICE = "21000"  # ON CONFLICT DO UPDATE met one row twice: two keys of the batch are one to Postgres


def _show(key: tuple) -> str:
    return repr(key[0]) if len(key) == 1 else repr(key)


class KeySpellingClash(Exception):
    """An upserted row met a row Postgres holds under another spelling of its key."""

    sqlstate = "23505"  # a unique violation in effect: this table's rows cannot go in as they are


@dataclass
class BadRow:
    key: tuple
    message: str


async def locate_bad_row(conn: asyncpg.Connection, writer: TableWriter, records: list[tuple],
                         deletes: list[tuple], copy_into: tuple[str, str] | None = None) -> BadRow | None:
    """Find a record Postgres rejects (one that fails by itself, or the second of two
    that fail only together), by bisection inside savepoints. Only used after a
    statement failed, to name the row in the hold message. With `copy_into` (schema,
    table), records are tried as a load sent them, by COPY into that table (a reload's
    aside table has no key to upsert on)."""
    from syncd.postgres.connect import describe, is_data_error, is_shape_error, is_transient, sqlstate

    def refused(e: Exception) -> bool:
        """Postgres refused the rows (not a connection lost, a timeout): the search goes on."""
        return is_data_error(e) or is_shape_error(e) or (sqlstate(e) is not None and not is_transient(e))

    async def fails(part: list[tuple], is_delete: bool) -> BaseException | None:
        try:
            async with conn.transaction():  # savepoint
                if is_delete:
                    await writer.delete(conn, part)
                elif copy_into is not None:
                    await writer.copy_in(conn, part, copy_into)
                else:
                    await writer.upsert(conn, part)
                raise _Rollback()
        except _Rollback:
            return None
        except Exception as e:
            if refused(e):
                return e
            raise

    async def shortest_failing_prefix(rows: list[tuple], err: BaseException,
                                      is_delete: bool) -> tuple[int, BaseException]:
        """Where the shortest prefix of `rows` (which fail) that fails ends."""
        lo, hi = 1, len(rows)  # rows[:hi] fails
        while lo < hi:
            mid = (lo + hi) // 2
            e = await fails(rows[:mid], is_delete)
            if e is not None:
                hi, err = mid, e
            else:
                lo = mid + 1
        return hi - 1, err

    async def partner(before: list[tuple], row: tuple) -> tuple:
        """The row of `before` (which passes) that fails together with `row`: the last
        one whose suffix of `before`, with `row`, still fails."""
        lo, hi = 0, len(before)  # before[lo:] + [row] fails; [row] alone passes
        while lo + 1 < hi:
            mid = (lo + hi) // 2
            if await fails(before[mid:] + [row], False) is not None:
                lo = mid
            else:
                hi = mid
        return before[lo]

    async def one_key(first: tuple, second: tuple) -> bool:
        """Whether Postgres takes `second`'s key for `first`'s (the row it meets when
        `second` is upserted after `first`), tried in a savepoint undone after: 21000
        has other causes (a trigger's subquery, say), whose message is Postgres's own."""
        met = None
        try:
            async with conn.transaction():
                await writer.upsert(conn, [first])
                met = await conn.fetchrow(writer.probe_sql, *writer.arrays([second]))
                raise _Rollback()
        except _Rollback:
            pass
        except Exception as e:
            if refused(e):
                return False
            raise
        return met is not None and tuple(met) == tuple(first[i] for i in writer.spec.key_indexes)

    for is_delete, rows in ((True, deletes), (False, records)):
        err = await fails(rows, is_delete) if rows else None
        if err is None:
            continue
        # Halve while a half fails alone (a row Postgres refuses by itself: about as many
        # rows sent again as the batch holds). Two rows that fail only together (a key
        # twice) can sit in different halves, each passing alone: then the shortest
        # failing prefix ends at the second of them.
        while len(rows) > 1:
            half = len(rows) // 2
            e = await fails(rows[:half], is_delete)
            if e is not None:
                rows, err = rows[:half], e
                continue
            e = await fails(rows[half:], is_delete)
            if e is not None:
                rows, err = rows[half:], e
                continue
            at, err = await shortest_failing_prefix(rows, err, is_delete)
            row = rows[at]
            if (not is_delete and copy_into is None and writer.counted and at > 0
                    and sqlstate(err) == ONE_STATEMENT_TWICE):
                key = tuple(row[i] for i in writer.spec.key_indexes)
                other = await partner(rows[:at], row)
                theirs = tuple(other[i] for i in writer.spec.key_indexes)
                if theirs != key and await one_key(other, row):
                    return BadRow(key, f"SQLite's keys {_show(theirs)} and {_show(key)} {ONE_KEY_TO_POSTGRES}")
            break
        else:
            row = rows[0]
        key = row if is_delete else tuple(row[i] for i in writer.spec.key_indexes)
        column = None if is_delete else _not_utf8(writer.spec, row)
        return BadRow(key, f"column {column}: text is not valid UTF-8" if column else describe(err))
    return None


def _not_utf8(spec: TableSpec, row: tuple) -> str | None:
    """The quoted name of the column whose text in `row` is not UTF-8 (SQLite does not
    check; the client library refuses it before Postgres could name the column)."""
    if len(row) != len(spec.columns):
        return None
    for col, value in zip(spec.columns, row):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return quote_pg_ident(col.name)
    return None


class _Rollback(Exception):
    pass
