"""Schema changes the application makes in Postgres after the cutover: ADD COLUMN and new
tables are followed into SQLite (values copied, capture and freeze extended); what
SQLite cannot express, or what would lose data, pauses the table with a message that
says what to do, and a rollback waits for it."""

from __future__ import annotations

import re
import sqlite3

import asyncpg
import pytest

from tests.support.compare import compare_all, compare_keyless
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, pg_rows, table_states, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, typeof, wait_back


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE contacts (id INTEGER PRIMARY KEY, email TEXT);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
    """)
    conn.executemany("INSERT INTO contacts VALUES (?, ?)", [(i, f"c{i}@x") for i in range(1, 11)])
    conn.commit()
    conn.close()


async def paused(dsn: str, table: str) -> str | None:
    states = await table_states(dsn, "app")
    state, reason = states.get(table, (None, None))
    return reason if state == "paused" else None


async def test_columns_and_tables_added_in_postgres_are_followed(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            await pg.execute("ALTER TABLE app.contacts ADD COLUMN score numeric DEFAULT 1.5, "
                             "ADD COLUMN vip boolean NOT NULL DEFAULT false, ADD COLUMN seen timestamp, "
                             "ADD COLUMN stamped timestamp(0)")  # a precision: still a timestamp
            await pg.execute("UPDATE app.contacts SET vip = true, seen = '2026-12-24 18:00:00', "
                             "stamped = '2026-12-24 18:00:00.4' WHERE id = 2")
            await pg.execute('CREATE TABLE app."new; table" (id bigint PRIMARY KEY, label varchar(20), '
                             "amount numeric(10, 2), data jsonb)")
            await pg.execute('INSERT INTO app."new; table" VALUES (1, \'one\', 10.50, \'{"k": [1]}\'), '
                             "(2, 'two', 3, NULL)")
        finally:
            await pg.close()
        async def followed() -> bool:  # a schema change alone leaves no change for wait_back to see
            # (each statement may be taken up at a recheck of its own)
            return len(typeof(db, "PRAGMA table_info(contacts)")) == 6 and \
                typeof(db, "SELECT count(*) FROM sqlite_master WHERE name = 'new; table'") == [(1,)]

        await eventually(followed, 60, "the columns and the table added in SQLite too", d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        cols = [r[1:3] for r in typeof(db, "PRAGMA table_info(contacts)")]
        assert cols == [("id", "INTEGER"), ("email", "TEXT"), ("score", "NUMERIC"), ("vip", "BOOLEAN"), ("seen", ""),
                        ("stamped", "")]
        assert typeof(db, "SELECT score, typeof(score), vip, seen, stamped FROM contacts WHERE id = 2") == \
            [(1.5, "real", 1, "2026-12-24 18:00:00", "2026-12-24 18:00:00")]
        assert typeof(db, "SELECT count(*) FROM contacts WHERE score = 1.5 AND vip = 0") == [(9,)]
        assert typeof(db, 'SELECT id, label, amount, data FROM "new; table" ORDER BY id') == \
            [(1, "one", 10.5, '{"k": [1]}'), (2, "two", 3, None)]
        # the new table is SQLite's INTEGER PRIMARY KEY, frozen for the application, captured for the way forward
        assert "INTEGER PRIMARY KEY" in typeof(db, "SELECT sql FROM sqlite_master WHERE name = 'new; table'")[0][0]
        app = sqlite3.connect(db)
        try:
            app.execute('INSERT INTO "new; table" (id) VALUES (3)')
            raise AssertionError("the new table took the application's write")
        except sqlite3.IntegrityError as e:
            assert "moved to PostgreSQL" in str(e)
        finally:
            app.close()
        await pg_rows(pg_dsn, 'UPDATE app."new; table" SET label = \'uno\' WHERE id = 1')
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert await compare_all(str(db), pg_dsn, "app", ["contacts", "new; table", "notes"]) == []
        # and back: the forward stream follows the new table and column into Postgres
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        app = sqlite3.connect(db, isolation_level=None)
        app.execute('INSERT INTO "new; table" (id, label) VALUES (3, \'from sqlite\')')
        app.execute("UPDATE contacts SET score = 9 WHERE id = 3")
        app.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await compare_all(str(db), pg_dsn, "app", ["contacts", "new; table", "notes"]) == []


async def test_what_sqlite_cannot_follow_pauses_the_table_with_what_to_do(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE app.contacts ADD COLUMN span interval")
        await pg_rows(pg_dsn, "CREATE TABLE app.heap (v text)")
        await pg_rows(pg_dsn, "DROP TABLE app.notes")
        await pg_rows(pg_dsn, "UPDATE app.contacts SET email = 'changed while paused' WHERE id = 1")

        async def all_paused() -> bool:
            return all([await paused(pg_dsn, t) for t in ("contacts", "heap", "notes")])

        await eventually(all_paused, 30, "three tables paused", d)
        assert '"span" (interval) have a Postgres type SQLite has no exact form for' in await paused(pg_dsn, "contacts")
        assert "without a primary key" in await paused(pg_dsn, "heap")
        assert "dropped in Postgres after the cutover; SQLite keeps its rows" in await paused(pg_dsn, "notes")
        assert "table paused on the way back" in d.log()
        status = run_cli(cfg, "status")
        assert status.returncode == 2 and 'table "contacts" paused' in status.stdout
        r = run_cli(cfg, "rollback")
        assert r.returncode == 1 and 'table "contacts" does not follow Postgres (paused)' in r.stdout
        # fixed in Postgres: the table resumes, copied again (the change made meanwhile included)
        await pg_rows(pg_dsn, "ALTER TABLE app.contacts DROP COLUMN span")
        await eventually(lambda: _streaming(pg_dsn, "contacts"), 30, "contacts resumed", d)
        await eventually(lambda: _email(db), 30, "the change made while paused", d)
        assert await compare_all(str(db), pg_dsn, "app", ["contacts"]) == []


@pytest.mark.parametrize("change", ["RENAME COLUMN email TO mail", "DROP COLUMN email"])
async def test_a_column_renamed_or_dropped_in_postgres_pauses_its_table_without_an_error(tmp_path, make_config,
                                                                                         pg_dsn, change):
    """The application's migration renames or drops a column in Postgres after the
    cutover, then writes the table: the way back pauses the table saying what to do; it
    never reads the column that is gone and fails the source with an unexpected error."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, f"ALTER TABLE app.contacts {change}")
        await pg_rows(pg_dsn, "INSERT INTO app.contacts (id) VALUES (100)")
        await eventually(lambda: paused(pg_dsn, "contacts"), 30, "contacts paused", d)
        assert 'column(s) "email" exist in SQLite but no longer in Postgres' in await paused(pg_dsn, "contacts")
        assert d.stop() == 0
        log = d.log()
    assert "unexpected error" not in log and " ERROR " not in log, log[-3000:]


