"""Postgres outages through a fault-injecting proxy: refused, reset and hanging
connections. The daemon stays up, keeps capturing, reports the outage once, and
catches up by itself."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sqlite3
import time
import urllib.request
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.conftest import FAST_FAILOVER, write_config
from tests.support.app import Writer, create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.pgcluster import free_port
from tests.support.proxy import FaultProxy
from tests.support.sync import changelog_max, eventually, pg_rows, pg_statements, wait_caught_up

@pytest.fixture
def proxied(tmp_path, pg_dsn):
    parts = urlsplit(pg_dsn)
    proxy = FaultProxy(parts.hostname, parts.port or 5432)
    dsn = pg_dsn.replace(f":{parts.port}/", f":{proxy.port}/")
    port = free_port()
    db = tmp_path / "app.db"
    create_items(db, rows=500)
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}],
                       metrics_listen=f"127.0.0.1:{port}", sections=FAST_FAILOVER)
    yield proxy, cfg, db, port
    proxy.close()


def metric(port: int, name: str) -> float | None:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_refused_then_back(proxied, pg_dsn, tmp_path):
    proxy, cfg, db, port = proxied
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        proxy.refuse()
        writer = Writer(db, seconds=3, seed=1, rate=200)
        wait_for(lambda: d.log().count("Postgres unreachable") >= 1, 30, "outage logged", d)
        tried = proxy.refused
        assert writer.result()["lock_errors"] == 0
        wait_for(lambda: metric(port, "syncd_postgres_up") == 0, 30, "syncd_postgres_up 0", d)
        wait_for(lambda: (metric(port, "syncd_pending_changes") or 0) > 0, 30, "pending changes visible", d)
        # several retries happen while it is down, after the outage was logged
        wait_for(lambda: proxy.refused >= tried + 3, 30, "several retries while it is down", d)
        assert d.alive()
        proxy.heal()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        wait_for(lambda: metric(port, "syncd_postgres_up") == 1, 30, "syncd_postgres_up 1", d)
        assert d.stop() == 0
        log = d.log()
    assert log.count("event=postgres_unreachable") == 1  # once per state change, not per retry
    assert log.count("event=recovered") == 1
    # The reason names what happened to Postgres, not the pool's complaint about a
    # connection it had already taken back.
    [line] = [x for x in log.splitlines() if "event=postgres_unreachable" in x]
    assert "terminate()" not in line and "released back to the pool" not in line, line
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


async def test_resets_while_writing(proxied, pg_dsn, tmp_path):
    proxy, cfg, db, port = proxied
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        writer = Writer(db, seconds=5, seed=2)
        for _ in range(10):
            await asyncio.sleep(0.4)
            proxy.reset()
        writer.result()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


async def test_hanging_connection_is_bounded_and_never_blocks_shutdown(proxied, pg_dsn, tmp_path):
    proxy, cfg, db, port = proxied
    # a hang is noticed by the statement/connect timeouts: make them short (real settings)
    dsn = pg_dsn.replace(f":{urlsplit(pg_dsn).port}/", f":{proxy.port}/")
    write_config(cfg, dsn, [{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{port}",
                 sections={"postgres": {"connect_timeout_seconds": 1, "statement_timeout_seconds": 1},
                           "stream": {"retry_max_backoff_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        proxy.stall()
        Writer(db, seconds=1, seed=3).result()
        wait_for(lambda: "Postgres unreachable" in d.log(), 30, "the hang detected by a timeout", d)
        proxy.heal()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        # now hang again and stop in the middle of it
        proxy.stall()
        Writer(db, seconds=0.5, seed=4).result()
        await asyncio.sleep(0.3)  # inside the 1 s statement timeout: stop while the batch hangs
        started = time.monotonic()
        assert d.stop(timeout=20) == 0
        assert time.monotonic() - started < 10
    proxy.heal()
    assert changelog_max(db) > 0


async def test_a_connection_asyncpg_lost_track_of_counts_as_an_outage_and_nothing_else_does(pg_dsn):
    """When the server goes away mid-operation, asyncpg can leave the connection in a
    state it cannot leave ("cannot switch to state 15; another operation (2) is in
    progress"): syncd treats that as an outage (drop the connection, reconnect with
    backoff). asyncpg's other faults of the same class are not outages: a COPY into a
    column type asyncpg has no binary encoder for fails the same way on every new
    connection, and is reported as the error it is."""
    import asyncpg

    from syncd.postgres.connect import is_data_error, is_transient

    confused = asyncpg.exceptions._base.InternalClientError("cannot switch to state 15; another operation (2) is "
                                                            "in progress")
    assert is_transient(confused) and not is_data_error(confused)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("CREATE TEMP TABLE words (v tsvector)")
        with pytest.raises(asyncpg.exceptions._base.InternalClientError) as no_encoder:
            await conn.copy_records_to_table("words", records=[("a b",)])
    finally:
        await conn.close()
    assert not is_transient(no_encoder.value)



async def test_a_command_calls_only_a_lost_connection_lost_not_a_fault_of_its_own(pg_dsn):
    """A verb ending on a connection Postgres closed under it says "the connection was
    lost; try again". asyncpg raises its InterfaceError for faults of the caller's too (two
    operations at once on one connection): those are not called a lost connection, and
    the command's own report of an unexpected error stays."""
    import asyncpg

    from syncd.postgres.connect import postgres_lost

    conn = await asyncpg.connect(pg_dsn)
    try:
        with pytest.raises(asyncpg.InterfaceError) as busy:
            await asyncio.gather(conn.fetch("SELECT pg_sleep(0.2)"), conn.fetch("SELECT 1"))
        await asyncio.sleep(0.3)
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InterfaceError) as closed:
        await conn.fetch("SELECT 1")
    assert postgres_lost(closed.value) is not None
    assert postgres_lost(busy.value) is None, busy.value

