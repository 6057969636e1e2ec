"""Quoting of identifiers and literals for SQLite and PostgreSQL.

Every name that reaches SQL goes through here, so a table called
`weird "name"; DROP TABLE x;--` is just a name.
"""

import re

PG_MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1; longer names are silently truncated by Postgres


class IdentifierError(ValueError):
    pass


def quote_ident(name: str) -> str:
    """Quote an identifier; the same rule holds for SQLite and Postgres."""
    if "\x00" in name:
        raise IdentifierError(f"identifier {name!r} contains a NUL character")
    return '"' + name.replace('"', '""') + '"'


# SQLite compares names ignoring the case of A-Z only; Postgres's quoted names keep it.
_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def sqlite_folded(name: str) -> str:
    """A name as SQLite compares names: A-Z folded, nothing else."""
    return name.translate(_FOLD)


def as_named(name: str, names) -> str:
    """`name` as one of `names` spells it, matched as SQLite matches names (A-Z in any
    case): a table asked for as ORDERS is the file's orders. `name` itself where it is
    one of them, or where none (or more than one) matches."""
    if name in names:
        return name
    matches = [n for n in names if sqlite_folded(n) == sqlite_folded(name)]
    return matches[0] if len(matches) == 1 else name


def quote_pg_ident(name: str) -> str:
    """Quote a Postgres identifier, refusing names Postgres would truncate."""
    if len(name.encode("utf-8")) > PG_MAX_IDENTIFIER_BYTES:
        raise IdentifierError(
            f"name {name!r} is longer than Postgres's {PG_MAX_IDENTIFIER_BYTES}-byte identifier limit"
        )
    return quote_ident(name)


def pg_name_problem(name: str, what: str = "name") -> str | None:
    """Why `name` cannot be a Postgres identifier, or None. For a refusal's reason."""
    size = len(name.encode("utf-8"))
    if size > PG_MAX_IDENTIFIER_BYTES:
        return (f"{what} is {size} bytes long; Postgres names hold at most {PG_MAX_IDENTIFIER_BYTES} bytes "
                "(it would cut the name short), so rename it to replicate it")
    if "\x00" in name:
        return f"{what} contains a NUL character, which Postgres names cannot hold"
    if not name:
        return f"{what} is empty, which SQLite allows and Postgres names cannot be, so rename it to replicate it"
    return None


def qualified(schema: str, name: str) -> str:
    return f"{quote_pg_ident(schema)}.{quote_pg_ident(name)}"


def quote_literal(value: str) -> str:
    """A string literal valid in SQLite and in Postgres (standard_conforming_strings=on)."""
    if "\x00" in value:
        raise IdentifierError(f"literal {value!r} contains a NUL character")
    return "'" + value.replace("'", "''") + "'"


# Characters a Postgres string literal shows as an escape (E'..'): backslash, and the
# controls a log line or a printed statement must not carry raw.
_PG_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_PG_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def pg_string_literal(value: str) -> str:
    """A Postgres string literal for `value` that means the same whatever the server's
    standard_conforming_strings, and prints on one line: E'..' as soon as it holds a
    backslash or a control character."""
    if "\x00" in value:
        raise IdentifierError("a Postgres string cannot hold a NUL character")
    quoted = value.replace("'", "''")
    if not _PG_UNSAFE.search(quoted):
        return "'" + quoted + "'"

    def esc(m: re.Match) -> str:
        c = m.group()
        return _PG_NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x80 else f"\\u{ord(c):04x}")

    return "E'" + _PG_UNSAFE.sub(esc, quoted) + "'"