async def test_a_table_renamed_in_postgres_is_named_as_renamed(tmp_path, make_config, pg_dsn):
    """A table renamed in Postgres after the cutover: the new name is followed as a table
    of its own, and the old one's pause says where its rows went and what to do, which
    then resumes the way back."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE app.notes RENAME TO memos")
        await pg_rows(pg_dsn, "INSERT INTO app.memos VALUES (1, 'kept under the new name')")
        await eventually(lambda: paused(pg_dsn, "notes"), 30, "notes paused", d)
        assert 'renamed there to "memos" after the cutover, it seems' in await paused(pg_dsn, "notes")
        await eventually(lambda: _streaming(pg_dsn, "memos"), 30, "memos followed", d)
        conn = sqlite3.connect(db)
        conn.execute("DROP TABLE notes")  # as the pause says
        conn.close()
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT body FROM memos") == [("kept under the new name",)]
        assert "notes" not in await table_states(pg_dsn, "app")


async def _streaming(dsn: str, table: str) -> bool:
    return (await table_states(dsn, "app")).get(table, (None,))[0] == "streaming"


async def _email(db) -> bool:
    return typeof(db, "SELECT email FROM contacts WHERE id = 1") == [("changed while paused",)]


async def test_a_table_dropped_in_postgres_is_not_said_renamed_to_a_table_alike_it_had_before(tmp_path, make_config,
                                                                                             pg_dsn):
    """A table dropped in Postgres after the cutover, beside another of the same columns
    and key that SQLite has had all along (tags and categories, id and name each): its
    pause says it was dropped, never that it was renamed to the other table."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("CREATE TABLE categories (id INTEGER PRIMARY KEY, name TEXT);"
                       "CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT);"
                       "INSERT INTO categories VALUES (1, 'books'); INSERT INTO tags VALUES (1, 'new');")
    conn.commit()
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "DROP TABLE app.tags")
        await eventually(lambda: paused(pg_dsn, "tags"), 30, "tags paused", d)
        reason = await paused(pg_dsn, "tags")
        assert "dropped in Postgres after the cutover; SQLite keeps its rows" in reason and "renamed" not in reason, \
            reason
        assert d.stop() == 0


