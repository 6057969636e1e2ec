"""Turn SQLite rows into Postgres records, naming the exact value that does not fit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from syncd.model import TableSpec
from syncd.sqlite.audit import format_key
from syncd.types import ValueMismatch, converter


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


class RowConverter:
    """Converts full rows (spec column order) and keys to what asyncpg sends."""

    def __init__(self, spec: TableSpec):
        self.spec = spec
        self._convs = [converter(c.pgtype) for c in spec.columns]
        self._key_idx = spec.key_indexes
        self._key_convs = [self._convs[i] for i in self._key_idx]

    def row(self, row: tuple) -> tuple:
        try:
            return tuple([f(v) for f, v in zip(self._convs, row)])
        except ValueMismatch:
            raise self._locate(row) from None

    def rows(self, rows: list[tuple]) -> list[tuple]:
        convs = self._convs
        out = []
        append = out.append
        try:
            for r in rows:
                append(tuple([f(v) for f, v in zip(convs, r)]))
        except ValueMismatch:
            raise self._locate(r) from None
        return out

    def key(self, key: tuple) -> tuple:
        try:
            return tuple(f(v) for f, v in zip(self._key_convs, key))
        except ValueMismatch as e:
            raise RowMisfit(self.spec.name, key, ", ".join(self.spec.key), str(e)) from None

    def _locate(self, row: tuple) -> RowMisfit:
        key = tuple(row[i] for i in self._key_idx)
        for col, f, v in zip(self.spec.columns, self._convs, row):
            try:
                f(v)
            except ValueMismatch as e:
                return RowMisfit(self.spec.name, key, col.name, str(e))
        raise AssertionError("row converted on second try")


def raw_key(spec: TableSpec, row: tuple) -> tuple:
    return tuple(row[i] for i in spec.key_indexes)


def key_text(spec: TableSpec, key: tuple[Any, ...]) -> str:
    return format_key(key)
