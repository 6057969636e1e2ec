"""What the application built in Postgres after the cutover survives a rollback: a
column it narrowed (varchar(n), numeric(p,s)) is turned back into syncd's type in place,
not by reloading the table, which would replace rows the application's own foreign keys
point at (the reload failed on them and held the table for good); a NOT NULL, a
constraint or a unique index it made there that SQLite does not have is named before the
rollback switches."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import uuid

import asyncpg
import pytest

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, pg_rows, table_states, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, cut_over_and_stop, wait_back


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE companies (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, revenue NUMERIC);
        INSERT INTO companies (name, revenue) VALUES ('Acme', 12.5), ('Globex', 1000);
    """)
    conn.commit()
    conn.close()


async def rolled_back_with(cfg, db, pg_dsn: str, daemon, statements: list[str], tables: tuple[str, ...]) -> None:
    """After the cutover the application makes `tables` in Postgres (`statements`); once
    SQLite follows them, `syncd rollback` switches back."""
    for sql in statements:
        await pg_rows(pg_dsn, sql)

    async def copied() -> bool:
        states = await table_states(pg_dsn, "app")
        return all(states.get(t, ("",))[0] == "streaming" for t in tables)

    await eventually(copied, 60, "the new tables copied into SQLite", daemon=daemon)
    await wait_back(cfg, db, pg_dsn, daemon=daemon)
    r = run_cli(cfg, "rollback")
    assert r.returncode == 0, r.stdout + r.stderr


