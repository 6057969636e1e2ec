"""Reading SQL text out of a SQLite schema, by SQLite's own rules. Pure, no I/O.

A SQLite file's schema is written by whoever can write the file, so its text is
untrusted. syncd never passes it on: it tokenizes the text the way SQLite does
(https://sqlite.org/lang_expr.html, tokenize.c), accepts only a single constant,
and hands back a Python value. What reaches Postgres is then written by syncd
(types.pg_literal) from that value.

    tokenize("('a' /* x */)")        -> [Token(PUNCT, '('), Token(STRING, "'a'"), ...]
    parse_constant("(-0x10)")        -> Constant(INTEGER, -16)
    parse_constant("1 + 1")          -> raises NotAConstant("an expression, not one literal")
    affinity("VARCHAR(20)")          -> TEXT
    stored_value(Constant(TEXT, '5'), INTEGER) -> 5   (what SQLite stores in the column)

Differences from Postgres that matter here: SQLite's /* */ comments do not nest and
may run to the end of the text; backslash is an ordinary character in a string;
"x" is an identifier (SQLite may read it as a string, Postgres never does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any


class SqlSyntaxError(ValueError):
    """Text SQLite itself would not tokenize."""


class NotAConstant(ValueError):
    """Valid SQL, but not exactly one literal; the message says what it is instead."""


class Kind(str, Enum):
    SPACE = "space"
    COMMENT = "comment"
    STRING = "string"  # '...'
    BLOB = "blob"  # x'..'
    NUMBER = "number"
    WORD = "word"  # keyword or bare identifier
    QUOTED_ID = "quoted identifier"  # "..", [..], `..`
    VARIABLE = "variable"  # ?, ?1, :a, @a, $a
    PUNCT = "operator"


@dataclass(frozen=True)
class Token:
    kind: Kind
    text: str
    start: int


_SPACE = " \t\n\f\r"
# The same sets as [A-Za-z_\x80-\U0010ffff] and [A-Za-z0-9_$\x80-\U0010ffff], written
# as what they leave out: compiling a class that spans all of Unicode took 11 ms, paid
# by every syncd command at start.
_IDENT_START = re.compile(r"[^\x00-\x40\x5b-\x5e\x60\x7b-\x7f]")
_IDENT_CHAR = re.compile(r"[^\x00-\x23\x25-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]*")
# SQLite 3.46 accepts '_' between digits; older versions reject such a file's schema anyway.
_DIGITS = r"[0-9](?:_?[0-9])*"
_NUMBER = re.compile(rf"(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][+-]?{_DIGITS})?")
_HEX = re.compile(r"0[xX][0-9A-Fa-f](?:_?[0-9A-Fa-f])*")
_OPERATORS = ("->>", "->", "||", "<=", ">=", "==", "!=", "<>", "<<", ">>",
              "-", "(", ")", ";", "+", "*", "/", "%", "=", "<", ">", ",", "&", "~", "|", ".")


def tokenize(sql: str) -> list[Token]:
    """Split `sql` into tokens exactly as SQLite's tokenizer does; raises SqlSyntaxError
    for text SQLite would refuse (an unterminated string, a stray character)."""
    out: list[Token] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        start = i
        if c in _SPACE:
            while i < n and sql[i] in _SPACE:
                i += 1
            out.append(Token(Kind.SPACE, sql[start:i], start))
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            out.append(Token(Kind.COMMENT, sql[start:i], start))
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)  # no nesting; an unclosed comment runs to the end
            i = n if end < 0 else end + 2
            out.append(Token(Kind.COMMENT, sql[start:i], start))
        elif c in "xX" and i + 1 < n and sql[i + 1] == "'":
            end = sql.find("'", i + 2)
            if end < 0:
                raise SqlSyntaxError(f"unterminated blob literal at offset {start}")
            digits = sql[i + 2:end]
            if len(digits) % 2 or not re.fullmatch(r"[0-9A-Fa-f]*", digits):
                raise SqlSyntaxError(f"malformed blob literal at offset {start}")
            i = end + 1
            out.append(Token(Kind.BLOB, sql[start:i], start))
        elif c == "'":
            i = _quoted_end(sql, i, "'")
            out.append(Token(Kind.STRING, sql[start:i], start))
        elif c in "\"`":
            i = _quoted_end(sql, i, c)
            out.append(Token(Kind.QUOTED_ID, sql[start:i], start))
        elif c == "[":
            end = sql.find("]", i)
            if end < 0:
                raise SqlSyntaxError(f"unterminated [identifier] at offset {start}")
            i = end + 1
            out.append(Token(Kind.QUOTED_ID, sql[start:i], start))
        elif c.isascii() and (c.isdigit() or (c == "." and i + 1 < n and sql[i + 1].isdigit())):
            m = _HEX.match(sql, i) or _NUMBER.match(sql, i)
            assert m is not None
            i = m.end()
            if i < n and (_IDENT_START.match(sql[i]) or sql[i].isdigit()):
                raise SqlSyntaxError(f"malformed number at offset {start}")
            out.append(Token(Kind.NUMBER, sql[start:i], start))
        elif _IDENT_START.match(c):
            i = _IDENT_CHAR.match(sql, i + 1).end()  # type: ignore[union-attr]
            out.append(Token(Kind.WORD, sql[start:i], start))
        elif c == "?":
            i += 1
            while i < n and sql[i].isascii() and sql[i].isdigit():
                i += 1
            out.append(Token(Kind.VARIABLE, sql[start:i], start))
        elif c in ":@$" and i + 1 < n and (_IDENT_START.match(sql[i + 1]) or sql[i + 1].isdigit()):
            i = _IDENT_CHAR.match(sql, i + 1).end()  # type: ignore[union-attr]
            out.append(Token(Kind.VARIABLE, sql[start:i], start))
        else:
            op = next((o for o in _OPERATORS if sql.startswith(o, i)), None)
            if op is None:
                raise SqlSyntaxError(f"unexpected character {c!r} at offset {start}")
            i += len(op)
            out.append(Token(Kind.PUNCT, op, start))
    return out


def _quoted_end(sql: str, i: int, quote: str) -> int:
    """End (exclusive) of the quoted token opening at i; a doubled quote is one character."""
    j = i + 1
    while True:
        end = sql.find(quote, j)
        if end < 0:
            raise SqlSyntaxError(f"unterminated {'string' if quote == chr(39) else 'identifier'} at offset {i}")
        if sql.startswith(quote * 2, end):
            j = end + 2
            continue
        return end + 1


def significant(tokens: list[Token]) -> list[Token]:
    """The tokens SQLite's parser sees: whitespace and comments dropped."""
    return [t for t in tokens if t.kind not in (Kind.SPACE, Kind.COMMENT)]


