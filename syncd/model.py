"""What a replicated table looks like: the shape both sides agree on."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from syncd.identifiers import quote_ident
from syncd.sqlite_sql import Affinity, affinity
from syncd.types import VARIABLE_WIDTH, PgType

if TYPE_CHECKING:
    from syncd.sqlite.leftout import LeftOut

# The Postgres column that carries a keyless table's SQLite rowid (its key there). The
# `_syncd_` prefix is syncd's own; a table that already has a column of this name gets
# the first free `_syncd_rowid_<n>` instead (see introspect.rowid_column_name).
ROWID_COLUMN = "_syncd_rowid"


# Which way a source replicates: SQLite -> Postgres until `syncd cutover`, then back from
# Postgres into the (frozen) SQLite file until `syncd rollback` turns it around again.
TO_POSTGRES, TO_SQLITE = "to_postgres", "to_sqlite"
# Each table of a cut-over source once its way back has ended, in every view (syncd status,
# --json, the report, the status page): nothing flows any more, none of them streams.
NOT_FOLLOWED = "not followed"
NO_FLOW = "none (cut over; SQLite no longer follows PostgreSQL)"  # the direction then, as the views write it

ROWID_ALIASES = ("_rowid_", "rowid", "oid")


def unshadowed_rowid_name(column_names) -> str | None:
    """A name reaching a table's rowid that none of its columns shadows, or None."""
    taken = {c.lower() for c in column_names}
    return next((a for a in ROWID_ALIASES if a not in taken), None)


# [stream] batch_size and snapshot_chunk_rows count rows of a table this wide: a wider
# table's batches and chunks hold proportionally fewer, so one (and the one read ahead
# beside it) holds about as many values, and as much of the daemon's memory, whatever
# the width.
SIZED_FOR_COLUMNS = 8
MIN_BATCH_ENTRIES = 100  # a batch of very wide rows is cut no shorter than this

# Rows counted, narrow or wide, may still weigh anything: a stream batch and a load's
# chunk of a table with variable-width columns (types.VARIABLE_WIDTH) are also cut once
# their values add up to about this many bytes (the row passing it included, so never
# empty). Two of them are in memory at once (one applied, one read ahead), and the one
# applied two or three times more while asyncpg encodes it: 300 rows of 1 MB streamed
# peak at ~170 MB of RSS with 16 MB, ~275 MB with 32 MB. A batch this large already
# pays its fixed costs (bookkeeping, round trips) many times over.
BATCH_VALUE_BYTES = 16 * 1024 * 1024


def entries_within_values(tids: Iterable[int], limit: int, widths: dict[int, int]) -> int | None:
    """How many of a batch's first entries (the table id of each, in order) hold about as
    many values as `limit` entries of rows SIZED_FOR_COLUMNS wide, or None for all of
    them: an entry of a table wider than that (`widths`: table id -> its columns) counts
    its columns, any other SIZED_FOR_COLUMNS. A batch of a wide table's rows then takes
    no more of the daemon's memory than a narrow one, while a narrow table's batches
    keep their full size. Never fewer than MIN_BATCH_ENTRIES."""
    wide = {tid: n for tid, n in widths.items() if n > SIZED_FOR_COLUMNS}
    if not wide:
        return None
    budget, spent = limit * SIZED_FOR_COLUMNS, 0
    for i, tid in enumerate(tids):
        spent += wide.get(tid, SIZED_FOR_COLUMNS)
        if spent > budget and i >= MIN_BATCH_ENTRIES:
            return i
    return None


