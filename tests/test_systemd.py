"""systemd integration: the unit verifies cleanly, and the daemon speaks the notify
protocol (READY, STATUS, WATCHDOG, STOPPING) at the right moments."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.conftest import write_config
from tests.support.app import create_items
from tests.support.daemon import ROOT, DaemonProcess, wait_for
from tests.support.proxy import FaultProxy
from tests.support.sync import bookkeeping, eventually, wait_caught_up

UNIT = ROOT / "systemd" / "syncd.service"


def test_unit_verifies_without_any_warning(tmp_path):
    assert shutil.which("systemd-analyze"), "systemd-analyze is required (Debian package systemd)"
    unit = UNIT
    shipped = "/usr/local/bin/syncd"
    if not os.access(shipped, os.X_OK):
        # verify the shipped unit with its ExecStart pointed at this machine's syncd
        installed = shutil.which("syncd")
        assert installed, "syncd is not installed (pip install .)"
        unit = tmp_path / "syncd.service"
        text = UNIT.read_text()
        assert text.count(shipped) == 1
        unit.write_text(text.replace(shipped, installed))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_unit_hardening_and_credentials():
    text = UNIT.read_text()
    for line in ("Type=notify", "Restart=on-failure", "User=syncd", "ProtectSystem=strict", "ReadWritePaths=",
                 "StateDirectory=syncd", "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes",
                 "PrivateDevices=yes", "RestrictAddressFamilies=", "SystemCallFilter=@system-service",
                 "CapabilityBoundingSet=\n", "LoadCredential=postgres__password:", "WatchdogSec="):
        assert line in text, line
    env_lines = [l for l in text.splitlines() if l.startswith("Environment")]
    assert not any("PASSWORD" in l.upper() or "DSN" in l.upper() for l in env_lines)  # secrets only via LoadCredential


def test_a_configuration_syncd_refuses_is_not_restarted_forever(tmp_path):
    """Restart=on-failure restarted a daemon whose configuration it refuses every 5 s, the
    same line each time, for ever: the exit status syncd gives such a configuration is one
    the unit does not restart on."""
    bad = tmp_path / "syncd.toml"
    bad.write_text("[postgres]\ndsn = 'postgresql://x@127.0.0.1:1/db'\n[[sources]]\nname = \n")
    code = subprocess.run([sys.executable, "-m", "syncd", "--config", str(bad), "run"], capture_output=True,
                          text=True, timeout=60).returncode
    [prevent] = [l.split("=", 1)[1].split() for l in UNIT.read_text().splitlines()
                 if l.startswith("RestartPreventExitStatus=")]
    assert code != 0 and str(code) in prevent, (code, prevent)


class NotifySocket:
    """What systemd would listen on: records every datagram with its arrival time."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.wall: list[float] = []
        self._stop = False
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))
                self.wall.append(time.time())

    def lines(self, prefix: str) -> list[tuple[float, str]]:
        return [(t, m) for t, m in self.messages if m.startswith(prefix)]

    def close(self):
        self._stop = True
        self.sock.close()


async def test_notify_protocol_and_watchdog(tmp_path, pg_dsn):
    parts = urlsplit(pg_dsn)
    proxy = FaultProxy(parts.hostname, parts.port)
    dsn = pg_dsn.replace(f":{parts.port}/", f":{proxy.port}/")
    db = tmp_path / "app.db"
    create_items(db, rows=20_000)
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}],
                       sections={"postgres": {"statement_timeout_seconds": 600}})
    sock = NotifySocket(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "1000000"}
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log", env=env) as d:
            wait_for(lambda: sock.lines("READY=1"), 60, "READY=1", d)
            seq, states = await bookkeeping(dsn.replace(f":{proxy.port}/", f":{parts.port}/"), "app")
            assert states == {"items": "streaming"}
            # READY only once every source streams: not before the log says so
            streaming_line = next(l for l in d.log().splitlines() if "every table is streaming" in l)
            streaming_at = dt.datetime.fromisoformat(streaming_line.split()[0].replace("Z", "+00:00")).timestamp()
            ready_wall = sock.wall[sock.messages.index(sock.lines("READY=1")[0])]
            assert ready_wall >= streaming_at - 0.05
            assert any("app: streaming" in m for _, m in sock.lines("STATUS="))
            wait_for(lambda: len(sock.lines("WATCHDOG=1")) >= 3, 30, "watchdog pings", d)
            pings = [t for t, _ in sock.lines("WATCHDOG=1")]
            assert max(b - a for a, b in zip(pings, pings[1:])) < 1.0  # at least every WATCHDOG_USEC/2 (+slack)
            # wedge the pipeline: Postgres hangs and the (long) statement timeout never fires
            proxy.stall()
            sqlite = __import__("sqlite3").connect(db)
            sqlite.execute("UPDATE items SET n = n + 1 WHERE id < 10")
            sqlite.commit()
            time.sleep(1)
            wedged_at = time.monotonic()
            time.sleep(2.5)  # a live loop would ping every 0.5 s in this window
            late = [t for t, _ in sock.lines("WATCHDOG=1") if t > wedged_at + 1.25]
            assert late == [], "watchdog pings must stop while the loop is wedged"
            proxy.heal()
            wait_for(lambda: [t for t, _ in sock.lines("WATCHDOG=1") if t > wedged_at + 2.5], 30, "pings resume", d)
            assert d.stop() == 0
        assert sock.lines("STOPPING=1")
    finally:
        sock.close()
        proxy.close()


