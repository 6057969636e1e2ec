"""Freezing a SQLite file for the application, after a cutover to Postgres.

A frozen file refuses the application's writes at once, with a message saying where
the data went, while readers are untouched and syncd's own writes still pass (the
reverse stream keeps the file current from Postgres, for the way back).

Each user table gets BEFORE INSERT/UPDATE/DELETE triggers that raise unless a marker
row sits in syncd's `_syncd_meta`. syncd writes that row at the start of its own write
transaction and deletes it before committing (see `syncd_writes`), so no other
connection ever sees it: the write lock keeps other writers out meanwhile, and readers
see the committed state without it. The triggers name only `_syncd_meta` (never a user
table, which an application's RENAME under legacy_alter_table would leave dangling),
and need no virtual table (refused where the application sets trusted_schema=OFF).
Virtual tables cannot carry triggers: writes to an FTS or R*Tree table stay possible
and are listed where syncd reports the freeze.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from syncd.identifiers import quote_ident, quote_literal
from syncd.sqlite.capture import META, _own_schema_change, ensure_meta, is_capture_trigger, write_transaction
from syncd.sqlite.connection import no_such_table, not_utf8, surrogate_text

FREEZE_PREFIX = "_syncd_freeze_"
_FREEZE_TRIGGER = re.compile(re.escape(FREEZE_PREFIX) + r"[0-9]+_(?:insert|update|delete)")


def is_syncd_trigger(name: str) -> bool:
    """One of syncd's own triggers (capture, freeze), by its exact name: an application
    trigger that merely begins with _syncd_ (_syncd_audit) is the application's."""
    return is_capture_trigger(name) or _FREEZE_TRIGGER.fullmatch(name) is not None
FROZEN_KEY = "frozen"  # _syncd_meta: the message, while the file is frozen
WRITING_KEY = "syncd_writing"  # _syncd_meta: present only inside syncd's own write transactions


def _user_tables(conn: sqlite3.Connection) -> list[str]:
    """Ordinary tables (not virtual or shadow ones, not SQLite's or syncd's own). A name
    that is not UTF-8 is read with its bytes kept (surrogates)."""
    old = conn.text_factory
    conn.text_factory = surrogate_text
    try:
        return sorted(r[1] for r in conn.execute("PRAGMA main.table_list")
                      if r[0] == "main" and r[2] == "table" and not r[1].startswith(("sqlite_", "_syncd_")))
    finally:
        conn.text_factory = old


def left_writable(conn: sqlite3.Connection, wanted: Callable[[str], bool]) -> list[str]:
    """The file's tables a freeze leaves alone: those the source does not replicate
    (`[[sources]] tables`/`exclude`). They are not in Postgres, so the application has
    nowhere else to write them. A table whose name is not UTF-8 too: no trigger can name it."""
    return [t for t in _user_tables(conn) if not wanted(t) or not_utf8(t)]


def freeze_triggers(conn: sqlite3.Connection, message: str, wanted: Callable[[str], bool]) -> list[str]:
    """The CREATE TRIGGER statements that freeze every replicated table of the file."""
    out = []
    msg = quote_literal(message)
    guard = _guard()
    for i, table in enumerate(t for t in _user_tables(conn) if wanted(t) and not not_utf8(t)):
        for op in ("INSERT", "UPDATE", "DELETE"):
            name = quote_ident(f"{FREEZE_PREFIX}{i}_{op.lower()}")
            out.append(f"CREATE TRIGGER {name} BEFORE {op} ON {quote_ident(table)} {guard} "
                       f"BEGIN SELECT RAISE(ABORT, {msg}); END")
    return out


def _guard() -> str:
    return f"WHEN NOT EXISTS (SELECT 1 FROM {quote_ident(META)} WHERE key = {quote_literal(WRITING_KEY)})"


