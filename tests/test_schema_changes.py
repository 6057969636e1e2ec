"""Schema changes while syncd runs: added columns and tables are followed (renames and
drops too: see test_application_ddl.py); a change syncd cannot read for sure pauses the
table with a clear message and loses nothing; a table rebuilt behind syncd's back gets
its capture re-armed and is re-snapshotted."""

from __future__ import annotations

import asyncio
import sqlite3

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.sync import eventually, pg_rows, table_states, wait_caught_up

PAUSED_OK = ("streaming", "refused", "paused")


def app(path):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript("""
        CREATE TABLE deals (id INTEGER PRIMARY KEY, title TEXT, amount REAL);
        CREATE TABLE contacts (id INTEGER PRIMARY KEY, name TEXT, phone TEXT);
    """)
    conn.executemany("INSERT INTO deals VALUES (?, ?, ?)", [(i, f"deal {i}", i * 100.0) for i in range(1, 101)])
    conn.executemany("INSERT INTO contacts VALUES (?, ?, ?)", [(i, f"c{i}", f"555-{i}") for i in range(1, 51)])
    return conn


async def test_add_column_and_new_table_are_followed(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = app(db)
    cfg = make_config([{"name": "crm", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        conn.execute("ALTER TABLE deals ADD COLUMN stage TEXT DEFAULT 'lead'")
        conn.execute("ALTER TABLE deals ADD COLUMN probability REAL")
        conn.execute("UPDATE deals SET stage = 'won', probability = 1.0 WHERE id <= 10")
        conn.execute("CREATE TABLE products (sku TEXT PRIMARY KEY, price NUMERIC)")
        conn.execute("INSERT INTO products VALUES ('A-1', 9.99), ('B-2', 120)")
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        conn.execute("INSERT INTO products VALUES ('C-3', 1)")
        conn.execute("INSERT INTO deals (id, title) VALUES (1000, 'after the change')")
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        assert d.stop() == 0
        assert "column(s) added in SQLite, added in Postgres too: stage, probability" in d.log()
    for t in ("deals", "products", "contacts"):
        assert await compare_table(str(db), pg_dsn, "crm", t) == [], t
    rows = await pg_rows(pg_dsn, "SELECT stage FROM crm.deals WHERE id IN (1, 50, 1000) ORDER BY id")
    assert [r[0] for r in rows] == ["won", "lead", "lead"]


async def test_added_columns_give_old_rows_what_sqlite_reads(tmp_path, make_config, pg_dsn):
    """Rows a column was added to read a value SQLite computes from the default's text,
    which for some literals is not what rows inserted since store: then Postgres's
    DEFAULT cannot fill them, and the table is copied again instead."""
    db = tmp_path / "app.db"
    conn = app(db)
    cfg = make_config([{"name": "crm", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        conn.execute("ALTER TABLE deals ADD COLUMN code TEXT DEFAULT 0x7fffffffffffffff")  # old rows: its text
        conn.execute("ALTER TABLE contacts ADD COLUMN score REAL DEFAULT -0.0")  # every row: 0.0
        conn.execute("ALTER TABLE contacts ADD COLUMN tier INTEGER DEFAULT 3")
        conn.execute("ALTER TABLE contacts ADD COLUMN tag TEXT AS ('c-' || id)")  # computed in the old rows too
        conn.execute("INSERT INTO deals (id, title) VALUES (1000, 'after the change')")
        conn.execute("INSERT INTO contacts (id, name) VALUES (1000, 'after the change')")
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        assert d.stop() == 0
        assert 'reloading the table' in d.log() and "'0x7fffffffffffffff'" in d.log()
    for t in ("deals", "contacts"):
        assert await compare_table(str(db), pg_dsn, "crm", t) == [], t
    rows = await pg_rows(pg_dsn, "SELECT code FROM crm.deals WHERE id IN (1, 1000) ORDER BY id")
    assert [r[0] for r in rows] == ["0x7fffffffffffffff", "9223372036854775807"]
    rows = await pg_rows(pg_dsn, "SELECT float8send(score), tier, tag FROM crm.contacts WHERE id IN (1, 1000) "
                                 "ORDER BY id")
    assert [(bytes(r[0]).hex(), r[1], r[2]) for r in rows] == [("0000000000000000", 3, "c-1"),
                                                               ("0000000000000000", 3, "c-1000")]  # +0.0, never -0


async def test_a_change_syncd_cannot_read_pauses_until_resync(tmp_path, make_config, pg_dsn):
    """A rebuild that reorders the columns could be renames or drops and adds: syncd
    cannot tell, so the table pauses (its changes stay queued, other tables go on)
    until the operator rebuilds it from SQLite."""
    db = tmp_path / "app.db"
    conn = app(db)
    cfg = make_config([{"name": "crm", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        conn.executescript("""
            BEGIN;
            CREATE TABLE contacts_new (phone TEXT, id INTEGER PRIMARY KEY, label TEXT);
            INSERT INTO contacts_new SELECT phone, id, name FROM contacts;
            DROP TABLE contacts;
            ALTER TABLE contacts_new RENAME TO contacts;
            COMMIT;
        """)
        conn.execute("UPDATE contacts SET label = 'queued while paused' WHERE id = 1")
        conn.execute("INSERT INTO deals VALUES (500, 'other tables go on', 1)")
        await eventually(lambda: _state_is(pg_dsn, "crm", "contacts", "paused"), 30, "pause", d)
        await wait_caught_up(db, pg_dsn, "crm", daemon=d, settled=PAUSED_OK)
        state, reason = (await table_states(pg_dsn, "crm"))["contacts"]
        assert '"name" exist in Postgres but no longer in SQLite' in reason and "syncd resync" in reason
        assert (await pg_rows(pg_dsn, "SELECT name FROM crm.contacts WHERE id = 1"))[0][0] == "c1"
        assert await compare_table(str(db), pg_dsn, "crm", "deals") == []
        r = run_cli(cfg, "resync", "--source", "crm", "--table", "contacts")
        assert r.returncode == 0, r.stdout + r.stderr
        await eventually(lambda: _state_is(pg_dsn, "crm", "contacts", "streaming"), 30, "resync", d)
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        assert d.stop() == 0
        assert "resync requested" in d.log()
    assert await compare_table(str(db), pg_dsn, "crm", "contacts") == []


async def test_rebuilt_table_is_rearmed_and_resnapshotted(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = app(db)
    cfg = make_config([{"name": "crm", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        # the common migration: create new, copy, drop old, rename; DROP TABLE takes the triggers along
        conn.executescript("""
            BEGIN;
            CREATE TABLE deals_new (id INTEGER PRIMARY KEY, title TEXT, amount REAL, owner TEXT DEFAULT 'nobody');
            INSERT INTO deals_new (id, title, amount) SELECT id, title, amount FROM deals;
            DROP TABLE deals;
            ALTER TABLE deals_new RENAME TO deals;
            COMMIT;
        """)
        # changes right after the rebuild, before syncd can have noticed: no triggers record them
        conn.execute("UPDATE deals SET title = 'changed without capture' WHERE id = 7")
        conn.execute("DELETE FROM deals WHERE id = 8")
        wait_for(lambda: "re-armed them and re-snapshotting" in d.log(), 30, "re-arm", d)
        conn.execute("UPDATE deals SET owner = 'ann' WHERE id = 9")  # captured again
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "crm", "deals") == []
    triggers = {r[0] for r in sqlite3.connect(db).execute("SELECT tbl_name FROM sqlite_master WHERE type='trigger'")}
    assert triggers == {"deals", "contacts"}


async def test_a_rebuild_adding_a_unique_column_is_resnapshotted(tmp_path, make_config, pg_dsn):
    """The migration tools' way to add a UNIQUE column (SQLite cannot ALTER one in):
    a rebuild whose copy also rewrites rows. The rows it copied went unrecorded; the
    table is loaded again, the new column's values with it, and streams on."""
    db = tmp_path / "app.db"
    conn = app(db)
    cfg = make_config([{"name": "crm", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        conn.executescript("""
            BEGIN;
            CREATE TABLE contacts_new (id INTEGER PRIMARY KEY, name TEXT, phone TEXT, email TEXT UNIQUE);
            INSERT INTO contacts_new SELECT id, upper(name), phone, 'c' || id || '@example.com' FROM contacts;
            DROP TABLE contacts;
            ALTER TABLE contacts_new RENAME TO contacts;
            COMMIT;
        """)
        wait_for(lambda: "re-armed them and re-snapshotting" in d.log(), 30, "re-arm", d)
        conn.execute("UPDATE contacts SET phone = '555-0' WHERE id = 3")  # captured again
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        assert (await table_states(pg_dsn, "crm"))["contacts"][0] == "streaming"
        assert await compare_table(str(db), pg_dsn, "crm", "contacts") == []
        assert await pg_rows(pg_dsn, "SELECT name, email FROM crm.contacts WHERE id = 7") == [("C7", "c7@example.com")]
        assert d.stop() == 0


def rebuild_copying_triggers(conn, *, transform: bool, commit_between: bool = False, between=None) -> None:
    """The 12-step rebuild by a tool that copies every trigger of the table, syncd's
    included, from sqlite_master onto the new table."""
    triggers = [r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' "
                                           "AND tbl_name = 'deals'")]
    assert triggers  # syncd's own
    copy = ("INSERT INTO deals_new SELECT id, upper(title), amount * 2 FROM deals WHERE id % 10 <> 0" if transform
            else "INSERT INTO deals_new SELECT * FROM deals")
    conn.execute("BEGIN")
    conn.execute("CREATE TABLE deals_new (id INTEGER PRIMARY KEY, title TEXT, amount REAL)")
    conn.execute(copy)
    conn.execute("DROP TABLE deals")
    conn.execute("ALTER TABLE deals_new RENAME TO deals")
    if commit_between:
        conn.execute("COMMIT")
        between()
        conn.execute("BEGIN")
    for sql in triggers:
        conn.execute(sql)
    conn.execute("COMMIT")


async def test_a_rebuild_that_copies_syncds_triggers_is_resnapshotted(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = app(db)
    cfg = make_config([{"name": "crm", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        rebuild_copying_triggers(conn, transform=True)  # 90 rows of 100 kept, every one changed
        wait_for(lambda: "the table was rebuilt" in d.log(), 30, "the rebuild seen", d)
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "crm", "deals") == []
    assert (await pg_rows(pg_dsn, "SELECT count(*), min(title) FROM crm.deals"))[0] == (90, "DEAL 1")

    # syncd stopped: the rebuild commits, the application writes to the table while it has
    # no triggers, then the tool puts the copied triggers back
    def writes() -> None:
        conn.execute("UPDATE deals SET title = 'while no trigger' WHERE id = 11")
        conn.execute("DELETE FROM deals WHERE id = 12")
        conn.execute("INSERT INTO deals VALUES (5000, 'new while no trigger', 1.0)")

    rebuild_copying_triggers(conn, transform=False, commit_between=True, between=writes)
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        assert "the table was rebuilt" in d.log()
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "crm", "deals") == []


async def test_vacuum_reloads_no_keyed_table(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    sqlite3.connect(db).execute("CREATE TABLE scratch (x)")
    conn = app(db)
    conn.execute("DROP TABLE scratch")  # a gap in sqlite_master: VACUUM renumbers the rows after it
    before = dict(conn.execute("SELECT name, rowid FROM sqlite_master WHERE type = 'table'").fetchall())
    cfg = make_config([{"name": "crm", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        seen = len(d.log())
        conn.execute("VACUUM")
        after = dict(conn.execute("SELECT name, rowid FROM sqlite_master WHERE type = 'table'").fetchall())
        assert (after["deals"], after["contacts"]) < (before["deals"], before["contacts"])  # renumbered
        conn.execute("UPDATE deals SET title = 'after vacuum' WHERE id = 3")
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        await asyncio.sleep(1)  # a schema check after the VACUUM has run
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        assert d.stop() == 0
        since = d.log()[seen:]
        assert "rebuilt" not in since and "snapshot started" not in since, since
    assert await compare_table(str(db), pg_dsn, "crm", "deals") == []


async def _state_is(dsn, source, table, state) -> bool:
    states = await table_states(dsn, source)
    return states.get(table, ("",))[0] == state


async def test_a_statement_postgres_must_prepare_anew_while_following_a_change_pauses_no_table(
        tmp_path, make_config, outage):
    """Following a schema change, syncd reads rows of Postgres's copy to tell what became of
    a column. Postgres refusing that read as prepared before a table changed ("cached
    plan must not change result type", SQLSTATE 0A000) is a statement to prepare anew:
    it is read again at once, and the table streams on. Before, the table was paused as
    one whose schema syncd could not follow, with `syncd resync` for a remedy."""
    from tests.conftest import write_config

    proxy, dsn = outage
    db = tmp_path / "app.db"
    conn = app(db)
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}],
                       sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, dsn, "app", daemon=d)
        proxy.fail_reply_to(b'ORDER BY "id" LIMIT 200', {
            "S": "ERROR", "V": "ERROR", "C": "0A000", "M": "cached plan must not change result type",
            "F": "plancache.c", "R": "RevalidateCachedQuery"})
        conn.execute("CREATE INDEX deals_title ON deals (title)")  # the schema moved: its columns are read again
        conn.execute("INSERT INTO deals VALUES (101, 'deal 101', 1.0)")
        await eventually(lambda: _has_row(dsn, 101), 30, "the change streamed", d)
        assert proxy.reply_failed.is_set()
        assert d.stop() == 0
    conn.close()
    assert "table paused" not in d.log() and "unexpected error" not in d.log(), d.log()


async def _has_row(dsn: str, key: int) -> bool:
    return await pg_rows(dsn, "SELECT 1 FROM app.deals WHERE id = $1", key) == [(1,)]
