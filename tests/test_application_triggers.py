"""The application's own triggers cannot keep a change from being captured. SQLite fires
a table's triggers newest first, and RAISE(IGNORE) in one ends the row's remaining
trigger programs while the change itself stays: an application trigger created after
syncd's would silence them. syncd makes its triggers anew so they fire first, and
loads the table again, since changes ended until then may not have been recorded."""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.sync import eventually, table_states, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, wait_back

AUDIT = """
CREATE TABLE audit (at INTEGER PRIMARY KEY, what TEXT);
CREATE TRIGGER audit_insert AFTER INSERT ON items BEGIN
    SELECT RAISE(IGNORE) WHERE NEW.v NOT LIKE 'audited%';
    INSERT INTO audit (what) VALUES ('insert ' || NEW.id);
END;
CREATE TRIGGER audit_update AFTER UPDATE ON items BEGIN SELECT RAISE(IGNORE); END;
CREATE TRIGGER audit_delete AFTER DELETE ON items BEGIN SELECT RAISE(IGNORE); END;
"""


def trigger_order(conn: sqlite3.Connection) -> list[str]:
    """The triggers on items, as SQLite fires them (newest place in sqlite_master first)."""
    return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' "
                                       "AND tbl_name = 'items' ORDER BY rowid DESC")]


