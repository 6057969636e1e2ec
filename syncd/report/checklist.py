"""The cutover checklist, judged from measured facts (pure: no I/O).

Each item passes only on evidence. What cannot be measured fails and says why: a
table never verified, a lag nobody reported, a backup syncd cannot see.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from syncd.parity.speed import NO_VALUE, RUNS
from syncd.postgres.bookkeeping import REFUSED, held_in_a_retry
from syncd.report.backups import FUTURE_SECONDS
from syncd.report.facts import TO_SQLITE, MigrationFacts, RehearsalFacts, SourceFacts, TableFacts
from syncd.sqlite.leftout import EXCLUDED
from syncd.verify.history import VerifyRun, columns_changed

HALTED = ("held", "paused")


@dataclass
class CheckItem:
    key: str  # stable name for machines
    title: str
    ok: bool
    problems: list[str] = field(default_factory=list)  # what is not done, measured
    evidence: list[str] = field(default_factory=list)  # what is done, measured


def evaluate(f: MigrationFacts) -> list[CheckItem]:
    return [migrated(f), dual_write(f), lag(f), halted(f), captured(f), backup(f), performance(f), foreign_keys(f),
            rehearsed(f)]


# What a cutover also needs and no measurement of syncd's can show: said beside every
# verdict before the switch, so "READY" is never read as covering them.
NOT_JUDGED = (
    "the application's code moved to Postgres (every module that imports sqlite3)",
    "the application's own tests passing against Postgres",
    "team training and stakeholder approval",
    # The backup item wants a recent backup; how long they are kept no file shows.
    "SQLite backups kept for 30 days after the switch (the backup item sees only the newest backup's age)",
)


def not_judged_text(f: MigrationFacts) -> str:
    """One sentence naming NOT_JUDGED; empty once every source is cut over."""
    if f.sources and len(cut_over(f)) == len(f.sources):
        return ""
    return ("syncd judges only what it measures; not judged here, to confirm before the switch: "
            + "; ".join(NOT_JUDGED))


def ready(items: list[CheckItem]) -> bool:
    return all(i.ok for i in items)


def cut_over(f: MigrationFacts) -> list[SourceFacts]:
    """Sources already cut over: Postgres is their source of truth, SQLite follows it."""
    return [s for s in f.sources if s.direction == TO_SQLITE]


def headline(f: MigrationFacts, items: list[CheckItem]) -> str:
    """The verdict in one sentence. Once sources are cut over, "READY for cutover" or
    not is no longer the news: which side the application writes to is."""
    failing = sum(1 for i in items if not i.ok)
    judged = "every checklist item is met" if not failing else \
        f"{failing} of {len(items)} checklist items are not done"
    done = cut_over(f)
    if not done:
        return f"READY for cutover: {judged}" if not failing else f"NOT READY for cutover: {judged}"
    back = [s for s in done if s.rollback_until is not None and not s.way_back_ended]
    until = f"rollback possible until {timestamp(min(s.rollback_until for s in back))}" if back else ""
    if not back:
        way_back = "SQLite no longer follows it, rollback no longer possible"
    elif len(back) == len(done):
        way_back = f"SQLite follows it, {until}"
    else:
        way_back = f"SQLite follows it for {len(back)} of them ({until}), no longer for {len(done) - len(back)}"
    if len(done) == len(f.sources):
        return (f"CUT OVER: PostgreSQL is the source of truth for {'the' if len(done) == 1 else 'all'} "
                f"{len(done)} source(s), {way_back}; as measured now, {judged}")
    return (f"PARTLY CUT OVER: PostgreSQL is the source of truth for {len(done)} of {len(f.sources)} sources "
            f"({', '.join(s.name for s in done)}), {way_back}; as measured now, {judged}")


# --- the items ------------------------------------------------------------------------


def migrated(f: MigrationFacts) -> CheckItem:
    item = CheckItem("migrated", "All data migrated and validated (100% row-count match, last full verify clean)",
                     True)
    bad, good = [], []
    for s in f.sources:
        if _source_unusable(s, bad):
            continue
        if _way_back_ended(s, good):
            continue
        if not s.tables:
            bad.append(f"{s.name}: no tables to migrate")
        for t in s.tables:
            name = f"{s.name}.{t.name}"
            problems = []
            if t.state != "streaming":
                problems.append(_state_text(t))
            if not t.counts_match:
                problems.append(f"{_n(t.rows_sqlite)} rows in SQLite, {_n(t.rows_postgres)} in Postgres"
                                + _share(t.rows_sqlite, t.rows_postgres))
            last = t.last_run
            # A run dated ahead of this report (by its host's clock, ahead then) ran at a time
            # not known: the table's last verification is the latest one dated before now.
            ahead = last if last is not None and _ahead(last.finished_at, f.generated_at) else None
            if ahead is not None:
                last = next((r for r in reversed(t.runs) if not _ahead(r.finished_at, f.generated_at)), None)
            future = "" if ahead is None else (f" (a later one is dated {_ts(ahead.finished_at)}, in the future: "
                                               "the clock of the host that ran it ahead? when it ran is not known)")
            if t.state != "streaming":
                pass  # it cannot have been compared: its state says why
            elif last is None:
                problems.append("never verified" + future)
            elif t.copied_at is not None and last.started_at < t.copied_at:
                problems.append(f"not verified since the table was copied again at "
                                f"{_when(t.copied_at, f.generated_at)} (the last verification compared rows "
                                "that are gone)")
            elif not last.clean:
                problems.append(f"last verification {_when(last.finished_at, f.generated_at)}: {last.outcome()}"
                                + future)
            elif changed := _columns_changed(last, t):
                problems.append(f"not verified since its columns changed ({changed}): the last verification, "
                                f"{_when(last.finished_at, f.generated_at)}, compared the columns it had then"
                                + future)
            elif _age_seconds(last.finished_at, f.generated_at) > f.verify_max_age_seconds:
                problems.append(f"last verification is {_ago(last.finished_at, f.generated_at)} old, more than "
                                f"[status] verify_max_age_seconds ({_duration(f.verify_max_age_seconds)})" + future)
            if problems:
                bad.append(f"{name}: " + "; ".join(problems))
            else:
                counts = f"{_n(t.rows_sqlite)} rows on both sides" if t.rows_sqlite == t.rows_postgres else (
                    f"{_n(t.rows_sqlite)} rows in SQLite, {_n(t.rows_postgres)} in Postgres when counted, "
                    f"{_n(sum(t.in_flight or (0, 0)))} key(s) of it changing on their way")
                good.append(f"{name}: {counts}; verified equal {_when(last.finished_at, f.generated_at)}")
        for lo in s.left_out:
            if lo.holds_data:
                rows = f"{lo.rows} row(s)" if lo.rows is not None else "rows"
                bad.append(f"{s.name}.{lo.name}: {rows} of application data in {lo.why}, not migrated: {lo.todo} "
                           "(or list it in the source's `exclude` once handled)")
            elif lo.kind == EXCLUDED and lo.name in s.left_in_postgres and s.direction != TO_SQLITE:
                # Replicated before it was left out: Postgres keeps the rows it had then.
                bad.append(f"{s.name}.{lo.name}: {_n(lo.rows)} row(s) in SQLite, {_n(s.left_in_postgres[lo.name])} "
                           "in Postgres, no longer replicated: the source's include/exclude settings leave it out, "
                           "yet Postgres keeps its copy as it was when syncd stopped following it, and the "
                           "application would read that copy after the switch: drop the table in Postgres (or "
                           "replicate it again)")
            elif lo.kind == EXCLUDED and lo.rows:
                # The operator's choice, not a failure; but "all data" is said with what it leaves out.
                good.append(f"{s.name}.{lo.name}: {_n(lo.rows)} row(s) not migrated: the source's include/exclude "
                            "settings leave it out")
    # A file the glob matches and syncd does not replicate holds data that would be left behind.
    bad += [f"matched by a glob and not replicated: {why}" for why in f.not_picked_up]
    item.ok = not bad and bool(good)
    item.problems, item.evidence = bad, good
    return item


def dual_write(f: MigrationFacts) -> CheckItem:
    item = CheckItem("dual_write", f"Dual-write running for at least {_days(f.min_days)} with zero consistency "
                                   "errors in that window", True)
    bad, good = [], []
    bound = dt.timedelta(hours=f.max_verify_gap_hours)
    limit = f"{_duration(bound.total_seconds())} ([cutover] max_verify_gap_hours)"
    for s in f.sources:
        # The window is the last min_days; with min_days = 0 (no minimum), all of dual-write.
        if f.min_days > 0 or s.streaming_since is None:
            since, span = f.generated_at - dt.timedelta(days=f.min_days), f"the last {_days(f.min_days)}"
        else:
            since, span = s.streaming_since, "dual-write so far"
        if s.unmeasured:  # neither its dual-write nor its checks are known: not that none began
            bad.append(f"{s.name}: {s.error}")
            continue
        if _way_back_ended(s, good):
            continue
        days = s.dual_write_days(f.generated_at)
        if days is None:
            bad.append(f"{s.name}: dual-write has not started (not every table has streamed yet)")
        elif days < f.min_days:
            bad.append(f"{s.name}: dual-write since {_ts(s.streaming_since)}, {_days(days)}; "
                       f"{_days(f.min_days)} required ({_days(f.min_days - days)} to go)")
        else:
            good.append(f"{s.name}: dual-write since {_ts(s.streaming_since)}, {_days(days)}")
        # Every run of the source, of tables dropped or renamed since too: an error then was
        # replication failing then, whatever became of the table.
        window = [r for r in f.runs if r.source == s.name and r.finished_at >= since]
        errors = sorted((r for r in window if not r.clean), key=lambda r: r.finished_at)
        for r in errors[-10:]:
            more = f" (and {r.count - 1} more like it since {_ts(r.began)})" if r.count > 1 else ""
            bad.append(f"{s.name}.{r.table_name}: consistency error {_when(r.finished_at, f.generated_at)}: "
                       f"{r.outcome()}{more}")
        earlier = sum(r.count for r in errors[:-10])
        if earlier:
            bad.append(f"{s.name}: {earlier} earlier consistency error(s) in the window")
        for at, detail in s.suspensions:
            if at >= since:
                bad.append(f"{s.name}: capture was suspended to protect the disk ({detail}) until "
                           f"{_ts(at)}: changes went unrecorded, and every table was snapshotted again")
        if s.capture_suspended:
            bad.append(f"{s.name}: capture is suspended now ({s.capture_suspended})")
        # A table syncd does not replicate (refused, or not taken up yet) cannot be verified:
        # migrated and capture name it; no stretch went unwatched for it.
        replicated = [t for t in s.tables if t.state not in (None, REFUSED)]
        unchecked = [t.name for t in replicated if not any(r.finished_at >= since for r in t.runs)]
        for name in unchecked:
            bad.append(f"{s.name}.{name}: not verified once in {span}, so errors there would not show")
        # A clean run says nothing of the hours around it: a stretch nobody checked fails too.
        start = max(since, s.streaming_since or since)
        gaps, coarse = [], []
        for t in replicated:
            # A table first copied within the window was dual-written only since: too short,
            # said so, and watched only since (it was not unverified before it existed).
            began = start if t.replicated_since is None else max(start, t.replicated_since)
            if began > start and f.min_days > 0 and (f.generated_at - began).total_seconds() < f.min_days * 86400:
                age = (f.generated_at - began).total_seconds() / 86400
                bad.append(f"{s.name}.{t.name}: replicated since {_ts(began)}, {_days(age)}; {_days(f.min_days)} "
                           f"of dual-write required ({_days(f.min_days - age)} to go)")
            if t.name not in unchecked:
                found, too_coarse = unwatched(t.runs, began, f.generated_at, bound)
                gaps += [(b, a, t.name) for a, b in found]
                coarse += [(r, t.name) for r in too_coarse]
        gaps.sort()
        for b, a, name in gaps[-10:]:
            bad.append(_gap_text(f"{s.name}.{name}", a, b, f.generated_at, bound))
        if gaps[:-10]:
            bad.append(f"{s.name}: {len(gaps[:-10])} earlier gap(s) longer than {limit} without a verification "
                       "in the window")
        if coarse:
            names = sorted({name for _, name in coarse})
            shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more table(s)" if len(names) > 10 else "")
            bad.append(f"{s.name}: {shown}: runs between {_ts(min(r.began for r, _ in coarse))} and "
                       f"{_ts(max(r.finished_at for r, _ in coarse))} are merged in the history into stretches "
                       f"wider than {limit}, so a longer gap between them cannot be ruled out; keep every run for "
                       "the window ([verify] keep_every_run_days) or raise the bound")
        if not errors and window:
            good.append(f"{s.name}: {sum(r.count for r in window)} verification(s) in {span}, all clean"
                        + ("" if gaps or coarse or unchecked else f", no table unverified for more than {limit}"))
    item.ok = not bad and bool(f.sources)
    item.problems, item.evidence = bad, good
    return item


def unwatched(runs: list[VerifyRun], start: dt.datetime, end: dt.datetime,
              bound: dt.timedelta) -> tuple[list[tuple[dt.datetime, dt.datetime]], list[VerifyRun]]:
    """(the stretches of time from `start` to `end` longer than `bound` in which no run
    of a table finished, oldest first; the rows of its history too coarse to tell).

    A run of any outcome was watching. A row of the history stands for its `count` runs
    from `began` to `finished_at` (load_history; the daemon's thinning merges clean runs
    by the hour). No wider than `bound`, no gap inside it can be longer, so it covers its
    span. A wider one may hide a longer gap between its runs, and which runs it merged is
    not kept: it is returned as too coarse to judge (the caller fails the item for it),
    and only then taken as covering its span, so the gaps named are all real ones."""
    watched, coarse = [], []
    for r in runs:
        if r.finished_at < start or _ahead(r.finished_at, end):  # ahead: when it watched is not known
            continue
        watched.append((r.began, r.finished_at))
        if r.finished_at - r.began > bound:
            coarse.append(r)
    gaps, seen = [], start
    for a, b in sorted(watched):
        if a - seen > bound:
            gaps.append((seen, a))
        seen = max(seen, b)
    if end - seen > bound:
        gaps.append((seen, end))
    return gaps, coarse


def _gap_text(name: str, a: dt.datetime, b: dt.datetime, now: dt.datetime, bound: dt.timedelta) -> str:
    limit = f"more than [cutover] max_verify_gap_hours ({_duration(bound.total_seconds())})"
    if b >= now:
        return (f"{name}: not verified since {_when(a, now)}, {limit}: errors since would not show "
                "(is the daemon running?)")
    return (f"{name}: not verified from {_ts(a)} to {_ts(b)} ({_duration((b - a).total_seconds())}), {limit}: "
            "errors then would not show")


def lag(f: MigrationFacts) -> CheckItem:
    item = CheckItem("lag", f"Replication lag below {f.warn_lag_seconds:g} s now ([status] warn_lag_seconds)", True)
    bad, good = [], []
    for s in f.sources:
        if s.direction == TO_SQLITE and s.way_back_ended:
            good.append(f"{s.name}: cut over; SQLite no longer follows Postgres ({s.way_back_ended}): nothing "
                        "flows, no lag")
            continue
        pending = "" if s.lag.pending_changes is None else f"; {s.lag.pending_changes} change(s) pending"
        if s.daemon_failing:
            # Whatever the figure now, it grows while every step fails.
            bad.append(f"{s.name}: the daemon reports failing: {s.daemon_failing}; changes wait until the failing "
                       "step succeeds")
        if s.lag.seconds is None and s.unmeasured:
            bad.append(f"{s.name}: lag unknown: {s.error}")
        elif s.lag.seconds is None:
            bad.append(f"{s.name}: lag unknown, {s.lag.source}")
        elif s.lag.no_daemon:
            bad.append(f"{s.name}: lag {s.lag.seconds:.1f} s, from {s.lag.source}{pending} and no daemon runs to "
                       "apply them")
        elif s.lag.seconds >= f.warn_lag_seconds:
            bad.append(f"{s.name}: lag {s.lag.seconds:.1f} s, from {s.lag.source}{pending}")
        elif not s.daemon_failing:
            good.append(f"{s.name}: lag {s.lag.seconds:.1f} s, from {s.lag.source}{pending}")
    item.ok = not bad and bool(f.sources)
    item.problems, item.evidence = bad, good
    return item


def halted(f: MigrationFacts) -> CheckItem:
    item = CheckItem("halted", "No halted tables (held by a value Postgres cannot take, or paused by a schema "
                               "change)", True)
    bad = [f"{s.name}.{t.name}: {t.state}: {t.reason or 'no reason recorded'}"
           for s in f.sources for t in s.tables if t.state in HALTED]
    bad += [f"{s.name}.{t.name}: held, being copied again to retry: {t.reason}"
            for s in f.sources for t in s.tables if held_in_a_retry(t.state, t.reason)]
    bad += [f"{s.name}: {s.error}" for s in f.sources if s.unmeasured]  # its tables' states are not known
    # Every table, for the application: its writes fail.
    bad += [f"{s.name}: {s.left_frozen}" for s in f.sources if s.left_frozen]
    n = sum(len(s.tables) for s in f.sources)
    item.ok = not bad
    item.problems, item.evidence = bad, ([] if bad else [f"none of the {n} table(s) is held or paused"])
    return item


def captured(f: MigrationFacts) -> CheckItem:
    item = CheckItem("capture", "Capture installed on every table (syncd's triggers present in each SQLite file)",
                     True)
    bad, good = [], 0
    retired: list[str] = []
    for s in f.sources:
        if s.error:
            bad.append(f"{s.name}: {s.error}")
            continue
        if _archived(s, retired, "nothing is captured any more"):
            continue
        if s.capture_suspended:
            since, _, why = s.capture_suspended.partition(" ")
            bad.append(f"{s.name}: capture SUSPENDED since {since} to protect the disk ({why}); changes made "
                       "since are not recorded until Postgres answers and every table is snapshotted again")
        for t in s.tables:
            if t.captured:
                good += 1
            else:
                bad.append(f"{s.name}.{t.name}: {t.capture_note}")
    item.ok = not bad and (good > 0 or bool(retired))
    item.problems, item.evidence = bad, ([f"{good} table(s) captured"] if good else []) + retired
    return item


def backup(f: MigrationFacts) -> CheckItem:
    item = CheckItem("backup", f"A recent SQLite backup exists (newest younger than {_days(f.backup_max_age_days)}, "
                               "[cutover] backup_max_age_days)", True)
    if not f.backup_glob:
        item.ok = False
        item.problems = ["not evidenced: no [cutover] backup_glob is configured, so syncd cannot see a backup; "
                         "set it to where your backups land (e.g. \"/var/backups/sqlite/{source}-*.db\")"]
        return item
    bad, good = [], []
    for s in f.sources:
        if s.direction == TO_SQLITE and s.way_back_ended:
            # Its file is kept as it was when SQLite stopped following Postgres: no backup of
            # it is due any more, and the nightly ones may rightly have stopped.
            good.append(f"{s.name}: cut over; SQLite no longer follows Postgres ({s.way_back_ended}): its file "
                        "is kept as it was then and needs no new backup")
            continue
        b = s.backup
        skipped = f"; not counted: {_some(b.not_counted_grouped())}" if b is not None and b.not_counted else ""
        if b is not None and b.others:
            skipped += f"; {b.others} other file(s) matched hold other sources' backups"
        if b is not None and b.count == 0 and b.unreadable:
            bad.append(f"{s.name}: {b.unreadable}{skipped}")
            continue
        if b is None or b.count == 0:
            bad.append(f"{s.name}: no backup matches {b.pattern if b else f.backup_glob}{skipped}")
            continue
        what = (f"newest {b.newest} ({_size(b.newest_bytes)}), {_days(b.newest_age_days)} old; "
                f"{b.count} file(s), oldest {_days(b.oldest_age_days)} old")
        if b.newest_is_sqlite is False:
            what += "; not a plain SQLite file (compressed?)"
        what += skipped
        if b.newest_age_days is not None and b.newest_age_days < f.backup_max_age_days:
            good.append(f"{s.name}: {what}")
        else:
            bad.append(f"{s.name}: too old: {what}")
    item.ok = not bad and bool(good)
    item.problems, item.evidence = bad, good
    return item


def rehearsed(f: MigrationFacts) -> CheckItem:
    limit = f.rehearsal_max_age_days
    item = CheckItem("rollback_rehearsed", f"Rollback plan tested: `syncd rehearse` cut over a copy of each source "
                                           f"and rolled it back, every row verified, within {_days(limit)} "
                                           "([cutover] rehearsal_max_age_days)", True)
    bad, good = [], []
    for s in f.sources:
        r = s.rehearsal
        if s.direction == TO_SQLITE and s.way_back_ended:
            good.append(f"{s.name}: cut over; the way back has ended, a rollback is no longer possible")
        elif s.direction == TO_SQLITE:
            good.append(f"{s.name}: cut over; `syncd rollback` is the way back now")
        elif s.unmeasured:  # its rehearsals are recorded in the Postgres not reached
            bad.append(f"{s.name}: whether it was rehearsed is not known: {s.error}")
        elif r is None:
            bad.append(f"{s.name}: never rehearsed: run `syncd rehearse --source {s.name}` (a copy of the file is "
                       "cut over and rolled back in schemas of its own; the live file and its replica are not "
                       "touched)")
        elif not r.ok:
            bad.append(f"{s.name}: the last rehearsal, {_when(r.at, f.generated_at)}, failed: "
                       f"{r.problem or 'no reason recorded'}")
        elif _age_seconds(r.at, f.generated_at) < -FUTURE_SECONDS:
            bad.append(f"{s.name}: the last rehearsal is dated {_ts(r.at)}, in the future (Postgres's clock ahead "
                       "of this host's?): when it ran is not known; run `syncd rehearse` again")
        elif _age_seconds(r.at, f.generated_at) > limit * 86400:
            bad.append(f"{s.name}: last rehearsed {_when(r.at, f.generated_at)}, longer ago than {_days(limit)}: "
                       "run `syncd rehearse` again")
        elif r.other_file is not None:
            bad.append(f"{s.name}: the last rehearsal, {_when(r.at, f.generated_at)}, copied another file "
                       f"({r.other_file}), not {s.path}: run `syncd rehearse --source {s.name}` again")
        elif r.rows == 0 and (held := sum(t.rows_sqlite or 0 for t in s.tables)):
            # None of the rows there now went through the switch and back.
            bad.append(f"{s.name}: the last rehearsal, {_when(r.at, f.generated_at)}, verified no row (its copy was "
                       f"empty); the file holds {_n(held)} row(s) now: run `syncd rehearse --source {s.name}` again")
        elif not_rehearsed := _not_rehearsed(s, r):
            # Its copy did not hold them as they are now: never cut over and rolled back so.
            bad.append(f"{s.name}: the last rehearsal, {_when(r.at, f.generated_at)}, did not cover "
                       f"{_some(not_rehearsed)}: run `syncd rehearse --source {s.name}` again")
        else:
            good.append(f"{s.name}: rehearsed {_when(r.at, f.generated_at)}: cutover write downtime "
                        f"{r.cutover_downtime or 0:.2f} s, rollback {r.rollback_downtime or 0:.2f} s, "
                        f"{_n(r.rows)} row(s) verified")
    item.ok = not bad and bool(f.sources)
    item.problems, item.evidence = bad, good
    return item


def _not_rehearsed(s: SourceFacts, r: RehearsalFacts) -> list[str]:
    """The tables of the file now that `r`'s copy did not hold, or held defined otherwise."""
    if r.tables is None:  # recorded by an earlier syncd: what it covered is not known
        return []
    out = []
    for t in s.tables:
        if t.rows_sqlite is None:  # not in the file now
            continue
        if t.name not in r.tables:
            out.append(f'table "{t.name}" (not in the file then)')
        elif r.tables[t.name] is not None and t.definition is not None and r.tables[t.name] != t.definition:
            out.append(f'table "{t.name}" as it is defined now (altered since)')
    return out


