"""Every Prometheus metric syncd exports, defined in one place.

Base units, `_total` counters, `_timestamp_seconds` for times; labels are only
`source`, `table` and small enums, never keys or values.

Which way changes flow: the series of lag, pending changes, applied changes, apply
times and errors carry a `direction` label, `to_postgres` (the stream from SQLite) or
`to_sqlite` (the way back after a cutover). The label was added to these series,
with the same names: queries, alerts and dashboards that select by `source` (or
aggregate `by (source)`) keep working and now see either direction. Code that names
no direction means `to_postgres` (see Directional), so the forward stream's call
sites read as before.
"""

from __future__ import annotations

import time

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from syncd import __version__

TO_POSTGRES, TO_SQLITE = "to_postgres", "to_sqlite"  # as syncd.model names them

registry: CollectorRegistry = REGISTRY


class Directional:
    """A metric whose last label is `direction`; `labels(...)` without one is to_postgres."""

    def __init__(self, metric):
        self.metric = metric

    def labels(self, *values: str, direction: str = TO_POSTGRES):
        return self.metric.labels(*values, direction)

    def remove(self, *values: str) -> None:
        self.metric.remove(*values)

    def __getattr__(self, name: str):  # collect(), _metrics, ...: the wrapped metric's
        return getattr(self.metric, name)


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

replication_lag_seconds = Directional(Gauge(
    "syncd_replication_lag_seconds",
    "Age of the oldest change committed on the sending side (SQLite, or Postgres after a cutover) and not yet "
    "applied on the other; 0 when caught up, NaN while a starting source does not know it yet.",
    ["source", "direction"],
))


def set_lag(source: str, seconds: float | None, direction: str = TO_POSTGRES) -> None:
    """A lag not known yet is NaN: 0 would say that nothing waits."""
    replication_lag_seconds.labels(source, direction=direction).set(UNKNOWN if seconds is None else seconds)


UNKNOWN = float("nan")
pending_changes = Directional(Gauge(
    "syncd_pending_changes", "Changelog entries not yet applied on the receiving side.", ["source", "direction"]
))
last_applied_timestamp_seconds = Directional(Gauge(
    "syncd_last_applied_timestamp_seconds", "Unix time the last batch committed on the receiving side.",
    ["source", "direction"],
))
last_check_timestamp_seconds = Gauge(
    "syncd_last_check_timestamp_seconds",
    "Unix time syncd last checked the source for changes (moves while idle).",
    ["source"],
)
changes_applied_total = Directional(Counter(
    "syncd_changes_applied", "Row changes applied on the receiving side, after coalescing per key.",
    ["source", "table", "op", "direction"],
))
apply_duration_seconds = Directional(Histogram(
    "syncd_apply_duration_seconds", "Time to apply one batch on the receiving side.", ["source", "direction"],
    buckets=LATENCY_BUCKETS,
))
commit_to_apply_seconds = Directional(Histogram(
    "syncd_commit_to_apply_seconds",
    "From a change's commit on the sending side (as first seen by syncd) to its commit on the receiving side.",
    ["source", "direction"],
    buckets=LATENCY_BUCKETS,
))
postgres_up = Gauge("syncd_postgres_up", "1 when every target Postgres database answers and accepts syncd's login; "
                    "NaN while the daemon has no source (nothing asked Postgres).")
source_up = Gauge("syncd_source_up", "1 when the source SQLite file is readable and captured.", ["source"])
retries_total = Counter("syncd_retries", "Retries after transient Postgres or SQLite failures.", ["source"])
errors_total = Directional(Counter(
    "syncd_errors", "Errors by kind (postgres, sqlite, data, schema, lock).", ["source", "kind", "direction"]
))
table_halted = Gauge(
    "syncd_table_halted", "1 while a table is held (bad value) or paused (schema change).", ["source", "table"]
)
table_state = Gauge(
    "syncd_table_state", "1 for the table's current replication state.", ["source", "table", "state"]
)
changelog_bytes = Gauge("syncd_changelog_bytes", "Bytes the changelog occupies in the SQLite file.", ["source"])
capture_suspended = Gauge(
    "syncd_capture_suspended",
    "1 while capture is suspended in the source's file to protect its disk ([sqlite] max_changelog_mb).",
    ["source"],
)
snapshot_rows_loaded = Gauge(
    "syncd_snapshot_rows_loaded", "Rows loaded so far by the current or last snapshot.", ["source", "table"]
)
rows = Gauge("syncd_rows", "Rows in the table at the last consistency check.", ["source", "table", "side"])
consistency_mismatched_rows = Gauge(
    "syncd_consistency_mismatched_rows", "Rows that differed at the last consistency check.", ["source", "table"]
)
consistency_last_check_timestamp_seconds = Gauge(
    "syncd_consistency_last_check_timestamp_seconds",
    "Unix time of the last completed consistency check.",
    ["source", "table"],
)
repaired_rows_total = Counter(
    "syncd_repaired_rows",
    "Rows the daemon's consistency check found different and replayed through the stream ([verify] repair).",
    ["source", "table"],
)
foreign_key_orphans = Gauge(
    "syncd_foreign_key_orphans",
    "Rows whose foreign key names no parent row, per foreign key SQLite declares (counted in Postgres); the cutover "
    "refuses while any remain, unless --allow-orphans.",
    ["source", "table", "constraint"],
)
verify_behind_seconds = Gauge(
    "syncd_verify_behind_seconds",
    "How far the oldest periodic consistency check is past [verify] interval_seconds; 0 when the fleet keeps up.",
)
files_not_picked_up = Gauge(
    "syncd_files_not_picked_up",
    "Files a source's path glob matches that syncd does not pick up, by reason: name (no valid or free source name), "
    "schema (a schema a source may not have), same_file (another name of a file syncd carries); the log and syncd "
    "status name each.",
    ["reason"],
)
NOT_PICKED_UP = ("name", "schema", "same_file")
loop_restarts_total = Counter(
    "syncd_daemon_loop_restarts",
    "Times one of the daemon's loops (discovery, housekeeping, consistency checks, ...) ended on an unexpected "
    "error and was started again; the log names the error.",
    ["loop"],
)


