"""One 64-bit hash per row, computed the same way from a SQLite row (in Python, through
syncd's own converter) and from the row stored in Postgres (in SQL).

A row's canonical form is its `types.canonical` tokens joined by U+001F; its hash is
the first 8 bytes of md5 over that form's UTF-8, read big-endian. A range of rows is
summarised by (count, sum of hashes mod 2^64), which does not depend on row order, so
neither side has to sort.

SQLite computes the sum in a registered aggregate. Python does the per-row work, so
its speed sets the pace of `syncd verify`: the aggregate's step function is generated
per table with a fast path for rows whose values all have the storage class the
column's type expects (bench/verify.py measures it), falling back per column to the
converter, which is the reference and the only thing the tests hold it to.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from collections.abc import Callable, Sequence
from typing import Any

try:  # CPython's own md5 costs a third of OpenSSL's per call on inputs this short
    from _md5 import md5 as _md5
except ImportError:  # pragma: no cover - interpreters built without it
    _md5 = hashlib.md5

from syncd.identifiers import quote_pg_ident
from syncd.model import Column, TableSpec
from syncd.sqlite.connection import not_utf8
from syncd.sqlite_sql import Affinity, affinity
from syncd.types import SEP, PgType, ValueMismatch, _describe, canonical, converter, converter_of, pg_canonical_expr

MOD = 1 << 64
# The token of a value syncd's converter rejects. No Postgres token starts with "!",
# so a row holding one never matches and the comparison reports it.
MISFIT = "!"
# SQLITE_MAX_FUNCTION_ARG of common builds (sqlite3 -cmd 'pragma compile_options').
MAX_FUNCTION_ARGS = 127


# --- the reference: converter, then canonical ------------------------------------------


def value_token(pgtype: PgType, value: Any, conv: Callable[[Any], Any] | None = None) -> str:
    """The token of a SQLite value; `conv` is the column's converter when it is not
    converter(pgtype) (types.column_converter)."""
    if not_utf8(value):
        return MISFIT
    try:
        return canonical(pgtype, (conv or converter(pgtype))(value))
    except (ValueMismatch, ValueError, OverflowError, TypeError, RecursionError):
        return MISFIT


def misfit_reason(pgtype: PgType, value: Any, conv: Callable[[Any], Any] | None = None) -> str | None:
    """Why the converter rejects `value`, or None when it fits."""
    if not_utf8(value):
        return str(ValueMismatch(f"{_describe(value)} does not fit {pgtype.value}: not valid UTF-8"))
    try:
        (conv or converter(pgtype))(value)
    except ValueMismatch as e:
        return str(e)
    return None


def row_hash(tokens: Sequence[str]) -> int:
    """The unsigned 64-bit hash of a row given its tokens."""
    data = SEP.join(tokens).encode("utf-8", "surrogateescape")
    return int.from_bytes(_md5(data).digest()[:8], "big")


def fold(total: int) -> int:
    """A hash sum as an unsigned 64-bit value (either side may hand it over signed)."""
    return total % MOD


class RowTokens:
    """Tokens of raw SQLite rows (columns in spec order) and of raw keys."""

    def __init__(self, spec: TableSpec):
        self.spec = spec
        self.types = tuple(c.pgtype for c in spec.columns)
        self.convs = tuple(converter_of(c) for c in spec.columns)
        self.key_idx = spec.key_indexes
        self.key_types = tuple(self.types[i] for i in self.key_idx)
        self.key_convs = tuple(self.convs[i] for i in self.key_idx)
        self._fast: Callable | None = None
        self._fast_key: Callable | None = None

    def row(self, row: Sequence[Any]) -> tuple[str, ...]:
        """The reference: every value through the converter."""
        return tuple(value_token(t, v, f) for t, v, f in zip(self.types, row, self.convs))

    def fast_row(self, row: Sequence[Any]) -> tuple[str, ...]:
        """The same tokens, with the aggregate's fast cases (generated once per table)."""
        if self._fast is None:
            self._fast = _compile("tokens", _tokens_source(self.types), self.types, self.convs)
        try:
            return self._fast(*row)
        except UnicodeEncodeError:  # text that is not UTF-8: the reference says MISFIT
            return self.row(row)

    def key_of_row(self, tokens: Sequence[str]) -> tuple[str, ...]:
        return tuple(tokens[i] for i in self.key_idx)

    def key(self, raw_key: Sequence[Any]) -> tuple[str, ...] | None:
        """The key's tokens, or None when a key value does not fit its type."""
        out = tuple(value_token(t, v, f) for t, v, f in zip(self.key_types, raw_key, self.key_convs))
        return None if MISFIT in out else out

    def fast_key(self, raw_key: Sequence[Any]) -> tuple[str, ...] | None:
        """The same as key(), with the fast cases."""
        if self._fast_key is None:
            self._fast_key = _compile("tokens", _tokens_source(self.key_types), self.key_types, self.key_convs)
        try:
            out = self._fast_key(*raw_key)
        except UnicodeEncodeError:  # text that is not UTF-8
            return self.key(raw_key)
        return None if MISFIT in out else out


