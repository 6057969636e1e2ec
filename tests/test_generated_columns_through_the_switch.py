"""A generated column through a cutover, a rollback and the dual-write after it.

docs/schema.md ("Generated columns") tells the user: after a cutover Postgres does not
compute a SQLite generated column, "so make it a GENERATED ALWAYS AS (...) STORED column
in Postgres". Postgres can only do that by dropping the column and adding it back as a
generated one. The way back copes (SQLite computes its own value, and the rollback's
verification finds both equal), and the rollback succeeds. After it, the application
writes SQLite again and syncd's forward stream must carry those rows to Postgres as it
did before the cutover: Postgres computes the column from the same inputs, so the rows
are equal without syncd writing that column, and a later `syncd cutover` ("as often as
needed") must find them so."""

from __future__ import annotations

import sqlite3

import asyncpg

from tests.support.compare import compare_all
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, pg_rows, table_states
from tests.support.way_back import backup_and_config, cut_over, wait_back


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE lines (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL, price REAL NOT NULL,
                            total REAL GENERATED ALWAYS AS (qty * price) STORED);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
    """)
    conn.executemany("INSERT INTO lines (qty, price) VALUES (?, ?)", [(i, 1.5) for i in range(1, 6)])
    conn.execute("INSERT INTO notes (body) VALUES ('one')")
    conn.commit()
    conn.close()


def sqlite_totals(db) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT id, total FROM lines ORDER BY id").fetchall()
    finally:
        conn.close()


async def computed_in_postgres_then_rolled_back(cfg, db, pg_dsn, d, expression: str = "qty * price") -> None:
    await cut_over(cfg, db, pg_dsn, daemon=d)
    # As docs/schema.md advises: Postgres computes the column from now on.
    await pg_rows(pg_dsn, "ALTER TABLE app.lines DROP COLUMN total")
    await pg_rows(pg_dsn, "ALTER TABLE app.lines ADD COLUMN total double precision "
                          f"GENERATED ALWAYS AS ({expression}) STORED")
    await pg_rows(pg_dsn, "INSERT INTO app.lines (qty, price) VALUES (10, 2.5)")  # the application, id 6

    async def taken_up() -> bool:
        # The way back copies the table again for the column Postgres now computes (adding
        # it rewrote the table): until it is done, or until it has seen the rewrite at all
        # (the table's new storage file noted), a rollback is refused, rightly.
        if await pg_rows(pg_dsn, "SELECT (files -> 'lines' ->> 0)::oid = (SELECT relfilenode FROM pg_class "
                                 "WHERE oid = 'app.lines'::regclass) FROM syncd.reverse WHERE source = 'app'") != [(True,)]:
            return False
        if (await table_states(pg_dsn, "app")).get("lines", ("",))[0] != "streaming":
            return False
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute("SELECT count(*) FROM lines WHERE id = 6").fetchone()[0] == 1
        finally:
            conn.close()

    await eventually(taken_up, 60, "the way back's copy of the table Postgres now computes a column of", daemon=d)
    await wait_back(cfg, db, pg_dsn, daemon=d)
    r = run_cli(cfg, "rollback")
    assert r.returncode == 0, r.stdout + r.stderr


async def test_rows_written_to_sqlite_after_a_rollback_reach_a_column_postgres_generates(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await computed_in_postgres_then_rolled_back(cfg, db, pg_dsn, d)

        # The application writes SQLite again.
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO lines (qty, price) VALUES (3, 3.0)")  # id 7
        conn.execute("UPDATE lines SET qty = 7 WHERE id = 1")
        conn.execute("UPDATE notes SET body = 'two'")
        conn.commit()
        conn.close()

        async def carried() -> bool:
            return await pg_rows(pg_dsn, "SELECT id, qty, total FROM app.lines WHERE id IN (1, 7) ORDER BY id") == [
                (1, 7, 10.5), (7, 3, 9.0)]

        async def notes_followed() -> bool:
            return await pg_rows(pg_dsn, "SELECT body FROM app.notes") == [("two",)]

        await eventually(notes_followed, 30, "the forward stream after the rollback", d)
        try:
            await eventually(carried, 15, "the rows written to SQLite after the rollback in Postgres", d)
        except AssertionError as e:
            state = (await table_states(pg_dsn, "app"))["lines"]
            raise AssertionError(f"{e}; lines is {state[0]}: {state[1]}") from None
        assert await compare_all(str(db), pg_dsn, "app", ["lines", "notes"]) == []
        # Postgres computed the column (still a generated one: syncd wrote no value into
        # it) and holds what SQLite computed in every row.
        assert await pg_rows(pg_dsn, "SELECT attgenerated::text FROM pg_attribute WHERE attrelid = 'app.lines'::regclass "
                                     "AND attname = 'total'") == [("s",)]
        assert await pg_rows(pg_dsn, "SELECT id, total FROM app.lines ORDER BY id") == sqlite_totals(db)
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr
        assert 'app: "lines" equal (7 rows in SQLite, 7 in Postgres' in v.stdout, v.stdout

        # The cutover again: its trial INSERT leaves the column Postgres computes to Postgres,
        # and so does the application's next row.
        out = await cut_over(cfg, db, pg_dsn, daemon=d)
        assert "lines.id continues after 7" in out, out
        assert await pg_rows(pg_dsn, "INSERT INTO app.lines (qty, price) VALUES (2, 4.0) RETURNING id, total") == [
            (8, 8.0)]


async def test_a_reload_after_the_rollback_leaves_the_column_to_postgres(tmp_path, make_config, pg_dsn):
    """A column added in SQLite that the rows already there cannot take from a Postgres
    default (a generated one) reloads the table through a table aside: neither the
    load's COPY nor the move into the live table writes the column Postgres computes."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await computed_in_postgres_then_rolled_back(cfg, db, pg_dsn, d)
        conn = sqlite3.connect(db)
        conn.execute("ALTER TABLE lines ADD COLUMN doubled INTEGER GENERATED ALWAYS AS (qty * 2) VIRTUAL")
        conn.execute("INSERT INTO lines (qty, price) VALUES (4, 0.5)")  # id 7
        conn.commit()
        conn.close()

        async def reloaded() -> bool:
            try:
                return await pg_rows(pg_dsn, "SELECT id, doubled, total FROM app.lines WHERE id IN (1, 7) "
                                             "ORDER BY id") == [(1, 2, 1.5), (7, 8, 2.0)]
            except asyncpg.UndefinedColumnError:  # not added in Postgres yet
                return False

        try:
            await eventually(reloaded, 30, "the reloaded rows in Postgres", d)
        except AssertionError as e:
            state = (await table_states(pg_dsn, "app"))["lines"]
            raise AssertionError(f"{e}; lines is {state[0]}: {state[1]}") from None
        assert "into a table aside" in d.log()  # a reload: the live rows stayed until it was done
        assert await pg_rows(pg_dsn, "SELECT attgenerated::text FROM pg_attribute WHERE attrelid = "
                                     "'app.lines'::regclass AND attname = 'total'") == [("s",)]
        assert await pg_rows(pg_dsn, "SELECT id, total FROM app.lines ORDER BY id") == sqlite_totals(db)
        assert await compare_all(str(db), pg_dsn, "app", ["lines", "notes"]) == []
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr


async def test_a_value_postgres_computes_otherwise_is_a_difference(tmp_path, make_config, pg_dsn):
    """Postgres computes the column itself, by its own expression: where that gives
    another value than SQLite's for a row the application wrote to SQLite, verification
    reports the row, as it would any other difference."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        # Agrees with SQLite on every row until a quantity over 100.
        await computed_in_postgres_then_rolled_back(cfg, db, pg_dsn, d,
                                                    "CASE WHEN qty > 100 THEN 0 ELSE qty * price END")
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO lines (qty, price) VALUES (200, 1.0)")  # id 7
        conn.commit()
        conn.close()

        async def arrived() -> bool:
            return await pg_rows(pg_dsn, "SELECT qty, total FROM app.lines WHERE id = 7") == [(200, 0.0)]

        await eventually(arrived, 30, "the row in Postgres", d)
        v = run_cli(cfg, "verify")
        assert v.returncode == 1, v.stdout + v.stderr
        assert 'app: "lines" different: key 7: column "total"' in v.stdout, v.stdout


async def test_a_repair_replays_no_row_whose_only_difference_postgres_computes(tmp_path, make_config, pg_dsn):
    """A row that differs only in a column Postgres computes by another expression is one
    no replay can mend (the stream writes the row again and Postgres computes the same
    value): `syncd verify --repair`, like the daemon's periodic repair, says so and
    replays nothing, instead of reporting it repaired at every check."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await computed_in_postgres_then_rolled_back(cfg, db, pg_dsn, d,
                                                    "CASE WHEN qty > 100 THEN 0 ELSE qty * price END")
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO lines (qty, price) VALUES (200, 1.0)")  # id 7
        conn.commit()
        conn.close()

        async def arrived() -> bool:
            return await pg_rows(pg_dsn, "SELECT qty, total FROM app.lines WHERE id = 7") == [(200, 0.0)]

        await eventually(arrived, 30, "the row in Postgres", d)
        v = run_cli(cfg, "verify", "--repair", "--wait", "5")
        assert v.returncode == 1, v.stdout + v.stderr
        assert 'app: "lines" different: key 7: column "total"' in v.stdout, v.stdout
        assert "replayed" not in v.stdout, v.stdout
        assert 'key 7 not repaired: Postgres computes column "total" itself' in v.stdout, v.stdout
        assert await pg_rows(pg_dsn, "SELECT max(repaired) FROM syncd.verify_runs WHERE table_name = 'lines'") == [
            (0,)]


