"""Date and time columns: which SQLite spelling a column uses, whether every value
survives the trip to a typed Postgres column and back, and the SQL for both ways.

SQLite has no date type: an application stores text ('2024-05-01 10:00:00'), or
numbers. A column declared DATE, DATETIME or TIMESTAMP is replicated as text (lossless)
and becomes `date`, `timestamp` or `timestamptz` at cutover when every stored value
parses in the one spelling the column uses and renders back to exactly the stored
value. That spelling is recorded (bookkeeping `columns.sqlite_format`), so the way back
writes values as the application wrote them.

The spelling, as recorded (`FORMAT.spec`):
    %Y-%m-%d                          a date
    %Y-%m-%d %H:%M:%S                 SQLite's datetime() (T instead of the space: ISO 8601)
    %Y-%m-%d %H:%M                    no seconds
    %Y-%m-%d %H:%M:%S.%3f             fixed fraction digits (%3f: SQLite's strftime('%f'), %6f: microseconds)
    %Y-%m-%d %H:%M:%S[.%6f]           Python's isoformat(): six digits unless the microseconds are 0
    ...Z / ...+02:00                  one fixed UTC offset after any of the above
    unixepoch                         integer seconds since 1970-01-01 UTC

Which Postgres type: naive text -> `timestamp` (the wall-clock value, exactly as stored;
reading it as UTC would be a guess), text with a UTC offset -> `timestamptz` (it names
an instant), integer epochs -> `timestamptz` (an instant too; the application gets an
aware datetime in UTC), dates -> `date`. `[cutover] timestamps` overrides the flavour.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from syncd.identifiers import pg_string_literal, quote_literal, quote_pg_ident
from syncd.types import PgType, ValueMismatch, converter

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
SAMPLE_KEYS = 5
# The widest UTC offset Postgres reads in a timestamp's text (its MAX_TZDISP_HOUR: 15 hours).
PG_MAX_OFFSET_HOURS = 15


@dataclass(frozen=True)
class Format:
    kind: str  # "date", "datetime", "epoch"
    sep: str = " "
    seconds: bool = True
    frac: int = 0  # fixed fraction digits
    optional_frac: bool = False  # six digits when the microseconds are not 0, else none
    zone: str | None = None  # "Z" or "+HH:MM": one fixed offset

    @property
    def spec(self) -> str:
        if self.kind == "epoch":
            return "unixepoch"
        if self.kind == "date":
            return "%Y-%m-%d"
        s = f"%Y-%m-%d{self.sep}%H:%M" + (":%S" if self.seconds else "")
        if self.optional_frac:
            s += "[.%6f]"
        elif self.frac:
            s += f".%{self.frac}f"
        return s + (self.zone or "")

    @property
    def offset(self) -> dt.timezone | None:
        if self.zone is None:
            return None
        if self.zone == "Z":
            return UTC
        sign = -1 if self.zone[0] == "-" else 1
        return dt.timezone(sign * dt.timedelta(hours=int(self.zone[1:3]), minutes=int(self.zone[4:6])))

    def default_type(self) -> PgType:
        if self.kind == "date":
            return PgType.DATE
        if self.kind == "epoch" or self.zone is not None:
            return PgType.TIMESTAMPTZ
        return PgType.TIMESTAMP


_SPEC = re.compile(r"%Y-%m-%d(?:([ T])%H:%M(:%S)?(?:\[\.%6f\]|\.%([1-6])f)?(Z|[+-]\d\d:\d\d)?)?")


def parse_spec(spec: str) -> Format:
    """The Format a recorded `sqlite_format` names; ValueError for anything else."""
    if spec == "unixepoch":
        return Format("epoch")
    m = _SPEC.fullmatch(spec)
    if m is None:
        raise ValueError(f"unknown date format {spec!r}")
    if m.group(1) is None:
        return Format("date")
    return Format("datetime", m.group(1), m.group(2) is not None, int(m.group(3) or 0), "[.%6f]" in spec,
                  m.group(4))


_VALUE = re.compile(r"(\d{4})-(\d\d)-(\d\d)(?:([ T])(\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,6}))?)?(Z|[+-]\d\d:\d\d)?)?")


# Why a column of such integers is not typed (see is_yyyymmdd).
YYYYMMDD = "integers that read as YYYYMMDD dates as well as seconds since 1970"


# An integer beyond 8 digits is seconds since 1970 after 1973-03-03 or before 1966-10-31, no
# YYYYMMDD date: evidence of epochs. Others (0, 99999999, 20240230) are evidence of neither.
EPOCH_EVIDENCE = 100_000_000


def reads_as_yyyymmdd(days: int, epochs: int) -> bool:
    """A column of `days` YYYYMMDD integers and `epochs` integers beyond 8 digits may hold
    either unless the epochs are ten times as many: of a column of seconds since 1970, at
    most the instants of 1970-04-26 to 1973-03-03 have 8 digits, and one in 27 of those
    reads as a real YYYYMMDD date; one stray 2147483647 among dates is no epoch column."""
    return days > 0 and epochs < 10 * days


def is_yyyymmdd(value: Any) -> bool:
    """An integer of 8 digits naming a real date as YYYYMMDD (20240105): also an epoch of
    1970-04-26 to 1973-03-03, so a column of such dates, beside no integer of more than 8
    digits (an epoch after 1973), may hold either."""
    if type(value) is not int or not 10000101 <= value <= 99991231:
        return False
    try:
        dt.date(value // 10000, value // 100 % 100, value % 100)
    except ValueError:
        return False
    return True


def shape(value: Any) -> Format | str:
    """The spelling one stored value has, or why it has none ("real", "other")."""
    if type(value) is int:
        return Format("epoch")
    if type(value) is float:
        return "a real number (a julian day or a fractional epoch is not carried)"
    if type(value) is not str:
        return "not text"
    m = _VALUE.fullmatch(value)
    if m is None:
        return "not a date in an ISO 8601 spelling"
    if m.group(4) is None:
        return Format("date")
    frac = m.group(8)
    return Format("datetime", m.group(4), m.group(7) is not None, len(frac) if frac else 0, False, m.group(9))


def parse(value: Any, fmt: Format) -> dt.date | dt.datetime:
    """The date or datetime `value` (as SQLite stores it) means in `fmt`: naive for a
    naive spelling, aware (in its offset) for a zoned one or an epoch. ValueError if
    it is not spelled that way or names no real date."""
    if fmt.kind == "epoch":
        if type(value) is not int:
            raise ValueError("not an integer")
        try:
            return EPOCH + dt.timedelta(seconds=value)
        except OverflowError:
            raise ValueError("out of range") from None
    if type(value) is not str:
        raise ValueError("not text")
    got = shape(value)
    if not isinstance(got, Format):
        raise ValueError(got)
    if got.zone not in (None, "Z") and (int(got.zone[1:3]) > PG_MAX_OFFSET_HOURS or int(got.zone[4:6]) > 59):
        raise ValueError(f"a UTC offset of {got.zone}, beyond the -15:59 to +15:59 Postgres reads")
    if got.kind != fmt.kind or (fmt.kind == "datetime" and (got.sep, got.seconds, got.zone) != (
            fmt.sep, fmt.seconds, fmt.zone)):
        raise ValueError(f"spelled {got.spec}, not {fmt.spec}")
    if fmt.kind == "datetime" and not fmt.optional_frac and got.frac != fmt.frac:
        raise ValueError(f"spelled {got.spec}, not {fmt.spec}")
    if fmt.optional_frac and got.frac not in (0, 6):
        raise ValueError(f"spelled {got.spec}, not {fmt.spec}")
    m = _VALUE.fullmatch(value)
    assert m is not None
    y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if fmt.kind == "date":
        return dt.date(y, mo, d)
    frac = (m.group(8) or "").ljust(6, "0")
    out = dt.datetime(y, mo, d, int(m.group(5)), int(m.group(6)), int(m.group(7) or 0), int(frac or 0),
                      tzinfo=fmt.offset)
    return out


def render(value: dt.date | dt.datetime, fmt: Format) -> str | int:
    """`value` spelled as `fmt` says (the inverse of parse). A naive datetime given for a
    zoned spelling or an epoch is UTC; an aware one for a naive spelling is turned to UTC
    (how syncd reads a timestamptz column holding naive text)."""
    if fmt.kind == "date":
        if isinstance(value, dt.datetime):
            raise ValueError("a datetime for a date column")
        return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
    if not isinstance(value, dt.datetime):
        raise ValueError("a date for a datetime column")
    if fmt.kind == "epoch":
        v = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        delta = v - EPOCH
        if delta.microseconds:
            raise ValueError("has a fraction of a second")
        return delta.days * 86400 + delta.seconds
    offset = fmt.offset
    if offset is not None:
        value = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).astimezone(offset)
    elif value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    s = f"{value.year:04d}-{value.month:02d}-{value.day:02d}{fmt.sep}{value.hour:02d}:{value.minute:02d}"
    if fmt.seconds:
        s += f":{value.second:02d}"
    elif value.second or value.microsecond:
        raise ValueError("has seconds the spelling drops")
    us = f"{value.microsecond:06d}"
    if fmt.optional_frac:
        s += f".{us}" if value.microsecond else ""
    elif fmt.frac:
        if us[fmt.frac:].strip("0"):
            raise ValueError("has more fraction digits than the spelling keeps")
        s += "." + us[:fmt.frac]
    elif value.microsecond:
        raise ValueError("has a fraction of a second the spelling drops")
    return s + (fmt.zone or "")


def python_value(value: Any, fmt: Format, pgtype: PgType) -> dt.date | dt.datetime:
    """What asyncpg sends for stored `value` in a column of `pgtype` (raises ValueError)."""
    v = parse(value, fmt)
    if pgtype is PgType.DATE:
        return v
    assert isinstance(v, dt.datetime)
    if pgtype is PgType.TIMESTAMP:
        return v if v.tzinfo is None else v.astimezone(UTC).replace(tzinfo=None)
    return v if v.tzinfo is not None else v.replace(tzinfo=UTC)


def round_trips(value: Any, fmt: Format, pgtype: PgType) -> str | None:
    """None when `value` parses in `fmt`, fits `pgtype` and renders back to itself
    exactly; otherwise why not."""
    try:
        v = python_value(value, fmt, pgtype)
        back = render(v, fmt)
    except (ValueError, OverflowError) as e:
        return str(e) or "not a date"
    if back != value or type(back) is not type(value):
        return f"comes back as {back!r}"
    return None


def _exact_spelling(fmt: Format, pgtype: PgType) -> re.Pattern | None:
    """A pattern the text a value in `fmt` is spelled as matches exactly when rendering
    the value it parses to gives that text back (round_trips' answer, without parsing
    twice), for a format of the column's own type; None where only round_trips can tell."""
    if fmt.kind == "date":
        return re.compile(r"\d{4}-\d\d-\d\d") if pgtype is PgType.DATE else None
    if fmt.kind != "datetime" or (fmt.zone is None) != (pgtype is PgType.TIMESTAMP):
        return None
    frac = r"(?:\.(?!0{6})\d{6})?" if fmt.optional_frac else rf"\.\d{{{fmt.frac}}}" if fmt.frac else ""
    return re.compile(r"\d{4}-\d\d-\d\d" + re.escape(fmt.sep) + r"\d\d:\d\d" + (r":\d\d" if fmt.seconds else "")
                      + frac + re.escape(fmt.zone or ""))


