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

import asyncpg

from syncd.report.backups import identity, live_identity, whose
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


async def test_tenants_cloned_from_one_file_each_get_a_capture_id_of_their_own(tmp_path, make_config, pg_dsn):
    """A fleet started with tenants copied from one file: the file first registered
    keeps its capture id, every copy gets its own (told in the log, naming both), so a
    backup of a copy is never evidence for the original. Copies an older syncd already
    registered under the original's id are told apart the same way at the next start."""
    d = tmp_path / "tenants"
    d.mkdir()
    tenant(d / "acme.db")
    cfg = make_config([{"name": "t_{stem}", "path": str(d / "*.db")}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as daemon:
        await wait_caught_up(d / "acme.db", pg_dsn, "t_acme", daemon=daemon)
        assert daemon.stop() == 0
    original = capture_id(d / "acme.db")
    clones = [f"c{i}" for i in range(6)]
    for name in clones:
        shutil.copyfile(d / "acme.db", d / f"{name}.db")
    # Copies of a file captured by a syncd of another database: no source here has its id.
    shutil.copyfile(d / "acme.db", tmp_path / "template.db")
    conn = sqlite3.connect(tmp_path / "template.db")
    conn.execute("UPDATE _syncd_meta SET value = 'from elsewhere' WHERE key = 'capture_id'")
    conn.commit()
    conn.close()
    copies = [f"t{i}" for i in range(4)]
    for name in copies:
        shutil.copyfile(tmp_path / "template.db", d / f"{name}.db")

    with DaemonProcess(cfg, tmp_path / "syncd.log") as daemon:  # every copy registers at once
        for name in clones + copies:
            await wait_caught_up(d / f"{name}.db", pg_dsn, f"t_{name}", daemon=daemon)
        update(d / "c0.db", {1: "c0's own"})
        await wait_caught_up(d / "c0.db", pg_dsn, "t_c0", daemon=daemon)
        assert daemon.stop() == 0
    ids = [capture_id(d / f"{name}.db") for name in clones]
    assert capture_id(d / "acme.db") == original and original not in ids and len(set(ids)) == len(clones)
    log = daemon.log()
    for name in clones:
        assert f"the SQLite file of t_{name} carries the capture id of source t_acme" in log
    for name in ["acme", *clones, *copies]:
        assert await compare_table(str(d / f"{name}.db"), pg_dsn, f"t_{name}", "items") == []
    ids += [capture_id(d / f"{name}.db") for name in copies]  # the first registered kept it
    assert len(set(ids)) == len(ids) and "from elsewhere" in ids
    assert log.count("carries the capture id of source t_t") == len(copies) - 1

    shutil.copyfile(d / "c0.db", tmp_path / "c0-backup.db")
    live = {f"t_{n}": live_identity(d / f"{n}.db", 2000) for n in ["acme", *clones]}
    assert whose(identity(tmp_path / "c0-backup.db"), "t_c0", live, named=False) is None
    assert whose(identity(tmp_path / "c0-backup.db"), "t_acme", live, named=False).of == "t_c0"

    # As an older syncd left a copy: registered under the original's capture id.
    conn = sqlite3.connect(d / "c1.db")
    conn.execute("UPDATE _syncd_meta SET value = ? WHERE key = 'capture_id'", (original,))
    conn.commit()
    conn.close()
    pg = await asyncpg.connect(pg_dsn)
    await pg.execute("UPDATE syncd.sources SET capture_id = $1 WHERE source = 't_c1'", original)
    await pg.close()
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as daemon:
        await wait_caught_up(d / "c1.db", pg_dsn, "t_c1", daemon=daemon)
        await wait_caught_up(d / "acme.db", pg_dsn, "t_acme", daemon=daemon)
        assert daemon.stop() == 0
    assert capture_id(d / "acme.db") == original and capture_id(d / "c1.db") not in (original, ids[1])
    assert daemon.log().count("carries the capture id of source") == 1


async def test_a_tenant_file_renamed_while_streamed_is_said_renamed_not_copied(tmp_path, make_config, pg_dsn):
    """`mv acme.db acme-corp.db` while the daemon streams it: the file under its new name
    is another source, given a capture id of its own and loaded again, and the old name's
    source is missing. The warning says the old source's file is gone and how to forget
    it, where it called the file "a copy", sending the operator to look for the original."""
    d = tmp_path / "tenants"
    d.mkdir()
    tenant(d / "acme.db")
    tenant(d / "initech.db")
    cfg = make_config([{"name": "t_{stem}", "path": str(d / "*.db")}],
                      sections={"stream": {"discover_interval_seconds": 0.2}, "verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as daemon:
        await wait_caught_up(d / "acme.db", pg_dsn, "t_acme", daemon=daemon)
        await wait_caught_up(d / "initech.db", pg_dsn, "t_initech", daemon=daemon)
        (d / "acme.db").rename(d / "acme-corp.db")
        await wait_caught_up(d / "acme-corp.db", pg_dsn, "t_acme-corp", daemon=daemon)
        daemon.wait_log(f"the SQLite file of t_acme-corp carries the capture id of source t_acme, whose file "
                        f"{d / 'acme.db'} is gone (renamed or moved to this name, or copied here and deleted): gave "
                        "it a capture id of its own; re-snapshotting every table of t_acme-corp from this file; "
                        "t_acme stays shown as missing: if its file is gone for good, "
                        "`syncd uninstall --forget --source t_acme`")
        assert "(a copy of its file)" not in daemon.log()
        assert daemon.stop() == 0
    assert await compare_table(str(d / "acme-corp.db"), pg_dsn, "t_acme-corp", "items") == []
