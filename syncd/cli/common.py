"""What every verb shares: loading the configuration, logging, failing with one line."""

from __future__ import annotations

import argparse
import sys

from syncd import log
from syncd.config import Settings, SourceSettings, load_settings, resolve_config_path, ConfigError


def load(args: argparse.Namespace) -> Settings:
    """Load the configuration named on the command line; raises ConfigError."""
    return load_settings(resolve_config_path(getattr(args, "config", None)))


def setup_logging(args: argparse.Namespace, settings: Settings | None) -> None:
    fmt = getattr(args, "log_format", None) or (settings.log.format if settings else "text")
    level = getattr(args, "log_level", None) or (settings.log.level if settings else "info")
    log.setup(fmt, level)


def fail(message: str, code: int) -> int:
    print(f"syncd: {message}", file=sys.stderr)
    return code


def selected_sources(settings: Settings, name: str | None) -> list[SourceSettings]:
    if name is None:
        return list(settings.sources)
    return [settings.source(name)]


def add_source_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", metavar="NAME", help="only this source (default: all)")


__all__ = ["ConfigError", "add_source_option", "fail", "load", "selected_sources", "setup_logging"]