def unquote_string(token_text: str) -> str:
    """The value of a '...' token."""
    return token_text[1:-1].replace("''", "'")


def identifier_value(tok: Token) -> str:
    """The name a WORD or quoted-identifier token stands for."""
    if tok.kind is Kind.WORD:
        return tok.text
    text = tok.text
    if text[0] == "[":
        return text[1:-1]
    q = text[0]
    return text[1:-1].replace(q * 2, q)


# --- constants ------------------------------------------------------------------------


class ConstKind(str, Enum):
    NULL = "null"
    INTEGER = "integer"
    REAL = "real"
    TEXT = "text"
    BLOB = "blob"
    CURRENT_TIMESTAMP = "current_timestamp"
    CURRENT_DATE = "current_date"
    CURRENT_TIME = "current_time"
    CURRENT_TIMESTAMP_MS = "current_timestamp_ms"  # strftime('%Y-%m-%d %H:%M:%f', 'now'): to the millisecond
    UNIXEPOCH = "unixepoch"  # whole seconds since 1970 at the insert, an integer (unixepoch())
    UNIXEPOCH_TEXT = "unixepoch_text"  # the same as text (strftime('%s', 'now'))


# Evaluated at each insert, like the CURRENT_* keywords: no stored constant.
AT_INSERT = frozenset((ConstKind.CURRENT_TIMESTAMP, ConstKind.CURRENT_DATE, ConstKind.CURRENT_TIME,
                       ConstKind.CURRENT_TIMESTAMP_MS, ConstKind.UNIXEPOCH, ConstKind.UNIXEPOCH_TEXT))


