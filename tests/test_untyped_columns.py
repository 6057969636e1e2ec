"""A column SQLite declares without a type takes its Postgres type from the values it
holds when syncd first sees the table; an empty table has none, so such a column is
carried as text for now, and syncd says so. At cutover it becomes bigint (every value an
integer) or double precision (every value a real), proven value by value in SQLite and
again in Postgres, so the application reading Postgres gets the numbers SQLite gave it;
a column holding a text value stays text and is named."""

from __future__ import annotations

import sqlite3

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, typeof, wait_back


def _schema_lines(cfg, column: str) -> list[str]:
    out = run_cli(cfg, "schema")
    assert out.returncode == 0, out.stdout + out.stderr
    return [line for line in out.stdout.splitlines() if f'"{column}"' in line or f"--   {column}:" in line]


async def test_a_column_without_a_type_first_seen_empty_is_typed_at_cutover_from_its_values(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n, r, mixed, never)")
    cfg = backup_and_config(make_config, tmp_path, db, stream={"schema_check_interval_seconds": 1})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        # Said truthfully while the table is empty: no declared type, no values yet.
        log = d.log()
        assert "no declared type and no values yet" in log, log[-3000:]
        n_lines = _schema_lines(cfg, "n")
        assert any("no values yet" in line for line in n_lines), n_lines
        assert not any("chosen from the stored values" in line for line in n_lines), n_lines

        conn.executemany("INSERT INTO t (id, n, r, mixed) VALUES (?, ?, ?, ?)",
                         [(1, 5, 1.5, 1), (2, -7, 0.1 + 0.2, 2), (3, 2**62, 1e-05, "three"), (4, None, 100.0, 4)])
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT n FROM app.t WHERE id = 1") == [("5",)]  # text until the cutover
        lines = _schema_lines(cfg, "mixed")
        assert any("kept as text" in line and "'three'" in line and "keys 3" in line for line in lines), lines
        lines = _schema_lines(cfg, "n")
        assert any("bigint at cutover" in line for line in lines), lines

        out = await cut_over(cfg, db, pg_dsn, daemon=d)
        types = dict(await pg_rows(pg_dsn, "SELECT column_name, data_type FROM information_schema.columns "
                                           "WHERE table_schema = 'app' AND table_name = 't'"))
        assert types == {"id": "bigint", "n": "bigint", "r": "double precision", "mixed": "text", "never": "text"}
        assert 'column "mixed"' in out and "kept as text" in out, out
        # The application reading Postgres gets the numbers SQLite gave it.
        assert await pg_rows(pg_dsn, "SELECT id, n, r FROM app.t ORDER BY id") == [
            (1, 5, 1.5), (2, -7, 0.1 + 0.2), (3, 2**62, 1e-05), (4, None, 100.0)]

        # The way back writes numbers into SQLite, not their text.
        await pg_rows(pg_dsn, "INSERT INTO app.t (id, n, r, mixed) VALUES (5, 42, 2.25, 'x')")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT n, typeof(n), r, typeof(r) FROM t WHERE id = 5") == [(42, "integer", 2.25, "real")]

        r = run_cli(cfg, "rollback")
        assert r.returncode == 0 and "verified equal" in r.stdout, r.stdout + r.stderr
        # The forward stream again keeps the typed columns.
        conn.execute("INSERT INTO t (id, n, r) VALUES (6, 8, 0.5)")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT n, r FROM app.t WHERE id = 6") == [(8, 0.5)]
        assert d.stop() == 0
    out = run_cli(cfg, "verify")
    assert out.returncode == 0, out.stdout + out.stderr


async def test_a_negative_zero_keeps_an_untyped_column_text_at_cutover(tmp_path, make_config, pg_dsn):
    """SQLite keeps a real's sign of zero in a column without a type, but writes -0.0 as
    the text '0.0', which is what Postgres's text column holds: typed double precision,
    it would hand the application 0.0 where SQLite gave it -0.0 (and verification would
    then find the row different). Such a column stays text, named with the key."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, r, z)")
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(1, 0.0, 1.5), (2, -0.0, 0.0), (3, 2.5, -2.5)])
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        lines = _schema_lines(cfg, "r")
        assert any("kept as text" in line and "keys 2" in line for line in lines), lines
        out = await cut_over(cfg, db, pg_dsn, daemon=d)
        types = dict(await pg_rows(pg_dsn, "SELECT column_name, data_type FROM information_schema.columns "
                                           "WHERE table_schema = 'app' AND table_name = 't'"))
        assert types == {"id": "bigint", "r": "text", "z": "double precision"}, (types, out)
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr
        assert d.stop() == 0
