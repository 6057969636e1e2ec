"""INSERT/UPDATE OR REPLACE removes rows without firing delete triggers. syncd finds
those rows when it applies a batch (through every unique index SQLite holds, partial
ones and ones created after capture included) and through the rowid, while its
triggers name only the key and the rowid: the application's own DDL never trips on
them, and no application write turns into a table scan."""

from __future__ import annotations

import datetime as dt
import sqlite3
from decimal import Decimal
from urllib.parse import urlsplit

import asyncpg

from syncd import collisions
from syncd.config import SourceSettings
from syncd.sqlite.introspect import introspect
from syncd.types import PgType, converter_of
from tests.conftest import FAST_FAILOVER, write_config
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.proxy import FaultProxy
from tests.support.sync import eventually, pg_rows, table_states, wait_caught_up


def syncd_triggers(db) -> dict[str, str]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                                 "AND name LIKE '\\_syncd\\_%' ESCAPE '\\'"))
    finally:
        conn.close()


async def test_application_drops_an_indexed_column_under_capture(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT, name TEXT);
        CREATE UNIQUE INDEX u_email ON u(email);
        CREATE TABLE acct (code TEXT PRIMARY KEY, email TEXT, deleted_at TEXT);
        CREATE UNIQUE INDEX acct_email_live ON acct(email) WHERE deleted_at IS NULL;
        INSERT INTO u VALUES (1, 'a@x', 'A'), (2, 'b@x', 'B');
        INSERT INTO acct VALUES ('c1', 'a@x', NULL), ('c2', 'a@x', '2026-01-01');
    """)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        for sql in syncd_triggers(app_db).values():  # only keys and the rowid are named
            assert "email" not in sql and "deleted_at" not in sql and "name" not in sql.replace("_syncd", ""), sql
        # what an application migration does: succeeds exactly as without syncd
        conn.execute("DROP INDEX u_email")
        conn.execute("ALTER TABLE u DROP COLUMN email")
        conn.execute("DROP INDEX acct_email_live")
        conn.execute("ALTER TABLE acct DROP COLUMN deleted_at")
        conn.execute("INSERT INTO u VALUES (3, 'C')")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d, settled=("streaming", "paused"))
        assert d.stop() == 0
    states = await table_states(pg_dsn, "app")
    assert states["u"][0] == "streaming", states


async def test_replace_through_partial_and_late_unique_indexes(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE acct (id INTEGER PRIMARY KEY, email TEXT, deleted_at TEXT);
        CREATE UNIQUE INDEX acct_email_live ON acct(email) WHERE deleted_at IS NULL;
        CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT, v TEXT);
        CREATE TABLE n (id INTEGER PRIMARY KEY, code TEXT COLLATE NOCASE UNIQUE, v TEXT);
        INSERT INTO acct VALUES (1, 'a@x', NULL), (2, 'a@x', '2026-01-01'), (3, 'b@x', NULL);
        INSERT INTO t VALUES (1, 'a@x', 'one'), (2, 'b@x', 'two');
        INSERT INTO n VALUES (1, 'abc', 'lower');
    """)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        # replaces the live row 1; the deleted row 2 with the same email stays
        conn.execute("INSERT OR REPLACE INTO acct VALUES (10, 'a@x', NULL)")
        conn.execute("UPDATE OR REPLACE acct SET email = 'a@x' WHERE id = 3")  # replaces 10
        # a unique index created in the very transaction that replaces through it
        conn.execute("BEGIN")
        conn.execute("CREATE UNIQUE INDEX ux ON t(email)")
        conn.execute("INSERT OR REPLACE INTO t VALUES (3, 'a@x', 'three')")
        conn.execute("COMMIT")
        conn.execute("INSERT OR REPLACE INTO n VALUES (2, 'ABC', 'upper')")  # NOCASE: replaces 'abc'
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        for table in ("acct", "t", "n"):
            assert await compare_table(str(app_db), pg_dsn, "app", table) == [], table
        assert d.stop() == 0


