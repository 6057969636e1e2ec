"""`syncd report`: the migration status document, every figure measured now or
recorded by syncd as it happened, with the cutover checklist judged on evidence.
Exit 0 ready for cutover, 1 not ready (the document says what is not done), 2 error."""

from __future__ import annotations

import asyncio

from syncd.cli import common
from syncd.postgres.connect import PostgresUnavailable, describe
from syncd.redact import scrub
from syncd.report import as_json, evaluate, gather, markdown, ready


def register(sub, parent) -> None:
    p = sub.add_parser(
        "report", parents=[parent], help="write the migration status document (exit 0 ready, 1 not ready)",
        description="Measure every source and table now (row counts on both sides, capture, lag), read the "
                    "verification history, and judge the cutover checklist on that evidence. Says plainly "
                    "what is not done.",
    )
    p.add_argument("--format", choices=["markdown", "json"], default="markdown", help="output format")
    p.set_defaults(func=main)


def main(args) -> int:
    settings = common.load(args)
    common.setup_logging(args, settings)
    try:
        facts = asyncio.run(gather(settings))
    except PostgresUnavailable as e:
        return common.fail(str(e), 2)
    except OSError as e:
        return common.fail(f"Postgres: {describe(e)}", 2)
    items = evaluate(facts)
    if args.format == "json":
        common.say_json(as_json(facts, items), indent=2, ensure_ascii=False, default=str)
    else:
        print(scrub(markdown(facts, items)))
    return 0 if ready(items) else 1
