"""After a cutover, more rows differ than `syncd verify` lists by key (SQLite restored from
an old copy, a batch job run on the frozen file): `syncd verify --repair` has the way back
copy the table again from Postgres, instead of pointing at `syncd resync`, which a cut-over
source refuses (pointing back at `syncd verify --repair`)."""

from __future__ import annotations

import sqlite3
import subprocess

import asyncpg

from tests.support.compare import compare_all
from tests.support.daemon import DaemonProcess, run_cli, syncd_cmd
from tests.support.sync import eventually
from tests.support.way_back import backup_and_config, cut_over, cut_over_and_stop, tamper_sqlite, typeof, wait_back
from tests.support.verifying import verify

ROWS = 3000


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)")
    conn.executemany("INSERT INTO orders (item) VALUES (?)", [(f"item {i}",) for i in range(ROWS)])
    conn.commit()
    conn.close()


def drift(db) -> None:
    """More differences than verify lists by key (1,000 a table), behind syncd's back."""
    tamper_sqlite(db, "DELETE FROM orders WHERE id > 1000")
    tamper_sqlite(db, "UPDATE orders SET item = 'stale' WHERE id <= 10")
    tamper_sqlite(db, "INSERT INTO orders VALUES (100000, 'only in SQLite')")


async def repaired(cfg, db, pg_dsn) -> None:
    out = verify(cfg, "--wait", "2")
    assert out.returncode == 1 and "... and " in out.stdout, out.stdout
    out = verify(cfg, "--wait", "10", "--repair")
    assert "syncd resync" not in out.stdout, out.stdout
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'app: "orders" equal (3000 rows in SQLite, 3000 in Postgres' in out.stdout, out.stdout
    assert typeof(db, "SELECT count(*), count(*) FILTER (WHERE item = 'stale') FROM orders") == [(ROWS, 0)]
    assert await compare_all(str(db), pg_dsn, "app", ["orders"]) == []
    assert verify(cfg, "--wait", "2").returncode == 0


async def test_many_differences_after_cutover_are_copied_again_by_the_running_daemon(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        drift(db)
        await repaired(cfg, db, pg_dsn)
        assert d.alive()
    copies = [line for line in d.log().splitlines() if "table=orders event=reload_started" in line]
    assert copies and all("asked for by `syncd verify --repair`: copied again" in c for c in copies), copies


async def test_many_differences_after_cutover_are_copied_again_with_no_daemon_running(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    await cut_over_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    drift(db)
    await repaired(cfg, db, pg_dsn)
    # Copied again and checked equal: all `syncd status` has to say is that no daemon runs.
    st = run_cli(cfg, "status")
    assert st.returncode == 1, st.stdout + st.stderr
    assert "WARNING: app: daemon not running" in st.stdout and "1 problem(s)" in st.stdout, st.stdout


async def test_the_daemons_periodic_check_copies_such_a_table_again_and_counts_every_row(tmp_path, make_config,
                                                                                         pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db, verify={"interval_seconds": 1})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        tamper_sqlite(db, "DELETE FROM orders WHERE id > 1000")

        async def repaired_by_the_daemon() -> bool:
            return 'consistency check repaired 2000 row(s) of "orders"' in d.log()

        await eventually(repaired_by_the_daemon, 60, "the periodic check's repair", daemon=d)
        line = next(x for x in d.log().splitlines() if "consistency check repaired" in x)
        listed = ('repaired 2000 row(s) of "orders" (1000 missing in SQLite, 1000 more not listed by key): '
                  "keys 1001, 1002") in line and "and 1990 more; now equal" in line
        # A check whose range scan read the table before the DELETE and its totals after
        # it finds no key, only the 2,000-row gap: it copies the table again all the same.
        by_totals = line.endswith('repaired 2000 row(s) of "orders" (2000 not listed by key); now equal')
        assert listed or by_totals, line
        assert typeof(db, "SELECT count(*) FROM orders") == [(ROWS,)]
        assert await compare_all(str(db), pg_dsn, "app", ["orders"]) == []


def test_a_copy_again_with_no_row_listed_by_key_is_logged_without_an_empty_key_list(caplog):
    """Only the row totals showed the difference: the line counts the rows copied again
    and lists no keys, instead of 'keys  and 5 more'."""
    from syncd.daemon import _log_repairs
    from syncd.verify.result import MISSING, Difference, SourceVerifyResult, TableVerifyResult

    unlisted = TableVerifyResult("app", "orders", "streaming", compared=True, repaired=5)
    listed = TableVerifyResult("app", "items", "streaming", compared=True, repaired=2,
                               replayed=[Difference(MISSING, (1,)), Difference(MISSING, (2,))])
    with caplog.at_level("WARNING", logger="syncd"):
        _log_repairs("app", SourceVerifyResult("app", tables=[unlisted, listed], direction="to_sqlite"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == 'consistency check repaired 5 row(s) of "orders" (5 not listed by key); now equal', lines
    assert lines[1].startswith('consistency check repaired 2 row(s) of "items" (2 only in SQLite): keys 1, 2; '), \
        lines


async def test_a_copy_again_whose_process_was_killed_is_not_said_to_be_in_progress(tmp_path, make_config, pg_dsn):
    """`syncd verify --repair` killed while its way back copied the table again (no daemon
    running the source): verify then said "its initial snapshot is in progress" of a copy
    nothing was running, and a repair run again left the table alone on that ground; it
    now says the copy stopped, and a repair run again takes the copy up and finishes it."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)")
    conn.executemany("INSERT INTO orders (item) VALUES (?)", [(f"item {i} " + "x" * 100,) for i in range(100_000)])
    conn.commit()
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    await cut_over_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    tamper_sqlite(db, "DELETE FROM orders WHERE id > 1000")
    repair = subprocess.Popen(syncd_cmd(cfg, "verify", "--repair", "--wait", "60"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, cwd=str(cfg.parent))
    try:
        pg = await asyncpg.connect(pg_dsn)
        try:
            async def copying() -> bool:
                state = await pg.fetchval("SELECT state FROM syncd.tables WHERE table_name = 'orders'")
                return state == "loading" and typeof(db, "SELECT count(*) FROM orders")[0][0] > 6000

            await eventually(copying, 60, "the way back's copy under way")
        finally:
            await pg.close()
        repair.kill()
    finally:
        repair.kill()
        repair.wait(10)
    assert typeof(db, "SELECT count(*) FROM orders")[0][0] < 100_000, "the copy was not cut short"
    out = verify(cfg, "--wait", "2")
    assert out.returncode == 1, out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if '"orders" not comparable (loading)' in x)
    assert "in progress" not in line, line
    assert "no daemon runs the source" in line and "copies it again from its first row" in line, line
    # Run again, the repair takes the copy up again and sees it through.
    out = verify(cfg, "--wait", "60", "--repair")
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'app: "orders" equal (100000 rows in SQLite, 100000 in Postgres' in out.stdout, out.stdout
    assert "taken up again and finished by the way back" in out.stdout, out.stdout
    assert await compare_all(str(db), pg_dsn, "app", ["orders"]) == []
    assert verify(cfg, "--wait", "2").returncode == 0