@dataclass(frozen=True)
class Constant:
    """One literal, as SQLite evaluates it. `value` is None, int, float, str or bytes;
    for the CURRENT_* keywords it is None (the time of the insert)."""

    kind: ConstKind
    value: Any = None


_TIME_KEYWORDS = {
    "CURRENT_TIMESTAMP": ConstKind.CURRENT_TIMESTAMP,
    "CURRENT_DATE": ConstKind.CURRENT_DATE,
    "CURRENT_TIME": ConstKind.CURRENT_TIME,
}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# A double holds 15 significant decimal digits exactly; with more, SQLite's and
# Postgres's decimal-to-binary conversions could round the last bit differently.
MAX_REAL_DIGITS = 15


def _unwrapped(sql: str) -> list[Token]:
    """The significant tokens of `sql` without the parentheses around all of it."""
    tokens = significant(tokenize(sql))
    while len(tokens) >= 2 and tokens[0].text == "(" and tokens[-1].text == ")":
        tokens = tokens[1:-1]
    return tokens


def _literal(sql: str) -> tuple[int, Token]:
    """(sign, token) of the single literal `sql` consists of (see parse_constant)."""
    tokens = _unwrapped(sql)
    if not tokens:
        raise NotAConstant("empty")
    sign = 1
    if tokens[0].kind is Kind.PUNCT and tokens[0].text in "+-" and len(tokens) == 2:
        if tokens[1].kind is not Kind.NUMBER:
            raise NotAConstant("a sign before something other than a number: an expression")
        sign = -1 if tokens[0].text == "-" else 1
        tokens = tokens[1:]
    if len(tokens) != 1:
        raise NotAConstant("an expression, not one literal")
    return sign, tokens[0]


def parse_constant(sql: str) -> Constant:
    """The single literal `sql` consists of, in any parentheses, with any comments, and
    with one sign before a number; or one of the calls SQLite applications spell the
    time of the insert with (_NOW_CALLS). Raises NotAConstant (or SqlSyntaxError) otherwise."""
    try:
        return _constant(*_literal(sql))
    except NotAConstant:
        now = _now_call(sql)
        if now is None:
            raise
        return Constant(now)


# The time of the insert as SQLite's date functions spell it, the same values as the
# CURRENT_* keywords (UTC, whole seconds; %f: seconds with 3 decimals, the milliseconds
# SQLite's clock has): (function, its string arguments) -> kind.
_NOW_CALLS = {
    ("datetime", ("now",)): ConstKind.CURRENT_TIMESTAMP,
    ("date", ("now",)): ConstKind.CURRENT_DATE,
    ("time", ("now",)): ConstKind.CURRENT_TIME,
    ("strftime", ("%Y-%m-%d %H:%M:%S", "now")): ConstKind.CURRENT_TIMESTAMP,
    ("strftime", ("%Y-%m-%d", "now")): ConstKind.CURRENT_DATE,
    ("strftime", ("%H:%M:%S", "now")): ConstKind.CURRENT_TIME,
    ("strftime", ("%Y-%m-%d %H:%M:%f", "now")): ConstKind.CURRENT_TIMESTAMP_MS,
    ("strftime", ("%s", "now")): ConstKind.UNIXEPOCH_TEXT,
    ("unixepoch", ()): ConstKind.UNIXEPOCH,
    ("unixepoch", ("now",)): ConstKind.UNIXEPOCH,
}


def _now_call(sql: str) -> ConstKind | None:
    """The kind of a call in _NOW_CALLS `sql` consists of (in any parentheses), or None."""
    call = date_call(sql)
    return None if call is None else _NOW_CALLS.get(call)


