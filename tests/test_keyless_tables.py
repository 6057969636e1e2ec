"""Tables without a key replicate by default, every row of them, duplicates included:
syncd keys them on the SQLite rowid, kept in Postgres column `_syncd_rowid`. The rowid
is not stable (VACUUM renumbers it), so a schema change syncd did not make reloads
such a table aside, and Postgres readers never see it empty or half-loaded."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg
import pytest

from tests.support.compare import compare_keyless, compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import pg_rows, table_states, wait_caught_up

SCHEMA = """
CREATE TABLE metrics_log (host TEXT, metric TEXT, value REAL, at TEXT);
CREATE TABLE touches (contact_id INTEGER, channel TEXT, at TEXT);
"""
DUPLICATE = ("db1", "cpu", 0.5, "2026-11-30 10:00:00")


def seed(db, journal: str) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={journal}")
    conn.executescript(SCHEMA)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO metrics_log VALUES (?, ?, ?, ?)", [DUPLICATE] * 3 + [
        (f"db{i % 4}", "mem", i / 8, f"2026-11-30 10:{i % 60:02d}:00") for i in range(40)])
    conn.executemany("INSERT INTO touches VALUES (?, ?, ?)", [(7, "email", "2026-11-29")] * 2 + [
        (i, "call", f"2026-11-{i % 28 + 1:02d}") for i in range(20)])
    conn.execute("COMMIT")
    return conn


def churn(conn: sqlite3.Connection, round_: int) -> None:
    """Every kind of write a keyless table sees, rowid tricks included."""
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO metrics_log VALUES (?, ?, ?, ?)", [DUPLICATE] * 2)  # more exact duplicates
    conn.execute("UPDATE metrics_log SET value = value + 1 WHERE metric = 'mem' AND rowid % 5 = 0")
    conn.execute("DELETE FROM metrics_log WHERE rowid % 7 = ?", (round_ % 7,))  # gaps for VACUUM to close
    conn.execute("INSERT INTO metrics_log (rowid, host, metric, value, at) VALUES (?, 'db9', 'disk', 1, 'x')",
                 (50_000 + 1000 * round_,))  # an explicit rowid
    conn.execute("COMMIT")
    top = conn.execute("SELECT max(rowid) FROM touches").fetchone()[0]
    conn.execute("DELETE FROM touches WHERE rowid = ?", (top,))
    conn.execute("INSERT INTO touches VALUES (99, 'reused', 'rowid')")  # takes the deleted max rowid again
    conn.execute("UPDATE touches SET rowid = rowid + 500 WHERE contact_id = 3")  # a row moves to another rowid
    conn.execute("REPLACE INTO touches (rowid, contact_id, channel, at) VALUES (1, 1, 'replaced', 'r')")


async def assert_equal(db, pg_dsn) -> None:
    for table in ("metrics_log", "touches"):
        assert await compare_keyless(str(db), pg_dsn, "app", table) == [], table


@pytest.mark.parametrize("journal", ["wal", "delete"])
async def test_keyless_tables_replicate_through_every_write_and_vacuum(tmp_path, make_config, pg_dsn, journal):
    db = tmp_path / "app.db"
    conn = seed(db, journal)
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        await assert_equal(db, pg_dsn)
        for round_ in range(3):
            churn(conn, round_)
            await wait_caught_up(db, pg_dsn, "app", daemon=d)
        await assert_equal(db, pg_dsn)
        conn.execute("VACUUM")  # renumbers the rowids of both tables (they have gaps)
        # The reload is done when Postgres holds the renumbered rowids again.
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        for _ in range(100):
            if not await compare_keyless(str(db), pg_dsn, "app", "metrics_log"):
                break
            await asyncio.sleep(0.1)
        await assert_equal(db, pg_dsn)
        assert "reloading the table aside" in d.log()
        churn(conn, 4)
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        await assert_equal(db, pg_dsn)
        assert d.stop() == 0

    # While syncd is stopped: more writes, gaps, and a VACUUM it can only infer.
    churn(conn, 5)
    conn.execute("DELETE FROM touches WHERE rowid % 2 = 0")
    conn.execute("VACUUM")
    conn.execute("INSERT INTO touches VALUES (1000, 'after', 'vacuum')")
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        await assert_equal(db, pg_dsn)
        assert d.stop() == 0
    states = await table_states(pg_dsn, "app")
    assert states["metrics_log"][0] == states["touches"][0] == "streaming"
    r = run_cli(cfg, "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    conn.close()


async def test_a_reload_never_shows_postgres_readers_a_partial_table(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE events (kind TEXT, payload TEXT)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO events VALUES (?, ?)", [(f"k{i % 10}", "x" * 50) for i in range(60_000)])
    conn.execute("COMMIT")
    conn.execute("DELETE FROM events WHERE rowid % 3 = 0")  # gaps: VACUUM will renumber
    expected = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"stream": {"snapshot_chunk_rows": 500}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        seen: list[int] = []
        stop = asyncio.Event()

        async def watch() -> None:
            pg = await asyncpg.connect(pg_dsn)
            try:
                while not stop.is_set():
                    seen.append(await pg.fetchval('SELECT count(*) FROM app.events'))
                    await asyncio.sleep(0.005)
            finally:
                await pg.close()

        watcher = asyncio.create_task(watch())
        conn.execute("VACUUM")
        for _ in range(600):
            if not await compare_keyless(str(db), pg_dsn, "app", "events"):
                break
            await asyncio.sleep(0.1)
        stop.set()
        await watcher
        assert await compare_keyless(str(db), pg_dsn, "app", "events") == []
        assert d.log().count("into a table aside") == 1
        assert d.stop() == 0
    assert len(seen) >= 10 and set(seen) == {expected}, sorted(set(seen))[:10]


async def test_schema_names_the_rowid_column(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE plain (a TEXT);
        CREATE TABLE clash (_syncd_rowid TEXT, b INTEGER);
        CREATE TABLE hidden (rowid TEXT, oid TEXT, _rowid_ TEXT);
    """)
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db)}])
    r = run_cli(cfg, "schema")
    assert r.returncode == 0, r.stderr
    assert '"_syncd_rowid" bigint GENERATED BY DEFAULT AS IDENTITY,\n    PRIMARY KEY ("_syncd_rowid")' in r.stdout
    assert 'kept in Postgres column "_syncd_rowid"' in r.stdout and "VACUUM" in r.stdout
    # a column of that name already: the next free name, never a clash
    assert '"_syncd_rowid" text' in r.stdout and 'PRIMARY KEY ("_syncd_rowid_1")' in r.stdout
    # every rowid alias shadowed: refused with what to do, never silently skipped
    assert "refused 'hidden'" in r.stdout and "[sources.keys]" in r.stdout
    r = run_cli(cfg, "init")
    assert r.returncode == 1 and 'refused "hidden"' in r.stdout, r.stdout + r.stderr  # a table not carried
    cols = await pg_rows(pg_dsn, "SELECT column_name FROM information_schema.columns "
                                 "WHERE table_schema = 'app' AND table_name = 'clash' ORDER BY ordinal_position")
    assert [c[0] for c in cols] == ["_syncd_rowid", "b", "_syncd_rowid_1"]