async def test_a_type_changed_to_another_kind_of_value_says_how_to_compare_again(tmp_path, make_config, pg_dsn):
    """email becomes a boolean in Postgres (every value rewritten, no row trigger fires):
    verify cannot compare the table and says what would let it, instead of promising a
    reconciliation that does not come."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE app.contacts ALTER COLUMN email TYPE boolean USING email IS NOT NULL")
        v = run_cli(cfg, "verify")
        assert v.returncode != 0 and 'app: "contacts" not comparable' in v.stdout, v.stdout
        assert "email: boolean in Postgres, text expected" in v.stdout
        assert "give it its old type again to compare the table (and to roll back)" in v.stdout
        assert "within seconds" not in v.stdout.split('"contacts"')[1].splitlines()[0]
        # SQLite would get booleans where its application reads text: paused, named where users look
        await eventually(lambda: paused(pg_dsn, "contacts"), 30, "contacts paused", d)
        assert "email: boolean in Postgres, text expected" in await paused(pg_dsn, "contacts")
        status = run_cli(cfg, "status")
        assert status.returncode == 2 and 'table "contacts" paused' in status.stdout, status.stdout
        r = run_cli(cfg, "rollback")
        assert r.returncode == 1 and 'REFUSED: table "contacts" does not follow Postgres (paused)' in r.stdout, r.stdout
        assert d.stop() == 0


async def test_a_table_rewritten_in_postgres_is_copied_again(tmp_path, make_config, pg_dsn):
    """ALTER COLUMN ... TYPE ... USING rewrites every row of the table and fires no row
    trigger: SQLite gets the new values all the same (the table is copied again), and
    follows the changes after it."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE app.contacts ALTER COLUMN email TYPE text USING upper(email)")
        await eventually(lambda: _upper(db), 30, "the rewritten values in SQLite", d)
        d.wait_log("rewritten in Postgres")
        await pg_rows(pg_dsn, "UPDATE app.contacts SET email = 'after@x' WHERE id = 2")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert await compare_all(str(db), pg_dsn, "app", ["contacts", "notes"]) == []
        assert typeof(db, "SELECT email FROM contacts WHERE id IN (1, 2) ORDER BY id") == [("C1@X",), ("after@x",)]
        assert d.stop() == 0
    # While no daemon runs: seen at the next start.
    await pg_rows(pg_dsn, "ALTER TABLE app.contacts ALTER COLUMN email TYPE varchar(40) USING lower(email) || '!'")
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await eventually(lambda: _email_is(db, 10, "c10@x!"), 30, "the values rewritten while away", d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert await compare_all(str(db), pg_dsn, "app", ["contacts", "notes"]) == []
        assert d.stop() == 0


async def _upper(db) -> bool:
    return await _email_is(db, 10, "C10@X")


async def _email_is(db, key: int, value: str) -> bool:
    return typeof(db, "SELECT email FROM contacts WHERE id = ?", key) == [(value,)]


def make_big(db, rows: int) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT)")
    conn.executemany("INSERT INTO items VALUES (?, ?)", ((i, f"item {i}") for i in range(1, rows + 1)))
    conn.commit()
    conn.close()


async def _copying_again(dsn: str, d) -> None:
    async def loading() -> bool:
        return (await table_states(dsn, "app")).get("items", (None,))[0] == "loading"

    await eventually(loading, 30, "items being copied again", d)


async def test_a_table_rewritten_or_emptied_while_it_is_copied_again_is_copied_from_the_start(
        tmp_path, make_config, pg_dsn):
    """A table Postgres rewrites (or empties) while the way back is copying it again
    chunk by chunk: the rows copied before the rewrite hold the old values, and no row
    trigger brings the new ones, so the copy starts over; SQLite ends with Postgres's
    rows, not the values (or the rows) it had before."""
    db = tmp_path / "app.db"
    rows = 50_000  # seconds of copying, chunk by chunk: the rewrite is seen while the copy goes on
    make_big(db, rows)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "VACUUM FULL app.items")  # a first rewrite: copied again
        await _copying_again(pg_dsn, d)
        await pg_rows(pg_dsn, "ALTER TABLE app.items ALTER COLUMN label TYPE text USING upper(label)")
        await wait_back(cfg, db, pg_dsn, timeout=120, daemon=d)
        assert typeof(db, "SELECT count(*) FROM items WHERE label <> upper(label)") == [(0,)]
        assert await compare_all(str(db), pg_dsn, "app", ["items"]) == []

        await pg_rows(pg_dsn, "VACUUM FULL app.items")
        await _copying_again(pg_dsn, d)
        await pg_rows(pg_dsn, "TRUNCATE app.items")
        await pg_rows(pg_dsn, "INSERT INTO app.items VALUES (7, 'after the truncate')")
        await wait_back(cfg, db, pg_dsn, timeout=120, daemon=d)
        assert typeof(db, "SELECT id, label FROM items") == [(7, "after the truncate")]
        assert d.stop() == 0
    restarts = [line for line in d.log().splitlines() if "table=items event=reload_restarted" in line]
    assert any("rewritten in Postgres" in r for r in restarts), restarts  # the rewrite seen while the copy went on


async def test_a_table_emptied_in_postgres_is_copied_again_once_and_said_so(tmp_path, make_config, pg_dsn):
    """TRUNCATE gives the table a new storage file as a rewrite does, and its trigger
    records it too: the table is copied again once, logged as emptied, not as
    rewritten; also while another table's copy is under way. A rewrite is still seen."""
    db = tmp_path / "app.db"
    make_app(db)
    make_big(db, 50_000)  # a copy under way (seconds of it) while contacts is emptied
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "TRUNCATE app.contacts")
        await pg_rows(pg_dsn, "INSERT INTO app.contacts VALUES (6, 'after the first truncate')")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "VACUUM FULL app.items")
        await _copying_again(pg_dsn, d)
        await pg_rows(pg_dsn, "TRUNCATE app.contacts")
        await pg_rows(pg_dsn, "INSERT INTO app.contacts VALUES (7, 'after the truncate')")
        assert (await table_states(pg_dsn, "app"))["items"][0] == "loading"  # emptied while the copy goes on
        await wait_back(cfg, db, pg_dsn, timeout=120, daemon=d)
        await pg_rows(pg_dsn, "VACUUM FULL app.notes")  # the files are looked at after the truncates
        d.wait_log("table=notes event=table_rewritten")
        await wait_back(cfg, db, pg_dsn, timeout=120, daemon=d)
        copies = [line for line in d.log().splitlines() if "table=contacts event=reload_started" in line]
        assert len(copies) == 2 and all("emptied in Postgres (TRUNCATE)" in c for c in copies), copies
        assert "table=contacts event=table_rewritten" not in d.log()
        assert typeof(db, "SELECT id, email FROM contacts") == [(7, "after the truncate")]
        assert await compare_all(str(db), pg_dsn, "app", ["contacts", "items", "notes"]) == []
        assert d.stop() == 0