@contextlib.asynccontextmanager
async def rolled_back_app(tmp_path, make_config, pg_dsn: str, statements: list[str], tables: tuple[str, ...]):
    """The application's file cut over, `tables` made in Postgres after it (`statements`),
    then rolled back: (file, config, the daemon still running) inside the block."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await rolled_back_with(cfg, db, pg_dsn, d, statements, tables)
        yield db, cfg, d


async def column_types(dsn: str, table: str) -> dict[str, str]:
    return dict(await pg_rows(dsn, "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                                   "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped", table))


async def test_columns_narrowed_in_postgres_are_widened_in_place_after_a_rollback(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        # The application's migration, on Postgres now.
        await pg_rows(pg_dsn, "ALTER TABLE app.companies ALTER COLUMN name TYPE varchar(50), "
                              "ALTER COLUMN revenue TYPE numeric(12,2)")
        await pg_rows(pg_dsn, "CREATE TABLE app.notes (id bigserial PRIMARY KEY, "
                              "company_id bigint REFERENCES app.companies (id), body text)")
        await pg_rows(pg_dsn, "INSERT INTO app.notes (company_id, body) VALUES (1, 'call back')")
        await pg_rows(pg_dsn, "INSERT INTO app.companies (name, revenue) VALUES ('Initech', 7.25)")

        async def notes_copied() -> bool:
            # The way back finds the new table at its next look, and copies it: until then
            # nothing says SQLite lacks it (a rollback meanwhile is refused, rightly).
            states = await table_states(pg_dsn, "app")
            return states.get("notes", ("",))[0] == "streaming"

        await eventually(notes_copied, 60, "the new table copied into SQLite", daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr

        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO companies (name, revenue) VALUES ('Umbrella', 3.5)")
        conn.execute("UPDATE companies SET revenue = 13.75 WHERE id = 1")
        conn.commit()
        conn.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        d.wait_log("turned back in place, every value as it was")
        types = await column_types(pg_dsn, "app.companies")
        assert (types["name"], types["revenue"]) == ("text", "numeric")
        after_rollback = d.log().split("(after a rollback)")[-1]
        assert "reloading the table" not in after_rollback and "reload_started" not in after_rollback
        states = await table_states(pg_dsn, "app")
        assert all(state == "streaming" for state, _ in states.values()), states
        assert await pg_rows(pg_dsn, "SELECT id, name, revenue::text FROM app.companies ORDER BY id") == [
            (1, "Acme", "13.75"), (2, "Globex", "1000.00"), (3, "Initech", "7.25"), (4, "Umbrella", "3.5")]
        assert await pg_rows(pg_dsn, "SELECT company_id, body FROM app.notes") == [(1, "call back")]
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr


async def test_a_not_null_postgres_enforces_and_sqlite_does_not_is_named_before_the_rollback(tmp_path, make_config,
                                                                                              pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE app.companies ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now()")

        async def followed() -> bool:  # a schema change alone leaves no change for wait_back to see
            return any(r[1] == "updated_at" for r in sqlite3.connect(db).execute("PRAGMA table_info(companies)"))

        await eventually(followed, 60, "the column added in SQLite too", d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        for args in (("rollback", "--dry-run"), ("rollback",)):
            r = run_cli(cfg, *args)
            assert r.returncode == 0, r.stdout + r.stderr
            assert 'warning: Postgres refuses NULL in "companies"."updated_at"' in r.stdout, r.stdout
            assert '"name"' not in r.stdout  # NOT NULL on both sides: nothing to say


async def test_constraints_made_in_postgres_only_are_named_before_the_rollback(tmp_path, make_config, pg_dsn):
    """The application's CHECK and unique index, made in Postgres after the cutover, are
    named; what syncd carried from SQLite (a CHECK, a UNIQUE, a foreign key, an index) is
    not."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE companies (id INTEGER PRIMARY KEY, name TEXT NOT NULL, revenue NUMERIC);
        CREATE TABLE contacts (id INTEGER PRIMARY KEY, company_id INTEGER REFERENCES companies(id),
                               email TEXT UNIQUE CHECK (length(email) > 3));
        CREATE INDEX contacts_company ON contacts(company_id);
        INSERT INTO companies VALUES (1, 'Acme', 12.5), (2, 'Globex', 1000);
        INSERT INTO contacts VALUES (1, 1, 'a@acme.example');
    """)
    conn.commit()
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        carried = await pg_rows(pg_dsn, "SELECT contype::text FROM pg_constraint "
                                        "WHERE conrelid = 'app.contacts'::regclass ORDER BY 1")
        assert {"c", "f", "u"} <= {c for (c,) in carried}, carried
        before = run_cli(cfg, "rollback", "--dry-run")
        assert before.returncode == 0 and "warning" not in before.stdout, before.stdout + before.stderr
        await pg_rows(pg_dsn, "ALTER TABLE app.companies ADD CONSTRAINT revenue_positive CHECK (revenue >= 0)")
        await pg_rows(pg_dsn, "CREATE UNIQUE INDEX companies_name ON app.companies (name)")
        r = run_cli(cfg, "rollback", "--dry-run")
        assert r.returncode == 0, r.stdout + r.stderr
        warnings = [line for line in r.stdout.splitlines() if "warning" in line]
        assert len(warnings) == 2, r.stdout
        assert 'Postgres holds "companies_name" on "companies"' in warnings[0]
        assert 'Postgres holds "revenue_positive" on "companies" (CHECK ((revenue >= ' in warnings[1]


async def test_a_cascading_foreign_key_made_in_postgres_is_named_for_what_it_deletes_there(tmp_path, make_config,
                                                                                           pg_dsn):
    """A foreign key ON DELETE CASCADE the application made in Postgres after the cutover
    holds no table after the rollback: deleting in SQLite a row it points at deletes the
    rows pointing at it in Postgres only. The rollback says so, not only that a row
    breaking it holds its table (which was all it said). So for a foreign key of a table
    in another schema (another application's) pointing at the source's table, which was
    not named at all: the rows it deletes there are in no SQLite file."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "CREATE TABLE app.notes (id bigint PRIMARY KEY, "
                              "company_id bigint REFERENCES app.companies (id) ON DELETE CASCADE, body text)")
        await pg_rows(pg_dsn, "INSERT INTO app.notes VALUES (1, 1, 'call back')")
        await pg_rows(pg_dsn, "CREATE SCHEMA crm")
        await pg_rows(pg_dsn, "CREATE TABLE crm.deals (id bigint PRIMARY KEY, "
                              "company_id bigint REFERENCES app.companies (id) ON DELETE CASCADE)")
        await eventually(lambda: _followed(db, "notes"), 60, "notes in SQLite", d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        r = run_cli(cfg, "rollback", "--dry-run")
        assert r.returncode == 0, r.stdout + r.stderr
        line = next(x for x in r.stdout.splitlines() if '"notes_company_id_fkey"' in x)
        assert "deletes or changes the rows pointing at it in Postgres only" in line, line
        line = next((x for x in r.stdout.splitlines() if '"deals_company_id_fkey"' in x), r.stdout)
        assert 'of "crm"."deals"' in line and 'points at "companies"' in line, line
        assert "deletes or changes the rows pointing at it in Postgres only" in line, line


async def test_an_identity_generated_always_in_postgres_takes_sqlite_rows_after_a_rollback(
        tmp_path, make_config, pg_dsn):
    """A table the application made in Postgres after the cutover with `GENERATED ALWAYS
    AS IDENTITY` keys: after a rollback, the rows the application writes to SQLite reach
    Postgres with SQLite's ids (Postgres refuses a plain INSERT of them)."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await made_after_the_cutover(cfg, db, pg_dsn, d, "visits",
                                     "CREATE TABLE app.visits (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                                     "who text NOT NULL DEFAULT 'anonymous', at timestamptz DEFAULT now())",
                                     "INSERT INTO app.visits (who) VALUES ('a'), ('b')")
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        # now() does not come to SQLite as a default: said before the switch (ids and 'anonymous' do)
        filled = [line for line in r.stdout.splitlines() if "warning: Postgres fills" in line]
        assert len(filled) == 1 and '"visits"."at" in a row that leaves it out (DEFAULT now()' in filled[0], r.stdout
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO visits (who, at) VALUES ('from sqlite', '2026-12-24 18:00:00')")
        conn.execute("UPDATE visits SET who = 'changed in sqlite' WHERE id = 1")
        conn.commit()
        conn.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, who FROM app.visits ORDER BY id") == \
            [(1, "changed in sqlite"), (2, "b"), (3, "from sqlite")]
        assert "GENERATED ALWAYS" not in d.log()


async def test_a_column_generated_always_outside_the_key_takes_sqlite_values_after_a_rollback(
        tmp_path, make_config, pg_dsn):
    """A column the application made `GENERATED ALWAYS AS IDENTITY` in Postgres outside
    the primary key: Postgres lets nothing but DEFAULT into it on UPDATE, so after a
    rollback the first change from SQLite would hold the table. The rollback makes it
    GENERATED BY DEFAULT (said in its plan, before the switch) and SQLite's rows flow."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await made_after_the_cutover(cfg, db, pg_dsn, d, "tickets",
                                     "CREATE TABLE app.tickets (id bigint PRIMARY KEY, "
                                     "number bigint GENERATED ALWAYS AS IDENTITY, title text)",
                                     "INSERT INTO app.tickets (id, title) VALUES (10, 'a'), (20, 'b')")
        dry = run_cli(cfg, "rollback", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        said = [line for line in dry.stdout.splitlines() if "GENERATED" in line]
        assert len(said) == 1 and "GENERATED BY DEFAULT" in said[0], dry.stdout
        assert await pg_rows(pg_dsn, "SELECT attidentity FROM pg_attribute WHERE attrelid = 'app.tickets'::regclass "
                                     "AND attname = 'number'") == [(b"a",)]  # a dry run changes nothing
        # One of syncd's own sessions between two statements of its transaction is no obstacle.
        ours = await asyncpg.connect(pg_dsn, server_settings={"application_name": "syncd otherhost pid 1"})
        try:
            await ours.execute("BEGIN; SELECT count(*) FROM app.tickets")
            assert run_cli(cfg, "rollback", "--dry-run").returncode == 0
        finally:
            await ours.close()
        # A session of the application's idle inside a transaction that read the table:
        # the rollback would wait for it in vain, so it refuses before changing anything.
        reader = await asyncpg.connect(pg_dsn)
        try:
            await reader.execute("BEGIN; SELECT count(*) FROM app.tickets")
            r = run_cli(cfg, "rollback")
        finally:
            await reader.close()
        assert r.returncode == 1, r.stdout + r.stderr
        assert re.search(r"REFUSED: Postgres backend \d+ \(an unnamed client, idle in transaction\) has held a lock "
                         r'on "tickets" inside one transaction for over 1 s', r.stdout), r.stdout
        assert await pg_rows(pg_dsn, "SELECT count(*) FROM syncd.switches WHERE kind = 'rollback'") == [(0,)]
        # A writer busy inside a long transaction: the switch would wait for it too.
        writer = await asyncpg.connect(pg_dsn)
        try:
            busy = asyncio.create_task(writer.execute("BEGIN; UPDATE app.tickets SET title = title; "
                                                      "SELECT pg_sleep(30); ROLLBACK"))
            await asyncio.sleep(0.5)
            r = await asyncio.to_thread(run_cli, cfg, "rollback")
        finally:  # its transaction ends with its backend
            await pg_rows(pg_dsn, "SELECT pg_terminate_backend($1)", writer.get_server_pid())
            await asyncio.gather(busy, return_exceptions=True)
            writer.terminate()
        assert r.returncode == 1, r.stdout + r.stderr
        assert re.search(r"REFUSED: Postgres backend \d+ \(an unnamed client, active\) has held a lock on "
                         r'"tickets" inside one transaction', r.stdout), r.stdout
        assert await pg_rows(pg_dsn, "SELECT count(*) FROM syncd.switches WHERE kind = 'rollback' "
                                     "AND state <> 'undone'") == [(0,)]
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        assert '"tickets"."number" is GENERATED ALWAYS AS IDENTITY in Postgres, outside the key, and takes no value ' \
               "from SQLite on UPDATE: made GENERATED BY DEFAULT" in r.stdout, r.stdout
        assert await pg_rows(pg_dsn, "SELECT attidentity FROM pg_attribute WHERE attrelid = 'app.tickets'::regclass "
                                     "AND attname = 'number'") == [(b"d",)]
        conn = sqlite3.connect(db)
        conn.execute("UPDATE tickets SET number = number + 100, title = 'changed in sqlite' WHERE id = 10")
        conn.execute("INSERT INTO tickets (id, number, title) VALUES (30, 7, 'from sqlite')")
        conn.commit()
        conn.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, number, title FROM app.tickets ORDER BY id") == \
            [(10, 101, "changed in sqlite"), (20, 2, "b"), (30, 7, "from sqlite")]
        assert (await table_states(pg_dsn, "app"))["tickets"][0] == "streaming"
        assert "can only be updated to DEFAULT" not in d.log()


async def made_after_the_cutover(cfg, db, pg_dsn, daemon, table: str, *sql: str) -> None:
    """Cut over, then the application makes `table` in Postgres (`sql`), and SQLite
    follows it, caught up."""
    await cut_over(cfg, db, pg_dsn, daemon=daemon)
    for statement in sql:
        await pg_rows(pg_dsn, statement)
    await eventually(lambda: _followed(db, table), 30, f"{table} in SQLite", daemon)
    await wait_back(cfg, db, pg_dsn, daemon=daemon)


async def _followed(db, table: str) -> bool:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone() is not None
    finally:
        conn.close()


async def test_a_table_made_in_postgres_that_sqlite_does_not_follow_yet_refuses_the_rollback(
        tmp_path, make_config, pg_dsn):
    """A table the application made in Postgres that the way back has not taken up yet
    (no daemon ran since): SQLite has none of its rows, and the verification compares
    SQLite's tables; the rollback refuses, naming it, instead of switching back without it."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    await cut_over_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    await pg_rows(pg_dsn, "CREATE TABLE app.late (id bigint PRIMARY KEY, body text)")
    await pg_rows(pg_dsn, "INSERT INTO app.late VALUES (1, 'only in Postgres')")
    r = run_cli(cfg, "rollback")
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'REFUSED: table "late" exists in Postgres and SQLite does not follow it yet' in r.stdout, r.stdout
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await eventually(lambda: _followed(db, "late"), 30, "late in SQLite", d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "verified equal: 3 row(s) in 2 table(s)" in r.stdout, r.stdout


@pytest.mark.parametrize("action", ["ON DELETE CASCADE", "ON DELETE SET NULL", "ON DELETE NO ACTION"])
async def test_a_table_loaded_again_after_a_rollback_keeps_the_rows_of_tables_whose_foreign_keys_point_at_it(
        tmp_path, make_config, pg_dsn, action):
    """A table the application made in Postgres after the cutover has a foreign key to one
    of SQLite's tables. After the rollback a schema change in SQLite has that table loaded
    again (a NOT NULL column whose default Postgres cannot give): its rows, the same keys
    as before, are replaced without the foreign key's action firing. Before, every row of
    the other table was deleted with them (ON DELETE CASCADE) or lost its reference (SET
    NULL) in Postgres only, or the load failed on them and held the table for good."""
    async with rolled_back_app(tmp_path, make_config, pg_dsn, [
        "CREATE TABLE app.notes (id bigint PRIMARY KEY, "
          f"company_id bigint REFERENCES app.companies (id) {action}, body text)",
        "INSERT INTO app.notes VALUES (1, 1, 'call back'), (2, 2, 'send the offer')",
    ], ("notes",)) as (db, cfg, d):
        conn = sqlite3.connect(db)
        conn.execute("ALTER TABLE companies ADD COLUMN currency TEXT NOT NULL DEFAULT 1.50")
        conn.execute("INSERT INTO companies (name, revenue) VALUES ('Umbrella', 3.5)")
        conn.commit()
        conn.close()
        d.wait_log("reloading the table")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, company_id, body FROM app.notes ORDER BY id") == [
            (1, 1, "call back"), (2, 2, "send the offer")]
        conn = sqlite3.connect(db)
        in_sqlite = conn.execute("SELECT id, name, currency FROM companies ORDER BY id").fetchall()
        conn.close()
        assert len(in_sqlite) == 3
        assert await pg_rows(pg_dsn, "SELECT id, name, currency FROM app.companies ORDER BY id") == in_sqlite
        states = await table_states(pg_dsn, "app")
        assert all(state == "streaming" for state, _ in states.values()), states
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr


async def test_integer_columns_of_a_table_made_in_postgres_are_widened_in_place_after_a_rollback(
        tmp_path, make_config, pg_dsn):
    """The application made two tables in Postgres after the cutover, one keyed `serial`
    (an integer, where syncd's type is bigint) and one whose foreign key ON DELETE CASCADE
    points at it. After the rollback the integer column is widened in place, every value
    as it was. Before, the table was loaded again to retype it, and the reload's delete
    emptied the other table in Postgres, with no write of the application's."""
    async with rolled_back_app(tmp_path, make_config, pg_dsn, [
        "CREATE TABLE app.projects (id serial PRIMARY KEY, name text, budget smallint)",
        "CREATE TABLE app.tasks (id bigint PRIMARY KEY, "
          "project_id bigint REFERENCES app.projects ON DELETE CASCADE, title text)",
        "INSERT INTO app.projects (name, budget) VALUES ('launch', 10), ('audit', 20)",
        "INSERT INTO app.tasks VALUES (1, 1, 'book the hall'), (2, 2, 'count the cash')",
    ], ("projects", "tasks")) as (db, cfg, d):
        d.wait_log("turned back in place, every value as it was")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        types = await column_types(pg_dsn, "app.projects")
        assert (types["id"], types["budget"]) == ("bigint", "bigint")
        assert await pg_rows(pg_dsn, "SELECT id, project_id, title FROM app.tasks ORDER BY id") == [
            (1, 1, "book the hall"), (2, 2, "count the cash")]
        after_rollback = d.log().split("rolled back to SQLite")[-1]
        assert "reloading the table" not in after_rollback, after_rollback
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr


async def test_a_real_column_of_a_table_made_in_postgres_is_widened_in_place_after_a_rollback(
        tmp_path, make_config, pg_dsn):
    """As an integer column: a `real` column (where syncd's type is double precision) of a
    table another table's foreign key ON DELETE CASCADE points at is made double precision
    in place after the rollback, every value as it was, instead of loading the table
    again, whose delete emptied the other table in Postgres."""
    async with rolled_back_app(tmp_path, make_config, pg_dsn, [
        "CREATE TABLE app.products (id bigint PRIMARY KEY, name text, weight real)",
        "CREATE TABLE app.lines (id bigint PRIMARY KEY, "
          "product_id bigint REFERENCES app.products ON DELETE CASCADE, qty bigint)",
        "INSERT INTO app.products VALUES (1, 'bolt', 0.25), (2, 'nut', 0.1)",
        "INSERT INTO app.lines VALUES (1, 1, 10), (2, 2, 20)",
    ], ("products", "lines")) as (db, cfg, d):
        d.wait_log("turned back in place, every value as it was")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert (await column_types(pg_dsn, "app.products"))["weight"] == "double precision"
        assert await pg_rows(pg_dsn, "SELECT id, product_id, qty FROM app.lines ORDER BY id") == [(1, 1, 10), (2, 2, 20)]
        after_rollback = d.log().split("rolled back to SQLite")[-1]
        assert "reloading the table" not in after_rollback, after_rollback
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr


async def test_a_table_made_in_postgres_loaded_again_to_retype_it_keeps_the_rows_pointing_at_it(
        tmp_path, make_config, pg_dsn):
    """A table the application made in Postgres with a `char(2)` column (syncd's type is
    text, and Postgres cannot make it so without changing values: it is loaded again
    after the rollback) while another table's foreign key ON DELETE CASCADE points at it.
    The column is retyped on the rows as they are and the load then rewrites them in
    place. Before, the load deleted every row and the cascade emptied the other table."""
    async with rolled_back_app(tmp_path, make_config, pg_dsn, [
        "CREATE TABLE app.countries (id bigint PRIMARY KEY, code char(2), name text)",
        "CREATE TABLE app.cities (id bigint PRIMARY KEY, "
          "country_id bigint REFERENCES app.countries ON DELETE CASCADE, name text)",
        "INSERT INTO app.countries VALUES (1, 'fr', 'France'), (2, 'x', 'Nowhere')",
        "INSERT INTO app.cities VALUES (1, 1, 'Paris'), (2, 2, 'Atlantis')",
    ], ("countries", "cities")) as (db, cfg, d):
        d.wait_log("reloading the table")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert (await column_types(pg_dsn, "app.countries"))["code"] == "text"
        assert await pg_rows(pg_dsn, "SELECT id, country_id, name FROM app.cities ORDER BY id") == [
            (1, 1, "Paris"), (2, 2, "Atlantis")]
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr


async def test_a_view_keeping_a_column_from_its_type_holds_only_its_table_and_names_the_view(
        tmp_path, make_config, pg_dsn):
    """A table the application made in Postgres with an integer column, and a view over
    that column: Postgres retypes no column a view uses, so after the rollback the column
    cannot become syncd's bigint. The table is held with that reason, naming the view, and
    goes on once the view is dropped. Before, the source reported "failing: unexpected
    error" and retried the load every second, for good."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db, stream={"held_table_retry_seconds": 1})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await rolled_back_with(cfg, db, pg_dsn, d, [
            "CREATE TABLE app.lines (id bigint PRIMARY KEY, qty integer)",
            "CREATE VIEW app.big_lines AS SELECT id, qty FROM app.lines WHERE qty > 1",
            "INSERT INTO app.lines VALUES (1, 2), (2, 1)",
        ], ("lines",))

        async def held() -> bool:
            return (await table_states(pg_dsn, "app")).get("lines", ("",))[0] == "held"

        await eventually(held, 60, "the table held", daemon=d)
        reason = (await table_states(pg_dsn, "app"))["lines"][1]
        assert "view app.big_lines" in reason, reason
        status = run_cli(cfg, "status")
        assert "unexpected error" not in status.stdout and "failing" not in status.stdout, status.stdout
        await pg_rows(pg_dsn, "DROP VIEW app.big_lines")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert (await column_types(pg_dsn, "app.lines"))["qty"] == "bigint"
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr


async def test_a_table_made_in_postgres_with_a_serial_key_is_cut_over_again_after_a_rollback(
        tmp_path, make_config, pg_dsn):
    """The application made a table keyed `bigserial` in Postgres after the cutover. After
    the rollback the next cutover moves the serial's sequence past SQLite's ids: an INSERT
    without an id gets the next one. Before, the cutover moved another sequence than the
    one numbering the rows, its trial INSERT got an id SQLite holds, and every cutover of
    the source was undone."""
    async with rolled_back_app(tmp_path, make_config, pg_dsn, [
        "CREATE TABLE app.tickets (id bigserial PRIMARY KEY, title text)",
        "INSERT INTO app.tickets (title) VALUES ('first'), ('second')",
    ], ("tickets",)) as (db, cfg, d):
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO tickets (title) VALUES ('third, in SQLite')")
        conn.commit()
        conn.close()
        out = await cut_over(cfg, db, pg_dsn, daemon=d)
        assert "tickets.id continues after 3" in out, out
        assert await pg_rows(pg_dsn, "INSERT INTO app.tickets (title) VALUES ('fourth, in Postgres') "
                                     "RETURNING id") == [(4,)]
        await wait_back(cfg, db, pg_dsn, daemon=d)
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr


async def test_an_exclusion_constraint_made_in_postgres_does_not_refuse_the_next_cutover(tmp_path, make_config, pg_dsn):
    """The application made an EXCLUDE constraint in Postgres after the cutover, which the
    rollback names and keeps. The next cutover's trial INSERT (a copy of the newest row,
    rolled back) meets it as it meets a unique index: the identity gave the copy its
    number all the same, and the switch goes on. Before, it was undone each time."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE app.companies ADD CONSTRAINT one_name EXCLUDE USING btree (name WITH =)")
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        assert 'Postgres holds "one_name" on "companies"' in r.stdout, r.stdout
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO companies (name, revenue) VALUES ('Initech', 7)")
        conn.commit()
        conn.close()
        out = await cut_over(cfg, db, pg_dsn, daemon=d)
        assert "trial INSERT met exclusion constraint one_name" in out, out
        assert await pg_rows(pg_dsn, "INSERT INTO app.companies (name) VALUES ('Umbrella') RETURNING id") == [(4,)]
        await wait_back(cfg, db, pg_dsn, daemon=d)
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr


async def test_a_column_postgres_computes_and_sqlite_does_not_is_named_before_the_rollback(tmp_path, make_config,
                                                                                           pg_dsn):
    """The application added a GENERATED ALWAYS AS (...) STORED column in Postgres after
    the cutover; SQLite holds it as a plain column. After the rollback a row the
    application writes to SQLite holds NULL there where Postgres computes a value, and
    every such row is a difference: `syncd rollback` (and --dry-run) says so first, as
    for a DEFAULT only Postgres has. Before, nothing was said until the first check."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE app.companies ADD COLUMN shout text "
                              "GENERATED ALWAYS AS (upper(name)) STORED")

        async def followed() -> bool:
            conn = sqlite3.connect(db)
            try:
                return any(r[1] == "shout" for r in conn.execute("PRAGMA table_info(companies)"))
            finally:
                conn.close()

        await eventually(followed, 60, "the column added in SQLite too", d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        for args in (("rollback", "--dry-run"), ("rollback",)):
            r = run_cli(cfg, *args)
            assert r.returncode == 0, r.stdout + r.stderr
            assert 'warning: Postgres computes "companies"."shout"' in r.stdout, r.stdout


async def test_tables_linked_by_a_foreign_key_on_a_key_retyped_to_uuid_follow_sqlite_after_a_rollback(
        tmp_path, make_config, pg_dsn):
    """After the cutover the application made a TEXT key holding UUIDs `uuid` in Postgres,
    the column of another table pointing at it too, and a foreign key between them. After
    the rollback both columns are turned back into text together, the foreign key kept,
    and SQLite's writes to both tables reach Postgres. Before, Postgres refused to retype
    either column alone ("foreign key ... cannot be implemented ... uuid and text"): both
    tables were held for good, and the next cutover was refused. Two such tables still
    empty (teams, members) are turned back the same way before they are loaded; before,
    the source failed with an unexpected error, every one of its tables at a standstill."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript(f"""
        CREATE TABLE accounts (id TEXT PRIMARY KEY, name TEXT);
        CREATE TABLE logins (id INTEGER PRIMARY KEY, account_id TEXT, at TEXT);
        INSERT INTO accounts VALUES ('{uuid.UUID(int=1)}', 'ann'), ('{uuid.UUID(int=2)}', 'bob');
        INSERT INTO logins (account_id, at) VALUES ('{uuid.UUID(int=1)}', 'mon'), ('{uuid.UUID(int=2)}', 'tue');
        CREATE TABLE teams (id TEXT PRIMARY KEY);
        CREATE TABLE members (id INTEGER PRIMARY KEY, team_id TEXT);
    """)
    conn.commit()
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE app.accounts ALTER COLUMN id TYPE uuid USING id::uuid")
        await pg_rows(pg_dsn, "ALTER TABLE app.logins ALTER COLUMN account_id TYPE uuid USING account_id::uuid")
        await pg_rows(pg_dsn, "ALTER TABLE app.logins ADD CONSTRAINT logins_account FOREIGN KEY (account_id) "
                              "REFERENCES app.accounts (id) ON DELETE CASCADE")
        await pg_rows(pg_dsn, "ALTER TABLE app.teams ALTER COLUMN id TYPE uuid USING id::uuid")
        await pg_rows(pg_dsn, "ALTER TABLE app.members ALTER COLUMN team_id TYPE uuid USING team_id::uuid")
        await pg_rows(pg_dsn, "ALTER TABLE app.members ADD FOREIGN KEY (team_id) REFERENCES app.teams (id)")
        for table in ("accounts", "logins", "teams", "members"):  # rewritten: the way back copies each again
            d.wait_log(f"table={table} event=reload_done")
        await rolled_back_with(cfg, db, pg_dsn, d, [], ("accounts", "logins", "teams", "members"))

        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO accounts VALUES (?, 'cid')", (str(uuid.UUID(int=3)),))
        conn.execute("INSERT INTO logins (account_id, at) VALUES (?, 'wed')", (str(uuid.UUID(int=3)),))
        conn.execute("INSERT INTO teams VALUES (?)", (str(uuid.UUID(int=4)),))
        conn.execute("INSERT INTO members (team_id) VALUES (?)", (str(uuid.UUID(int=4)),))
        conn.commit()
        conn.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT account_id, at FROM app.logins ORDER BY id") == [
            (str(uuid.UUID(int=1)), "mon"), (str(uuid.UUID(int=2)), "tue"), (str(uuid.UUID(int=3)), "wed")]
        assert await pg_rows(pg_dsn, "SELECT confdeltype::text FROM pg_constraint WHERE conname = 'logins_account'") == [
            ("c",)]
        assert (await column_types(pg_dsn, "app.accounts"))["id"] == "text"
        assert await pg_rows(pg_dsn, "SELECT team_id FROM app.members") == [(str(uuid.UUID(int=4)),)]
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr


async def test_a_character_key_other_tables_point_at_is_loaded_again_without_their_action_firing(
        tmp_path, make_config, pg_dsn):
    """After the cutover the application made a TEXT key `character(3)` in Postgres, some
    codes shorter than 3 (SQLite's copy holds them padded, as Postgres hands them out),
    and a table of another schema whose foreign key ON DELETE CASCADE points at it. After
    the rollback the key, and the column pointing at it, are turned back into text with
    their padding, and the load rewrites every row in place: the other table keeps its
    rows. Before, the cast to text dropped the padding, no key matched the load's, and
    every row was deleted and inserted again: the cascade emptied the other table."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE countries (code TEXT PRIMARY KEY, name TEXT);
        INSERT INTO countries VALUES ('fra', 'France'), ('x', 'Nowhere');
    """)
    conn.commit()
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE app.countries ALTER COLUMN code TYPE character(3)")
        d.wait_log("table=countries event=reload_done")  # rewritten: the way back copies it again
        await rolled_back_with(cfg, db, pg_dsn, d, [
            "CREATE SCHEMA reports",
            "CREATE TABLE reports.visits (id bigint PRIMARY KEY, "
              "country character(3) REFERENCES app.countries ON DELETE CASCADE)",
            "INSERT INTO reports.visits VALUES (1, 'fra'), (2, 'x')",
        ], ("countries",))

        await eventually(lambda: _text_key(pg_dsn), 60, "the key of countries turned back into text", daemon=d)
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, country FROM reports.visits ORDER BY id") == [
            (1, "fra"), (2, "x  ")]
        assert await pg_rows(pg_dsn, "SELECT code, name FROM app.countries ORDER BY code") == [
            ("fra", "France"), ("x  ", "Nowhere")]
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr


async def _text_key(dsn: str) -> bool:
    return (await column_types(dsn, "app.countries"))["code"] == "text"


async def test_an_empty_table_another_table_points_at_is_loaded_again_after_a_rollback(tmp_path, make_config, pg_dsn):
    """A table empty in Postgres that a table the application made there after the cutover
    points at (a foreign key) must be loaded again after the rollback (a column SQLite
    added whose default Postgres cannot give): it is emptied row by row and loaded, and the
    source streams on. Before, Postgres refused to TRUNCATE a table a foreign key points
    at, empty or not: the source failed with an unexpected error, every one of its tables
    at a standstill, for good."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await rolled_back_with(cfg, db, pg_dsn, d, [
            "CREATE TABLE app.notes (id bigint PRIMARY KEY, tag_id bigint REFERENCES app.tags ON DELETE CASCADE, "
              "body text)",
            "INSERT INTO app.notes VALUES (1, NULL, 'untagged')",
        ], ("notes",))

        conn = sqlite3.connect(db)
        conn.execute("ALTER TABLE tags ADD COLUMN color TEXT NOT NULL DEFAULT 1.50")
        conn.execute("INSERT INTO tags (name) VALUES ('red')")
        conn.commit()
        conn.close()
        d.wait_log("reloading the table")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, name, color FROM app.tags") == [(1, "red", "1.5")]
        assert await pg_rows(pg_dsn, "SELECT id, tag_id, body FROM app.notes") == [(1, None, "untagged")]
        assert "unexpected error" not in d.log()
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr


async def test_a_table_rebuilt_onto_another_key_while_a_foreign_key_points_at_it_holds_only_its_table(
        tmp_path, make_config, pg_dsn):
    """After the rollback the application rebuilds a table in SQLite onto another key
    while a foreign key it made in Postgres after the cutover points at the old one:
    Postgres cannot drop that key. The table is held, naming the foreign key, its rows
    untouched in Postgres; the other tables stream on, and once the foreign key is
    dropped the table is loaded again. Before, the source failed with an unexpected
    error, every one of its tables at a standstill, retried for good. So for a table still
    empty (tags), which the load reshapes before it starts."""
    db = tmp_path / "app.db"
    make_app(db)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db, stream={"held_table_retry_seconds": 1})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await rolled_back_with(cfg, db, pg_dsn, d, [
            "CREATE TABLE app.notes (id bigint PRIMARY KEY, "
              "company_id bigint REFERENCES app.companies ON DELETE CASCADE, "
              "tag_id bigint REFERENCES app.tags, body text)",
            "INSERT INTO app.notes VALUES (1, 1, NULL, 'call back')",
        ], ("notes",))

        conn = sqlite3.connect(db, isolation_level=None)
        conn.executescript("""
            BEGIN;
            CREATE TABLE companies_new (id INTEGER NOT NULL, name TEXT NOT NULL, revenue NUMERIC,
                                        PRIMARY KEY (id, name));
            INSERT INTO companies_new SELECT * FROM companies;
            DROP TABLE companies;
            ALTER TABLE companies_new RENAME TO companies;
            DROP TABLE tags;
            CREATE TABLE tags (id INTEGER NOT NULL, name TEXT NOT NULL, PRIMARY KEY (id, name));
            COMMIT;
        """)
        conn.close()

        async def held() -> bool:
            states = await table_states(pg_dsn, "app")
            return all(states.get(t, ("",))[0] == "held" for t in ("companies", "tags"))

        await eventually(held, 60, "the tables held", daemon=d)
        states = await table_states(pg_dsn, "app")
        assert "notes_company_id_fkey" in states["companies"][1], states
        assert "notes_tag_id_fkey" in states["tags"][1], states
        assert await pg_rows(pg_dsn, "SELECT id, company_id FROM app.notes") == [(1, 1)]
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO notes VALUES (2, 2, NULL, 'send the offer')")
        conn.commit()
        conn.close()

        async def note_arrived() -> bool:
            return len(await pg_rows(pg_dsn, "SELECT 1 FROM app.notes")) == 2

        await eventually(note_arrived, 30, "the other table streaming on", daemon=d)
        assert "unexpected error" not in d.log()
        await pg_rows(pg_dsn, "ALTER TABLE app.notes DROP CONSTRAINT notes_company_id_fkey")
        await pg_rows(pg_dsn, "ALTER TABLE app.notes DROP CONSTRAINT notes_tag_id_fkey")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, name FROM app.companies ORDER BY id") == [(1, "Acme"), (2, "Globex")]
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr


async def test_an_id_postgres_numbers_is_named_before_a_rollback_where_sqlite_does_not_number_it(
        tmp_path, make_config, pg_dsn):
    """`INTEGER PRIMARY KEY DESC` (and INT PRIMARY KEY) is no rowid in SQLite: a row that
    leaves it out gets NULL there. An identity the application gave it in Postgres after
    the cutover is named before the rollback, as for any other column SQLite leaves empty;
    the INTEGER PRIMARY KEY the rowid numbers is not."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE tickets (id INTEGER PRIMARY KEY DESC, title TEXT);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
        INSERT INTO tickets VALUES (5, 'a'), (9, 'b');
        INSERT INTO notes VALUES (5, 'a');
    """)
    conn.commit()
    conn.close()
    assert sqlite3.connect(db).execute("SELECT rowid, id FROM tickets ORDER BY id").fetchall() == [(1, 5), (2, 9)]
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE app.tickets ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY "
                              "(START WITH 100)")
        await pg_rows(pg_dsn, "INSERT INTO app.tickets (title) VALUES ('c')")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        r = run_cli(cfg, "rollback", "--dry-run")
        assert r.returncode == 0, r.stdout + r.stderr
        filled = [line for line in r.stdout.splitlines() if "warning: Postgres fills" in line]
        assert len(filled) == 1 and '"tickets"."id" in a row that leaves it out (an identity' in filled[0], r.stdout


