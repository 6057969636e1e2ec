"""Verification history in Postgres (`syncd.verify_runs`): one row per table per run,
written by `syncd verify` and the daemon's periodic check, read by `syncd report`."""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass

import asyncpg

from syncd.identifiers import quote_pg_ident
from syncd.postgres.bookkeeping import LOCK_CLASS, postgres_clock
from syncd.verify.result import DIFFERENT, EXTRA, MISSING, PENDING, TableVerifyResult, kind_words

DETAIL_DIFFERENCES = 20  # differences kept in the history per run


async def host_clock_offset(conn: asyncpg.Connection) -> dt.timedelta:
    """What to add to a time Postgres's clock stamped (every run, see record) to read it on
    this host's clock: nothing while the two agree within the few minutes clocks differ by
    (report.backups.FUTURE_SECONDS), else how far this host's clock is from Postgres's. A
    host whose clock is behind would otherwise take the checks made now for checks dated in
    the future, and one ahead for checks made long ago."""
    from syncd.report.backups import FUTURE_SECONDS

    before = dt.datetime.now(dt.timezone.utc)
    pg_now = await postgres_clock(conn)
    after = dt.datetime.now(dt.timezone.utc)
    offset = before + (after - before) / 2 - pg_now
    return offset if abs(offset.total_seconds()) > FUTURE_SECONDS else dt.timedelta(0)


def on_host_clock(runs: list["VerifyRun"], offset: dt.timedelta) -> list["VerifyRun"]:
    """`runs` with their times read on this host's clock (host_clock_offset)."""
    if offset:
        for r in runs:
            r.started_at, r.finished_at = r.started_at + offset, r.finished_at + offset
            if r.first_at is not None:
                r.first_at += offset
    return runs


_ROWID_COLUMN = re.compile(r"_syncd_rowid(_\d+)?")  # introspect.rowid_column_name: syncd's, not the file's


def columns_changed(then: object, now: list[str] | None) -> str:
    """How a table's columns `now` (in the SQLite file) differ from those a check compared
    `then` (its record's "columns"), as status and the report say it: '' alike, or not known
    (a run recorded by an earlier syncd, a file not read). The rowid column syncd keys a
    table without a key on in Postgres is compared by a check but is no column of the file."""
    if not isinstance(then, list) or now is None:
        return ""
    then = [c for c in then if c in now or not _ROWID_COLUMN.fullmatch(c)]
    if then == now:
        return ""
    added = [c for c in now if c not in then]
    gone = [c for c in then if c not in now]

    def named(cols: list[str]) -> str:
        shown = ", ".join(f'column "{c}"' for c in cols[:5])
        return shown + (f" and {len(cols) - 5} more" if len(cols) > 5 else "")

    said = ([f"{named(added)} added"] if added else []) + ([f"{named(gone)} gone"] if gone else [])
    return "; ".join(said) or "reordered"


async def record(conn: asyncpg.Connection, bk_schema: str, r: TableVerifyResult, cut_over: bool = False) -> int:
    """Write one table's result (`cut_over`: compared with SQLite following Postgres);
    returns the row's id."""
    detail = {"reason": r.reason, "differences": [d.as_json() for d in r.differences[:DETAIL_DIFFERENCES]]}
    if cut_over:
        detail["cut_over"] = True
    if r.columns is not None:  # a column added or renamed since was not compared (the report says so)
        detail["columns"] = r.columns
    # Dated by Postgres's clock, where every run is recorded as it ends (its length kept),
    # not by the host that ran it: a host whose clock is behind would date a finding into
    # the past, below the checks since and out of the report's window.
    return await conn.fetchval(
        f"""INSERT INTO {quote_pg_ident(bk_schema)}.verify_runs(source, table_name, started_at, finished_at,
                rows_sqlite, rows_postgres, missing, extra, different, pending, repaired, error, full_check,
                table_state, detail)
            SELECT $1, $2, c.t - make_interval(secs => $3), c.t, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14
            FROM (SELECT clock_timestamp() AS t) c RETURNING id""",
        r.source, r.table, max(0.0, r.finished_at - r.started_at), r.rows_sqlite, r.rows_postgres, r.missing,
        r.extra, r.different, r.pending, r.repaired, r.error, r.compared and r.error is None, r.state,
        json.dumps(detail, default=str),
    )


async def mark_repaired(conn: asyncpg.Connection, bk_schema: str, run_id: int, repaired: int) -> None:
    await conn.execute(f"UPDATE {quote_pg_ident(bk_schema)}.verify_runs SET repaired = $2 WHERE id = $1",
                       run_id, repaired)


