"""The status page: the verdict, the cutover checklist and every source at a glance,
as one self-contained HTML document (inline CSS, SVG and a few lines of script; no
outside assets). The daemon serves it at GET /; `syncd report --format html` writes it.

Judged from an Overview (the report's facts and checklist, `syncd status`'s health),
so the page, the report and `syncd status` show the same figures. It shows no DSN and
no row values or keys beyond what `syncd status` shows (a held table's reason); every
name is escaped."""

from __future__ import annotations

import datetime as dt
import time
from html import escape

from syncd import __version__
from syncd.page.history import HistoryView
from syncd.parity.summary import CACHE_SECONDS
from syncd.postgres.bookkeeping import held_in_a_retry
from syncd.model import NOT_FOLLOWED
from syncd.redact import scrub
from syncd.report.backups import FUTURE_SECONDS
from syncd.report.checklist import (CheckItem, _ahead, _columns_changed, _duration, cut_over, days, headline,
                                    not_judged_text, number, ready, timestamp)
from syncd.report.facts import MigrationFacts, SourceFacts, TableFacts, history_totals
from syncd.report.overview import Overview
from syncd.report.page_assets import CONTENT_SECURITY_POLICY, CSS, JS
from syncd.report.render import alike, direction_text
from syncd.report.svg import line_chart, verification_slots, verification_strip
from syncd.status import VERDICTS, SourceStatus, TableStatus

HALTED = ("held", "paused")
STRIP_SLOTS = 48
ERRORS_SHOWN = 20
PROBLEMS_SHOWN = 5  # per checklist item before "and N more" (every one is on the page)
# A measurement of lookups and orphans older than the page's own by more than this says when it was taken.
PARITY_AGE_SHOWN = 5.0


def e(text: object) -> str:
    """Escape for HTML text and attribute values: names appear exactly as they are."""
    return escape(str(text), quote=True)


def m(text: object) -> str:
    """A message (a problem, a reason, an error): escaped, with any password taken out."""
    return escape(scrub(str(text)), quote=True)


def page(ov: Overview | None, history: HistoryView | None, *, live: bool, refresh_seconds: int = 10,
         notice: str | None = None) -> str:
    """The whole document. `live`: served by the daemon (refreshes itself); otherwise a
    file written by `syncd report --format html`. `ov` None: nothing measured yet."""
    if ov is None:
        title, body = "syncd: measuring…", [_header_measuring()]
    else:
        title, body = _title(ov), _body(ov, history, live)
    head = [
        "<!DOCTYPE html>",
        f'<html lang="en" data-refresh="{refresh_seconds if live else 0}" data-refreshes="0">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{e(CONTENT_SECURITY_POLICY)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{e(title)}</title>",
        f"<style>{CSS}</style>",
    ]
    if live:  # without script, the browser reloads the page itself
        head.append(f'<noscript><meta http-equiv="refresh" content="{refresh_seconds}"></noscript>')
    head += ["</head>", "<body>", '<p id="offline" class="offline" role="status" hidden></p>', "<main>"]
    if notice:
        body.insert(1, f'<p class="notice" role="status">{m(notice)}</p>')
    return "\n".join(head + body + ["</main>", f"<script>{JS}</script>", "</body>", "</html>"]) + "\n"


def _title(ov: Overview) -> str:
    if ov.facts is None:
        return "syncd: migration status unknown"
    return f"syncd: {headline(ov.facts, ov.items).split(':')[0]}"  # "READY for cutover", "CUT OVER", ...


def _header_measuring() -> str:
    return ('<h1>Migration status: SQLite to PostgreSQL</h1>'
            '<p class="verdict unknown" id="verdict">Measuring both sides for the first time; '
            "this page refreshes itself.</p>")


