"""Every kind of table SQLite has, streamed by a running daemon and compared row for row
by an independent reader: INTEGER PRIMARY KEY, another primary key, WITHOUT ROWID,
STRICT, and generated columns (VIRTUAL and STORED, carried as the values SQLite
computed, and named as such by `syncd schema`). Keyless tables, virtual tables and views
have files of their own (test_keyless_tables.py, test_left_out_objects.py)."""

from __future__ import annotations

import json
import sqlite3

from tests.support.compare import compare_all
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import wait_caught_up

SCHEMA = """
CREATE TABLE plain (id INTEGER PRIMARY KEY, body TEXT);
CREATE TABLE named (host TEXT, ts REAL, cpu REAL, PRIMARY KEY (host, ts));
CREATE TABLE compact (k TEXT PRIMARY KEY, v INTEGER) WITHOUT ROWID;
CREATE TABLE strict (id INTEGER PRIMARY KEY, name TEXT NOT NULL, amount REAL, raw BLOB, any_ ANY) STRICT;
CREATE TABLE computed (id INTEGER PRIMARY KEY, price REAL, qty INTEGER,
                       total REAL GENERATED ALWAYS AS (price * qty) VIRTUAL,
                       label TEXT GENERATED ALWAYS AS (upper(name)) STORED, name TEXT);
CREATE TABLE coded (a INTEGER NOT NULL, code TEXT GENERATED ALWAYS AS ('C' || a) STORED NOT NULL UNIQUE, v TEXT);
CREATE TABLE doubled (a INTEGER NOT NULL, d INTEGER GENERATED ALWAYS AS (a * 2) VIRTUAL NOT NULL, v TEXT);
CREATE UNIQUE INDEX doubled_d ON doubled(d);
"""
# coded and doubled are keyed by a unique generated column: setting the column it is
# computed from moves the key.
TABLES = ["plain", "named", "compact", "strict", "computed", ("coded", ["code"]), ("doubled", ["d"])]


def write(conn: sqlite3.Connection, start: int, n: int) -> None:
    conn.execute("BEGIN")
    for i in range(start, start + n):
        conn.execute("INSERT INTO plain VALUES (?, ?)", (i, f"row {i}"))
        conn.execute("INSERT INTO named VALUES (?, ?, ?)", (f"host{i % 3}", i + 0.25, i / 7))
        conn.execute("INSERT INTO compact VALUES (?, ?)", (f"k{i}", i))
        conn.execute("INSERT INTO strict VALUES (?, ?, ?, ?, ?)", (i, f"n{i}", i * 1.5, bytes([i % 256]), i))
        conn.execute("INSERT INTO computed (id, price, qty, name) VALUES (?, ?, ?, ?)", (i, i * 0.5, i % 4, f"n{i}"))
        conn.execute("INSERT INTO coded (a, v) VALUES (?, ?)", (i, f"v{i}"))
        conn.execute("INSERT INTO doubled (a, v) VALUES (?, ?)", (i, f"v{i}"))
    conn.execute("COMMIT")


async def test_every_kind_of_table_streams_and_compares_equal(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript(SCHEMA)
    write(conn, 1, 50)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    schema = run_cli(cfg, "schema")
    for col in ("total", "label"):  # named wherever a user looks: `syncd schema`, the report
        assert f'NOT CARRIED: generated column "{col}": its expression is not carried' in schema.stdout
    report = json.loads(run_cli(cfg, "report", "--format", "json").stdout)
    left_out = {lo["name"] for s in report["sources"] for lo in s["not_migrated"]}
    assert {'computed: generated column "total"', 'computed: generated column "label"'} <= left_out, left_out
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        write(conn, 51, 50)  # streamed, not loaded
        conn.execute("UPDATE computed SET qty = qty + 1, name = 'changed' WHERE id % 5 = 0")
        conn.execute("UPDATE strict SET any_ = any_ * 1000, raw = NULL WHERE id = 3")
        conn.execute("DELETE FROM compact WHERE v % 7 = 0")
        conn.execute("UPDATE named SET cpu = -1 WHERE host = 'host1'")
        conn.execute("UPDATE coded SET a = a + 1000 WHERE a % 3 = 0")
        conn.execute("UPDATE doubled SET a = a + 1000 WHERE a % 3 = 0")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await compare_all(str(app_db), pg_dsn, "app", TABLES) == []
        assert d.stop() == 0
    v = run_cli(cfg, "verify")
    assert v.returncode == 0, v.stdout + v.stderr


async def test_on_the_way_back_sqlite_computes_its_generated_columns(tmp_path, make_config, pg_dsn):
    """After a cutover Postgres holds generated columns as plain ones: a row the application
    writes there reaches SQLite without them (SQLite refuses a value for a generated
    column and computes its own), and the table keeps streaming back."""
    from tests.support.sync import pg_rows, table_states
    from tests.support.way_back import backup_and_config, cut_over, typeof, wait_back

    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript(SCHEMA)
    write(conn, 1, 5)
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "INSERT INTO app.computed (price, qty, name) VALUES (3, 3, 'from postgres')")
        await pg_rows(pg_dsn, "UPDATE app.computed SET qty = 10, total = 999 WHERE id = 2")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT id, total, label FROM computed WHERE id IN (2, 6) ORDER BY id") == [
            (2, 10.0, "N2"), (6, 9.0, "FROM POSTGRES")]
        assert (await table_states(pg_dsn, "app"))["computed"][0] == "streaming"
        assert "Traceback" not in d.log()
        # Postgres holds 999 and NULL where SQLite computes 10.0 and 9.0: the rollback says so before
        dry = run_cli(cfg, "rollback", "--dry-run")
        for col in ("total", "label"):
            assert f'warning: "computed"."{col}" is computed by SQLite (GENERATED) and not by Postgres' in dry.stdout
        assert d.stop() == 0


async def test_a_generated_key_trigger_of_an_older_syncd_is_replaced_and_the_table_reloaded(
        app_db, make_config, pg_dsn, tmp_path):
    """An older syncd's key trigger fired only for UPDATEs naming the key column, so
    setting the column a generated key is computed from left the old row in Postgres.
    Upgraded, syncd replaces the trigger and loads the table again, ghost rows gone."""
    from tests.support.sync import pg_rows

    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript(SCHEMA)
    write(conn, 1, 5)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    name, sql = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'coded' "
                             "AND name LIKE '%\\_key' ESCAPE '\\'").fetchone()
    conn.execute(f'DROP TRIGGER "{name}"')
    conn.execute(sql.replace("AFTER UPDATE ON", 'AFTER UPDATE OF "code", rowid, oid, _rowid_ ON'))  # the old text
    conn.execute("UPDATE coded SET a = a + 100 WHERE a = 2")  # unseen by the old trigger: 'C2' stays in Postgres
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log("keyed on a generated column, whose changes an older syncd's key trigger missed", timeout=30)
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await compare_all(str(app_db), pg_dsn, "app", [("coded", ["code"])]) == []
        assert await pg_rows(pg_dsn, "SELECT count(*) FROM app.coded WHERE code = 'C2'") == [(0,)]
        assert d.stop() == 0