async def test_a_pooled_connection_lost_is_called_lost(outage):
    """The daemon's consistency check runs on a connection of its pool. Lost under it (the
    network, a server restart), asyncpg takes it back into the pool and says so for every
    call after: the check failed "Postgres: cannot call Connection.fetchval(): connection
    has been released back to the pool", which reads as a fault of syncd's, not an outage."""
    import asyncpg

    from syncd.postgres.connect import postgres_lost

    proxy, dsn = outage
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
            proxy.reset()
            lost = None
            for _ in range(100):  # until asyncpg has seen the connection go
                await asyncio.sleep(0.05)
                try:
                    await conn.fetchval("SELECT 1")
                except asyncpg.ConnectionDoesNotExistError:
                    continue  # the call the loss met: asyncpg takes the connection back after it
                except asyncpg.InterfaceError as e:
                    lost = e
                    break
    finally:
        pool.terminate()
    assert lost is not None and "released back to the pool" in str(lost), lost
    said = postgres_lost(lost)
    assert said is not None and said.startswith("Postgres: the connection was lost"), said


async def test_a_role_refused_at_login_is_named_once_and_retried_until_it_is_let_in(pg_dsn, tmp_path):
    """The role syncd logs in as stops being let in while the daemon runs (its password
    rotated; here NOLOGIN, as this server trusts every password): the log says Postgres
    refused that role at login, once for the outage (its own event, postgres_login_refused),
    never "unreachable" and never the password; status says the same; the daemon keeps
    capturing and retrying, catches up once the role is let in again, and says that
    Postgres accepts its login again (not that Postgres is "reachable again")."""
    role = f"syncd_login_{secrets.token_hex(4)}"
    await pg_statements(pg_dsn, f"CREATE ROLE {role} LOGIN SUPERUSER")
    role_dsn = pg_dsn.replace("postgres@", f"{role}:hunter2@")
    port = free_port()
    db = tmp_path / "app.db"
    create_items(db, rows=200)
    cfg = write_config(tmp_path / "syncd.toml", role_dsn, [{"name": "app", "path": str(db)}],
                       metrics_listen=f"127.0.0.1:{port}", sections=FAST_FAILOVER)
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await wait_caught_up(db, pg_dsn, "app", daemon=d)
            await pg_statements(pg_dsn, f"ALTER ROLE {role} NOLOGIN",
                                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
            Writer(db, seconds=1, seed=5).result()
            wait_for(lambda: "at login" in d.log(), 30, "the refusal logged", d)
            wait_for(lambda: metric(port, "syncd_postgres_up") == 0, 30, "syncd_postgres_up 0", d)
            status = run_cli(cfg, "status")
            await asyncio.sleep(3)  # several retries at a 1 s backoff
            assert d.alive()
            await pg_statements(pg_dsn, f"ALTER ROLE {role} LOGIN")
            await wait_caught_up(db, pg_dsn, "app", daemon=d)
            assert d.stop() == 0
            log = d.log()
    finally:
        await pg_statements(pg_dsn, f"REASSIGN OWNED BY {role} TO postgres", f"DROP OWNED BY {role}",
                            f"DROP ROLE {role}")
    out = status.stdout + status.stderr
    assert "hunter2" not in log and "hunter2" not in out, (log, out)
    assert "Postgres unreachable" not in log, log
    assert "event=postgres_unreachable" not in log and "reachable again" not in log, log
    [line] = [x for x in log.splitlines() if "event=postgres_login_refused" in x]  # once, not once per retry
    assert f"Postgres refused syncd's role {role} at login" in line and "not permitted to log in" in line, line
    assert f"refused syncd's role {role} at login" in out and "Postgres unreachable" not in out, out
    [row] = [x for x in status.stdout.splitlines() if x.startswith("app ")]
    assert row.split()[1:3] == ["postgres", "refused"], status.stdout  # the daemon, asked, says the same
    [back] = [x for x in log.splitlines() if "event=recovered" in x]
    assert "Postgres accepts syncd's login again" in back, back
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


async def test_a_verb_whose_statement_postgres_does_not_answer_in_time_says_so_in_one_line(tmp_path, make_config,
                                                                                         pg_dsn):
    """`syncd init` and `syncd resync` whose statement runs over [postgres]
    statement_timeout_seconds (a session keeps syncd's bookkeeping locked): one line naming
    Postgres and the timeout, exit 1; they printed a traceback ending in a bare TimeoutError."""
    import asyncpg

    db = tmp_path / "app.db"
    create_items(db, rows=10)
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"postgres": {"statement_timeout_seconds": 1}})
    assert run_cli(cfg, "init").returncode == 0
    holder = await asyncpg.connect(pg_dsn)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE syncd.tables IN ACCESS EXCLUSIVE MODE")
            runs = [run_cli(cfg, *verb) for verb in (["init"], ["resync", "--source", "app", "--table", "items"])]
    finally:
        await holder.close()
    for r in runs:
        out = r.stdout + r.stderr
        assert r.returncode == 1 and "Traceback" not in out, out
        [line] = r.stderr.splitlines()
        assert "Postgres" in line and "timed out" in line and "statement_timeout_seconds" in line, line