def performance(f: MigrationFacts) -> CheckItem:
    limit = f.max_query_ms
    item = CheckItem("performance", f"PostgreSQL performance meets targets (primary-key and index lookups under "
                                    f"{limit:g} ms, [cutover] max_query_ms)", True)
    bad, good = [], []
    timed = 0
    for s in f.sources:
        p = s.parity
        if _archived(s, good, "its lookups, sampled from that file, are no longer timed"):
            continue
        if p is None:  # what was not measured fails: a file gone, a Postgres not reached
            bad.append(f"{s.name}: lookups not timed" + (f": {s.error}" if s.error else ""))
            continue
        if p.error:
            bad.append(f"{s.name}: lookups not timed: {p.error}")
            continue
        sp = p.speed
        if sp is None:
            continue
        for lk in sp.lookups:
            if lk.postgres_ms is None:
                if lk.note == NO_VALUE:
                    good.append(f"{s.name}.{lk.table}: {lk.what}: {NO_VALUE}")
                else:  # what was not measured fails, whatever kept it from being timed
                    bad.append(f"{s.name}.{lk.describe()}")
                continue
            timed += 1
            if lk.postgres_ms > limit:
                bad.append(f"{s.name}.{lk.describe()}: over {limit:g} ms")
            else:
                good.append(f"{s.name}.{lk.describe()}")
        bad += [f"{s.name}: {e}" for e in sp.errors]
        if sp.empty:
            good.append(f"{s.name}: {len(sp.empty)} empty table(s), nothing to look up: {', '.join(sp.empty[:10])}")
        if sp.not_timed:
            # What cannot be measured fails: a sample is no evidence for the lookups left out.
            bad.append(f"{s.name}: {sp.not_timed} further lookup(s) not timed: [cutover] speed_max_lookups "
                       "caps the lookups timed per report; raise it to time them all")
    item.ok = not bad
    item.problems, item.evidence = bad, ([f"{timed} lookup(s) timed (median of {RUNS} runs on sampled rows)"]
                                         if timed else []) + good
    return item


