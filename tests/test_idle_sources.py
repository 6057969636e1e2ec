"""Idle sources: a file with nothing to do gives its SQLite connection back, and still
gets its periodic full check on time: a table dropped in Postgres behind syncd's back
comes back while the file stays untouched. (Its idle CPU is measured by bench/fleet.py.)

Cut over, an idle source costs Postgres almost nothing of its own (NOTIFY wakes it for
each change; the daemon looks for every source's missed changes in one query), and a
change whose NOTIFY never reached the daemon still reaches SQLite.
(bench/way_back_idle.py measures a fleet's idle cost.)"""

from __future__ import annotations

import asyncio
import sqlite3
import time

import asyncpg

from tests.support.daemon import DaemonProcess
from tests.support.sync import eventually, pg_rows
from tests.support.way_back import back_up, backup_and_config, cut_over, orders_app, typeof, wait_back
from tests.test_fleet import caught_up, make_tenant
from tests.test_reverse_schema import make_app

FILES = 2
CHECK_SECONDS = 3.0  # [stream] schema_check_interval_seconds: above the fleet's 1 s a source (2 s)


async def test_a_source_closed_for_idleness_still_gets_its_full_check(tmp_path, make_config, pg_dsn):
    d = tmp_path / "tenants"
    d.mkdir()
    paths = [d / f"{i:02d}.db" for i in range(FILES)]
    for p in paths:
        make_tenant(p)
    cfg = make_config([{"name": "tenant_{stem}", "path": str(d / "*.db")}],
                      sections={"stream": {"schema_check_interval_seconds": CHECK_SECONDS},
                                "sqlite": {"idle_close_seconds": 1}})
    pg = await asyncpg.connect(pg_dsn)
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as daemon:
            deadline = time.monotonic() + 120
            while not await caught_up(pg, paths):
                assert daemon.alive() and time.monotonic() < deadline, "fleet did not catch up"
                await asyncio.sleep(0.5)
            # Every source closes its file for idleness, then its full check falls due.
            await asyncio.sleep(CHECK_SECONDS + 2)
            await pg.execute('DROP TABLE "tenant_01".items')
            deadline = time.monotonic() + 4 * CHECK_SECONDS
            while True:
                try:
                    if await pg.fetchval('SELECT count(*) FROM "tenant_01".items') == 3:
                        break
                except asyncpg.UndefinedTableError:
                    pass
                assert time.monotonic() < deadline, "the full check did not run while the file was closed"
                await asyncio.sleep(0.5)
            assert daemon.stop() == 0
    finally:
        await pg.close()


CUT_OVER = 3
IDLE_WINDOW = 20.0