def date_call(sql: str) -> tuple[str, tuple[str, ...]] | None:
    """(function name in lower case, its string arguments, 'now' in lower case) of the one
    call `sql` consists of (in any parentheses) whose arguments are all string literals,
    or None: strftime('%Y-%m-%dT%H:%M:%SZ', 'now') -> ('strftime', ('%Y-%m-%dT%H:%M:%SZ', 'now'))."""
    tokens = _unwrapped(sql)  # a call starts with its name: its own parentheses stay
    if len(tokens) < 3 or tokens[0].kind is not Kind.WORD or tokens[1].text != "(" or tokens[-1].text != ")":
        return None
    args, expect_arg = [], True
    for tok in tokens[2:-1]:
        if expect_arg and tok.kind is Kind.STRING:
            args.append(unquote_string(tok.text))
        elif not expect_arg and tok.text == ",":
            pass
        else:
            return None
        expect_arg = not expect_arg
    if args and expect_arg:
        return None  # a trailing comma
    args = [a.lower() if a.lower() == "now" else a for a in args]
    return tokens[0].text.lower(), tuple(args)


def _constant(sign: int, tok: Token) -> Constant:
    if tok.kind is Kind.STRING:
        return Constant(ConstKind.TEXT, unquote_string(tok.text))
    if tok.kind is Kind.BLOB:
        return Constant(ConstKind.BLOB, bytes.fromhex(tok.text[2:-1]))
    if tok.kind is Kind.NUMBER:
        return _number(tok.text.replace("_", ""), sign)
    if tok.kind is Kind.WORD:
        word = tok.text.upper()
        if word == "NULL":
            return Constant(ConstKind.NULL)
        if word in ("TRUE", "FALSE"):
            return Constant(ConstKind.INTEGER, 1 if word == "TRUE" else 0)
        if word in _TIME_KEYWORDS:
            return Constant(_TIME_KEYWORDS[word])
        raise NotAConstant("a name, not a literal")
    if tok.kind is Kind.QUOTED_ID:
        raise NotAConstant("a quoted identifier (SQLite may read it as text, Postgres would not)")
    raise NotAConstant(f"a {tok.kind.value}, not a literal")


def _number(text: str, sign: int) -> Constant:
    if text[:2].lower() == "0x":
        digits = text[2:].lstrip("0")
        if len(digits) > 16:
            raise NotAConstant("a hexadecimal literal wider than 64 bits")
        value = int(text, 16)
        if value > INT64_MAX:
            value -= 2**64  # SQLite reads hex literals as two's complement
        return Constant(ConstKind.INTEGER, sign * value)
    if re.fullmatch(r"[0-9]+", text):
        value = sign * int(text)
        if INT64_MIN <= value <= INT64_MAX:
            return Constant(ConstKind.INTEGER, value)
        return _real(text, sign)  # SQLite turns an integer literal too large for 64 bits into a real
    return _real(text, sign)


def _real(text: str, sign: int) -> Constant:
    mantissa = re.split(r"[eE]", text)[0].replace(".", "").lstrip("0").rstrip("0")
    if len(mantissa) > MAX_REAL_DIGITS:
        raise NotAConstant(f"a real number with more than {MAX_REAL_DIGITS} significant digits")
    return Constant(ConstKind.REAL, sign * float(text))


# --- affinity: what SQLite stores for a value in a column --------------------------------


class Affinity(str, Enum):
    INTEGER = "INTEGER"
    TEXT = "TEXT"
    BLOB = "BLOB"
    REAL = "REAL"
    NUMERIC = "NUMERIC"

    def __str__(self) -> str:  # its name in messages, as SQLite's documentation spells it
        return self.value

    __format__ = str.__format__


def affinity(declared: str) -> Affinity:
    """A column's affinity from its declared type (https://sqlite.org/datatype3.html 3.1)."""
    t = declared.upper()
    if "INT" in t:
        return Affinity.INTEGER
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return Affinity.TEXT
    if "BLOB" in t or not t.strip():
        return Affinity.BLOB
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return Affinity.REAL
    return Affinity.NUMERIC