def outlive_syncd(c: sqlite3.Connection) -> int:
    """Inside `syncd uninstall`'s write transaction, before `_syncd_meta` goes: a frozen
    file stays frozen for the application, its triggers rewritten without the marker
    check (which names `_syncd_meta`: left as they were, every write would fail with
    "no such table"). Triggers of a file that is not frozen are dropped. Returns the
    tables that stay frozen."""
    names = c.execute("SELECT name, tbl_name, sql FROM main.sqlite_master WHERE type = 'trigger' "
                      "AND substr(name, 1, ?) = ?", (len(FREEZE_PREFIX), FREEZE_PREFIX)).fetchall()
    try:
        message = c.execute(f"SELECT value FROM main.{quote_ident(META)} WHERE key = ?", (FROZEN_KEY,)).fetchone()
    except sqlite3.OperationalError as e:
        if not no_such_table(e):
            raise
        message = None
    kept = set()
    for name, table, sql in names:
        c.execute(f"DROP TRIGGER main.{quote_ident(name)}")
        if message is not None and f" {_guard()} " in sql:
            c.execute(sql.replace(f" {_guard()} ", " ", 1))
            kept.add(table)
    return len(kept)


def freeze(conn: sqlite3.Connection, message: str, busy_timeout_ms: int, wanted: Callable[[str], bool]) -> int:
    """Freeze the file's tables the source replicates (`wanted`) in one short write
    transaction; returns the tables frozen. Safe to repeat: an earlier freeze's triggers
    are replaced (a table added since included)."""

    def apply(c: sqlite3.Connection) -> int:
        _drop(c)
        # A file from before syncd was installed, put back after the cutover, has no meta table.
        ensure_meta(c)
        statements = freeze_triggers(c, message, wanted)
        for sql in statements:
            c.execute(sql)
        c.execute(f"INSERT OR REPLACE INTO main.{quote_ident(META)}(key, value) VALUES (?, ?)", (FROZEN_KEY, message))
        return len(statements) // 3

    return write_transaction(conn, lambda c: _own_schema_change(c, apply), busy_timeout_ms=busy_timeout_ms)


def unfreeze(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """The application may write again (a cutover undone, or a rollback finished)."""

    def apply(c: sqlite3.Connection) -> None:
        _drop(c)
        c.execute(f"DELETE FROM main.{quote_ident(META)} WHERE key = ?", (FROZEN_KEY,))

    write_transaction(conn, lambda c: _own_schema_change(c, apply), busy_timeout_ms=busy_timeout_ms)


def _drop(c: sqlite3.Connection) -> None:
    for (name,) in c.execute("SELECT name FROM main.sqlite_master WHERE type = 'trigger' AND substr(name, 1, ?) = ?",
                             (len(FREEZE_PREFIX), FREEZE_PREFIX)).fetchall():
        c.execute(f"DROP TRIGGER main.{quote_ident(name)}")


def frozen(conn: sqlite3.Connection) -> str | None:
    """The freeze message while the file is frozen, else None."""
    try:
        row = conn.execute(f"SELECT value FROM main.{quote_ident(META)} WHERE key = ?", (FROZEN_KEY,)).fetchone()
    except sqlite3.OperationalError as e:
        if not no_such_table(e):
            raise  # a busy file is not an unfrozen one
        return None  # no capture installed
    return row[0] if row else None


@contextmanager
def syncd_writes(conn: sqlite3.Connection) -> Iterator[None]:
    """Inside the caller's write transaction (BEGIN IMMEDIATE already run): let syncd's
    own writes through a frozen file. The marker never outlives the block, and the
    block must not commit: the caller commits after it."""
    conn.execute(f"INSERT OR REPLACE INTO main.{quote_ident(META)}(key, value) VALUES (?, '1')", (WRITING_KEY,))
    try:
        yield
    finally:
        conn.execute(f"DELETE FROM main.{quote_ident(META)} WHERE key = ?", (WRITING_KEY,))
