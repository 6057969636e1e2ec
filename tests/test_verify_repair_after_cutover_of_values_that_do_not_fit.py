"""After a cutover, SQLite rows changed behind syncd's back to values that do not fit
the column's type (a blob in a TEXT column, text in an INTEGER one): `syncd verify` says
what `--repair` does about them, and `--repair` writes Postgres's row over them, as it
does any other; before the cutover such a row is SQLite's to fix, after it Postgres's
row is the truth."""

from __future__ import annotations

import contextlib
import sqlite3

from tests.support.daemon import DaemonProcess
from tests.support.verifying import verify
from tests.support.way_back import backup_and_config, cut_over, orders_app, tamper_sqlite, typeof, wait_back


TAGS = "CREATE TABLE tags (name TEXT PRIMARY KEY, n INTEGER); INSERT INTO tags VALUES ('a', 1), ('b', 2);"


@contextlib.asynccontextmanager
async def cut_over_with(tmp_path, make_config, pg_dsn, script: str, orders: bool = True):
    """The orders app (`orders`) and what `script` makes beside it, cut over and followed
    back by a running daemon: yields (file, config, daemon)."""
    db = tmp_path / "app.db"
    if orders:
        orders_app(db)
    conn = sqlite3.connect(db)
    if not orders:
        conn.execute("PRAGMA journal_mode=wal")
    conn.executescript(script)
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        yield db, cfg, d


async def test_values_that_do_not_fit_are_written_over_from_postgres(tmp_path, make_config, pg_dsn):
    async with cut_over_with(tmp_path, make_config, pg_dsn, "CREATE TABLE stock (id INTEGER PRIMARY KEY, qty INTEGER); "
                             "INSERT INTO stock VALUES (1, 5), (2, 6);") as (db, cfg, d):
        tamper_sqlite(db, "UPDATE orders SET item = x'00ff' WHERE id = 1")
        tamper_sqlite(db, "UPDATE stock SET qty = 'five' WHERE id = 1")

        out = verify(cfg, "--wait", "2")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "the stream holds the table" not in out.stdout, out.stdout
        assert ('app: "stock" different: key 1: column "qty" (column "qty": text \'five\' does not fit bigint; '
                "`syncd verify --repair` writes Postgres's row over it)") in out.stdout.splitlines(), out.stdout

        out = verify(cfg, "--wait", "5", "--repair")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "not repaired" not in out.stdout, out.stdout
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT id, item, typeof(item) FROM orders ORDER BY id") == [(1, "a", "text"), (2, "b", "text")]
        assert typeof(db, "SELECT id, qty, typeof(qty) FROM stock ORDER BY id") == [(1, 5, "integer"), (2, 6, "integer")]
        assert verify(cfg, "--wait", "2").returncode == 0


async def test_a_row_under_a_key_postgres_cannot_hold_is_removed_from_sqlite(tmp_path, make_config, pg_dsn):
    """A row whose key does not fit the key column (a blob in a TEXT key) can be no
    Postgres key, so no replay by key reaches it: `--repair` has the way back copy the
    table again from Postgres, which removes it, as verify says it will."""
    async with cut_over_with(tmp_path, make_config, pg_dsn, TAGS, orders=False) as (db, cfg, d):
        tamper_sqlite(db, "INSERT INTO tags VALUES (x'00ff', 3)")

        out = verify(cfg, "--wait", "5", "--repair")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "not repaired" not in out.stdout, out.stdout
        assert typeof(db, "SELECT name, n FROM tags ORDER BY name") == [("a", 1), ("b", 2)]
        assert verify(cfg, "--wait", "2").returncode == 0


async def test_text_that_is_not_utf8_is_written_over_from_postgres(tmp_path, make_config, pg_dsn):
    """Text that is not UTF-8, as a value and as a key, written to SQLite behind syncd's
    back after the cutover: verify names both rows, and `--repair` writes Postgres's row over
    the one and removes the other (no Postgres key is such text)."""
    async with cut_over_with(tmp_path, make_config, pg_dsn, TAGS) as (db, cfg, d):
        tamper_sqlite(db, "UPDATE orders SET item = CAST(x'61ff' AS TEXT) WHERE id = 1")
        tamper_sqlite(db, "INSERT INTO tags VALUES (CAST(x'74ff' AS TEXT), 3)")

        out = verify(cfg, "--wait", "2")
        assert out.returncode == 1, out.stdout + out.stderr
        lines = out.stdout.splitlines()
        assert any(line.startswith('app: "orders" different: key 1: column "item" (column "item": text')
                   and "not valid UTF-8" in line for line in lines), out.stdout
        assert any(line.startswith('app: "tags" only in SQLite: key ') for line in lines), out.stdout

        out = verify(cfg, "--wait", "5", "--repair")
        assert out.returncode == 0, out.stdout + out.stderr
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT id, item, typeof(item) FROM orders ORDER BY id") == [(1, "a", "text"), (2, "b", "text")]
        assert typeof(db, "SELECT name, n FROM tags ORDER BY name") == [("a", 1), ("b", 2)]
        assert verify(cfg, "--wait", "2").returncode == 0


async def test_a_date_in_another_spelling_than_its_columns_is_written_over_from_postgres(tmp_path, make_config, pg_dsn):
    """A DATETIME (or DATE key) column schema parity typed at cutover holds one spelling: a
    value written behind syncd's back in another (the same instant with a T, or with
    milliseconds) is a difference to verify, and the repair writes it in the column's
    spelling, not only says it replayed the row."""
    async with cut_over_with(tmp_path, make_config, pg_dsn,
                             "CREATE TABLE visits (id INTEGER PRIMARY KEY, at DATETIME); INSERT INTO visits VALUES "
                             "(1, '2026-01-02 10:00:00'), (2, '2026-01-03 11:00:00'), (3, '2026-01-04 12:00:00'); "
                             "CREATE TABLE daily (day DATE PRIMARY KEY, n INTEGER); INSERT INTO daily VALUES "
                             "('2026-01-01', 1), ('2026-01-02', 2);",
                             orders=False) as (db, cfg, d):
        tamper_sqlite(db, "UPDATE visits SET at = '2026-01-02T10:00:00' WHERE id = 1")
        tamper_sqlite(db, "UPDATE visits SET at = '2026-01-03 11:00:00.000' WHERE id = 2")
        tamper_sqlite(db, "UPDATE daily SET day = '2026-01-01T00:00:00' WHERE n = 1")  # a key
        out = verify(cfg, "--wait", "2")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "`syncd verify --repair` writes Postgres's row over it" in out.stdout, out.stdout

        out = verify(cfg, "--wait", "5", "--repair")
        assert out.returncode == 0, out.stdout + out.stderr
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT id, at FROM visits ORDER BY id") == [
            (1, "2026-01-02 10:00:00"), (2, "2026-01-03 11:00:00"), (3, "2026-01-04 12:00:00")]
        assert typeof(db, "SELECT day, n FROM daily ORDER BY n") == [("2026-01-01", 1), ("2026-01-02", 2)]
        assert verify(cfg, "--wait", "2").returncode == 0
