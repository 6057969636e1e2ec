"""Before the cutover, a replicated table changed by hand in Postgres (a column dropped or
added there): the daemon follows SQLite's schema, not Postgres's, so `syncd verify` must not
promise that it reconciles the table "within seconds"; it names `syncd resync`, which does.
A change made in SQLite that the daemon has not followed yet is still the daemon's to follow."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import uuid

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.sync import eventually, long_read, pg_rows, pg_statements, table_states, wait_caught_up
from tests.support.verifying import sync_and_stop, verify, verify_section


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE dropped (id INTEGER PRIMARY KEY, v TEXT);
        CREATE TABLE added (id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO dropped VALUES (1, 'a'), (2, 'b');
        INSERT INTO added VALUES (1, 'a');
    """)
    conn.commit()
    conn.close()


async def test_a_table_changed_in_postgres_by_hand_is_named_for_a_resync(app_db, make_config, pg_dsn, tmp_path):
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_rows(pg_dsn, "ALTER TABLE app.dropped DROP COLUMN v")
    await pg_rows(pg_dsn, "ALTER TABLE app.added ADD COLUMN note text")

    out = verify(cfg)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith(('app: "dropped"', 'app: "added"'))]
    assert len(lines) == 2, out.stdout
    for line in lines:
        assert "within seconds" not in line, line
        assert "changed in Postgres outside syncd" in line and "syncd resync --source app --table" in line, line

    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        for table in ("dropped", "added"):
            assert run_cli(cfg, "resync", "--source", "app", "--table", table).returncode == 0

        async def rebuilt() -> bool:  # the requests taken up and the tables loaded again
            return await pg_rows(pg_dsn, "SELECT count(*) FROM syncd.tables WHERE source = 'app' "
                                         "AND request IS NULL AND state = 'streaming'") == [(2,)]

        await eventually(rebuilt, 60, "both tables rebuilt", d)
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        out = verify(cfg)
        assert out.returncode == 0, out.stdout + out.stderr


async def test_a_change_in_sqlite_not_followed_yet_is_the_daemons_to_follow(app_db, make_config, pg_dsn, tmp_path):
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    conn = sqlite3.connect(app_db)
    conn.execute("ALTER TABLE added ADD COLUMN note TEXT")
    conn.close()

    out = verify(cfg)
    assert out.returncode == 1, out.stdout + out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith('app: "added"'))
    assert "the daemon reconciles schema changes within seconds" in line and "syncd resync" not in line, line


