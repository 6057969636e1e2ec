"""A table's indexes (schema parity) are built once its first load is over, not kept up
row by row through the COPY; a table that already has them keeps them through a
reload, so queries on the live table stay fast while the rows are replaced."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import asyncpg

from tests.support.compare import compare_keyless, compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, pg_rows, wait_caught_up

ROWS = 30_000
# No periodic schema check within a test: the indexes come from the table starting to stream.
SLOW_LOAD = {"stream": {"snapshot_chunk_rows": 100, "schema_check_interval_seconds": 3600},
             "verify": {"interval_seconds": 0}}


async def indexes(dsn, table: str) -> set[str]:
    rows = await pg_rows(dsn, "SELECT indexname FROM pg_indexes WHERE schemaname = 'app' AND tablename = $1", table)
    return {r[0] for r in rows}


async def state(dsn, table: str) -> str | None:
    try:
        rows = await pg_rows(dsn, "SELECT state FROM syncd.tables WHERE table_name = $1", table)
    except asyncpg.UndefinedTableError:
        return None
    return rows[0][0] if rows else None


def docs_and_other(db) -> sqlite3.Connection:
    """A file of two tables, `docs` with 1,000 rows and an empty `other`; the
    application's connection to it."""
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("PRAGMA journal_mode=WAL")
    app.executescript("CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT);"
                      "CREATE TABLE other (id INTEGER PRIMARY KEY, v TEXT);")
    app.executemany("INSERT INTO docs VALUES (?, ?)", ((i, f"doc {i}") for i in range(1000)))
    return app


@contextlib.asynccontextmanager
async def docs_locked(dsn):
    """Someone else's open transaction holding a lock on app.docs that CREATE INDEX waits for."""
    holder = await asyncpg.connect(dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("LOCK TABLE app.docs IN ROW EXCLUSIVE MODE")
        yield
        await tx.rollback()
    finally:
        await holder.close()


def not_created_line(log: str, table: str) -> str:
    return next(ln for ln in log.splitlines() if f"not created: {table}" in ln)


async def test_a_first_load_builds_the_indexes_once_every_row_is_in(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("PRAGMA journal_mode=WAL")
    app.executescript("""
        CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, placed_at TEXT, ref TEXT);
        CREATE INDEX orders_by_customer ON orders (customer, placed_at);
        CREATE UNIQUE INDEX orders_ref ON orders (lower(ref));
    """)
    app.execute("BEGIN")
    app.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)",
                    ((i, f"c{i % 97}", f"2026-11-{i % 28 + 1:02d}", f"R{i}") for i in range(1, ROWS + 1)))
    app.execute("COMMIT")
    cfg = make_config([{"name": "app", "path": str(db)}], sections=SLOW_LOAD)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        async def loading() -> bool:
            return await state(pg_dsn, "orders") == "loading"

        await eventually(loading, 120, "the load", d)
        assert await indexes(pg_dsn, "orders") == {"orders_pkey"}  # nothing but the key while rows go in
        schema = run_cli(cfg, "schema")
        assert schema.returncode == 0, schema.stdout + schema.stderr
        assert schema.stdout.count("during dual-write, once the table is loaded") == 2, schema.stdout
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=300)

        async def built() -> bool:
            return await indexes(pg_dsn, "orders") == {"orders_pkey", "orders_by_customer", "orders_ref"}

        await eventually(built, 60, "the indexes", d)
        app.execute("INSERT INTO orders VALUES (0, 'late', '2026-12-01', 'R0')")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    app.close()
    assert await compare_table(str(db), pg_dsn, "app", "orders") == []
    plan = await pg_rows(pg_dsn, "EXPLAIN SELECT * FROM app.orders WHERE customer = 'c5' AND placed_at = '2026-11-06'")
    assert "orders_by_customer" in " ".join(r[0] for r in plan)


