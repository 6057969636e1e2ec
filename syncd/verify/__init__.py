"""Consistency checking and repair between each SQLite file and its Postgres replica.

    result = await verify_source(settings, source)   # SourceVerifyResult, recorded in syncd.verify_runs
    publish_metrics(result)                           # syncd_rows, syncd_consistency_*

Modules, in the order data flows: keyspace (which rows a key range selects on each
side), rowhash (the row hash both sides compute), sqlite_side / postgres_side (the
reads), table (finding and deciding differences for one table), repair (replaying
keys through the stream), source (one source, all tables), history (verify_runs),
publish (metrics), result (what was found).
"""

import importlib

# Each name imported from its module at first use: `syncd status` reads the history
# (verify.history) but runs no check, and importing the checker (and the way back's
# readers it uses) cost every status a tenth of its time.
_FROM = {"publish_metrics": "publish", "Difference": "result", "SourceVerifyResult": "result",
         "TableVerifyResult": "result", "exit_code": "result", "DEFAULT_WAIT_SECONDS": "source",
         "verify_source": "source"}


def __getattr__(name: str):
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_FROM[name]}"), name)


__all__ = [
    "DEFAULT_WAIT_SECONDS",
    "Difference",
    "SourceVerifyResult",
    "TableVerifyResult",
    "exit_code",
    "publish_metrics",
    "verify_source",
]
