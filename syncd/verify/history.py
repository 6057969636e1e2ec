"""Verification history in Postgres (`syncd.verify_runs`): one row per table per run,
written by `syncd verify` and the daemon's periodic check, read by `syncd report`."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import asyncpg

from syncd.identifiers import quote_pg_ident
from syncd.verify.result import TableVerifyResult

DETAIL_DIFFERENCES = 20  # differences kept in the history per run


def _ts(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc)


async def record(conn: asyncpg.Connection, bk_schema: str, r: TableVerifyResult) -> int:
    """Write one table's result; returns the row's id."""
    detail = {"reason": r.reason, "differences": [d.as_json() for d in r.differences[:DETAIL_DIFFERENCES]]}
    return await conn.fetchval(
        f"""INSERT INTO {quote_pg_ident(bk_schema)}.verify_runs(source, table_name, started_at, finished_at,
                rows_sqlite, rows_postgres, missing, extra, different, pending, repaired, error, full_check,
                table_state, detail)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING id""",
        r.source, r.table, _ts(r.started_at), _ts(r.finished_at), r.rows_sqlite, r.rows_postgres, r.missing,
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
        parts = [f"{n} {what}" for n, what in ((self.missing, "missing in Postgres"), (self.extra, "extra in Postgres"),
                                               (self.different, "different"), (self.pending, "pending")) if n]
        text = ", ".join(parts)
        return text + (f"; {self.repaired} repaired" if self.repaired else "")


async def load_runs(conn: asyncpg.Connection, bk_schema: str, source: str | None = None,
                    since: dt.datetime | None = None) -> list[VerifyRun]:
    """Runs in time order (oldest first). The bookkeeping must be current
    (bookkeeping.ensure_bookkeeping)."""
    rows = await conn.fetch(
        f"""SELECT id, source, table_name, started_at, finished_at, rows_sqlite, rows_postgres, missing, extra,
                   different, pending, repaired, error, full_check, table_state, detail
            FROM {quote_pg_ident(bk_schema)}.verify_runs
            WHERE ($1::text IS NULL OR source = $1) AND ($2::timestamptz IS NULL OR finished_at >= $2)
            ORDER BY finished_at, id""",
        source, since,
    )
    out = []
    for r in rows:
        values = list(r)
        try:
            values[-1] = json.loads(values[-1]) if values[-1] else {}
        except ValueError:
            values[-1] = {"reason": values[-1]}
        out.append(VerifyRun(*values))
    return out
