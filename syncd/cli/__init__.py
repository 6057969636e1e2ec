"""`syncd [--config FILE] COMMAND`: one module per verb; a verb parses, loads the
configuration, calls the core and prints. No replication logic lives here."""

from __future__ import annotations

import argparse
import os
import sys

from syncd.cli import early_signals


def build_parser() -> argparse.ArgumentParser:
    from syncd import __version__
    from syncd.cli import cutover, demo, init, report, resync, rollback, run, schema, status, uninstall, verify

    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="configuration file (default: $SYNCD_CONFIG, else ./syncd.toml)")
    shared.add_argument("--log-format", choices=["text", "json"], default=argparse.SUPPRESS,
                        help="log line format (default: [log] format, else text)")
    shared.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="syncd",
        parents=[shared],
        description="Stream every change in SQLite files into a live, verified PostgreSQL replica.",
    )
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for verb in (demo, init, run, status, verify, report, schema, resync, cutover, rollback, uninstall):
        verb.register(sub, shared)
    return parser


def main(argv: list[str] | None = None) -> int:
    if "run" in (sys.argv[1:] if argv is None else argv):
        early_signals.install()  # before the heavy imports below
    from syncd.cli import common
    from syncd.config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        return common.fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `syncd report | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception:  # a bug: show the traceback, but never a secret it may quote
        import traceback

        from syncd.redact import scrub

        print(scrub(traceback.format_exc()), file=sys.stderr, end="")
        return 1