async def test_a_column_renamed_to_the_rowid_columns_name_moves_the_rowid_column(tmp_path, make_config, pg_dsn):
    """A keyless table's column renamed (ALTER TABLE RENAME COLUMN) to the name syncd's
    rowid column has in Postgres: the rowid column moves to the next free name, and the
    application's column follows under its new name with its values; the same again
    while the daemon is stopped."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("CREATE TABLE log (a TEXT, b INTEGER); INSERT INTO log VALUES ('x', 1), ('y', 2);")
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})

    async def columns() -> list[tuple]:
        return await pg_rows(pg_dsn, "SELECT column_name, data_type FROM information_schema.columns "
                                     "WHERE table_schema = 'app' AND table_name = 'log' ORDER BY ordinal_position")

    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute('ALTER TABLE log RENAME COLUMN a TO "_syncd_rowid"')
        conn.execute("INSERT INTO log VALUES ('z', 3)")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await columns() == [("_syncd_rowid", "text"), ("b", "bigint"), ("_syncd_rowid_1", "bigint")]
        assert d.stop() == 0
    assert await pg_rows(pg_dsn, 'SELECT "_syncd_rowid", b FROM app.log ORDER BY b') == [("x", 1), ("y", 2), ("z", 3)]
    assert run_cli(cfg, "verify").returncode == 0
    conn.execute('ALTER TABLE log RENAME COLUMN b TO "_syncd_rowid_1"')
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await columns() == [("_syncd_rowid", "text"), ("_syncd_rowid_1", "bigint"),
                                   ("_syncd_rowid_2", "bigint")]
        assert await table_states(pg_dsn, "app") == {"log": ("streaming", None)}
        assert d.stop() == 0
    assert await compare_keyless(str(db), pg_dsn, "app", "log", rowid_column="_syncd_rowid_2") == []
    assert run_cli(cfg, "verify").returncode == 0


@pytest.mark.parametrize("how", ["renamed", "dropped"])
async def test_a_column_leaving_the_rowid_columns_name_gives_it_back(tmp_path, make_config, pg_dsn, how):
    """A keyless table's own column named "_syncd_rowid" (syncd's rowid column is then
    "_syncd_rowid_1") renamed to another name, or dropped: the column follows in Postgres
    (renamed with its values, or kept aside with them), the rowid column takes its usual
    name again, and the table streams on."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript('PRAGMA journal_mode=wal; CREATE TABLE log ("_syncd_rowid" TEXT, b INTEGER);'
                       "INSERT INTO log VALUES ('x', 1), ('y', 2), ('y', 2);")
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute('ALTER TABLE log RENAME COLUMN "_syncd_rowid" TO a' if how == "renamed" else
                     'ALTER TABLE log DROP COLUMN "_syncd_rowid"')
        conn.execute("INSERT INTO log (b) VALUES (3)")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await table_states(pg_dsn, "app") == {"log": ("streaming", None)}
    cols = await pg_rows(pg_dsn, "SELECT column_name FROM information_schema.columns "
                                 "WHERE table_schema = 'app' AND table_name = 'log' ORDER BY ordinal_position")
    first = cols[0][0]
    assert first == "a" if how == "renamed" else first.startswith("_syncd_rowid__dropped_"), cols
    assert [c for (c,) in cols[1:]] == ["b", "_syncd_rowid"]
    assert await pg_rows(pg_dsn, f'SELECT "{first}", b FROM app.log ORDER BY _syncd_rowid') == \
        [("x", 1), ("y", 2), ("y", 2), (None, 3)]
    assert await compare_keyless(str(db), pg_dsn, "app", "log") == []
    v = run_cli(cfg, "verify")
    assert v.returncode == 0, v.stdout + v.stderr