async def test_a_load_cut_short_by_an_outage_lets_the_application_checkpoint_its_wal(pg_dsn, tmp_path):
    """A first load in WAL mode reads the table in one read transaction of its own. Postgres
    gone mid-load, that read is given up: the application's WAL checkpoints in full while
    Postgres is away (a read kept open pins it, and it grows with every commit for as long
    as the outage lasts); the load resumes where it was once Postgres is back."""
    parts = urlsplit(pg_dsn)
    proxy = FaultProxy(parts.hostname, parts.port or 5432)
    db = tmp_path / "app.db"
    create_items(db, rows=50_000, journal="wal")
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn.replace(f":{parts.port}/", f":{proxy.port}/"),
                       [{"name": "app", "path": str(db)}],
                       sections={**FAST_FAILOVER, "stream": {"retry_max_backoff_seconds": 1,
                                                              "snapshot_chunk_rows": 500}})
    app = sqlite3.connect(db, timeout=0.1, isolation_level=None)

    def checkpointed() -> bool:
        app.execute("UPDATE items SET n = n + 1 WHERE id <= 100")
        return app.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0 and \
            os.path.getsize(f"{db}-wal") == 0

    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            conn = await asyncpg.connect(pg_dsn)
            try:
                loaded = 0
                started = time.monotonic()
                while loaded < 2000 and time.monotonic() - started < 60:
                    await asyncio.sleep(0.02)
                    if await conn.fetchval("SELECT to_regclass('app.items')") is not None:
                        loaded = await conn.fetchval("SELECT count(*) FROM app.items")
            finally:
                await conn.close()
            assert 2000 <= loaded < 50_000, loaded
            proxy.refuse()
            wait_for(lambda: "Postgres unreachable" in d.log(), 30, "outage logged", d)
            wait_for(checkpointed, 10, "the application's WAL checkpointed in full", d)
            proxy.heal()
            await wait_caught_up(db, pg_dsn, "app", daemon=d)
            assert "snapshot resuming after" in d.log()
            assert d.stop() == 0
    finally:
        proxy.close()
        app.close()
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