async def test_a_row_replace_deleted_stays_deleted_when_its_replacement_changes_again_in_the_same_batch(
        app_db, make_config, pg_dsn, tmp_path):
    """A REPLACE through a UNIQUE column other than the key deletes the row holding the
    value; the row that replaced it then changes again (another value, its key) before
    syncd reads any of it: one batch. Postgres ends without the deleted row and with the
    survivor as it is now, from the stream alone (no verification runs)."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT UNIQUE, v TEXT);
        CREATE TABLE u (code TEXT PRIMARY KEY, email TEXT UNIQUE, v TEXT);
        INSERT INTO t VALUES (1, 'a@x', 'one'), (2, 'b@x', 'two'), (4, 'd@x', 'four');
        INSERT INTO u VALUES ('a', 'a@x', 'one'), ('b', 'b@x', 'two');
    """)
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    conn.executescript("""
        INSERT OR REPLACE INTO t VALUES (3, 'a@x', 'three');   -- deletes 1
        UPDATE t SET v = 'three, changed' WHERE id = 3;
        UPDATE OR REPLACE t SET email = 'b@x' WHERE id = 4;     -- deletes 2
        UPDATE t SET id = 5, v = 'four, moved' WHERE id = 4;
        INSERT OR REPLACE INTO u VALUES ('c', 'a@x', 'three');  -- deletes 'a'
        UPDATE u SET v = 'three, changed' WHERE code = 'c';
        UPDATE u SET code = 'd' WHERE code = 'c';
    """)
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    pg = await asyncpg.connect(pg_dsn)
    try:
        assert [tuple(r) for r in await pg.fetch("SELECT id, email, v FROM app.t ORDER BY id")] == \
            [(3, "a@x", "three, changed"), (5, "b@x", "four, moved")]
        assert [tuple(r) for r in await pg.fetch("SELECT code, email, v FROM app.u ORDER BY code")] == \
            [("b", "b@x", "two"), ("d", "a@x", "three, changed")]
    finally:
        await pg.close()
    for table in ("t", "u"):
        assert await compare_table(str(app_db), pg_dsn, "app", table) == [], table