def _time(t: dt.datetime | None, never: str = "never") -> str:
    """An absolute UTC time and, in a <time> the script keeps current, how long ago."""
    if t is None:
        return e(never)
    iso = t.astimezone(dt.timezone.utc).isoformat(timespec="seconds")
    age = (dt.datetime.now(dt.timezone.utc) - t).total_seconds()
    if age < -FUTURE_SECONDS:  # not "0 s ago" (nor kept so by the script): when it happened is not known
        return f"{e(timestamp(t))} (in the future by {e(_duration(-age))}: the clock that dated it ahead?)"
    return f'{e(timestamp(t))} (<time datetime="{e(iso)}" data-since>{e(_ago(age))}</time>)'


def _iso_time(iso: str | None) -> str:
    return _time(dt.datetime.fromisoformat(iso) if iso else None)


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


# --- the body -------------------------------------------------------------------------


def _body(ov: Overview, history: HistoryView | None, live: bool) -> list[str]:
    out = ["<header>", "<h1>Migration status: SQLite to PostgreSQL</h1>"]
    out.append(_verdict(ov))
    if ov.facts is not None and not_judged_text(ov.facts):
        out.append(f'<p class="measured" id="not-judged">{e(not_judged_text(ov.facts))}.</p>')
    where = f" from <code>{e(ov.config_path)}</code>" if ov.config_path else ""
    how = "served live by the daemon; refreshes itself" if live else "written by <code>syncd report --format html</code>"
    iso = ov.measured_at.astimezone(dt.timezone.utc).isoformat(timespec="seconds")
    out.append(f'<p class="measured" id="measured" data-measured-at="{e(iso)}">Measured {_time(ov.measured_at)}{where}'
               f" by syncd {e(__version__)}; {how}. Every figure was measured then, or recorded by syncd as it "
               "happened, unless it says when it was measured.</p>")
    out.append(_health(ov))
    out.append("</header>")
    out += _checklist(ov)
    facts = {s.name: s for s in ov.facts.sources} if ov.facts else {}
    statuses = {s.name: s for s in ov.statuses}
    out += _glance(ov, facts, statuses)
    out += ['<section id="sources">', f"<h2>Sources ({len(ov.sources)})</h2>", '<div class="sources">']
    for i, name in enumerate(ov.sources):
        out += _source(i, name, facts.get(name), statuses.get(name), ov, history)
    out += ["</div>", "</section>"]
    if ov.facts:
        out += _errors(ov.facts)
    out += _footer(ov)
    return out


def _verdict(ov: Overview) -> str:
    if ov.facts is None:
        return (f'<p class="verdict unknown" id="verdict" data-ready="unknown">Cutover readiness unknown: the '
                f"facts could not be measured ({m(ov.facts_error)}).</p>")
    ok = ready(ov.items)
    done = len(cut_over(ov.facts))
    return (f'<p class="verdict{" ready" if ok else ""}" id="verdict" data-ready="{"true" if ok else "false"}" '
            f'data-cut-over="{done}">{e(headline(ov.facts, ov.items))}'
            f'{", with its evidence below" if ok else ""}.</p>')


def _health(ov: Overview) -> str:
    name = VERDICTS[ov.verdict]
    problems = [(p.severity, st.name, p.message) for st in ov.statuses for p in st.problems]
    out = [f'<p class="health" id="health" data-verdict="{e(name)}">Health now (as <code>syncd status</code> '
           f'judges it): <strong class="sev-{e(name.lower())}">{e(name)}</strong>, {len(ov.statuses)} source(s), '
           f"{len(problems)} problem(s).</p>"]
    if problems:
        out.append('<details id="health-problems"' + (" open" if len(problems) <= 6 else "") +
                   f"><summary>{len(problems)} problem(s)</summary><ul class=\"problems\">")
        out += [f'<li class="sev-{e(sev)}">{e(sev.upper())}: <code>{e(src)}</code>: {m(msg)}</li>'
                for sev, src, msg in problems]
        out.append("</ul></details>")
    return "".join(out)


