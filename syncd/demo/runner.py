"""One `syncd demo` session: make the demo world in a temporary directory, find or
start a PostgreSQL server, run the daemon with a small application writing to the
files, and remove everything it made when it stops."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from syncd.config import load_settings
from syncd.daemon import Daemon, StartupError
from syncd.demo.app import DemoApplication
from syncd.demo.data import BACKUPS, SOURCES, TARGET_DATABASES, make_files
from syncd.demo.server import (Cluster, ServerError, answers, create_databases, drop_databases, free_port,
                               with_database, without_password)
from syncd.redact import register_dsn, scrub

VERIFY_INTERVAL_SECONDS = 20.0  # checks often, so the page's verification history fills while you watch
ENV_DSN = "SYNCD_POSTGRES__DSN"
ENV_PASSWORD = "SYNCD_POSTGRES__PASSWORD"


def listen_address(wanted: str) -> str:
    """`wanted` if nothing listens there yet, else the same host on a free port."""
    host, _, port = wanted.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    with socket.socket() as s:
        try:
            s.bind((host, int(port)))
            return f"{host}:{port}"
        except OSError:
            pass
    return f"{host}:{free_port()}"


def demo_config(dsns: dict[str, str], listen: str) -> str:
    """The demo's syncd.toml: the ten sources, each landing in its target database."""
    q = json.dumps  # a JSON string is a valid TOML basic string
    lines = ["# Written by `syncd demo` for this session; removed when it stops.", "",
             "[postgres]", f"dsn = {q(dsns[TARGET_DATABASES[0]])}", "",
             "[metrics]", f"listen = {q(listen)}", "",
             "[verify]", f"interval_seconds = {VERIFY_INTERVAL_SECONDS}", "",
             "[cutover]", f"backup_glob = {q(BACKUPS + '/{source}-*.db')}", ""]
    for s in SOURCES:
        lines += ["[[sources]]", f"name = {q(s.name)}", f"path = {q(s.filename)}", f"dsn = {q(dsns[s.database])}"]
        for table, cols in s.columns.items():
            lines.append(f"[sources.columns.{q(table)}]")
            lines += [f"{q(col)} = {q(kind)}" for col, kind in cols.items()]
        lines.append("")
    return "\n".join(lines)


class Demo:
    def __init__(self, listen: str, local_server: str, writes_per_second: float,
                 say: Callable[[str], None] = print):
        self.listen = listen
        self.local_server = local_server
        self.writes_per_second = writes_per_second
        self.say = say
        self.directory: Path | None = None
        self.cluster: Cluster | None = None
        self.admin_dsn: str | None = None
        self.password: str | None = None
        self.created: list[str] = []  # databases made on a server the demo does not own
        self.config: Path | None = None

    # --- setting up ------------------------------------------------------------------

    def setup(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="syncd-demo-"))
        make_files(self.directory)
        self.say(f"demo files: {len(SOURCES)} SQLite files and a {BACKUPS}/ folder in {self.directory}")
        self._server()
        dsns = {db: with_database(self.admin_dsn, db) for db in TARGET_DATABASES}
        listen = listen_address(self.listen)
        self.config = self.directory / "syncd.toml"
        self.config.write_text(demo_config(dsns, listen))

    def _server(self) -> None:
        given = os.environ.get(ENV_DSN)
        # The demo's configuration is the whole truth for the daemon it runs: no other
        # SYNCD_* setting from this shell applies (the password is passed on below).
        for key in [k for k in os.environ if k.startswith("SYNCD_") and k != ENV_PASSWORD]:
            del os.environ[key]
        if given:
            register_dsn(given)  # whatever quotes it from here on shows *** for its password
            dsn, how = given, f"the server {ENV_DSN} names"
            if not answers(without_password(dsn)[0]):
                raise ServerError(f"{ENV_DSN} ({scrub(dsn)}) does not answer")
        elif answers(self.local_server):
            dsn, how = self.local_server, "the local server"
        else:
            self.say(f"no PostgreSQL answers at {scrub(self.local_server)}: starting a private throwaway "
                     "cluster")
            self.cluster = Cluster.create()
            self.cluster.start()
            dsn, how = self.cluster.dsn, f"a private cluster in {self.cluster.base}"
        self.admin_dsn, self.password = without_password(dsn)
        if self.password is not None:
            os.environ[ENV_PASSWORD] = self.password
        self.password = self.password or os.environ.get(ENV_PASSWORD)
        made = asyncio.run(create_databases(self.admin_dsn, TARGET_DATABASES, existing="refuse",
                                            password=self.password))
        if self.cluster is None:
            self.created = made
        self.say(f"PostgreSQL: {how} at {scrub(self.admin_dsn)}; databases {', '.join(TARGET_DATABASES)}")

    # --- running ---------------------------------------------------------------------

    async def run(self) -> int:
        settings = load_settings(self.config)
        daemon = Daemon(settings, settings.config_path)
        task = asyncio.create_task(daemon.run())
        while daemon.endpoint is None and not task.done():
            await asyncio.sleep(0.05)
        if task.done():
            return task.result()  # a StartupError says why
        app = DemoApplication(self.directory, self.writes_per_second)
        app.start()
        await daemon.page.measure()  # someone opens the page right away: have a measurement ready
        host, port = settings.metrics.address[0], daemon.endpoint.port
        self.say(f"status page: http://{host}:{port}/")
        self.say("an application writes to the files now; Ctrl-C stops everything and removes what the demo made")
        try:
            return await task
        finally:
            await asyncio.to_thread(app.stop)

    # --- cleaning up -----------------------------------------------------------------

    def cleanup(self) -> None:
        """Remove whatever setup made, in reverse order; safe after a partial setup."""
        if self.created:
            try:
                asyncio.run(drop_databases(self.admin_dsn, self.created, password=self.password))
                self.say(f"dropped databases {', '.join(self.created)}")
            except Exception as e:  # noqa: BLE001 - say what is left behind, then go on cleaning
                self.say(f"could not drop databases {', '.join(self.created)}: {scrub(str(e))}")
        if self.cluster is not None:
            self.cluster.destroy()
            self.say(f"stopped and removed the private cluster in {self.cluster.base}")
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.say(f"removed {self.directory}")


__all__ = ["Demo", "ServerError", "StartupError"]