# --- the fast path for SQLite's aggregate ------------------------------------------------

# pgtype -> (condition on the argument, f-string piece): the common storage class of
# the column, whose token the converter would produce exactly like this.
_FAST: dict[PgType, tuple[str, str]] = {
    PgType.BIGINT: ("{a}.__class__ is int", "i{{{a}}}"),
    PgType.NUMERIC: ("{a}.__class__ is int", "n{{{a}}}"),
    PgType.TEXT: ('{a}.__class__ is str and "\\0" not in {a}',
                  "t{{len({a}) if {a}.isascii() else len({a}.encode())}}:{{{a}}}"),
    PgType.BYTEA: ("{a}.__class__ is bytes", "b{{{a}.hex()}}"),
    PgType.DOUBLE: ("{a}.__class__ is float", "f{{_pack({a}).hex()}}"),
    PgType.BOOLEAN: ("{a}.__class__ is int and ({a} == 0 or {a} == 1)", "B{{{a}}}"),
}


def _column_expr(i: int, pgtype: PgType, arg: str) -> str:
    """Expression for one column's token: NULL, the fast case, else the converter."""
    fast = _FAST.get(pgtype)
    if fast is None:
        return f'("N" if {arg} is None else _slow({i}, {arg}))'
    cond, piece = fast
    return f'("N" if {arg} is None else f"{piece.format(a=arg)}" if {cond.format(a=arg)} else _slow({i}, {arg}))'


def _tokens_body(types: Sequence[PgType], offset: int, args: Sequence[str], target: str) -> list[str]:
    """Source lines assigning the joined tokens of `args` to `target`."""
    lines = []
    if all(t in _FAST for t in types):
        cond = " and ".join(_FAST[t][0].format(a=a) for t, a in zip(types, args))
        whole = "\\x1f".join(_FAST[t][1].format(a=a) for t, a in zip(types, args))
        lines += [f"if {cond}:", f'    {target} = f"{whole}"', "else:"]
        indent = "    "
    else:
        indent = ""
    parts = ", ".join(_column_expr(offset + k, t, a) for k, (t, a) in enumerate(zip(types, args)))
    lines.append(f'{indent}{target} = "\\x1f".join(({parts},))')
    return lines


def _compile(name: str, source: str, types: Sequence[PgType], convs: Sequence[Callable[[Any], Any]]) -> Callable:
    def slow(i: int, value: Any) -> str:
        return value_token(types[i], value, convs[i])

    scope = {"_slow": slow, "_pack": struct.Struct(">d").pack, "_md5": _md5, "_fb": int.from_bytes}
    exec(compile(source, f"<syncd verify {name}>", "exec"), scope)  # noqa: S102 - generated from types only
    return scope[name]


def _step_source(types: Sequence[PgType]) -> str:
    args = [f"c{i}" for i in range(len(types))]
    body = _tokens_body(types, 0, args, "s")
    lines = [f"def step(self, {', '.join(args)}):", *("    " + b for b in body),
             # sqlite3 hands a function strictly decoded text: no surrogates to escape here
             '    self.total += _fb(_md5(s.encode()).digest()[:8], "big")']
    return "\n".join(lines) + "\n"


def _row_hash_source(types: Sequence[PgType]) -> str:
    """A scalar function: one row's hash, signed as SQLite integers are."""
    args = [f"c{i}" for i in range(len(types))]
    body = _tokens_body(types, 0, args, "s")
    return "\n".join([f"def row_hash({', '.join(args)}):", *("    " + b for b in body),
                      '    v = _fb(_md5(s.encode()).digest()[:8], "big")',
                      "    return v - 18446744073709551616 if v >= 9223372036854775808 else v"]) + "\n"


def _group_source(types: Sequence[PgType], offset: int) -> str:
    args = [f"c{i}" for i in range(len(types))]
    body = _tokens_body(types, offset, args, "s")
    return "\n".join([f"def group({', '.join(args)}):", *("    " + b for b in body), "    return s"]) + "\n"


def _tokens_source(types: Sequence[PgType]) -> str:
    args = [f"c{i}" for i in range(len(types))]
    parts = ", ".join(_column_expr(i, t, a) for i, (t, a) in enumerate(zip(types, args)))
    return f"def tokens({', '.join(args)}):\n    return ({parts},)\n"


def _joined_step(self, *groups: str) -> None:
    data = SEP.join(groups).encode("utf-8", "surrogateescape")
    self.total += int.from_bytes(_md5(data).digest()[:8], "big")


def _joined_row_hash(*groups: str) -> int:
    v = int.from_bytes(_md5(SEP.join(groups).encode("utf-8", "surrogateescape")).digest()[:8], "big")
    return v - MOD if v >= 1 << 63 else v


def _finalize(self) -> int:
    v = self.total % MOD
    return v - MOD if v >= 1 << 63 else v  # SQLite integers are signed