@pytest.mark.parametrize("how", ["rebuilt_key_last", "rebuilt_key_first", "unique_index"])
async def test_a_keyless_table_given_a_key_is_reloaded_on_it(tmp_path, make_config, pg_dsn, how):
    """The application gives a keyless table a key: a 12-step rebuild adding an INTEGER
    PRIMARY KEY (last or first), or a UNIQUE index on a NOT NULL column. The table is
    reloaded keyed on it; the file's other tables stream on meanwhile."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("""
        PRAGMA journal_mode=wal;
        CREATE TABLE users (email TEXT NOT NULL, name TEXT);
        CREATE TABLE other (id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO users VALUES ('a@x', 'ada'), ('b@x', 'bob');
        INSERT INTO other VALUES (1, 'before');
    """)
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        if how == "unique_index":
            conn.execute("CREATE UNIQUE INDEX users_email ON users (email)")
        else:
            cols = "email TEXT NOT NULL, name TEXT, id INTEGER PRIMARY KEY" if how == "rebuilt_key_last" else \
                "id INTEGER PRIMARY KEY, email TEXT NOT NULL, name TEXT"
            conn.executescript(f"""
                BEGIN;
                CREATE TABLE users_new ({cols});
                INSERT INTO users_new (email, name) SELECT email, name FROM users;
                DROP TABLE users;
                ALTER TABLE users_new RENAME TO users;
                COMMIT;
            """)
        conn.execute("INSERT INTO users (email, name) VALUES ('c@x', 'cy')")
        conn.execute("UPDATE other SET v = 'after'")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        log = d.log()
    assert "ERROR" not in log, log[-3000:]
    states = await table_states(pg_dsn, "app")
    assert states["users"][0] == states["other"][0] == "streaming", states
    key = ["email"] if how == "unique_index" else ["id"]
    assert await compare_table(str(db), pg_dsn, "app", "users", key=key) == []
    assert await compare_table(str(db), pg_dsn, "app", "other") == []
    # syncd's rowid column went with the key it was: the columns are SQLite's, the
    # table is compared, and a restarted daemon streams it on.
    cols = await pg_rows(pg_dsn, "SELECT column_name FROM information_schema.columns "
                                 "WHERE table_schema = 'app' AND table_name = 'users'")
    assert sorted(c[0] for c in cols) == sorted(r[1] for r in conn.execute("PRAGMA table_info(users)"))
    v = run_cli(cfg, "verify")
    assert v.returncode == 0 and 'app: "users" equal' in v.stdout, v.stdout + v.stderr
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        conn.execute("INSERT INTO users (email, name) VALUES ('d@x', 'di')")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert (await table_states(pg_dsn, "app"))["users"][0] == "streaming"
    assert await compare_table(str(db), pg_dsn, "app", "users", key=key) == []


async def test_a_dropped_columns_values_stay_with_their_rows_when_vacuum_renumbers(tmp_path, make_config, pg_dsn):
    """A column dropped in SQLite is kept aside in Postgres with the values it had. A
    VACUUM then renumbers the rowids a keyless table is keyed by, and syncd reloads it:
    each kept value stays with the row it belonged to (duplicates alike), never moves
    to the row that took its old rowid."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("PRAGMA journal_mode=wal; CREATE TABLE log (a TEXT, secret TEXT);")
    conn.executemany("INSERT INTO log VALUES (?, ?)",
                     [(f"r{i}", f"s{i}") for i in range(10)] + [("dup", "d1"), ("dup", "d2"), ("last", "z")])
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute("ALTER TABLE log DROP COLUMN secret")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        (kept,) = [c for (c,) in await pg_rows(pg_dsn, "SELECT column_name FROM information_schema.columns WHERE "
                                                       "table_schema = 'app' AND table_name = 'log'")
                   if c.startswith("secret__dropped_")]
        conn.execute("DELETE FROM log WHERE a IN ('r0', 'r3', 'r7')")
        conn.execute("VACUUM")  # gaps closed: most rows move to another rowid
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        for _ in range(100):
            if not await compare_keyless(str(db), pg_dsn, "app", "log"):
                break
            await asyncio.sleep(0.1)
        assert await compare_keyless(str(db), pg_dsn, "app", "log") == []
        assert d.stop() == 0
    rows = await pg_rows(pg_dsn, f'SELECT a, "{kept}" FROM app.log ORDER BY _syncd_rowid')
    assert rows == [(f"r{i}", f"s{i}") for i in (1, 2, 4, 5, 6, 8, 9)] + [("dup", "d1"), ("dup", "d2"), ("last", "z")]


async def test_a_dropped_columns_values_stay_with_a_row_changed_before_the_reload(tmp_path, make_config, pg_dsn):
    """A keyless table is loaded again after other schema changes too (a column added
    with a default syncd cannot take from Postgres). A row the application changed in
    the same transaction keeps its rowid, and with it the value of a column dropped
    earlier, kept in Postgres only: matched by rowid where its content no longer is."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("PRAGMA journal_mode=wal; CREATE TABLE log (a TEXT, secret TEXT);")
    conn.executemany("INSERT INTO log VALUES (?, ?)", [(f"r{i}", f"s{i}") for i in range(5)])
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        conn.execute("ALTER TABLE log DROP COLUMN secret")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    (kept,) = [c for (c,) in await pg_rows(pg_dsn, "SELECT column_name FROM information_schema.columns WHERE "
                                                   "table_schema = 'app' AND table_name = 'log'")
               if c.startswith("secret__dropped_")]
    conn.execute("BEGIN")
    conn.execute("ALTER TABLE log ADD COLUMN c TEXT NOT NULL DEFAULT 1.50")
    conn.execute("UPDATE log SET a = 'r2 edited' WHERE a = 'r2'")
    conn.execute("COMMIT")
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        d.wait_log("reloading", timeout=60)
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    rows = await pg_rows(pg_dsn, f'SELECT a, "{kept}" FROM app.log ORDER BY _syncd_rowid')
    assert rows == [("r0", "s0"), ("r1", "s1"), ("r2 edited", "s2"), ("r3", "s3"), ("r4", "s4")]