async def test_a_row_replace_deleted_whose_replacement_took_another_unique_value_since_is_repaired(
        app_db, make_config, pg_dsn, tmp_path):
    """The replacing row's unique value changes again before syncd reads it: the stream
    cannot tell which row the REPLACE deleted (docs/operations.md, "Two kinds of write"),
    so that row stays in Postgres until the periodic verification deletes it, recording a
    consistency error: never kept for good, never silently."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT UNIQUE, v TEXT);
        INSERT INTO t VALUES (1, 'a@x', 'one'), (2, 'b@x', 'two');
    """)
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"verify": {"interval_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    conn.executescript("""
        INSERT OR REPLACE INTO t VALUES (3, 'a@x', 'three');  -- deletes 1
        UPDATE t SET email = 'c@x' WHERE id = 3;
    """)
    pg = await asyncpg.connect(pg_dsn)
    try:
        async def repaired() -> bool:
            return [r[0] for r in await pg.fetch("SELECT id FROM app.t ORDER BY id")] == [2, 3]

        async def recorded() -> bool:  # the check that repaired it marks its run once it has checked again
            return await pg.fetchval("SELECT count(*) FROM syncd.verify_runs WHERE source = 'app' AND "
                                     "table_name = 't' AND extra = 1 AND repaired = 1") >= 1

        with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
            await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
            await eventually(repaired, 60, "the periodic verification's repair", d)
            await eventually(recorded, 60, "the repair recorded on the run that found the row", d)
            assert d.stop() == 0
    finally:
        await pg.close()
    assert await compare_table(str(app_db), pg_dsn, "app", "t") == []


async def test_replace_through_a_unique_index_made_during_an_outage(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT, v TEXT);"
                       "INSERT INTO t VALUES (1, 'a@x', 'one'), (2, 'b@x', 'two');")
    parts = urlsplit(pg_dsn)
    proxy = FaultProxy(parts.hostname, parts.port or 5432)
    try:
        dsn = pg_dsn.replace(f":{parts.port}/", f":{proxy.port}/")
        cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(app_db)}],
                           sections=FAST_FAILOVER)
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
            proxy.refuse()
            conn.execute("UPDATE t SET v = 'two' WHERE id = 2")  # work, so the idle pipeline asks Postgres
            d.wait_log("Postgres unreachable")
            conn.execute("BEGIN")
            conn.execute("CREATE UNIQUE INDEX ux ON t(email)")
            conn.execute("INSERT OR REPLACE INTO t VALUES (3, 'a@x', 'three')")
            conn.execute("COMMIT")
            proxy.heal()
            await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
            assert await compare_table(str(app_db), pg_dsn, "app", "t") == []
            assert d.stop() == 0
    finally:
        proxy.close()


async def test_replace_through_a_unique_index_dropped_before_the_change_is_applied(app_db, make_config, pg_dsn,
                                                                                   tmp_path):
    """The application replaces through a unique index, then drops the index, all
    before syncd applies the change (here: while syncd is stopped). The row the
    REPLACE removed is still found, through the set syncd kept for changes captured
    before the drop, and the set is let go once they are applied."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE acct (code TEXT PRIMARY KEY, email TEXT, deleted_at TEXT);
        CREATE UNIQUE INDEX acct_email_live ON acct(email) WHERE deleted_at IS NULL;
        INSERT INTO acct VALUES ('c1', 'a@x', NULL), ('c2', 'a@x', '2026-01-01');
    """)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    conn.execute("INSERT OR REPLACE INTO acct VALUES ('c9', 'a@x', NULL)")  # c1 goes, c2 stays
    conn.execute("DROP INDEX acct_email_live")
    conn.execute("INSERT INTO acct VALUES ('c10', 'a@x', NULL)")  # no longer unique
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await compare_table(str(app_db), pg_dsn, "app", "acct") == []
        conn.execute("INSERT INTO acct VALUES ('c11', 'a@x', NULL)")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await compare_table(str(app_db), pg_dsn, "app", "acct") == []
        assert d.stop() == 0
    with DaemonProcess(cfg, tmp_path / "syncd3.log") as d:  # every change applied: the set is let go
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    pg = await asyncpg.connect(pg_dsn)
    try:
        left = await pg.fetchval("SELECT count(*) FROM pg_indexes WHERE tablename = 'acct' "
                                 "AND indexname LIKE '\\_syncd\\_uq\\_%'")
    finally:
        await pg.close()
    assert left == 0


async def test_replace_through_the_rowid_of_a_table_keyed_otherwise_is_repaired(app_db, make_config, pg_dsn,
                                                                              tmp_path):
    """No trigger can see the row an explicit-rowid REPLACE removes from a table keyed
    otherwise without naming the table in its body (which breaks the application's
    RENAME under legacy_alter_table), so verification finds it and repair fixes it."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("CREATE TABLE t_rowid (k TEXT PRIMARY KEY, v TEXT);"
                       "INSERT INTO t_rowid (rowid, k, v) VALUES (1, 'x', 'x'), (2, 'y', 'y'), (3, 'z', 'z');")
    # The daemon's own consistency check would find and repair them too, first on a busy machine.
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT OR REPLACE INTO t_rowid (rowid, k, v) VALUES (2, 'w', 'new')")  # y goes
        conn.execute("UPDATE OR REPLACE t_rowid SET rowid = 1 WHERE k = 'z'")  # x goes
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        found = run_cli(cfg, "verify")
        assert found.returncode == 1
        assert "extra in Postgres: key 'x'" in found.stdout and "extra in Postgres: key 'y'" in found.stdout
        assert run_cli(cfg, "verify", "--repair").returncode == 0
        assert await compare_table(str(app_db), pg_dsn, "app", "t_rowid") == []
        assert d.stop() == 0


def vm_steps(db, statements: list[tuple[str, tuple]]) -> int:
    """SQLite virtual-machine instructions the statements cost (triggers included):
    a deterministic measure, unlike time."""
    conn = sqlite3.connect(db, isolation_level=None)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 100
        return 0

    conn.set_progress_handler(count, 100)
    conn.execute("BEGIN")
    for sql, params in statements:
        conn.execute(sql, params)
    conn.execute("ROLLBACK")
    conn.close()
    return steps