def not_picked_up(problems: list) -> None:
    """syncd_files_not_picked_up from the discovery's problems (discovery.NotPickedUp)."""
    for reason in NOT_PICKED_UP:
        files_not_picked_up.labels(reason).set(sum(1 for p in problems if getattr(p, "reason", "name") == reason))


postgres_connections = Gauge(
    "syncd_postgres_connections", "Connections the daemon holds open to a target database.", ["target"]
)


def connection_gauges(held: dict[str, int]) -> None:
    """The connections held per target database, from {target as shown: count}; the
    series of a target no source uses any more (a reload moved them) go."""
    for target, n in held.items():
        postgres_connections.labels(target).set(n)
    for labels in list(postgres_connections._metrics):  # noqa: SLF001 - prometheus_client has no public listing
        if labels[0] not in held:
            postgres_connections.remove(*labels)


build_info = Gauge("syncd_build_info", "Always 1; the version label says which syncd runs.", ["version"])
build_info.labels(version=__version__).set(1)


# Changes applied per (source, op, direction), every table summed, kept beside the counter:
# the status page samples a fleet's rates every few seconds, and collecting every
# per-table series for that (6,000 at 1,000 two-table files) was half an idle fleet's CPU;
# and [metrics] per_table = false exports it, where a sum of the per-table series would go
# back when a table's series go (dropped), which Prometheus takes for a reset.
applied_by_op: dict[tuple[str, str, str], float] = {}


def count_applied(source: str, table: str, op: str, n: int, direction: str = TO_POSTGRES) -> None:
    changes_applied_total.labels(source, table, op, direction=direction).inc(n)
    applied_by_op[(source, op, direction)] = applied_by_op.get((source, op, direction), 0.0) + n


def forget_source(source: str) -> None:
    """Drop every series of a source removed from the configuration."""
    for key in [k for k in list(applied_by_op) if k[0] == source]:
        applied_by_op.pop(key, None)
    _tables_shown.pop(source, None)
    for metric in (last_check_timestamp_seconds, source_up, retries_total, changelog_bytes, capture_suspended):
        try:
            metric.remove(source)
        except KeyError:
            pass
    for metric in (replication_lag_seconds, pending_changes, last_applied_timestamp_seconds, apply_duration_seconds,
                   commit_to_apply_seconds, changes_applied_total, errors_total, table_halted, table_state,
                   snapshot_rows_loaded, rows, consistency_mismatched_rows, consistency_last_check_timestamp_seconds,
                   repaired_rows_total, foreign_key_orphans):
        for labels in list(metric._metrics):  # noqa: SLF001 - prometheus_client has no public listing
            if labels[0] == source:
                metric.remove(*labels)


def shown_value(gauge: Gauge, *labels: str) -> float | None:
    """What `gauge` shows for `labels`, or None while it has no such series."""
    child = gauge._metrics.get(tuple(str(v) for v in labels))  # noqa: SLF001 - no public read of one series
    return None if child is None else child._value.get()  # noqa: SLF001


def table_gauges(source: str, tables: dict[str, str], states: tuple[str, ...], halted: tuple[str, ...],
                 held: frozenset[str] | set[str] = frozenset()) -> None:
    """Each table's halted flag and state, from {name: state}; the series of a table
    no longer there (dropped, renamed) go, so no alert fires for it for ever. `held`:
    tables halted whatever their state says (one the way back copies again to retry)."""
    for name, state in tables.items():
        table_halted.labels(source, name).set(1 if state in halted or name in held else 0)
        for s in states:
            table_state.labels(source, name, s).set(1 if state == s else 0)
    gone = _tables_shown.get(source, set()) - set(tables)
    _tables_shown[source] = set(tables)
    if not gone:
        return
    for metric in (table_halted, table_state, consistency_mismatched_rows, consistency_last_check_timestamp_seconds,
                   rows, snapshot_rows_loaded, foreign_key_orphans, changes_applied_total, repaired_rows_total):
        for labels in list(metric._metrics):  # noqa: SLF001 - prometheus_client has no public listing
            if labels[0] == source and labels[1] in gone:
                metric.remove(*labels)