async def test_a_change_in_sqlite_the_daemon_is_still_applying_is_not_called_a_change_made_in_postgres(
        app_db, make_config, pg_dsn, tmp_path):
    """The daemon has read SQLite's new schema but not yet changed Postgres (a transaction
    there holds the table, so its ALTER waits and is tried again): the difference is still
    the daemon's to follow, not a change made in Postgres by hand that needs a resync."""
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}],
                      sections={"verify": {"interval_seconds": 0}, "postgres": {"statement_timeout_seconds": 2}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        reader = await asyncpg.connect(pg_dsn)
        try:
            async with reader.transaction():  # the application reading Postgres, holding the table
                await reader.fetch("SELECT * FROM app.added")
                conn = sqlite3.connect(app_db)
                conn.execute("ALTER TABLE added ADD COLUMN note TEXT")
                conn.commit()

                def noted() -> bool:  # the daemon has read the schema as it is now
                    seen = conn.execute("SELECT value FROM _syncd_meta WHERE key = 'schema_version'").fetchone()
                    return seen is not None and int(seen[0]) == conn.execute("PRAGMA schema_version").fetchone()[0]

                wait_for(noted, 30, "the daemon reading the new schema", d)
                out = verify(cfg, "--table", "added", "--wait", "1")
                conn.close()
        finally:
            await reader.close()
        line = next(line for line in out.stdout.splitlines() if line.startswith('app: "added"'))
        assert "syncd resync" not in line and "outside syncd" not in line, line
        assert "the daemon reconciles schema changes within seconds" in line, line
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert verify(cfg, "--table", "added").returncode == 0


async def two_more_tries(dsn: str, table: str, daemon) -> None:
    """Wait for a held table to be tried twice more: each try saves its row again (its
    "snapshot resuming" is said once per hold, so the log does not count them)."""
    query = "SELECT updated_at FROM syncd.tables WHERE source = 'app' AND table_name = $1"
    seen = {(await pg_rows(dsn, query, table))[0][0]}

    async def more() -> bool:
        seen.add((await pg_rows(dsn, query, table))[0][0])
        return len(seen) >= 3

    await eventually(more, 30, "two more tries", daemon)


async def held(dsn: str, table: str) -> bool:
    """Whether app.<table> is held."""
    return (await table_states(dsn, "app")).get(table, ("",))[0] == "held"


def slow_index_on(table: str, column: str, of: str, schema: str = "app") -> tuple[str, ...]:
    """Statements giving <schema>.<table> an index on <column> (of type <of>) through a
    function made slow once the index is built: each row rebuilt into it then takes a
    second (a rewrite of 3 rows, 3 s)."""
    return (f"CREATE FUNCTION {schema}.slow({of}) RETURNS {of} IMMUTABLE LANGUAGE plpgsql AS 'BEGIN RETURN $1; END'",
            f"CREATE INDEX {table}_slow ON {schema}.{table} ({schema}.slow({column}))",
            f"CREATE OR REPLACE FUNCTION {schema}.slow({of}) RETURNS {of} IMMUTABLE LANGUAGE plpgsql "
            "AS 'BEGIN PERFORM pg_sleep(1); RETURN $1; END'")


async def test_a_column_made_narrower_whose_widening_runs_over_the_statement_timeout_pauses_only_its_table(
        app_db, make_config, pg_dsn, tmp_path):
    """A column made integer in Postgres by hand is turned back into bigint in place, a
    rewrite of the table. A rewrite that runs over [postgres] statement_timeout_seconds
    (here an index calling a slow function) pauses its table, naming the timeout; the
    source's other tables stream on, and once the column is widened by hand the table
    resumes with the changes queued meanwhile. Before, the source failed ("Postgres
    unreachable") and repeated the rewrite at every retry, for good."""
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE counts (id INTEGER PRIMARY KEY, n INTEGER);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO counts VALUES (1, 1), (2, 2), (3, 3);
    """)
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section(),
                      sections={"postgres": {"statement_timeout_seconds": 2}})
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(
        pg_dsn, "ALTER TABLE app.counts ALTER COLUMN n TYPE integer",
        *slow_index_on("counts", "n", "bigint"))
    conn.execute("UPDATE counts SET n = 40 WHERE id = 1")
    conn.execute("INSERT INTO notes VALUES (1, 'still streaming')")
    conn.commit()
    conn.close()
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        async def paused() -> bool:
            return (await table_states(pg_dsn, "app")).get("counts", ("",))[0] == "paused"

        await eventually(paused, 60, "the table paused", d)
        await eventually(lambda: _rows(pg_dsn, "SELECT v FROM app.notes", [("still streaming",)]), 30,
                         "the other table streamed", d)
        reason = (await table_states(pg_dsn, "app"))["counts"][1]
        assert "statement_timeout_seconds (2 s)" in reason and 'ALTER TABLE "app"."counts"' in reason, reason
        line = next(x for x in d.log().splitlines() if "table=counts" in x and "statement_timeout_seconds" in x)
        assert "paused" in line, line
        # Widened by hand (the slow index gone first): the table resumes with its queued change.
        await pg_statements(pg_dsn, "DROP INDEX app.counts_slow",
                            "ALTER TABLE app.counts ALTER COLUMN n TYPE bigint")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, n FROM app.counts ORDER BY id") == [(1, 40), (2, 2), (3, 3)]
        assert d.stop() == 0
    assert "unreachable" not in d.log(), d.log()


async def test_a_reload_of_a_referenced_table_whose_retype_runs_over_the_statement_timeout_holds_only_it(
        app_db, make_config, pg_dsn, tmp_path):
    """A table another table's foreign key points at, a column of it made char(n) in
    Postgres by hand: it is loaded again, and its rows are retyped as they are before the
    reloaded ones replace them (none deleted). A retype (a rewrite of the table) that runs
    over [postgres] statement_timeout_seconds (here an index calling a slow function)
    holds the table, naming the timeout, and the other tables stream on; once the column
    is retyped by hand it loads. Before, the source failed ("Postgres unreachable") and
    repeated the rewrite at every retry, for good."""
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c');
    """)
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section(),
                      sections={"postgres": {"statement_timeout_seconds": 2}})
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(
        pg_dsn, "CREATE TABLE public.orders (id bigint PRIMARY KEY, item_id bigint REFERENCES app.items)",
        "INSERT INTO public.orders VALUES (1, 1)",
        "ALTER TABLE app.items ALTER COLUMN v TYPE char(5)",
        *slow_index_on("items", "v", "text"))
    conn.execute("INSERT INTO notes VALUES (1, 'still streaming')")
    conn.commit()
    conn.close()
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await eventually(lambda: held(pg_dsn, "items"), 60, "the table held", d)
        await eventually(lambda: _rows(pg_dsn, "SELECT v FROM app.notes", [("still streaming",)]), 30,
                         "the other table streamed", d)
        reason = (await table_states(pg_dsn, "app"))["items"][1]
        assert "statement_timeout_seconds (2 s)" in reason, reason
        # Retyped by hand (the slow index gone first): the table loads, no row deleted.
        await pg_statements(pg_dsn, "DROP INDEX app.items_slow", "ALTER TABLE app.items ALTER COLUMN v TYPE text")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, v FROM app.items ORDER BY id") == [(1, "a"), (2, "b"), (3, "c")]
        assert await pg_rows(pg_dsn, "SELECT id, item_id FROM public.orders") == [(1, 1)]
        assert d.stop() == 0
    assert "unreachable" not in d.log(), d.log()


