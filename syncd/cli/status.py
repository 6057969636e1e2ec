"""`syncd status [--json] [--source NAME]`: health for people and for monitoring.

Works whether or not the daemon runs. Exit codes follow the Nagios convention:
0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

from syncd.cli import common
from syncd.config import ConfigError
from syncd.model import NOT_FOLLOWED, TO_SQLITE
from syncd.postgres.bookkeeping import held_in_a_retry
from syncd.printable import escape_controls
from syncd.status import CRITICAL, UNKNOWN, VERDICTS, WARNING, SourceStatus, as_json, gather, worse


def register(sub, parent) -> None:
    p = sub.add_parser("status", parents=[parent], help="health of every source (Nagios exit codes)",
                       description="Report each source's state, lag, pending changes, last applied time, "
                                   "table states and last consistency result. Reads SQLite and Postgres "
                                   "directly, and the daemon's endpoint when it answers. Exit codes: 0 OK, "
                                   "1 WARNING, 2 CRITICAL, 3 UNKNOWN.")
    common.add_source_option(p)
    p.add_argument("--json", action="store_true", help="print the documented JSON object instead of a table")
    p.add_argument("--all", action="store_true",
                   help=f"one line per source even for a fleet (more than {LIST_ALL_UP_TO} sources are summarised)")
    p.set_defaults(func=main)


LIST_ALL_UP_TO = 20  # more sources than this: counts per state, the worst by lag, every one with a problem
WORST_SHOWN = 10


def behind_note(behind: float, interval: float) -> str | None:
    """The warning for the daemon's checks running late, once they are later than the
    daemon's once-a-second scheduling and a check's own length can explain: a tenth of
    the interval, at least 5 s."""
    if behind <= max(5.0, interval * 0.1):
        return None
    return (f"the daemon's consistency checks are {behind:.0f} s behind [verify] interval_seconds "
            f"({interval:g} s): raise [verify] concurrency or the interval")


def main(args) -> int:
    # The sources of a glob's files that are gone are known from Postgres alone: a database
    # that cannot be asked is said (a source's own line would not say it of them).
    away: list[str] = []
    unmatched: list[str] = []  # names on the command line matching no source, the gone files' lookup failed
    try:
        settings = common.load(args)
        # Named by itself, a gone file's source is one too (shown missing), not "no source named".
        settings = common.with_gone_sources(settings, away, args.source)
        try:
            sources = common.selected_sources(settings, args.source)
        except ConfigError:
            if not away:
                raise
            # A name matching nothing may be a gone file's source: each such name is said not
            # known (the lookup failed), the names that match are shown.
            chosen = []
            for name in args.source:
                try:
                    chosen += common.selected_sources(settings, name)
                except ConfigError:
                    unmatched.append(name)
            sources = [s for s in settings.sources if s in chosen]
            away += [f"source {name!r} not known: it names no source with a file, and the glob's sources "
                     "whose file is gone could not be looked up" for name in unmatched]
    except ConfigError as e:
        if args.json:
            common.say_json({"status": "UNKNOWN", "exit_code": UNKNOWN, "error": str(e), "sources": []})
        else:
            common.say(*f"UNKNOWN: {e}".split("\n"))
        return UNKNOWN
    verdict, statuses, live = asyncio.run(gather(settings, sources, with_live=True))
    # Files a glob matches and syncd does not pick up: the fleet's problem, no source's (as verify says them);
    # with --source, another name (a hard link) of a chosen source's file stays that source's, as report says it.
    left = list(settings.discovery_problems) if args.source is None else settings.problems_of(sources)
    notes = list(left)
    if not statuses and not unmatched:  # a check that watches nothing is no green check
        notes.append(settings.no_sources())
    if away:
        verdict = worse(verdict, CRITICAL)
    behind = (live or {}).get("verify_behind_seconds") or 0
    note = behind_note(behind, settings.verify.interval_seconds)
    if note:
        notes.append(note)
    failed = (live or {}).get("loops_failed") or {}
    for loop, f in failed.items():
        ago = max(0.0, time.time() - f["failed_at"])
        notes.append(f"the daemon's {loop} loop failed {ago:.0f} s ago ({f['error']}); it was started again, "
                     "see the daemon's log")
    if notes:
        verdict = worse(verdict, WARNING)  # a file a glob matches but syncd cannot pick up, checks behind
    if args.json:
        doc = as_json(verdict, statuses)
        doc["not_picked_up"] = left
        if not statuses and not unmatched:
            doc["no_sources"] = settings.no_sources()
        if away:
            doc["postgres_unreachable"] = away
        doc["verify_behind_seconds"] = behind
        doc["loops_failed"] = failed
        common.say_json(doc, indent=2, ensure_ascii=False)
    else:
        common.say(*render(verdict, statuses, every=args.all or len(statuses) <= LIST_ALL_UP_TO,
                           not_picked_up=notes, fleet_critical=away).split("\n"))
    return verdict


def _ago(iso: str | None) -> str:
    if not iso:
        return "never"
    # A time Postgres stamped by its clock, read on a host whose clock is a little behind,
    # is "0s ago" (as the report writes it), never "-3s ago".
    secs = max(0.0, (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(iso)).total_seconds())
    if secs < 90:
        return f"{secs:.0f}s ago"
    if secs < 5400:
        return f"{secs / 60:.0f}m ago"
    if secs < 172800:
        return f"{secs / 3600:.0f}h ago"
    return f"{secs / 86400:.0f}d ago"


def _consistency(st: SourceStatus) -> str:
    streaming = [t for t in st.tables if t.state == "streaming"]
    # A table Postgres does not have (refused, or a virtual table's data) or holds out of
    # step (held, paused: its changes queued) is never "ok".
    counts = {"not replicated": sum(1 for t in st.tables if t.state == "refused") + len(st.not_migrated),
              # a held table whose retry copies it again is held all the same
              "held": sum(1 for t in st.tables if t.state == "held" or held_in_a_retry(t.state, t.reason)),
              "paused": sum(1 for t in st.tables if t.state == "paused")}
    if any(counts.values()):
        return ", ".join(f"{n} {what}" for what, n in counts.items() if n)
    if not streaming:
        return "-"
    if st.way_back_ended:
        return "not compared"  # SQLite is kept as it was when the way back ended
    bad = sum(1 for t in streaming if t.last_verify_differences)
    if bad:
        return f"{bad} table(s) differ"
    failed = sum(1 for t in streaming if t.last_verify_error)
    if failed:
        return f"{failed} check(s) failed"
    uncompared = sum(1 for t in streaming if t.last_verify_uncompared)
    if uncompared:
        return f"{uncompared} not compared"
    unconfirmed = sum(1 for t in streaming if t.last_verify_pending)
    if unconfirmed:
        return f"{unconfirmed} unconfirmed"
    # A column added or renamed since the last check was never compared: that check says nothing of it.
    changed = sum(1 for t in streaming if t.columns_changed)
    if changed:
        return f"{changed} changed since checked"
    checked = [t for t in streaming if t.last_compared_at]
    if len(checked) < len(streaming):
        return f"{len(streaming) - len(checked)} unchecked"
    # A table still (or again) being copied was not compared: "ok" is for every table.
    loading = sum(1 for t in st.tables if t.state != "streaming")
    if loading:
        return f"{loading} loading"
    oldest = min(t.last_compared_at for t in checked)
    return f"ok ({_ago(oldest)})"


def render(verdict: int, statuses: list[SourceStatus], every: bool = True, not_picked_up: list[str] = (),
           fleet_critical: list[str] = ()) -> str:
    head = ("SOURCE", "STATE", "FLOW", "LAG", "PENDING", "LAST APPLIED", "TABLES", "CONSISTENCY")
    rows = [head]
    shown = statuses
    summary: list[str] = []
    if not every:
        # A fleet: counts per state, the sources furthest behind, and every one with a problem.
        counts: dict[str, int] = {}
        for st in statuses:
            counts[st.state] = counts.get(st.state, 0) + 1
        summary.append(f"{len(statuses)} sources: " + ", ".join(
            f"{n} {state.replace('_', ' ')}" for state, n in sorted(counts.items(), key=lambda kv: -kv[1])))
        worst = sorted((st for st in statuses if st.lag_seconds), key=lambda st: -(st.lag_seconds or 0))[:WORST_SHOWN]
        troubled = [st for st in statuses if st.problems]
        shown = list({id(st): st for st in [*worst, *troubled]}.values())
        summary.append(f"shown: the {len(worst)} furthest behind and the {len(troubled)} with a problem "
                       "(--all lists every source)")
        open_until = [dt.datetime.fromisoformat(st.rollback_until) for st in statuses
                      if st.rollback_until and not st.way_back_ended]
        if open_until:
            summary.append(f"SQLite follows Postgres for {len(open_until)} source(s): `syncd rollback` possible until "
                           f"{min(open_until).astimezone(dt.timezone.utc):%Y-%m-%d %H:%M} UTC at the earliest")
    for st in shown:
        counts: dict[str, int] = {}
        for t in st.tables:
            counts[t.state] = counts.get(t.state, 0) + 1
        tables = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "-"
        if st.way_back_ended and st.tables:
            tables = f"{len(st.tables)} {NOT_FOLLOWED}"  # nothing flows any more: none of them streams
        lag = "-" if st.lag_seconds is None else f"{st.lag_seconds:.1f}s"
        pending = "-" if st.pending_changes is None else str(st.pending_changes)
        flow = ("none" if st.way_back_ended else "to sqlite") if st.direction == TO_SQLITE else "to postgres"
        applied = _ago(st.last_applied_at) if st.last_applied_at or st.postgres_reachable else "unknown"
        rows.append((st.name, st.state.replace("_", " "), flow, lag, pending, applied, tables,
                     _consistency(st)))
    rows = [tuple(escape_controls(c) for c in r) for r in rows]  # one table row, one line
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = summary + ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for st in shown:
        for t in st.tables:
            if t.state == "loading" and t.snapshot_total:
                pct = 100 * (t.snapshot_rows or 0) / t.snapshot_total
                lines.append(escape_controls(f"  {st.name}/{t.name}: snapshot {t.snapshot_rows}/{t.snapshot_total} "
                                             f"rows ({pct:.0f}%)"))
    for st in shown:
        if st.rollback_until and not st.way_back_ended:
            until = dt.datetime.fromisoformat(st.rollback_until)
            passed = (", a time now passed: the daemon ends the way back at its next check"
                      if until <= dt.datetime.now(dt.timezone.utc) else "")
            lines.append(escape_controls(f"  {st.name}: SQLite follows Postgres; `syncd rollback` possible until "
                                         f"{until.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M} UTC{passed}"))
    problems = [(p.severity, st.name, p.message) for st in statuses for p in st.problems]
    problems += [("critical", "fleet", text) for text in fleet_critical]
    problems += [("warning", "fleet", text) for text in not_picked_up]
    if problems:
        lines.append("")
        for sev, name, msg in problems:
            lines.append(escape_controls(f"{sev.upper()}: {name}: {msg}"))
    lines.append("")
    lines.append(f"{VERDICTS[verdict]}: {len(statuses)} source(s), {len(problems)} problem(s)")
    return "\n".join(lines)