async def test_a_lookup_index_not_built_within_the_statement_timeout_is_named_and_built_later(
        app_db, make_config, pg_dsn, tmp_path):
    # The application adds a UNIQUE index; syncd's lookup index for it is built at the next
    # schema check, which another session's open transaction on the table holds up past
    # the statement timeout: said as what it is (not as Postgres unreachable), and built
    # once the table is free, the stream resuming with every change.
    app = sqlite3.connect(app_db, isolation_level=None)
    app.execute("PRAGMA journal_mode=WAL")
    app.executescript("CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO tags VALUES (1, 'a');")
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={
        "postgres": {"statement_timeout_seconds": 2},
        "stream": {"schema_check_interval_seconds": 1, "retry_max_backoff_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        holder = await asyncpg.connect(pg_dsn)
        try:
            tx = holder.transaction()
            await tx.start()
            await holder.execute("LOCK TABLE app.tags IN ROW EXCLUSIVE MODE")
            app.execute("CREATE UNIQUE INDEX tags_name ON tags (name)")
            app.execute("INSERT OR REPLACE INTO tags VALUES (2, 'a')")  # removes row 1 through the new index
            d.wait_log('building syncd\'s lookup index for its UNIQUE (name) ran over', timeout=60)
            await tx.rollback()
        finally:
            await holder.close()
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await compare_table(str(app_db), pg_dsn, "app", "tags") == []
        assert "unreachable" not in d.log()
        assert d.stop() == 0


def test_application_writes_with_capture_never_scan_a_table(tmp_path, make_config):
    """Under partial and expression unique indexes, every statement syncd's triggers
    add is an index lookup or an append: the application's single-row writes cost a
    bounded number of extra instructions each, not one per row of the table."""
    rows = 50_000
    plain, captured = tmp_path / "plain.db", tmp_path / "captured.db"
    for db in (plain, captured):
        conn = sqlite3.connect(db, isolation_level=None)
        conn.executescript("""
            CREATE TABLE acct (code TEXT PRIMARY KEY, email TEXT, deleted_at TEXT);
            CREATE UNIQUE INDEX acct_email_live ON acct(email) WHERE deleted_at IS NULL;
            CREATE UNIQUE INDEX acct_lower ON acct(lower(email));
            CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT UNIQUE);
        """)
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO acct VALUES (?, ?, NULL)", [(f"c{i}", f"{i}@x") for i in range(rows)])
        conn.executemany("INSERT INTO u VALUES (?, ?)", [(i, f"{i}@x") for i in range(rows)])
        conn.execute("COMMIT")
        conn.close()
    r = run_cli(make_config([{"name": "app", "path": str(captured)}]), "init")
    assert r.returncode == 0, r.stdout + r.stderr
    writes = [("UPDATE acct SET deleted_at = 'now' WHERE code = ?", (f"c{i}",)) for i in range(0, 1000, 10)]
    writes += [("INSERT INTO acct VALUES (?, ?, NULL)", (f"n{i}", f"n{i}@x")) for i in range(100)]
    writes += [("INSERT OR REPLACE INTO acct VALUES (?, ?, NULL)", (f"r{i}", f"{i + 5000}@x")) for i in range(100)]
    writes += [("INSERT OR REPLACE INTO u VALUES (?, ?)", (rows + i, f"{i}@x")) for i in range(100)]
    writes += [("UPDATE u SET email = ? WHERE id = ?", (f"m{i}@x", i)) for i in range(100, 200)]
    extra = vm_steps(captured, writes) - vm_steps(plain, writes)
    assert extra < len(writes) * 400, f"{extra / len(writes):.0f} extra instructions per statement"


async def test_replace_through_a_unique_index_dropped_while_the_table_is_held(app_db, make_config, pg_dsn,
                                                                              tmp_path):
    """A REPLACE made while its table is held, through a unique index the application
    drops before the table resumes: the stream of the other tables moves on meanwhile,
    and the row the REPLACE removed still goes once the table catches up."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE acct (id INTEGER PRIMARY KEY, email TEXT, note TEXT);
        CREATE UNIQUE INDEX acct_email ON acct(email);
        CREATE TABLE other (id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO acct VALUES (1, 'a@x', 'first'), (2, 'b@x', 'second');
    """)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("UPDATE acct SET note = ? WHERE id = 2", ("NUL \x00 inside",))  # Postgres text cannot hold it

        async def held() -> bool:
            return (await table_states(pg_dsn, "app"))["acct"][0] == "held"

        await eventually(held, 30, "acct held", d)
        conn.execute("INSERT OR REPLACE INTO acct VALUES (3, 'a@x', 'replaces 1')")  # removes id 1, no trigger
        conn.execute("DROP INDEX acct_email")
        d.wait_log("dropped constraint acct_email")  # the drop followed
        conn.execute("INSERT INTO other VALUES (1, 'the stream moves on')")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d, settled=("streaming", "held"))
        assert d.stop() == 0
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:  # its full check finds the stream past the drop
        conn.execute("INSERT INTO other VALUES (2, 'and on')")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d, settled=("streaming", "held"))
        conn.execute("UPDATE acct SET note = 'fixed' WHERE id = 2")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert await compare_table(str(app_db), pg_dsn, "app", "acct") == []
        assert d.stop() == 0


