"""`syncd report`: the migration status document, from measured state.

    facts = await gather(settings)        # measure both sides now, read the history
    items = evaluate(facts)               # the cutover checklist, judged (pure)
    markdown(facts, items) / as_json(facts, items)

Modules: facts (measuring), backups (the backup evidence), checklist (judging),
render (Markdown and JSON).
"""

import importlib

# Each name imported from its module at first use: `syncd status` needs only backups'
# FUTURE_SECONDS, not the checklist and the measuring (the SQL translator among them).
_FROM = {"CheckItem": "checklist", "evaluate": "checklist", "ready": "checklist", "MigrationFacts": "facts",
         "ReportError": "facts", "gather": "facts", "as_json": "render", "markdown": "render"}


def __getattr__(name: str):
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_FROM[name]}"), name)


__all__ = ["CheckItem", "MigrationFacts", "ReportError", "as_json", "evaluate", "gather", "markdown", "ready"]