class SqliteRowHash:
    """The aggregate `sql` (an expression over the table's columns) sums row hashes.

    Tables wider than SQLite's function-argument limit are hashed in groups of
    columns: a scalar function per group returns that group's joined tokens and the
    aggregate joins the groups, which yields the same bytes as one call would."""

    def __init__(self, spec: TableSpec, name: str):
        self.spec = spec
        self.name = name
        self.types = tuple(c.pgtype for c in spec.columns)
        self.convs = tuple(converter_of(c) for c in spec.columns)
        cols = [spec.sqlite_ref(c) for c in spec.column_names]
        if len(cols) <= MAX_FUNCTION_ARGS:
            self.groups: list[tuple[int, int]] = []
            args = ", ".join(cols)
        else:
            self.groups = [(i, min(i + MAX_FUNCTION_ARGS, len(cols))) for i in range(0, len(cols), MAX_FUNCTION_ARGS)]
            if len(self.groups) > MAX_FUNCTION_ARGS:
                raise ValueError(f"table {spec.name!r} has too many columns to hash")
            args = ", ".join(f"{name}_g{k}({', '.join(cols[a:b])})" for k, (a, b) in enumerate(self.groups))
        self.sql = f"{name}({args})"  # aggregate: the sum of the rows' hashes
        self.row_sql = f"{name}_row({args})"  # scalar: one row's hash
        self.columns_sql = ", ".join(cols)  # the row's values, for python_hash

    def python_hash(self, row: Sequence[Any]) -> int:
        """One row's hash (unsigned) from its values read with fetchall_text_safe: for rows
        holding text that is not UTF-8, which SQLite cannot hand to the functions above
        (Python decodes their arguments strictly); the reference tokens call it a misfit."""
        return row_hash(tuple(value_token(t, v, f) for t, v, f in zip(self.types, row, self.convs)))

    def register(self, conn: sqlite3.Connection) -> None:
        if not self.groups:
            step = _compile("step", _step_source(self.types), self.types, self.convs)
            row_hash = _compile("row_hash", _row_hash_source(self.types), self.types, self.convs)
            n_args = len(self.types)
        else:
            for k, (a, b) in enumerate(self.groups):
                group = _compile("group", _group_source(self.types[a:b], a), self.types, self.convs)
                conn.create_function(f"{self.name}_g{k}", b - a, group, deterministic=True)
            step, row_hash = _joined_step, _joined_row_hash
            n_args = len(self.groups)
        conn.create_function(f"{self.name}_row", n_args, row_hash, deterministic=True)

        class RowHashSum:
            __slots__ = ("total",)

            def __init__(self) -> None:
                self.total = 0

        RowHashSum.step = step  # type: ignore[attr-defined]
        RowHashSum.finalize = _finalize  # type: ignore[attr-defined]
        conn.create_aggregate(self.name, n_args, RowHashSum)


# --- the Postgres side ------------------------------------------------------------------


def pg_token(c: Column, col: str | None = None) -> str:
    """SQL for column `c`'s token in Postgres; `col` reads it (default: the column itself)."""
    col = col or quote_pg_ident(c.name)
    if c.pgtype is PgType.DOUBLE and c.sqlite_expr is None and affinity(c.declared) is Affinity.REAL:
        # A REAL column of SQLite stores -0.0 as 0.0: Postgres's -0.0 (written there after
        # a cutover, say) is the value SQLite holds. Columns without a type keep -0.0.
        col = f"({col} + 0::float8)"
    elif c.pg_padded:
        # character(n)'s ::text drops the padding that the application, and so the way back, reads.
        col = f"textin(bpcharout({col}))"
    return pg_canonical_expr(c.pgtype, col)


def pg_token_exprs(spec: TableSpec) -> list[str]:
    return [pg_token(c) for c in spec.columns]


CONCAT_MAX_COLUMNS = 100  # beyond this, a chain of || nests too deep for comfort: ARRAY[] instead


def pg_row_sql(spec: TableSpec) -> str:
    """SQL for a row's canonical form, as text."""
    tokens = pg_token_exprs(spec)
    if len(tokens) <= CONCAT_MAX_COLUMNS:
        return " || E'\\x1f' || ".join(tokens)  # a little cheaper per row than building an array
    return f"array_to_string(ARRAY[{', '.join(tokens)}]::text[], E'\\x1f')"


def pg_key_token_exprs(spec: TableSpec) -> list[str]:
    return [pg_token(spec.column(k)) for k in spec.key]


def pg_row_hash_sql(spec: TableSpec, utf8_database: bool = False) -> str:
    """SQL for the row hash as a signed bigint. md5 hashes the text in the database's
    encoding: unless that is UTF-8, convert_to makes it so (at a cost per row)."""
    row = pg_row_sql(spec)
    data = row if utf8_database else f"convert_to({row}, 'UTF8')"
    return f"('x' || left(md5({data}), 16))::bit(64)::bigint"