async def test_a_column_given_its_old_type_back_is_copied_again(tmp_path, make_config, pg_dsn):
    """A type change to another kind of value is not followed (email becomes a boolean);
    giving the column its old type back, as verify asks, rewrites the table once more,
    with values SQLite has never seen: the table is copied again, SQLite holds them."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE app.contacts ALTER COLUMN email TYPE boolean USING email IS NOT NULL")
        d.wait_log("SQLite follows Postgres")
        # the daemon has looked at the tables' files since: it paused the table of booleans
        await eventually(lambda: paused(pg_dsn, "contacts"), 30, "contacts paused", d)
        await pg_rows(pg_dsn, "ALTER TABLE app.contacts ALTER COLUMN email TYPE text "
                              "USING CASE WHEN email THEN 'given back' END")
        await eventually(lambda: _email_is(db, 10, "given back"), 30, "the values of the type given back", d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert await compare_all(str(db), pg_dsn, "app", ["contacts", "notes"]) == []
        assert d.stop() == 0


async def _pg_script(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_a_partitioned_table_is_paused_and_named_never_half_followed(tmp_path, make_config, pg_dsn):
    """A table created partitioned, or turned into one, in Postgres after the cutover:
    a write straight to a partition fires no trigger of its parent and ATTACH/DETACH
    moves rows with none, so the way back cannot keep SQLite equal. The table is paused
    with a reason naming its partitions (log, status, rollback refused); its partitions
    are not copied to SQLite as tables of their own. Made one plain table again, it
    resumes with every row, and a rollback verifies and goes through."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await _pg_script(pg_dsn, """
            CREATE TABLE app.events (id bigint, at date, body text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
            CREATE TABLE app.events_2026 PARTITION OF app.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
            INSERT INTO app.events VALUES (1, '2026-05-01', 'a');
            BEGIN;
            ALTER TABLE app.contacts RENAME TO contacts_old;
            CREATE TABLE app.contacts (id bigint PRIMARY KEY, email text) PARTITION BY RANGE (id);
            ALTER TABLE app.contacts ATTACH PARTITION app.contacts_old FOR VALUES FROM (MINVALUE) TO (1000);
            CREATE TABLE app.contacts_hi PARTITION OF app.contacts FOR VALUES FROM (1000) TO (MAXVALUE);
            COMMIT;
            INSERT INTO app.contacts VALUES (11, 'new@x'), (2000, 'hi@x');
            INSERT INTO app.contacts_old VALUES (12, 'straight into a partition');
            UPDATE app.contacts SET email = 'changed' WHERE id = 1;
        """)

        async def both_paused() -> bool:
            return all([await paused(pg_dsn, t) for t in ("contacts", "events")])

        await eventually(both_paused, 30, "the partitioned tables paused", d)
        assert '("contacts_hi", "contacts_old")' in await paused(pg_dsn, "contacts")
        assert "partitioned in Postgres after the cutover" in await paused(pg_dsn, "events")
        assert 'table paused on the way back: partitioned in Postgres' in d.log()
        while_paused = d.log().split("event=table_paused", 1)[1]
        assert "every table is streaming back" not in while_paused  # not while two are paused
        assert typeof(db, "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_syncd%' "
                          "ESCAPE '\\' ORDER BY 1") == [("contacts",), ("notes",)]
        assert set(await table_states(pg_dsn, "app")) == {"contacts", "events", "notes"}
        status = run_cli(cfg, "status")
        assert status.returncode == 2 and 'table "events" paused' in status.stdout, status.stdout
        assert "app.events: paused: partitioned in Postgres" in run_cli(cfg, "report").stdout
        assert "rewritten in Postgres" not in d.log()  # the way back did not go on copying it as a table
        r = run_cli(cfg, "rollback")
        assert r.returncode == 1 and 'table "contacts" does not follow Postgres (paused): partitioned' in r.stdout
        assert len(r.stdout.strip().splitlines()) == 2, r.stdout  # one line a table, none half-done
        # one plain table again: resumed, copied in full (the writes made meanwhile included)
        await _pg_script(pg_dsn, """
            BEGIN;
            ALTER TABLE app.contacts RENAME TO contacts_parts;
            CREATE TABLE app.contacts (id bigint PRIMARY KEY, email text);
            INSERT INTO app.contacts SELECT * FROM app.contacts_parts;
            DROP TABLE app.contacts_parts;
            DROP TABLE app.events;
            COMMIT;
        """)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT id, email FROM contacts WHERE id IN (1, 11, 12, 2000) ORDER BY id") == \
            [(1, "changed"), (11, "new@x"), (12, "straight into a partition"), (2000, "hi@x")]
        assert await compare_all(str(db), pg_dsn, "app", ["contacts", "notes"]) == []
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "verified equal: 13 row(s) in 2 table(s)" in r.stdout, r.stdout


async def test_a_key_column_renamed_in_postgres_never_fails_the_applications_writes(tmp_path, make_config, pg_dsn):
    """The application's migration renames a key column (contacts.id) or drops a keyless
    table's `_syncd_rowid` after the cutover: its writes to those tables go on (syncd's
    capture never fails them), the tables are paused naming the key, and once the key is
    back every change made meanwhile reaches SQLite. A rename undone within one
    transaction, which the daemon never sees as a pause, loses nothing either. The copies
    are logged as what caused them, not as a TRUNCATE nobody ran."""
    db = tmp_path / "app.db"
    make_app(db)
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE log (at TEXT, what TEXT); INSERT INTO log VALUES ('t1', 'dup'), ('t1', 'dup');")
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            async with pg.transaction():  # renamed and back: no pause to see
                await pg.execute("ALTER TABLE app.notes RENAME COLUMN id TO note_id")
                await pg.execute("INSERT INTO app.notes (note_id, body) VALUES (1, 'written while renamed')")
                await pg.execute("ALTER TABLE app.notes RENAME COLUMN note_id TO id")
            async with pg.transaction():
                await pg.execute("ALTER TABLE app.contacts RENAME COLUMN id TO contact_id")
                await pg.execute("UPDATE app.contacts SET email = 'changed while renamed' WHERE contact_id = 1")
            await pg.execute("INSERT INTO app.contacts (contact_id, email) VALUES (11, 'c11@x')")
            await pg.execute("DELETE FROM app.contacts WHERE contact_id = 2")
            await pg.execute("ALTER TABLE app.log DROP COLUMN _syncd_rowid")
            await pg.execute("INSERT INTO app.log VALUES ('t2', 'after the drop')")
        finally:
            await pg.close()
        await eventually(lambda: paused(pg_dsn, "contacts"), 30, "contacts paused", d)
        assert "the primary key differs between Postgres (contact_id) and SQLite (id)" in await paused(pg_dsn, "contacts")
        await eventually(lambda: paused(pg_dsn, "log"), 30, "log paused", d)
        await pg_rows(pg_dsn, "ALTER TABLE app.contacts RENAME COLUMN contact_id TO id")
        await pg_rows(pg_dsn, "ALTER TABLE app.log ADD COLUMN _syncd_rowid bigint GENERATED BY DEFAULT AS IDENTITY "
                              "PRIMARY KEY")
        await eventually(lambda: _streaming(pg_dsn, "contacts"), 30, "contacts resumed", d)
        await eventually(lambda: _streaming(pg_dsn, "log"), 30, "log resumed", d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT body FROM notes") == [("written while renamed",)]
        copies = [line for line in d.log().splitlines() if "event=reload_started" in line]
        assert not [c for c in copies if "TRUNCATE" in c], copies
        assert [c for c in copies if "table=notes" in c and "while its key column was renamed or dropped" in c], copies
        assert await compare_all(str(db), pg_dsn, "app", ["contacts", "notes"]) == []
        assert await compare_keyless(str(db), pg_dsn, "app", "log") == []
        assert typeof(db, "SELECT count(*) FROM contacts WHERE id IN (2, 11)") == [(1,)]
        assert sorted(typeof(db, "SELECT at, what FROM log")) == [("t1", "dup"), ("t1", "dup"), ("t2", "after the drop")]
        assert d.stop() == 0


async def test_names_sqlite_takes_for_one_it_has_pause_only_their_table(tmp_path, make_config, pg_dsn):
    """SQLite ignores case in names, Postgres does not: a column "Email" added beside
    "email", or a table "Notes" created beside "notes", cannot be made in SQLite, nor one
    named as SQLite names its own ("SQLite_stats") or syncd its own there ("_syncd_log", and
    "_SYNCD_Copy", one name to SQLite with "_syncd_copy").
    That table is paused, naming both (or why), and a rollback waits; every other table
    goes on following Postgres, and renaming it in Postgres resumes it. Before, a table
    named so was passed over without a word: the rollback went through without its rows."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, 'ALTER TABLE app.contacts ADD COLUMN "Email" text')
        await pg_rows(pg_dsn, 'CREATE TABLE app."Notes" (id bigint PRIMARY KEY, body text)')
        await pg_rows(pg_dsn, "INSERT INTO app.\"Notes\" VALUES (1, 'upper case')")
        await pg_rows(pg_dsn, 'CREATE TABLE app."SQLite_stats" (id bigint PRIMARY KEY, body text)')
        await pg_rows(pg_dsn, "INSERT INTO app.\"SQLite_stats\" VALUES (1, 'reserved')")
        await pg_rows(pg_dsn, "CREATE TABLE app._syncd_log (id bigint PRIMARY KEY, body text)")
        await pg_rows(pg_dsn, "INSERT INTO app._syncd_log VALUES (1, 'syncd''s')")
        await pg_rows(pg_dsn, 'CREATE TABLE app."_SYNCD_Copy" (id bigint PRIMARY KEY, body text)')
        await eventually(lambda: paused(pg_dsn, "contacts"), 30, "contacts paused", d)
        await eventually(lambda: paused(pg_dsn, "Notes"), 30, "Notes paused", d)
        assert ('the column "Email" added in Postgres after the cutover and "email" are one name to SQLite'
                in await paused(pg_dsn, "contacts"))
        assert 'the table "Notes" created in Postgres after the cutover and "notes"' in await paused(pg_dsn, "Notes")
        await eventually(lambda: paused(pg_dsn, "SQLite_stats"), 30, "SQLite_stats paused", d)
        assert 'has a name SQLite keeps for its own tables (beginning with "sqlite_")' in \
            await paused(pg_dsn, "SQLite_stats")
        await eventually(lambda: paused(pg_dsn, "_syncd_log"), 30, "_syncd_log paused", d)
        assert 'a name syncd keeps for its own tables in SQLite (beginning with "_syncd_")' in \
            await paused(pg_dsn, "_syncd_log")
        await eventually(lambda: paused(pg_dsn, "_SYNCD_Copy"), 30, "_SYNCD_Copy paused", d)
        assert 'a name syncd keeps for its own tables in SQLite (beginning with "_syncd_")' in \
            await paused(pg_dsn, "_SYNCD_Copy")
        await pg_rows(pg_dsn, "INSERT INTO app.notes VALUES (1, 'still followed')")
        await eventually(lambda: _body(db), 30, "notes followed meanwhile", d)
        status = run_cli(cfg, "status")
        assert "unexpected error" not in status.stdout and 'table "Notes" paused' in status.stdout, status.stdout
        r = run_cli(cfg, "rollback")
        assert r.returncode == 1 and 'table "Notes" does not follow Postgres (paused)' in r.stdout, r.stdout
        assert 'table "SQLite_stats" does not follow Postgres (paused)' in r.stdout, r.stdout
        assert 'table "_syncd_log" does not follow Postgres (paused)' in r.stdout, r.stdout
        await pg_rows(pg_dsn, 'ALTER TABLE app.contacts RENAME COLUMN "Email" TO email2')
        await pg_rows(pg_dsn, 'ALTER TABLE app."Notes" RENAME TO notes2')
        await pg_rows(pg_dsn, 'ALTER TABLE app."SQLite_stats" RENAME TO stats')
        await pg_rows(pg_dsn, "ALTER TABLE app._syncd_log RENAME TO log")
        await pg_rows(pg_dsn, 'ALTER TABLE app."_SYNCD_Copy" RENAME TO copy')
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT body FROM notes2") == [("upper case",)]
        assert typeof(db, "SELECT body FROM stats") == [("reserved",)]
        assert typeof(db, "SELECT body FROM log") == [("syncd's",)]
        assert await compare_all(str(db), pg_dsn, "app",
                                 ["contacts", "notes", "notes2", "stats", "log", "copy"]) == []
        assert d.stop() == 0


