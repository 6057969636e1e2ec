"""The first and last day a date can hold, the usual "valid until 9999-12-31" sentinel,
travel as themselves both ways: into Postgres's typed columns as that day (asyncpg's own
encoding would make it infinity), back into SQLite after the cutover, and forward again
after a rollback. A real infinity written in Postgres holds its table on the way back,
named, since SQLite has no spelling for it."""

from __future__ import annotations

import datetime as dt
import sqlite3

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, pg_rows, table_states, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, typeof, wait_back


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE prices (id INTEGER PRIMARY KEY, amount REAL, valid_from DATE, valid_until DATE,
                             checked DATETIME);
        CREATE TABLE periods (last_day DATE PRIMARY KEY, note TEXT);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
        INSERT INTO prices VALUES (1, 9.5, '2024-01-01', '9999-12-31', '9999-12-31 23:59:59'),
                                  (2, 10.0, '0001-01-01', '2024-01-01', '0001-01-01 00:00:00'),
                                  (3, 11.0, '2025-01-01', '9999-12-31', '2025-01-01 08:00:00');
        INSERT INTO periods VALUES ('9999-12-31', 'open end'), ('0001-01-01', 'open start');
        INSERT INTO notes VALUES (1, 'one');
    """)
    conn.commit()
    conn.close()


async def in_postgres(dsn: str, sql: str) -> list[tuple]:
    return [tuple(r) for r in await pg_rows(dsn, sql)]


async def test_the_last_day_travels_as_itself_and_infinity_is_held(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    prices = "SELECT id, valid_from::text, valid_until::text, checked::text FROM app.prices ORDER BY id"
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        assert await in_postgres(pg_dsn, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                                         "attrelid = 'app.prices'::regclass AND attname = 'valid_until'") == [("date",)]
        assert await in_postgres(pg_dsn, prices) == [
            (1, "2024-01-01", "9999-12-31", "9999-12-31 23:59:59"), (2, "0001-01-01", "2024-01-01", "0001-01-01 00:00:00"),
            (3, "2025-01-01", "9999-12-31", "2025-01-01 08:00:00")]

        # The application, on Postgres now, writes the sentinels itself.
        await pg_rows(pg_dsn, "INSERT INTO app.prices (amount, valid_from, valid_until, checked) "
                              "VALUES (12, '2026-01-01', '9999-12-31', '9999-12-31 23:59:59.999999')")
        await pg_rows(pg_dsn, "UPDATE app.prices SET amount = 9.75 WHERE id = 1")
        await pg_rows(pg_dsn, "UPDATE app.periods SET note = 'still open' WHERE last_day = '9999-12-31'")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT id, amount, valid_until, checked FROM prices WHERE id IN (1, 4) ORDER BY id") == [
            (1, 9.75, "9999-12-31", "9999-12-31 23:59:59"), (4, 12.0, "9999-12-31", "9999-12-31 23:59:59.999999")]
        assert typeof(db, "SELECT last_day, note FROM periods ORDER BY last_day") == [
            ("0001-01-01", "open start"), ("9999-12-31", "still open")]

        # A real infinity has no SQLite spelling: its table is held and named, the others go on.
        await pg_rows(pg_dsn, "UPDATE app.prices SET valid_until = 'infinity' WHERE id = 3")
        await pg_rows(pg_dsn, "UPDATE app.notes SET body = 'the others go on' WHERE id = 1")

        async def held() -> bool:
            return (await table_states(pg_dsn, "app"))["prices"][0] == "held"

        await eventually(held, 30, "prices held", d)
        reason = (await table_states(pg_dsn, "app"))["prices"][1]
        assert 'key 3 column "valid_until"' in reason and "infinity has no SQLite spelling" in reason, reason

        async def notes_followed() -> bool:
            return typeof(db, "SELECT body FROM notes") == [("the others go on",)]

        await eventually(notes_followed, 30, "notes following Postgres", d)
        await pg_rows(pg_dsn, "UPDATE app.prices SET valid_until = '9999-12-31' WHERE id = 3")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT valid_until FROM prices WHERE id = 3") == [("9999-12-31",)]

        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        # SQLite is the application's again: its sentinels reach Postgres as that day.
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO prices VALUES (5, 13.0, '0001-01-01', '9999-12-31', '9999-12-31 23:59:59.999999')")
        conn.execute("UPDATE periods SET note = 'open again' WHERE last_day = '9999-12-31'")
        conn.commit()
        conn.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await in_postgres(pg_dsn, "SELECT valid_from::text, valid_until::text, checked::text, "
                                         "isfinite(valid_until) FROM app.prices WHERE id = 5") == [
            ("0001-01-01", "9999-12-31", "9999-12-31 23:59:59.999999", True)]
        assert await in_postgres(pg_dsn, "SELECT last_day::text, note FROM app.periods ORDER BY 1") == [
            ("0001-01-01", "open start"), ("9999-12-31", "open again")]
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr
        assert "unexpected error" not in d.log()


async def test_verify_names_a_postgres_row_keyed_by_infinity_and_leaves_it_to_the_user(app_db, make_config, pg_dsn,
                                                                                      tmp_path):
    """A row whose date key is infinity, only in Postgres (written there by hand), beside
    the row of the last day: `syncd verify` names it by that key, and `--repair` says it
    cannot remove it. Postgres's infinity reads as the last day in Python, so looked up it
    found the last day's row (or none), the key was dropped as equal, and only the row
    totals said something was wrong; the repair replayed the last day to no effect."""
    from tests.support.verifying import sync_and_stop, verify, verify_json, verify_section, found

    conn = sqlite3.connect(app_db)
    conn.executescript("CREATE TABLE periods (last_day TEXT PRIMARY KEY, note TEXT);"
                       "INSERT INTO periods VALUES ('2024-01-01', 'new year'), ('9999-12-31', 'open end');")
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db), "columns": {"periods": {"last_day": "date"}}}],
                      extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_rows(pg_dsn, "INSERT INTO app.periods VALUES ('infinity', 'by hand'), ('-infinity', 'by hand')")

    rc, doc = verify_json(cfg, "--wait", "1")
    assert rc == 1
    assert found(doc, "periods") == {("extra", ("infinity",), ()), ("extra", ("-infinity",), ())}
    out = verify(cfg, "--wait", "1", "--repair")
    assert out.returncode == 1
    assert "key 'infinity' not repaired" in out.stdout and "replayed" not in out.stdout, out.stdout
    assert await in_postgres(pg_dsn, "SELECT last_day::text FROM app.periods ORDER BY last_day") == [
        ("-infinity",), ("2024-01-01",), ("9999-12-31",), ("infinity",)]


async def test_looking_up_a_last_day_key_reads_its_infinity_through_the_index_not_the_whole_table(pg_dsn):
    """Keys at 9999-12-31 or 0001-01-01 (a common open end) are looked up with their
    infinity twins (both read as that day in Python) through the key's index: the lookup
    read every row of the table, once per lookup and per re-check round of every verify."""
    import asyncpg

    from syncd.postgres.connect import exact_instants
    from syncd.verify.keyspace import key_space
    from syncd.verify.postgres_side import PostgresTable
    from tests.support import inprocess_verify as iv

    lite = iv.sqlite_file()
    lite.executescript("CREATE TABLE periods (last_day TEXT PRIMARY KEY, note TEXT);"
                       "CREATE TABLE slots (day TEXT, n INTEGER, note TEXT, PRIMARY KEY (day, n));")
    pg = await asyncpg.connect(pg_dsn)
    try:
        await exact_instants(pg)

        async def run(fn, *args):
            return fn(lite, *args)

        async def lookup(spec, keys: list[tuple]) -> tuple[list[tuple], int]:
            pt = PostgresTable(pg, "lookup", await key_space(run, pg, "lookup", spec), True)
            scans = f"SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relid = 'lookup.{spec.name}'::regclass"
            async with pg.transaction():
                await pg.execute("SET LOCAL enable_seqscan = off")  # a scan is then only taken if nothing else can
                before = await pg.fetchval(scans)
                rows = await pt.rows_by_key(keys)
                return sorted(r.tokens[-1].split(":", 1)[1] for r in rows), await pg.fetchval(scans) - before

        periods = iv.spec_of(lite, "periods", {"last_day": "date"})
        slots = iv.spec_of(lite, "slots", {"day": "date"})
        await pg.execute("CREATE SCHEMA lookup")
        for spec in (periods, slots):
            await pg.execute(iv.create_table_sql("lookup", spec))
        await pg.execute("INSERT INTO lookup.periods SELECT d::date, 'day' FROM generate_series("
                         "'2000-01-01'::date, '2010-01-01', '1 day') d")
        await pg.execute("INSERT INTO lookup.periods VALUES ('9999-12-31', 'open end'), ('infinity', 'infinity'), "
                         "('0001-01-01', 'open start'), ('-infinity', '-infinity')")
        await pg.execute("INSERT INTO lookup.slots SELECT '2024-01-01'::date + i, i, 'day' FROM generate_series(1, 3000) i")
        await pg.execute("INSERT INTO lookup.slots VALUES ('9999-12-31', 1, 'open end'), ('infinity', 1, 'infinity'), "
                         "('infinity', 2, 'another infinity'), ('2024-01-02', 7, 'seventh')")
        await pg.execute("ANALYZE lookup.periods; ANALYZE lookup.slots")

        rows, scans = await lookup(periods, [(dt.date.max,), (dt.date(2004, 2, 29),)])
        assert scans == 0
        assert rows == ["day", "infinity", "open end"], rows
        rows, scans = await lookup(periods, [(dt.date.min,)])
        assert scans == 0
        assert rows == ["-infinity", "open start"], rows
        rows, scans = await lookup(slots, [(dt.date.max, 1), (dt.date(2024, 1, 2), 7)])
        assert scans == 0
        assert rows == ["infinity", "open end", "seventh"], rows
    finally:
        await pg.close()
        lite.close()