def _checklist(ov: Overview) -> list[str]:
    out = ['<section id="checklist">', "<h2>Cutover checklist</h2>"]
    if ov.facts is None:
        return out + [f"<p>Not judged: {m(ov.facts_error)}</p>", "</section>"]
    out.append('<ol class="checklist">')
    # The lookups' timings and the orphan counts are measured at most every CACHE_SECONDS on
    # the live page, and shown meanwhile: those items say when (the oldest source's).
    taken = [s.parity.measured_at for s in ov.facts.sources if s.parity and s.parity.measured_at]
    oldest = min(taken) if taken else None
    note = ""
    if oldest is not None and (ov.measured_at - oldest).total_seconds() > PARITY_AGE_SHOWN:
        note = (f'<p class="measured">Measured {_time(oldest)}: the page measures this at most every '
                f"{e(_duration(CACHE_SECONDS))}</p>")
    for item in ov.items:
        out.append(_item(item, note if item.key in ("performance", "foreign_keys") else ""))
    out += ["</ol>", "</section>"]
    return out


def _item(i: CheckItem, note: str = "") -> str:
    """`note`: HTML shown under the title (how old the item's measurement is)."""
    cls, mark = ("ok", "✓") if i.ok else ("not-ok", "✗")
    parts = [f'<li class="{cls}" data-key="{e(i.key)}" data-ok="{str(i.ok).lower()}">',
             f'<span class="mark" aria-label="{"done" if i.ok else "not done"}">{mark}</span>',
             f"<strong>{e(i.title)}</strong>" + note]
    if i.problems:
        shown, rest = i.problems[:PROBLEMS_SHOWN], i.problems[PROBLEMS_SHOWN:]
        if len(rest) == 1:
            shown, rest = i.problems, []
        parts.append('<ul class="problems">' + "".join(f"<li>{m(p)}</li>" for p in shown) + "</ul>")
        if rest:
            parts.append(f'<details id="more-{e(i.key)}"><summary>and {len(rest)} more</summary>'
                         '<ul class="problems">' + "".join(f"<li>{m(p)}</li>" for p in rest) + "</ul></details>")
    elif not i.ok:
        parts.append('<ul class="problems"><li>nothing measured shows it is done</li></ul>')
    if i.evidence:
        parts.append(f'<details id="evidence-{e(i.key)}"><summary>Evidence ({len(i.evidence)})</summary><ul>'
                     + "".join(f"<li>{m(x)}</li>" for x in i.evidence) + "</ul></details>")
    parts.append("</li>")
    return "".join(parts)


