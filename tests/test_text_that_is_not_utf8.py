"""SQLite stores whatever bytes the application hands it as TEXT; Postgres takes only
valid UTF-8. Such a value holds its table, and the hold names the table, the key and
the column, at the load as in the stream, so the row can be found and fixed."""

from __future__ import annotations

import sqlite3

import asyncpg

from tests.support.daemon import DaemonProcess
from tests.support.sync import eventually, pg_rows, table_states


async def test_the_hold_names_the_column_of_text_that_is_not_utf8(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT, body TEXT)")
    conn.execute("INSERT INTO notes VALUES (1, 'fine', 'fine'), (2, 'fine', CAST(x'61ff62' AS TEXT))")
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        async def reason() -> str | None:
            try:
                states = await table_states(pg_dsn, "app")
            except asyncpg.UndefinedTableError:  # syncd has not set the source up yet
                return None
            state, why = states.get("notes", (None, None))
            return why if state == "held" else None

        await eventually(reason, 60, "notes held at its load", d)
        why = await reason()
        assert 'table "notes" key 2' in why and 'column "body"' in why and "not valid UTF-8" in why, why

        conn.execute("UPDATE notes SET body = 'fixed' WHERE id = 2")

        async def loaded() -> bool:
            return await pg_rows(pg_dsn, "SELECT count(*) FROM app.notes") == [(2,)]

        await eventually(loaded, 60, "notes loaded once fixed", d)
        conn.execute("INSERT INTO notes VALUES (3, CAST(x'ff' AS TEXT), 'fine')")
        await eventually(reason, 60, "notes held in the stream", d)
        why = await reason()
        assert 'table "notes" key 3' in why and 'column "title"' in why and "not valid UTF-8" in why, why
        assert d.stop() == 0
    conn.close()