def foreign_keys(f: MigrationFacts) -> CheckItem:
    item = CheckItem("foreign_keys", "Foreign keys hold in the data: no orphan rows (or `syncd cutover "
                                     "--allow-orphans`, which creates those foreign keys NOT VALID)", True)
    bad, good = [], []
    for s in f.sources:
        p = s.parity
        if _archived(s, good, "its foreign keys, read from that file, are no longer checked"):
            continue
        if p is None or p.error:
            bad.append(f"{s.name}: foreign keys not checked: "
                       f"{p.error if p is not None else s.error or 'the SQLite file was not read'}")
            continue
        counted = 0
        for o in p.orphans:
            if o.orphans is None or o.orphans:
                bad.append(f"{s.name}.{o.describe()}")
            else:
                counted += 1
        if counted:
            good.append(f"{s.name}: {counted} foreign key(s), no orphan rows")
    item.ok = not bad
    item.problems, item.evidence = bad, good or ["no foreign keys to check"]
    return item


# --- wording --------------------------------------------------------------------------


def _way_back_ended(s: SourceFacts, good: list[str]) -> bool:
    """A cut-over source SQLite no longer follows: its file is kept as it was then and the
    application writes Postgres alone, so the two sides are no longer compared or judged."""
    if s.direction != TO_SQLITE or not s.way_back_ended:
        return False
    good.append(f"{s.name}: cut over; SQLite no longer follows Postgres ({s.way_back_ended}): the two are no "
                "longer compared")
    return True