async def test_the_sequence_of_a_serial_key_made_in_postgres_goes_on_numbering_its_rows_after_a_rollback(
        tmp_path, make_config, pg_dsn):
    """The application made a table keyed `bigserial` in Postgres after the cutover, and
    names its sequence as applications do (currval of pg_get_serial_sequence, PDO's
    lastInsertId('tickets_id_seq'), an explicit nextval). After a rollback and the next
    cutover that sequence still numbers the rows, past SQLite's ids. Before, syncd had
    made the key an identity of a new sequence after the rollback: the application's own
    sequence, left behind at 2, gave ids SQLite holds (duplicate key), and currval of the
    sequence pg_get_serial_sequence names failed after every INSERT."""
    async with rolled_back_app(tmp_path, make_config, pg_dsn, [
        "CREATE TABLE app.tickets (id bigserial PRIMARY KEY, title text)",
        "INSERT INTO app.tickets (title) VALUES ('first'), ('second')",
    ], ("tickets",)) as (db, cfg, d):
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO tickets (title) VALUES ('third, in SQLite')")
        conn.commit()
        conn.close()
        out = await cut_over(cfg, db, pg_dsn, daemon=d)
        assert "tickets.id continues after 3" in out, out
        pg = await asyncpg.connect(pg_dsn)
        try:
            assert await pg.fetchval("INSERT INTO app.tickets (title) VALUES ('fourth') RETURNING id") == 4
            assert await pg.fetchval("SELECT currval(pg_get_serial_sequence('app.tickets', 'id'))") == 4
            assert await pg.fetchval("INSERT INTO app.tickets (id, title) VALUES (nextval('app.tickets_id_seq'), "
                                     "'fifth') RETURNING id") == 5
        finally:
            await pg.close()
        await wait_back(cfg, db, pg_dsn, daemon=d)
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr


async def test_a_column_postgres_fills_and_sqlite_holds_not_null_is_said_to_refuse_the_row(
        tmp_path, make_config, pg_dsn):
    """A table the application made in Postgres keyed by a text id that Postgres fills
    (DEFAULT gen_random_uuid()) is NOT NULL in SQLite too, as its key: the rollback says
    that SQLite refuses a row the application writes without it, as SQLite does. It said
    such a row got NULL there."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await made_after_the_cutover(cfg, db, pg_dsn, d, "tokens",
                                     "CREATE TABLE app.tokens (id text PRIMARY KEY DEFAULT gen_random_uuid()::text, "
                                     "note text DEFAULT md5(random()::text))",
                                     "INSERT INTO app.tokens (note) VALUES ('a')")
        r = run_cli(cfg, "rollback", "--dry-run")
        assert r.returncode == 0, r.stdout + r.stderr
        filled = {line.split('"tokens"."')[1].split('"')[0]: line for line in r.stdout.splitlines()
                  if 'warning: Postgres fills "tokens"' in line}
        assert set(filled) == {"id", "note"}, r.stdout
        assert "gets NULL there" in filled["note"], filled
        assert "gets NULL there" not in filled["id"] and "SQLite refuses such a row" in filled["id"], filled
        notnull = sqlite3.connect(db).execute("SELECT \"notnull\" FROM pragma_table_info('tokens') "
                                              "WHERE name = 'id'").fetchone()
        assert notnull == (1,)  # as SQLite holds it


async def test_a_serial_key_made_in_postgres_takes_sqlite_ids_past_its_32_bits_after_a_rollback(
        tmp_path, make_config, pg_dsn):
    """A `serial` (32-bit) key made in Postgres is widened to bigint after a rollback, as
    SQLite's integers are 64-bit; its sequence, which Postgres leaves 32-bit, is widened
    with it: SQLite's ids past 2^31 - 1 refused the next cutover's move of the sequence
    ('out of bounds'), and every later cutover was undone the same way."""
    async with rolled_back_app(tmp_path, make_config, pg_dsn, [
        "CREATE TABLE app.tickets (id serial PRIMARY KEY, title text)",
        "INSERT INTO app.tickets (title) VALUES ('first')",
    ], ("tickets",)) as (db, cfg, d):
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO tickets (id, title) VALUES (3000000000, 'past 32 bits, in SQLite')")
        conn.commit()
        conn.close()
        out = await cut_over(cfg, db, pg_dsn, daemon=d)
        assert "tickets.id continues after 3000000000" in out, out
        pg = await asyncpg.connect(pg_dsn)
        try:
            assert await pg.fetchval("INSERT INTO app.tickets (title) VALUES ('next') RETURNING id") == 3000000001
        finally:
            await pg.close()


async def test_a_key_numbered_by_a_sequence_shared_with_another_table_keeps_its_default_after_a_rollback(
        tmp_path, make_config, pg_dsn):
    """The application made two tables in Postgres after the cutover whose keys both draw
    from one sequence (DEFAULT nextval('app.ids'), owned by neither). After a rollback and
    the next cutover each key still draws from it, moved past SQLite's ids, and the
    cutover says so. Before, syncd made each key an identity of its own sequence after the
    rollback (the shared sequence owned by no column was taken for a DEFAULT an older
    syncd had carried): the DEFAULT was gone and the application's numbering with it."""
    async with rolled_back_app(tmp_path, make_config, pg_dsn, [
        "CREATE SEQUENCE app.ids",
        "CREATE TABLE app.tickets (id bigint PRIMARY KEY DEFAULT nextval('app.ids'), title text)",
        "CREATE TABLE app.notes (id bigint PRIMARY KEY DEFAULT nextval('app.ids'), body text)",
        "INSERT INTO app.tickets (title) VALUES ('first'), ('second')",
        "INSERT INTO app.notes (body) VALUES ('third')",
    ], ("tickets", "notes")) as (db, cfg, d):
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO tickets (id, title) VALUES (10, 'tenth, in SQLite')")
        conn.commit()
        conn.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        dry = run_cli(cfg, "cutover", "--dry-run")
        assert "tickets.id keeps its DEFAULT nextval('app.ids'::regclass): would continue after 10" in dry.stdout, \
            dry.stdout + dry.stderr
        out = await cut_over(cfg, db, pg_dsn, daemon=d)
        assert "tickets.id keeps its DEFAULT nextval('app.ids'::regclass)" in out, out
        assert "notes.id keeps its DEFAULT nextval('app.ids'::regclass)" in out, out
        fills = dict(await pg_rows(pg_dsn, "SELECT c.relname, a.attidentity::text || coalesce(pg_get_expr(d.adbin, "
                                           "d.adrelid), '') FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                                           "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
                                           "WHERE c.relname IN ('tickets', 'notes') AND c.relnamespace = 'app'::regnamespace "
                                           "AND a.attname = 'id'"))
        assert fills == {"tickets": "nextval('app.ids'::regclass)", "notes": "nextval('app.ids'::regclass)"}, fills
        pg = await asyncpg.connect(pg_dsn)
        try:
            assert await pg.fetchval("INSERT INTO app.tickets (title) VALUES ('next') RETURNING id") == 11
            assert await pg.fetchval("INSERT INTO app.notes (body) VALUES ('next') RETURNING id") == 12
        finally:
            await pg.close()
        await wait_back(cfg, db, pg_dsn, daemon=d)
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr


async def test_a_sequence_shared_by_tables_is_moved_past_the_highest_id_of_all_of_them(
        tmp_path, make_config, pg_dsn):
    """Two tables the application made in Postgres draw from one sequence; after a
    rollback SQLite gives the one whose name sorts first (notes) the highest id. The
    cutover moves the sequence past it, once, and the dry run says so for both tables.
    Before, the sequence was set table by table in name order, and the last (tickets, whose
    own highest id is 3) set it back below notes's 10: the trial INSERT got 4 and refused
    the cutover every time, while the dry run said notes would continue after 10."""
    async with rolled_back_app(tmp_path, make_config, pg_dsn, [
        "CREATE SEQUENCE app.ids",
        "CREATE TABLE app.tickets (id bigint PRIMARY KEY DEFAULT nextval('app.ids'), title text)",
        "CREATE TABLE app.notes (id bigint PRIMARY KEY DEFAULT nextval('app.ids'), body text)",
        "INSERT INTO app.tickets (title) VALUES ('first'), ('second')",
        "INSERT INTO app.notes (body) VALUES ('third')",
    ], ("tickets", "notes")) as (db, cfg, d):
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO notes (id, body) VALUES (10, 'tenth, in SQLite')")
        conn.commit()
        conn.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        dry = run_cli(cfg, "cutover", "--dry-run")
        for table in ("notes", "tickets"):
            assert f"{table}.id keeps its DEFAULT nextval('app.ids'::regclass): would continue after 10" \
                in dry.stdout, dry.stdout + dry.stderr
        out = await cut_over(cfg, db, pg_dsn, daemon=d)
        assert "notes.id keeps its DEFAULT nextval('app.ids'::regclass)" in out, out
        assert "moved to continue after 10" in out, out
        pg = await asyncpg.connect(pg_dsn)
        try:
            assert await pg.fetchval("INSERT INTO app.tickets (title) VALUES ('next') RETURNING id") == 11
            assert await pg.fetchval("INSERT INTO app.notes (body) VALUES ('next') RETURNING id") == 12
        finally:
            await pg.close()