async def test_indexes_stay_on_the_live_table_through_a_reload(tmp_path, make_config, pg_dsn):
    # A keyless table is keyed on its rowid; a VACUUM that renumbers rowids reloads it
    # into a table aside, the live rows in place until the new ones replace them.
    db = tmp_path / "app.db"
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("PRAGMA journal_mode=WAL")
    app.executescript("CREATE TABLE log (at TEXT, host TEXT, msg TEXT); CREATE INDEX log_by_host ON log (host, at);")
    app.execute("BEGIN")
    app.executemany("INSERT INTO log VALUES (?, ?, ?)",
                    ((f"2026-11-{i % 28 + 1:02d}", f"h{i % 13}", f"line {i}") for i in range(ROWS)))
    app.execute("COMMIT")
    cfg = make_config([{"name": "app", "path": str(db)}], sections=SLOW_LOAD)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=300)

        async def built() -> bool:
            return "log_by_host" in await indexes(pg_dsn, "log")

        await eventually(built, 60, "the index", d)
        app.execute("DELETE FROM log WHERE rowid % 3 = 0")
        app.execute("VACUUM")  # renumbers the rowids: a reload

        async def reloading() -> bool:
            return await state(pg_dsn, "log") == "loading"

        await eventually(reloading, 60, "the reload", d)
        assert "log_by_host" in await indexes(pg_dsn, "log")  # still there while the reload runs
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=300)
        assert "reloading the table aside" in d.log()
        assert "log_by_host" in await indexes(pg_dsn, "log")
        assert d.stop() == 0
    app.close()
    assert await compare_keyless(str(db), pg_dsn, "app", "log") == []


async def test_an_index_sqlite_changed_goes_before_a_reload_reshapes_the_table(tmp_path, make_config, pg_dsn):
    # The application rebuilds a table (new table, copy, drop, rename) with a column
    # retyped and its index changed: the old index (an expression Postgres can only
    # apply to text) must not stay on the live table while the reload retypes it.
    db = tmp_path / "app.db"
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("PRAGMA journal_mode=WAL")
    app.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT); CREATE INDEX t_a ON t (lower(a));")
    app.executemany("INSERT INTO t VALUES (?, ?)", ((i, str(i)) for i in range(1, 2001)))
    cfg = make_config([{"name": "app", "path": str(db)}], sections=SLOW_LOAD)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=120)

        async def built() -> bool:
            return "t_a" in await indexes(pg_dsn, "t")

        await eventually(built, 60, "the index", d)
        app.executescript("""
            BEGIN;
            CREATE TABLE t_new (id INTEGER PRIMARY KEY, a INTEGER);
            INSERT INTO t_new SELECT id, CAST(a AS INTEGER) FROM t;
            DROP TABLE t;
            ALTER TABLE t_new RENAME TO t;
            CREATE INDEX t_a ON t (a);
            COMMIT;
        """)
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=120)

        async def rebuilt() -> bool:
            rows = await pg_rows(pg_dsn, "SELECT indexdef FROM pg_indexes WHERE schemaname = 'app' "
                                         "AND indexname = 't_a'")
            return bool(rows) and "lower" not in rows[0][0] and "translate" not in rows[0][0]

        await eventually(rebuilt, 60, "the new index", d)
        assert d.stop() == 0
    app.close()
    assert await pg_rows(pg_dsn, "SELECT data_type FROM information_schema.columns WHERE table_schema = 'app' "
                                 "AND table_name = 't' AND column_name = 'a'") == [("bigint",)]
    assert await compare_table(str(db), pg_dsn, "app", "t") == []


async def test_an_index_build_over_the_statement_timeout_never_stops_replication(tmp_path, make_config, pg_dsn):
    # An index Postgres cannot build within [postgres] statement_timeout_seconds (here: a
    # session of someone else's holds a lock on the table that CREATE INDEX waits for) is
    # cancelled, reported, and tried again later; the source goes on streaming.
    db = tmp_path / "app.db"
    app = docs_and_other(db)
    cfg = make_config([{"name": "app", "path": str(db)}], sections={
        "postgres": {"statement_timeout_seconds": 1},
        "stream": {"schema_check_interval_seconds": 3600},
        "verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "one.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=120)
        assert d.stop() == 0
    app.execute("CREATE INDEX docs_body ON docs (body)")
    async with docs_locked(pg_dsn):
        with DaemonProcess(cfg, tmp_path / "two.log") as d:
            d.wait_log("schema parity: not created: docs", timeout=60)
            line = not_created_line(d.log(), "docs")
            assert line.endswith("timed out"), line
            for i in range(5):
                app.execute("INSERT INTO other VALUES (?, 'while the index could not be built')", (i,))
            app.execute("UPDATE docs SET body = 'changed' WHERE id = 7")
            await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=60)
            assert d.stop() == 0
    app.close()
    assert await pg_rows(pg_dsn, "SELECT count(*) FROM app.other") == [(5,)]
    assert await compare_table(str(db), pg_dsn, "app", "docs") == []


