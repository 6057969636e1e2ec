"""Keys and unique values on the way back: a unique value moving between rows (in one
Postgres transaction, or across transactions applied in another order), a key SQLite
spells its own way (a DATETIME under a timestamp override, a NOCASE text), and rows
Postgres holds that SQLite's unique index forbids (held, named, resumed once fixed)."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg

from tests.support.compare import compare_all
from tests.support.daemon import DaemonProcess
from tests.support.sync import eventually, pg_rows, table_states
from tests.support.way_back import backup_and_config, cut_over, typeof, wait_back


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE contacts (id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT);
        CREATE TABLE visits (at DATETIME PRIMARY KEY, page TEXT);
        CREATE TABLE tags (name TEXT COLLATE NOCASE PRIMARY KEY, uses INTEGER);
    """)
    conn.executemany("INSERT INTO contacts VALUES (?, ?, ?)", [(i, f"c{i}@x", f"n{i}") for i in range(1, 9)])
    conn.executemany("INSERT INTO visits VALUES (?, ?)", [("2026-11-01T10:00:00Z", "/a"),
                                                          ("2026-11-02T11:30:00Z", "/b")])
    conn.executemany("INSERT INTO tags VALUES (?, ?)", [("Sales", 1), ("crm", 2)])
    conn.commit()
    conn.close()


