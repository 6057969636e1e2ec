"""`syncd [--config FILE] COMMAND`: one module per verb; a verb parses, loads the
configuration, calls the core and prints. No replication logic lives here."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import threading
from typing import NoReturn

from syncd.cli import early_signals


VERBS = ("demo", "init", "run", "status", "verify", "report", "schema", "resync", "cutover", "rollback", "rehearse",
         "uninstall")
_VALUED_OPTIONS = ("--config", "--log-format", "--log-level")
# The SQLite syncd needs of Python's sqlite3 module: PRAGMA table_list (3.37), which an
# older SQLite ignores without an error (no table would be seen, none carried), and the
# capture's RETURNING (3.35).
MIN_SQLITE = (3, 37, 0)
# Verbs that, once main() returned 0, have closed every connection (SQLite's and
# Postgres's) and left no thread with work: Python's own teardown, 60-90 ms of freeing
# objects one by one, then does nothing a user needs, and entry() skips it. A daemon
# stopped cleanly (every pipeline closed its session, the pools closed) spent most of
# its stop there, its larger heap collected in full: every systemctl stop or restart.
QUICK_EXIT_VERBS = ("init", "run")
# Verbs whose every exit code is an answer (problems to report, tables that differ, a
# switch refused or undone, a step left to the operator): out at once whatever the code,
# once every SQLite connection is closed too. The teardown was a sixth of every `syncd
# status` and `syncd verify`. Not demo nor rehearse: they run servers and daemons of their own.
QUICK_EXIT_AT_ANY_CODE = ("status", "verify", "cutover", "rollback", "report", "schema", "resync", "uninstall")


def invoked_verb(argv: list[str]) -> str | None:
    """The verb on the command line, if any: only its module is then imported (each
    verb's imports cost up to 0.2 s of every command's start otherwise)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUED_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg if arg in VERBS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    import importlib

    from syncd import __version__

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
    for name in (only,) if only else VERBS:
        importlib.import_module(f"syncd.cli.{name}").register(sub, shared)
    return parser


# syncd holds tens of thousands of fresh row tuples at a time (a batch, a snapshot
# chunk); at the default threshold (700) the cyclic collector runs every few hundred
# of them and rescans the survivors, which halved the snapshot's rate
# (bench/initial_load.py). A load keeps up to three chunks alive at once (the one
# being sent, the one read ahead, the one being read: 150,000 rows at the default
# [stream] snapshot_chunk_rows); at 50,000 the collector still ran a few times a
# million-row load, each time walking every row alive (15-25 ms each, 4% of the
# daemon's CPU until the rows were in). Row tuples form no cycles; the few that
# syncd's own objects make are still collected, just less often.
GC_THRESHOLDS = (200_000, 20, 20)


def sqlite_version_info() -> tuple[int, ...]:
    import sqlite3

    return sqlite3.sqlite_version_info


def sqlite_too_old(version: tuple[int, ...]) -> str | None:
    """The line syncd ends with where Python's sqlite3 module runs an SQLite older than
    MIN_SQLITE, else None."""
    if tuple(version) >= MIN_SQLITE:
        return None
    have, need = ".".join(map(str, version)), ".".join(map(str, MIN_SQLITE))
    return (f"Python's sqlite3 module here runs SQLite {have}; syncd needs SQLite {need} or newer (an older one "
            "lists no tables to syncd); use a Python built with a newer SQLite")


def main(argv: list[str] | None = None) -> int:
    gc.set_threshold(*GC_THRESHOLDS)
    args_in = sys.argv[1:] if argv is None else argv
    verb = invoked_verb(args_in)
    if verb == "run":  # the verb, not a source or file named so (`syncd cutover --source run`)
        early_signals.install()  # before the heavy imports below
    if verb is None and "--version" in args_in:  # without loading the configuration or any verb
        from syncd import __version__

        print(f"syncd {__version__}")
        return 0
    from syncd.cli import common
    from syncd.config import ConfigError

    too_old = sqlite_too_old(sqlite_version_info())
    if too_old is not None:
        return common.fail(too_old, 2)
    parser = build_parser(verb)
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
    except Exception as e:  # a bug: show the traceback, but never a secret it may quote
        from syncd.postgres.connect import postgres_lost, privilege_refused, read_only_refused

        # Not a bug: a grant the operator has to give, a database that takes no writes, or
        # Postgres not answering in time or gone, said in one line.
        refused = privilege_refused(e) or read_only_refused(e) or postgres_lost(e)
        if refused is not None:
            return common.fail(refused, 1)
        import traceback

        from syncd.redact import scrub

        print(scrub(traceback.format_exc()), file=sys.stderr, end="")
        return 1


def entry() -> NoReturn:
    """The `syncd` command (and `python -m syncd`): main(), then, after a verb of
    QUICK_EXIT_VERBS that succeeded or one of QUICK_EXIT_AT_ANY_CODE, out at once, its
    output and logs flushed."""
    code = main()
    verb = invoked_verb(sys.argv[1:])
    quick = ((code == 0 and verb in QUICK_EXIT_VERBS)
             or (verb in QUICK_EXIT_AT_ANY_CODE and _no_sqlite_connection_open()))
    if quick and _no_thread_to_wait_for():
        logging.shutdown()
        try:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:  # None: started with that descriptor closed
                    stream.flush()
        except (OSError, ValueError):  # a closed pipe: Python's own exit reports it as it always did
            raise SystemExit(code) from None
        os._exit(code)
    raise SystemExit(code)


def _no_thread_to_wait_for() -> bool:
    """Only daemon threads are left (the SQLite threads, idle): Python's exit would not
    wait for any of them either."""
    return all(t.daemon for t in threading.enumerate() if t is not threading.main_thread())


def _no_sqlite_connection_open() -> bool:
    """Every SQLite connection closed: a connection's close in Python's teardown is the
    one thing there a file needs (the last close folds the WAL back into it and removes
    it), so a connection left open keeps the teardown."""
    import sqlite3

    for obj in gc.get_objects():
        if isinstance(obj, sqlite3.Connection):
            try:
                obj.total_changes
            except sqlite3.ProgrammingError:  # closed
                continue
            return False
    return True