async def test_an_index_waiting_on_someone_elses_lock_gives_up_and_the_rest_are_built(tmp_path, make_config, pg_dsn):
    # A lock held on one table (a long transaction of someone else's) makes its index
    # give up after a few seconds (lock_timeout), not a whole statement timeout; the
    # other table's index is built in the same pass and replication goes on.
    db = tmp_path / "app.db"
    app = docs_and_other(db)
    cfg = make_config([{"name": "app", "path": str(db)}], sections={
        "stream": {"schema_check_interval_seconds": 3600}, "verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "one.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=120)
        assert d.stop() == 0
    app.execute("CREATE INDEX docs_body ON docs (body)")
    app.execute("CREATE INDEX other_v ON other (v)")
    async with docs_locked(pg_dsn):
        with DaemonProcess(cfg, tmp_path / "two.log") as d:
            d.wait_log("schema parity: not created: docs", timeout=60)
            line = not_created_line(d.log(), "docs")
            assert "lock timeout" in line, line
            assert "other_v" in await indexes(pg_dsn, "other")
            app.execute("INSERT INTO other VALUES (1, 'while docs is locked')")
            await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=60)
            assert d.stop() == 0
    app.close()
    assert await pg_rows(pg_dsn, "SELECT v FROM app.other") == [("while docs is locked",)]


async def test_a_pass_starts_no_build_past_its_budget_and_the_next_check_builds_the_rest(
        tmp_path, make_config, pg_dsn):
    # Twelve indexes added at once to a streaming table: one schema check builds for a
    # sixth of the statement timeout (here 0.5 s) and leaves the rest to the next check,
    # so that one step of the daemon never outlasts the watchdog.
    db = tmp_path / "app.db"
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("PRAGMA journal_mode=WAL")
    app.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT)")
    app.execute("BEGIN")
    app.executemany("INSERT INTO docs VALUES (?, ?)", ((i, f"doc {i * 7919 % 150_000}") for i in range(150_000)))
    app.execute("COMMIT")
    cfg = make_config([{"name": "app", "path": str(db)}], sections={
        "postgres": {"statement_timeout_seconds": 3}, "stream": {"schema_check_interval_seconds": 1},
        "verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=120)
        app.executescript("BEGIN;" + "".join(f"CREATE INDEX docs_body_{k} ON docs (body, id);" for k in range(12))
                          + "COMMIT;")  # one schema check sees all twelve
        d.wait_log("object(s) wait for the next schema check (this one spent its 0.5 s of builds)", timeout=60)

        async def all_built() -> bool:
            return {f"docs_body_{k}" for k in range(12)} <= await indexes(pg_dsn, "docs")

        await eventually(all_built, timeout=120, what="every index built over later checks")
        app.execute("INSERT INTO docs VALUES (150000, 'after the builds')")
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=60)
        assert d.stop() == 0
    app.close()


async def test_a_drop_blocked_by_someone_elses_lock_waits_minutes_before_it_is_tried_again(
        tmp_path, make_config, pg_dsn):
    # SQLite's indexes changed; the old ones in Postgres must go, but a long transaction
    # holds their table. The first drop gives up after its 5 s lock wait, and no object of
    # that table is tried at the next schema checks (each would stall the daemon's step
    # another 5 s and queue the table's queries again): none waits again for minutes.
    db = tmp_path / "app.db"
    app = docs_and_other(db)
    app.executescript("CREATE INDEX docs_body ON docs (body); CREATE INDEX docs_id_body ON docs (id, body);"
                      "CREATE INDEX docs_body_id ON docs (body, id);")
    cfg = make_config([{"name": "app", "path": str(db)}], sections={
        "stream": {"schema_check_interval_seconds": 1}, "verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=120)
        d.wait_log('created docs: index "docs_body_id"')
        async with docs_locked(pg_dsn):
            app.executescript("DROP INDEX docs_body; CREATE INDEX docs_body ON docs (body DESC);"
                              "DROP INDEX docs_id_body; CREATE INDEX docs_id_body ON docs (id DESC, body);"
                              "DROP INDEX docs_body_id; CREATE INDEX docs_body_id ON docs (body DESC, id);")
            d.wait_log("not created: dropping index docs_", timeout=60)
            waiting = 0
            for _ in range(15):  # 3 s: three checks (one a second), each would wait 5 s on the lock
                rows = await pg_rows(pg_dsn, "SELECT count(*) FROM pg_locks WHERE NOT granted AND "
                                             "relation = 'app.docs'::regclass")
                waiting += rows[0][0]
                await asyncio.sleep(0.2)
            assert waiting == 0
            app.execute("INSERT INTO other VALUES (1, 'replication goes on')")
            await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=60)
        assert d.stop() == 0
    app.close()
