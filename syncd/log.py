"""Logging: one line per event, human-readable or JSON, never a password."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

from syncd.printable import escape_controls
from syncd.redact import scrub

_CONTEXT_FIELDS = ("source", "table", "event")


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        ctx = " ".join(
            f"{k}={_fmt(getattr(record, k))}" for k in _CONTEXT_FIELDS if getattr(record, k, None) is not None
        )
        # One event, one line: a name or message holding a line break is escaped, so
        # it cannot forge a line of its own.
        msg = escape_controls(scrub(record.getMessage()))
        line = f"{ts} {record.levelname:<7} {ctx + ': ' if ctx else ''}{msg}"
        if record.exc_info:
            # The traceback keeps its lines, each indented: none can pass for a log line.
            trace = scrub(self.formatException(record.exc_info))
            line += "".join("\n    " + escape_controls(t) for t in trace.splitlines())
        return line


def _fmt(v: object) -> str:
    s = scrub(str(v))
    if not s or any(c in s for c in ' "=') or escape_controls(s) != s:
        return escape_controls(json.dumps(s, ensure_ascii=False))
    return s


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for k in _CONTEXT_FIELDS:
            v = getattr(record, k, None)
            if v is not None:
                out[k] = scrub(v) if isinstance(v, str) else v
        if record.exc_info:
            out["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


def setup(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("watchdog", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def ctx(source: str | None = None, table: str | None = None, event: str | None = None) -> dict:
    """`extra=` for a log call: log.info("...", extra=ctx(source=..., table=...))."""
    return {"source": source, "table": table, "event": event}


ASYNCPG_CANCELLED_CONNECT = "unexpected connection_lost() call"


def loop_exception_handler(loop, context: dict) -> None:
    """asyncio's reports of errors nobody awaited, as one line in syncd's log.

    One of them is asyncpg's: a connect cancelled (by a timeout or by shutdown) just
    as its socket opened leaves the TLS probe's future to fail alone with exactly
    this ConnectionError. The connect itself was already handled, so that one is
    logged at debug level; anything else is an error, with its traceback."""
    exc = context.get("exception")
    message = context.get("message", "unhandled error in the event loop")
    if (context.get("future") is not None and "never retrieved" in message
            and type(exc) is ConnectionError and str(exc) == ASYNCPG_CANCELLED_CONNECT):
        logging.getLogger("syncd").debug(f"{message}: {exc!r}", extra={"event": "asyncio"})
        return
    trace = (type(exc), exc, exc.__traceback__) if exc is not None else None
    logging.getLogger("syncd").error(f"{message}: {exc!r}" if exc else message,
                                     exc_info=trace, extra={"event": "asyncio"})