async def test_a_too_slow_retype_of_a_key_linked_by_a_foreign_key_names_statements_postgres_takes(
        app_db, make_config, pg_dsn, tmp_path):
    """A TEXT key holding UUIDs made uuid in Postgres by hand, and a table of someone's
    there whose uuid column points at it (a foreign key): the table is loaded again, its
    key retyped as it is together with the other end. A rewrite that runs over [postgres]
    statement_timeout_seconds holds the table naming what to run by hand, and those
    statements, run in Postgres, go through: the table loads, the other table keeps its
    rows and its foreign key. Before, only the table's own ALTER TABLE was named, which
    Postgres refuses ("foreign key constraint ... cannot be implemented"): the table
    stayed held."""
    ids = [str(uuid.UUID(int=n)) for n in (1, 2, 3)]
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE accounts (id TEXT PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO accounts VALUES (?, ?)", [(i, f"n{k}") for k, i in enumerate(ids)])
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section(),
                      sections={"postgres": {"statement_timeout_seconds": 2}})
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(
        pg_dsn, "ALTER TABLE app.accounts ALTER COLUMN id TYPE uuid USING id::uuid",
        "CREATE TABLE public.logins (id bigint PRIMARY KEY, account_id uuid CONSTRAINT logins_account "
        "REFERENCES app.accounts)", f"INSERT INTO public.logins VALUES (1, '{ids[0]}')",
        *slow_index_on("accounts", "name", "text"))
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await eventually(lambda: held(pg_dsn, "accounts"), 60, "the table held", d)
        reason = (await table_states(pg_dsn, "app"))["accounts"][1]
        assert "statement_timeout_seconds (2 s)" in reason, reason
        named = re.search(r"or run (.*) in Postgres: the load then goes on", reason)
        assert named is not None, reason
        await pg_statements(pg_dsn, "DROP INDEX app.accounts_slow", named[1])
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, account_id FROM public.logins") == [(1, ids[0])]
        assert await pg_rows(pg_dsn, "SELECT count(*) FROM pg_constraint WHERE conname = 'logins_account'") == [(1,)]
        assert d.stop() == 0


async def test_a_held_retype_too_slow_after_its_padded_cast_was_refused_is_not_run_again_at_every_retry(
        app_db, make_config, pg_dsn, tmp_path):
    """A column made char(n) in Postgres by hand, with a CHECK its values padded to n fail,
    in a table another table's foreign key points at: the padded cast is refused, the
    plain one is tried and runs over [postgres] statement_timeout_seconds (an index
    calling a slow function). The table is held naming that plain ALTER TABLE, and the
    retries until a restart do not run the rewrite again: the table is not locked for a
    whole statement timeout each time. Before, only the padded cast counted as already
    too slow, and the rewrite ran again at every retry."""
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE items (id INTEGER PRIMARY KEY, code TEXT);
        INSERT INTO items VALUES (1, 'ab'), (2, 'x'), (3, 'abc');
    """)
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section(),
                      sections={"postgres": {"statement_timeout_seconds": 2}})
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(
        pg_dsn, "CREATE TABLE public.orders (id bigint PRIMARY KEY, item_id bigint REFERENCES app.items)",
        "INSERT INTO public.orders VALUES (1, 1)",
        "ALTER TABLE app.items ALTER COLUMN code TYPE char(3)",
        "ALTER TABLE app.items ADD CONSTRAINT trimmed CHECK (code::text NOT LIKE '% ')",
        "CREATE SEQUENCE public.slow_calls",
        "CREATE FUNCTION app.slow(bigint) RETURNS bigint IMMUTABLE LANGUAGE plpgsql AS 'BEGIN RETURN $1; END'",
        "CREATE INDEX items_slow ON app.items (app.slow(id))",
        "CREATE OR REPLACE FUNCTION app.slow(bigint) RETURNS bigint IMMUTABLE LANGUAGE plpgsql "
        "AS 'BEGIN PERFORM nextval(''public.slow_calls''); PERFORM pg_sleep(1); RETURN $1; END'")
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await eventually(lambda: held(pg_dsn, "items"), 60, "the table held", d)
        reason = (await table_states(pg_dsn, "app"))["items"][1]
        assert 'USING "code"::text' in reason, reason
        calls = await pg_rows(pg_dsn, "SELECT last_value FROM public.slow_calls")
        await two_more_tries(pg_dsn, "items", d)
        assert await pg_rows(pg_dsn, "SELECT last_value FROM public.slow_calls") == calls
        assert await pg_rows(pg_dsn, "SELECT id, item_id FROM public.orders") == [(1, 1)]
        assert d.stop() == 0


async def test_a_too_slow_retype_of_a_column_pointing_at_another_table_says_which_way_the_foreign_key_goes(
        app_db, make_config, pg_dsn, tmp_path):
    """A TEXT column holding UUIDs made uuid in Postgres by hand, with a foreign key from
    it to a table of someone's there keyed uuid: the table is loaded again, its column
    retyped as it is together with the other end, and a rewrite that runs over [postgres]
    statement_timeout_seconds holds it. The hold says the table's foreign key points at
    another table, and no longer that "Postgres rejected the row": no row was. Before, it
    said another table's foreign key pointed at its rows, sending the reader to look for
    a table that does not exist."""
    team = str(uuid.UUID(int=1))
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE members (id INTEGER PRIMARY KEY, team_id TEXT)")
    conn.executemany("INSERT INTO members VALUES (?, ?)", [(n, team) for n in (1, 2, 3)])
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section(),
                      sections={"postgres": {"statement_timeout_seconds": 2}})
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(
        pg_dsn, f"CREATE TABLE public.teams (id uuid PRIMARY KEY); INSERT INTO public.teams VALUES ('{team}')",
        "ALTER TABLE app.members ALTER COLUMN team_id TYPE uuid USING team_id::uuid",
        "ALTER TABLE app.members ADD FOREIGN KEY (team_id) REFERENCES public.teams",
        *slow_index_on("members", "id", "bigint"))
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await eventually(lambda: held(pg_dsn, "members"), 60, "the table held", d)
        reason = (await table_states(pg_dsn, "app"))["members"][1]
        assert "statement_timeout_seconds (2 s)" in reason, reason
        assert "another table's foreign key points at its rows" not in reason, reason
        assert "rejected the row" not in reason, reason  # no row was
        assert "its foreign key points at another table's rows" in reason, reason
        assert d.stop() == 0


async def test_a_refused_retype_of_a_column_pointing_at_another_table_and_used_by_a_view_claims_no_rejected_row(
        app_db, make_config, pg_dsn, tmp_path):
    """A TEXT column holding UUIDs made uuid in Postgres by hand, with a foreign key from
    it to a table of someone's there keyed uuid, and a view over that column: Postgres
    retypes no column a view uses, so the table is held naming the view, and the hold no
    longer says "Postgres rejected the row": no row was. Once the view is dropped it loads."""
    team = str(uuid.UUID(int=1))
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE members (id INTEGER PRIMARY KEY, team_id TEXT)")
    conn.executemany("INSERT INTO members VALUES (?, ?)", [(n, team) for n in (1, 2)])
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(
        pg_dsn, f"CREATE TABLE public.teams (id uuid PRIMARY KEY); INSERT INTO public.teams VALUES ('{team}')",
        "ALTER TABLE app.members ALTER COLUMN team_id TYPE uuid USING team_id::uuid",
        "ALTER TABLE app.members ADD FOREIGN KEY (team_id) REFERENCES public.teams",
        "CREATE VIEW public.member_teams AS SELECT team_id FROM app.members")
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await eventually(lambda: held(pg_dsn, "members"), 60, "the table held", d)
        reason = (await table_states(pg_dsn, "app"))["members"][1]
        assert "used by a view" in reason, reason
        assert "rejected the row" not in reason, reason  # no row was
        await pg_statements(pg_dsn, "DROP VIEW public.member_teams")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0


# A TEXT key made char(3) in Postgres by hand, and a table of someone's there whose foreign
# key points at it ON DELETE CASCADE: a reload deleting a row SQLite still has deletes theirs.
CHAR3_KEY_POINTED_AT = ("ALTER TABLE app.countries ALTER COLUMN code TYPE char(3)",
                        "CREATE TABLE public.visits (id bigint PRIMARY KEY, "
                        "country char(3) REFERENCES app.countries ON DELETE CASCADE)")


def countries(app_db, values: str) -> sqlite3.Connection:
    """The application's `countries` (code TEXT PRIMARY KEY, name) holding `values`; its connection, still open."""
    conn = sqlite3.connect(app_db)
    conn.executescript(f"CREATE TABLE countries (code TEXT PRIMARY KEY, name TEXT); INSERT INTO countries VALUES {values};")
    conn.commit()
    return conn


