"""SIGTERM and SIGINT finish or roll back the batch in flight and exit 0 within 10 s; the
metrics and status listener closes at once when the daemon stops."""

from __future__ import annotations

import re
import signal
import socket
import time

import asyncpg
import pytest

from syncd.endpoint import Endpoint
from syncd.postgres.bookkeeping import LOCK_CLASS
from tests.conftest import write_config
from tests.support.app import Writer, create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.sync import eventually, wait_caught_up


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_stop_signal_during_heavy_streaming(tmp_path, make_config, pg_dsn, sig):
    db = tmp_path / "app.db"
    create_items(db, rows=20_000)
    cfg = make_config([{"name": "app", "path": str(db)}])
    writer = Writer(db, seconds=3, seed=11)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("snapshot started")
        time.sleep(1.0)
        started = time.monotonic()
        assert d.stop(sig, timeout=20) == 0
        assert time.monotonic() - started < 10
        assert "syncd stopped" in d.log()
    writer.result()
    with DaemonProcess(cfg, tmp_path / "again.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


def test_the_listener_stops_at_once():
    """Asked to stop, the listener does, not at its next look half a second later: every
    stop of the daemon (systemctl stop or restart, Ctrl-C) waited on it."""
    ep = Endpoint("127.0.0.1", 0, lambda: {"sources": {}})
    ep.start()
    time.sleep(0.1)  # its thread waits for a connection by now
    began = time.monotonic()
    ep.stop()
    took = time.monotonic() - began
    assert took < 0.3, took
    ep.thread.join(5)
    assert not ep.thread.is_alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ep.port), timeout=2)


def test_a_listener_never_started_stops_too():
    """A daemon stopped between binding the port and starting the listener's thread
    closes the port and goes on stopping."""
    ep = Endpoint("127.0.0.1", 0, lambda: {"sources": {}})
    began = time.monotonic()
    ep.stop()
    assert time.monotonic() - began < 5
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ep.port), timeout=2)


async def test_a_stopped_daemon_has_closed_the_file_it_streams(tmp_path, make_config, pg_dsn):
    """A daemon that stopped on SIGTERM closed its connections to the file before it
    exited: SQLite's last close folds the WAL back into the file and removes it, which a
    connection left open at exit never does."""
    db = tmp_path / "app.db"
    create_items(db, rows=100, journal="wal")
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert (tmp_path / "app.db-wal").exists()  # the daemon's connection keeps it meanwhile
        assert d.stop() == 0
    assert not (tmp_path / "app.db-wal").exists()
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


async def test_a_stop_while_postgres_keeps_the_start_waiting(tmp_path, make_config, pg_dsn):
    """SIGTERM while the daemon's start waits on Postgres (here for the bookkeeping's lock,
    held by another session): the daemon went on waiting, up to the statement timeout,
    before it even began to stop. It stops at once, exit 0, within the promised 10 s."""
    db = tmp_path / "app.db"
    create_items(db, rows=10)
    cfg = make_config([{"name": "app", "path": str(db)}])
    blocker = await asyncpg.connect(pg_dsn)
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            async with blocker.transaction():
                await blocker.execute("SELECT pg_advisory_xact_lock($1, 0)", LOCK_CLASS)

                async def waiting() -> bool:  # the daemon's start waits for the lock
                    return bool(await blocker.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted "
                                                       "AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"))

                await eventually(waiting, 60, "the daemon's start to wait for the bookkeeping lock", d)
                d.proc.send_signal(signal.SIGTERM)
                assert d.proc.wait(10) == 0, d.log()[-3000:]
            assert "syncd stopped" in d.log()
    finally:
        await blocker.close()


async def test_a_stop_while_the_configuration_waits_on_postgres(tmp_path, outage):
    """SIGTERM while `syncd run` still reads its configuration (a file the glob matches by
    two names, whose registered one is asked of a Postgres that does not answer): the
    daemon waited out the connection's timeout (a minute here) before it even began to
    stop. It stops at once, exit 0, within the promised 10 s."""
    import os

    proxy, dsn = outage
    d = tmp_path / "tenants"
    d.mkdir()
    create_items(d / "a.db", rows=10)
    os.link(d / "a.db", d / "b.db")  # one file, two names: its registered name is asked of Postgres
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "t_{stem}", "path": str(d / "*.db")}],
                       sections={"postgres": {"connect_timeout_seconds": 60}})
    proxy.stall()
    with DaemonProcess(cfg, tmp_path / "syncd.log") as daemon:
        wait_for(lambda: proxy.accepted > 0, 60, "the daemon asking Postgres", daemon)
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(10) == 0, daemon.log()[-3000:]
    assert "syncd stopped" in daemon.log()


