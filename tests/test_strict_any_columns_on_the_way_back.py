"""A STRICT table's ANY column keeps every value exactly as written: SQLite applies no
affinity there (text '02134' stays text, where an ordinary table's untyped-ish column
would make it the integer 2134). On the way back after a cutover, the text the
application writes in Postgres must reach such a column as that very text."""

from __future__ import annotations

import sqlite3

from tests.support.daemon import DaemonProcess
from tests.support.sync import pg_rows, table_states
from tests.support.way_back import backup_and_config, cut_over, typeof, wait_back

SCHEMA = """
CREATE TABLE settings (key TEXT PRIMARY KEY, value ANY, code ANY DEFAULT '007') STRICT;
INSERT INTO settings (key, value) VALUES ('theme', 'dark'), ('zip', '02134'), ('version', '1.10');
"""


async def test_text_written_in_postgres_reaches_a_strict_any_column_as_text(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript(SCHEMA)
    conn.close()
    assert typeof(db, "SELECT value, typeof(value) FROM settings WHERE key = 'zip'") == [("02134", "text")]
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "UPDATE app.settings SET value = '2.0' WHERE key = 'version'")
        await pg_rows(pg_dsn, "INSERT INTO app.settings VALUES ('zip2', '02139'), ('limit', ' 12 ')")
        # the column's default means in Postgres what it means in SQLite: the text '007'
        assert await pg_rows(pg_dsn, "SELECT code FROM app.settings WHERE key = 'zip2'") == [("007",)]
        try:
            await wait_back(cfg, db, pg_dsn, daemon=d, timeout=30)
        except AssertionError:
            pass  # the assertions below say what went wrong
        states = await table_states(pg_dsn, "app")
        assert states["settings"][0] == "streaming", states["settings"]
        assert typeof(db, "SELECT key, value, typeof(value) FROM settings ORDER BY key") == [
            ("limit", " 12 ", "text"), ("theme", "dark", "text"), ("version", "2.0", "text"),
            ("zip", "02134", "text"), ("zip2", "02139", "text")]
        assert d.stop() == 0