def _glance(ov: Overview, facts: dict[str, SourceFacts], statuses: dict[str, SourceStatus]) -> list[str]:
    """One line per source, linking to its section."""
    out = ['<section id="glance">', "<h2>At a glance</h2>", '<div class="scroll"><table class="glance"><thead><tr>'
           '<th>Source</th><th>Direction</th><th>State</th><th class="num">Lag</th><th class="num">Pending</th>'
           '<th>Last apply</th><th class="num">Rows SQLite / Postgres</th><th>Tables</th></tr></thead><tbody>']
    for i, name in enumerate(ov.sources):
        f, st = facts.get(name), statuses.get(name)
        state = st.state if st else "unknown"
        lag = "-" if st is None or st.lag_seconds is None else f"{st.lag_seconds:.1f} s"
        pending = "-" if st is None or st.pending_changes is None else f"{st.pending_changes:,}"
        rows = "-"
        if f is not None:
            rows_s, rows_p = _sum(t.rows_sqlite for t in f.tables), _sum(t.rows_postgres for t in f.tables)
            rows = f"{number(rows_s)} / {number(rows_p)}"
            # Totals that agree say nothing of each table's: one table short and another over cancel out.
            # Once the way back has ended, the file is kept as it was: no count is expected to agree.
            differ = (rows_s != rows_p or rows_s is None or any(not t.counts_match for t in f.tables)) \
                and not f.way_back_ended
            rows = f'<span class="mismatch">{e(rows)}</span>' if differ else e(rows)
        counts: dict[str, int] = {}
        ended = f.way_back_ended if f else st.way_back_ended if st else None
        for t in (f.tables if f else st.tables if st else []):
            shown = NOT_FOLLOWED if ended else t.state or "not registered"  # as `syncd status` counts them
            if not ended and held_in_a_retry(t.state, t.reason):
                shown = "held"  # its retry copies it again: held all the same
            counts[shown] = counts.get(shown, 0) + 1
        tables = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "-"
        bad = state != "streaming" or any(k in HALTED or k == "refused" for k in counts)
        out.append(f'<tr data-source="{e(name)}"><td><a href="#source-{i}"><code>{e(name)}</code></a></td>'
                   f"<td>{e(direction_text(_direction(f, st), ended))}</td>"
                   f'<td class="sev-{_severity(st)}">{e(state.replace("_", " "))}'
                   f'</td><td class="num">{e(lag)}</td><td class="num">{e(pending)}</td>'
                   f"<td>{_iso_time(st.last_applied_at) if st else '-'}</td><td class=\"num\">{rows}</td>"
                   f'<td class="{"sev-warning" if bad else ""}">{e(tables)}</td></tr>')
    out += ["</tbody></table></div>", "</section>"]
    return out


def _severity(st: SourceStatus | None) -> str:
    """The source's state coloured as `syncd status` judges it (its worst problem): a
    load under way, or a way back ended, is no outage."""
    if st is None:
        return "unknown"
    rank = {"warning": 1, "unknown": 2, "critical": 3}
    return max((p.severity for p in st.problems), key=rank.__getitem__, default="ok")


def _direction(f: SourceFacts | None, st: SourceStatus | None) -> str:
    """Which way the source flows: as measured for the report, else as `syncd status` found it."""
    return f.direction if f else st.direction if st else "to_postgres"


# --- a source -------------------------------------------------------------------------


def _source(i: int, name: str, f: SourceFacts | None, st: SourceStatus | None, ov: Overview,
            history: HistoryView | None) -> list[str]:
    state = st.state if st else "unknown"
    direction = _direction(f, st)
    ended = f.way_back_ended if f else st.way_back_ended if st else None
    badge = {"ok": "good", "warning": "warn", "unknown": "warn"}.get(_severity(st), "bad")  # as at a glance
    out = [f'<article class="source" id="source-{i}" data-source="{e(name)}">', "<header>",
           f"<h3><code>{e(name)}</code></h3>",
           f'<span class="badge direction" data-field="direction" data-value="{e(direction)}">'
           f"{e(direction_text(direction, ended))}</span>",
           f'<span class="badge {badge}" data-field="state" data-value="{e(state)}">'
           f"{e(state.replace('_', ' '))}</span>", "</header>"]
    out.append('<dl class="figures">')
    out += _figures(f, st, ov.facts)
    out.append("</dl>")
    out.append(_where(f, st))
    if st and st.problems:
        out.append('<ul class="problems">' + "".join(
            f'<li class="sev-{e(p.severity)}">{e(p.severity.upper())}: {m(p.message)}</li>' for p in st.problems)
            + "</ul>")
    halted = _halted(f, st)
    if halted:
        out.append('<div class="halted-list"><strong>Held or paused:</strong><ul>' + "".join(
            f'<li data-halted="{e(t)}"><code>{e(t)}</code> {e(s)}: {m(r or "no reason recorded")}</li>'
            for t, s, r in halted) + "</ul></div>")
    out += _charts(name, history)
    out += _tables(f, st, ov)
    if f and f.left_out:
        items = []
        for lo in f.left_out:
            if lo.holds_data:
                rows = f"{lo.rows} row(s)" if lo.rows is not None else "rows"
                items.append(f'<li class="sev-critical"><code>{e(lo.name)}</code>: holds {e(rows)} of application '
                             f"data that is not migrated: {e(lo.why)}; {e(lo.todo)}</li>")
            else:
                rows = f" ({lo.rows} row(s), left out as configured)" if lo.rows else ""
                items.append(f"<li><code>{e(lo.name)}</code>{e(rows)}: {e(lo.why)}; {e(lo.todo)}</li>")
        out.append('<div class="not-migrated"><strong>Not migrated</strong> (the application will miss these after '
                   "the switch):<ul>" + "".join(items) + "</ul></div>")
    if f and f.parity and f.parity.carried:
        p = f.parity
        later = sum(1 for i in p.carried if p.status(i) != "in Postgres now")
        out.append(f'<details class="schema"><summary>Schema in Postgres: {len(p.carried)} object(s) carried, '
                   f"{later} of them at cutover or once the table streams</summary><ul>" + "".join(
                       f"<li><code>{e(i.table or '')}</code> {e(i.what)}: {e(p.status(i))}</li>" for i in p.carried)
                   + "</ul></details>")
    if f and f.file_archived:
        out.append(f"<p>Retired: the SQLite file is archived (no longer at <code>{e(f.path)}</code>), as it may be "
                   "once the way back has ended; Postgres alone holds the data.</p>")
    if f and f.error:
        out.append(f'<p class="sev-critical">{m(f.error)}</p>')
    out.append("</article>")
    return out