async def test_a_reload_before_the_sources_stream_does_not_say_ready(tmp_path, pg_dsn):
    """SIGHUP while the start still waits for a source (its first changes waiting for a row
    Postgres had locked): the reload said READY=1, so systemd took the start as finished
    before any source streamed. READY=1 comes once every source streams, reload or not."""
    import asyncpg

    db = tmp_path / "app.db"
    create_items(db, rows=10)
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "first.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    with sqlite3.connect(db) as app:
        app.execute("UPDATE items SET n = n + 1 WHERE id = 1")
    sock = NotifySocket(tmp_path / "notify.sock")
    blocker = await asyncpg.connect(pg_dsn)
    try:
        row_lock = blocker.transaction()
        await row_lock.start()
        await blocker.execute("SELECT 1 FROM app.items WHERE id = 1 FOR UPDATE")
        with DaemonProcess(cfg, tmp_path / "syncd.log", env={"NOTIFY_SOCKET": str(sock.path)}) as d:

            async def waiting() -> bool:  # the change waits for the row
                return bool(await blocker.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted "
                                                   "AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"))

            await eventually(waiting, 30, "the change to wait for the locked row", d)
            d.proc.send_signal(signal.SIGHUP)
            d.wait_log("configuration reloaded")
            assert not sock.lines("READY=1"), sock.messages
            await row_lock.rollback()
            wait_for(lambda: sock.lines("READY=1"), 30, "READY=1", d)
            assert d.stop() == 0
    finally:
        await blocker.close()
        sock.close()


# Loaded by the daemon's interpreter (sitecustomize): its housekeeping fails, after the
# watchdog's ping, while the file SYNCD_HOUSEKEEPING_FAILS names exists, as an error
# syncd did not foresee would.
FAILING_HOUSEKEEPING = '''
import os
import syncd.daemon

_collect = syncd.daemon.Daemon._collect_stopped


def _collect_stopped(self):
    if os.path.exists(os.environ["SYNCD_HOUSEKEEPING_FAILS"]):
        raise RuntimeError("housekeeping went wrong")
    return _collect(self)


syncd.daemon.Daemon._collect_stopped = _collect_stopped
'''


async def test_housekeeping_that_keeps_failing_stops_the_watchdog_pings(tmp_path, pg_dsn):
    """Housekeeping that failed at every start (its supervisor starting it again) still
    pinged systemd's watchdog at each start, so systemd never restarted a daemon that no
    longer restarted failed sources nor switched them. Once housekeeping has not finished
    a round for longer than the watchdog's interval, the pings stop, and the log says why."""
    db = tmp_path / "app.db"
    create_items(db, rows=10)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(FAILING_HOUSEKEEPING)
    fails = tmp_path / "fail"
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": "app", "path": str(db)}])
    sock = NotifySocket(tmp_path / "notify.sock")
    wd = 1.0
    env = {"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": str(int(wd * 1e6)),
           "PYTHONPATH": str(tmp_path / "site"), "SYNCD_HOUSEKEEPING_FAILS": str(fails)}
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log", env=env) as d:
            wait_for(lambda: sock.lines("READY=1"), 60, "READY=1", d)
            wait_for(lambda: len(sock.lines("WATCHDOG=1")) >= 2, 30, "watchdog pings", d)
            fails.touch()
            failing_since = time.monotonic()
            d.wait_log("the daemon's housekeeping loop failed: housekeeping went wrong; started again in 1 s")
            # started again after 1 s, then 2 s: each start used to ping
            wait_for(lambda: time.monotonic() - failing_since > 4 * wd + 1.5, 10, "two restarts", d)
            late = [t - failing_since for t, _ in sock.lines("WATCHDOG=1") if t > failing_since + 2 * wd]
            assert late == [], f"pings {late} s after housekeeping began failing, at each of its restarts"
            d.wait_log("the daemon's housekeeping has not finished a round for")
            line = next(x for x in d.own_log().splitlines() if "has not finished a round" in x)
            assert "no longer pinging the watchdog, so that systemd restarts syncd" in line, line
            assert "housekeeping went wrong" in line, line
            assert d.own_log().count("has not finished a round") == 1
            assert d.stop() == 0
    finally:
        sock.close()