def _archived(s: SourceFacts, good: list[str], what: str) -> bool:
    """A source retired after its way back ended, its SQLite file archived (moved away, as
    the retention after the cutover has it): its absence is expected, not a failure."""
    if not s.file_archived:
        return False
    good.append(f"{s.name}: retired; its SQLite file {s.path} is archived (no longer there) since the way back "
                f"ended ({s.way_back_ended}): {what}")
    return True


def _source_unusable(s: SourceFacts, bad: list[str]) -> bool:
    if s.error:
        bad.append(f"{s.name}: {s.error}")
        return True
    if not s.registered:
        bad.append(f"{s.name}: syncd has not set this source up in Postgres (run `syncd init` or the daemon)")
        return True
    return False


def _columns_changed(run: VerifyRun, t: TableFacts) -> str:
    """How the table's columns now differ from those `run` compared (verify.history)."""
    return columns_changed(run.detail.get("columns"), t.columns)


def _state_text(t: TableFacts) -> str:
    if t.state is None:
        return "not registered by syncd yet"
    return f"{t.state}" + (f" ({t.reason})" if t.reason else "")


def _share(s: int | None, p: int | None) -> str:
    if s and p is not None:
        return f" ({100 * p / s:.1f}% in Postgres)"
    return ""


def _n(v: int | None) -> str:
    return "?" if v is None else f"{v:,}"


