"""A file its application keeps locked is reported as file_locked, and no longer once
the lock is gone, also when the application wrote nothing under it (a ROLLBACK) and
the file then has nothing for the daemon to do but give its connection back. A lock is
counted from the step that met it after any other failure: two short locks either side
of a Postgres outage are not reported as one long one, by the forward pipeline nor by
the way back (after a cutover, where the lock holds up Postgres's changes)."""

from __future__ import annotations

import calendar
import contextlib
import json
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from syncd.pipeline import FILE_LOCKED_AFTER_SECONDS
from tests.conftest import FAST_FAILOVER, write_config
from tests.support.app import create_items
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.ports import free_port
from tests.support.proxy import FaultProxy
from tests.support.sync import pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, wait_back
from tests.test_locked_files_in_a_fleet import make_file, write
from tests.test_postgres_outage import metric

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("INSERT INTO items (v) VALUES ('never committed')")
print("locked", flush=True)
sys.stdin.readline()  # held until told: past the daemon's FILE_LOCKED_AFTER_SECONDS, once reported
conn.execute("ROLLBACK")
print("released", flush=True)
"""


async def test_a_lock_given_up_without_a_change_is_no_longer_reported(tmp_path, make_config, pg_dsn):
    path = tmp_path / "app.db"
    make_file(path)
    cfg = make_config([{"name": "app", "path": str(path)}], metrics_listen=f"127.0.0.1:{free_port()}",
                      sections={"sqlite": {"idle_close_seconds": 3}, "verify": {"interval_seconds": 0}})
    pg = await asyncpg.connect(pg_dsn)
    holder = None
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await wait_caught_up(path, pg_dsn, "app", daemon=d)
            write(path, "applied just now")
            await wait_caught_up(path, pg_dsn, "app", daemon=d)
            # The daemon's next step is its idle close, a few seconds on: under the lock.
            holder = lock(path, "app", HOLDER)
            d.wait_log("is locked by its application", timeout=FILE_LOCKED_AFTER_SECONDS + 10)
            unlock(holder)
            released = time.monotonic()
            d.wait_log("recovered: the SQLite file is no longer locked", timeout=20)
            assert time.monotonic() - released < 10
            status = run_cli(cfg, "status", "--all", timeout=60).stdout
            line = next((ln for ln in status.splitlines() if ln.split()[:1] == ["app"]), status[-2000:])
            assert "streaming" in line and "locked" not in status, status[-2000:]
            assert d.stop() == 0
    finally:
        if holder is not None:
            holder.kill()
        await pg.close()


LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("INSERT INTO items (v) VALUES (?)", (sys.argv[2] + ' committed',))  # a change to read
conn.execute("BEGIN EXCLUSIVE")
conn.execute("INSERT INTO items (v) VALUES (?)", (sys.argv[2] + ' under the lock',))
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
print("released", flush=True)
"""


# A file frozen by a cutover refuses the application's writes, but a transaction can still
# hold its write lock (rollback-journal, BEGIN IMMEDIATE: a RESERVED lock, reads go on).
FROZEN_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
print("released", flush=True)
"""


def lock(path, name: str, script: str = LOCKER) -> subprocess.Popen:
    """The application locks the file (rollback-journal; LOCKER: BEGIN EXCLUSIVE) until told."""
    holder = subprocess.Popen([sys.executable, "-c", script, str(path), name],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def unlock(holder: subprocess.Popen) -> None:
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "released"
    holder.wait(10)


def source_health(port: int) -> str:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read()
    return json.loads(body)["sources"]["app"]["health"]


def reported_once_held_alone(d: DaemonProcess, port: int, first: float) -> str:
    """Postgres has just come back (healed) under the file's second lock, the first one
    having begun at `first`: the file is not reported locked while the second lock alone
    is short of FILE_LOCKED_AFTER_SECONDS, although both together are past it; held on,
    it is reported, as held since Postgres came back, and Postgres's return was said
    before it. The report's log line."""
    healed, healed_at = time.monotonic(), time.time()
    watch_until = healed + FILE_LOCKED_AFTER_SECONDS - 3
    # Watched well past the threshold counted from the first lock, short of it counted from Postgres's return.
    assert watch_until - (first + FILE_LOCKED_AFTER_SECONDS) >= 3
    while time.monotonic() < watch_until:
        assert d.alive(), d.log()[-3000:]
        health = source_health(port)
        since_healed, since_first = time.monotonic() - healed, time.monotonic() - first
        assert health != "file_locked" and "is locked by its application" not in d.log(), \
            f"reported locked {since_healed:.1f} s after Postgres came back under the second lock, " \
            f"{since_first:.1f} s after the first lock began (health {health}):\n{d.log()[-3000:]}"
        time.sleep(0.25)
    d.wait_log("is locked by its application", timeout=15)
    assert source_health(port) == "file_locked"
    [line] = [ln for ln in d.log().splitlines() if "is locked by its application" in ln]
    since = re.search(r" since (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", line)
    assert since, line
    assert calendar.timegm(time.strptime(since[1], "%Y-%m-%d %H:%M:%S")) >= int(healed_at) - 1, line
    # Postgres's return was said as soon as it answered, not left for the file's lock to hide.
    log = d.log()
    assert -1 < log.find("recovered: Postgres is reachable again") < log.find("is locked by its application"), \
        log[-3000:]
    return line