async def test_a_stop_during_a_consistency_check_ends_it(tmp_path, make_config, pg_dsn):
    """SIGTERM while the daemon's periodic consistency check waited on Postgres (a table
    locked by another session): the daemon said "syncd stopped", then went on waiting 5 s
    for the check's connection before it exited (past the 10 s promised, after a batch
    that was slow to finish). The check ends with the stop, before it is said."""
    db = tmp_path / "app.db"
    create_items(db, rows=10)
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0.5}})
    blocker = await asyncpg.connect(pg_dsn)
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await wait_caught_up(db, pg_dsn, "app", daemon=d)
            d.wait_log("consistency check: equal")
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE app.items IN ACCESS EXCLUSIVE MODE")

                async def waiting() -> bool:  # the next check waits for the table
                    return bool(await blocker.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted "
                                                       "AND relation = 'app.items'::regclass"))

                await eventually(waiting, 30, "the check to wait for the table", d)
                started = time.monotonic()
                d.proc.send_signal(signal.SIGTERM)
                assert d.proc.wait(15) == 0
                took = time.monotonic() - started
    finally:
        await blocker.close()
    log = d.log()
    assert "failed" not in log.split("syncd stopped")[-1] and log.rstrip().endswith("syncd stopped"), log[-2000:]
    assert took < 4, f"{took:.1f} s to stop"


async def test_a_stop_while_postgres_does_not_answer_ends_in_time_whatever_the_databases(tmp_path, pg_server,
                                                                                         fresh_databases):
    """SIGTERM while the network to Postgres drops every packet, the sources landing in
    three databases (as the worked example's do), with the default timeouts: the daemon
    closed the databases' connections one after the other, each waiting for an answer
    that never came, and exited 16 s after the signal (10 s and 2 s a database; past
    the unit's TimeoutStopSec=20s from six databases on). It exits 0 in about 10 s, and
    says which sources it stopped without waiting further."""
    from urllib.parse import urlsplit

    from tests.conftest import with_database
    from tests.support.proxy import FaultProxy

    parts = urlsplit(pg_server)
    proxy = FaultProxy(parts.hostname, parts.port or 5432)
    names = [fresh_databases.take() for _ in range(3)]
    try:
        sources = []
        for i, name in enumerate(names):
            create_items(tmp_path / f"app{i}.db", rows=10)
            sources.append({"name": f"app{i}", "path": str(tmp_path / f"app{i}.db"),
                            "dsn": with_database(pg_server, name).replace(f":{parts.port}/", f":{proxy.port}/")})
        cfg = write_config(tmp_path / "syncd.toml", sources[0]["dsn"], sources)
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            for i, name in enumerate(names):
                await wait_caught_up(tmp_path / f"app{i}.db", with_database(pg_server, name), f"app{i}", daemon=d)
            proxy.stall()
            for i in range(3):
                Writer(tmp_path / f"app{i}.db", seconds=0.3, seed=i).result()
            time.sleep(1.0)  # each source's batch waits on Postgres
            started = time.monotonic()
            assert d.stop(timeout=30) == 0
            assert time.monotonic() - started < 12, d.log()[-2000:]  # 9.5 s, and the process's own end
            assert "syncd stopped" in d.log()
            # The log said it finished the batch in flight, and then only that it stopped.
            late = re.search(r"(\d) source\(s\) had not stopped within 8 s, waiting on Postgres: stopped without "
                             r"waiting further; what they had not applied stays captured \(in SQLite, or in Postgres "
                             r"for a cut-over source\) for the next start: (.*)", d.log())
            assert late is not None, d.log()
            named = late.group(2).split(", ")
            assert int(late.group(1)) == len(named) and set(named) <= {"app0", "app1", "app2"}, late.group(0)
        proxy.heal()
        with DaemonProcess(cfg, tmp_path / "again.log") as d:
            for i, name in enumerate(names):
                await wait_caught_up(tmp_path / f"app{i}.db", with_database(pg_server, name), f"app{i}", daemon=d)
            assert d.stop() == 0
        for i, name in enumerate(names):
            assert await compare_table(str(tmp_path / f"app{i}.db"), with_database(pg_server, name), f"app{i}",
                                       "items") == []
    finally:
        proxy.close()
        for name in names:
            fresh_databases.give_back(name)
