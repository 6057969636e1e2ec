"""`syncd report`: the migration status document, from measured state.

    facts = await gather(settings)        # measure both sides now, read the history
    items = evaluate(facts)               # the cutover checklist, judged (pure)
    markdown(facts, items) / as_json(facts, items)

Modules: facts (measuring), backups (the backup evidence), checklist (judging),
render (Markdown and JSON).
"""

from syncd.report.checklist import CheckItem, evaluate, ready
from syncd.report.facts import MigrationFacts, ReportError, gather
from syncd.report.render import as_json, markdown

__all__ = ["CheckItem", "MigrationFacts", "ReportError", "as_json", "evaluate", "gather", "markdown", "ready"]
