"""Text that came from outside (table names, SQLite schema text, error messages) made
safe to print on one line: a name holding a newline cannot forge a log line or a
line of the cutover report, and bidi controls cannot reorder what a reader sees."""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, the Unicode line and paragraph separators, and the bidi
# embedding/override/isolate marks ("Trojan Source").
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match) -> str:
    c = m.group()
    if c in _NAMED:
        return _NAMED[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


# A byte of SQLite text that is not UTF-8, read as a surrogate (connection.surrogate_text),
# as repr() spells it: \udc80 to \udcff, after an even number of backslashes.
_BYTE_READ_AS_SURROGATE = re.compile(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])")


def text_repr(value: object) -> str:
    """repr() of `value`, each byte of SQLite text that is not UTF-8 written as the byte
    it is (\\xff), not as the surrogate Python read it as (\\udcff)."""
    return _BYTE_READ_AS_SURROGATE.sub(r"\1\\x\2", repr(value))


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape (\\n, \\x1b, \\u2028)."""
    return _UNSAFE.sub(_escape, text)


def shorten(text: str, limit: int = 120) -> str:
    """One printable line of at most `limit` characters."""
    line = escape_controls(text)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def listed(items: list[str], limit: int = 5) -> str:
    """The first `limit` items, comma-separated, then "and N more" for the rest."""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