async def test_a_repair_after_the_cutover_replays_no_row_whose_only_difference_sqlite_computes(
        tmp_path, make_config, pg_dsn):
    """Cut over, the application writes Postgres a row whose value in a column SQLite
    generates is not what SQLite's expression gives: the way back never writes that
    column (SQLite computes its own), so no replay can mend the row. `syncd verify
    --repair` says so and replays nothing, instead of reporting it repaired at every check."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "INSERT INTO app.lines (qty, price, total) VALUES (2, 3.0, 99.0)")  # id 6
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert sqlite_totals(db)[-1] == (6, 6.0)
        v = run_cli(cfg, "verify", "--repair", "--wait", "5")
        assert v.returncode == 1, v.stdout + v.stderr
        assert 'app: "lines" different: key 6: column "total"' in v.stdout, v.stdout
        assert "replayed" not in v.stdout, v.stdout
        assert 'key 6 not repaired: SQLite computes column "total" itself' in v.stdout, v.stdout
        assert await pg_rows(pg_dsn, "SELECT max(repaired) FROM syncd.verify_runs WHERE table_name = 'lines'") == [
            (0,)]


async def test_more_rows_than_are_listed_differing_only_in_a_column_sqlite_computes_are_not_copied_again(
        tmp_path, make_config, pg_dsn):
    """Past the 1,000 differences a check lists, rows that differ only in a column SQLite
    generates are still known for what they are: no copy of the table mends them either
    (SQLite computes its own value again), so `syncd verify --repair`, like the daemon's
    periodic repair, copies nothing and says why, instead of copying the whole table again
    from Postgres at every check."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "INSERT INTO app.lines (qty, price, total) "
                              "SELECT 2, 3.0, 99.0 FROM generate_series(1, 1001)")  # ids 6 to 1006
        await wait_back(cfg, db, pg_dsn, daemon=d)
        for _ in range(2):
            v = run_cli(cfg, "verify", "--repair", "--wait", "5")
            assert v.returncode == 1, v.stdout + v.stderr
            assert 'app: "lines" DIFFERS' in v.stdout and "1001 different" in v.stdout, v.stdout
            assert "copied again" not in v.stdout and "replayed" not in v.stdout, v.stdout
            assert 'key 6 not repaired: SQLite computes column "total" itself' in v.stdout, v.stdout
            assert '"lines": 1 further row(s) not repaired: SQLite computes' in v.stdout, v.stdout
        assert await pg_rows(pg_dsn, "SELECT max(repaired) FROM syncd.verify_runs WHERE table_name = 'lines'") == [
            (0,)]