@dataclass
class VerifyRun:
    id: int
    source: str
    table_name: str
    started_at: dt.datetime
    finished_at: dt.datetime
    rows_sqlite: int | None
    rows_postgres: int | None
    missing: int
    extra: int
    different: int
    pending: int
    repaired: int
    error: str | None
    full_check: bool
    table_state: str | None
    detail: dict
    # Loaded for a report (load_history), a row stands for `count` runs of its table
    # alike (clean or not) in one stretch of time, the first finished at `first_at`:
    # it is the latest of them.
    count: int = 1
    first_at: dt.datetime | None = None

    @property
    def began(self) -> dt.datetime:
        return self.first_at or self.finished_at

    @property
    def mismatched(self) -> int:
        return self.missing + self.extra + self.different + self.pending

    @property
    def clean(self) -> bool:
        """Compared in full and found equal: the only run that counts as evidence."""
        return self.full_check and self.error is None and self.mismatched == 0

    @property
    def reason(self) -> str | None:
        return self.detail.get("reason")

    def outcome(self) -> str:
        if self.error:
            return f"check failed: {self.error}"
        if not self.full_check:
            return f"not compared ({self.table_state or 'not registered'}): {self.reason or 'no reason recorded'}"
        if self.clean:
            return "equal" + (f" (after repairing {self.repaired} row(s))" if self.repaired else "")
        words = kind_words(bool(self.detail.get("cut_over")))
        parts = [f"{n} {words[kind]}" for n, kind in ((self.missing, MISSING), (self.extra, EXTRA),
                                                      (self.different, DIFFERENT), (self.pending, PENDING)) if n]
        text = ", ".join(parts)
        return text + (f"; {self.repaired} repaired" if self.repaired else "")


_COLUMNS = ("id, source, table_name, started_at, finished_at, rows_sqlite, rows_postgres, missing, extra, "
            "different, pending, repaired, error, full_check, table_state, detail")
_CLEAN = "(full_check AND error IS NULL AND missing + extra + different + pending = 0)"


def _runs(rows) -> list[VerifyRun]:
    out = []
    for r in rows:
        values = list(r)
        try:
            values[15] = json.loads(values[15]) if values[15] else {}
        except ValueError:
            values[15] = {"reason": values[15]}
        out.append(VerifyRun(*values))
    return out


async def load_runs(conn: asyncpg.Connection, bk_schema: str, source: str | None = None,
                    since: dt.datetime | None = None) -> list[VerifyRun]:
    """Runs in time order (oldest first), each its own. The bookkeeping must be current
    (bookkeeping.ensure_bookkeeping)."""
    return _runs(await conn.fetch(
        f"""SELECT {_COLUMNS} FROM {quote_pg_ident(bk_schema)}.verify_runs
            WHERE ($1::text IS NULL OR source = $1) AND ($2::timestamptz IS NULL OR finished_at >= $2)
            ORDER BY finished_at, id""",
        source, since,
    ))


# A report over weeks of checks every few minutes would load hundreds of thousands of
# runs: the history is loaded in stretches instead, each table's runs alike (clean or
# not) in one stretch as one row (the latest, counting the others). From `window_start`
# on, a stretch is the window's length / HISTORY_STRETCHES, between a minute and an hour
# (finer than the report's strips) and never wider than `max_width` seconds; before it, a day.
HISTORY_STRETCHES = 96
# Runs alike: clean ones; or ones that found the same kinds of differences, failed with
# the same error, or compared nothing for the same reason (rows missing and a failure
# in one hour are two lines, each named).
_ALIKE = ("error, full_check, table_state, CASE WHEN full_check THEN NULL ELSE detail END, missing > 0, extra > 0, "
          "different > 0, pending > 0, repaired > 0")


