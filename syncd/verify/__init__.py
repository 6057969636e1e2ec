"""Consistency checking and repair between each SQLite file and its Postgres replica.

    result = await verify_source(settings, source)   # SourceVerifyResult, recorded in syncd.verify_runs
    publish_metrics(result)                           # syncd_rows, syncd_consistency_*

Modules, in the order data flows: keyspace (which rows a key range selects on each
side), rowhash (the row hash both sides compute), sqlite_side / postgres_side (the
reads), table (finding and deciding differences for one table), repair (replaying
keys through the stream), source (one source, all tables), history (verify_runs),
publish (metrics), result (what was found).
"""

from syncd.verify.publish import publish_metrics
from syncd.verify.result import Difference, SourceVerifyResult, TableVerifyResult, exit_code
from syncd.verify.source import DEFAULT_WAIT_SECONDS, verify_source

__all__ = [
    "DEFAULT_WAIT_SECONDS",
    "Difference",
    "SourceVerifyResult",
    "TableVerifyResult",
    "exit_code",
    "publish_metrics",
    "verify_source",
]
