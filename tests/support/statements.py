"""Counting what syncd asks Postgres: each statement a connection sends, noted with
whether a transaction was open after it (none: the statement ended one), and a small
tenant file of N tables to count a full check over."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

import asyncpg

WRITES = ("INSERT", "UPDATE", "DELETE", "CREATE", "ALTER", "DROP", "TRUNCATE", "COMMENT", "GRANT", "SELECT SETVAL")


def tenant(path, tables: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=wal")
    for i in range(tables):
        conn.execute(f"CREATE TABLE t{i:02d} (id INTEGER PRIMARY KEY, v TEXT, at TIMESTAMP)")
        conn.execute(f"INSERT INTO t{i:02d} VALUES (1, 'one', '2026-12-06 10:00:00')")
    conn.commit()
    conn.close()


@contextlib.contextmanager
def noted(conn: asyncpg.Connection, statements: list[tuple[str, bool]]) -> Iterator[None]:
    def note(q) -> None:
        statements.append((q.query, conn.is_in_transaction()))

    conn.add_query_logger(note)
    try:
        yield
    finally:
        conn.remove_query_logger(note)


def transactions(statements: list[tuple[str, bool]]) -> int:
    return sum(1 for _q, open_after in statements if not open_after)


def writes(statements: list[tuple[str, bool]]) -> list[str]:
    return [q for q, _ in statements if q.lstrip().upper().startswith(WRITES)]