async def test_a_reload_of_a_referenced_table_whose_retype_postgres_refuses_deletes_no_row_of_the_other_table(
        app_db, make_config, pg_dsn, tmp_path):
    """A TEXT key made char(n) in Postgres by hand, a table of someone's there whose
    char(n) column points at it (a foreign key ON DELETE CASCADE), and a view over that
    column: the key cannot be retyped together with the other end (Postgres retypes no
    column a view uses). The table is held naming the view, the other table keeps every
    row, and once the view is dropped the table loads. Before, the table was emptied to
    be reshaped, and the cascade deleted every row of the other table."""
    countries(app_db, "('fra', 'France'), ('ita', 'Italy')").close()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(
        pg_dsn, *CHAR3_KEY_POINTED_AT,
        "INSERT INTO public.visits VALUES (1, 'fra'), (2, 'ita')",
        "CREATE VIEW public.visit_countries AS SELECT country FROM public.visits")
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        async def settled() -> bool:  # held, or (before) loaded
            return await held(pg_dsn, "countries") or "event=snapshot_finished" in d.log()

        await eventually(settled, 60, "the table held", d)
        assert await pg_rows(pg_dsn, "SELECT id FROM public.visits ORDER BY id") == [(1,), (2,)]
        state, reason = (await table_states(pg_dsn, "app"))["countries"]
        assert state == "held" and "visit_countries" in reason, (state, reason)
        await pg_statements(pg_dsn, "DROP VIEW public.visit_countries")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, country FROM public.visits ORDER BY id") == [(1, "fra"), (2, "ita")]
        assert d.stop() == 0


async def test_a_key_made_char_n_by_hand_keeps_the_rows_pointing_at_its_shorter_codes(
        app_db, make_config, pg_dsn, tmp_path):
    """A TEXT key made char(3) in Postgres by hand, some codes shorter than 3 (SQLite holds
    them as they were, without padding), and a table of someone's there whose foreign
    key ON DELETE CASCADE points at them: the table is loaded again, its key turned back
    into text as SQLite holds it, and every row is rewritten in place: the other table
    keeps its rows. Before, the key was turned back padded to 3, as Postgres hands it
    out, no such key matched SQLite's, and the cascade deleted the rows pointing at it."""
    countries(app_db, "('fra', 'France'), ('x', 'Nowhere')").close()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(
        pg_dsn, *CHAR3_KEY_POINTED_AT,
        "INSERT INTO public.visits VALUES (1, 'fra'), (2, 'x')")
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        d.wait_log("reloading the table")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT code, name FROM app.countries ORDER BY code") == [
            ("fra", "France"), ("x", "Nowhere")]
        assert await pg_rows(pg_dsn, "SELECT id, country FROM public.visits ORDER BY id") == [(1, "fra"), (2, "x")]
        assert d.stop() == 0