def _ts(t: dt.datetime | None) -> str:
    return "never" if t is None else t.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _age_seconds(t: dt.datetime, now: dt.datetime) -> float:
    return (now - t).total_seconds()


def _ahead(t: dt.datetime, now: dt.datetime) -> bool:
    """Dated further past `now` than clocks apart a little explain (a host's clock ahead)."""
    return _age_seconds(t, now) < -FUTURE_SECONDS


def _ago(t: dt.datetime, now: dt.datetime) -> str:
    # A time Postgres stamped a moment after the report took its own is no time ago.
    return _duration(max(0.0, _age_seconds(t, now)))


def _some(items: list[str], shown: int = 5) -> str:
    """The first few of a list that may run long (a folder of hundreds of files)."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _when(t: dt.datetime, now: dt.datetime) -> str:
    if _ahead(t, now):  # not "0 s ago": when it happened is not known
        return f"{_ts(t)} (in the future by {_duration(-_age_seconds(t, now))}: the clock that dated it ahead?)"
    return f"{_ts(t)} ({_ago(t, now)} ago)"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return _days(seconds / 86400)


def _days(d: float | None) -> str:
    if d is None:
        return "?"
    if d == 1:
        return "1 day"
    if 0 < d < 0.1:  # "0.0 days" would read as none at all
        return f"{d * 1440:.1f} min" if d < 1 / 24 else f"{d * 24:.1f} h"
    return f"{d:.0f} days" if d == round(d) else f"{d:.1f} days"


def _size(b: int | None) -> str:
    if b is None:
        return "?"
    for unit in ("bytes", "KB", "MB", "GB"):
        if b < 1024 or unit == "GB":
            return f"{b:.0f} {unit}" if unit == "bytes" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b} bytes"


# Shared with the renderer.
when = _when
timestamp = _ts
days = _days
number = _n
