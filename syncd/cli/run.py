"""`syncd run`: the daemon, in the foreground (systemd runs it)."""

from __future__ import annotations

import asyncio

from syncd.cli import common
from syncd.daemon import Daemon, StartupError


def register(sub, parent) -> None:
    p = sub.add_parser("run", parents=[parent], help="run the daemon in the foreground until SIGTERM/SIGINT",
                       description="Install capture if needed, snapshot tables not yet loaded, then stream "
                                   "changes until SIGTERM or SIGINT; SIGHUP reloads the configuration.")
    p.set_defaults(func=main)


def main(args) -> int:
    settings = common.load(args)
    common.setup_logging(args, settings)
    daemon = Daemon(settings, settings.config_path,
                    (getattr(args, "log_format", None), getattr(args, "log_level", None)))
    try:
        return asyncio.run(daemon.run())
    except StartupError as e:
        return common.fail(str(e), e.exit_code)