_WELL_FORMED_INT = re.compile(r"[+-]?[0-9]+")
_WELL_FORMED_REAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def stored_value(const: Constant, column_affinity: Affinity) -> Any:
    """The value SQLite stores when `const` is inserted into a column of that affinity
    (datatype3.html 3.0). Raises NotAConstant where the exact result would depend on
    SQLite internals syncd does not reproduce (the text form of a real number)."""
    v = const.value
    if const.kind in (ConstKind.NULL, ConstKind.BLOB):
        return v
    if const.kind in AT_INSERT:
        raise NotAConstant("the time of the insert, not a stored constant")
    if column_affinity is Affinity.BLOB:
        return v
    if column_affinity is Affinity.TEXT:
        if const.kind is ConstKind.INTEGER:
            return str(v)
        if const.kind is ConstKind.REAL:
            raise NotAConstant("a real number stored as text (SQLite's own number formatting)")
        return v
    # INTEGER, REAL, NUMERIC
    if const.kind is ConstKind.TEXT:
        if v != v.strip():
            if _WELL_FORMED_REAL.fullmatch(v.strip()):
                raise NotAConstant("a number in text with surrounding spaces")
            return v
        if _WELL_FORMED_INT.fullmatch(v):
            n = int(v)
            v = n if INT64_MIN <= n <= INT64_MAX else float(n)
        elif _WELL_FORMED_REAL.fullmatch(v):
            mantissa = re.split(r"[eE]", v.lstrip("+-"))[0].replace(".", "").lstrip("0").rstrip("0")
            if len(mantissa) > MAX_REAL_DIGITS:
                raise NotAConstant(f"a real number with more than {MAX_REAL_DIGITS} significant digits")
            v = float(v)
        else:
            return v  # text that is not a number stays text
    if isinstance(v, float):
        if column_affinity is not Affinity.REAL and v.is_integer() and INT64_MIN <= v <= INT64_MAX \
                and abs(v) < 2**63:
            return int(v)  # NUMERIC and INTEGER store a whole real as an integer
        # REAL stores one as an integer too, and reads it back as a real: -0.0 comes back 0.0
        return 0.0 if v == 0.0 else v
    if isinstance(v, int) and column_affinity is Affinity.REAL:
        return float(v)
    return v


INT32_MAX = 2**31 - 1


def added_column_value(sql: str, column_affinity: Affinity) -> Any:
    """What the rows already in a table read for a column ALTER TABLE ADD COLUMN gave
    DEFAULT `sql`. SQLite stores nothing in them: every read computes the value from the
    literal (valueFromExpr, SQLite's vdbemem.c), from its text (a minus sign before it)
    unless it is an integer of at most 32 bits, with the column's affinity applied
    (NUMERIC for a number in a column without one). A row inserted since stores what
    the literal evaluates to (stored_value), which can differ: 0x80000000 stays text
    '0x80000000' in the old rows and is 2147483648 in the new; 1e2 in a column without
    a type is 100 in the old and 100.0 in the new. Raises NotAConstant as parse_constant."""
    sign, tok = _literal(sql)
    const = _constant(sign, tok)
    if const.kind not in (ConstKind.INTEGER, ConstKind.REAL):
        return stored_value(const, column_affinity)
    text = tok.text.replace("_", "")
    if text.upper() in ("TRUE", "FALSE"):
        # 1 or 0 without the affinity applied (a TEXT column reads the integer), but a REAL
        # column's integers are read as reals
        return float(const.value) if column_affinity is Affinity.REAL else const.value
    is_int = re.fullmatch(r"[0-9]+|0[xX][0-9a-fA-F]+", text) is not None
    if is_int and int(text, 16 if text[:2].lower() == "0x" else 10) <= INT32_MAX:
        return stored_value(const, column_affinity)  # an integer the parser kept as one
    spelled = Constant(ConstKind.TEXT, ("-" if sign < 0 else "") + text)
    if _WELL_FORMED_REAL.fullmatch(spelled.value) is None:  # hexadecimal: not a number as text
        return spelled.value
    return stored_value(spelled, Affinity.NUMERIC if column_affinity is Affinity.BLOB else column_affinity)
