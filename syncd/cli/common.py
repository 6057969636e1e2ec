"""What every verb shares: loading the configuration, logging, failing with one line."""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from typing import Any

from syncd import log
from syncd.cli import early_signals
from syncd.config import Settings, SourceSettings, load_settings, resolve_config_path, ConfigError
from syncd.printable import escape_controls
from syncd.redact import scrub, scrub_obj


def load(args: argparse.Namespace) -> Settings:
    """Load the configuration named on the command line; raises ConfigError. A file the
    globs match by several names keeps the one syncd registered it under, a gone file's
    source its name."""
    import asyncio

    from syncd.discovery import as_registered
    from syncd.postgres.connect import remember_unanswered

    settings = load_settings(resolve_config_path(getattr(args, "config", None)))
    # A target that does not answer is waited for once in a command, not again for each
    # lookup and each source; the daemon tries again every time.
    remember_unanswered(getattr(args, "command", None) != "run")
    if settings.patterns:
        with early_signals.interruptible():  # `syncd run`: a stop meanwhile ends the wait
            settings = asyncio.run(as_registered(settings))
    return settings


def setup_logging(args: argparse.Namespace, settings: Settings | None) -> None:
    fmt = getattr(args, "log_format", None) or (settings.log.format if settings else "text")
    level = getattr(args, "log_level", None) or (settings.log.level if settings else "info")
    log.setup(fmt, level)


def say(*lines: str, file=None) -> None:
    """Print lines for people: no secret in them, and each argument exactly one line
    (a name holding a line break is shown escaped, it cannot forge a line)."""
    print("\n".join(escape_controls(scrub(line)) for line in lines), file=file or sys.stdout)


def say_json(obj: Any, **dumps_args: Any) -> None:
    """Print a JSON document with every secret scrubbed from its strings."""
    print(scrub(json.dumps(scrub_obj(obj), **dumps_args)))


def stop_like_ctrl_c() -> None:
    """Inside a command's asyncio.run(): SIGTERM (a kill, `timeout`, a cancelled job) and
    SIGHUP (the terminal gone, an SSH session dropped) stop it as Ctrl-C does, by
    cancelling its main task, so that what it started undoes itself before it exits (the
    caller catches asyncio.CancelledError beside KeyboardInterrupt). One while the task is
    being cancelled already (by Ctrl-C or a signal before) leaves the undo alone; SIGHUP
    ignored when the command started (`nohup`) stays ignored."""
    import asyncio
    import signal

    loop, me = asyncio.get_running_loop(), asyncio.current_task()
    assert me is not None

    def stop() -> None:
        if not me.cancelling():
            me.cancel()

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            loop.add_signal_handler(sig, stop)


def fail(message: str, code: int) -> int:
    say(*f"syncd: {message}".split("\n"), file=sys.stderr)  # a ConfigError lists its further problems a line each
    return code


def switch_sources(args: argparse.Namespace) -> tuple[Settings, list[SourceSettings], list[str]]:
    """The settings, logging set up, the sources a switching verb (cutover, rollback,
    rehearse) works on (--source, else all; ConfigError when there are none), and a line
    for each target database where the glob's sources whose file is gone could not be
    looked up (for the verb to say, and fail on). A glob's file syncd ran that is gone is
    one of the sources (refused, naming its file), never left out of a fleet's switch in
    silence."""
    settings = load(args)
    setup_logging(args, settings)
    if not getattr(args, "dry_run", False):
        # A switch that lost Postgres tries it again to settle what it froze: every
        # connection of its waits for an answer, the gone files' lookup first (a login
        # that timed out in the glob's lookup would leave them out of a switch that then
        # reached Postgres).
        from syncd.postgres.connect import remember_unanswered

        remember_unanswered(False)
    unknown: list[str] = []
    settings = with_gone_sources(settings, unknown, args.source)
    try:
        sources = selected_sources(settings, args.source)
    except ConfigError:
        if not unknown:
            raise
        sources = []  # the source named may be one whose file is gone: the lookup's failure is said instead
    if not sources and not unknown:
        raise ConfigError(settings.no_sources())
    return settings, sources, unknown


def switch_summary(results: list, verb: str, done_word: str, dry_run: bool, already_word: str = "") -> str:
    """The last line of `syncd cutover` or `syncd rollback` over several sources: how many
    switched (or had already), how many did not, each said above. `already_word`: what a
    source with nothing to do is ("{done_word} already" unless said: a rollback's may never
    have been cut over)."""
    if dry_run:
        ready = sum(1 for r in results if r.ok and not r.already)
        already = sum(1 for r in results if r.ok and r.already)
        return (f"syncd {verb}: dry run: {ready} of {len(results)} source(s) ready, "
                + (f"{already} {already_word or done_word + ' already'}, " if already else "")
                + f"{len(results) - ready - already} not")
    done = sum(1 for r in results if r.done or r.already)
    return (f"syncd {verb}: {done} of {len(results)} source(s) {done_word} (or {already_word or 'already'}), "
            f"{len(results) - done} not: see each above")


def said_no_sources(settings: Settings, sources: list[SourceSettings]) -> int | None:
    """With no source to work on, say why (a glob matching no file, no [[sources]]) and
    return the exit code: 0 for globs that match nothing yet (a fleet's files may come
    later), 1 for a configuration without sources; None when there are sources."""
    if sources:
        return None
    say(f"syncd: {settings.no_sources()}")
    return 0 if settings.patterns else 1


def selected_sources(settings: Settings, name: str | list[str] | None) -> list[SourceSettings]:
    """The sources named (each a name or a glob such as "tenant_*"), in configuration
    order; every source without any. A name or glob matching none is a ConfigError."""
    if name is None:
        return list(settings.sources)
    patterns = [name] if isinstance(name, str) else list(name)
    chosen = []
    for pattern in patterns:
        hits = [s for s in settings.sources if fnmatch.fnmatchcase(s.name, pattern)]
        if not hits:
            raise ConfigError(f"no source named {pattern!r} in the configuration")
        chosen += [s for s in hits if s not in chosen]
    return [s for s in settings.sources if s in chosen]


def with_gone_sources(settings: Settings, unknown: list[str] | None = None,
                      selected: str | list[str] | None = None) -> Settings:
    """`settings` with the glob sources syncd ran whose file is gone now added back
    (discovery.gone_sources; those `selected` names only), for a command that must not
    leave them out in silence: a target database where they could not be looked up adds a
    line saying so to `unknown`."""
    import asyncio

    from syncd.discovery import gone_sources

    found = asyncio.run(gone_sources(settings, selected, [] if unknown is None else unknown))
    return settings.model_copy(update={"sources": [*settings.sources, *found]})


def add_source_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", metavar="NAME", action="append",
                   help="only this source (repeatable; globs such as 'tenant_*' allowed; default: all)")


__all__ = ["ConfigError", "add_source_option", "fail", "load", "say", "say_json", "selected_sources",
           "setup_logging", "with_gone_sources"]
