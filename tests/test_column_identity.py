"""A column is not the one Postgres copied just because it has the same name: renamed
away and added again, two names swapped, dropped and added back, or dropped with
another renamed into its name, the shapes can look unchanged (or like a plain add or
drop). syncd compares the values both sides hold for the same rows after the
application changes the schema and reloads a table whose columns no longer agree, so
every value ends equal; a schema change that keeps the meaning reloads nothing."""

from __future__ import annotations

import datetime as dt
import sqlite3

import pytest

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.sync import eventually, pg_rows, pg_statements, table_states, wait_caught_up

N = 500
MIGRATIONS = {
    # Each migration in one transaction: a running daemon sees its end only (between two
    # transactions it may see the column dropped, which it keeps aside, rightly).
    "rename_readd": "BEGIN; ALTER TABLE rename_readd RENAME COLUMN c TO c_old; "
                    "ALTER TABLE rename_readd ADD COLUMN c TEXT NOT NULL DEFAULT 'fresh'; COMMIT;",
    "drop_readd": "BEGIN; ALTER TABLE drop_readd DROP COLUMN c; ALTER TABLE drop_readd ADD COLUMN c TEXT; COMMIT;",
    "swap": "BEGIN; ALTER TABLE swap RENAME COLUMN a TO tmp; ALTER TABLE swap RENAME COLUMN b TO a; "
            "ALTER TABLE swap RENAME COLUMN tmp TO b; COMMIT;",
    "drop_then_rename": "BEGIN; ALTER TABLE drop_then_rename DROP COLUMN b; "
                        "ALTER TABLE drop_then_rename RENAME COLUMN c TO b; COMMIT;",
}


def make_tables(db) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    for t in [*MIGRATIONS, "untouched", "added"]:
        conn.execute(f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, a TEXT, b TEXT, c TEXT)")
        conn.executemany(f"INSERT INTO {t} VALUES (?, ?, ?, ?)", [(i, f"a{i}", f"b{i}", f"c{i}") for i in range(N)])
    conn.close()


def migrate(db) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    for sql in MIGRATIONS.values():
        conn.executescript(sql)
    conn.execute("ALTER TABLE added ADD COLUMN d TEXT DEFAULT 'x'")  # a plain add: the meaning stays
    conn.execute("UPDATE untouched SET a = 'changed' WHERE id < 10")
    conn.close()


@pytest.mark.parametrize("daemon_down", [False, True], ids=["daemon_running", "daemon_down"])
async def test_columns_that_changed_meaning_are_reloaded(app_db, make_config, pg_dsn, tmp_path, daemon_down):
    make_tables(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "first.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        if not daemon_down:
            migrate(app_db)
            await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        log = d.log()
    if daemon_down:
        migrate(app_db)
        with DaemonProcess(cfg, tmp_path / "second.log") as d:
            await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
            assert d.stop() == 0
            log = d.log()
    for t in [*MIGRATIONS, "untouched", "added"]:
        assert await compare_table(str(app_db), pg_dsn, "app", t) == [], t
    reloaded = {line.split("table=", 1)[1].split()[0] for line in log.splitlines()
                if "event=table_reloading" in line and "no longer hold what Postgres holds" in line}
    assert reloaded == set(MIGRATIONS), log[-4000:]
    assert "table=untouched event=table_reloading" not in log and "table=added event=table_reloading" not in log


async def test_a_column_dropped_and_another_added_agreeing_on_the_first_rows_is_no_rename(app_db, make_config,
                                                                                           pg_dsn, tmp_path):
    """At the end of a table a rename and a drop followed by an add look alike, and the
    data decides; rows from all over the table decide, not the first ones by key nor a
    few neighbouring pages (here the old column and the new one agree on the first 60%
    of the rows only)."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, status TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?)",
                     [(i, f"v{i}", "active" if i < 12_000 else f"s{i}") for i in range(20_000)])
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        await pg_rows(pg_dsn, "ANALYZE app.t")  # the size estimate the sample is drawn by
        conn.executescript("ALTER TABLE t DROP COLUMN status; ALTER TABLE t ADD COLUMN state TEXT DEFAULT 'active';")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        assert 'column "status" was dropped in SQLite' in d.log()
    assert await compare_table(str(app_db), pg_dsn, "app", "t") == []


@pytest.mark.parametrize("every", [20, 2_000], ids=["every_20th_row", "one_row"])
@pytest.mark.parametrize("added", ["note", "remark"], ids=["same_name", "new_name"])
async def test_a_mostly_null_column_dropped_and_another_added_leaves_no_value_behind(
        app_db, make_config, pg_dsn, tmp_path, added, every):
    """An optional column, NULL in most rows, dropped and a column added in its place
    (the same name again, or a new one at the end of the table): the two agree on every
    NULL, which says nothing. Only rows where either holds a value are evidence, and where
    the rows sampled hold none (one value in 2,000 rows), a column SQLite holds no value
    in at all while Postgres holds one is a new column. The values the application erased
    do not stay in Postgres's column."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, note TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?)",
                     [(i, f"v{i}", "secret" if i % every == 0 else None) for i in range(1, 2_001)])
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        await pg_rows(pg_dsn, "ANALYZE app.t")  # the size estimate the sample is drawn by
        conn.executescript(f"BEGIN; ALTER TABLE t DROP COLUMN note; ALTER TABLE t ADD COLUMN {added} TEXT; COMMIT;")
        conn.execute("INSERT INTO t (id, v) VALUES (5000, 'after')")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        log = d.log()
    if added == "note":
        assert 'column(s) "note" no longer hold what Postgres holds' in log, log[-3000:]
    else:
        assert 'column "note" was dropped in SQLite' in log and "renamed" not in log, log[-3000:]
    assert await compare_table(str(app_db), pg_dsn, "app", "t") == []
    assert await pg_rows(pg_dsn, f"SELECT count(*) FROM app.t WHERE {added} IS NOT NULL") == [(0,)]


