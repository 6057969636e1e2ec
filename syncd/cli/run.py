"""`syncd run`: the daemon, in the foreground (systemd runs it)."""

from __future__ import annotations

import asyncio
import logging

from syncd.cli import common, early_signals
from syncd.daemon import Daemon, StartupError


def register(sub, parent) -> None:
    p = sub.add_parser("run", parents=[parent], help="run the daemon in the foreground until SIGTERM/SIGINT",
                       description="Install capture if needed, snapshot tables not yet loaded, then stream "
                                   "changes until SIGTERM or SIGINT; SIGHUP reloads the configuration.")
    p.set_defaults(func=main)


def main(args) -> int:
    try:
        settings = common.load(args)
    except early_signals.Stopped:  # SIGTERM or SIGINT while the configuration waited on Postgres
        common.setup_logging(args, None)
        logging.getLogger("syncd").info("stop requested before the daemon started: syncd stopped",
                                        extra={"event": "stopped"})
        return 0
    common.setup_logging(args, settings)
    daemon = Daemon(settings, settings.config_path,
                    (getattr(args, "log_format", None), getattr(args, "log_level", None)))
    try:
        return asyncio.run(daemon.run())
    except StartupError as e:
        return common.fail(str(e), e.exit_code)