_tables_shown: dict[str, set[str]] = {}  # per source, the tables table_gauges showed last


def forget_tables(source: str) -> None:
    """Drop the per-table state and consistency series of a source whose way back has
    ended: nothing streams or compares its tables any more, so no halted, mismatch or
    stale-check alert may fire for them (the counters stay, as history)."""
    _tables_shown[source] = set()
    for metric in (table_halted, table_state, consistency_mismatched_rows, consistency_last_check_timestamp_seconds,
                   rows, snapshot_rows_loaded, foreign_key_orphans):
        for labels in list(metric._metrics):  # noqa: SLF001 - prometheus_client has no public listing
            if labels[0] == source:
                metric.remove(*labels)


# [metrics] per_table = false: what the per-table series said, per source, so the
# halted, mismatch and stale-check alerts still have something to fire on.
ROLLUPS = {
    "syncd_table_halted": ("syncd_source_tables_halted", sum,
                           "Tables of the source held or paused (per_table = false: syncd_table_halted summed)."),
    "syncd_consistency_mismatched_rows": (
        "syncd_source_consistency_mismatched_rows", sum,
        "Rows that differed at the last consistency check, all tables of the source."),
    "syncd_consistency_last_check_timestamp_seconds": (
        "syncd_source_consistency_oldest_check_timestamp_seconds", min,
        "Unix time of the oldest of the source's tables' last completed consistency checks (a streaming table no "
        "check has compared since syncd started: syncd's start, as SyncdVerificationStale counts it per table)."),
    "syncd_table_state": (
        "syncd_source_tables_on_the_way", sum,
        "Tables of the source still being loaded: pending, loading or catching up (per_table = false: "
        "syncd_table_state of those states summed)."),
    "syncd_repaired_rows": (
        "syncd_source_repaired_rows", sum,
        "Rows the consistency check repaired since syncd started, all tables of the source (per_table = false: "
        "syncd_repaired_rows_total summed)."),
}
ON_THE_WAY = ("pending", "loading", "catchup")  # bookkeeping.ON_THE_WAY


def _folded(family, sample) -> bool:
    """Whether a rollup counts `sample`: a counter's total (not its _created time), and of
    the table states those on the way."""
    if sample.name not in (family.name, family.name + "_total"):
        return False
    return family.name != "syncd_table_state" or sample.labels.get("state") in ON_THE_WAY


class _SourceLevel(Collector):
    """The registry's series without those labelled by table: [metrics] per_table = false
    keeps a fleet of thousands of tables from costing Prometheus a series per table. The
    halted flags, mismatches and check times are rolled up per source instead."""

    def collect(self):
        for family in registry.collect():
            if family.name == "syncd_changes_applied":  # kept, all tables of the source summed
                out = CounterMetricFamily(family.name, family.documentation + " All tables of the source "
                                          "(per_table = false).", labels=["source", "op", "direction"])
                # Each source's series from its first scrape, 0 until a change is applied (as per table).
                keys = {(x.labels["source"], x.labels["op"], x.labels["direction"]) for x in family.samples}
                for source, op, direction in sorted(keys | set(list(applied_by_op))):
                    out.add_metric([source, op, direction], applied_by_op.get((source, op, direction), 0.0))
                yield out
                continue
            rollup = ROLLUPS.get(family.name)
            if rollup is not None:
                by_source: dict[str, list[float]] = {}
                for sample in family.samples:
                    if _folded(family, sample):
                        by_source.setdefault(sample.labels.get("source", ""), []).append(sample.value)
                if family.name == "syncd_consistency_last_check_timestamp_seconds":
                    for source in _unchecked_sources():
                        by_source.setdefault(source, []).append(STARTED_AT)
                name, fold, doc = rollup
                out = GaugeMetricFamily(name, doc, labels=["source"])
                for source, values in sorted(by_source.items()):
                    out.add_metric([source], fold(values))
                yield out
            family.samples = [s for s in family.samples if "table" not in s.labels]
            if family.samples or not family.name:
                yield family


def _unchecked_sources() -> set[str]:
    """Sources with a streaming table that has no check time since syncd started."""
    checked = set(list(consistency_last_check_timestamp_seconds._metrics))  # noqa: SLF001 - no public listing
    return {source for (source, table, state), child in list(table_state._metrics.items())  # noqa: SLF001
            if state == "streaming" and child._value.get() == 1 and (source, table) not in checked}  # noqa: SLF001


_source_level_registry = CollectorRegistry(auto_describe=False)
_source_level_registry.register(_SourceLevel())

# Set by the daemon from [metrics] per_table.
PER_TABLE = True
STARTED_AT = time.time()  # set by the daemon as it starts (this module may be imported long before)


def exposition() -> bytes:
    """/metrics: every series, or with [metrics] per_table = false the source-level ones."""
    return generate_latest(registry if PER_TABLE else _source_level_registry)
