"""Quoting of identifiers and literals for SQLite and PostgreSQL.

Every name that reaches SQL goes through here, so a table called
`weird "name"; DROP TABLE x;--` is just a name.
"""

PG_MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1; longer names are silently truncated by Postgres


class IdentifierError(ValueError):
    pass


def quote_ident(name: str) -> str:
    """Quote an identifier; the same rule holds for SQLite and Postgres."""
    if "\x00" in name:
        raise IdentifierError(f"identifier {name!r} contains a NUL character")
    return '"' + name.replace('"', '""') + '"'


def quote_pg_ident(name: str) -> str:
    """Quote a Postgres identifier, refusing names Postgres would truncate."""
    if len(name.encode("utf-8")) > PG_MAX_IDENTIFIER_BYTES:
        raise IdentifierError(
            f"name {name!r} is longer than Postgres's {PG_MAX_IDENTIFIER_BYTES}-byte identifier limit"
        )
    return quote_ident(name)


def qualified(schema: str, name: str) -> str:
    return f"{quote_pg_ident(schema)}.{quote_pg_ident(name)}"


def quote_literal(value: str) -> str:
    """A string literal valid in SQLite and in Postgres (standard_conforming_strings=on)."""
    if "\x00" in value:
        raise IdentifierError(f"literal {value!r} contains a NUL character")
    return "'" + value.replace("'", "''") + "'"