async def test_a_key_made_char_n_by_hand_in_a_table_given_a_column_in_sqlite_keeps_the_rows_pointing_at_it(
        app_db, make_config, pg_dsn, tmp_path):
    """As above, and a column added to the table in SQLite while the daemon was stopped:
    the table is loaded again, the column added to its rows as they are, its key turned
    back into text, and every row rewritten in place: the other table keeps its rows.
    Before, a column SQLite has and Postgres has not yet sent the table to be emptied
    and reshaped, and the cascade deleted every row of the other table, silently."""
    conn = countries(app_db, "('fra', 'France'), ('x', 'Nowhere')")
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(
        pg_dsn, *CHAR3_KEY_POINTED_AT,
        "INSERT INTO public.visits VALUES (1, 'fra'), (2, 'x')")
    conn.execute("ALTER TABLE countries ADD COLUMN pop INTEGER")
    conn.execute("UPDATE countries SET pop = 68 WHERE code = 'fra'")
    conn.commit()
    conn.close()
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT code, name, pop FROM app.countries ORDER BY code") == [
            ("fra", "France", 68), ("x", "Nowhere", None)]
        assert await pg_rows(pg_dsn, "SELECT id, country FROM public.visits ORDER BY id") == [(1, "fra"), (2, "x")]
        assert d.stop() == 0


# The application rebuilds countries (id INTEGER PRIMARY KEY, code, name) keyed by code.
COUNTRIES_KEYED_BY_CODE = """
    CREATE TABLE countries_new (id INTEGER NOT NULL, code TEXT PRIMARY KEY, name TEXT);
    INSERT INTO countries_new SELECT id, code, name FROM countries;
    DROP TABLE countries;
    ALTER TABLE countries_new RENAME TO countries;
"""


async def visits_pointing_at_countries(cfg, app_db, pg_dsn, tmp_path, *more: str) -> None:
    """countries replicated, then someone's table in Postgres pointing at its code (unique
    there), ON DELETE CASCADE, with a row for 'fra' and one for 'ita'; then `more`."""
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(
        pg_dsn, "ALTER TABLE app.countries ADD CONSTRAINT countries_code UNIQUE (code)",
        "CREATE TABLE public.visits (id bigint PRIMARY KEY, "
        "country text REFERENCES app.countries (code) ON DELETE CASCADE)",
        "INSERT INTO public.visits VALUES (1, 'fra'), (2, 'ita')", *more)


async def test_a_table_keyed_anew_in_sqlite_keeps_the_rows_of_another_table_pointing_at_it(
        app_db, make_config, pg_dsn, tmp_path):
    """A table rebuilt in SQLite on another key (a column another table of someone's in
    Postgres points at, ON DELETE CASCADE, through a unique constraint made there): the
    table is loaded again, keyed anew on its rows as they are and rewritten in place by
    the new key: the other table keeps its rows. Before, the table was emptied to be
    reshaped, and the cascade deleted every row of the other table, silently."""
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE countries (id INTEGER PRIMARY KEY, code TEXT NOT NULL, name TEXT);
        INSERT INTO countries VALUES (1, 'fra', 'France'), (2, 'ita', 'Italy');
    """)
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await visits_pointing_at_countries(cfg, app_db, pg_dsn, tmp_path)
    conn.executescript(COUNTRIES_KEYED_BY_CODE + "UPDATE countries SET name = 'Italia' WHERE code = 'ita';")
    conn.commit()
    conn.close()
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT code, id, name FROM app.countries ORDER BY code") == [
            ("fra", 1, "France"), ("ita", 2, "Italia")]
        assert await pg_rows(pg_dsn, "SELECT id, country FROM public.visits ORDER BY id") == [(1, "fra"), (2, "ita")]
        assert d.stop() == 0


async def test_a_table_keyed_anew_whose_rewrite_runs_over_the_statement_timeout_is_said_to_be_keyed_anew(
        app_db, make_config, pg_dsn, tmp_path):
    """The same table keyed anew, someone's slow event trigger on its ALTER TABLE making
    the change of its key run over [postgres] statement_timeout_seconds: the log and the
    held table's reason (in `syncd status`) say its key changed, as it did, never that
    its column types changed or that it is retyped (none was)."""
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE countries (id INTEGER PRIMARY KEY, code TEXT NOT NULL, name TEXT);
        INSERT INTO countries VALUES (1, 'fra', 'France'), (2, 'ita', 'Italy'), (3, 'esp', 'Spain');
    """)
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section(),
                      sections={"postgres": {"statement_timeout_seconds": 2}})
    await visits_pointing_at_countries(
        cfg, app_db, pg_dsn, tmp_path,
        "CREATE FUNCTION public.slow_ddl() RETURNS event_trigger LANGUAGE plpgsql AS 'BEGIN "
        "IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() WHERE object_identity = ''app.countries'') "
        "THEN PERFORM pg_sleep(3); END IF; END'",
        "CREATE EVENT TRIGGER slow_ddl ON ddl_command_end WHEN TAG IN ('ALTER TABLE') EXECUTE FUNCTION public.slow_ddl()")
    conn.executescript(COUNTRIES_KEYED_BY_CODE)
    conn.commit()
    conn.close()
    try:
        with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
            await eventually(lambda: held(pg_dsn, "countries"), 60, "the table held", d)
            reason = (await table_states(pg_dsn, "app"))["countries"][1]
            status = run_cli(cfg, "status")
            assert d.stop() == 0
    finally:
        await pg_statements(pg_dsn, "DROP EVENT TRIGGER slow_ddl")
    assert "statement_timeout_seconds (2 s)" in reason and "key" in reason, reason
    assert "retype" not in reason, reason
    assert 'table "countries" held' in status.stdout and "retype" not in status.stdout, status.stdout
    lines = [x for x in d.log().splitlines() if "table=countries" in x]
    assert not any("column types changed" in x or "retype" in x for x in lines), "\n".join(lines)
    assert await pg_rows(pg_dsn, "SELECT id, country FROM public.visits ORDER BY id") == [(1, "fra"), (2, "ita")]