async def test_unique_values_moving_between_rows_and_keys_spelled_by_sqlite(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db, sources=[{
        "name": "app", "path": str(db), "columns": {"visits": {"at": "timestamp"}}}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            # the cutover carried SQLite's UNIQUE; the application's DBA makes it deferrable
            await pg.execute("ALTER TABLE app.contacts DROP CONSTRAINT contacts_email_key, "
                             "ADD CONSTRAINT contacts_email UNIQUE (email) DEFERRABLE INITIALLY DEFERRED")
            async with pg.transaction():  # a swap inside one transaction
                await pg.execute("UPDATE app.contacts SET email = 'c2@x' WHERE id = 1")
                await pg.execute("UPDATE app.contacts SET email = 'c1@x' WHERE id = 2")
            # a chain across transactions: 3 frees its value, 4 takes it, 3 takes 4's old one
            await pg.execute("UPDATE app.contacts SET email = 'tmp@x' WHERE id = 3")
            await pg.execute("UPDATE app.contacts SET email = 'c3@x' WHERE id = 4")
            await pg.execute("UPDATE app.contacts SET email = 'c4@x' WHERE id = 3")
            await pg.execute("UPDATE app.visits SET page = '/a2' WHERE at = '2026-11-01 10:00:00'")
            await pg.execute("INSERT INTO app.visits VALUES ('2026-11-03 09:15:00.5', '/c')")
            await pg.execute("DELETE FROM app.visits WHERE at = '2026-11-02 11:30:00'")
            await pg.execute("UPDATE app.tags SET name = 'SALES', uses = 5 WHERE name = 'Sales'")
            await pg.execute("UPDATE app.tags SET uses = 3 WHERE name = 'crm'")
        finally:
            await pg.close()
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT id, email FROM contacts WHERE id <= 4 ORDER BY id") == \
            [(1, "c2@x"), (2, "c1@x"), (3, "c4@x"), (4, "c3@x")]
        # the row SQLite spelled its own way is updated in place, a new one takes that spelling
        assert typeof(db, "SELECT at, page FROM visits ORDER BY at") == \
            [("2026-11-01T10:00:00Z", "/a2"), ("2026-11-03T09:15:00.500000Z", "/c")]
        assert typeof(db, "SELECT name, uses FROM tags ORDER BY name COLLATE BINARY") == [("SALES", 5), ("crm", 3)]
        assert await compare_all(str(db), pg_dsn, "app", ["contacts", "tags"]) == []
        assert (await table_states(pg_dsn, "app"))["contacts"][0] == "streaming"


async def test_rows_sqlites_unique_index_forbids_hold_the_table_until_fixed(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        # the application's DBA drops the UNIQUE the cutover carried; the application stores a duplicate
        await pg_rows(pg_dsn, "ALTER TABLE app.contacts DROP CONSTRAINT contacts_email_key")
        await pg_rows(pg_dsn, "UPDATE app.contacts SET email = 'c1@x' WHERE id = 2")
        await pg_rows(pg_dsn, "UPDATE app.contacts SET name = 'other table goes on' WHERE id = 5")

        async def held() -> bool:
            return (await table_states(pg_dsn, "app"))["contacts"][0] == "held"

        await eventually(held, 30, "contacts held", d)
        reason = (await table_states(pg_dsn, "app"))["contacts"][1]
        assert "UNIQUE constraint failed: contacts.email" in reason and "fix the rows in Postgres" in reason
        await pg_rows(pg_dsn, "UPDATE app.tags SET uses = 9 WHERE name = 'crm'")
        await eventually(lambda: _uses(db), 30, "the other tables going on", d)
        await pg_rows(pg_dsn, "UPDATE app.contacts SET email = 'c2-fixed@x' WHERE id = 2")  # fixed in Postgres
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert await compare_all(str(db), pg_dsn, "app", ["contacts", "tags"]) == []
        assert typeof(db, "SELECT name FROM contacts WHERE id = 5") == [("other table goes on",)]


async def _uses(db) -> bool:
    return typeof(db, "SELECT uses FROM tags WHERE name = 'crm'") == [(9,)]


async def test_a_unique_column_that_replaces_on_conflict_loses_no_row_on_the_way_back(tmp_path, make_config, pg_dsn):
    """A UNIQUE (or PRIMARY KEY) ... ON CONFLICT REPLACE in SQLite deletes, without a word,
    the row holding a value another row takes. The way back writes under its own
    conflict rule: a value moving between rows (in one Postgres transaction, or across
    transactions) is applied as any other, never by SQLite deleting a row Postgres keeps."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE contacts (id INTEGER PRIMARY KEY, email TEXT UNIQUE ON CONFLICT REPLACE, name TEXT);
        CREATE TABLE codes (code TEXT PRIMARY KEY ON CONFLICT REPLACE, v TEXT);
    """)
    conn.executemany("INSERT INTO contacts VALUES (?, ?, ?)", [(i, f"c{i}@x", f"n{i}") for i in range(1, 7)])
    conn.executemany("INSERT INTO codes VALUES (?, ?)", [("a", "1"), ("b", "2")])
    conn.commit()
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            async with pg.transaction():  # a swap inside one transaction
                await pg.execute("UPDATE app.contacts SET email = 'tmp@x' WHERE id = 1")
                await pg.execute("UPDATE app.contacts SET email = 'c1@x' WHERE id = 2")
                await pg.execute("UPDATE app.contacts SET email = 'c2@x' WHERE id = 1")
            # a chain across transactions: 3 frees its value, 4 takes it, 3 takes 4's old one
            await pg.execute("UPDATE app.contacts SET email = 'tmp@x' WHERE id = 3")
            await pg.execute("UPDATE app.contacts SET email = 'c3@x' WHERE id = 4")
            await pg.execute("UPDATE app.contacts SET email = 'c4@x' WHERE id = 3")
            # a value freed by one row and taken by a new one
            await pg.execute("UPDATE app.contacts SET email = 'c5 moved@x' WHERE id = 5")
            await pg.execute("INSERT INTO app.contacts VALUES (7, 'c5@x', 'n7')")
            async with pg.transaction():  # keys swapped
                await pg.execute("UPDATE app.codes SET code = 'tmp' WHERE code = 'a'")
                await pg.execute("UPDATE app.codes SET code = 'a' WHERE code = 'b'")
                await pg.execute("UPDATE app.codes SET code = 'b' WHERE code = 'tmp'")
        finally:
            await pg.close()
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT id, email FROM contacts ORDER BY id") == [
            (1, "c2@x"), (2, "c1@x"), (3, "c4@x"), (4, "c3@x"), (5, "c5 moved@x"), (6, "c6@x"), (7, "c5@x")]
        assert typeof(db, "SELECT code, v FROM codes ORDER BY code") == [("a", "2"), ("b", "1")]
        assert await compare_all(str(db), pg_dsn, "app", ["contacts", "codes"]) == []
        assert (await table_states(pg_dsn, "app")) == {"contacts": ("streaming", None), "codes": ("streaming", None)}


async def test_a_key_written_again_with_another_scale_keeps_its_row(tmp_path, make_config, pg_dsn):
    """A numeric key written again in Postgres with another scale (7 deleted and 7.0
    inserted in one transaction, 8 updated to 8.00) is the same key to SQLite and to
    syncd's comparison: the row stays in SQLite with its new values, never deleted
    because the old spelling's entry says the key is gone."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE prices (code NUMERIC PRIMARY KEY, label TEXT)")
    conn.executemany("INSERT INTO prices VALUES (?, ?)", [(6, "six"), (7, "seven"), (8, "eight")])
    conn.commit()
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        assert await pg_rows(pg_dsn, "SELECT data_type::text FROM information_schema.columns "
                                     "WHERE table_schema = 'app' AND table_name = 'prices' "
                                     "AND column_name = 'code'") == [("numeric",)]
        pg = await asyncpg.connect(pg_dsn)
        try:
            async with pg.transaction():
                await pg.execute("DELETE FROM app.prices WHERE code = 7")
                await pg.execute("INSERT INTO app.prices VALUES (7.0, 'seven again')")
            await pg.execute("UPDATE app.prices SET code = 8.00, label = 'eight rescaled' WHERE code = 8")
        finally:
            await pg.close()
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT code, label FROM prices ORDER BY code") == \
            [(6, "six"), (7, "seven again"), (8, "eight rescaled")]
        assert await compare_all(str(db), pg_dsn, "app", ["prices"]) == []
        assert d.stop() == 0


async def test_a_table_copied_again_takes_a_nocase_key_postgres_spells_otherwise(tmp_path, make_config, pg_dsn):
    """A table of NOCASE keys emptied and filled again in Postgres ('Sales' now 'SALES')
    is copied again: SQLite's 'Sales' is a key Postgres no longer has (its case-insensitive
    collation finding 'SALES' for it does not make it one), so it goes and 'SALES' comes,
    instead of the table being held for a conflict Postgres does not have."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            async with pg.transaction():  # a refresh of the list, as a nightly job does it
                await pg.execute("TRUNCATE app.tags")
                await pg.execute("INSERT INTO app.tags VALUES ('SALES', 5), ('crm', 2)")
        finally:
            await pg.close()
        await wait_back(cfg, db, pg_dsn, daemon=d, timeout=60)
        assert typeof(db, "SELECT name, uses FROM tags ORDER BY name COLLATE BINARY") == [("SALES", 5), ("crm", 2)]
        assert await compare_all(str(db), pg_dsn, "app", ["tags"]) == []
        assert (await table_states(pg_dsn, "app"))["tags"] == ("streaming", None)
        assert d.stop() == 0