def strict_converter(pgtype: PgType, spec: str, declared: str = "") -> Callable[[Any], Any]:
    """types.converter(pgtype) for the values a column spelled `spec` (declared
    `declared` in SQLite) holds exactly: those in its spelling, and those the way back
    writes for an instant the spelling cannot hold (a fraction of a second, say); a
    ValueMismatch for any other (see types.column_converter)."""
    from syncd.reverse.values import ColumnShape, NotExpressible, to_sqlite  # built on this module
    from syncd.sqlite_sql import affinity

    fmt = parse_spec(spec)
    base = converter(pgtype)
    shape = ColumnShape("", pgtype, affinity(declared), spec)
    exact = _exact_spelling(fmt, pgtype)

    def convert(value: Any) -> Any:
        if value is None:
            return None
        if exact is not None and type(value) is str and exact.fullmatch(value):
            return base(value)  # the column's own spelling, digit for digit: one parse
        if fmt.kind == "epoch" and type(value) is int and pgtype is not PgType.DATE:
            return base(value)
        why = round_trips(value, fmt, pgtype)
        if why is None:
            return base(value)
        try:
            out = base(value)
            back = to_sqlite(shape, out)
        except (ValueMismatch, NotExpressible):
            back = None  # refused for its own reason: named below by the column's spelling
        if back == value and type(back) is type(value):
            return out  # as the way back writes this instant
        raise ValueMismatch(
            f"{value!r} is not spelled {spec} as this column's values are since schema parity made it "
            f"{pgtype.value} ({why}): write it in that spelling, or carry the column as text again (\"text\" as "
            "its [sources.columns] type)")

    return convert


