"""Turn SQLite rows into Postgres records, naming the exact value that does not fit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from syncd.model import TableSpec
from syncd.sqlite.audit import format_key
from syncd.sqlite.connection import not_utf8
from syncd.types import PgType, ValueMismatch, converter_of

# Types whose converter returns these Python values unchanged: a row whose values
# already have them needs no function call per value (the snapshot's hot loop).
_PASSTHROUGH = {PgType.BIGINT: int, PgType.DOUBLE: float, PgType.TEXT: str, PgType.BYTEA: bytes}


@dataclass
class RowMisfit(Exception):
    table: str
    key: tuple
    column: str
    reason: str

    def __str__(self) -> str:
        return (
            f'table "{self.table}" key {format_key(self.key)} column "{self.column}": {self.reason}; '
            f'fix the row in SQLite or set [sources.columns."{self.table}"] "{self.column}" = "<type>"'
        )


def _compile_row_function(spec: TableSpec, convs: list[Callable[[Any], Any]]) -> Callable[[tuple], tuple]:
    """Build `convert(row) -> tuple` with one inline expression per column.

    Only generated names (v0, f0, ...) appear in the source; column names never do.
    A value of the expected type passes straight through (text after a NUL check);
    anything else goes through the full converter, which raises ValueMismatch.
    """
    env: dict[str, Any] = {}
    parts = []
    for i, col in enumerate(spec.columns):
        env[f"f{i}"] = convs[i]
        expected = _PASSTHROUGH.get(col.pgtype)
        if expected is None:
            parts.append(f"f{i}(v{i})")
            continue
        env[f"t{i}"] = expected
        guard = f"type(v{i}) is t{i}" + (f" and '\\x00' not in v{i}" if expected is str else "")
        parts.append(f"(v{i} if {guard} else f{i}(v{i}))")
    names = ", ".join(f"v{i}" for i in range(len(spec.columns)))
    args = ", ".join(f"{k}={k}" for k in env)
    src = f"def convert(row, {args}):\n    {names}, = row\n    return ({', '.join(parts)},)\n"
    exec(compile(src, f"<syncd row converter for {len(spec.columns)} columns>", "exec"), env)  # noqa: S102
    return env["convert"]


class RowConverter:
    """Converts full rows (spec column order) and keys to what asyncpg sends."""

    def __init__(self, spec: TableSpec):
        self.spec = spec
        self._convs = [converter_of(c) for c in spec.columns]
        self._key_idx = spec.key_indexes
        self._key_convs = [self._convs[i] for i in self._key_idx]
        self._row = _compile_row_function(spec, self._convs)

    def row(self, row: tuple) -> tuple:
        try:
            return self._row(row)
        except ValueMismatch:
            raise self._locate(row) from None

    def rows(self, rows: list[tuple]) -> list[tuple]:
        convert = self._row
        try:
            return [convert(r) for r in rows]
        except ValueMismatch:
            for r in rows:
                try:
                    convert(r)
                except ValueMismatch:
                    raise self._locate(r) from None
            raise

    def deleted_keys(self, keys: list[tuple]) -> list[tuple]:
        """Keys of rows gone from SQLite, as Postgres holds them. A key that does not
        fit its Postgres type (or is text that is not UTF-8) cannot be in Postgres, so
        there is nothing to delete."""
        out = []
        for key in keys:
            if any(not_utf8(v) for v in key):
                continue
            try:
                out.append(tuple(f(v) for f, v in zip(self._key_convs, key)))
            except ValueMismatch:
                continue
        return out

    def _locate(self, row: tuple) -> RowMisfit:
        key = tuple(row[i] for i in self._key_idx)
        for col, f, v in zip(self.spec.columns, self._convs, row):
            try:
                f(v)
            except ValueMismatch as e:
                return RowMisfit(self.spec.name, key, col.name, str(e))
        raise AssertionError("row converted on second try")
