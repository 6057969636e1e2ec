"""Postgres going away in the middle of a cutover or a rollback (its connections reset,
new ones refused): the switch is undone and its line names Postgres as what failed, in
words, not as asyncpg's class ("InterfaceError: connection is closed")."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import time
from urllib.parse import urlsplit

import pytest

from tests.support.daemon import DaemonProcess, run_cli, syncd_cmd
from tests.support.proxy import FaultProxy
from tests.support.sync import pg_rows, pg_statements, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, cut_over_and_stop, orders_app, postgres_write


@pytest.fixture
def proxy(pg_dsn):
    parts = urlsplit(pg_dsn)
    p = FaultProxy(parts.hostname, parts.port or 5432)
    yield p, pg_dsn.replace(f":{parts.port}/", f":{p.port}/")
    p.close()


async def orders_verified_and_stopped(tmp_path, make_config, pg_dsn: str, **config):
    """The orders file, followed into Postgres and verified, the daemon stopped: (file, config)."""
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db, **config)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        assert d.stop() == 0
    return db, cfg


def a_last_change(db) -> None:
    """An application change no daemon has carried: the last change, for a drain to bring."""
    lite = sqlite3.connect(db)
    lite.execute("UPDATE orders SET item = 'a2' WHERE item = 'a'")
    lite.commit()
    lite.close()


def switch_cut_off_at(cfg, verb: str, step: str, proxy: FaultProxy, via: str, tmp_path, fault=None) -> str:
    """`syncd <verb>` through the proxy, held at `step`; there Postgres goes away (by
    default every connection reset, new ones refused), then the switch goes on. Its output."""
    resume = tmp_path / f"resume-{verb}-{step}"
    env = {**os.environ, "SYNCD_POSTGRES__DSN": via, f"SYNCD_{verb.upper()}_HOLD_AT": step,
           f"SYNCD_{verb.upper()}_RESUME_ON": str(resume)}
    proc = subprocess.Popen(syncd_cmd(cfg, verb), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=str(cfg.parent), env=env)
    try:
        assert proc.stdout.readline().strip() == f"holding at {step}"
        (fault or proxy.refuse)()
        resume.touch()
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proxy.heal()
    return f"rc={proc.returncode}\n{out}"


@pytest.mark.parametrize("step", ["started", "verified", "finishing"])
async def test_a_cutover_that_loses_postgres_names_postgres(tmp_path, make_config, pg_dsn, proxy, step):
    p, via = proxy
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        out = switch_cut_off_at(cfg, "cutover", step, p, via, tmp_path)
    assert out.startswith("rc=1"), out
    [line] = [x for x in out.splitlines() if x.startswith("app: ")]
    assert line.startswith("app: UNDONE: Postgres: "), line
    assert "Error:" not in line and "Traceback" not in out, out


@pytest.mark.parametrize("step", ["started", "frozen", "finishing"])
async def test_a_rollback_that_loses_postgres_names_postgres(tmp_path, make_config, pg_dsn, proxy, step):
    p, via = proxy
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        out = switch_cut_off_at(cfg, "rollback", step, p, via, tmp_path)
    assert out.startswith("rc=1"), out
    [line] = [x for x in out.splitlines() if x.startswith("app: ")]
    assert line.startswith(("app: UNDO PENDING: Postgres: ", "app: REFUSED: Postgres: ")), line
    assert "Error:" not in line and "Traceback" not in out, out


async def test_a_rollback_that_cannot_reach_postgres_to_undo_its_freeze_says_the_undo_is_pending(
        tmp_path, make_config, pg_dsn, proxy):
    """Postgres goes away once the rollback has frozen it, and cannot be reached to undo
    the freeze: Postgres stays frozen for the application (its record of the rollback
    open) until the daemon, or `syncd rollback` again, undoes it. The line says UNDO
    PENDING, as `syncd status` calls it CRITICAL; it said UNDONE. No daemon runs the
    source: the line says to start one (it said "SQLite keeps following it")."""
    p, via = proxy
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    await cut_over_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    out = switch_cut_off_at(cfg, "rollback", "frozen", p, via, tmp_path)
    assert out.startswith("rc=1"), out
    [line] = [x for x in out.splitlines() if x.startswith("app: ")]
    assert line.startswith("app: UNDO PENDING: Postgres: "), line
    assert "undone:" not in line and "`syncd rollback` again" in line, line
    assert "SQLite keeps following it" not in line and "`syncd run`" in line, line
    refusal = await postgres_write(pg_dsn, "c")
    assert refusal is not None and "moved back to SQLite by syncd" in refusal, refusal
    again = run_cli(cfg, "rollback", "--dry-run")
    assert "unfroze Postgres, which a rollback left frozen" in again.stdout, again.stdout
    assert await postgres_write(pg_dsn, "c") is None


async def test_a_cutover_whose_postgres_stops_answering_while_it_drains_says_so(tmp_path, make_config, pg_dsn, proxy):
    """Postgres stops answering (the connection hangs) as the cutover waits for the last
    changes: its statement times out within seconds, and the line says Postgres did not
    answer; it claimed the changes "did not reach Postgres within 120 s", a wait that never
    happened, with "()" for a reason."""
    p, via = proxy
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db,
                            postgres={"connect_timeout_seconds": 2, "statement_timeout_seconds": 3})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        out = switch_cut_off_at(cfg, "cutover", "frozen", p, via, tmp_path, fault=p.stall)
    assert out.startswith("rc=1"), out
    [line] = [x for x in out.splitlines() if x.startswith("app: ")]
    assert line.startswith("app: UNDONE: Postgres: timed out"), line
    assert "within 120 s" not in line and "()" not in line, line


async def test_a_cutover_whose_checks_time_out_before_it_starts_names_postgres_once(tmp_path, make_config, pg_dsn):
    """A statement of the cutover's checks before the freeze runs over the statement
    timeout (a session keeps syncd's bookkeeping locked): refused, nothing changed, the
    line naming the source's database and Postgres once."""
    import asyncpg

    db, cfg = await orders_verified_and_stopped(tmp_path, make_config, pg_dsn, postgres={"statement_timeout_seconds": 1})
    holder = await asyncpg.connect(pg_dsn)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE syncd.tables IN ACCESS EXCLUSIVE MODE")
            r = run_cli(cfg, "cutover")
    finally:
        await holder.close()
    assert r.returncode == 1, r.stdout + r.stderr
    [line] = [x for x in r.stdout.splitlines() if x.startswith("app: ")]
    assert line.startswith("app: REFUSED: ") and line.count("Postgres: ") == 1, line
    assert "timed out" in line and "Traceback" not in r.stdout + r.stderr, line


@pytest.mark.parametrize("slots", [0, 1])
async def test_a_cutover_whose_stream_cannot_connect_says_so_without_waiting_out_the_drain(
        tmp_path, make_config, pg_dsn, proxy, slots):
    """No daemon runs, and once the file is frozen Postgres takes `slots` new connections
    and no more (a CONNECTION LIMIT reached; the cutover's own connection stays): the
    stream the cutover runs to bring the last change cannot connect, and within seconds
    the cutover is undone saying so; it waited out its 120 s drain for a stream that never
    started, or, refused at its first connection, was called refused (nothing changed)
    though the file had been frozen."""
    p, via = proxy
    db, cfg = await orders_verified_and_stopped(tmp_path, make_config, pg_dsn)
    a_last_change(db)
    started = time.monotonic()
    out = switch_cut_off_at(cfg, "cutover", "frozen", p, via, tmp_path, fault=lambda: p.refuse_new_after(slots))
    took = time.monotonic() - started
    assert out.startswith("rc=1"), out
    [line] = [x for x in out.splitlines() if x.startswith("app: ")]
    assert line.startswith("app: UNDONE: the last changes cannot reach Postgres: "), line
    assert "cannot connect to" in line and "CONNECTION LIMIT" in line and "undone: " in line, line
    assert "within 120 s" not in line and "retrying" not in line and "Traceback" not in out, out
    assert took < 100, took  # the drain's 120 s were not waited out


async def test_a_cutover_whose_drain_runs_over_the_statement_timeout_waits_for_it(tmp_path, make_config, pg_dsn):
    """The stream the cutover runs to bring the last change connects, but its statements
    run over the statement timeout for a while (an application trigger in Postgres slow
    for half a minute): that is a slow Postgres, not one syncd cannot reach, and the drain
    waits for it. It was undone within seconds, said to be unable to connect."""
    db, cfg = await orders_verified_and_stopped(tmp_path, make_config, pg_dsn, postgres={"statement_timeout_seconds": 2})
    await pg_statements(pg_dsn, """
        CREATE TABLE public.slow_for_now (on_ boolean);
        INSERT INTO public.slow_for_now VALUES (true);
        CREATE FUNCTION public.slow_for_now() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM public.slow_for_now) THEN PERFORM pg_sleep(3); END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER slow_for_now AFTER UPDATE ON app.orders FOR EACH STATEMENT EXECUTE FUNCTION public.slow_for_now();
        ALTER TABLE app.orders ENABLE ALWAYS TRIGGER slow_for_now;""")
    a_last_change(db)

    async def fast_again():
        await asyncio.sleep(30)
        await pg_statements(pg_dsn, "DELETE FROM public.slow_for_now")

    healing = asyncio.create_task(fast_again())
    done = await asyncio.to_thread(run_cli, cfg, "cutover", timeout=180)
    await healing
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cannot connect" not in done.stdout + done.stderr, done.stdout + done.stderr
    [(item,)] = await pg_rows(pg_dsn, "SELECT item FROM app.orders WHERE item LIKE 'a%'")
    assert item == "a2"


@pytest.mark.parametrize("slots", [0, 1])
async def test_a_rollback_whose_stream_cannot_connect_says_so_without_waiting_out_the_drain(
        tmp_path, make_config, pg_dsn, proxy, slots):
    """The rollback's mirror of the cutover's: no daemon runs, and once Postgres is frozen
    it takes `slots` new connections and no more: the rollback is undone within seconds
    saying the last changes cannot reach SQLite, not called refused (nothing changed) nor
    left to wait out its 120 s drain."""
    p, via = proxy
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    await cut_over_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    await pg_rows(pg_dsn, "UPDATE app.orders SET item = 'a2' WHERE item = 'a'")  # the last change, for the drain
    started = time.monotonic()
    out = switch_cut_off_at(cfg, "rollback", "frozen", p, via, tmp_path, fault=lambda: p.refuse_new_after(slots))
    took = time.monotonic() - started
    assert out.startswith("rc=1"), out
    [line] = [x for x in out.splitlines() if x.startswith("app: ")]
    assert line.startswith("app: UNDONE: the last changes cannot reach SQLite: "), line
    assert "cannot connect to" in line and "CONNECTION LIMIT" in line and "undone: " in line, line
    assert "within 120 s" not in line and "retrying" not in line and "Traceback" not in out, out
    assert took < 100, took  # the drain's 120 s were not waited out


async def test_a_switch_whose_checks_postgres_does_not_answer_in_time_says_what_it_waited_for(tmp_path, make_config,
                                                                                               pg_dsn):
    """A session keeps syncd's bookkeeping locked past [postgres] statement_timeout_seconds
    while a dry run of the cutover and of the rollback read it: each line says no answer
    came within that setting and to try again, not a bare "Postgres: timed out"."""
    import asyncio

    import asyncpg

    db = tmp_path / "app.db"
    orders_app(db)
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"postgres": {"statement_timeout_seconds": 1}})
    assert run_cli(cfg, "init").returncode == 0
    holder = await asyncpg.connect(pg_dsn)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE syncd.sources IN ACCESS EXCLUSIVE MODE")
            outs = [await asyncio.to_thread(run_cli, cfg, verb, "--dry-run") for verb in ("cutover", "rollback")]
    finally:
        await holder.close()
    for out in outs:
        assert out.returncode == 1, out.stdout + out.stderr
        [line] = [x for x in out.stdout.splitlines() if x.startswith("app: ")]
        assert line.startswith("app: REFUSED: Postgres: timed out: a statement got no answer within [postgres] "
                               "statement_timeout_seconds"), line
        assert line.endswith("try again"), line