def _figure(label: str, field: str | None, value: object, shown: str) -> str:
    attrs = f' data-field="{e(field)}" data-value="{e("" if value is None else value)}"' if field else ""
    return f"<div><dt>{e(label)}</dt><dd{attrs}>{shown}</dd></div>"


def _figures(f: SourceFacts | None, st: SourceStatus | None, facts: MigrationFacts | None = None) -> list[str]:
    out = []
    if st is not None:
        lag = "unknown" if st.lag_seconds is None else f"{st.lag_seconds:.1f} s"
        pending = "unknown" if st.pending_changes is None else f"{st.pending_changes:,}"
        out += [_figure("Lag", "lag_seconds", st.lag_seconds, e(lag)),
                _figure("Pending changes", "pending_changes", st.pending_changes, e(pending)),
                _figure("Last apply", "last_applied_at", st.last_applied_at, _iso_time(st.last_applied_at)),
                _figure("Dual-write since", "dual_write_since", st.dual_write_since, _iso_time(st.dual_write_since))]
    if f is not None and f.direction == "to_sqlite":
        until = "no longer possible" if f.way_back_ended else (
            f.rollback_until.strftime("%Y-%m-%d %H:%M UTC") if f.rollback_until else "unknown")
        out.append(_figure("Rollback possible until", "rollback_until",
                           f.rollback_until.isoformat() if f.rollback_until else None, e(until)))
    if f is not None:
        rows_s = _sum(t.rows_sqlite for t in f.tables)
        rows_p = _sum(t.rows_postgres for t in f.tables)
        # As the glance row: agreeing totals may hide one table short and another over.
        differ = (rows_s != rows_p or rows_s is None or any(not t.counts_match for t in f.tables)) \
            and not f.way_back_ended  # as the table rows: the file is kept as it was, no longer compared
        cls = ' class="mismatch"' if differ else ""
        out.append(_figure("Rows (SQLite / Postgres)", None, None,
                           f"<span{cls}>{e(number(rows_s))} / {e(number(rows_p))}</span>"))
        runs = [t.last_run for t in f.tables if t.last_run]
        if runs and f.way_back_ended:
            # As the table rows and the checklist: the file is kept as it was, no longer compared.
            out.append(_figure("Last verification", None, None,
                               f"{_time(max(r.finished_at for r in runs))}: no longer compared (the way back "
                               "has ended)"))
        elif runs:
            latest = max(r.finished_at for r in runs)
            bad = [t.name for t in f.tables if t.last_run and not t.last_run.clean]
            # A clean run that compared the table as it was (columns since changed, rows copied
            # again, the table gone from the file) is no evidence it is equal now.
            stale = [t.name for t in f.tables if t.last_run and t.last_run.clean and _changed_since(f, t)]
            # A clean run longer ago than [status] verify_max_age_seconds is stale, as the
            # checklist and `syncd status` judge it: no evidence the table is equal now.
            # A run dated ahead of the page (its host's clock ahead) ran at a time not known: as
            # the checklist judges it, no evidence of now either.
            dated = [(t.name, t.last_run.finished_at) for t in f.tables if facts is not None and t.last_run
                     and t.last_run.clean and t.name not in stale]
            ahead = [name for name, at in dated if _ahead(at, facts.generated_at)]
            old = [name for name, at in dated if name not in ahead
                   and (facts.generated_at - at).total_seconds() > facts.verify_max_age_seconds]
            never = len(f.tables) - len(runs)
            since = "it changed" if len(stale) == 1 else "they changed"
            if bad:
                result = f"{len(bad)} of {len(f.tables)} table(s) not clean"
            else:
                fresh = len(runs) - len(stale) - len(old) - len(ahead)
                parts = [f"equal ({fresh} table(s))"] if fresh else []
                for n, what in ((len(stale), f"not verified since {since}"),
                                (len(old), "last verified longer ago than "
                                 f"{_duration(facts.verify_max_age_seconds) if facts else '?'} "
                                 "([status] verify_max_age_seconds)"),
                                (len(ahead), "last verified at a time dated in the future (a host's clock "
                                 "ahead?): when is not known")):
                    if n:
                        parts.append(f"{n}{'' if parts else f' of {len(f.tables)} table(s)'} {what}")
                result = "; ".join(parts + ([f"{never} never verified"] if never else []))
            if f.error is not None:  # the file gone or unreadable: a check then says nothing of it now
                result += "; the SQLite file cannot be read now"
            # A table never verified is no table found equal: the figure is not all clear.
            cls = "sev-critical" if bad else "sev-warning" if stale or old or ahead or never or f.error else "sev-ok"
            out.append(_figure("Last verification", None, None,
                               f"{_time(latest)}: <span class=\"{cls}\">{e(result)}</span>"))
        else:
            out.append(_figure("Last verification", None, None, "never"))
    return out


