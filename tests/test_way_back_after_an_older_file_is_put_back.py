"""After the cutover, an older copy of the SQLite file put back in its place (a backup
restored, the daemon stopped or running) lacks changes Postgres has already let go of:
the way back knows it from the position the file holds, and copies every table again
from Postgres instead of going on from there, so SQLite ends equal to Postgres."""

from __future__ import annotations

import os
import sqlite3

from tests.support.app import create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import pg_statements
from tests.support.way_back import backup_and_config, cut_over, wait_back

CHANGES = ("INSERT INTO app.items (id, v, n) SELECT i, 'pg' || i, i FROM generate_series(100, 149) i",
           "UPDATE app.items SET v = 'changed in Postgres' WHERE id <= 10",
           "DELETE FROM app.items WHERE id BETWEEN 11 AND 15")


def put_in_place(src, db) -> None:
    """With the daemon stopped: `src` restored as the file `db` (its -wal and -shm gone)."""
    for side in db.parent.glob(f"{db.name}-*"):
        side.unlink()
    os.replace(src, db)


async def backup_put_back_is_copied_again(cfg, db, pg_dsn, tmp_path) -> None:
    """With the daemon stopped, backups/app-latest.db put back as `db`: the next daemon
    takes it for older, copies every table again, and SQLite ends equal to Postgres."""
    put_in_place(tmp_path / "backups" / "app-latest.db", db)
    with DaemonProcess(cfg, tmp_path / "second.log") as d:
        d.wait_log("holds less than the way back had written into it")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


def copy_over(src, dst) -> None:
    """Put `src`'s content into the file `dst` as SQLite's backup does (in place)."""
    s, d = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        s.backup(d)
    finally:
        s.close()
        d.close()


