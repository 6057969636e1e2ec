"""The SQLite file restored from a backup, replaced, or deleted under a running syncd."""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.request

import pytest

from tests.support.app import Writer, create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.pgcluster import free_port
from tests.support.sync import eventually, wait_caught_up


def backup(src, dst) -> None:
    s, d = sqlite3.connect(src), sqlite3.connect(dst)
    s.backup(d)
    s.close()
    d.close()


def source_up(port: int, source: str) -> float | None:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(f'syncd_source_up{{source="{source}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_file_replaced_by_an_older_backup(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=500, journal="delete")
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        Writer(db, seconds=1, seed=1).result()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        backup(db, tmp_path / "backup.db")  # last night's backup...
        Writer(db, seconds=1, seed=2).result()  # ...then a day of changes, all replicated
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        os.replace(tmp_path / "backup.db", db)  # restore: a new inode, an older history
        wait_for(lambda: "re-snapshotting every table" in d.log(), 30, "the restore noticed", d)
        Writer(db, seconds=1, seed=3).result()  # the application goes on from the backup
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


async def test_content_restored_in_place(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=500, journal="wal")
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        backup(db, tmp_path / "backup.db")
        Writer(db, seconds=1, seed=4).result()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        backup(tmp_path / "backup.db", db)  # same inode, older content
        wait_for(lambda: "re-snapshotting every table" in d.log(), 30, "the restore noticed", d)
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


async def test_deleted_file_is_an_error_state_not_a_crash(tmp_path, make_config, pg_dsn):
    db, other = tmp_path / "app.db", tmp_path / "other.db"
    create_items(db, rows=100, journal="delete")
    create_items(other, rows=100)
    port = free_port()
    cfg = make_config([{"name": "app", "path": str(db)}, {"name": "other", "path": str(other)}],
                      metrics_listen=f"127.0.0.1:{port}")
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        os.replace(db, tmp_path / "moved-away.db")
        wait_for(lambda: source_up(port, "app") == 0, 30, "syncd_source_up 0", d)
        wait_for(lambda: f"SQLite file {db} does not exist" in d.log(), 30, "the error logged", d)
        Writer(other, seconds=1, seed=5).result()  # the other source is unaffected
        await wait_caught_up(other, pg_dsn, "other", daemon=d)
        assert d.alive()
        os.replace(tmp_path / "moved-away.db", db)
        wait_for(lambda: source_up(port, "app") == 1, 30, "syncd_source_up 1", d)
        Writer(db, seconds=1, seed=6).result()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "items") == []
    assert await compare_table(str(other), pg_dsn, "other", "items") == []


async def test_a_file_emptied_to_zero_bytes_waits_and_keeps_postgres(tmp_path, make_config, pg_dsn):
    """A truncating restore (`cp backup.db app.db`) leaves the file empty for a moment:
    syncd neither writes its tables into it nor moves Postgres's copies aside; the
    source is down (named) until the database is back, then streams on."""
    db = tmp_path / "app.db"
    create_items(db, rows=100, journal="delete")
    port = free_port()
    cfg = make_config([{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{port}")
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        backup(db, tmp_path / "backup.db")
        with open(db, "wb"):
            pass  # truncated in place, same inode
        wait_for(lambda: source_up(port, "app") == 0, 30, "syncd_source_up 0", d)
        wait_for(lambda: "is empty (0 bytes)" in d.log(), 30, "the error logged", d)
        assert os.path.getsize(db) == 0  # nothing of syncd's written into it
        with open(tmp_path / "backup.db", "rb") as src, open(db, "r+b") as dst:
            dst.write(src.read())  # the copy completes
        wait_for(lambda: source_up(port, "app") == 1, 30, "syncd_source_up 1", d)
        Writer(db, seconds=1, seed=7).result()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        assert "__dropped_" not in d.log()
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


@pytest.mark.parametrize("idle_close", [1, 3600], ids=["closed_for_idleness", "open"])
async def test_another_file_copied_over_in_place_is_loaded_again(tmp_path, make_config, pg_dsn, idle_close):
    """`cp other.db app.db` (same inode: a tenant restored from the wrong backup) brings
    another capture's changelog: streaming it on would mix both files' rows in Postgres.
    The file is taken for the new one it is and loaded again."""
    import shutil

    db, other = tmp_path / "app.db", tmp_path / "other.db"
    for path in (db, other):
        create_items(path, rows=200, journal="delete")  # no -wal file beside the copy
    conn = sqlite3.connect(other)
    conn.execute("UPDATE items SET v = 'the other file ' || id")
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db)}, {"name": "other", "path": str(other)}],
                      sections={"sqlite": {"idle_close_seconds": idle_close}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        await wait_caught_up(other, pg_dsn, "other", daemon=d)
        Writer(other, seconds=1, seed=5).result()  # its changelog runs past app's checkpoint
        time.sleep(idle_close + 2 if idle_close < 60 else 0)
        inode = db.stat().st_ino
        shutil.copyfile(other, db)
        assert db.stat().st_ino == inode
        conn = sqlite3.connect(db)
        conn.execute("UPDATE items SET v = 'after the copy' WHERE id = 1")
        conn.commit()
        conn.close()

        async def equal() -> bool:
            return await compare_table(str(db), pg_dsn, "app", "items") == []

        await eventually(equal, 30, "app's schema holding the copied file's rows, and only them", d)
        assert "re-snapshotting every table" in d.log()
        assert d.stop() == 0


async def test_file_replaced_by_another_database_keeps_the_old_tables_copies(tmp_path, make_config, pg_dsn):
    """A new file (a new capture installation) numbers its tables afresh: its first table
    is no rename of the old file's first table, whose Postgres copy is kept aside with
    its rows, as for any table dropped in SQLite."""
    import asyncpg

    db = tmp_path / "app.db"
    create_items(db, rows=50, journal="delete")
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        other = sqlite3.connect(tmp_path / "new.db")
        other.execute("CREATE TABLE other (x INTEGER PRIMARY KEY)")
        other.execute("INSERT INTO other VALUES (1)")
        other.commit()
        other.close()
        os.replace(tmp_path / "new.db", db)  # another database under the same name
        wait_for(lambda: "table was dropped in SQLite" in d.log() or "was renamed" in d.log(), 30,
                 "the replacement noticed", d)
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert 'table "items" was renamed' not in d.log()
        assert d.stop() == 0
    conn = await asyncpg.connect(pg_dsn)
    try:
        names = [r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'app'")]
        aside = [n for n in names if n.startswith("items__dropped")]
        assert len(aside) == 1, names
        assert await conn.fetchval(f'SELECT count(*) FROM app."{aside[0]}"') == 50
        assert [tuple(r) for r in await conn.fetch('SELECT x FROM app.other')] == [(1,)]
    finally:
        await conn.close()
    assert await compare_table(str(db), pg_dsn, "app", "other") == []
