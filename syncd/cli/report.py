"""`syncd report`: the migration status document, every figure measured now or
recorded by syncd as it happened, with the cutover checklist judged on evidence.
Exit 0 ready for cutover, 1 not ready (the document says what is not done), 2 error."""

from __future__ import annotations

import asyncio

from syncd.cli import common
from syncd.endpoint_client import fetch_json
from syncd.config import Settings, SourceSettings
from syncd.page.history import HistoryView
from syncd.postgres.connect import PostgresUnavailable, describe, postgres_lost
from syncd.redact import scrub
from syncd.report import as_json, evaluate, gather, markdown, ready
from syncd.report.facts import SourceNotMeasured
from syncd.report.html import page
from syncd.report.overview import gather_overview

HISTORY_TIMEOUT_SECONDS = 2.0


def register(sub, parent) -> None:
    p = sub.add_parser(
        "report", parents=[parent], help="write the migration status document (exit 0 ready, 1 not ready)",
        description="Measure every source and table now (row counts on both sides, capture, lag), read the "
                    "verification history, and judge the cutover checklist on that evidence. Says plainly "
                    "what is not done. --format html writes the daemon's status page as one self-contained "
                    "file (with the last hour's lag and apply-rate charts when the daemon answers).",
    )
    p.add_argument("--format", choices=["markdown", "json", "html"], default="markdown",
                   help="output format (default: markdown)")
    common.add_source_option(p)
    p.set_defaults(func=main)


def main(args) -> int:
    settings = common.load(args)
    common.setup_logging(args, settings)
    unknown: list[str] = []
    settings = common.with_gone_sources(settings, unknown, args.source)  # judged (missing), never left out in silence
    if unknown:
        # No report without them: the sources of the globs' files that are gone are known
        # from Postgres alone, and it could not be asked (a report without them could say READY).
        return common.fail("\n".join(unknown), 2)
    peers = settings.sources  # a backup is told apart by every source configured, not only those reported on
    if args.source:
        chosen = common.selected_sources(settings, args.source)
        # Files not picked up are the fleet's, as `syncd cutover --source` leaves them; another name
        # (a hard link) of a file reported on stays its own.
        settings = settings.model_copy(update={"sources": chosen, "discovery_problems": settings.problems_of(chosen)})
    if args.format == "html":
        return _html(settings, peers)
    try:
        facts = asyncio.run(gather(settings, peers=peers))
    except (PostgresUnavailable, SourceNotMeasured) as e:
        return common.fail(str(e), 2)
    except OSError as e:
        return common.fail(f"Postgres: {describe(e)}", 2)
    except Exception as e:  # the connection lost, or a statement unanswered: no report, not "not ready"
        lost = postgres_lost(e)
        if lost is None:
            raise
        return common.fail(lost, 2)
    items = evaluate(facts)
    if args.format == "json":
        common.say_json(as_json(facts, items), indent=2, ensure_ascii=False, default=str)
    else:
        print(scrub(markdown(facts, items)))
    return 0 if ready(items) else 1


def _html(settings: Settings, peers: list[SourceSettings]) -> int:
    ov = asyncio.run(gather_overview(settings, peers=peers))
    if ov.facts is None:
        return common.fail(ov.facts_error or "the facts could not be measured", 2)
    print(page(ov, _daemon_history(settings), live=False), end="")
    return 0 if ready(ov.items) else 1


def _daemon_history(settings: Settings) -> HistoryView | None:
    """The running daemon's in-memory lag and apply-rate history, if it answers."""
    data = fetch_json(settings.metrics, "/history", HISTORY_TIMEOUT_SECONDS)
    try:
        return None if data is None else HistoryView.from_json(data)
    except (ValueError, KeyError, TypeError):
        return None
