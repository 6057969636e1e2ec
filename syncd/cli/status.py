"""`syncd status [--json] [--source NAME]`: health for people and for monitoring.

Works whether or not the daemon runs. Exit codes follow the Nagios convention:
0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

from syncd.cli import common
from syncd.config import ConfigError
from syncd.model import TO_SQLITE
from syncd.status import UNKNOWN, VERDICTS, SourceStatus, as_json, gather


def register(sub, parent) -> None:
    p = sub.add_parser("status", parents=[parent], help="health of every source (Nagios exit codes)",
                       description="Report each source's state, lag, pending changes, last applied time, "
                                   "table states and last consistency result. Reads SQLite and Postgres "
                                   "directly, and the daemon's endpoint when it answers. Exit codes: 0 OK, "
                                   "1 WARNING, 2 CRITICAL, 3 UNKNOWN.")
    common.add_source_option(p)
    p.add_argument("--json", action="store_true", help="print the documented JSON object instead of a table")
    p.set_defaults(func=main)


def main(args) -> int:
    try:
        settings = common.load(args)
        sources = common.selected_sources(settings, args.source)
    except ConfigError as e:
        if args.json:
            print(json.dumps({"status": "UNKNOWN", "exit_code": UNKNOWN, "error": str(e), "sources": []}))
        else:
            print(f"UNKNOWN: {e}")
        return UNKNOWN
    verdict, statuses = asyncio.run(gather(settings, sources))
    if args.json:
        print(json.dumps(as_json(verdict, statuses), indent=2, ensure_ascii=False))
    else:
        print(render(verdict, statuses))
    return verdict


def _ago(iso: str | None) -> str:
    if not iso:
        return "never"
    secs = (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(iso)).total_seconds()
    if secs < 90:
        return f"{secs:.0f}s ago"
    if secs < 5400:
        return f"{secs / 60:.0f}m ago"
    if secs < 172800:
        return f"{secs / 3600:.0f}h ago"
    return f"{secs / 86400:.0f}d ago"


def _consistency(st: SourceStatus) -> str:
    streaming = [t for t in st.tables if t.state == "streaming"]
    left_out = [t for t in st.tables if t.state in ("refused", "held", "paused")]
    if left_out or st.not_migrated:
        # A table (or a virtual table's data) Postgres does not have is never "ok".
        n = len(left_out) + len(st.not_migrated)
        return f"{n} not replicated"
    if not streaming:
        return "-"
    checked = [t for t in streaming if t.last_verify_at]
    bad = sum(1 for t in streaming if t.last_verify_differences)
    if bad:
        return f"{bad} table(s) differ"
    if len(checked) < len(streaming):
        return f"{len(streaming) - len(checked)} unchecked"
    oldest = min(t.last_verify_at for t in checked)
    return f"ok ({_ago(oldest)})"


def render(verdict: int, statuses: list[SourceStatus]) -> str:
    head = ("SOURCE", "STATE", "FLOW", "LAG", "PENDING", "LAST APPLIED", "TABLES", "CONSISTENCY")
    rows = [head]
    for st in statuses:
        counts: dict[str, int] = {}
        for t in st.tables:
            counts[t.state] = counts.get(t.state, 0) + 1
        tables = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "-"
        lag = "-" if st.lag_seconds is None else f"{st.lag_seconds:.1f}s"
        pending = "-" if st.pending_changes is None else str(st.pending_changes)
        flow = "to sqlite" if st.direction == TO_SQLITE else "to postgres"
        rows.append((st.name, st.state.replace("_", " "), flow, lag, pending, _ago(st.last_applied_at), tables,
                     _consistency(st)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for st in statuses:
        for t in st.tables:
            if t.state == "loading" and t.snapshot_total:
                pct = 100 * (t.snapshot_rows or 0) / t.snapshot_total
                lines.append(f"  {st.name}/{t.name}: snapshot {t.snapshot_rows}/{t.snapshot_total} rows ({pct:.0f}%)")
    for st in statuses:
        if st.rollback_until and not st.way_back_ended:
            lines.append(f"  {st.name}: SQLite follows Postgres; `syncd rollback` possible until {st.rollback_until}")
    problems = [(p.severity, st.name, p.message) for st in statuses for p in st.problems]
    if problems:
        lines.append("")
        for sev, name, msg in problems:
            lines.append(f"{sev.upper()}: {name}: {msg}")
    lines.append("")
    lines.append(f"{VERDICTS[verdict]}: {len(statuses)} source(s), {len(problems)} problem(s)")
    return "\n".join(lines)