async def transactions(pg: asyncpg.Connection) -> int:
    """Transactions Postgres has counted in the test's database (syncd is its only other client)."""
    return await pg.fetchval("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                             "WHERE datname = current_database()")


async def in_sqlite(db, item: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            if conn.execute("SELECT count(*) FROM orders WHERE item = ?", (item,)).fetchone()[0]:
                return True
        finally:
            conn.close()
        await asyncio.sleep(0.05)
    return False


async def test_idle_cut_over_sources_cost_postgres_a_few_transactions(tmp_path, make_config, pg_dsn):
    """Each poll of a cut-over source used to run a whole cycle of the way back (a pooled
    connection, its direction, a read of its changelog, its lag): several transactions a
    second for each idle source."""
    dbs = [tmp_path / f"app{i}.db" for i in range(CUT_OVER)]
    for db in dbs:
        orders_app(db)
        back_up(db, tmp_path / "backups")
    # The default rechecks (tests' are every 0.5 s); full checks (one source a second at
    # most, each a reconcile) kept out of the window.
    # Each file's backup told by its name: the files share their tables, and a backup taken
    # before capture carries nothing else that tells whose it is.
    cfg = backup_and_config(make_config, tmp_path, dbs[0], [{"name": db.stem, "path": str(db)} for db in dbs],
                            stream={"schema_check_interval_seconds": 3600, "held_table_retry_seconds": 10},
                            cutover={"backup_glob": str(tmp_path / "backups" / "{source}-*.db")})
    pg = await asyncpg.connect(pg_dsn)
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            for db in dbs:
                await cut_over(cfg, db, pg_dsn, db.stem, daemon=d)
            for db in dbs:
                await wait_back(cfg, db, pg_dsn, db.stem, daemon=d)
            # The switches' own work done, and counted: Postgres counts a backend's transactions
            # up to 10 s late (PGSTAT_IDLE_INTERVAL) after a burst like the switches'.
            await asyncio.sleep(12)
            before = await transactions(pg)
            await asyncio.sleep(IDLE_WINDOW)
            made = await transactions(pg) - before - 1
            # The daemon's looks at every source at once: its watch every 2 s (10 in the
            # window, each a transaction and the pooled connection's reset), its rechecks
            # every 10 s, and room to spare; a cycle of each source at each poll made
            # more than a thousand.
            assert made <= 100, made
            # Idle, each still follows Postgres at once.
            for db in dbs:
                await pg.execute(f'INSERT INTO "{db.stem}".orders (item) VALUES ($1)', f"after idling {db.stem}")
            for db in dbs:
                assert await in_sqlite(db, f"after idling {db.stem}", 10), db
            assert d.stop() == 0
    finally:
        await pg.close()


async def test_a_change_whose_notify_never_came_still_reaches_sqlite(tmp_path, make_config, pg_dsn):
    """The change recorded in Postgres's changelog as the capture trigger records it, but
    no NOTIFY sent (the trigger did not run: session_replication_role): the daemon's
    watch finds it waiting, well before the source's own safety-net cycle."""
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    pg = await asyncpg.connect(pg_dsn)
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await cut_over(cfg, db, pg_dsn, daemon=d)
            await wait_back(cfg, db, pg_dsn, daemon=d)
            changelog = await pg.fetchval("SELECT quote_ident(relname) FROM pg_class c JOIN pg_namespace n "
                                          "ON n.oid = c.relnamespace WHERE n.nspname = 'syncd' "
                                          "AND c.relname LIKE 'rlog\\_%' AND c.relkind = 'r'")
            # What the trigger writes for this row, learnt in a transaction rolled back.
            tr = pg.transaction()
            await tr.start()
            await pg.execute("INSERT INTO app.orders (id, item) VALUES (1000, 'no notify')")
            entries = await pg.fetch(f"SELECT tid, op, key FROM syncd.{changelog} WHERE txid = txid_current()")
            await tr.rollback()
            assert len(entries) == 1, entries
            await asyncio.sleep(3)  # idle again
            async with pg.transaction():
                await pg.execute("SET LOCAL session_replication_role = replica")  # no trigger, no NOTIFY
                await pg.execute("INSERT INTO app.orders (id, item) VALUES (1000, 'no notify')")
                await pg.executemany(f"INSERT INTO syncd.{changelog} (tid, op, key) VALUES ($1, $2, $3)",
                                     [tuple(e) for e in entries])
            assert await in_sqlite(db, "no notify", 20), d.log()[-3000:]
            # And a change made while the session that listens is gone (killed).
            listener = await pg.fetchval("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                         "AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'")
            assert listener is not None
            await pg.execute("SELECT pg_terminate_backend($1)", listener)
            await pg.execute("INSERT INTO app.orders (id, item) VALUES (1001, 'listener gone')")
            assert await in_sqlite(db, "listener gone", 20), d.log()[-3000:]
            assert d.stop() == 0
    finally:
        await pg.close()


async def test_a_rewrite_whose_recheck_met_the_files_lock_still_reaches_sqlite(tmp_path, make_config, pg_dsn):
    """A table rewritten in Postgres (ALTER ... TYPE ... USING) while the application holds
    the SQLite file's write lock: the recheck that would copy it again meets the lock, and
    is made again once the lock is gone, though nothing new shows in Postgres since."""
    db = tmp_path / "app.db"
    make_app(db)
    # Full checks out of the window, as a large fleet has them (one source a second).
    cfg = backup_and_config(make_config, tmp_path, db, stream={"schema_check_interval_seconds": 3600})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        await asyncio.sleep(5)  # idle; the watch's first recheck done
        app = sqlite3.connect(db, isolation_level=None, timeout=0)
        app.execute("BEGIN IMMEDIATE")
        try:
            await pg_rows(pg_dsn, "ALTER TABLE app.contacts ALTER COLUMN email TYPE text USING upper(email)")
            await asyncio.sleep(6)  # less than the daemon waits before it calls the file locked
        finally:
            app.execute("ROLLBACK")
            app.close()

        async def upper() -> bool:
            return typeof(db, "SELECT email FROM contacts WHERE id = 10") == [("C10@X",)]

        await eventually(upper, 40, "the rewritten values in SQLite", d)
        assert d.stop() == 0



async def test_a_source_whose_way_back_ended_idles_as_a_cut_over_one(tmp_path, make_config, pg_dsn):
    """The way back ends as its rollback window ([cutover] keep_sqlite_days) does, not up
    to a minute later (its pipeline ran a whole cycle at every poll meanwhile); then the
    idle source costs Postgres about what a cut-over one does (some 30 transactions in
    20 s here; a recheck left due made its pipeline run a whole cycle at every fleet poll,
    some 130)."""
    db = tmp_path / "app.db"
    make_app(db)
    window = 20.0  # seconds; the daemon follows the source before it ends
    cfg = backup_and_config(make_config, tmp_path, db, cutover={"keep_sqlite_days": window / 86400},
                            stream={"schema_check_interval_seconds": 3600, "held_table_retry_seconds": 10})
    pg = await asyncpg.connect(pg_dsn)
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await cut_over(cfg, db, pg_dsn, daemon=d)
            d.wait_log("the way back ends", timeout=window + 25)
            await asyncio.sleep(15)  # the retirement's own work done, a watch recheck made
            made = []
            # A second window where the first still held the retirement's work (a loaded machine):
            # the idle cost is what a source keeps paying, not what it paid once.
            while not made or made[-1] > 80 and len(made) < 2:
                before = await transactions(pg)
                await asyncio.sleep(20)
                made.append(await transactions(pg) - before - 1)
            assert d.stop() == 0
        assert made[-1] <= 80, made
    finally:
        await pg.close()


async def test_a_source_reached_through_a_symlink_sees_commits_while_closed_for_idleness(tmp_path, make_config,
                                                                                      pg_dsn):
    """A source's path that is a symlink (a release directory, a mounted volume): SQLite
    keeps the -wal file beside the file the link leads to, so a commit the application
    makes while syncd's connection is closed for idleness moves that file, not one
    beside the link. syncd looks there and streams the commit at once, instead of
    minutes later with a lag of 0 said meanwhile."""
    real = tmp_path / "releases" / "42"
    real.mkdir(parents=True)
    db = real / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO items VALUES (1, 'before')")
    conn.close()
    link = tmp_path / "current.db"
    link.symlink_to(db)
    cfg = make_config([{"name": "app", "path": str(link)}], sections={"sqlite": {"idle_close_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as daemon:
        await eventually(lambda: _count(pg_dsn), 60, "the first load", daemon)
        await asyncio.sleep(6)  # idle: syncd's connection is given back (its close checkpoints the WAL)
        app = sqlite3.connect(db, isolation_level=None)  # the application keeps its connection open
        try:
            app.execute("SELECT count(*) FROM items").fetchone()  # opens the -wal file beside app.db
            await asyncio.sleep(3)  # syncd looks, finds nothing new and gives its connection back again
            app.execute("INSERT INTO items VALUES (2, 'while idle')")
            await eventually(lambda: _count(pg_dsn, 2), 20, "the commit made while syncd was idle", daemon)
        finally:
            app.close()
        assert daemon.stop() == 0


async def test_a_commit_that_wakes_a_source_closed_for_idleness_is_streamed(tmp_path, make_config, pg_dsn):
    """An application that opens the file and commits at once, while syncd's connection is
    closed for idleness: the -wal file it opens wakes syncd, which looks a moment before
    the commit lands. syncd keeps its connection open for a while from there, so the
    commit is streamed at once, not left unseen for minutes (the files looked unchanged
    since syncd closed again) with a lag of 0 said meanwhile."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO items VALUES (1, 'before')")
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"sqlite": {"idle_close_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as daemon:
        await eventually(lambda: _count(pg_dsn), 60, "the first load", daemon)
        apps = []
        try:
            for n, pause in enumerate((3.0, 2.6, 3.4, 3.0), start=2):
                await asyncio.sleep(pause)  # idle: syncd's connection is given back
                apps.append(sqlite3.connect(db, isolation_level=None))  # each kept open, as applications do
                apps[-1].execute("INSERT INTO items VALUES (?, 'while idle')", (n,))
                await eventually(lambda: _count(pg_dsn, n), 20, f"commit {n - 1} made while syncd was idle", daemon)
        finally:
            for app in apps:
                app.close()
        assert daemon.stop() == 0

async def _count(dsn: str, want: int = 1) -> bool:
    try:
        return (await pg_rows(dsn, "SELECT count(*) FROM app.items"))[0][0] == want
    except asyncpg.UndefinedTableError:
        return False
