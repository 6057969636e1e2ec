"""A migration that keeps a table's shape but changes what its columns hold (two
columns swapped by RENAME COLUMN, a column dropped and added again) is told by the data
and the table is reloaded (test_column_identity.py). The same must hold when the table
is not streaming at that moment: held on a bad value the application has yet to fix,
its queued changes waiting. Once the row is fixed the table resumes from its queue,
which holds no entry for rows the migration changed: Postgres would keep the old
meaning for every such row."""

from __future__ import annotations

import sqlite3

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import eventually, pg_rows, schema_version, table_states, wait_caught_up

N = 300


async def followed_version(dsn: str) -> int | None:
    rows = await pg_rows(dsn, "SELECT schema_version FROM syncd.sources WHERE source = 'app'")
    return rows[0][0] if rows else None


async def people_held(pg_dsn) -> bool:
    return (await table_states(pg_dsn, "app"))["people"][0] == "held"


async def test_columns_swapped_while_the_table_is_held_are_reloaded(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, first_name TEXT, last_name TEXT, age INTEGER)")
    conn.executemany("INSERT INTO people VALUES (?, ?, ?, ?)",
                     [(i, f"first{i}", f"last{i}", 20 + i % 50) for i in range(1, N + 1)])
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        # A value Postgres cannot take holds the table (test_bad_rows.py) until it is fixed.
        conn.execute("INSERT INTO people VALUES (9999, 'Ada', 'Lovelace', 'thirty-six')")
        await eventually(lambda: people_held(pg_dsn), 30, "the table held on the bad value", d)
        # Meanwhile the application fixes names that were stored the wrong way round.
        conn.executescript("BEGIN; ALTER TABLE people RENAME COLUMN first_name TO tmp; "
                           "ALTER TABLE people RENAME COLUMN last_name TO first_name; "
                           "ALTER TABLE people RENAME COLUMN tmp TO last_name; COMMIT;")
        version = schema_version(app_db)

        async def followed() -> bool:
            return await followed_version(pg_dsn) == version

        await eventually(followed, 30, "syncd to follow the migration", d)
        conn.execute("UPDATE people SET age = 36 WHERE id = 9999")  # the bad value fixed
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert (await table_states(pg_dsn, "app"))["people"][0] == "streaming"
    problems = await compare_table(str(app_db), pg_dsn, "app", "people")
    assert problems == [], f"{len(problems)} differences, e.g. {problems[:2]}"
    assert await pg_rows(pg_dsn, "SELECT first_name, last_name FROM app.people WHERE id = 1") == [("last1", "first1")]


async def test_a_last_column_renamed_while_the_table_is_held_is_renamed(app_db, make_config, pg_dsn, tmp_path):
    """At the end of a table a rename and a drop followed by an add look alike, and the
    data tells them apart: rows changed while the table was held are not yet in Postgres
    and say nothing either way. Counted, they made a rename look like a drop and an add:
    the column went aside and the rows the hold left alone kept no value in Postgres."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, score INTEGER)")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO people VALUES (?, ?, ?)", [(i, f"name{i}", i) for i in range(1, N + 1)])
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO people VALUES (9999, 'Ada', 'thirty-six')")
        await eventually(lambda: people_held(pg_dsn), 30, "the table held on the bad value", d)
        # Half the rows change while the table is held; the stream goes on past them.
        conn.execute(f"UPDATE people SET score = score + 1000 WHERE id <= {N // 2}")
        conn.execute("INSERT INTO notes VALUES (1, 'the stream moves on')")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d, settled=("streaming", "held"))
        conn.execute("ALTER TABLE people RENAME COLUMN score TO points")
        version = schema_version(app_db)

        async def followed() -> bool:
            return await followed_version(pg_dsn) == version

        await eventually(followed, 30, "syncd to follow the migration", d)
        conn.execute("UPDATE people SET points = 36 WHERE id = 9999")  # the bad value fixed
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        log = d.log()
    assert (await table_states(pg_dsn, "app"))["people"][0] == "streaming"
    problems = await compare_table(str(app_db), pg_dsn, "app", "people")
    assert problems == [], f"{len(problems)} differences, e.g. {problems[:2]}"
    assert 'column "score" was renamed to "points"' in log and "was dropped" not in log