async def test_an_application_trigger_ending_with_raise_ignore_cannot_silence_capture(
        app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        PRAGMA journal_mode=wal;
        CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO items VALUES (1, 'one'), (2, 'two');
    """)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        # In a BEFORE trigger RAISE(IGNORE) skips the change itself: nothing to re-arm or reload.
        # Nor in one whose RAISE(ABORT) undoes the change, its message saying "failed" or not.
        conn.execute("CREATE TRIGGER skip_drafts BEFORE INSERT ON items BEGIN "
                     "SELECT RAISE(IGNORE) WHERE NEW.v = 'draft'; END")
        conn.execute("CREATE TRIGGER check_v AFTER INSERT ON items BEGIN "
                     "SELECT RAISE(ABORT, 'failed check, ignored row') WHERE NEW.v = 'bad'; END")
        conn.execute("INSERT INTO items VALUES (10, 'draft'), (11, 'kept')")
        with pytest.raises(sqlite3.IntegrityError, match="failed check"):
            conn.execute("INSERT INTO items VALUES (12, 'bad')")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert "re-snapshotting" not in d.log() and trigger_order(conn)[:2] == ["check_v", "skip_drafts"]
        conn.executescript(AUDIT)
        # At once, before syncd can have looked: these are ended before syncd's triggers run.
        conn.execute("UPDATE items SET v = 'changed' WHERE id = 1")
        conn.execute("INSERT INTO items VALUES (3, 'three')")
        conn.execute("DELETE FROM items WHERE id = 2")
        d.wait_log('the application\'s trigger "audit_', timeout=30)
        wait_for(lambda: trigger_order(conn)[0].startswith("_syncd"), 30, "syncd's triggers firing first", d)
        # From now on, captured as they happen.
        conn.execute("INSERT INTO items VALUES (4, 'four'), (5, 'audited five')")
        conn.execute("UPDATE items SET v = 'again' WHERE id = 3")
        conn.execute("DELETE FROM items WHERE id = 4")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert (await table_states(pg_dsn, "app"))["items"][0] == "streaming"
        assert await compare_table(str(app_db), pg_dsn, "app", "items") == []
        assert conn.execute("SELECT what FROM audit").fetchall() == [("insert 5",)]  # the application's own work
        # RAISE(FAIL) ends the statement and keeps the row it changed: the same danger.
        conn.execute("CREATE TRIGGER limit_update AFTER UPDATE ON items BEGIN "
                     "SELECT RAISE(FAIL, 'too long') WHERE length(NEW.v) > 20; END")
        with pytest.raises(sqlite3.IntegrityError, match="too long"):
            conn.execute("UPDATE items SET v = 'longer than twenty characters' WHERE id = 1")
        assert conn.execute("SELECT v FROM items WHERE id = 1").fetchone()[0] == "longer than twenty characters"
        d.wait_log('the application\'s trigger "limit_update"', timeout=30)
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        await eventually(lambda: _equal(app_db, pg_dsn), 60, "the table loaded again", d)
        assert d.stop() == 0
        log = d.log()
    assert "re-snapshotting the table" in log
    # Steady: one re-creation each, not one per look.
    assert log.count('the application\'s trigger "audit_') == 1, log


async def _equal(db, dsn) -> bool:
    return await compare_table(str(db), dsn, "app", "items") == []


async def test_the_way_back_keeps_syncd_triggers_firing_first_so_the_rollback_goes_through(tmp_path, make_config,
                                                                                            pg_dsn):
    """The way back lifts the application's triggers off a table while it writes it, and
    creates them again: in their old place, behind syncd's, or an AFTER trigger ending
    with RAISE(IGNORE) would fire first, the rollback's final verification would find
    capture not to be trusted and undo every rollback tried, and SQLite would silence
    the captures of the application's changes after one."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("""
        PRAGMA journal_mode=wal;
        CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO items VALUES (1, 'one'), (2, 'two');
        CREATE TABLE audit (at INTEGER PRIMARY KEY, what TEXT);
        CREATE TRIGGER audit_update AFTER UPDATE ON items BEGIN
            SELECT RAISE(IGNORE) WHERE NEW.v LIKE 'quiet%';
            INSERT INTO audit (what) VALUES ('update ' || NEW.id);
        END;
    """)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        wait_for(lambda: trigger_order(conn)[0].startswith("_syncd"), 30, "syncd's triggers firing first", d)
        await cut_over(cfg, db, pg_dsn, daemon=d)
        order = [n for n in trigger_order(conn) if not n.startswith("_syncd_freeze")]
        pg = await asyncpg.connect(pg_dsn)
        try:
            await pg.execute("UPDATE app.items SET v = 'from postgres' WHERE id = 1")
            await pg.execute("INSERT INTO app.items VALUES (3, 'three')")
        finally:
            await pg.close()
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert [n for n in trigger_order(conn) if not n.startswith("_syncd_freeze")] == order
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        conn.execute("UPDATE items SET v = 'quiet change' WHERE id = 2")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await compare_table(str(db), pg_dsn, "app", "items") == []
        assert "re-snapshotting" not in d.log()


async def audit_trigger_through_the_way_back(tmp_path, make_config, pg_dsn: str, trigger: str, on: str) -> None:
    """The application's audit trigger `trigger` (AFTER INSERT ON `on`, the table deals as
    the trigger spells it) writes no audit row for a row the way back brings from
    Postgres (the application on Postgres writes its audit rows itself, or not at all);
    it stays on the table, and the rollback goes through."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript(f"""
        PRAGMA journal_mode=wal;
        CREATE TABLE deals (id INTEGER PRIMARY KEY, title TEXT);
        CREATE TABLE audit (id INTEGER PRIMARY KEY, deal_id INTEGER, what TEXT);
        CREATE TRIGGER {trigger} AFTER INSERT ON {on} BEGIN
            INSERT INTO audit (deal_id, what) VALUES (NEW.id, 'created in SQLite');
        END;
        INSERT INTO deals (title) VALUES ('first');
    """)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            await pg.execute("INSERT INTO app.deals (id, title) VALUES (2, 'from postgres')")
        finally:
            await pg.close()
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert conn.execute("SELECT deal_id, what FROM audit ORDER BY id").fetchall() == [(1, "created in SQLite")]
        assert await compare_table(str(db), pg_dsn, "app", "audit") == []
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name = ?", (trigger,)).fetchall()
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr


async def test_a_trigger_naming_its_table_in_another_case_does_not_run_again_on_the_way_back(tmp_path, make_config,
                                                                                              pg_dsn):
    """SQLite keeps a trigger's table as its CREATE TRIGGER spelled it ("ON Deals" for
    the table deals): the way back lifts it off the table all the same, so the rows it
    brings from Postgres do not make the application's trigger write SQLite again."""
    await audit_trigger_through_the_way_back(tmp_path, make_config, pg_dsn, "deals_audit", "Deals")