async def test_a_backup_from_before_the_cutover_put_back_is_copied_again(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=20, journal="wal")
    cfg = backup_and_config(make_config, tmp_path, db)  # backups/app-latest.db: from before the cutover
    with DaemonProcess(cfg, tmp_path / "first.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_statements(pg_dsn, *CHANGES)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    await backup_put_back_is_copied_again(cfg, db, pg_dsn, tmp_path)
    with DaemonProcess(cfg, tmp_path / "third.log") as d:  # copied once: not taken for older again
        d.wait_log("syncd running")
        await pg_statements(pg_dsn, "UPDATE app.items SET n = n + 1 WHERE id = 1")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
        assert "holds less" not in d.log()
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


async def copy_older_than_postgres(cfg, db, pg_dsn, d):
    """With the daemon running: cut over, copy the file (after the cutover: it holds the
    way back's position), change Postgres and wait until the file has the changes. The
    copy lacks them."""
    await cut_over(cfg, db, pg_dsn, daemon=d)
    await wait_back(cfg, db, pg_dsn, daemon=d)
    older = db.parent / "older.db"
    copy_over(db, older)
    await pg_statements(pg_dsn, *CHANGES)
    await wait_back(cfg, db, pg_dsn, daemon=d)
    return older


async def test_a_copy_put_back_while_the_daemon_runs_is_copied_again(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=20, journal="wal")
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        older = await copy_older_than_postgres(cfg, db, pg_dsn, d)
        copy_over(older, db)
        await pg_statements(pg_dsn, "UPDATE app.items SET n = n + 1 WHERE id = 1")
        d.wait_log("holds less than the way back had written into it")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


async def older_copy_put_back_with_no_daemon(tmp_path, make_config, pg_dsn, db):
    """copy_older_than_postgres, the daemon stopped, then the copy put back in `db`."""
    create_items(db, rows=20, journal="wal")
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        older = await copy_older_than_postgres(cfg, db, pg_dsn, d)
        assert d.stop() == 0
    copy_over(older, db)
    return cfg


async def test_a_rollback_with_no_daemon_running_brings_an_older_copy_up_to_postgres(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    cfg = await older_copy_put_back_with_no_daemon(tmp_path, make_config, pg_dsn, db)
    r = run_cli(cfg, "rollback")
    assert r.returncode == 0, r.stdout + r.stderr
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


async def test_a_backup_from_before_the_cutover_put_back_before_postgres_changed_is_copied_again(
        tmp_path, make_config, pg_dsn):
    """Nothing pruned yet (no write in Postgres since the cutover): the backup still lacks
    what the application wrote into SQLite between the backup and the cutover. Before, it
    was taken as the file at the cutover, and a rollback then left those rows behind."""
    db = tmp_path / "app.db"
    create_items(db, rows=20, journal="wal")
    cfg = backup_and_config(make_config, tmp_path, db)  # backups/app-latest.db: taken now
    conn = sqlite3.connect(db)
    conn.execute("UPDATE items SET v = 'written after the backup' WHERE id <= 5")
    conn.execute("DELETE FROM items WHERE id = 20")
    conn.commit()
    conn.close()
    with DaemonProcess(cfg, tmp_path / "first.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    await backup_put_back_is_copied_again(cfg, db, pg_dsn, tmp_path)


async def test_the_copy_an_older_one_replaced_put_back_in_its_turn_is_copied_again(tmp_path, make_config, pg_dsn):
    """The operator puts a backup in place of the file, then the file it replaced back (the
    wrong one restored). That file had committed a step the daemon had not pruned behind
    yet (killed there): its count was as far as the one the backup's copying again had
    reached since, so it was taken as current, and the changes pruned meanwhile, which it
    lacks, never reached it."""
    import asyncpg

    from tests.support.sync import eventually
    from tests.support.way_back import applied_but_unpruned, way_back_changelog

    db = tmp_path / "app.db"
    create_items(db, rows=20, journal="wal")
    cfg = backup_and_config(make_config, tmp_path, db)  # backups/app-latest.db: from before the cutover
    with DaemonProcess(cfg, tmp_path / "first.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    await pg_statements(pg_dsn, CHANGES[0])
    conn = await asyncpg.connect(pg_dsn)
    try:
        async with conn.transaction():  # its prune waits behind these row locks; its reads do not
            await conn.execute(f"SELECT 1 FROM {await way_back_changelog(pg_dsn)} FOR UPDATE")
            with DaemonProcess(cfg, tmp_path / "second.log") as d:
                await eventually(lambda: applied_but_unpruned(db, pg_dsn), timeout=30,
                                 what="an apply committed in SQLite and not yet pruned", daemon=d)
                copy_over(db, tmp_path / "replaced.db")  # the file, one step past what was pruned
                d.kill9()
                await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))")
    finally:
        await conn.close()
    put_in_place(tmp_path / "backups" / "app-latest.db", db)  # the wrong one restored
    with DaemonProcess(cfg, tmp_path / "third.log") as d:
        d.wait_log("holds less than the way back had written into it")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        await pg_statements(pg_dsn, *CHANGES[1:])  # applied to it and pruned
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    put_in_place(tmp_path / "replaced.db", db)  # the file it replaced, put back
    with DaemonProcess(cfg, tmp_path / "fourth.log") as d:
        d.wait_log("syncd running")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


async def test_status_and_the_report_name_an_older_copy_put_back_with_no_daemon_running(tmp_path, make_config,
                                                                                        pg_dsn):
    """No daemon to copy it again yet: `syncd status` and `syncd report` count the tables
    owed to the file, and do not count it caught up because Postgres holds no change
    after the position the copy holds (those it lacks were let go of)."""
    import json

    db = tmp_path / "app.db"
    cfg = await older_copy_put_back_with_no_daemon(tmp_path, make_config, pg_dsn, db)
    r = run_cli(cfg, "status", "--json")
    src = json.loads(r.stdout)["sources"][0]
    problems = " ".join(p["message"] for p in src["problems"])
    assert r.returncode == 2 and "older copy" in problems and "1 table(s) to copy again" in problems, r.stdout
    assert src["pending_changes"] is None, src
    r = run_cli(cfg, "report")
    assert "app: lag unknown, the SQLite file is an older copy" in r.stdout, r.stdout
