"""Column type overrides end to end: the table lands with the chosen types, values
convert, and `syncd verify` agrees both sides hold the same data."""

from __future__ import annotations

import datetime as dt
import sqlite3

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, table_states, wait_caught_up


async def test_overrides_to_jsonb_timestamptz_date_and_text(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db)
    conn.executescript("""
        CREATE TABLE events (id INTEGER PRIMARY KEY, payload JSON, at DATETIME, day DATE, size INTEGER);
        INSERT INTO events VALUES (1, '{"b": 1, "a": [true, null, 1.50]}', '2026-11-23 10:00:00', '2026-11-23', 5);
        INSERT INTO events VALUES (2, '[]', 1763892000, '2026-01-01', 'large');
    """)
    conn.commit()
    overrides = {"events": {"payload": "jsonb", "at": "timestamptz", "day": "date", "size": "text"}}
    cfg = make_config([{"name": "app", "path": str(app_db), "columns": overrides}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("""INSERT INTO events VALUES (3, '{"k": "v"}', '2026-11-24T08:30:00Z', '2026-11-24', 7)""")
        conn.execute("UPDATE events SET payload = '{\"a\": 2}' WHERE id = 1")
        conn.commit()
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        r = run_cli(cfg, "verify")
        assert r.returncode == 0, r.stdout + r.stderr
        assert 'app: "events" equal (3 rows in SQLite, 3 in Postgres' in r.stdout
        assert d.stop() == 0
    pg = await asyncpg.connect(pg_dsn)
    try:
        types = dict(await pg.fetch("SELECT column_name, data_type FROM information_schema.columns "
                                    "WHERE table_schema = 'app' AND table_name = 'events'"))
        rows = await pg.fetch("SELECT id, payload::text, extract(epoch FROM at)::bigint, day::text, size "
                              "FROM app.events ORDER BY id")
    finally:
        await pg.close()
    assert types == {"id": "bigint", "payload": "jsonb", "at": "timestamp with time zone", "day": "date",
                     "size": "text"}
    utc = dt.timezone.utc
    assert [tuple(r) for r in rows] == [
        (1, '{"a": 2}', int(dt.datetime(2026, 11, 23, 10, tzinfo=utc).timestamp()), "2026-11-23", "5"),
        (2, "[]", 1763892000, "2026-01-01", "large"),  # an epoch number read as UTC seconds
        (3, '{"k": "v"}', int(dt.datetime(2026, 11, 24, 8, 30, tzinfo=utc).timestamp()), "2026-11-24", "7"),
    ]


async def test_a_json_number_longer_than_python_reads_by_default_is_valid_json(app_db, make_config, pg_dsn, tmp_path):
    """Postgres takes a JSON number of any length (a 5000-digit integer); so does syncd's
    check of the document, instead of holding the table as invalid JSON."""
    big = "9" * 5000
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, j TEXT, jb TEXT)")
    conn.execute("INSERT INTO docs VALUES (1, ?, ?)", (f'{{"n": {big}}}', f"[{big}, 1.5]"))
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db), "columns": {"docs": {"j": "json", "jb": "jsonb"}}}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    r = run_cli(cfg, "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    pg = await asyncpg.connect(pg_dsn)
    try:
        assert await pg.fetchval("SELECT length(j->>'n') FROM app.docs") == 5000
        assert await pg.fetchval("SELECT length(jb->>0) FROM app.docs") == 5000
    finally:
        await pg.close()


async def test_a_jsonb_number_past_what_postgres_numeric_holds_holds_its_table_naming_the_column(
        app_db, make_config, pg_dsn, tmp_path):
    """Postgres's jsonb keeps numbers as numeric: at most 131,072 digits before the point
    and 16,383 after (1e131072 and 1e-16384 are past it too), and its input refuses an
    exponent of 1,073,741,823 or more even on a zero (0e2000000000, which syncd took for
    a zero that fits). Such a number is named with its column and key before loading and
    its table held, the others loading; a json column (kept as text) takes the same document."""
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, jb TEXT)")
    conn.execute("CREATE TABLE texts (id INTEGER PRIMARY KEY, j TEXT)")
    past = [f"[{'9' * 131_073}]", '{"n": 1e131072}', '[1e-16384]', '[0e1073741823]']
    conn.executemany("INSERT INTO docs VALUES (?, ?)", [(i + 1, doc) for i, doc in enumerate(past)])
    conn.execute("INSERT INTO docs VALUES (9, ?)", (f"[{'9' * 131_072}, 1e-16383, 0e1073741822]",))
    conn.executemany("INSERT INTO texts VALUES (?, ?)", [(i + 1, doc) for i, doc in enumerate(past)])
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(app_db),
                        "columns": {"docs": {"jb": "jsonb"}, "texts": {"j": "json"}}}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("syncd running")

        async def settled() -> bool:
            states = await table_states(pg_dsn, "app")
            return states.get("docs", ("",))[0] == "held" and states.get("texts", ("",))[0] == "streaming"

        await eventually(settled, 60, "docs held, texts streaming", d)
        reason = (await table_states(pg_dsn, "app"))["docs"][1] or ""
        assert d.stop() == 0
    assert 'column "jb"' in reason and "4 value(s)" in reason and "numeric" in reason, reason
    assert "invalid JSON" not in reason, reason



async def test_a_column_an_override_names_renamed_by_the_application_is_named_with_the_way_out(
        app_db, make_config, pg_dsn, tmp_path):
    """The application renames a column a `[sources.columns]` override names: the table is
    no longer replicated until the setting names it again, and its reason says so, with
    the columns the table has now. Before, it said only "names unknown column(s) ['day']"."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute("CREATE TABLE ev (id INTEGER PRIMARY KEY, day TEXT, v TEXT)")
    conn.executemany("INSERT INTO ev VALUES (?, ?, ?)", [(i, f"2026-01-{i:02d}", "v") for i in range(1, 21)])
    cfg = make_config([{"name": "app", "path": str(app_db), "columns": {"ev": {"day": "date"}}}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("ALTER TABLE ev RENAME COLUMN day TO happened_on")

        async def refused() -> bool:
            return (await table_states(pg_dsn, "app"))["ev"][0] == "refused"

        await eventually(refused, 30, "the table refused", d)
        reason = (await table_states(pg_dsn, "app"))["ev"][1]
        assert d.stop() == 0
    assert reason == ('[sources.columns] names column(s) "day" the table does not have (renamed or dropped in '
                      'SQLite?); its columns are "id", "happened_on", "v": name them as they are now to replicate '
                      "the table"), reason