# --- one column, all its values -------------------------------------------------------


# Counts kept beside the spellings' own, of values some spelling holds.
MARKS = ("zero-fraction", YYYYMMDD)


@dataclass
class ColumnAudit:
    """Every stored value of one column against the spelling most of them use."""

    table: str
    column: str
    declared: str
    values: int = 0  # non-NULL values seen
    shapes: Counter = field(default_factory=Counter)  # spec or reason -> count
    samples: dict[str, list[tuple]] = field(default_factory=dict)  # spec or reason -> first keys
    examples: dict[str, Any] = field(default_factory=dict)  # spec or reason -> first value
    zero_fraction: list[tuple] = field(default_factory=list)  # keys of six zero digits (not isoformat)
    failed: dict[str, list[tuple]] = field(default_factory=dict)  # spec -> keys that name no real date
    failed_count: Counter = field(default_factory=Counter)
    failed_example: dict[str, tuple[Any, str]] = field(default_factory=dict)
    epochs: int = 0  # integers of more than 8 digits (see EPOCH_EVIDENCE)

    def add(self, key: tuple, value: Any) -> None:
        if value is None:
            return
        self.values += 1
        got = shape(value)
        name = got.spec if isinstance(got, Format) else got
        self.shapes[name] += 1
        keys = self.samples.setdefault(name, [])
        if len(keys) < SAMPLE_KEYS:
            keys.append(key)
        self.examples.setdefault(name, value)
        if is_yyyymmdd(value):
            self.shapes[YYYYMMDD] += 1
            keys = self.samples.setdefault(YYYYMMDD, [])
            if len(keys) < SAMPLE_KEYS:
                keys.append(key)
            self.examples.setdefault(YYYYMMDD, value)
        elif type(value) is int and abs(value) >= EPOCH_EVIDENCE:
            self.epochs += 1
        if isinstance(got, Format):
            if got.frac == 6 and value[20:26] == "000000":
                if len(self.zero_fraction) < SAMPLE_KEYS:
                    self.zero_fraction.append(key)
                self.shapes["zero-fraction"] += 1
            why = round_trips(value, got, got.default_type())
            if why is not None:
                self.failed_count[name] += 1
                self.failed_example.setdefault(name, (value, why))
                failed = self.failed.setdefault(name, [])
                if len(failed) < SAMPLE_KEYS:
                    failed.append(key)

    def verdict(self, override: PgType | None = None) -> "Verdict":
        """The type and spelling the column can take, or why it stays text."""
        formats = [s for s in self.shapes if s not in MARKS]
        if not self.values:
            fmt = Format("date") if "DATE" in self.declared.upper() and "TIME" not in self.declared.upper() \
                else Format("datetime")
            return Verdict(self, fmt, _flavour(fmt, override), misfits=0, note="no values yet: SQLite's own "
                           f"spelling ({fmt.spec}) is assumed")
        fmt = _choose(self.shapes)
        if fmt is None:
            top = next(s for s, _n in self.shapes.most_common() if s not in MARKS)
            return Verdict(self, None, None, self.values, why=top, keys=self.samples[top][:SAMPLE_KEYS],
                           example=self.examples.get(top))
        ok_specs = {fmt.spec}
        if fmt.optional_frac:
            base = Format("datetime", fmt.sep, fmt.seconds, 0, False, fmt.zone).spec
            six = Format("datetime", fmt.sep, fmt.seconds, 6, False, fmt.zone).spec
            ok_specs = {base, six}
        misfit_keys: list[tuple] = []
        count = 0
        why = None
        example = None
        for s in formats:
            if s in ok_specs:
                continue
            count += self.shapes[s]
            misfit_keys += self.samples[s]
            why = why or (f"spelled {s}, not {fmt.spec}" if s.startswith("%") or s == "unixepoch" else s)
            example = example if example is not None else self.examples.get(s)
        for s in ok_specs:
            if self.failed_count[s]:
                count += self.failed_count[s]
                misfit_keys += self.failed[s]
                value, reason = self.failed_example[s]
                why = why or reason
                example = example if example is not None else value
        if fmt.optional_frac and self.shapes["zero-fraction"]:
            count += self.shapes["zero-fraction"]
            misfit_keys += self.zero_fraction
            why = why or "six zero fraction digits (the spelling drops a zero fraction)"
        if count:
            return Verdict(self, fmt, None, count, why=why, keys=misfit_keys[:SAMPLE_KEYS], example=example)
        if fmt.kind == "epoch" and reads_as_yyyymmdd(self.shapes[YYYYMMDD], self.epochs):
            return Verdict(self, None, None, 0, why=YYYYMMDD, keys=self.samples[YYYYMMDD][:SAMPLE_KEYS],
                           example=self.examples[YYYYMMDD])
        return Verdict(self, fmt, _flavour(fmt, override), 0)