async def test_a_key_changed_in_postgres_by_hand_is_said_to_be_a_key_change(app_db, make_config, pg_dsn, tmp_path):
    """A table's primary key made on another column in Postgres by hand: the table is
    loaded again keyed as SQLite keys it, and the log says its key changed, never that
    its column types changed (none did)."""
    conn = sqlite3.connect(app_db)
    conn.executescript("CREATE TABLE countries (id INTEGER PRIMARY KEY, code TEXT NOT NULL, name TEXT);"
                       "INSERT INTO countries VALUES (1, 'fra', 'France'), (2, 'ita', 'Italy');")
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(pg_dsn, "ALTER TABLE app.countries DROP CONSTRAINT countries_pkey",
                        "ALTER TABLE app.countries ADD PRIMARY KEY (code)")
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        d.wait_log("snapshot finished")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    [line] = [x for x in d.log().splitlines() if "reloading the table" in x]
    assert "key" in line and "column types changed" not in line, line
    assert await pg_rows(pg_dsn, "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                                 "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'app.countries'::regclass "
                                 "AND i.indisprimary") == [("id",)]


async def test_a_held_retype_of_a_char_n_key_too_slow_does_not_compare_its_keys_again_at_every_retry(
        app_db, make_config, pg_dsn, tmp_path):
    """A key made char(3) in Postgres by hand in a table another table's foreign key points
    at, whose retype runs over [postgres] statement_timeout_seconds (an index calling a
    slow function): the table is held, and the retries until a restart read none of its
    rows. Before, each retry first compared every key with the load's (two queries over
    the whole table, without the retype's lock wait or savepoint, a timeout there failing
    the source), only to find the retype remembered too slow."""
    countries(app_db, "('fra', 'France'), ('x', 'Nowhere'), ('ita', 'Italy')").close()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section(),
                      sections={"postgres": {"statement_timeout_seconds": 2}})
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(
        pg_dsn, *CHAR3_KEY_POINTED_AT,
        "INSERT INTO public.visits VALUES (1, 'fra'), (2, 'x')", *slow_index_on("countries", "name", "text"))
    scans = "SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relid = 'app.countries'::regclass"
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await eventually(lambda: held(pg_dsn, "countries"), 60, "the table held", d)
        await asyncio.sleep(1.1)  # Postgres counts a session's scans at most once a second
        before = await pg_rows(pg_dsn, scans)
        await two_more_tries(pg_dsn, "countries", d)
        await asyncio.sleep(1.1)
        assert await pg_rows(pg_dsn, scans) == before
        assert (await table_states(pg_dsn, "app"))["countries"][0] == "held"
        assert await pg_rows(pg_dsn, "SELECT id FROM public.visits ORDER BY id") == [(1,), (2,)]
        assert d.stop() == 0


async def test_a_resync_of_a_table_a_view_depends_on_waits_for_the_view_and_stops_nothing_else(
        app_db, make_config, pg_dsn, tmp_path):
    """`syncd resync` rebuilds a table by dropping its Postgres copy; a view of someone's
    over it keeps Postgres from dropping it. The request waits, said once with the view's
    name, while the table and the others stream on; once the view is gone the table is
    rebuilt. Before, the source failed ("unexpected error") and retried for good, every
    table stopped."""
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO items VALUES (1, 'a');
    """)
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        await pg_statements(pg_dsn, "CREATE VIEW public.item_names AS SELECT v FROM app.items")
        assert run_cli(cfg, "resync", "--source", "app", "--table", "items").returncode == 0
        d.wait_log("resync requested but not done")
        conn.execute("INSERT INTO notes VALUES (1, 'still streaming')")
        conn.execute("INSERT INTO items VALUES (2, 'b')")
        conn.commit()
        await eventually(lambda: _rows(pg_dsn, "SELECT v FROM app.notes", [("still streaming",)]), 30,
                         "the other table streamed", d)
        await eventually(lambda: _rows(pg_dsn, "SELECT id FROM app.items ORDER BY id", [(1,), (2,)]), 30,
                         "the table streamed", d)
        line = next(x for x in d.log().splitlines() if "resync requested but not done" in x)
        assert "table=items" in line and "item_names" in line, line
        (before,), = await pg_rows(pg_dsn, "SELECT 'app.items'::regclass::oid")
        await pg_statements(pg_dsn, "DROP VIEW public.item_names")
        d.wait_log("resync requested: Postgres table dropped")
        # The line is logged in the transaction that drops and makes the table again: caught
        # up, as the bookkeeping said before it committed, is not yet rebuilt.
        await eventually(lambda: _rows(pg_dsn, "SELECT 'app.items'::regclass::oid <> "
                                       f"{int(before)}::oid", [(True,)]), 30, "the table made again", d)
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, v FROM app.items ORDER BY id") == [(1, "a"), (2, "b")]
        assert await pg_rows(pg_dsn, "SELECT count(*) FROM syncd.tables WHERE request IS NOT NULL") == [(0,)]
        assert d.stop() == 0
    conn.close()
    assert "unexpected error" not in d.log(), d.log()
    assert d.log().count("resync requested but not done") == 1, d.log()


async def test_an_empty_table_another_table_s_foreign_key_points_at_is_loaded_again(
        app_db, make_config, pg_dsn, tmp_path):
    """An empty table, a column of it made char(n) in Postgres by hand, and a table of
    someone's in Postgres whose foreign key points at it: the table is loaded again, and
    the other table keeps its foreign key. Before, Postgres refused to empty it ("cannot
    truncate a table referenced in a foreign key constraint") and the source failed
    ("unexpected error"), retrying for good, every table of it stopped."""
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, v TEXT);
    """)
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(pg_dsn, "CREATE TABLE public.tagged (id bigint PRIMARY KEY, tag_id bigint REFERENCES app.tags)",
                        "ALTER TABLE app.tags ALTER COLUMN name TYPE char(5)")
    conn.execute("INSERT INTO notes VALUES (1, 'still streaming')")
    conn.commit()
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        d.wait_log("reloading the table")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT v FROM app.notes") == [("still streaming",)]
        assert await pg_rows(pg_dsn, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                                     "WHERE attrelid = 'app.tags'::regclass AND attname = 'name'") == [("text",)]
        conn.execute("INSERT INTO tags VALUES (1, 'red')")
        conn.commit()
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        await pg_statements(pg_dsn, "INSERT INTO public.tagged VALUES (1, 1)")  # its foreign key stands
        assert d.stop() == 0
    conn.close()
    assert "unexpected error" not in d.log(), d.log()


