"""`syncd rollback` of a source never cut over whose SQLite file is gone meets an open
switch as it does with the file there: a cutover killed before finishing is undone (its
record closed, so Postgres takes the application's writes again), and a cutover still
running refuses the rollback."""

from __future__ import annotations

import asyncpg

from tests.support.daemon import DaemonProcess, held_at, run_cli
from tests.support.sync import pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config, orders_app

OPEN = "SELECT kind, state FROM syncd.switches WHERE state IN ('started', 'frozen')"


def _set_up(tmp_path, make_config):
    db = tmp_path / "app.db"
    orders_app(db)
    return db, backup_and_config(make_config, tmp_path, db)


async def _write_postgres(dsn: str) -> str | None:
    """A write to the source's table in Postgres (a key of its own): None when it went in, else the error."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO app.orders (id, item) VALUES (1000 + (SELECT count(*) FROM app.orders), 'x')")
        return None
    except asyncpg.PostgresError as e:
        return str(e)
    finally:
        await conn.close()


def _remove(db) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)


async def _caught_up_and_verified(db, cfg, pg_dsn) -> None:
    with DaemonProcess(cfg, db.parent / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        assert d.stop() == 0


async def test_a_cutover_killed_before_finishing_is_undone_by_the_rollback_of_a_gone_file(
        tmp_path, make_config, pg_dsn):
    db, cfg = _set_up(tmp_path, make_config)
    await _caught_up_and_verified(db, cfg, pg_dsn)
    with held_at(cfg, "cutover", "verified") as proc:
        proc.kill()  # frozen, drained and verified; the switch itself never happened
        proc.wait(10)
    assert await pg_rows(pg_dsn, OPEN) == [("cutover", "frozen")]
    assert await _write_postgres(pg_dsn) is not None, "the open cutover's guard lets writes in"
    _remove(db)
    r = run_cli(cfg, "rollback")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("app: not cut over (never cut over); nothing to do"), r.stdout
    assert "closed the record of a cutover" in r.stdout, r.stdout
    assert await pg_rows(pg_dsn, OPEN) == []
    assert await pg_rows(pg_dsn, "SELECT direction FROM syncd.sources") == [("to_postgres",)]
    refused = await _write_postgres(pg_dsn)
    assert refused is None, refused


async def test_a_cutover_still_running_refuses_the_rollback_of_a_gone_file(tmp_path, make_config, pg_dsn):
    db, cfg = _set_up(tmp_path, make_config)
    await _caught_up_and_verified(db, cfg, pg_dsn)
    with held_at(cfg, "cutover", "verified"):
        _remove(db)
        r = run_cli(cfg, "rollback")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "app: REFUSED" in r.stdout and "a cutover or rollback of this source is already running" in r.stdout, \
            r.stdout
        assert await pg_rows(pg_dsn, OPEN) == [("cutover", "frozen")]


async def test_a_file_there_but_unreadable_keeps_the_open_cutovers_guard(tmp_path, make_config, pg_dsn):
    """Only a file that is not there is taken for gone: one that cannot be read (being
    replaced, damaged) may still be the frozen truth, and its cutover's guard is what
    keeps the application out of Postgres meanwhile."""
    db, cfg = _set_up(tmp_path, make_config)
    await _caught_up_and_verified(db, cfg, pg_dsn)
    with held_at(cfg, "cutover", "verified") as proc:
        proc.kill()
        proc.wait(10)
    _remove(db)  # and in its place, a copy still being written
    db.write_bytes(b"half of a copy, not yet a database" * 100)
    r = run_cli(cfg, "rollback")
    assert r.returncode != 0, r.stdout + r.stderr
    assert "gone" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert await pg_rows(pg_dsn, OPEN) == [("cutover", "frozen")]
    assert await _write_postgres(pg_dsn) is not None, "the guard was dropped while SQLite may still be the truth"