@dataclass(frozen=True)
class Column:
    name: str
    declared: str  # the SQLite declared type, verbatim
    pgtype: PgType
    notnull: bool
    default_sql: str | None  # SQLite's default expression text
    type_note: str | None = None  # why the type was chosen, when it was not obvious
    # How SQLite SQL reads a column that is not stored under its name: for syncd's rowid
    # column of a keyless table, the rowid alias no column shadows ("_rowid_", ...).
    sqlite_expr: str | None = None
    generated: bool = False  # GENERATED ALWAYS AS (...) in SQLite: carried as the values it computed
    # The SQLite spelling of a date column schema parity typed (bookkeeping `columns`):
    # only values in it convert (types.column_converter); any other holds the table.
    sqlite_format: str | None = None
    # The type was chosen from the stored values (no usable declared type, no override),
    # or kept from the Postgres column so chosen: schema parity may type such a text
    # column at cutover (parity/numbers.py).
    inferred: bool = False
    # Postgres holds the column as character(n) (the application's type after a cutover):
    # every client reads its values padded to n, and so does verification (rowhash.pg_token).
    pg_padded: bool = False

    @property
    def numbers_as_text(self) -> bool:
        """No declared type, carried as text: SQLite keeps integer 1 and real 1.0 as stored
        and compares them as one value (a UNIQUE or key holds them for one), Postgres holds
        '1' and '1.0'."""
        return self.pgtype is PgType.TEXT and self.sqlite_expr is None and affinity(self.declared) is Affinity.BLOB


@dataclass(frozen=True)
class UniqueSet:
    """A unique index other than the key: an INSERT OR REPLACE can delete rows through it."""

    columns: tuple[str, ...]
    collations: tuple[str, ...]


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    without_rowid: bool
    key_origin: str  # "primary key", "unique index <name>", "configured"
    unique_sets: tuple[UniqueSet, ...] = ()
    notes: tuple[str, ...] = ()
    rowid_alias: bool = False  # the key is an INTEGER PRIMARY KEY: the rowid itself, stable across VACUUM
    # Per key column, the collation of the unique index that makes the key unique (its
    # primary key's, or the unique index keying it), where it is one of SQLite's own;
    # None where no such index is (the rowid, a [sources.keys] key). key_sql() applies it.
    key_collations: tuple[str | None, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def rowid_keyed(self) -> bool:
        """A keyless table: its key is syncd's rowid column (renumbered by VACUUM)."""
        return any(c.sqlite_expr is not None for c in self.columns)

    def key_sql(self, name: str, qualifier: str = "") -> str:
        """Key column `name` as SQLite SQL compares it the way the key is unique: under
        its index's collation. A PRIMARY KEY (k COLLATE BINARY) on a NOCASE column holds
        'a' and 'A' apart; compared under the column's NOCASE they would be one key."""
        ref = qualifier + self.sqlite_ref(name)
        if name in self.key:
            i = self.key.index(name)
            if i < len(self.key_collations) and self.key_collations[i] is not None:
                return f"{ref} COLLATE {self.key_collations[i]}"
        return ref

    def sqlite_ref(self, name: str) -> str:
        """Column `name` as SQLite SQL reaches it (quoted; the rowid alias for syncd's
        rowid column). Qualify as `t.` + sqlite_ref(name) or `NEW.` + ... as needed."""
        for c in self.columns:
            if c.name == name:
                return c.sqlite_expr or quote_ident(name)
        raise KeyError(name)

    @property
    def stored_columns(self) -> tuple[Column, ...]:
        """The columns the SQLite table itself declares (not syncd's rowid column)."""
        return tuple(c for c in self.columns if c.sqlite_expr is None)

    @property
    def sized_columns(self) -> tuple[str, ...]:
        """The columns whose values may be of any length: what a batch's or a chunk's
        bytes are measured by (BATCH_VALUE_BYTES). A table without any is never measured."""
        return tuple(c.name for c in self.columns if c.pgtype in VARIABLE_WIDTH)

    @property
    def key_indexes(self) -> tuple[int, ...]:
        names = self.column_names
        return tuple(names.index(k) for k in self.key)


@dataclass(frozen=True)
class Refusal:
    """A table syncd cannot replicate, with the reason and what to do about it."""

    name: str
    reason: str


@dataclass
class SourceSchema:
    version: int = 0  # SQLite's schema_version the PRAGMAs were read at
    tables: dict[str, TableSpec] = field(default_factory=dict)
    refused: dict[str, Refusal] = field(default_factory=dict)
    left_out: dict[str, "LeftOut"] = field(default_factory=dict)  # views, virtual and shadow tables

    @property
    def names(self) -> list[str]:
        """Every table, view and virtual table of the file, carried or not (syncd's own aside)."""
        return [*self.tables, *self.refused, *self.left_out]

    @property
    def skipped(self) -> dict[str, str]:
        """What is left out, name -> why and what to do instead, as one line each."""
        return {name: lo.describe() for name, lo in self.left_out.items()}