async def two_locks_around_an_outage(d: DaemonProcess, proxy: FaultProxy, port: int, path, holders: list,
                                     script: str = LOCKER, under_lock=None) -> str:
    """A short lock, Postgres lost while it is held, the lock released (the next step fails
    on Postgres), a second lock taken, Postgres back late enough that the two locks
    together pass FILE_LOCKED_AFTER_SECONDS well before the second does by itself; then
    reported_once_held_alone, and the second lock released. `under_lock(n)` (async) runs
    as lock n is taken (Postgres changes for the way back to write, say); `holders` gets
    each lock's process, for the caller to kill. The report's log line."""
    retries = metric(port, "syncd_retries_total") or 0
    holders.append(lock(path, "first", script))
    first = time.monotonic()
    if under_lock:
        await under_lock(1)
    wait_for(lambda: (metric(port, "syncd_retries_total") or 0) > retries, 10, "a step meeting the lock", d)
    proxy.refuse()
    time.sleep(1)
    unlock(holders[0])
    assert time.monotonic() - first < FILE_LOCKED_AFTER_SECONDS - 5  # a short lock: never reported
    d.wait_log("event=postgres_unreachable", timeout=20)  # a step failed on Postgres, not on the lock
    holders.append(lock(path, "second", script))
    if under_lock:
        await under_lock(2)
    time.sleep(max(1.0, first + 7 - time.monotonic()))
    proxy.heal()
    line = reported_once_held_alone(d, port, first)
    unlock(holders[1])
    d.wait_log("recovered: the SQLite file is no longer locked", timeout=20)
    return line


@dataclass
class OutageWorld:
    """A SQLite file, Postgres behind the fault proxy (`dsn` reaches it through it), the
    daemon's metrics port, and the lock holders a test starts (killed on the way out)."""
    proxy: FaultProxy
    path: Path
    port: int
    dsn: str
    holders: list = field(default_factory=list)


@contextlib.contextmanager
def outage_world(tmp_path, pg_dsn: str) -> Iterator[OutageWorld]:
    parts = urlsplit(pg_dsn)
    proxy = FaultProxy(parts.hostname, parts.port or 5432)
    world = OutageWorld(proxy, tmp_path / "app.db", free_port(), pg_dsn.replace(f":{parts.port}/", f":{proxy.port}/"))
    make_file(world.path)
    try:
        yield world
    finally:
        for h in world.holders:
            h.kill()
        proxy.close()


async def test_locks_either_side_of_a_postgres_outage_are_not_reported_as_one(tmp_path, pg_dsn):
    # A short lock, Postgres lost while it is held, the lock released (the next step fails
    # on Postgres), a second lock taken, Postgres back. The second lock is counted from
    # the step that met it once Postgres was back: no file_locked report until it alone
    # has lasted FILE_LOCKED_AFTER_SECONDS, although the file has by then been locked for
    # longer than that counting from the first lock.
    with outage_world(tmp_path, pg_dsn) as w:
        cfg = write_config(tmp_path / "syncd.toml", w.dsn, [{"name": "app", "path": str(w.path)}],
                           metrics_listen=f"127.0.0.1:{w.port}",
                           # Steps meet the lock every few tenths of a second, not every 2 s (the default).
                           sections={**FAST_FAILOVER, "sqlite": {"read_busy_timeout_ms": 200},
                                     "verify": {"interval_seconds": 0}})
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await wait_caught_up(w.path, pg_dsn, "app", daemon=d)
            await two_locks_around_an_outage(d, w.proxy, w.port, w.path, w.holders)
            await wait_caught_up(w.path, pg_dsn, "app", daemon=d)
            assert d.stop() == 0
            log = d.log()
    assert log.count("is locked by its application") == 1, log[-3000:]