async def test_replace_through_a_unique_column_of_a_table_keyed_on_a_date(app_db, make_config, pg_dsn, tmp_path):
    """Tables whose key is a date in Postgres (a `[sources.columns]` override) and text
    (ISO days, ISO timestamps with a T and a fraction), integer epochs or real epochs finer
    than Postgres's microsecond in SQLite: the rows a REPLACE removed through a unique
    column are found gone in SQLite and deleted in Postgres, the rows that replaced them
    arrive, and a row the REPLACE left in place stays."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE daily (day TEXT PRIMARY KEY, code TEXT UNIQUE, total INTEGER);
        CREATE TABLE stamps (at TEXT PRIMARY KEY, code TEXT UNIQUE, total INTEGER);
        CREATE TABLE epochs (at BIGINT PRIMARY KEY, code TEXT UNIQUE, total INTEGER);
        CREATE TABLE reals (at REAL PRIMARY KEY, code TEXT UNIQUE, total INTEGER);
    """)
    day0 = 1767225600  # 2026-01-01 00:00:00 UTC
    conn.executemany("INSERT INTO daily VALUES (?, ?, ?)", [(f"2026-01-{i:02d}", f"c{i}", i) for i in range(1, 11)])
    conn.executemany("INSERT INTO stamps VALUES (?, ?, ?)",
                     [(f"2026-01-01T10:00:0{i}.25", f"c{i}", i) for i in range(1, 10)])
    conn.executemany("INSERT INTO epochs VALUES (?, ?, ?)", [(day0 + i, f"c{i}", i) for i in range(1, 11)])
    # time.time() values: finer than a microsecond, which Postgres's timestamptz rounds to
    conn.executemany("INSERT INTO reals VALUES (?, ?, ?)",
                     [(day0 + i + 0.1234567, f"c{i}", i) for i in range(1, 11)])
    overrides = {"daily": {"day": "date"}, "stamps": {"at": "timestamp"}, "epochs": {"at": "timestamptz"},
                 "reals": {"at": "timestamptz"}}
    cfg = make_config([{"name": "app", "path": str(app_db), "columns": overrides}],
                      sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("BEGIN")
        conn.execute("INSERT OR REPLACE INTO daily VALUES ('2026-02-01', 'c3', 99)")  # removes 2026-01-03
        conn.execute("UPDATE OR REPLACE daily SET code = 'c5' WHERE day = '2026-01-07'")  # removes 2026-01-05
        conn.execute("INSERT OR REPLACE INTO stamps VALUES ('2026-02-01T00:00:00.5', 'c3', 99)")
        conn.execute("UPDATE OR REPLACE stamps SET code = 'c5' WHERE code = 'c7'")
        conn.execute("INSERT OR REPLACE INTO epochs VALUES (?, 'c3', 99)", (day0 + 100,))
        conn.execute("UPDATE OR REPLACE epochs SET code = 'c5' WHERE code = 'c7'")
        conn.execute("INSERT OR REPLACE INTO reals VALUES (?, 'c3', 99)", (day0 + 100.7654321,))
        conn.execute("UPDATE OR REPLACE reals SET code = 'c5' WHERE code = 'c7'")
        conn.execute("COMMIT")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        states = await table_states(pg_dsn, "app")
        assert d.stop() == 0
    for table in overrides:
        assert states[table][0] == "streaming", (table, states[table])
        want = conn.execute(f"SELECT code, total FROM {table} ORDER BY code").fetchall()
        assert await pg_rows(pg_dsn, f"SELECT code, total FROM app.{table} ORDER BY code") == want, table
        assert await pg_rows(pg_dsn, f"SELECT count(*) FROM app.{table}") == [(len(want),)], table


async def test_replace_through_a_unique_column_of_a_table_keyed_on_a_date_in_its_recorded_spelling(
        app_db, make_config, pg_dsn, tmp_path):
    """A date key schema parity typed (`typed_columns = "dual-write"`), spelled with a UTC
    offset other than UTC's: the rows a REPLACE removed are found gone by the key in that
    very spelling (the one the way back writes), and no row SQLite still holds is deleted."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute("CREATE TABLE visit (at DATETIME PRIMARY KEY, code TEXT UNIQUE, total INTEGER)")
    conn.executemany("INSERT INTO visit VALUES (?, ?, ?)",
                     [(f"2026-01-01T1{i}:00:00+02:00", f"c{i}", i) for i in range(1, 10)])
    cfg = make_config([{"name": "app", "path": str(app_db)}],
                      sections={"cutover": {"typed_columns": "dual-write"}, "verify": {"interval_seconds": 0},
                                "stream": {"schema_check_interval_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.wait_log('column "at" is timestamptz now')
        conn.execute("BEGIN")
        conn.execute("INSERT OR REPLACE INTO visit VALUES ('2026-02-01T00:00:00+02:00', 'c3', 99)")  # removes c3
        conn.execute("UPDATE OR REPLACE visit SET code = 'c5' WHERE code = 'c7'")  # removes c5
        conn.execute("COMMIT")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        state = (await table_states(pg_dsn, "app"))["visit"]
        assert d.stop() == 0
    assert state[0] == "streaming", state
    want = conn.execute("SELECT code, total FROM visit ORDER BY code").fetchall()
    assert await pg_rows(pg_dsn, "SELECT code, total FROM app.visit ORDER BY code") == want
    assert await pg_rows(pg_dsn, "SELECT count(*) FROM app.visit") == [(len(want),)]


def test_rows_read_again_by_a_date_key_are_found_in_the_spelling_sqlite_holds(tmp_path):
    """The read again behind a REPLACE (and behind a batch read again together) finds each
    row SQLite holds by its Postgres key, whatever the key's SQLite form: a recorded
    spelling with a UTC offset, an ISO text, a real epoch finer than a microsecond, a key
    whose SQLite form cannot be listed (found among every key of the table). Only a key
    no row has is called gone: one called gone is deleted in Postgres."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("""
        CREATE TABLE visit (at DATETIME PRIMARY KEY, v INTEGER);
        CREATE TABLE daily (day TEXT PRIMARY KEY, v INTEGER);
        CREATE TABLE reals (at REAL PRIMARY KEY, v INTEGER);
        CREATE TABLE measure (m NUMERIC PRIMARY KEY, v INTEGER);
        CREATE TABLE events (created DATETIME PRIMARY KEY, v INTEGER);
        CREATE TABLE shifts (day DATE, who TEXT, v INTEGER, PRIMARY KEY (day, who));
    """)
    conn.executemany("INSERT INTO visit VALUES (?, ?)", [(f"2026-01-01T1{i}:00:00+02:00", i) for i in range(5)])
    conn.executemany("INSERT INTO daily VALUES (?, ?)", [("2026-01-01", 1), ("2026-01-02T00:00:00Z", 2)])
    conn.executemany("INSERT INTO reals VALUES (?, ?)", [(1767225600 + i + 0.1234567, i) for i in range(5)])
    conn.executemany("INSERT INTO measure VALUES (?, ?)", [(float("inf"), 1), (2.5, 2)])
    # A DATETIME column (numeric affinity) holding epochs, integer and real, beside texts.
    conn.executemany("INSERT INTO events VALUES (?, ?)", [(1767225600, 1), (1767225601.5, 2),
                                                          ("2026-01-01 00:00:02", 3), ("2026-01-01T00:00:03.25Z", 4)])
    # A key of a day (an integer epoch at midnight among them) and a text.
    conn.executemany("INSERT INTO shifts VALUES (?, ?, ?)", [(1767225600, "a", 1), ("2026-01-02", "a", 2),
                                                             ("2026-01-02 00:00:00", "b", 3)])
    source = SourceSettings(name="app", path=str(db), columns={"daily": {"day": "date"},
                                                                "reals": {"at": "timestamptz"},
                                                                "events": {"created": "timestamp"},
                                                                "shifts": {"day": "date"}})
    schema = introspect(conn, source, retyped={"visit": {"at": (PgType.TIMESTAMPTZ, "%Y-%m-%dT%H:%M:%S+02:00")}})
    utc = dt.timezone.utc
    absent = {"visit": (dt.datetime(2026, 1, 1, 7, 0, tzinfo=utc),), "daily": (dt.date(2026, 1, 3),),
              "reals": (dt.datetime(2026, 1, 1, 0, 0, 1, 123458, tzinfo=utc),), "measure": (Decimal("3.5"),),
              "events": (dt.datetime(2026, 1, 1, 0, 0, 4),), "shifts": (dt.date(2026, 1, 2), "c")}
    for name, missing in absent.items():
        spec = schema.tables[name]
        convs = [converter_of(spec.column(k)) for k in spec.key]
        held = [tuple(c(v) for c, v in zip(convs, key))
                for key in conn.execute(f"SELECT {', '.join(spec.key)} FROM {name}")]
        assert missing not in held and len(set(held)) == len(held), name
        rows, gone = collisions.read_current(conn, spec, [*held, missing])
        assert sorted(r[spec.column_names.index("v")] for r in rows) == \
            sorted(v for (v,) in conn.execute(f"SELECT v FROM {name}")), name
        assert gone == [missing], name
