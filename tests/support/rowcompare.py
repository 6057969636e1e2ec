"""Whether SQLite and Postgres hold the same rows, decided row by row, independently of
syncd (no syncd import: no converter, no canonical form, no hashing).

Two sides are equal when their rows pair off one to one, each SQLite row with a
Postgres row holding the same value in every column, as Postgres should hold it.
Nothing is keyed: two SQLite rows that one Postgres row could stand for still need two
Postgres rows."""

from __future__ import annotations

import datetime as dt
import math
import re
import sqlite3
import struct
from decimal import Decimal
from typing import Any


def same_value(sv: Any, pv: Any) -> bool:
    """SQLite value `sv` vs `pv`, the value in Postgres as asyncpg returns it: equal
    when `pv` is what the SQLite value should have become in a column of pv's type
    (numbers in a text column as SQLite renders them as text, reals in numeric by the value
    of their shortest form, or their exact value from 2^53 up, `timestamp` from ISO text or
    unix seconds; 0.0 and -0.0 as one value)."""
    if sv is None or pv is None:
        return sv is None and pv is None
    if isinstance(sv, bool):
        raise TypeError("sqlite3 never returns a bool")
    if isinstance(pv, bool):
        return type(sv) is int and sv in (0, 1) and bool(sv) is pv
    if isinstance(pv, int):
        return type(sv) is int and sv == pv
    if isinstance(pv, float):
        if type(sv) is int:
            return math.isfinite(pv) and float(sv) == pv and int(pv) == sv
        # Bit for bit, but for the sign of zero: syncd verify takes -0.0 and 0.0 for one
        # value, as SQLite's and Postgres's `=` do (a REAL column cannot keep -0.0 in SQLite).
        return type(sv) is float and (_bits(sv) == _bits(pv) or sv == pv == 0.0)
    if isinstance(pv, Decimal):
        if type(sv) is int:
            want = Decimal(sv)
        elif type(sv) is float:  # as syncd sends a REAL to numeric (types._float_decimal)
            want = Decimal(int(sv)) if math.isfinite(sv) and abs(sv) >= 2.0**53 else Decimal(repr(sv))
        else:
            return False
        # By value, not by scale: 19.9 and 19.90 are one REAL in SQLite, which keeps no
        # scale, so after a cutover Postgres may hold either for the same SQLite value.
        return pv == want
    if isinstance(pv, str):
        if type(sv) is str:
            return sv == pv
        if type(sv) is int:
            return str(sv) == pv
        if type(sv) is float:
            return real_as_text(sv, pv)
        return False
    if isinstance(pv, bytes):
        return type(sv) is bytes and sv == pv
    if isinstance(pv, dt.datetime):
        return instant(sv) == pv
    raise TypeError(f"no comparison for Postgres value {pv!r}")


_SQLITE = sqlite3.connect(":memory:", check_same_thread=False)
_MANTISSA = re.compile(r"-?[0-9]+\.[0-9]+")


def real_as_text(sv: float, pv: str) -> bool:
    """A REAL in a text column: SQLite's own text for it (CAST(x AS TEXT)) where that
    reads back as the same double; where it does not (SQLite's 15 digits drop some),
    text in the same layout, of at most 17 significant digits, that does."""
    cast = _SQLITE.execute("SELECT CAST(? AS TEXT)", (sv,)).fetchone()[0]
    if float(cast) == sv:
        return pv == cast
    mantissa = pv.partition("e")[0]
    digits = mantissa.lstrip("-").replace(".", "").lstrip("0")
    return _MANTISSA.fullmatch(mantissa) is not None and len(digits) <= 17 and float(pv) == sv


def _bits(f: float) -> bytes:
    return struct.pack(">d", f)


def instant(sv: Any) -> dt.datetime | None:
    """A `timestamp` column's reading of a SQLite value: ISO text (a trailing Z or an
    offset is converted to UTC) or unix seconds."""
    if isinstance(sv, (int, float)) and not isinstance(sv, bool):
        return dt.datetime(1970, 1, 1) + dt.timedelta(seconds=sv)
    if not isinstance(sv, str):
        return None
    text = sv.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        d = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if d.tzinfo is not None:
        d = d.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return d


def same_row(s: tuple, p: tuple) -> bool:
    return len(s) == len(p) and all(same_value(a, b) for a, b in zip(s, p))


def pair_off(sqlite_rows: list[tuple], pg_rows: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """(SQLite rows, Postgres rows) left without a partner in a largest one-to-one
    pairing of equal rows (Kuhn's augmenting paths: the inputs are small)."""
    options = [[j for j, p in enumerate(pg_rows) if same_row(s, p)] for s in sqlite_rows]
    partner: dict[int, int] = {}  # Postgres row -> SQLite row

    def take(i: int, seen: set[int]) -> bool:
        for j in options[i]:
            if j in seen:
                continue
            seen.add(j)
            if j not in partner or take(partner[j], seen):
                partner[j] = i
                return True
        return False

    for i in range(len(sqlite_rows)):
        take(i, set())
    paired = set(partner.values())  # a row once paired stays paired (to another partner, maybe)
    return ([s for i, s in enumerate(sqlite_rows) if i not in paired],
            [p for j, p in enumerate(pg_rows) if j not in partner])


def same_rows(sqlite_rows: list[tuple], pg_rows: list[tuple]) -> bool:
    lone_s, lone_p = pair_off(sqlite_rows, pg_rows)
    return not lone_s and not lone_p