async def test_a_daemon_started_during_an_outage_counts_only_the_changes_postgres_lacks(proxied, pg_dsn, tmp_path):
    """A daemon started while Postgres is away (the host rebooted in the outage) does not
    know the checkpoint yet: syncd_pending_changes and its /status count the changelog's
    entries past the position the file itself notes as applied, not every change ever
    captured (the changelog's last position), which said thousands wait where a few do."""
    proxy, cfg, db, port = proxied
    with DaemonProcess(cfg, tmp_path / "one.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        app = sqlite3.connect(db)
        for _ in range(5):
            app.execute("UPDATE items SET n = n + 1")  # 500 changes each
            app.commit()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        wait_for(lambda: app.execute("SELECT count(*) FROM _syncd_changelog").fetchone()[0] <= 1, 30,
                 "the applied changes pruned", d)
        assert d.stop() == 0
    assert changelog_max(db) >= 2500
    proxy.refuse()
    for i in range(7):
        app.execute("UPDATE items SET v = ? WHERE id = ?", (f"away{i}", i + 1))
        app.commit()
    app.close()
    with DaemonProcess(cfg, tmp_path / "two.log") as d:
        wait_for(lambda: "Postgres unreachable" in d.log(), 30, "outage logged", d)
        wait_for(lambda: (metric(port, "syncd_pending_changes") or 0) > 0, 30, "pending changes visible", d)
        await asyncio.sleep(1)  # several polls
        shown = metric(port, "syncd_pending_changes")
        live = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read())
        proxy.heal()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert shown == 7, shown
    assert live["sources"]["app"]["pending_changes"] == 7, live["sources"]["app"]
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


async def test_a_daemon_started_during_an_outage_counts_a_held_tables_changes_as_pending(proxied, pg_dsn, tmp_path):
    """The changes of a table held for a row Postgres refuses stay in the changelog,
    below the position the file notes as applied (the prune keeps them): a daemon started
    while Postgres is away counts them among the pending changes too."""
    proxy, cfg, db, port = proxied
    app = sqlite3.connect(db)
    app.execute("CREATE TABLE counts (id INTEGER PRIMARY KEY, n INTEGER)")
    app.commit()
    with DaemonProcess(cfg, tmp_path / "one.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        app.execute("INSERT INTO counts VALUES (1, 'lots')")  # SQLite takes it, Postgres's bigint does not
        app.commit()
        wait_for(lambda: "table held" in d.log(), 30, "the hold", d)
        for i in range(3):
            app.execute("UPDATE counts SET n = ? WHERE id = 1", (f"still lots {i}",))
            app.commit()
        for i in range(4):
            app.execute("UPDATE items SET v = ? WHERE id = ?", (f"applied{i}", i + 1))
            app.commit()
        top = changelog_max(db)

        async def applied() -> bool:
            return await pg_rows(pg_dsn, "SELECT v FROM app.items WHERE id = 4") == [("applied3",)]

        await eventually(applied, 30, "the other table's changes applied", d)
        wait_for(lambda: app.execute("SELECT value FROM _syncd_meta WHERE key = 'pruned_seq'").fetchone()
                 == (str(top),), 30, "the applied changes pruned", d)
        assert d.stop() == 0
    held = app.execute("SELECT count(*) FROM _syncd_changelog WHERE seq < ?", (top,)).fetchone()[0]
    assert held == 4, held  # the hold's own insert and the three updates behind it
    proxy.refuse()
    for i in range(2):
        app.execute("UPDATE items SET v = ? WHERE id = ?", (f"away{i}", i + 1))
        app.commit()
    app.close()
    with DaemonProcess(cfg, tmp_path / "two.log") as d:
        wait_for(lambda: "Postgres unreachable" in d.log(), 30, "outage logged", d)
        wait_for(lambda: (metric(port, "syncd_pending_changes") or 0) > 0, 30, "pending changes visible", d)
        await asyncio.sleep(1)  # several polls
        shown = metric(port, "syncd_pending_changes")
        live = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read())
        proxy.heal()
        assert d.stop() == 0
    assert shown == 2 + held, shown
    assert live["sources"]["app"]["pending_changes"] == shown, live["sources"]["app"]
