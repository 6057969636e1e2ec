"""What syncd requires of a target database, checked when it first connects."""

from __future__ import annotations

import asyncpg

# UTF8 holds every text SQLite can; SQL_ASCII stores the UTF-8 bytes syncd sends as
# they are. Any other encoding would refuse some values, and compare the rest in
# bytes that are not SQLite's.
ENCODINGS = ("UTF8", "SQL_ASCII")


class UnsupportedTarget(Exception):
    """The target database is set up in a way syncd cannot replicate into exactly."""


async def check_target(conn: asyncpg.Connection) -> None:
    """Raise UnsupportedTarget, with one line saying what to do, for a database whose
    encoding syncd cannot compare byte for byte."""
    name, encoding = await conn.fetchrow(
        "SELECT current_database(), pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()")
    if encoding not in ENCODINGS:
        raise UnsupportedTarget(
            f'Postgres database "{name}" uses encoding {encoding}: syncd needs UTF8 (or SQL_ASCII), so that every '
            "SQLite text value fits and compares byte for byte; create the database with ENCODING 'UTF8'")