async def test_on_the_way_back_locks_either_side_of_a_postgres_outage_are_not_reported_as_one(tmp_path, pg_dsn):
    # The same sequence on the way back (Postgres -> SQLite after a cutover), where the lock
    # blocks syncd writing Postgres's changes into the file: a short lock while changes
    # wait, Postgres lost while it is held, the lock released (steps fail on Postgres), a
    # second lock, Postgres back. The second lock is reported only once it alone has lasted
    # FILE_LOCKED_AFTER_SECONDS. A step that meets the lock gives up after 1 s (the step's
    # write wait, session.STEP_WRITE_SECONDS) and the next waits for it first.
    with outage_world(tmp_path, pg_dsn) as w:

        def make_config(sources, sections):
            return write_config(tmp_path / "syncd.toml", w.dsn, sources, metrics_listen=f"127.0.0.1:{w.port}",
                                sections=sections)

        cfg = backup_and_config(make_config, tmp_path, w.path, **FAST_FAILOVER)
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await cut_over(cfg, w.path, pg_dsn, daemon=d)
            await wait_back(cfg, w.path, pg_dsn, daemon=d)
            names = {1: "first", 2: "second"}

            async def change(n: int) -> None:  # for the way back to write into the file under lock n
                await pg_rows(pg_dsn, f"INSERT INTO app.items (v) VALUES ('written in Postgres under the {names[n]} "
                                      "lock')")

            line = await two_locks_around_an_outage(d, w.proxy, w.port, w.path, w.holders, FROZEN_LOCKER, change)
            assert "could not get a write lock" in line, line  # met writing Postgres's changes into the file
            await wait_back(cfg, w.path, pg_dsn, daemon=d)
            conn = sqlite3.connect(w.path)
            try:
                got = {v for (v,) in conn.execute("SELECT v FROM items WHERE v LIKE 'written in Postgres%'")}
            finally:
                conn.close()
            assert got == {"written in Postgres under the first lock", "written in Postgres under the second lock"}
            assert d.stop() == 0
            log = d.log()
    assert log.count("is locked by its application") == 1, log[-3000:]


async def test_a_file_locked_from_the_daemons_first_start_is_reported_and_a_stop_is_prompt(tmp_path, make_config,
                                                                                             pg_dsn):
    """The application holds a write transaction open as syncd first starts on its file:
    capture waits for the lock. That wait went on in one call for two minutes: no report
    of the lock in that time, and a SIGTERM took the daemon's whole grace period to end it."""
    db = tmp_path / "app.db"
    create_items(db, rows=100, journal="wal")
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
    app = sqlite3.connect(db, isolation_level=None)
    try:
        app.execute("BEGIN IMMEDIATE")
        app.execute("INSERT INTO items (v) VALUES ('not committed yet')")
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            d.wait_log("syncd running")
            wait_for(lambda: "locked by its application" in d.own_log(), FILE_LOCKED_AFTER_SECONDS + 30,
                     "the lock reported", d)
            began = time.monotonic()
            assert d.stop(timeout=30) == 0
            assert time.monotonic() - began < 10, d.own_log()[-2000:]
    finally:
        app.execute("ROLLBACK")
        app.close()
    with DaemonProcess(cfg, tmp_path / "again.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0


# An application holding its file in SQLite's exclusive locking mode: every commit is
# durable, and no other process reads the file until it lets go.
EXCLUSIVE_WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode = EXCLUSIVE")
conn.execute("INSERT INTO items (v) VALUES ('first under the lock')")
print("locked", flush=True)
while not sys.stdin.readline().strip():
    conn.execute("INSERT INTO items (v) VALUES ('committed under the lock')")
conn.close()
print("released", flush=True)
"""


@pytest.mark.parametrize("idle_first", [False, True], ids=["busy", "idle-first"])
async def test_changes_committed_under_a_long_lock_are_no_lag_of_0(tmp_path, make_config, pg_dsn, idle_first):
    """The application commits for longer than FILE_LOCKED_AFTER_SECONDS under a lock no
    reader gets past: its changes wait in the file, unseen. The lag the daemon shows
    (syncd_replication_lag_seconds, its /status) is the time since it last read the whole
    changelog, at most, not 0 (SyncdLagHigh could never fire for such a file). A file idle
    before the lock (its connection given back) counts from the last look at it, not from
    before its idle spell."""
    path = tmp_path / "app.db"
    make_file(path)
    port = free_port()
    sections = {"verify": {"interval_seconds": 0}}
    if idle_first:
        sections["sqlite"] = {"idle_close_seconds": 1}
    cfg = make_config([{"name": "app", "path": str(path)}], metrics_listen=f"127.0.0.1:{port}", sections=sections)
    holder = None
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await wait_caught_up(path, pg_dsn, "app", daemon=d)
            if idle_first:
                time.sleep(12)  # idle, its connection given back, looked at without one
            holder = subprocess.Popen([sys.executable, "-c", EXCLUSIVE_WRITER, str(path)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert holder.stdout.readline().strip() == "locked"
            locked = time.monotonic()
            for _ in range(3):  # commits the daemon cannot see
                holder.stdin.write("\n")
                holder.stdin.flush()
            d.wait_log("is locked by its application", timeout=FILE_LOCKED_AFTER_SECONDS + 10)
            lag = metric(port, 'syncd_replication_lag_seconds{direction="to_postgres",source="app"}')
            live = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read())
            # At most since its last read, a poll or two before the lock (5 s: a loaded machine).
            assert lag is not None and FILE_LOCKED_AFTER_SECONDS - 1 <= lag <= time.monotonic() - locked + 5, lag
            assert live["sources"]["app"]["lag_seconds"] >= FILE_LOCKED_AFTER_SECONDS - 1, live["sources"]["app"]
            holder.stdin.write("go\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "released"
            await wait_caught_up(path, pg_dsn, "app", daemon=d)
            wait_for(lambda: metric(port, 'syncd_replication_lag_seconds{direction="to_postgres",source="app"}')
                     == 0, 10, "no lag once the changes are applied", d)
            assert d.stop() == 0
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