def _changed_since(f: SourceFacts, t: TableFacts) -> bool:
    """The table's last verification compared it as it no longer is: its columns changed
    since, its rows were copied again, or the SQLite file (read) holds it no more."""
    gone = f.error is None and not f.file_archived and t.columns is None
    return t.checked_before_copy or bool(_columns_changed(t.last_run, t)) or gone


def _where(f: SourceFacts | None, st: SourceStatus | None) -> str:
    if f is not None:
        return f'<p class="muted where">SQLite file <code>{e(f.path)}</code> → Postgres schema <code>{e(f.schema)}</code></p>'
    return f'<p class="muted where">SQLite file <code>{e(st.path)}</code></p>' if st else ""


def _sum(values) -> int | None:
    total = 0
    for v in values:
        if v is None:
            return None
        total += v
    return total


def _is_halted(state: str | None, reason: str | None) -> bool:
    """Held or paused, a held table whose retry copies it again included (as the checklist says it)."""
    return state in HALTED or held_in_a_retry(state, reason)


def _halted(f: SourceFacts | None, st: SourceStatus | None) -> list[tuple[str, str, str | None]]:
    tables = f.tables if f else (st.tables if st else [])
    return [(t.name, "held, being copied again to retry" if held_in_a_retry(t.state, t.reason) else t.state, t.reason)
            for t in tables if _is_halted(t.state, t.reason)]


