"""A collation the application defines for itself (Python's `create_collation`, ICU's
in another language): syncd's connections to the file lack it. A column declared with
one is carried as its values are (syncd reads them without the collation, as text), both
ways; a table with a key or index ordered by one, which SQLite reads no row through
without it, is refused by name, and the file's other tables stream on."""

from __future__ import annotations

import sqlite3

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, wait_back


def unicode_ci(a: str, b: str) -> int:
    return (a.lower() > b.lower()) - (a.lower() < b.lower())


def application(db) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.create_collation("UNICODE", unicode_ci)
    return conn


def make_app(db, refused: bool) -> None:
    conn = application(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT COLLATE UNICODE, n INTEGER);
        CREATE TABLE other (id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO people VALUES (1, 'Ann', 1), (2, 'bob', 2);
        INSERT INTO other VALUES (1, 'x');
    """)
    if refused:
        conn.executescript("""
            CREATE TABLE tags (code TEXT COLLATE UNICODE PRIMARY KEY, v TEXT);
            CREATE TABLE cities (id INTEGER PRIMARY KEY, name TEXT);
            CREATE INDEX cities_by_name ON cities (name COLLATE UNICODE);
            CREATE TABLE pets (id INTEGER PRIMARY KEY, name TEXT COLLATE UNICODE CHECK (name <> ''));
            CREATE TABLE visits (id INTEGER PRIMARY KEY, name TEXT COLLATE UNICODE, seen INTEGER);
            CREATE TRIGGER visits_seen AFTER UPDATE ON visits WHEN NEW.name <> OLD.name
            BEGIN UPDATE visits SET seen = 0 WHERE id = NEW.id; END;
            INSERT INTO tags VALUES ('a', '1'), ('B', '2');
            INSERT INTO cities VALUES (1, 'Oslo');
            INSERT INTO pets VALUES (1, 'Rex');
            INSERT INTO visits VALUES (1, 'Ann', 1);
        """)
    conn.close()


async def test_a_column_in_the_applications_collation_streams_both_ways(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db, refused=False)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        app = application(db)
        app.executescript("INSERT INTO people VALUES (3, 'Cy', 3); UPDATE people SET name = 'Bo' WHERE id = 2;"
                          "DELETE FROM people WHERE id = 1; INSERT INTO other VALUES (2, 'y');")
        app.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await pg_rows(pg_dsn, "SELECT id, name FROM app.people ORDER BY id") == [(2, "Bo"), (3, "Cy")]
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "INSERT INTO app.people (id, name, n) VALUES (4, 'Di', 4) RETURNING id")
        await pg_rows(pg_dsn, "UPDATE app.people SET name = 'Cyd' WHERE id = 3 RETURNING id")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    app = application(db)
    assert app.execute("SELECT id, name FROM people ORDER BY name").fetchall() == [(2, "Bo"), (3, "Cyd"), (4, "Di")]
    assert app.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert await compare_table(str(db), pg_dsn, "app", "people") == []


async def test_a_key_or_index_in_the_applications_collation_refuses_its_table_by_name(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db, refused=True)
    cfg = make_config([{"name": "app", "path": str(db)}])
    r = run_cli(cfg, "init")
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert ('refused "tags": its primary key orders column "code" by the collation UNICODE, which the application '
            "defines for itself") in out, out
    assert 'refused "cities": index "cities_by_name" orders column "name" by the collation UNICODE' in out, out
    for table in ("people", "pets", "visits"):
        assert table not in out.split("refused", 1)[1], out
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        app = application(db)
        app.executescript("INSERT INTO other VALUES (2, 'y'); INSERT INTO tags VALUES ('c', '3');")
        app.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert "unexpected error" not in d.log(), d.log()[-3000:]
        assert d.stop() == 0
    states = dict(await pg_rows(pg_dsn, "SELECT table_name, state FROM syncd.tables"))
    assert states == {"people": "streaming", "other": "streaming", "tags": "refused", "cities": "refused",
                      "pets": "streaming", "visits": "streaming"}, states
    assert await compare_table(str(db), pg_dsn, "app", "other") == []
    r = run_cli(cfg, "schema")
    assert "-- refused 'tags': its primary key orders column \"code\" by the collation UNICODE" in r.stdout, r.stdout


async def test_a_check_or_trigger_in_the_applications_collation_refuses_the_cutover_before_the_freeze(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db, refused=False)
    app = application(db)
    app.executescript("CREATE TABLE pets (id INTEGER PRIMARY KEY, name TEXT COLLATE UNICODE CHECK (name <> ''));"
                      "INSERT INTO pets VALUES (1, 'Rex');")
    app.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        for args in (("--dry-run",), ()):
            r = run_cli(cfg, "cutover", *args)
            assert r.returncode != 0, r.stdout + r.stderr
            assert ('table "pets": SQLite compiles an INSERT of it only with the collation UNICODE, which the '
                    "application defines for itself") in r.stdout + r.stderr, r.stdout + r.stderr
        app = application(db)  # nothing frozen: the application writes on
        app.execute("INSERT INTO pets VALUES (2, 'Tom')")
        app.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "pets") == []
