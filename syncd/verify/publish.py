"""Set the consistency metrics from a verification result."""

from __future__ import annotations

from syncd.verify.result import SourceVerifyResult


def publish_metrics(result: SourceVerifyResult, earlier: dict[str, int] | None = None) -> None:
    """syncd_rows{side} for every table counted; for every table compared in full,
    syncd_consistency_mismatched_rows and the check's time. A table that could not be
    compared (held, paused, loading, refused, or the check failed) keeps its previous
    check time, so `time() - syncd_consistency_last_check_timestamp_seconds` grows (the
    halted-table alert covers held and paused ones); its mismatch gauge keeps what the
    last check that compared it found, raised to the row-count gap (a lower bound of the
    rows that differ) when that is larger: a difference found is never read as gone
    because a later check could not look (`earlier`: table -> what the last comparing
    check recorded, for a gauge this process has not set yet). Rows replayed by a repair
    count in syncd_repaired_rows_total."""
    from syncd import metrics  # here: `syncd verify` and `syncd report` never serve them

    for t in result.tables:
        repaired = metrics.repaired_rows_total.labels(t.source, t.table)  # from 0, so increase() sees the first
        if t.repaired:
            repaired.inc(t.repaired)
        if t.rows_sqlite is not None:
            metrics.rows.labels(t.source, t.table, "sqlite").set(t.rows_sqlite)
        if t.rows_postgres is not None:
            metrics.rows.labels(t.source, t.table, "postgres").set(t.rows_postgres)
        if t.compared and t.error is None:
            metrics.consistency_mismatched_rows.labels(t.source, t.table).set(t.mismatched)
            metrics.consistency_last_check_timestamp_seconds.labels(t.source, t.table).set(t.finished_at)
        elif t.rows_sqlite is not None and t.rows_postgres is not None:
            gap = abs(t.rows_sqlite - t.rows_postgres)
            before = metrics.shown_value(metrics.consistency_mismatched_rows, t.source, t.table)
            if before is None:
                before = (earlier or {}).get(t.table, 0)
            metrics.consistency_mismatched_rows.labels(t.source, t.table).set(max(gap, before))
