"""The application's own schema changes are followed without an operator: renamed
columns and tables are renamed in Postgres (a column keeps its place; a table's
triggers move with it), dropped ones are kept aside there, never destroyed, and the
table streams on. With legacy_alter_table on and off."""

from __future__ import annotations

import sqlite3

import pytest

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import eventually, pg_rows, table_states, wait_caught_up


async def pg_columns(dsn: str, table: str) -> list[str]:
    return [r[0] for r in await pg_rows(dsn, "SELECT column_name FROM information_schema.columns WHERE "
                                             "table_schema = 'app' AND table_name = $1 ORDER BY ordinal_position",
                                        table)]


async def pg_tables(dsn: str) -> set[str]:
    return {r[0] for r in await pg_rows(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'app'")}


@pytest.mark.parametrize("legacy", ["OFF", "ON"])
async def test_renames_and_drops_are_followed(app_db, make_config, pg_dsn, tmp_path, legacy):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, nick TEXT, age INTEGER);
        CREATE TABLE orders (ref TEXT PRIMARY KEY, total REAL, note TEXT);
        CREATE TABLE scratch (id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO people VALUES (1, 'Ada', 'a', 36), (2, 'Grace', 'g', 45);
        INSERT INTO orders VALUES ('o1', 9.5, 'first'), ('o2', 20.0, 'second');
        INSERT INTO scratch VALUES (1, 'temporary');
    """)
    conn.execute(f"PRAGMA legacy_alter_table = {legacy}")
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("ALTER TABLE people RENAME COLUMN nick TO nickname")
        conn.execute("ALTER TABLE people DROP COLUMN age")
        conn.execute("UPDATE people SET nickname = 'ada!' WHERE id = 1")
        conn.execute("ALTER TABLE orders RENAME TO purchases")
        conn.execute("ALTER TABLE purchases RENAME COLUMN ref TO code")  # the key itself
        conn.execute("INSERT INTO purchases VALUES ('o3', 1.0, 'after the rename')")
        conn.execute("DROP TABLE scratch")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        states = await table_states(pg_dsn, "app")
        assert states == {"people": ("streaming", None), "purchases": ("streaming", None)}, states
        assert await compare_table(str(app_db), pg_dsn, "app", "people") == []
        assert await compare_table(str(app_db), pg_dsn, "app", "purchases") == []
        cols = await pg_columns(pg_dsn, "people")
        assert cols[:3] == ["id", "name", "nickname"] and cols[3].startswith("age__dropped_"), cols
        # the dropped column's values are kept aside, not destroyed
        assert await pg_rows(pg_dsn, f'SELECT id, "{cols[3]}" FROM app.people ORDER BY id') == [(1, 36), (2, 45)]
        tables = await pg_tables(pg_dsn)
        assert "purchases" in tables and "orders" not in tables
        kept = [t for t in tables if t.startswith("scratch__dropped_")]
        assert len(kept) == 1 and await pg_rows(pg_dsn, f'SELECT v FROM app."{kept[0]}"') == [("temporary",)]
        log = d.log()
        assert "renamed to \"purchases\" in SQLite: renamed in Postgres too" in log
        assert "snapshot started" not in log.split("renamed to \"purchases\"")[1]  # followed, not reloaded
        # the new name is free for a new table
        conn.execute("CREATE TABLE scratch (id INTEGER PRIMARY KEY, w TEXT)")
        conn.execute("INSERT INTO scratch VALUES (7, 'new')")

        async def registered() -> bool:
            return (await table_states(pg_dsn, "app")).get("scratch", ("",))[0] == "streaming"

        await eventually(registered, 30, "the new table streaming", d)
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await compare_table(str(app_db), pg_dsn, "app", "scratch") == []
        assert d.stop() == 0


async def test_a_twelve_step_rebuild_is_reloaded(app_db, make_config, pg_dsn, tmp_path):
    """The documented way to change a column's type: create, copy, drop, rename."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, qty TEXT, label TEXT);"
                       "INSERT INTO items VALUES (1, '5', 'a'), (2, '7', 'b');")
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.executescript("""
            PRAGMA foreign_keys = OFF;
            BEGIN;
            CREATE TABLE new_items (id INTEGER PRIMARY KEY, qty INTEGER, label TEXT, extra TEXT DEFAULT 'x');
            INSERT INTO new_items (id, qty, label) SELECT id, CAST(qty AS INTEGER), label FROM items;
            DROP TABLE items;
            ALTER TABLE new_items RENAME TO items;
            COMMIT;
        """)
        conn.execute("INSERT INTO items (id, qty, label) VALUES (3, 9, 'c')")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await compare_table(str(app_db), pg_dsn, "app", "items") == []
        assert (await pg_rows(pg_dsn, "SELECT data_type FROM information_schema.columns WHERE table_schema = 'app' "
                                      "AND table_name = 'items' AND column_name = 'qty'")) == [("bigint",)]
        assert d.stop() == 0


OTHER = "CREATE TABLE other (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO other VALUES (1, 'before');"


async def migrated(app_db, make_config, pg_dsn, tmp_path, setup: str, migration: str) -> str:
    """The tables of `setup` and a table "other" stream; the application runs `migration`
    and writes "other". Returns the daemon's log once all is caught up, with "other"
    streaming on and equal (one table's change never stops the file's others)."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript(setup + OTHER)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.executescript(migration)
        conn.execute("UPDATE other SET v = 'after'")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        log = d.log()
    conn.close()
    assert (await table_states(pg_dsn, "app"))["other"][0] == "streaming"
    assert await compare_table(str(app_db), pg_dsn, "app", "other") == []
    return log


async def test_a_key_column_renamed_at_the_end_of_the_table_is_followed(app_db, make_config, pg_dsn, tmp_path):
    """At the end of a table a rename is told from a drop and an add by the data, read
    through the key; when the key itself is what was renamed, Postgres still has it under
    the old name (the whole source once failed on it, every table)."""
    log = await migrated(app_db, make_config, pg_dsn, tmp_path,
                         "CREATE TABLE tail (v TEXT, k TEXT PRIMARY KEY); "
                         "INSERT INTO tail VALUES ('a', 'k1'), ('b', 'k2');",
                         "ALTER TABLE tail RENAME COLUMN k TO code; INSERT INTO tail VALUES ('c', 'k3');")
    assert 'column "k" was renamed to "code"' in log
    assert await pg_columns(pg_dsn, "tail") == ["v", "code"]
    assert await compare_table(str(app_db), pg_dsn, "app", "tail") == []


async def test_a_table_postgres_will_not_reshape_pauses_alone(app_db, make_config, pg_dsn, tmp_path):
    """When Postgres refuses the change that follows the application's (here a policy of
    the database's own, an event trigger, refuses ALTER TABLE on one table), that table
    pauses with Postgres's reason and the file's other tables stream on."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE guarded (id INTEGER PRIMARY KEY, v TEXT);
        CREATE TABLE other (id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO guarded VALUES (1, 'a');
        INSERT INTO other VALUES (1, 'before');
    """)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        await pg_rows(pg_dsn, """
            CREATE FUNCTION no_alter_guarded() RETURNS event_trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() WHERE object_identity = 'app.guarded') THEN
                RAISE EXCEPTION 'app.guarded is frozen by policy';
              END IF;
            END $$""")
        await pg_rows(pg_dsn, "CREATE EVENT TRIGGER no_alter_guarded ON ddl_command_end WHEN TAG IN ('ALTER TABLE') "
                              "EXECUTE FUNCTION no_alter_guarded()")
        try:
            conn.execute("ALTER TABLE guarded ADD COLUMN w TEXT")
            conn.execute("INSERT INTO guarded VALUES (2, 'b', 'x')")
            conn.execute("UPDATE other SET v = 'after'")

            async def other_followed() -> bool:
                return await pg_rows(pg_dsn, "SELECT v FROM app.other") == [("after",)]

            await eventually(other_followed, 30, "the other table streaming on", d)
            state, reason = (await table_states(pg_dsn, "app"))["guarded"]
            assert state == "paused" and "app.guarded is frozen by policy" in reason, (state, reason)
            assert (await table_states(pg_dsn, "app"))["other"][0] == "streaming"
        finally:
            await pg_rows(pg_dsn, "DROP EVENT TRIGGER no_alter_guarded")
        assert d.stop() == 0


REBUILDS = {
    "integer_key_to_text_key": """
        CREATE TABLE products_new (code TEXT PRIMARY KEY, name TEXT);
        INSERT INTO products_new SELECT code, name FROM products;""",
    "integer_key_retyped_text": """
        CREATE TABLE products_new (id TEXT PRIMARY KEY, code TEXT NOT NULL, name TEXT);
        INSERT INTO products_new SELECT CAST(id AS TEXT), code, name FROM products;""",
    "integer_key_kept_as_a_plain_column": """
        CREATE TABLE products_new (id INTEGER, code TEXT NOT NULL, name TEXT);
        INSERT INTO products_new SELECT id, code, name FROM products;
        INSERT INTO products_new VALUES (NULL, 'p3', 'three');""",
}


@pytest.mark.parametrize("rebuild", REBUILDS)
async def test_a_rebuild_off_an_integer_primary_key_is_reloaded(app_db, make_config, pg_dsn, tmp_path, rebuild):
    """The INTEGER PRIMARY KEY is an identity column in Postgres, which Postgres will not
    keep aside nor retype: a rebuild dropping it, retyping it or keeping it as a plain
    column of a table without a key (NULL allowed) reloads the table."""
    await migrated(app_db, make_config, pg_dsn, tmp_path,
                   "CREATE TABLE products (id INTEGER PRIMARY KEY, code TEXT NOT NULL, name TEXT); "
                   "INSERT INTO products VALUES (1, 'p1', 'one'), (2, 'p2', 'two');",
                   f"BEGIN; {REBUILDS[rebuild]} DROP TABLE products; ALTER TABLE products_new RENAME TO products; "
                   "COMMIT;")
    assert (await table_states(pg_dsn, "app"))["products"][0] == "streaming"
    key = ["code"] if rebuild == "integer_key_to_text_key" else ["id"]
    assert await compare_table(str(app_db), pg_dsn, "app", "products", key=key) == []


async def test_a_not_null_column_added_with_a_default_postgres_cannot_give_is_reloaded(app_db, make_config, pg_dsn,
                                                                                         tmp_path):
    """ADD COLUMN ... NOT NULL DEFAULT x, where x is not carried exactly: SQLite's rows
    read x, Postgres would refuse NOT NULL over its rows without a value; the table is
    reloaded, its own table only."""
    await migrated(app_db, make_config, pg_dsn, tmp_path,
                   "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'b');",
                   "ALTER TABLE t ADD COLUMN price TEXT NOT NULL DEFAULT 1.50; INSERT INTO t (id, v) VALUES (3, 'c');")
    assert (await table_states(pg_dsn, "app"))["t"][0] == "streaming"
    assert await compare_table(str(app_db), pg_dsn, "app", "t") == []
    # NOT NULL in Postgres too once the reload gave every row its value, as a fresh load makes it
    assert await pg_rows(pg_dsn, "SELECT is_nullable FROM information_schema.columns WHERE table_schema = 'app' "
                                 "AND table_name = 't' AND column_name = 'price'") == [("NO",)]


async def test_long_names_dropped_together_are_kept_aside_under_names_of_their_own(app_db, make_config, pg_dsn,
                                                                                   tmp_path):
    """Aside names keep the first bytes of the name: two long names alike there, dropped
    in one migration, each get a name of their own (the second failed for ever)."""
    long = "customer_lifetime_value_estimate_for_quarter_"
    await migrated(app_db, make_config, pg_dsn, tmp_path,
                   f"CREATE TABLE t (id INTEGER PRIMARY KEY, {long}one TEXT, {long}two TEXT, keep TEXT); "
                   f"INSERT INTO t VALUES (1, 'a', 'b', 'k'); "
                   f"CREATE TABLE {long}x (id INTEGER PRIMARY KEY); CREATE TABLE {long}y (id INTEGER PRIMARY KEY);",
                   f"BEGIN; ALTER TABLE t DROP COLUMN {long}one; ALTER TABLE t DROP COLUMN {long}two; "
                   f"DROP TABLE {long}x; DROP TABLE {long}y; COMMIT;")
    cols = await pg_columns(pg_dsn, "t")
    assert len([c for c in cols if "__dropped_" in c]) == 2, cols
    assert len([t for t in await pg_tables(pg_dsn) if "__dropped_" in t]) == 2


@pytest.mark.parametrize("later", [False, True], ids=["one_transaction", "renamed_later"])
async def test_a_table_renamed_onto_the_name_of_one_dropped_is_followed(app_db, make_config, pg_dsn, tmp_path, later):
    """The application drops a table and renames another into its name (in one
    transaction, or once syncd has followed the drop): the dropped table's Postgres copy
    is kept aside with its rows, and the renamed one is renamed there too and streams on.
    Before, the renamed table was said dropped (kept aside under its old name) and loaded
    again under the new name; in one transaction, over the dropped one's copy, whose own
    rows were gone from Postgres."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE plans (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE plans_v2 (id INTEGER PRIMARY KEY, name TEXT, price REAL);
        INSERT INTO plans VALUES (1, 'old basic'), (2, 'old pro');
        INSERT INTO plans_v2 VALUES (1, 'basic', 5.0), (2, 'pro', 20.0), (3, 'team', 50.0);
    """)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        seen = len(d.log())
        if later:
            conn.execute("DROP TABLE plans")
            await eventually(lambda: _no_row(pg_dsn, "plans"), 30, "the drop followed", d)
            conn.execute("ALTER TABLE plans_v2 RENAME TO plans")
        else:
            conn.executescript("BEGIN; DROP TABLE plans; ALTER TABLE plans_v2 RENAME TO plans; COMMIT;")
        conn.execute("UPDATE plans SET price = 25.0 WHERE id = 2")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await table_states(pg_dsn, "app") == {"plans": ("streaming", None)}
        assert await compare_table(str(app_db), pg_dsn, "app", "plans") == []
        assert d.stop() == 0
        since = d.log()[seen:]
    assert 'table "plans_v2" was renamed to "plans" in SQLite' in since, since
    assert "snapshot started" not in since and "plans_v2__dropped" not in since, since
    kept = [t for t in await pg_tables(pg_dsn) if t.startswith("plans__dropped_")]
    assert len(kept) == 1, await pg_tables(pg_dsn)
    assert await pg_rows(pg_dsn, f'SELECT id, name FROM app."{kept[0]}" ORDER BY id') == [(1, "old basic"),
                                                                                       (2, "old pro")]


async def _no_row(dsn: str, table: str) -> bool:
    return table not in await table_states(dsn, "app")


async def test_a_table_renamed_while_syncd_brings_capture_in_line_is_followed(app_db, make_config, pg_dsn, tmp_path,
                                                                               monkeypatch):
    """The application renames a table while syncd brings capture in line with the schema
    (as each of its schema checks does first), after syncd read where capture's triggers
    sat and before it read the tables: the table was taken for a new one, registered
    anew, and Postgres's copy was said dropped (kept aside) and loaded again under the
    new name, a column syncd had typed coming back as text. It is followed as a rename."""
    from syncd.config import Settings
    from syncd.reconcile import install_capture
    from syncd.session import SourceSession
    from syncd.sqlite import capture

    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE orders (ref TEXT PRIMARY KEY, total REAL);"
                       "INSERT INTO orders VALUES ('o1', 9.5), ('o2', 20.0);")
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    tid = conn.execute("SELECT tid FROM _syncd_tables WHERE name = 'orders'").fetchone()[0]

    read_where_triggers_sit = capture.install_base

    def then_the_application_renames(c: sqlite3.Connection, busy_timeout_ms: int):
        state = read_where_triggers_sit(c, busy_timeout_ms)
        app = sqlite3.connect(app_db, isolation_level=None)
        app.execute("ALTER TABLE orders RENAME TO purchases")
        app.close()
        return state

    monkeypatch.setattr(capture, "install_base", then_the_application_renames)
    settings = Settings(postgres={"dsn": pg_dsn}, metrics={"listen": ""}, sources=[{"name": "app", "path": str(app_db)}])
    session = SourceSession(settings, settings.sources[0])
    try:
        await install_capture(session)
    finally:
        await session.close()
    monkeypatch.undo()
    assert conn.execute("SELECT name FROM _syncd_tables WHERE tid = ?", (tid,)).fetchall() == [("purchases",)]

    conn.execute("INSERT INTO purchases VALUES ('o3', 1.0)")
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await table_states(pg_dsn, "app") == {"purchases": ("streaming", None)}
        assert await compare_table(str(app_db), pg_dsn, "app", "purchases") == []
        assert d.stop() == 0
        log = d.log()
    assert 'table "orders" was renamed to "purchases" in SQLite' in log, log
    assert "snapshot started" not in log and "dropped" not in log, log
    assert not [t for t in await pg_tables(pg_dsn) if "__dropped_" in t]


async def test_a_table_renamed_and_created_again_under_its_old_name_is_followed(app_db, make_config, pg_dsn, tmp_path):
    """A migration renames a table away and creates a new one under its old name, in one
    transaction: the new table was taken for the old one (its column said renamed, the
    column syncd had typed during dual-write handed to it, where its own values did not
    fit: held for good), and the renamed table was loaded again, as a new one. Now the
    renamed one streams on under its new name, typed, without a reload, and the new one
    is a table of its own."""
    import datetime as dt

    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE ev (id INTEGER PRIMARY KEY, happened DATETIME);"
                       "INSERT INTO ev VALUES (1, '2024-05-01 10:00:00'), (2, '2024-05-02 11:30:00');")
    cfg = make_config([{"name": "app", "path": str(app_db)}],
                      sections={"cutover": {"typed_columns": "dual-write"},
                                "stream": {"schema_check_interval_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log('column "happened" is timestamp now')
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        seen = len(d.log())
        conn.executescript("BEGIN; ALTER TABLE ev RENAME TO ev_2024;"
                           "CREATE TABLE ev (id INTEGER PRIMARY KEY, happened DATETIME, what TEXT);"
                           "INSERT INTO ev VALUES (9, 'not yet', 'new'); COMMIT;")
        conn.execute("INSERT INTO ev_2024 VALUES (3, '2024-05-03 09:15:00')")

        async def both() -> bool:
            states = await table_states(pg_dsn, "app")
            return states == {"ev": ("streaming", None), "ev_2024": ("streaming", None)}

        await eventually(both, 30, "both tables streaming", d)
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, happened FROM app.ev_2024 ORDER BY id") == [
            (1, dt.datetime(2024, 5, 1, 10, 0)), (2, dt.datetime(2024, 5, 2, 11, 30)),
            (3, dt.datetime(2024, 5, 3, 9, 15))]
        assert await compare_table(str(app_db), pg_dsn, "app", "ev_2024") == []
        assert await compare_table(str(app_db), pg_dsn, "app", "ev") == []
        assert d.stop() == 0
        since = d.log()[seen:]
    assert 'table "ev" was renamed to "ev_2024" in SQLite' in since, since
    assert "table=ev_2024 event=snapshot_started" not in since and "dropped" not in since, since
    assert "was renamed to \"what\"" not in since, since


async def test_a_table_renamed_onto_a_dropped_ones_name_and_created_again_is_followed(app_db, make_config, pg_dsn,
                                                                                    tmp_path):
    """One transaction drops a table, renames another into its name and creates a new
    table under the renamed one's old name (the next version's, empty): the dropped
    table's copy is kept aside, the renamed one streams on under its new name without a
    reload, and the new table is loaded as one of its own, with no row of another's."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE plans (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE plans_v2 (id INTEGER PRIMARY KEY, name TEXT, price REAL);
        INSERT INTO plans VALUES (1, 'old basic'), (2, 'old pro');
        INSERT INTO plans_v2 VALUES (1, 'basic', 5.0), (2, 'pro', 20.0), (3, 'team', 50.0);
    """)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        seen = len(d.log())
        conn.executescript("BEGIN; DROP TABLE plans; ALTER TABLE plans_v2 RENAME TO plans;"
                           "CREATE TABLE plans_v2 (id INTEGER PRIMARY KEY, name TEXT, price REAL, tier TEXT);"
                           "INSERT INTO plans_v2 VALUES (7, 'next', 1.0, 'gold'); COMMIT;")
        conn.execute("UPDATE plans SET price = 25.0 WHERE id = 2")

        async def both() -> bool:
            return await table_states(pg_dsn, "app") == {"plans": ("streaming", None),
                                                         "plans_v2": ("streaming", None)}

        await eventually(both, 30, "both tables streaming", d)
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await compare_table(str(app_db), pg_dsn, "app", "plans") == []
        assert await compare_table(str(app_db), pg_dsn, "app", "plans_v2") == []
        assert d.stop() == 0
        since = d.log()[seen:]
    assert 'table "plans_v2" was renamed to "plans" in SQLite' in since, since
    assert "table=plans event=snapshot_started" not in since, since
    kept = [t for t in await pg_tables(pg_dsn) if t.startswith("plans__dropped_")]
    assert len(kept) == 1, await pg_tables(pg_dsn)
    assert await pg_rows(pg_dsn, f'SELECT id, name FROM app."{kept[0]}" ORDER BY id') == [(1, "old basic"),
                                                                                       (2, "old pro")]


async def test_a_new_table_under_a_renamed_ones_name_never_streams_on_its_rows(app_db, make_config, pg_dsn, tmp_path):
    """The same migration (a table renamed away and a new one created under its old name)
    while the new name is taken in Postgres by a table syncd did not create: the renamed
    table is refused there, and the new one is loaded in place of the rows Postgres holds
    under its name (the renamed table's), never streamed on over them."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE ev (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO ev VALUES (1, 'a'), (2, 'b');")
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        await pg_rows(pg_dsn, "CREATE TABLE app.ev_2024 (x integer)")
        conn.executescript("BEGIN; ALTER TABLE ev RENAME TO ev_2024;"
                           "CREATE TABLE ev (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO ev VALUES (9, 'new'); COMMIT;")

        async def refused() -> bool:
            return (await table_states(pg_dsn, "app")).get("ev_2024", ("",))[0] == "refused"

        await eventually(refused, 30, "the renamed table refused", d)
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, v FROM app.ev ORDER BY id") == [(9, "new")]
        assert d.stop() == 0


async def test_a_rebuild_that_lets_a_column_hold_null_is_followed(app_db, make_config, pg_dsn, tmp_path):
    """The 12-step rebuild is SQLite's only way to drop a NOT NULL: the table is loaded
    again, and a row the application then writes with NULL there reaches Postgres, whose
    column lets it hold NULL too, as SQLite's does now."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT NOT NULL, note TEXT);"
                       "INSERT INTO items VALUES (1, 'a', 'x'), (2, 'b', 'y');")
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.executescript("""
            BEGIN;
            CREATE TABLE new_items (id INTEGER PRIMARY KEY, label TEXT, note TEXT);
            INSERT INTO new_items SELECT * FROM items;
            DROP TABLE items;
            ALTER TABLE new_items RENAME TO items;
            COMMIT;
        """)
        conn.execute("INSERT INTO items (id, note) VALUES (3, 'no label')")
        conn.execute("UPDATE items SET label = NULL WHERE id = 1")
        await wait_caught_up(app_db, pg_dsn, "app", timeout=30, daemon=d)
        assert await table_states(pg_dsn, "app") == {"items": ("streaming", None)}
        assert await compare_table(str(app_db), pg_dsn, "app", "items") == []
        conn.execute("INSERT INTO items (id, note) VALUES (4, 'streamed without a label')")
        await wait_caught_up(app_db, pg_dsn, "app", timeout=30, daemon=d)
        assert await compare_table(str(app_db), pg_dsn, "app", "items") == []
        assert d.stop() == 0
        dropped = [line for line in d.log().splitlines() if "NOT NULL in Postgres is dropped" in line]
    assert await pg_rows(pg_dsn, "SELECT is_nullable FROM information_schema.columns WHERE table_schema = 'app' "
                                 "AND table_name = 'items' AND column_name = 'label'") == [("YES",)]
    assert len(dropped) == 1 and '"label"' in dropped[0], dropped  # said: a NOT NULL set in Postgres goes too


async def test_a_table_replaced_by_a_view_of_its_name_is_kept_aside_for_the_view(app_db, make_config, pg_dsn,
                                                                                 tmp_path):
    """A migration moves a table's rows into a new table and leaves a view under the old
    name for the code that still reads it: the old table was dropped in SQLite, so its
    Postgres copy is kept aside as a dropped table's is, and the name is free for the view
    the cutover creates; the application then reads the rows of today through it, not the
    copy of the day of the migration."""
    from tests.support.way_back import back_up, backup_and_config, cut_over

    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE contacts (id INTEGER PRIMARY KEY, name TEXT, phone TEXT);"
                       "INSERT INTO contacts VALUES (1, 'Ada', '555-1'), (2, 'Grace', '555-2');")
    cfg = backup_and_config(make_config, tmp_path, app_db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        seen = len(d.log())
        conn.executescript("""
            BEGIN;
            CREATE TABLE people (id INTEGER PRIMARY KEY, full_name TEXT, phone TEXT);
            INSERT INTO people SELECT id, name, phone FROM contacts;
            DROP TABLE contacts;
            CREATE VIEW contacts AS SELECT id, full_name AS name, phone FROM people;
            COMMIT;
        """)
        conn.execute("UPDATE people SET phone = '555-9' WHERE id = 1")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await table_states(pg_dsn, "app") == {"people": ("streaming", None)}
        kept = [t for t in await pg_tables(pg_dsn) if t.startswith("contacts__dropped_")]
        assert len(kept) == 1, await pg_tables(pg_dsn)
        assert await pg_rows(pg_dsn, f'SELECT id, phone FROM app."{kept[0]}" ORDER BY id') == [(1, "555-1"),
                                                                                            (2, "555-2")]
        since = d.log()[seen:]
        assert "no longer configured" not in since, since
        back_up(app_db, tmp_path / "backups")
        out = await cut_over(cfg, app_db, pg_dsn, daemon=d)
        assert d.stop() == 0
    assert 'the name "contacts" is taken' not in out, out
    assert await pg_rows(pg_dsn, "SELECT table_type FROM information_schema.tables WHERE table_schema = 'app' "
                                 "AND table_name = 'contacts'") == [("VIEW",)]
    assert await pg_rows(pg_dsn, "SELECT name, phone FROM app.contacts ORDER BY id") == [("Ada", "555-9"),
                                                                                        ("Grace", "555-2")]


async def test_a_table_dropped_and_created_again_with_another_type_loads_at_once(app_db, make_config, pg_dsn,
                                                                                  tmp_path):
    """A table dropped (kept aside) and created again under its name with a column of
    another type: its load wrote the new values as the old table's types (the Postgres
    driver remembers a table's columns by its name), failed with an unexpected error
    ("'str' object cannot be interpreted as an integer") and went through only when the
    step was tried again. It loads at the first try."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute("CREATE TABLE products (id INTEGER PRIMARY KEY, code INTEGER)")
    conn.execute("INSERT INTO products VALUES (1, 10), (2, 20)")
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("DROP TABLE products")
        await eventually(lambda: _no_row(pg_dsn, "products"), 30, "the drop followed", d)
        conn.execute("CREATE TABLE products (id TEXT PRIMARY KEY, code TEXT)")
        conn.execute("INSERT INTO products VALUES ('x1', 'ten'), ('x2', 'twenty')")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await compare_table(str(app_db), pg_dsn, "app", "products") == []
        assert d.stop() == 0
        assert "event=failing" not in d.log() and "unexpected error" not in d.log(), d.log()


async def test_a_table_renamed_while_syncd_compares_its_columns_is_followed(app_db, make_config, pg_dsn, tmp_path,
                                                                            monkeypatch):
    """The application renames a table while syncd follows a schema change of it, after
    syncd read the schema and while it compared the table's rows on both sides (which
    tells a renamed column from one dropped and added): the read of the table's rows
    failed ("no such table"), and the whole step with it, an unexpected error logged as
    one. The schema is read again, and the rename followed."""
    from syncd import collisions
    from syncd.config import Settings
    from syncd.reconcile import reconcile
    from syncd.session import SourceSession

    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE orders (ref TEXT PRIMARY KEY, total REAL);"
                       "INSERT INTO orders VALUES ('o1', 9.5), ('o2', 20.0);")
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    conn.execute("ALTER TABLE orders ADD COLUMN note TEXT")  # a schema change syncd follows

    read_rows = collisions.read_current

    def renamed_meanwhile(c: sqlite3.Connection, *args):
        app = sqlite3.connect(app_db, isolation_level=None)
        if app.execute("SELECT 1 FROM sqlite_master WHERE name = 'orders'").fetchone():
            app.execute("ALTER TABLE orders RENAME TO purchases")
        app.close()
        return read_rows(c, *args)

    monkeypatch.setattr(collisions, "read_current", renamed_meanwhile)
    settings = Settings(postgres={"dsn": pg_dsn}, metrics={"listen": ""}, sources=[{"name": "app", "path": str(app_db)}])
    session = SourceSession(settings, settings.sources[0])
    try:
        await session.connect_postgres()
        async with session.step():
            await reconcile(session)
        assert set(session.tables) == {"purchases"}
    finally:
        await session.close()
    monkeypatch.undo()
    assert "purchases" in await pg_tables(pg_dsn) and "orders" not in await pg_tables(pg_dsn)
    conn.execute("INSERT INTO purchases VALUES ('o3', 1.0, 'after')")
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await compare_table(str(app_db), pg_dsn, "app", "purchases") == []
        assert d.stop() == 0