def _flavour(fmt: Format, override: PgType | None) -> PgType:
    if fmt.kind == "date":
        return PgType.DATE
    return override or fmt.default_type()


def _choose(shapes: Counter) -> Format | None:
    """The spelling most values use (a mix of none and six fraction digits is Python's
    isoformat()), or None when the most common is no date at all."""
    specs = [(n, s) for s, n in shapes.most_common() if s not in MARKS]
    for _n, s in specs:
        try:
            fmt = parse_spec(s)
        except ValueError:
            return None
        if fmt.kind == "datetime" and fmt.frac in (0, 6):
            other = Format("datetime", fmt.sep, fmt.seconds, 6 - fmt.frac, False, fmt.zone).spec
            if shapes.get(other):
                return Format("datetime", fmt.sep, fmt.seconds, 0, True, fmt.zone)
        return fmt
    return None


@dataclass
class Verdict:
    audit: ColumnAudit
    format: Format | None
    pgtype: PgType | None  # None: stays text
    misfits: int  # values that do not round-trip
    why: str | None = None
    keys: list[tuple] = field(default_factory=list)
    example: Any = None
    note: str | None = None

    @property
    def typed(self) -> bool:
        return self.pgtype is not None


def is_candidate(declared: str) -> bool:
    """A declared type naming a date or timestamp (DATE, DATETIME, TIMESTAMP...)."""
    t = declared.upper()
    return "DATE" in t or "TIMESTAMP" in t


