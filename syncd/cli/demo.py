"""`syncd demo`: the first five minutes in one command. Makes demo copies of the Synapse
SQLite files, uses $SYNCD_POSTGRES__DSN or a local PostgreSQL server (else starts a
private throwaway cluster), runs the daemon with a small application writing to the
files, and prints the status page's address. Ctrl-C (or SIGTERM) stops everything and
removes what the demo made."""

from __future__ import annotations

import asyncio
import signal

from syncd import log
from syncd.cli import common
from syncd.demo.runner import Demo, ServerError, StartupError
from syncd.demo.server import DEFAULT_DSN


def register(sub, parent) -> None:
    p = sub.add_parser("demo", parents=[parent], help="try syncd on demo copies of the Synapse databases",
                       description="Make demo copies of the Synapse SQLite files in a temporary directory, "
                                   "replicate them into synapse_core, synapse_business and synapse_analytics "
                                   "on a PostgreSQL server ($SYNCD_POSTGRES__DSN, else the local server, else a "
                                   "private throwaway cluster started from the installed PostgreSQL binaries), "
                                   "with an application writing to them, and serve the live status page. "
                                   "Ctrl-C stops everything and removes what the demo made. Ignores --config.")
    p.add_argument("--listen", default="127.0.0.1:9464", metavar="HOST:PORT",
                   help="where the status page listens (default 127.0.0.1:9464; a free port if that is taken)")
    p.add_argument("--local-server", default=DEFAULT_DSN, metavar="URL",
                   help=f"the server to use when $SYNCD_POSTGRES__DSN is not set (default {DEFAULT_DSN}); "
                        "if it does not answer, a private cluster is started")
    p.add_argument("--writes-per-second", type=float, default=3.0, metavar="N",
                   help="the demo application's write transactions per second (default 3)")
    p.set_defaults(func=main)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(args) -> int:
    # A stop request while setting up must still clean up: SIGTERM interrupts like Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    log.setup(getattr(args, "log_format", None) or "text", getattr(args, "log_level", None) or "warning")
    demo = Demo(args.listen, args.local_server, args.writes_per_second,
                say=lambda text: print(f"syncd demo: {text}", flush=True))
    try:
        demo.setup()
        return asyncio.run(demo.run())
    except (ServerError, StartupError) as e:
        return common.fail(str(e), 2 if isinstance(e, ServerError) else e.exit_code)
    except KeyboardInterrupt:
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # cleaning up is short and must finish
        demo.cleanup()
