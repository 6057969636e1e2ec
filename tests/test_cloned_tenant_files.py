"""A tenant's file cloned from another tenant's (`cp a.db b.db`: a new tenant provisioned
from an existing one) while syncd captures the first: both files carry one capture id.
When the clone is later overwritten in place by a fresh copy of the original (the tenant
reset to it, or restored from the wrong backup), syncd must see another file's history
and load it again, as it does for a file with another capture id: streaming on from its
own position would apply the original's later changes on top of the clone's rows in
Postgres and skip the ones before, with nothing said."""

from __future__ import annotations

import shutil
import sqlite3
import time

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import capture_id, changelog_max, wait_caught_up


def tenant(path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=delete")  # nothing beside the file for a copy to miss
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"seed {i}") for i in range(10)])
    conn.commit()
    conn.close()


def update(path, changes: dict[int, str]) -> None:
    for key, value in changes.items():
        conn = sqlite3.connect(path, timeout=5)
        conn.execute("UPDATE items SET v = ? WHERE id = ?", (value, key))
        conn.commit()
        conn.close()


async def test_a_clone_overwritten_by_its_original_is_loaded_again(tmp_path, make_config, pg_dsn):
    d = tmp_path / "tenants"
    d.mkdir()
    original, clone = d / "acme.db", d / "globex.db"
    tenant(original)
    cfg = make_config([{"name": "t_{stem}", "path": str(d / "*.db")}],
                      sections={"stream": {"discover_interval_seconds": 0.5}, "verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as daemon:
        await wait_caught_up(original, pg_dsn, "t_acme", daemon=daemon)
        shutil.copyfile(original, clone)  # a new tenant, cloned
        await wait_caught_up(clone, pg_dsn, "t_globex", daemon=daemon)
        update(clone, {i: f"globex's own {i}" for i in range(3)})
        await wait_caught_up(clone, pg_dsn, "t_globex", daemon=daemon)
        update(original, {i: f"acme later {i}" for i in range(8)})
        await wait_caught_up(original, pg_dsn, "t_acme", daemon=daemon)
        assert changelog_max(original) > changelog_max(clone)

        inode = clone.stat().st_ino
        shutil.copyfile(original, clone)  # globex reset to acme's file, in place
        assert clone.stat().st_ino == inode and capture_id(clone) == capture_id(original)
        time.sleep(2)  # polled meanwhile
        conn = sqlite3.connect(clone)
        conn.execute("INSERT INTO items VALUES (100, 'globex after the reset')")
        conn.commit()
        conn.close()
        await wait_caught_up(clone, pg_dsn, "t_globex", daemon=daemon)
        assert daemon.stop() == 0
    assert await compare_table(str(clone), pg_dsn, "t_globex", "items") == []
    assert await compare_table(str(original), pg_dsn, "t_acme", "items") == []