# --- the same, in Postgres: the conversion and its proof -------------------------------


def _at_offset(expr: str, fmt: Format) -> str:
    """A timestamptz `expr` as the wall-clock time in the spelling's offset."""
    if fmt.zone in (None, "Z"):
        return f"({expr} AT TIME ZONE 'UTC')"
    return f"({expr} AT TIME ZONE INTERVAL {pg_string_literal(fmt.zone)})"


def pg_using(column: str, fmt: Format, pgtype: PgType) -> str:
    """The USING expression turning the text column into `pgtype` (PG parses exactly
    the ISO spellings syncd accepts, whatever its DateStyle)."""
    c = quote_pg_ident(column)
    if fmt.kind == "date":
        return f"{c}::date"
    if fmt.kind == "epoch":
        tz = f"to_timestamp({c}::bigint)"
        return tz if pgtype is PgType.TIMESTAMPTZ else f"({tz} AT TIME ZONE 'UTC')"
    if fmt.zone is None:
        naive = f"{c}::timestamp"
        return naive if pgtype is PgType.TIMESTAMP else f"({naive} AT TIME ZONE 'UTC')"
    tz = f"{c}::timestamptz"
    return tz if pgtype is PgType.TIMESTAMPTZ else f"({tz} AT TIME ZONE 'UTC')"


def pg_render(expr: str, fmt: Format, pgtype: PgType) -> str:
    """SQL spelling a value of `pgtype` as `fmt` does (the inverse of pg_using), text."""
    if fmt.kind == "date":
        return f"to_char({expr}, 'YYYY-MM-DD')"
    if fmt.kind == "epoch":
        return f"(extract(epoch FROM {expr}))::bigint::text"
    if pgtype is PgType.TIMESTAMPTZ:
        wall = _at_offset(expr, fmt)
    elif fmt.zone is not None:
        wall = _at_offset(f"({expr} AT TIME ZONE 'UTC')", fmt)
    else:
        wall = expr
    sep = '"T"' if fmt.sep == "T" else " "
    body = f"to_char({wall}, 'YYYY-MM-DD{sep}HH24:MI" + (":SS" if fmt.seconds else "") + "')"
    if fmt.optional_frac:
        body += f" || CASE WHEN extract(microseconds FROM {wall})::bigint % 1000000 <> 0 " \
                f"THEN to_char({wall}, '.US') ELSE '' END"
    elif fmt.frac:
        body += f" || substr(to_char({wall}, '.US'), 1, {fmt.frac + 1})"
    if fmt.zone:
        body += f" || {pg_string_literal(fmt.zone)}"
    return f"({body})"