def make_dated_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE terms (until DATE PRIMARY KEY, code TEXT UNIQUE, note TEXT);
        CREATE TABLE rates (sku TEXT, until DATE, code TEXT UNIQUE, rate INTEGER, PRIMARY KEY (sku, until));
    """)
    conn.executemany("INSERT INTO terms VALUES (?, ?, ?)",
                     [("2024-01-01", "a", "old"), ("9999-12-31", "b", "valid until further notice")])
    conn.executemany("INSERT INTO rates VALUES (?, ?, ?, ?)",
                     [("x", "2024-01-01", "a", 1), ("x", "9999-12-31", "b", 2)])
    conn.commit()
    conn.close()


async def _swap_codes(pg_dsn, infinity_too: bool = False) -> None:
    """A unique value moving between rows across transactions, taken one change per batch:
    the way back meets the row standing in its way and looks its key (9999-12-31) up in
    Postgres. `infinity_too`: Postgres holds an infinity row of the same key beside it."""
    pg = await asyncpg.connect(pg_dsn)
    try:
        for table, last, open_ended in (
                ("terms", "until = '9999-12-31'", "('infinity', 'c', 'open-ended')"),
                ("rates", "sku = 'x' AND until = '9999-12-31'", "('x', 'infinity', 'c', 3)")):
            first = last.replace("9999-12-31", "2024-01-01")
            async with pg.transaction():
                await pg.execute(f"UPDATE app.{table} SET code = 'tmp' WHERE {first}")
                if infinity_too:  # after the change that meets the 9999-12-31 row
                    await pg.execute(f"INSERT INTO app.{table} VALUES {open_ended}")
            await pg.execute(f"UPDATE app.{table} SET code = 'a' WHERE {last}")
            await pg.execute(f"UPDATE app.{table} SET code = 'b' WHERE {first}")
    finally:
        await pg.close()


async def _codes_swapped_on_both_sides(db, pg_dsn) -> None:
    """SQLite and Postgres both hold the two codes swapped, the 9999-12-31 rows with theirs."""
    assert typeof(db, "SELECT until, code FROM terms ORDER BY until") == \
        [("2024-01-01", "b"), ("9999-12-31", "a")]
    assert typeof(db, "SELECT sku, until, code FROM rates ORDER BY until") == \
        [("x", "2024-01-01", "b"), ("x", "9999-12-31", "a")]
    # (compare_all matches keys as stored: a date key is compared by its spelling here)
    assert await pg_rows(pg_dsn, "SELECT until::text, code FROM app.terms ORDER BY until") == \
        [("2024-01-01", "b"), ("9999-12-31", "a")]
    assert await pg_rows(pg_dsn, "SELECT until::text, code FROM app.rates ORDER BY until") == \
        [("2024-01-01", "b"), ("9999-12-31", "a")]


async def test_a_valid_until_9999_12_31_key_looked_up_in_postgres_keeps_its_row(tmp_path, make_config, pg_dsn):
    """A key 9999-12-31 (a "valid until" day, alone or in a composite key) that the way
    back looks up in Postgres (the row standing in a unique value's way) is that day,
    never Postgres's infinity: the row Postgres holds stays in SQLite with its new values."""
    db = tmp_path / "app.db"
    make_dated_app(db)
    cfg = backup_and_config(make_config, tmp_path, db, stream={"batch_size": 1})  # one change per batch
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await _swap_codes(pg_dsn)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        await _codes_swapped_on_both_sides(db, pg_dsn)
        assert (await table_states(pg_dsn, "app")) == {"terms": ("streaming", None), "rates": ("streaming", None)}
        assert d.stop() == 0


async def test_a_9999_12_31_key_beside_an_infinity_row_is_never_deleted(tmp_path, make_config, pg_dsn):
    """Postgres holds both 9999-12-31 and infinity (which SQLite cannot hold): looking
    9999-12-31 up finds that day's row, never the infinity one, and the table is held for
    the infinity alone; SQLite's 9999-12-31 row is never deleted."""
    db = tmp_path / "app.db"
    make_dated_app(db)
    cfg = backup_and_config(make_config, tmp_path, db, stream={"batch_size": 1})  # one change per batch
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await _swap_codes(pg_dsn, infinity_too=True)

        async def held() -> bool:
            states = await table_states(pg_dsn, "app")
            return states["terms"][0] == "held" and states["rates"][0] == "held"

        await eventually(held, 30, "both tables held for their infinity", d)
        await asyncio.sleep(3)  # a while longer held: nothing deletes the row meanwhile
        assert ("9999-12-31",) in typeof(db, "SELECT until FROM terms")
        assert ("x", "9999-12-31") in typeof(db, "SELECT sku, until FROM rates")
        for table in ("terms", "rates"):
            assert "infinity" in (await table_states(pg_dsn, "app"))[table][1]
        # fixed in Postgres: both tables follow it again, every row as Postgres holds it
        await pg_rows(pg_dsn, "DELETE FROM app.terms WHERE until = 'infinity'")
        await pg_rows(pg_dsn, "DELETE FROM app.rates WHERE until = 'infinity'")
        await wait_back(cfg, db, pg_dsn, daemon=d, timeout=60)
        await _codes_swapped_on_both_sides(db, pg_dsn)
        assert d.stop() == 0


def weights_file(tmp_path):
    """A WAL file of one table keyed by a REAL, holding one row."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE weights (w REAL PRIMARY KEY, note TEXT)")
    conn.execute("INSERT INTO weights VALUES (1.5, 'before')")
    conn.commit()
    conn.close()
    return db


async def test_a_negative_zero_key_survives_its_table_copied_again(tmp_path, make_config, pg_dsn):
    """A REAL key Postgres holds as -0 (SQLite and Postgres hold -0 and 0 as one key, and
    SQLite's REAL column stores it as 0.0) in a table copied again from Postgres (emptied
    and filled again in one transaction), larger than one write transaction of the copy:
    its row stays in SQLite, never taken for a row Postgres no longer has."""
    db = weights_file(tmp_path)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            async with pg.transaction():
                await pg.execute("TRUNCATE app.weights")
                await pg.execute("INSERT INTO app.weights VALUES (round(-0.4::float8), 'zero')")
                await pg.execute("INSERT INTO app.weights SELECT g, 'bulk' FROM generate_series(1, 1500) g")
        finally:
            await pg.close()
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert "event=reload_done" in d.own_log()
        assert typeof(db, "SELECT w, note FROM weights WHERE w < 1") == [(0.0, "zero")]
        assert typeof(db, "SELECT count(*) FROM weights") == [(1501,)]
        assert d.stop() == 0


async def test_a_row_keyed_by_a_negative_zero_is_updated_and_deleted_in_sqlite_as_in_postgres(
        tmp_path, make_config, pg_dsn):
    """A REAL key the application writes in Postgres as -0 (round(-0.4), say) is 0.0 in
    SQLite's REAL column, the same key to both: the row's later update and its delete in
    Postgres reach that row in SQLite."""
    db = weights_file(tmp_path)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "INSERT INTO app.weights VALUES (round(-0.4::float8), 'zero')")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT w, note FROM weights ORDER BY w") == [(0.0, "zero"), (1.5, "before")]
        await pg_rows(pg_dsn, "UPDATE app.weights SET note = 'changed' WHERE w = 0")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT w, note FROM weights ORDER BY w") == [(0.0, "changed"), (1.5, "before")]
        await pg_rows(pg_dsn, "DELETE FROM app.weights WHERE w = 0")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT w, note FROM weights") == [(1.5, "before")]
        assert (await table_states(pg_dsn, "app")) == {"weights": ("streaming", None)}
        assert d.stop() == 0