async def test_a_schema_change_elsewhere_in_the_file_reloads_no_table(app_db, make_config, pg_dsn, tmp_path):
    """The identity check compares values as Postgres holds them: a jsonb column (which
    Postgres gives back in its own spelling) and a held table (whose rows changed since
    the hold) are not taken for columns that changed meaning when another table is
    created."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, doc TEXT)")
    conn.executemany("INSERT INTO docs VALUES (?, ?)", [(i, f'{{"a":{i},"b":[1,2]}}') for i in range(1_000)])
    conn.execute("CREATE TABLE held (id INTEGER PRIMARY KEY, n REAL, name TEXT)")
    conn.executemany("INSERT INTO held VALUES (?, ?, ?)", [(i, i, f"n{i}") for i in range(1_000)])
    cfg = make_config([{"name": "app", "path": str(app_db), "columns": {"docs": {"doc": "jsonb"}}}],
                      sections={"stream": {"schema_check_interval_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.execute("INSERT INTO held VALUES (5000, 'not a number', 'x')")
        conn.execute("UPDATE held SET name = 'renamed' WHERE id < 500")
        await eventually(lambda: _state(pg_dsn, "held", "held"), 30, "held held", d)
        conn.execute("CREATE TABLE later (id INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO later VALUES (1)")
        await eventually(lambda: _state(pg_dsn, "later", "streaming"), 30, "the new table streaming", d)
        assert d.stop() == 0
        log = d.log()
    assert "no longer hold what Postgres holds" not in log, log[-3000:]
    assert "table=docs event=snapshot_started" not in log.split("table=later")[1]  # docs loaded once only


async def _state(dsn: str, table: str, state: str) -> bool:
    return (await table_states(dsn, "app")).get(table, ("",))[0] == state


async def test_columns_swapped_behind_a_bulk_update_are_reloaded(app_db, make_config, pg_dsn, tmp_path):
    """The rows changed since Postgres last saw them say nothing about a column's meaning
    and are left out of the comparison; when a bulk UPDATE queued before the migration
    covers every row the comparison looked at first, the rows it left alone must still
    be compared: otherwise they keep the swapped values in Postgres."""
    make_tables(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "first.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute(f"UPDATE swap SET c = 'changed' WHERE id < {N - 100}")  # queued: every row but the last 100
    conn.executescript(MIGRATIONS["swap"])
    conn.close()
    with DaemonProcess(cfg, tmp_path / "second.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
        log = d.log()
    problems = await compare_table(str(app_db), pg_dsn, "app", "swap")
    assert problems == [], f"{len(problems)} differences, e.g. {problems[:2]}"
    assert "table=swap event=table_reloading" in log and "no longer hold what Postgres holds" in log


async def test_a_column_dropped_and_added_again_is_told_from_rows_all_over_a_table_postgres_never_counted(
        tmp_path, make_config, pg_dsn):
    """A column dropped and added again under its name reads its new default in every row
    of SQLite; Postgres's old values agree with it on a run of rows only (the first by
    key), and disagree in the others. Postgres has not counted the rows of a table it has
    just been loaded into (no ANALYZE ran yet): the rows that tell are still read from
    all over the table, and it is loaded again. Before, only its first rows were read,
    they agreed, and 2000 rows kept the dropped column's values in Postgres."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT, status TEXT)")
    conn.executemany("INSERT INTO accounts VALUES (?, ?, ?)",
                     [(i, f"a{i}", "active" if i <= 1000 else "closed") for i in range(1, 3001)])
    cfg = make_config([{"name": "crm", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        conn.executescript("BEGIN; ALTER TABLE accounts DROP COLUMN status; "
                           "ALTER TABLE accounts ADD COLUMN status TEXT DEFAULT 'active'; COMMIT;")
        wait_for(lambda: "no longer hold what Postgres holds" in d.log(), 30, "the change told", d)
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "crm", "accounts") == []


async def test_a_column_dropped_and_added_again_is_told_from_every_row_of_a_small_table(tmp_path, make_config, pg_dsn):
    """A table of a few hundred rows, counted by Postgres: too few to sample, so its rows
    are read by key. A column dropped and added again agrees with Postgres's old values on
    the first 200 of them only; every row is read, and the table is loaded again. Before,
    the first 200 rows said nothing changed, and the other 500 kept the old values."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT, status TEXT)")
    conn.executemany("INSERT INTO accounts VALUES (?, ?, ?)",
                     [(i, f"a{i}", "active" if i <= 200 else "closed") for i in range(1, 701)])
    cfg = make_config([{"name": "crm", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        await pg_statements(pg_dsn, "ANALYZE crm.accounts")  # as autovacuum does in time
        conn.executescript("BEGIN; ALTER TABLE accounts DROP COLUMN status; "
                           "ALTER TABLE accounts ADD COLUMN status TEXT DEFAULT 'active'; COMMIT;")
        wait_for(lambda: "no longer hold what Postgres holds" in d.log(), 30, "the change told", d)
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "crm", "accounts") == []


async def test_a_column_dropped_and_added_again_in_a_table_keyed_on_a_date_is_told(tmp_path, make_config, pg_dsn):
    """The rows that tell a column's meaning changed are found in SQLite by Postgres's key,
    a date there (a `[sources.columns]` override): ISO days as text, and real epochs finer
    than Postgres's microsecond. Before, no row was found, the change passed for none, and
    every row kept the dropped column's values in Postgres."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("CREATE TABLE daily (day TEXT PRIMARY KEY, total INTEGER, status TEXT);"
                       "CREATE TABLE ticks (at REAL PRIMARY KEY, total INTEGER, status TEXT);")
    first = dt.date(2020, 1, 1)
    conn.executemany("INSERT INTO daily VALUES (?, ?, ?)", [((first + dt.timedelta(days=i)).isoformat(), i,
                                                             "open" if i % 2 else "closed") for i in range(300)])
    conn.executemany("INSERT INTO ticks VALUES (?, ?, ?)", [(1767225600 + i + 0.1234567, i,
                                                             "open" if i % 2 else "closed") for i in range(300)])
    cfg = make_config([{"name": "crm", "path": str(db),
                        "columns": {"daily": {"day": "date"}, "ticks": {"at": "timestamptz"}}}],
                      sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        conn.executescript("BEGIN; ALTER TABLE daily DROP COLUMN status; "
                           "ALTER TABLE daily ADD COLUMN status TEXT DEFAULT 'open'; "
                           "ALTER TABLE ticks DROP COLUMN status; "
                           "ALTER TABLE ticks ADD COLUMN status TEXT DEFAULT 'open'; COMMIT;")
        wait_for(lambda: d.log().count("no longer hold what Postgres holds") >= 2, 30, "the changes told", d)
        await wait_caught_up(db, pg_dsn, "crm", daemon=d)
        assert d.stop() == 0
    for table in ("daily", "ticks"):
        assert await pg_rows(pg_dsn, f"SELECT status, count(*) FROM crm.{table} GROUP BY status") == [("open", 300)]
