"""Split a table scan into windows, one short statement each.

In rollback-journal mode a reader blocks every writer's commit for as long as its
statement runs, so a full-table scan (an audit, type inference) must not be one
statement: each window is, and nothing runs while a window's lock is held but SQLite.
A window's rows follow how long the last one held the file (sqlite/hold.py): 20,000
rows of 100 KB of text read in one statement held the file for seconds.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from syncd.identifiers import quote_ident
from syncd.sqlite.connection import bound_value
from syncd.sqlite.hold import RowsPerHold

if TYPE_CHECKING:
    from syncd.model import TableSpec

WINDOW_ROWS = 20_000


class OrderTerm(str):
    """A column of a table's walking order (its SQL), and the collation its key compares
    under (None: the column's own)."""

    collation: str | None = None


def term(sql: str, collation: str | None) -> OrderTerm:
    t = OrderTerm(sql)
    t.collation = collation
    return t


def ordering(table_columns: list[str], without_rowid: bool, key: tuple[str, ...],
             collations: tuple[str | None, ...] = ()) -> list[str]:
    """Quoted columns giving a table a total order its storage can walk cheaply: the
    rowid (under a name no column shadows) or, WITHOUT ROWID, the primary key, each
    under the collation of the key's index (`collations`, TableSpec.key_collations): a
    BINARY key on a NOCASE column compared under NOCASE would skip 'A' after 'a'."""
    if not without_rowid:
        taken = {c.lower() for c in table_columns}
        for name in ("_rowid_", "rowid", "oid"):
            if name not in taken:
                return [name]
    colls = list(collations) + [None] * (len(key) - len(collations))
    return [term(quote_ident(k), c) for k, c in zip(key, colls)]


def table_ordering(spec: TableSpec) -> list[str]:
    """ordering() of a table syncd has described."""
    return ordering([c.name for c in spec.stored_columns], spec.without_rowid, spec.key, spec.key_collations)


def ordered_by(order: list[str]) -> str:
    """ORDER BY terms of `order`, each under its collation."""
    return ", ".join(f"{t} COLLATE {t.collation}" if getattr(t, "collation", None) else t for t in order)


def past(order: list[str], op: str = ">", values: tuple | None = None) -> str:
    """`(columns) <op> (?, ...)`, each ? under its column's collation. The collation goes on
    the parameter's side: SQLite walks the key's index for a row value only so. Given the
    `values` to be bound (as bound(values)), a text that is not UTF-8 is bound as its bytes
    cast back to text (connection.bound_value)."""
    plain = ["?"] * len(order) if values is None else [bound_value(v)[0] for v in values]
    marks = ", ".join(f"{m} COLLATE {t.collation}" if getattr(t, "collation", None) else m
                      for m, t in zip(plain, order))
    return f"({', '.join(order)}) {op} ({marks})"


def bound(values: tuple) -> tuple:
    """The parameters for past(order, op, values): each value as SQLite holds it."""
    return tuple(bound_value(v)[1] for v in values)


def windows(conn: sqlite3.Connection, table: str, order: list[str], size: int | RowsPerHold = WINDOW_ROWS
            ) -> Iterator[tuple[str, tuple]]:
    """(WHERE clause, parameters) for consecutive windows of about `size` rows (a
    RowsPerHold: as many as it says when the window is laid out). A table with nothing
    to order by (no key, every rowid alias shadowed by a column) is one window: rare
    enough, and there is no other way to read it."""
    if not order:
        yield "1", ()
        return
    cols = ", ".join(order)
    after: tuple | None = None
    while True:
        rows = size.rows if isinstance(size, RowsPerHold) else size
        where, params = ("1", ()) if after is None else (past(order, ">", after), bound(after))
        boundary = conn.execute(
            f"SELECT {cols} FROM main.{quote_ident(table)} WHERE {where} ORDER BY {ordered_by(order)} "
            "LIMIT 1 OFFSET ?",
            (*params, rows - 1),
        ).fetchone()
        if boundary is None:
            yield where, params
            return
        yield f"{where} AND {past(order, '<=', boundary)}", (*params, *bound(boundary))
        after = tuple(boundary)


Where = str | Callable[[], str]  # a callable is asked again for each window


def scan(conn: sqlite3.Connection, table: str, order: list[str], select: str, where: Where = "1",
         params: tuple[Any, ...] = (), size: int = WINDOW_ROWS) -> Iterator[list[tuple]]:
    """fetchall() of `SELECT select FROM table WHERE where`, window by window."""
    sizer = RowsPerHold(size)
    for window in windows(conn, table, order, sizer):
        asked, began = sizer.rows, time.monotonic()
        rows = _read(conn, table, select, where, params, window)
        sizer.held(time.monotonic() - began, asked)
        yield rows


def _read(conn: sqlite3.Connection, table: str, select: str, where: Where, params: tuple[Any, ...],
          window: tuple[str, tuple]) -> list[tuple]:
    w, wp = window
    where = where() if callable(where) else where
    return conn.execute(f"SELECT {select} FROM main.{quote_ident(table)} WHERE ({w}) AND ({where})",
                        (*wp, *params)).fetchall()


def _timed_read(conn: sqlite3.Connection, table: str, select: str, where: Where, params: tuple[Any, ...],
                window: tuple[str, tuple]) -> tuple[list[tuple], float]:
    began = time.monotonic()
    rows = _read(conn, table, select, where, params, window)
    return rows, time.monotonic() - began


def scan_two(conn: sqlite3.Connection, helper: sqlite3.Connection, table: str, order: list[str], select: str,
             where: Where = "1", params: tuple[Any, ...] = (), size: int = WINDOW_ROWS) -> Iterator[list[tuple]]:
    """scan() with every other window read on `helper`, a second connection to the same
    file, on a thread of its own. SQLite steps through both windows at once (it runs
    without Python's GIL); the windows still come back in order, at most two read
    ahead of the caller."""
    sizer = RowsPerHold(size)
    wins = windows(conn, table, order, sizer)

    def lay_out() -> tuple[tuple[str, tuple] | None, tuple[str, tuple] | None, int]:
        """The next two windows, and the rows each was laid out for."""
        first = next(wins, None)
        asked = sizer.rows
        return first, next(wins, None) if first is not None else None, asked

    with ThreadPoolExecutor(1, thread_name_prefix="syncd-scan") as pool:
        first, second, asked = lay_out()
        while first is not None:
            later = pool.submit(_timed_read, helper, table, select, where, params, second) if second else None
            # Should this read fail, or the caller stop here, leaving the `with` waits for
            # the helper's read: its connection is never closed under it.
            rows, seconds = _timed_read(conn, table, select, where, params, first)
            sizer.held(seconds, asked)
            yield rows
            # The next two windows are laid out (walked to on this connection) while the
            # helper may still read its window, not after: the walk was a seventh of a
            # narrow table's audit, all of it on one thread. Their size follows this
            # connection's read; the helper's, of as many rows at the same time, counts
            # from the pair after.
            upcoming = lay_out()
            if later is not None:
                rows, seconds = later.result()
                sizer.held(seconds, asked)
                yield rows
            first, second, asked = upcoming