def _charts(name: str, history: HistoryView | None) -> list[str]:
    if history is None:
        return ['<p class="muted charts-missing">No lag or apply-rate history: it is kept in memory by the running '
                "daemon, and none answered.</p>"]
    series = history.sources.get(name)
    times = history.times
    end = times[-1] if times else time.time()
    # The last hour, or since the daemon started if that is shorter: a young daemon's
    # few minutes are drawn across the chart, not squeezed into its right edge.
    span = min(history.window_seconds, max(60.0, end - times[0])) if times else history.window_seconds
    what = "last hour" if span >= 3600 else f"last {span / 60:.0f} min"
    lag = series.lag_seconds if series else []
    rate = series.applied_per_second if series else []
    t = times if series else []
    return ['<div class="charts">',
            f'<figure data-chart="lag"><figcaption>Lag, {what}</figcaption>'
            + line_chart(t, lag, end, span, label="Lag", unit="s", keep="max") + "</figure>",
            f'<figure data-chart="apply-rate"><figcaption>Changes applied per second, {what}</figcaption>'
            + line_chart(t, rate, end, span, label="Apply rate", unit="changes/s", keep="mean")
            + "</figure>", "</div>"]


def _tables(f: SourceFacts | None, st: SourceStatus | None, ov: Overview) -> list[str]:
    if f is None:
        if st is None or not st.tables:
            return []
        rows = "".join(_status_row(t, ended=bool(st.way_back_ended)) for t in st.tables)
        return ['<div class="scroll"><table class="tables"><thead><tr><th>Table</th><th>State</th>'
                "<th>Last verification</th></tr></thead><tbody>", rows, "</tbody></table></div>"]
    facts = ov.facts
    start, end = _window(f, facts)
    head = (f'<div class="scroll"><table class="tables"><thead><tr><th>Table</th><th>State</th>'
            f'<th class="num">Rows in SQLite</th><th class="num">Rows in Postgres</th><th>Last verification</th>'
            f"<th>Result</th><th>Verifications since {e(timestamp(start))}</th></tr></thead><tbody>")
    rows = [head]
    for t in f.tables:
        rows.append(_table_row(t, start, end, compared=not f.way_back_ended))
    rows.append("</tbody></table></div>")
    rows.append('<p class="legend muted"><span class="clean"></span>all equal<span class="error"></span>'
                'a consistency error (or not compared)<span class="none"></span>no check</p>')
    return rows


def _window(f: SourceFacts, facts: MigrationFacts) -> tuple[dt.datetime, dt.datetime]:
    """The dual-write window the checklist judges ([cutover] min_days back), cut to
    when this source began to stream (or was first verified)."""
    end = facts.generated_at
    start = end - dt.timedelta(days=facts.min_days)
    firsts = [r.began for t in f.tables for r in t.runs[:1]]
    began = f.streaming_since or (min(firsts) if firsts else None)
    if began is not None and began > start:
        start = began
    if (end - start).total_seconds() < 60:
        start = end - dt.timedelta(seconds=60)
    return start, end


def _table_row(t: TableFacts, start: dt.datetime, end: dt.datetime, compared: bool = True) -> str:
    """`compared`: False once the way back has ended (the file is kept as it was then)."""
    state = t.state or "not registered"
    halted = _is_halted(t.state, t.reason)
    shown = e(state) + (f": {m(t.reason)}" if t.reason and t.state != "streaming" else "")
    if not compared:  # nothing flows any more: none of them streams, as `syncd status` says
        state, halted, shown = NOT_FOLLOWED, False, e(NOT_FOLLOWED)
    last = t.last_run
    pg_cls = "num" if t.counts_match or not compared else "num mismatch"
    window = [r for r in t.runs if r.finished_at >= start]
    strip = verification_strip(verification_slots(window, start, end, STRIP_SLOTS), f"{t.name}, since "
                               f"{timestamp(start)}")
    return (f'<tr data-table="{e(t.name)}" data-state="{e(state)}"' + (' class="halted"' if halted else "") + ">"
            f"<td><code>{e(t.name)}</code></td><td>{shown}</td>"
            f'<td class="num" data-field="rows_sqlite">{e(number(t.rows_sqlite))}</td>'
            f'<td class="{pg_cls}" data-field="rows_postgres">{e(number(t.rows_postgres))}</td>'
            f"<td>{_time(last.finished_at) if last else 'never'}</td>"
            f"<td>{m(last.outcome()) if last else '-'}{_before_copy(t)}</td><td>{strip}</td></tr>")