async def test_an_empty_table_whose_column_a_view_uses_holds_only_itself_until_the_view_goes(
        app_db, make_config, pg_dsn, tmp_path):
    """An empty table, a column of it made char(n) in Postgres by hand and used by a view
    of someone's: the table is to be loaded again in syncd's types, which the view keeps
    Postgres from doing. The table is held, naming the view, the others stream on, and
    once the view is dropped it loads. Before, the source failed ("unexpected error") and
    retried for good, every table of it stopped."""
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, v TEXT);
    """)
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(pg_dsn, "ALTER TABLE app.tags ALTER COLUMN name TYPE char(5)",
                        "CREATE VIEW public.tag_names AS SELECT name FROM app.tags")
    conn.execute("INSERT INTO notes VALUES (1, 'still streaming')")
    conn.execute("INSERT INTO tags VALUES (1, 'red')")
    conn.commit()
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await eventually(lambda: held(pg_dsn, "tags"), 60, "the table held", d)
        await eventually(lambda: _rows(pg_dsn, "SELECT v FROM app.notes", [("still streaming",)]), 30,
                         "the other table streamed", d)
        reason = (await table_states(pg_dsn, "app"))["tags"][1]
        assert "tag_names" in reason, reason
        await pg_statements(pg_dsn, "DROP VIEW public.tag_names")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, name FROM app.tags") == [(1, "red")]
        assert d.stop() == 0
    conn.close()
    assert "unexpected error" not in d.log(), d.log()


async def test_a_reload_of_a_referenced_table_waiting_for_a_reader_loads_once_the_reader_is_done(
        app_db, make_config, pg_dsn, tmp_path):
    """The same reload, its retype of the rows waiting for a long reader of the table: a
    wait for a lock, no rewrite too slow. It is tried again until the reader is done,
    and then the table loads, no row deleted; nothing holds it until the daemon restarts."""
    conn = sqlite3.connect(app_db)
    conn.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO items VALUES (1, 'a');")
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section(),
                      sections={"postgres": {"statement_timeout_seconds": 2}})
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(
        pg_dsn, "CREATE TABLE public.orders (id bigint PRIMARY KEY, item_id bigint REFERENCES app.items)",
        "INSERT INTO public.orders VALUES (1, 1)", "ALTER TABLE app.items ALTER COLUMN v TYPE char(5)")
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        async with long_read(pg_dsn, "app.items"):
            d.wait_log("another Postgres session holds the table")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, v, pg_typeof(v)::text FROM app.items") == [(1, "a", "text")]
        assert await pg_rows(pg_dsn, "SELECT id, item_id FROM public.orders") == [(1, 1)]
        assert d.stop() == 0


async def test_a_reload_of_a_referenced_table_waiting_for_a_reader_holds_only_it_naming_the_reader(
        app_db, make_config, pg_dsn, tmp_path):
    """The same reload, the reader staying: the table waiting for it is held, named in
    the log and in `syncd status` with the reader's backend, while the source's other
    tables stream on; once the reader is done it loads, no row deleted. Before, the
    whole source backed off and retried, its other tables waiting with it."""
    conn = sqlite3.connect(app_db)
    conn.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO items VALUES (1, 'a');"
                       "CREATE TABLE notes (id INTEGER PRIMARY KEY, v TEXT);")
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section(),
                      sections={"postgres": {"statement_timeout_seconds": 2}})
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(
        pg_dsn, "CREATE TABLE public.orders (id bigint PRIMARY KEY, item_id bigint REFERENCES app.items)",
        "INSERT INTO public.orders VALUES (1, 1)", "ALTER TABLE app.items ALTER COLUMN v TYPE char(5)")
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        reader = await asyncpg.connect(pg_dsn)
        try:
            async with reader.transaction():
                await reader.fetch("SELECT * FROM app.items")
                await eventually(lambda: held(pg_dsn, "items"), 30, "the table held", d)
                conn.execute("INSERT INTO notes VALUES (1, 'still streaming')")
                conn.commit()
                await eventually(lambda: _rows(pg_dsn, "SELECT v FROM app.notes", [("still streaming",)]), 30,
                                 "the other table streamed", d)
                line = next(x for x in d.log().splitlines() if "table held" in x)
                assert "table=items" in line and f"backend {reader.get_server_pid()}" in line, line
                status = run_cli(cfg, "status")
                assert 'table "items" held' in status.stdout, status.stdout
        finally:
            await reader.close()
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, v, pg_typeof(v)::text FROM app.items") == [(1, "a", "text")]
        assert await pg_rows(pg_dsn, "SELECT id, item_id FROM public.orders") == [(1, 1)]
        assert d.stop() == 0
    conn.close()
    assert "unreachable" not in d.log(), d.log()


async def test_an_empty_table_linked_by_a_foreign_key_waiting_for_a_reader_loads_once_the_reader_is_done(
        app_db, make_config, pg_dsn, tmp_path):
    """An empty table, its TEXT key made uuid in Postgres by hand, and a table of
    someone's there whose uuid column points at it (a foreign key): before it is loaded
    again both ends are retyped together, which waits for a long reader of the table past
    [postgres] statement_timeout_seconds: a wait for a lock, no rewrite too slow. It is
    tried again until the reader is done, and then the table loads. Before, the source
    failed ("unexpected error"), retried for good."""
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE teams (id TEXT PRIMARY KEY)")
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section(),
                      sections={"postgres": {"statement_timeout_seconds": 2}})
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(pg_dsn, "ALTER TABLE app.teams ALTER COLUMN id TYPE uuid USING id::uuid",
                        "CREATE TABLE public.members (id bigint PRIMARY KEY, team_id uuid REFERENCES app.teams)")
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        async with long_read(pg_dsn, "app.teams"):
            d.wait_log("another Postgres session holds the table")
        team = str(uuid.UUID(int=1))
        conn.execute("INSERT INTO teams VALUES (?)", (team,))
        conn.commit()
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, pg_typeof(id)::text FROM app.teams") == [(team, "text")]
        await pg_statements(pg_dsn, f"INSERT INTO public.members VALUES (1, '{team}')")  # its foreign key stands
        assert d.stop() == 0
    conn.close()
    assert "unexpected error" not in d.log(), d.log()


async def test_an_empty_table_linked_by_a_foreign_key_whose_retype_runs_over_the_statement_timeout_holds_only_it(
        app_db, make_config, pg_dsn, tmp_path):
    """The same empty table, the table of someone's pointing at it holding rows (no team
    yet) and an index calling a slow function: retyping that other end with it is a
    rewrite that runs over [postgres] statement_timeout_seconds. The table is held,
    naming the timeout and the statements to run by hand, the source's other tables
    stream on, and once those statements are run the table loads. Before, the source
    failed ("unexpected error") and repeated the rewrite at every retry, for good."""
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE teams (id TEXT PRIMARY KEY);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, v TEXT);
    """)
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section(),
                      sections={"postgres": {"statement_timeout_seconds": 2}})
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(
        pg_dsn, "ALTER TABLE app.teams ALTER COLUMN id TYPE uuid USING id::uuid",
        "CREATE TABLE public.members (id bigint PRIMARY KEY, team_id uuid REFERENCES app.teams)",
        "INSERT INTO public.members VALUES (1, NULL), (2, NULL), (3, NULL)",
        *slow_index_on("members", "id", "bigint", schema="public"))
    conn.execute("INSERT INTO notes VALUES (1, 'still streaming')")
    conn.commit()
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await eventually(lambda: held(pg_dsn, "teams"), 60, "the table held", d)
        await eventually(lambda: _rows(pg_dsn, "SELECT v FROM app.notes", [("still streaming",)]), 30,
                         "the other table streamed", d)
        reason = (await table_states(pg_dsn, "app"))["teams"][1]
        assert "statement_timeout_seconds (2 s)" in reason, reason
        named = re.search(r"or run (.*) in Postgres: the load then goes on", reason)
        assert named is not None, reason
        await pg_statements(pg_dsn, "DROP INDEX public.members_slow", named[1])
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT pg_typeof(team_id)::text FROM public.members LIMIT 1") == [("text",)]
        assert d.stop() == 0
    conn.close()
    assert "unexpected error" not in d.log(), d.log()