async def test_uninstall_leaves_an_application_trigger_whose_name_starts_like_syncds(tmp_path, make_config, pg_dsn):
    """syncd's capture triggers are named _syncd_t<table id>_<kind>. An application
    trigger whose name merely begins the same way (_syncd_touch) is the application's:
    `syncd uninstall` removes syncd's triggers and leaves it working."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("""
        PRAGMA journal_mode=wal;
        CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT, touched TEXT);
        CREATE TRIGGER _syncd_touch AFTER UPDATE OF v ON items BEGIN
            UPDATE items SET touched = 'yes' WHERE id = NEW.id;
        END;
        INSERT INTO items VALUES (1, 'a', NULL);
    """)
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    r = run_cli(cfg, "uninstall")
    assert r.returncode == 0 and "removed 4 trigger(s)" in r.stdout, r.stdout + r.stderr
    assert [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")] == ["_syncd_touch"]
    conn.execute("UPDATE items SET v = 'b' WHERE id = 1")
    assert conn.execute("SELECT touched FROM items").fetchall() == [("yes",)]



async def test_uninstall_removes_the_triggers_an_earlier_release_of_syncd_made(tmp_path, make_config, pg_dsn):
    """An earlier release of syncd also made _syncd_t<table id>_rid and _ridu triggers
    (later releases make them no more, and leave those a file already has). They write to
    syncd's changelog: `syncd uninstall` removes them with it, and the application's
    inserts go on working."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("""
        PRAGMA journal_mode=wal;
        CREATE TABLE items (code TEXT PRIMARY KEY, v TEXT);
        INSERT INTO items VALUES ('a', 'x');
    """)
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    tid = conn.execute("SELECT tid FROM _syncd_tables WHERE name = 'items'").fetchone()[0]
    for kind, event in (("rid", "INSERT"), ("ridu", "UPDATE")):
        conn.execute(f'CREATE TRIGGER "_syncd_t{tid}_{kind}" BEFORE {event} ON items BEGIN '
                     f"INSERT INTO _syncd_changelog(tid, op, k0) SELECT {tid}, 3, code FROM items "
                     f"WHERE rowid = NEW.rowid AND code IS NOT NEW.code COLLATE BINARY; END")
    r = run_cli(cfg, "uninstall")
    assert r.returncode == 0, r.stdout + r.stderr
    assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall() == []
    conn.execute("INSERT INTO items VALUES ('b', 'y')")
    conn.execute("UPDATE items SET v = 'z' WHERE code = 'a'")
    assert conn.execute("SELECT code, v FROM items ORDER BY code").fetchall() == [("a", "z"), ("b", "y")]

async def test_a_capture_suspension_leaves_an_application_trigger_whose_name_starts_like_syncds(outage, tmp_path):
    """Capture suspended to protect the disk ([sqlite] max_changelog_mb) drops syncd's
    capture triggers only: the application's _syncd_touch stays and keeps working."""
    from tests.conftest import FAST_FAILOVER, write_config

    proxy, dsn = outage
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("""
        PRAGMA journal_mode=wal;
        CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT, touched TEXT);
        CREATE TRIGGER _syncd_touch AFTER UPDATE OF v ON items BEGIN
            UPDATE items SET touched = 'yes' WHERE id = NEW.id;
        END;
        INSERT INTO items VALUES (0, 'a', NULL);
    """)
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}],
                       sections={**FAST_FAILOVER, "sqlite": {"max_changelog_mb": 0.25}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        wait_for(lambda: "every table is streaming" in d.log(), 60, "the first load", d)
        proxy.refuse()
        conn.execute("INSERT INTO items VALUES (1, 'b', NULL)")  # work, so the idle pipeline asks Postgres
        d.wait_log("Postgres unreachable")
        for first in range(2, 40_002, 2_000):  # about 0.8 MB of changelog
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO items (id, v) VALUES (?, 'x')", [(i,) for i in range(first, first + 2_000)])
            conn.execute("COMMIT")
        d.wait_log("CAPTURE SUSPENDED", timeout=30)
        assert d.stop() == 0
    assert [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")] == ["_syncd_touch"]
    conn.execute("UPDATE items SET v = 'c' WHERE id = 0")
    assert conn.execute("SELECT touched FROM items WHERE id = 0").fetchall() == [("yes",)]


async def test_an_application_trigger_whose_name_starts_like_syncds_does_not_run_again_on_the_way_back(
        tmp_path, make_config, pg_dsn):
    """The way back lifts the application's triggers off a table while it writes the rows
    Postgres holds; one named _syncd_audit is the application's too (syncd's own are
    _syncd_t<id>_<kind> and _syncd_freeze_<n>_<op>), so it writes no second audit row."""
    await audit_trigger_through_the_way_back(tmp_path, make_config, pg_dsn, "_syncd_audit", "deals")


async def test_an_application_trigger_whose_name_starts_like_syncds_cannot_silence_capture(
        app_db, make_config, pg_dsn, tmp_path):
    """An application trigger ending with RAISE(IGNORE), created after syncd's, is caught
    whatever its name: one named _syncd_trail_update is the application's, not syncd's
    (_syncd_t<table id>_<kind>)."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        PRAGMA journal_mode=wal;
        CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO items VALUES (1, 'one'), (2, 'two');
    """)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("CREATE TRIGGER _syncd_trail_update AFTER UPDATE ON items BEGIN SELECT RAISE(IGNORE); END")
        conn.execute("UPDATE items SET v = 'changed' WHERE id = 1")  # ended before syncd's triggers run
        d.wait_log('the application\'s trigger "_syncd_trail_update"', timeout=30)
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        await eventually(lambda: _equal(app_db, pg_dsn), 60, "the table loaded again", d)
        conn.execute("UPDATE items SET v = 'again' WHERE id = 2")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await compare_table(str(app_db), pg_dsn, "app", "items") == []
        assert d.stop() == 0
