"""Dates and timestamps Postgres takes and Python cannot hold (a BC date, the year 10000)
on the way back: the table holding one is held, its key, column and value named, while
every other table keeps following Postgres; a rollback refuses at once instead of
freezing Postgres for the application; once the value is fixed the table is copied
again and both sides compare equal."""

from __future__ import annotations

import asyncio
import sqlite3

from tests.support.compare import compare_all
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, pg_rows, table_states
from tests.support.way_back import backup_and_config, cut_over, typeof, wait_back


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE events (id INTEGER PRIMARY KEY, day DATE, at DATETIME);
        CREATE TABLE days (day DATE PRIMARY KEY, note TEXT);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
    """)
    conn.executemany("INSERT INTO events VALUES (?, ?, ?)",
                     [(i, f"2026-11-{i:02d}", f"2026-11-{i:02d} 10:00:00") for i in range(1, 6)])
    conn.executemany("INSERT INTO days VALUES (?, ?)", [("2026-11-01", "first"), ("2026-11-02", "second")])
    conn.executemany("INSERT INTO notes VALUES (?, ?)", [(1, "one"), (2, "two")])
    conn.commit()
    conn.close()


async def test_a_date_python_cannot_hold_holds_its_table_and_names_it(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "UPDATE app.events SET day = '0044-03-15 BC', at = '10000-01-01 00:00' WHERE id = 2")
        await pg_rows(pg_dsn, "INSERT INTO app.days VALUES ('0001-01-01 BC', 'before year one')")
        await pg_rows(pg_dsn, "UPDATE app.notes SET body = 'the other tables go on' WHERE id = 1")

        async def both_held() -> bool:
            states = await table_states(pg_dsn, "app")
            return states["events"][0] == "held" and states["days"][0] == "held"

        await eventually(both_held, 30, "events and days held", d)
        states = await table_states(pg_dsn, "app")
        assert 'key 2 column "day"' in states["events"][1] and "0044-03-15 BC" in states["events"][1]
        assert "0001-01-01 BC" in states["days"][1]
        assert "fix the value in Postgres" in states["events"][1]
        await eventually(lambda: _body(db), 30, "notes following Postgres", d)

        r = run_cli(cfg, "rollback")
        assert r.returncode != 0 and "events" in r.stdout + r.stderr, r.stdout + r.stderr
        assert await pg_rows(pg_dsn, "SELECT kind, state FROM syncd.switches ORDER BY id") == [("cutover", "done")]

        await pg_rows(pg_dsn, "UPDATE app.events SET day = '2026-12-01', at = '2026-12-01 09:30:00' WHERE id = 2")
        await pg_rows(pg_dsn, "DELETE FROM app.days WHERE note = 'before year one'")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert await compare_all(str(db), pg_dsn, "app", ["events", "notes"]) == []
        # (compare_all matches keys as stored: a date key is compared by its spelling here)
        in_pg = await pg_rows(pg_dsn, "SELECT to_char(day, 'YYYY-MM-DD'), note FROM app.days ORDER BY day")
        assert typeof(db, "SELECT day, note FROM days ORDER BY day") == [tuple(r) for r in in_pg]
        assert len(in_pg) == 2
        assert typeof(db, "SELECT day FROM events WHERE id = 2") == [("2026-12-01",)]
        assert "unexpected error" not in d.log()


async def _body(db) -> bool:
    return typeof(db, "SELECT body FROM notes WHERE id = 1") == [("the other tables go on",)]


async def test_a_held_table_is_not_copied_again_while_its_value_still_does_not_fit(tmp_path, make_config, pg_dsn):
    """Each retry of a table held for one row's value reads that row, not the whole
    table: the application's Postgres is not scanned end to end every few seconds
    until someone fixes the value. Once it fits, the table is copied again."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db, stream={"held_table_retry_seconds": 0.2})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "UPDATE app.events SET day = 'infinity' WHERE id = 3")

        async def held() -> bool:
            return (await table_states(pg_dsn, "app"))["events"][0] == "held"

        await eventually(held, 30, "events held", d)
        d.wait_log("table held on the way back")
        before = d.log().count("reload_started")
        await pg_rows(pg_dsn, "UPDATE app.notes SET body = 'marker one' WHERE id = 2")
        await eventually(lambda: _marker(db, "marker one"), 30, "the way back going on", d)
        await asyncio.sleep(5)  # 25 retry periods: each reads the held row alone
        assert d.log().count("reload_started") == before, d.log()[-3000:]
        assert (await table_states(pg_dsn, "app"))["events"][0] == "held"

        await pg_rows(pg_dsn, "UPDATE app.events SET day = '2026-12-03' WHERE id = 3")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.log().count("reload_started") == before + 1
        assert typeof(db, "SELECT day FROM events WHERE id = 3") == [("2026-12-03",)]
        assert await compare_all(str(db), pg_dsn, "app", ["events", "notes"]) == []


async def _marker(db, text: str) -> bool:
    return typeof(db, "SELECT body FROM notes WHERE id = 2") == [(text,)]