async def _body(db) -> bool:
    return typeof(db, "SELECT body FROM notes") == [("still followed",)]


async def test_verify_names_a_table_made_in_postgres_that_sqlite_does_not_follow_yet(tmp_path, make_config, pg_dsn):
    """A table the application created in Postgres while no daemon ran (or before the
    daemon took it up) has rows SQLite lacks: `syncd verify` names it and exits 1, rather
    than calling the source equal from SQLite's tables alone; once followed, it is equal."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    await pg_rows(pg_dsn, "CREATE TABLE app.invoices (id bigint PRIMARY KEY, total numeric)")
    await pg_rows(pg_dsn, "INSERT INTO app.invoices VALUES (1, 9.5)")
    v = run_cli(cfg, "verify")
    assert v.returncode == 1, v.stdout
    assert 'app: "invoices" not comparable' in v.stdout and "SQLite does not follow it yet" in v.stdout, v.stdout
    assert "0 rows in SQLite, 1 in Postgres" in v.stdout, v.stdout
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await eventually(lambda: _streaming(pg_dsn, "invoices"), 30, "invoices followed", d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        v = run_cli(cfg, "verify")
        assert v.returncode == 0 and 'app: "invoices" equal' in v.stdout, v.stdout
        assert d.stop() == 0


async def test_a_capture_function_an_earlier_syncd_wrote_is_rewritten_when_the_daemon_starts(tmp_path, make_config,
                                                                                                pg_dsn):
    """A source cut over by an earlier syncd keeps that syncd's capture functions in
    Postgres; the daemon writes the current ones when it starts, so what they fixed (an
    application's write surviving a key column renamed) holds there too."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    pg = await asyncpg.connect(pg_dsn)
    try:
        definition = await pg.fetchval(
            "SELECT pg_get_functiondef(t.tgfoid) FROM pg_trigger t WHERE t.tgrelid = 'app.contacts'::regclass "
            "AND NOT t.tgisinternal LIMIT 1")
        # the body before the key check: every write fails while the key is renamed
        earlier = re.sub(r"IF TG_OP <> 'TRUNCATE' AND NOT .*?n := 1;\s*ELSIF TG_OP = 'INSERT'",
                         "IF TG_OP = 'INSERT'", definition, flags=re.S)
        assert earlier != definition
        await pg.execute(earlier)

        async def renamed_write() -> str | None:
            try:
                async with pg.transaction():
                    await pg.execute("ALTER TABLE app.contacts RENAME COLUMN id TO contact_id")
                    await pg.execute("INSERT INTO app.contacts (contact_id, email) VALUES (50, 'x@x')")
                    raise _Undo
            except _Undo:
                return None
            except asyncpg.PostgresError as e:
                return str(e)

        assert "does not exist" in (await renamed_write() or "")
        async def writes_survive() -> bool:
            return await renamed_write() is None

        with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
            await eventually(writes_survive, 30, "the capture function written again", d)
            await wait_back(cfg, db, pg_dsn, daemon=d)
            assert await compare_all(str(db), pg_dsn, "app", ["contacts", "notes"]) == []
            assert d.stop() == 0
    finally:
        await pg.close()


class _Undo(Exception):
    pass


async def test_a_table_dropped_in_sqlite_before_the_cutover_stays_out_of_sqlite(tmp_path, make_config, pg_dsn):
    """A table the application dropped in SQLite during dual-write is kept aside in
    Postgres (notes__dropped_<time>), with its rows. The way back leaves it there: SQLite
    follows the application's tables only. Before, it took the kept table for one the
    application made in Postgres after the cutover, created it in the SQLite file and
    copied every row of it back there."""
    db = tmp_path / "app.db"
    make_app(db)
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO notes VALUES (1, 'kept aside')")
    conn.commit()
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn = sqlite3.connect(db)
        conn.execute("DROP TABLE notes")
        conn.commit()
        conn.close()
        d.wait_log("event=table_dropped")
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "UPDATE app.contacts SET email = 'moved@x' WHERE id = 1")
        await eventually(lambda: _email_is(db, 1, "moved@x"), 30, "the change in SQLite", d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert [n for (n,) in typeof(db, "SELECT name FROM sqlite_master WHERE name LIKE '%dropped%'")] == []
        assert [n for (n,) in await pg_rows(pg_dsn, "SELECT table_name FROM syncd.tables")] == ["contacts"]
        assert d.stop() == 0


async def test_a_column_retyped_in_postgres_between_two_writes_is_read_again_without_an_error(
        tmp_path, make_config, pg_dsn):
    """The application writes a table in Postgres (the way back prepares its read of the
    table's rows), its migration turns a text column into varchar(100), and it writes the
    table again: Postgres refuses the statement prepared before ("cached plan must not
    change result type"). It is prepared anew and the row reaches SQLite; the daemon never
    calls it an unexpected error with a traceback, as it did."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "INSERT INTO app.contacts VALUES (100, 'before@x')")
        await eventually(lambda: _email_is(db, 100, "before@x"), 30, "the first row back in SQLite", d)
        await pg_rows(pg_dsn, "ALTER TABLE app.contacts ALTER COLUMN email TYPE varchar(100)")
        await pg_rows(pg_dsn, "INSERT INTO app.contacts VALUES (101, 'after@x')")
        await eventually(lambda: _email_is(db, 101, "after@x"), 30, "the row written after the migration in SQLite", d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert await compare_all(str(db), pg_dsn, "app", ["contacts", "notes"]) == []
        assert d.stop() == 0
        log = d.own_log()
    assert "unexpected error" not in log and " ERROR " not in log, log[-3000:]


async def test_a_table_made_in_postgres_with_an_identity_key_never_hands_out_its_ids_again_after_a_rollback(
        tmp_path, make_config, pg_dsn):
    """A table the application creates in Postgres after the cutover with a numbered key
    (an identity, BY DEFAULT or ALWAYS, or a serial) comes to SQLite as an INTEGER PRIMARY
    KEY AUTOINCREMENT: after a rollback the application's next row there gets a number
    past every one Postgres handed out, rows deleted since included (SQLite's rowid alone
    took the highest id left plus one: an id Postgres gave a row the application deleted,
    and whatever still points at it, came back for another row). Numbers no row brought
    to SQLite (a setval, a nextval alone, an INSERT rolled back) count too: only the
    rollback's own step, from Postgres's sequence, can carry them."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    tables = {"invoices": "id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
              "tickets": "id serial PRIMARY KEY",
              "payments": "id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
              "codes": "id bigint PRIMARY KEY"}  # no numbering of Postgres's: the application gives the ids
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        for name, key in tables.items():
            await pg_rows(pg_dsn, f"CREATE TABLE app.{name} ({key}, label text)")
            if name == "codes":
                await pg_rows(pg_dsn, "INSERT INTO app.codes VALUES (1, 'a'), (2, 'b'), (3, 'c')")
            else:
                await pg_rows(pg_dsn, f"INSERT INTO app.{name} (label) VALUES ('a'), ('b'), ('c')")
            await pg_rows(pg_dsn, f"DELETE FROM app.{name} WHERE id = 3")

        async def followed() -> bool:
            return typeof(db, "SELECT count(*) FROM sqlite_master WHERE name IN "
                              "('invoices', 'tickets', 'payments', 'codes')") == [(4,)]

        await eventually(followed, 60, "the tables made in SQLite too", d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        # Numbers Postgres hands out that no row ever brings to SQLite: only the sequence knows them.
        pg = await asyncpg.connect(pg_dsn)
        try:
            await pg.fetchval("SELECT setval(pg_get_serial_sequence('app.invoices', 'id'), 20)")
            await pg.fetchval("SELECT max(nextval(pg_get_serial_sequence('app.payments', 'id'))) "
                              "FROM generate_series(1, 10)")  # 13
            tr = pg.transaction()
            await tr.start()
            await pg.execute("INSERT INTO app.tickets (label) SELECT 'gone' FROM generate_series(1, 5)")  # 8
            await tr.rollback()
        finally:
            await pg.close()
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        app = sqlite3.connect(db, isolation_level=None)
        for name in tables:
            app.execute(f"INSERT INTO {name} (label) VALUES ('from sqlite')")
        got = {name: app.execute(f"SELECT id FROM {name} WHERE label = 'from sqlite'").fetchone()[0]
               for name in tables}
        ddl = {name: app.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
               for name in tables}
        app.close()
        assert got == {"invoices": 21, "tickets": 9, "payments": 14, "codes": 3}, ddl
        assert "AUTOINCREMENT" not in ddl["codes"]
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await compare_all(str(db), pg_dsn, "app", list(tables) + ["contacts", "notes"]) == []


async def test_a_rollback_refuses_an_autoincrement_table_postgres_holds_the_largest_id_in(
        tmp_path, make_config, pg_dsn):
    """A row Postgres holds at id 9223372036854775807 (a sentinel) in a table SQLite numbers
    AUTOINCREMENT (the application's own, or one made in Postgres with an identity) would
    take SQLite's AUTOINCREMENT record to its largest value: after the rollback every
    INSERT without an id there would fail ("database or disk is full"). The rollback, and
    its --dry-run, refuse before anything is frozen, naming the table, the row and what to
    do; once the row has a smaller id the rollback goes through and SQLite numbers on."""
    top = 2 ** 63 - 1
    db = tmp_path / "app.db"
    make_app(db)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT, label TEXT)")
    conn.execute("INSERT INTO orders (label) VALUES ('first')")
    conn.commit()
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "CREATE TABLE app.invoices (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
                              "label text)")
        await pg_rows(pg_dsn, "INSERT INTO app.invoices (label) VALUES ('a')")
        await pg_rows(pg_dsn, f"INSERT INTO app.invoices VALUES ({top}, 'sentinel')")
        await pg_rows(pg_dsn, f"INSERT INTO app.orders VALUES ({top}, 'sentinel')")

        async def followed() -> bool:
            return typeof(db, "SELECT count(*) FROM invoices WHERE id = ?", top) == [(1,)] \
                if typeof(db, "SELECT 1 FROM sqlite_master WHERE name = 'invoices'") else False

        await eventually(followed, 60, "the table made in SQLite too", d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        for args in (("rollback", "--dry-run"), ("rollback",)):
            r = run_cli(cfg, *args)
            out = r.stdout + r.stderr
            assert r.returncode != 0, out
            for name in ("invoices", "orders"):
                assert f'table "{name}": Postgres holds a row with "id" {top}' in out, out
            assert f'UPDATE "app"."invoices" SET "id" = nextval(\'app.invoices_id_seq\') WHERE "id" = {top}' in out, out
        # Nothing was frozen: the application goes on writing Postgres.
        await pg_rows(pg_dsn, "INSERT INTO app.contacts VALUES (100, 'still@x')")
        # What it says to do: the rows moved to a number of their sequence.
        await pg_rows(pg_dsn, f"UPDATE app.invoices SET id = nextval(pg_get_serial_sequence('app.invoices', 'id')) "
                              f"WHERE id = {top}")
        await pg_rows(pg_dsn, f"UPDATE app.orders SET id = nextval(pg_get_serial_sequence('app.orders', 'id')) "
                              f"WHERE id = {top}")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        app = sqlite3.connect(db, isolation_level=None)
        for name in ("invoices", "orders"):
            app.execute(f"INSERT INTO {name} (label) VALUES ('from sqlite')")
        got = {name: app.execute(f"SELECT id FROM {name} WHERE label = 'from sqlite'").fetchone()[0]
               for name in ("invoices", "orders")}
        app.close()
        assert got == {"invoices": 3, "orders": 3}, got
