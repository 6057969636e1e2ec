"""What every verb shares: loading the configuration, logging, failing with one line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from syncd import log
from syncd.config import Settings, SourceSettings, load_settings, resolve_config_path, ConfigError
from syncd.printable import escape_controls
from syncd.redact import scrub, scrub_obj


def load(args: argparse.Namespace) -> Settings:
    """Load the configuration named on the command line; raises ConfigError."""
    return load_settings(resolve_config_path(getattr(args, "config", None)))


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


def fail(message: str, code: int) -> int:
    say(f"syncd: {message}", file=sys.stderr)
    return code


def selected_sources(settings: Settings, name: str | None) -> list[SourceSettings]:
    if name is None:
        return list(settings.sources)
    return [settings.source(name)]


def add_source_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", metavar="NAME", help="only this source (default: all)")


__all__ = ["ConfigError", "add_source_option", "fail", "load", "say", "say_json", "selected_sources",
           "setup_logging"]
