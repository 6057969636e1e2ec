"""What a verification found, per table and per source, and how it reads."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from syncd.identifiers import quote_ident
from syncd.sqlite.audit import format_key
from syncd.sqlite.connection import not_utf8

MISSING = "missing"  # in SQLite, not in Postgres
EXTRA = "extra"  # in Postgres, not in SQLite
DIFFERENT = "different"  # in both, some column differs
PENDING = "pending"  # differs, and the change that explains it is not applied yet

KIND_TEXT = {
    MISSING: "missing in Postgres",
    EXTRA: "extra in Postgres",
    DIFFERENT: "different",
    PENDING: "pending",
}
# Once cut over SQLite follows Postgres: a row only SQLite holds is not one Postgres lacks
# but one the file should not have (a repair deletes it), and one only Postgres holds is
# missing in SQLite.
KIND_TEXT_CUT_OVER = {**KIND_TEXT, MISSING: "only in SQLite", EXTRA: "missing in SQLite"}


def kind_words(cut_over: bool) -> dict[str, str]:
    """How each kind of difference reads, before the cutover or after it."""
    return KIND_TEXT_CUT_OVER if cut_over else KIND_TEXT


MAX_LISTED = 1000  # differences kept per table (the counts stay exact)


@dataclass
class Difference:
    kind: str
    key: tuple  # SQLite's form of the key where known, else Postgres's
    columns: tuple[str, ...] = ()
    note: str | None = None
    raw_key: tuple | None = field(default=None, repr=False, compare=False)  # SQLite form, for repair
    pg_key: tuple | None = field(default=None, repr=False, compare=False)  # Postgres's form, where known
    repairable: bool = field(default=True, repr=False, compare=False)  # False: a replay cannot fix it

    def text(self, cut_over: bool = False) -> str:
        out = f"{kind_words(cut_over)[self.kind]}: key {format_key(self.key)}"
        if self.columns:
            out += ": column" + ("s " if len(self.columns) > 1 else " ") + ", ".join(f'"{c}"' for c in self.columns)
        if self.note:
            out += f" ({self.note})"
        return out

    def as_json(self) -> dict:
        return {"kind": self.kind, "key": [json_value(v) for v in self.key], "columns": list(self.columns),
                "note": self.note}


@dataclass
class TableVerifyResult:
    source: str
    table: str
    state: str | None  # syncd's replication state for the table (None: not registered)
    compared: bool = False  # the content was compared in full
    rows_sqlite: int | None = None
    rows_postgres: int | None = None
    missing: int = 0
    extra: int = 0
    different: int = 0
    pending: int = 0
    repaired: int = 0
    replayed: list[Difference] = field(default_factory=list)  # what the repair replayed (this result checks after it)
    reason: str | None = None  # why the table was not compared, or why rows are pending
    in_flight: str | None = None  # why unequal totals can go with "equal" (rows the stream had yet to apply)
    error: str | None = None  # the check itself failed
    differences: list[Difference] = field(default_factory=list)
    # Of the differences past MAX_LISTED, those only in columns computed where a repair
    # writes (no replay or copy mends them): counted, as they are not listed.
    computed_unlisted: int = 0
    columns: list[str] | None = None  # the columns compared (the table as it was then); None: not compared
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def mismatched(self) -> int:
        return self.missing + self.extra + self.different + self.pending

    def add_reason(self, note: str) -> None:
        self.reason = f"{self.reason}; {note}" if self.reason else note

    @property
    def equal(self) -> bool:
        return self.compared and self.error is None and self.mismatched == 0

    @property
    def seconds(self) -> float:
        return max(0.0, self.finished_at - self.started_at)

    def add(self, d: Difference) -> None:
        if d.kind == MISSING:
            self.missing += 1
        elif d.kind == EXTRA:
            self.extra += 1
        elif d.kind == DIFFERENT:
            self.different += 1
        else:
            self.pending += 1
        if len(self.differences) < MAX_LISTED:
            self.differences.append(d)

    def summary(self, cut_over: bool = False) -> str:
        """One line naming source and table and saying what was found (`cut_over`: worded
        for SQLite following Postgres)."""
        head = f"{self.source}: {quote_ident(self.table)}"
        counts = self._counts()
        if self.error is not None:
            return f"{head} ERROR: {self.error}"
        if not self.compared:
            state = self.state or "not registered"
            return f"{head} not comparable ({state}){counts}: {self.reason}"
        if self.equal:
            return f"{head} equal{counts}" + (f", after repairing {self.repaired} row(s)" if self.repaired else "")
        words = kind_words(cut_over)
        parts = [f"{n} {words[kind]}" for n, kind in ((self.missing, MISSING), (self.extra, EXTRA),
                                                      (self.different, DIFFERENT), (self.pending, PENDING)) if n]
        line = f"{head} DIFFERS{counts}: {', '.join(parts)}"
        if self.pending and self.reason:
            line += f"; {self.reason}"
        return line

    def _counts(self) -> str:
        if self.rows_sqlite is None and self.rows_postgres is None:
            return ""
        s = "?" if self.rows_sqlite is None else f"{self.rows_sqlite}"
        p = "?" if self.rows_postgres is None else f"{self.rows_postgres}"
        flight = f"; {self.in_flight}" if self.in_flight and self.rows_sqlite != self.rows_postgres else ""
        return f" ({s} rows in SQLite, {p} in Postgres{flight}; {self.seconds:.1f} s)"

    def as_json(self) -> dict:
        return {
            "source": self.source, "table": self.table, "state": self.state, "compared": self.compared,
            "equal": self.equal, "rows_sqlite": self.rows_sqlite, "rows_postgres": self.rows_postgres,
            "missing": self.missing, "extra": self.extra, "different": self.different, "pending": self.pending,
            "repaired": self.repaired, "reason": self.reason, "in_flight": self.in_flight, "error": self.error,
            "seconds": round(self.seconds, 3),
            "differences": [d.as_json() for d in self.differences],
            "differences_listed": len(self.differences),
            "finished_at": _iso(self.finished_at),
        }


@dataclass
class SourceVerifyResult:
    source: str
    path: str = ""
    schema: str = ""
    tables: list[TableVerifyResult] = field(default_factory=list)
    error: str | None = None  # the source could not be checked at all
    repair_note: str | None = None
    direction: str = "to_postgres"  # "to_sqlite" once cut over: SQLite follows Postgres, repairs go that way
    no_such_table: bool = False  # none of the tables asked for is the source's (error says which)
    way_back_ended: str | None = None  # cut over and SQLite no longer follows Postgres (why): not compared
    not_compared: list[str] = field(default_factory=list)  # the tables left alone so

    @property
    def equal(self) -> bool:
        return self.error is None and all(t.equal for t in self.tables)

    @property
    def failed(self) -> bool:
        return self.error is not None or any(t.error is not None for t in self.tables)

    def as_json(self) -> dict:
        return {"source": self.source, "path": self.path, "schema": self.schema, "direction": self.direction,
                "equal": self.equal, "way_back_ended": self.way_back_ended, "not_compared": self.not_compared,
                "error": self.error, "repair": self.repair_note, "tables": [t.as_json() for t in self.tables]}


def exit_code(results: list[SourceVerifyResult]) -> int:
    """0 every table equal, 1 some table differs or is not comparable, 2 a check failed."""
    if any(r.failed for r in results):
        return 2
    return 0 if all(r.equal for r in results) else 1


def json_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"blob": v.hex()}
    if not_utf8(v):  # JSON holds no such text (Postgres's json refuses it): its bytes, as a blob's
        return {"text_bytes": v.encode("utf-8", "surrogateescape").hex()}
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    return v


def _iso(ts: float) -> str | None:
    if not ts:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")