async def load_history(conn: asyncpg.Connection, bk_schema: str, sources: list[str], window_start: dt.datetime,
                       now: dt.datetime, max_width: float = 3600.0) -> list[VerifyRun]:
    """The verification history of `sources` in stretches (see above), oldest first. The
    report passes [cutover] max_verify_gap_hours as `max_width`: no gap between runs inside
    a stretch can then be longer than the gaps it looks for (checklist.unwatched)."""
    width = min(3600.0, max_width, max(60.0, (now - window_start).total_seconds() / HISTORY_STRETCHES))
    bk = quote_pg_ident(bk_schema)
    offset = await host_clock_offset(conn)
    window_start -= offset  # on Postgres's clock, as the runs are dated
    async with conn.transaction(isolation="repeatable_read", readonly=True):  # one view, whatever thins meanwhile
        groups = await conn.fetch(
            # The latest of a stretch is the one that began last, as the report orders them:
            # its comparison is the newest (ids follow the order runs were recorded in, and
            # a run that began earlier may finish later).
            f"""SELECT (array_agg(id ORDER BY started_at DESC, finished_at DESC, id DESC))[1], sum(runs)::bigint,
                       min(coalesce(first_finished_at, finished_at))
                FROM {bk}.verify_runs WHERE source = ANY($1::text[])
                GROUP BY source, table_name, {_CLEAN}, {_ALIKE},
                    CASE WHEN finished_at >= $2 THEN floor(extract(epoch FROM finished_at - $2) / $3)
                         ELSE -1 - floor(extract(epoch FROM $2 - finished_at) / 86400) END""",
            sources, window_start, width)
        stretch = {g[0]: (g[1], g[2]) for g in groups}
        runs = _runs(await conn.fetch(
            f"SELECT {_COLUMNS} FROM {bk}.verify_runs WHERE id = ANY($1::bigint[]) "
            "ORDER BY started_at, finished_at, id",
            list(stretch)))
    for r in runs:
        r.count, r.first_at = stretch[r.id]
    return on_host_clock(runs, offset)


# Thinning, by the daemon every hour (fleet.THIN_EVERY_SECONDS): a clean run older than [verify]
# keep_every_run_days merges into the latest clean run of its table in the same hour,
# which then counts it (runs) and keeps when the first of them finished
# (first_finished_at); before the report's window, into the same day. A fleet checked
# every few minutes writes millions of runs a month; thinned, the report and the status
# page read about a row per table per hour, and every run is still counted. A run that
# found anything, failed or compared nothing is never merged: it stays as written.
THIN_IDS_AT_ONCE = 200_000  # rows considered per statement: a first thinning of months stays in short statements
# Two thinnings at once (a pass still running when the next begins, or a killed daemon's
# statement still running in Postgres when it starts again) would each set a kept row's
# count from what it saw, over what the other merged into it: one statement at a time
# (this key under bookkeeping.LOCK_CLASS; sources' keys are never negative).
THIN_LOCK_KEY = -1


async def thin(conn: asyncpg.Connection, bk_schema: str, sources: list[str], hourly_before: dt.datetime,
               daily_before: dt.datetime) -> int:
    """Merge `sources`' clean runs finished before `hourly_before` by table and hour,
    and before `daily_before` by table and day; returns the number of rows merged away."""
    bk = quote_pg_ident(bk_schema)
    merged = 0
    for unit, before in (("day", min(daily_before, hourly_before)), ("hour", hourly_before)):
        low, high = await conn.fetchrow(
            f"SELECT min(id), max(id) FROM {bk}.verify_runs WHERE source = ANY($1::text[]) AND finished_at < $2",
            sources, before)
        if low is None:
            continue
        for start in range(low, high + 1, THIN_IDS_AT_ONCE):
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_CLASS, THIN_LOCK_KEY)
                merged += await _thin_ids(conn, bk, unit, sources, before, start)
    return merged


async def _thin_ids(conn: asyncpg.Connection, bk: str, unit: str, sources: list[str], before: dt.datetime,
                    start: int) -> int:
    """One statement of `thin`: the ids from `start` on, THIN_IDS_AT_ONCE of them (its
    snapshot is taken once the lock is held: it sees what any other thinning merged)."""
    return int((await conn.execute(
        f"""WITH alike AS (
                SELECT id, source, table_name, runs, finished_at, coalesce(first_finished_at, finished_at) AS first,
                       date_trunc('{unit}', finished_at) AS stretch
                FROM {bk}.verify_runs
                WHERE id >= $3 AND id < $4 AND source = ANY($1::text[]) AND finished_at < $2
                      AND {_CLEAN} AND repaired = 0),
            stretches AS (
                -- kept: the run that finished last (ids follow the order runs were recorded in)
                SELECT source, table_name, stretch, (array_agg(id ORDER BY finished_at DESC, id DESC))[1] AS kept,
                       sum(runs) AS runs, min(first) AS first
                FROM alike GROUP BY source, table_name, stretch HAVING count(*) > 1),
            counted AS (
                UPDATE {bk}.verify_runs v SET runs = s.runs, first_finished_at = s.first
                FROM stretches s WHERE v.id = s.kept)
            DELETE FROM {bk}.verify_runs v USING alike a JOIN stretches s USING (source, table_name, stretch)
            WHERE v.id = a.id AND a.id <> s.kept""",
        sources, before, start, start + THIN_IDS_AT_ONCE)).split()[-1])
