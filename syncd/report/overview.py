"""Everything the status page shows, measured at one moment: the report's facts and
cutover checklist (the same gather and evaluate as `syncd report`) and each source's
health (the same gather and evaluate as `syncd status`). The page and the report judge
from one source of truth, so they cannot disagree."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field

from syncd import status as health
from syncd.config import Settings, SourceSettings
from syncd.postgres.connect import PostgresUnavailable, describe
from syncd.report.checklist import CheckItem, evaluate
from syncd.report.facts import REPORT_CONNECTIONS, MigrationFacts, SourceNotMeasured, gather



@dataclass
class Overview:
    measured_at: dt.datetime
    facts: MigrationFacts | None  # None: could not be measured (facts_error says why)
    items: list[CheckItem]
    verdict: int  # `syncd status`'s: OK, WARNING, CRITICAL, UNKNOWN
    statuses: list[health.SourceStatus]
    facts_error: str | None = None
    config_path: str | None = None
    sources: list[str] = field(default_factory=list)  # configured source names, in order


async def gather_overview(settings: Settings, live: dict | None = None, row_keys: bool = True,
                          peers: list[SourceSettings] | None = None) -> Overview:
    """Measure now. `live` is the daemon's own /status document (the daemon passes it);
    None asks the daemon's endpoint, as `syncd status` and `syncd report` do. Without
    `row_keys` (the served page) no row's key appears, as in `syncd status`. `peers`: as
    for report.facts.gather."""
    now = dt.datetime.now(dt.timezone.utc)
    in_daemon = live is not None
    if live is None:
        live = await asyncio.to_thread(health.endpoint_status, settings)
    statuses = asyncio.ensure_future(health.gather_statuses(settings, list(settings.sources), live))
    facts, items, error = None, [], None
    try:
        # The daemon's page measures one source at a time, on one connection per target
        # database, its timings kept for summary.CACHE_SECONDS; `syncd report` several at once.
        facts = await gather(settings, live=(live or {}).get("sources", {}), upgrade_bookkeeping=not in_daemon,
                             connections=1 if in_daemon else REPORT_CONNECTIONS, peers=peers)
        if not row_keys:
            for s in facts.sources:
                for o in (s.parity.orphans if s.parity is not None else []):
                    o.sample_keys = []
        items = evaluate(facts)
    except (PostgresUnavailable, SourceNotMeasured) as e:
        error = str(e)
    except Exception as e:  # noqa: BLE001 - the page shows what it could not measure, and why
        error = f"Postgres: {describe(e)}"
    done = await statuses
    verdict = health.OK
    for st in done:
        verdict = health.worse(verdict, health.evaluate(st, settings.status))
    return Overview(measured_at=now, facts=facts, items=items, verdict=verdict, statuses=list(done),
                    facts_error=error, config_path=str(settings.config_path) if settings.config_path else None,
                    sources=[s.name for s in settings.sources])