def _before_copy(t: TableFacts) -> str:
    if t.checked_before_copy:
        return f" (before the table was copied again, {_time(t.copied_at)})"
    changed = _columns_changed(t.last_run, t) if t.last_run else ""
    return f" (before its columns changed: {m(changed)})" if changed else ""


def _status_row(t: TableStatus, ended: bool = False) -> str:
    """`ended`: the way back has ended (nothing flows any more, none of them streams)."""
    state = NOT_FOLLOWED if ended else t.state
    shown = e(state) + (f": {m(t.reason)}" if t.reason and state != "streaming" and not ended else "")
    return (f'<tr data-table="{e(t.name)}" data-state="{e(state)}"'
            + (' class="halted"' if not ended and _is_halted(t.state, t.reason) else "")
            + f"><td><code>{e(t.name)}</code></td>"
            f"<td>{shown}</td><td>{_iso_time(t.last_verify_at)}</td></tr>")


# --- history and footer ---------------------------------------------------------------


def _errors(f: MigrationFacts) -> list[str]:
    errors = [r for r in f.runs if not r.clean]
    out = ['<section id="consistency">', "<h2>Consistency-error history</h2>"]
    if not f.runs:
        return out + ["<p>No verification has been recorded yet.</p>", "</section>"]
    first, total, failed = history_totals(f.runs)
    if not errors:
        return out + [f"<p>None: {total:,} verification(s) recorded since {e(timestamp(first))}, all clean."
                      "</p>", "</section>"]
    out.append(f"<p>{failed:,} of {total:,} verification(s) recorded since {e(timestamp(first))} were "
               "not clean" + (" (the latest shown; runs alike in one stretch of time are one line)"
                              if len(errors) > ERRORS_SHOWN or failed > len(errors) else "") + ".</p>")
    out.append('<div class="scroll"><table><thead><tr><th>When</th><th>Table</th><th class="num">Rows in SQLite'
               '</th><th class="num">Rows in Postgres</th><th>Outcome</th></tr></thead><tbody>')
    for r in reversed(errors[-ERRORS_SHOWN:]):
        out.append(f"<tr><td>{e(timestamp(r.finished_at))}</td><td><code>{e(r.source)}</code>.<code>"
                   f"{e(r.table_name)}</code></td><td class=\"num\">{e(number(r.rows_sqlite))}</td>"
                   f'<td class="num">{e(number(r.rows_postgres))}</td><td>{m(r.outcome() + alike(r))}</td></tr>')
    out += ["</tbody></table></div>", "</section>"]
    return out


def _footer(ov: Overview) -> list[str]:
    f = ov.facts
    judged = ""
    if f is not None:
        judged = (f"Dual-write needs {e(days(f.min_days))} ([cutover] min_days) of clean verifications of every "
                  f"table, none more than {f.max_verify_gap_hours:g} h apart ([cutover] max_verify_gap_hours); "
                  f"lag must stay below {f.warn_lag_seconds:g} s; a verification older than "
                  f"{f.verify_max_age_seconds / 3600:g} h is stale. ")
    return ['<footer class="muted">',
            f"<p>{judged}The same facts and checklist as <code>syncd report</code>; health as "
            "<code>syncd status</code> judges it. Lag and apply-rate charts come from the daemon's memory (the last "
            "hour); verification history from syncd's bookkeeping in Postgres.</p>",
            "</footer>"]