def now_default(default_sql: str | None, fmt: Format, pgtype: PgType) -> str | None:
    """The Postgres DEFAULT for a column typed `pgtype` from spelling `fmt` whose SQLite
    DEFAULT is the time of the insert in that very spelling (strftime('%s', 'now') or
    unixepoch() in an epoch column, strftime('%Y-%m-%dT%H:%M:%SZ', 'now') in one spelled
    so): the same instant, to the spelling's precision. None for any other default (the
    literals and CURRENT_* that types.pg_default carries included)."""
    from syncd import sqlite_sql

    if default_sql is None or pgtype not in (PgType.TIMESTAMP, PgType.TIMESTAMPTZ):
        return None
    try:
        call = sqlite_sql.date_call(default_sql)
    except sqlite_sql.SqlSyntaxError:
        return None
    if call is None:
        return None
    if fmt.kind == "epoch":
        wanted = {("strftime", ("%s", "now")), ("unixepoch", ()), ("unixepoch", ("now",))}
        unit = "second"
    elif fmt.kind == "datetime" and fmt.zone in (None, "Z") and not fmt.optional_frac and fmt.frac in (0, 3):
        clock = "%H:%M:%f" if fmt.frac == 3 else "%H:%M:%S" if fmt.seconds else "%H:%M"
        wanted = {("strftime", (f"%Y-%m-%d{fmt.sep}{clock}{fmt.zone or ''}", "now"))}
        unit = "milliseconds" if fmt.frac == 3 else "second" if fmt.seconds else "minute"
    else:
        return None
    if call not in wanted:
        return None
    # SQLite's 'now' is UTC: a naive column holds the UTC wall-clock time, as pg_using reads it.
    now = "now()" if pgtype is PgType.TIMESTAMPTZ else "(now() AT TIME ZONE 'UTC')"
    return f"date_trunc('{unit}', {now})"


# --- reading the values ------------------------------------------------------------------


def audit(conn, spec, columns: list[str]) -> dict[str, ColumnAudit]:
    """Every stored value of `columns` of table `spec`, window by window (no statement
    holds the read lock for the whole table). Call outside any transaction."""
    from syncd.sqlite import windows

    if not columns:
        return {}
    declared = {c.name: c.declared for c in spec.columns}
    audits = {c: ColumnAudit(spec.name, c, declared.get(c, "")) for c in columns}
    keys = [spec.sqlite_ref(k) for k in spec.key]
    cols = [spec.sqlite_ref(c) for c in columns]
    order = windows.table_ordering(spec)
    nkey = len(keys)
    old = conn.text_factory
    conn.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
    try:
        where = " OR ".join(f"{c} IS NOT NULL" for c in cols)
        for rows in windows.scan(conn, spec.name, order, ", ".join(keys + cols), where):
            for row in rows:
                key = tuple(row[:nkey])
                for name, value in zip(columns, row[nkey:]):
                    audits[name].add(key, value)
    finally:
        conn.text_factory = old
    return audits


# --- the cutover's quick reading ------------------------------------------------------------

QUICK_SAMPLE = 10_000


def sqlite_match(col: str, fmt: Format) -> str:
    """A SQLite condition true for the values spelled as `fmt` (digits where digits go;
    whether they name a real date, and come back exactly, Postgres proves)."""
    if fmt.kind == "epoch":
        return f"typeof({col}) = 'integer'"
    date = "[0-9][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]"
    if fmt.kind == "date":
        pats = [date]
    else:
        base = f"{date}{fmt.sep}[0-2][0-9]:[0-5][0-9]" + (":[0-5][0-9]" if fmt.seconds else "")
        if fmt.optional_frac:
            pats = [base, base + "." + "[0-9]" * 6]
        else:
            pats = [base + ("." + "[0-9]" * fmt.frac if fmt.frac else "")]
        pats = [p + (fmt.zone or "") for p in pats]
    cond = " OR ".join(f"{col} GLOB {quote_literal(p)}" for p in pats)
    out = f"(typeof({col}) = 'text' AND ({cond}))"
    if fmt.optional_frac:
        out += f" AND {col} NOT GLOB {quote_literal('*.000000' + (fmt.zone or ''))}"
    return out