async def test_a_row_written_while_syncd_compares_the_columns_reloads_nothing(app_db, make_config, pg_dsn, tmp_path,
                                                                              monkeypatch):
    """After a schema change syncd compares the rows both sides hold, leaving out those
    changed since Postgres saw them: a row the application wrote between syncd's look at
    what changed and its read of the rows was compared as unchanged, its new value taken
    for a column that no longer holds what Postgres copied, and the whole table was
    reloaded (a plain ADD COLUMN, under a steady stream of writes). It is left out too."""
    from syncd import collisions
    from syncd.config import Settings
    from syncd.reconcile import reconcile
    from syncd.session import SourceSession

    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute("CREATE TABLE orders (ref TEXT PRIMARY KEY, total REAL)")
    conn.executemany("INSERT INTO orders VALUES (?, ?)", [(f"o{i}", float(i)) for i in range(1, 21)])
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    conn.execute("ALTER TABLE orders ADD COLUMN note TEXT")  # a schema change syncd follows

    read_rows = collisions.read_current

    def written_meanwhile(c: sqlite3.Connection, *args):
        app = sqlite3.connect(app_db, isolation_level=None)
        app.execute("UPDATE orders SET total = total + 1000 WHERE ref = 'o1'")
        app.close()
        return read_rows(c, *args)

    monkeypatch.setattr(collisions, "read_current", written_meanwhile)
    settings = Settings(postgres={"dsn": pg_dsn}, metrics={"listen": ""}, sources=[{"name": "app", "path": str(app_db)}])
    session = SourceSession(settings, settings.sources[0])
    try:
        await session.connect_postgres()
        async with session.step():
            await reconcile(session)
    finally:
        await session.close()
    monkeypatch.undo()
    assert await table_states(pg_dsn, "app") == {"orders": ("streaming", None)}