async def _rows(dsn: str, sql: str, want: list[tuple]) -> bool:
    return await pg_rows(dsn, sql) == want


async def test_a_reload_whose_statement_postgres_must_prepare_anew_holds_no_table(
        app_db, make_config, pg_dsn, tmp_path, outage):
    """A column made char(n) in Postgres by hand: the table is loaded again, aside, and its
    rows then replace the live ones. Postgres refusing that statement as prepared before
    a table changed ("cached plan must not change result type", SQLSTATE 0A000, as for a
    view over a retyped column) is a statement to prepare anew, not rows that do not fit:
    the reload is tried again and no table is held. Before, the table was held, its
    reload "rejected"."""
    proxy, dsn = outage
    conn = sqlite3.connect(app_db)
    conn.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO items VALUES (1, 'a');")
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section(),
                      sections={"postgres": {"dsn": dsn}})
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_statements(pg_dsn, "ALTER TABLE app.items ALTER COLUMN v TYPE char(5)")
    proxy.fail_reply_to(b'INSERT INTO "app"."items" ("id", "v") SELECT', {
        "S": "ERROR", "V": "ERROR", "C": "0A000", "M": "cached plan must not change result type",
        "F": "plancache.c", "R": "RevalidateCachedQuery"})
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        d.wait_log("snapshot finished")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert proxy.reply_failed.is_set()
        assert await pg_rows(pg_dsn, "SELECT id, v, pg_typeof(v)::text FROM app.items") == [(1, "a", "text")]
        assert d.stop() == 0
    assert "event=table_held" not in d.log() and "unexpected error" not in d.log(), d.log()