def audit_quick(conn, spec, columns: list[str], override: PgType | None = None) -> dict[str, Verdict]:
    """The cutover's reading, in a frozen file: the spelling from a sample, then every
    value checked against it in SQL (SQLite's own speed, not Python's). Values spelled
    right that name no real date are left to Postgres's proof before the column changes."""
    from syncd.sqlite import windows

    out: dict[str, Verdict] = {}
    keys = ", ".join(spec.sqlite_ref(k) for k in spec.key)
    declared = {c.name: c.declared for c in spec.columns}
    # Window by window, as every scan of the file: the freeze leaves the tables the source
    # does not carry writable, and in rollback-journal mode one statement over the whole
    # table would hold their writers back for as long as it reads.
    order = windows.table_ordering(spec)

    def first_rows(col: str, where: str) -> list[tuple]:
        """The keys and values of `col` of the first SAMPLE_KEYS rows `where` holds."""
        rows: list[tuple] = []
        for got in windows.scan(conn, spec.name, order, f"{keys}, {col}", where):
            rows += got[:SAMPLE_KEYS - len(rows)]
            if len(rows) >= SAMPLE_KEYS:
                break
        return rows

    old = conn.text_factory
    conn.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
    try:
        for name in columns:
            col = spec.sqlite_ref(name)
            sample = ColumnAudit(spec.name, name, declared.get(name, ""))
            for got in windows.scan(conn, spec.name, order, f"{keys}, {col}", f"{col} IS NOT NULL"):
                for row in got[:QUICK_SAMPLE - sample.values]:
                    sample.add(tuple(row[:-1]), row[-1])
                if sample.values >= QUICK_SAMPLE:
                    break
            first = sample.verdict(override)
            # Integers, read as seconds since 1970 or as YYYYMMDD dates: the whole column's counts
            # of both decide, as the full audit's do (a sample of sentinels says nothing of the
            # dates past it). Counted in the same scan as the values not spelled so; CASE, not
            # AND, so that only 8-digit integers pay for the date check.
            integers = first.typed and first.format.kind == "epoch" or first.format is None and first.why == YYYYMMDD
            if first.format is None and not integers or sample.values < QUICK_SAMPLE:
                out[name] = first  # the sample is every value, or no spelling: its verdict stands
                continue
            fmt = first.format or Format("epoch")
            match = sqlite_match(col, fmt)
            counts = f"count({col}), count({col}) - coalesce(sum({match}), 0)"
            if integers:
                other = (f"typeof({col}) = 'integer' AND ({col} >= {EPOCH_EVIDENCE} "
                         f"OR {col} <= -{EPOCH_EVIDENCE})")  # abs() overflows on the smallest integer
                d = f"printf('%04d-%02d-%02d', {col} / 10000, {col} / 100 % 100, {col} % 100)"
                eight = f"typeof({col}) = 'integer' AND {col} BETWEEN 10000101 AND 99991231"
                counts += (f", coalesce(sum({other}), 0), "
                           f"coalesce(sum(CASE WHEN {eight} THEN date({d}, '+0 days') IS {d} ELSE 0 END), 0)")
            total = bad = epochs = days = 0
            for got in windows.scan(conn, spec.name, order, counts):
                total, bad = total + got[0][0], bad + got[0][1]
                if integers:
                    epochs, days = epochs + got[0][2], days + got[0][3]
            if integers and reads_as_yyyymmdd(days, epochs):
                dated = first_rows(col, f"{eight} AND date({d}, '+0 days') IS {d}")
                out[name] = Verdict(sample, None, None, 0, why=YYYYMMDD, keys=[tuple(r[:-1]) for r in dated],
                                    example=dated[0][-1])
                continue
            audit = ColumnAudit(spec.name, name, declared.get(name, ""), values=total)
            if not bad:
                out[name] = Verdict(audit, fmt, _flavour(fmt, override), 0)
                continue
            rows = first_rows(col, f"{col} IS NOT NULL AND NOT ({match})")
            example = rows[0][-1] if rows else None
            got = shape(example) if rows else None
            why = (f"spelled {got.spec}, not {fmt.spec}" if isinstance(got, Format) else got) or "not spelled so"
            out[name] = Verdict(audit, fmt, None, bad, why=why, keys=[tuple(r[:-1]) for r in rows], example=example)
    finally:
        conn.text_factory = old
    return out
