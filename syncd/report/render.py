"""The migration status document, as Markdown for people and JSON for machines."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from syncd import __version__
from syncd.parity.speed import RUNS
from syncd.printable import escape_controls
from syncd.report.checklist import (NOT_JUDGED, CheckItem, _columns_changed, cut_over, days, headline,
                                   not_judged_text, number, ready, timestamp, when)
from syncd.model import NO_FLOW, NOT_FOLLOWED
from syncd.report.facts import TO_POSTGRES, TO_SQLITE, MigrationFacts, SourceFacts, TableFacts, history_totals
from syncd.verify.history import VerifyRun

HISTORY_SHOWN = 50  # consistency errors listed in Markdown (JSON has them all)


def markdown(f: MigrationFacts, items: list[CheckItem]) -> str:
    now = f.generated_at
    failing = [i for i in items if not i.ok]
    out = [
        "# Migration status: SQLite to PostgreSQL",
        "",
        f"Generated {timestamp(now)} by syncd {__version__}"
        + (f" from `{f.config_path}`" if f.config_path else "") + ". Every figure below was measured "
        "when this document was generated (row counts on both sides, capture in each SQLite file) "
        "or recorded by syncd as it happened (verifications, dual-write start).",
        "",
    ]
    out += [f"**Verdict: {headline(f, items)}.**" + (" The evidence for each is below." if ready(items) else ""), ""]
    if not_judged_text(f):
        out += [not_judged_text(f) + ".", ""]
    if not ready(items):
        out += ["## Not done", ""]
        for i in failing:
            out.append(f"- ❌ **{i.title}**")
            out += [f"  - {_text(p)}" for p in i.problems or ["nothing measured to show it is done"]]
        out.append("")
    out += ["## Cutover checklist", ""]
    for i in items:
        out.append(f"### {'✅' if i.ok else '❌'} {i.title}")
        out.append("")
        out += [f"- ❌ {_text(p)}" for p in i.problems] + [f"- {_text(e)}" for e in i.evidence]
        out.append("")
    for s in f.sources:
        out += _source_section(s, now)
    out += _history_section(f)
    out += ["## How the checklist is judged", "",
            "- *Migrated and validated*: every table streams, has the same row count on both sides now, and "
            "its most recent verification compared it in full and found it equal, no longer ago than "
            "`[status] verify_max_age_seconds`, after the table was last copied (a reload) and with the columns it has "
            "now (a column added or renamed since was never compared).",
            f"- *Dual-write*: each source has streamed for at least `[cutover] min_days` ({days(f.min_days)}) and "
            "every verification of every table in that window was clean (a difference, a pending row, a table "
            "that could not be compared, or a failed check each count as an error); a table never verified in "
            "the window fails it too, and so does any stretch of the window longer than `[cutover] "
            f"max_verify_gap_hours` ({f.max_verify_gap_hours:g} h) in which a table was not verified at all (the "
            "daemon stopped, say): errors there would not show.",
            "- *Lag*: the daemon's live figure when its endpoint answers; otherwise computed from the checkpoint "
            "(when changes are pending, the time since Postgres last held every captured change, an upper "
            "bound); a daemon that reports failing (as `syncd status` reads it) fails the item whatever the figure.",
            f"- *Performance*: per table, a primary-key lookup and a lookup through each index syncd created, "
            f"on rows sampled from SQLite, timed in both (the median of {RUNS} runs, at most 100 rows fetched); "
            f"a lookup slower in Postgres than `[cutover] max_query_ms` ({f.max_query_ms:g} ms) fails the item, "
            "and so does one that finds none of its sampled rows in Postgres (it timed no data).",
            "- *Foreign keys*: rows whose foreign key names no parent row, counted in Postgres per foreign key "
            "SQLite declares (SQLite enforces them only when the application turns them on).",
            "- *Backup*: files matching `[cutover] backup_glob` (relative to the configuration file, `{source}` "
            "for the source's name), each credited to the source whose capture id or tables it holds (a copy "
            "of another source never counts; a compressed file counts only where the pattern names `{source}` "
            "or there is one source); the newest must be younger than `[cutover] backup_max_age_days`. Without "
            "`backup_glob` there is no evidence of a backup, so the item is not met.",
            ""]
    # Each entry is one line; a name or reason holding a line break must not add one.
    return "\n".join(escape_controls(line) for line in out)


def _source_section(s: SourceFacts, now: dt.datetime) -> list[str]:
    out = [f"## Source {_code(s.name)}", "",
           f"- SQLite file: {_code(str(s.path))}; Postgres schema: {_code(s.schema)}",
           f"- Direction: {direction_text(s.direction, s.way_back_ended)}"]
    if s.way_back_ended:
        out.append(f"- **Rollback no longer possible**: SQLite no longer follows Postgres ({s.way_back_ended})")
    elif s.rollback_until is not None:
        out.append(f"- Rollback possible until: {timestamp(s.rollback_until)} (SQLite follows Postgres for "
                   "`[cutover] keep_sqlite_days` after the cutover; `syncd rollback` switches back)")
    if s.file_archived:
        out.append(f"- Retired: the SQLite file is archived (no longer at {_code(str(s.path))}), as it may be once "
                   "the way back has ended; Postgres alone holds the data")
    if s.error:
        out.append(f"- **{_text(s.error)}**")
    if s.left_frozen:
        out.append(f"- **{s.left_frozen}**")
    dual = s.dual_write_days(now)
    out.append(f"- Dual-write since: {timestamp(s.streaming_since)}"
               + (f" ({days(dual)})" if dual is not None else " (not every table has streamed yet)"))
    lag = "unknown" if s.lag.seconds is None else f"{s.lag.seconds:.1f} s"
    out.append(f"- Lag now: {lag}, from {_text(s.lag.source)}")
    if s.daemon_failing:
        out.append(f"- **The daemon reports failing: {_text(s.daemon_failing)}**")
    out.append(f"- Checkpoint: change {s.applied_seq if s.applied_seq is not None else '-'} applied "
               f"{when(s.applied_at, now) if s.applied_at else 'never'}")
    out += ["", "| Table | State | Rows in SQLite | Rows in Postgres | Capture | Last verification | Result |",
            "|---|---|---:|---:|---|---|---|"]
    for t in s.tables:
        out.append(_table_row(t, now, compared=not s.way_back_ended, archived=s.file_archived))
    out.append("")
    if s.left_out:
        out += ["Not migrated (the application will miss these after the switch):", "",
                "| Object | What it is | Holds data | What to do in Postgres |", "|---|---|---|---|"]
        for lo in s.left_out:
            holds = ("❌ yes, " + (f"{lo.rows} row(s)" if lo.rows is not None else "rows")) if lo.holds_data else \
                f"{lo.rows} row(s), left out as configured" if lo.rows else "no"
            out.append(f"| {_code(lo.name)} | {_cell(lo.why)} | {holds} | {_cell(lo.todo)} |")
        out.append("")
    p = s.parity
    if p is not None and p.carried:
        out += ["Schema in Postgres (`syncd schema` says why each is built the way it is):", "",
                "| Table | SQLite object | Postgres name | Now |", "|---|---|---|---|"]
        for i in p.carried:
            out.append(f"| {_code(i.table or '-')} | {_cell(i.what)} | {_cell(i.name or i.column or '-')} | "
                       f"{_cell(p.status(i))} |")
        out.append("")
    if p is not None and p.error:
        out += [f"- **Schema parity not measured: {_cell(p.error)}**", ""]
    return out


def direction_text(direction: str, way_back_ended: str | None = None) -> str:
    """`way_back_ended`: cut over and SQLite no longer follows (why): nothing flows, as `syncd status` says."""
    if direction == TO_SQLITE and way_back_ended:
        return NO_FLOW
    return {TO_POSTGRES: "SQLite → PostgreSQL", TO_SQLITE: "PostgreSQL → SQLite (after cutover)"}.get(direction,
                                                                                                      direction)


def _table_row(t: TableFacts, now: dt.datetime, compared: bool = True, archived: bool = False) -> str:
    """`compared`: False once the way back has ended (the file is kept as it was then);
    `archived`: the file is gone from its path since, as it may be (no capture is owed)."""
    state = t.state or "not registered"
    if t.reason and t.state != "streaming":
        state += f": {t.reason}"
    if not compared:  # the way back has ended: nothing flows any more, none of them streams
        state = NOT_FOLLOWED
    last = t.last_run
    verified = when(last.finished_at, now) if last else "never"
    result = last.outcome() if last else "-"
    if t.checked_before_copy:
        result += f" (before the table was copied again, {when(t.copied_at, now)})"
    elif last is not None and (changed := _columns_changed(last, t)):
        result += f" (before its columns changed: {changed})"
    mark = "" if t.counts_match or not compared else " ❌"
    return (f"| {_code(t.name)} | {_cell(state)} | {number(t.rows_sqlite)} | {number(t.rows_postgres)}{mark} | "
            f"{'✅' if t.captured else ('' if archived else '❌ ') + _cell(t.capture_note)} | {verified} | "
            f"{_cell(result)} |")


def _history_section(f: MigrationFacts) -> list[str]:
    errors = [r for r in f.runs if not r.clean]
    out = ["## Consistency-error history", ""]
    if not f.runs:
        return out + ["No verification has been recorded yet.", ""]
    first, total, failed = history_totals(f.runs)
    if not errors:
        return out + [f"None: {number(total)} verification(s) recorded since {timestamp(first)}, all clean.", ""]
    out += [f"{number(failed)} of {number(total)} verification(s) recorded since {timestamp(first)} were not clean"
            + (" (the latest shown; runs alike in one stretch of time are one line)" if len(errors) > HISTORY_SHOWN
               or failed > len(errors) else "") + ":", "",
            "| When | Table | Rows in SQLite | Rows in Postgres | Outcome | Example keys |",
            "|---|---|---:|---:|---|---|"]
    for r in reversed(errors[-HISTORY_SHOWN:]):
        keys = ", ".join(_key(d) for d in r.detail.get("differences", [])[:3])
        out.append(f"| {timestamp(r.finished_at)} | {_code(f'{r.source}.{r.table_name}')} | {number(r.rows_sqlite)} | "
                   f"{number(r.rows_postgres)} | {_cell(r.outcome() + alike(r))} | {_cell(keys)} |")
    out.append("")
    return out


def _key(d: dict) -> str:
    key = d.get("key") or []
    shown = ", ".join(json.dumps(v, ensure_ascii=False) for v in key)
    return f"{d.get('kind', '?')} ({shown})"


def _text(line: str) -> str:
    """Prose as Markdown shows it: a name or a reason in it holding '<' or '](' stays text,
    not an HTML element or a link, whatever renders the document (a ticket, a mail)."""
    return line.replace("<", "\\<").replace("](", "]\\(")


def _cell(text: str) -> str:
    return _in_cell(_text(text))


def _in_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(name: str) -> str:
    """`name` as a code span that holds whatever it contains, in a table cell too: a
    fence longer than its longest run of backticks, and its '|' escaped (GitHub splits
    table rows on '|' even inside code)."""
    runs = [len(r) for r in re.findall("`+", name)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if name.startswith("`") or name.endswith("`") else ""
    return f"{fence}{pad}{_in_cell(name)}{pad}{fence}"  # a code span shows '<' as it is


# --- JSON -----------------------------------------------------------------------------


def as_json(f: MigrationFacts, items: list[CheckItem]) -> dict[str, Any]:
    now = f.generated_at
    return {
        "generated_at": _iso(now),
        "syncd_version": __version__,
        "config": f.config_path,
        "ready": ready(items),
        "verdict": headline(f, items),
        "cut_over": [s.name for s in cut_over(f)],
        "not_done": [i.key for i in items if not i.ok],
        "not_judged": list(NOT_JUDGED) if not_judged_text(f) else [],
        "checklist": [{"key": i.key, "title": i.title, "ok": i.ok, "problems": i.problems, "evidence": i.evidence}
                      for i in items],
        "settings": {"min_days": f.min_days, "warn_lag_seconds": f.warn_lag_seconds,
                     "verify_max_age_seconds": f.verify_max_age_seconds, "backup_glob": f.backup_glob,
                     "backup_max_age_days": f.backup_max_age_days, "max_verify_gap_hours": f.max_verify_gap_hours,
                     "max_query_ms": f.max_query_ms, "rehearsal_max_age_days": f.rehearsal_max_age_days},
        "sources": [_source_json(s, now) for s in f.sources],
        "consistency_errors": [{**_run_json(r), "runs": r.count, "first_at": _iso(r.began)}
                               for r in f.runs if not r.clean],
        "verifications": sum(r.count for r in f.runs),
    }


def _source_json(s: SourceFacts, now: dt.datetime) -> dict[str, Any]:
    return {
        "source": s.name, "path": s.path, "postgres_schema": s.schema, "error": s.error, "registered": s.registered,
        "direction": s.direction, "rollback_until": _iso(s.rollback_until), "way_back_ended": s.way_back_ended,
        "file_archived": s.file_archived, "dual_write_since": _iso(s.streaming_since), "dual_write_days": s.dual_write_days(now),
        "applied_seq": s.applied_seq, "applied_at": _iso(s.applied_at),
        "lag": {"seconds": s.lag.seconds, "source": s.lag.source, "pending_changes": s.lag.pending_changes},
        "daemon_failing": s.daemon_failing, "left_frozen": s.left_frozen,
        "backup": None if s.backup is None else vars(s.backup),
        "rehearsal": None if s.rehearsal is None else {**vars(s.rehearsal), "at": _iso(s.rehearsal.at)},
        "not_migrated": [{"name": lo.name, "kind": lo.kind, "why": lo.why, "todo": lo.todo,
                          "holds_data": lo.holds_data, "rows": lo.rows} for lo in s.left_out],
        "schema": _parity_json(s),
        "tables": [{
            "table": t.name, "state": NOT_FOLLOWED if s.way_back_ended else t.state, "reason": t.reason, "rows_sqlite": t.rows_sqlite,
            "rows_postgres": t.rows_postgres, "counts_match": t.counts_match, "captured": t.captured,
            "capture_note": t.capture_note,
            "last_verification": _run_json(t.last_run) if t.last_run else None,
            "last_clean_verification_at": _iso(t.last_clean_run.finished_at) if t.last_clean_run else None,
        } for t in s.tables],
    }


def _parity_json(s: SourceFacts) -> dict[str, Any] | None:
    p = s.parity
    if p is None:
        return None
    return {
        "error": p.error,
        "objects": [{"table": i.table, "kind": i.kind, "sqlite": i.what, "postgres_name": i.name,
                     "column": i.column, "stage": i.stage, "now": p.status(i), "why": i.left_out or i.why}
                    for i in p.items],
        "orphans": [{"table": o.table, "constraint": o.constraint, "parent": o.parent, "foreign_key": o.what,
                     "orphans": o.orphans, "sample_keys": [list(k) for k in o.sample_keys], "error": o.error}
                    for o in p.orphans],
        "lookups": None if p.speed is None else [
            {"table": lk.table, "lookup": lk.what, "postgres_ms": lk.postgres_ms, "sqlite_ms": lk.sqlite_ms,
             "plan": lk.plan, "note": lk.note} for lk in p.speed.lookups],
    }


def alike(r: VerifyRun) -> str:
    """What a line of the history stands for besides itself."""
    return f" (the last of {r.count} alike since {timestamp(r.began)})" if r.count > 1 else ""


def _run_json(r: VerifyRun) -> dict[str, Any]:
    return {"at": _iso(r.finished_at), "source": r.source, "table": r.table_name, "clean": r.clean,
            "outcome": r.outcome(), "rows_sqlite": r.rows_sqlite, "rows_postgres": r.rows_postgres,
            "missing": r.missing, "extra": r.extra, "different": r.different, "pending": r.pending,
            "repaired": r.repaired, "error": r.error, "full_check": r.full_check, "table_state": r.table_state,
            "detail": r.detail}


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(dt.timezone.utc).isoformat(timespec="seconds")
