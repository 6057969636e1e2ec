"""A table taken out of a cut-over source's configuration (`exclude`, `tables`) and
`systemctl reload syncd`: the way back (Postgres -> SQLite) goes on for the source's
other tables. The application writes Postgres now; SQLite must keep following it for
every table still configured, or a rollback has nothing current to go back to."""

from __future__ import annotations

import signal
import sqlite3

from tests.support.app import create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import eventually, pg_rows
from tests.support.way_back import backup_and_config, cut_over, wait_back


def sqlite_value(db, sql):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_excluding_a_table_after_the_cutover_keeps_the_way_back_going_for_the_others(
        tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=20, journal="wal")
    create_items(db, table="audit_log", rows=20)
    source = {"name": "app", "path": str(db)}
    cfg = backup_and_config(make_config, tmp_path, db, sources=[source])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        # The operator stops carrying the audit log and reloads syncd.
        backup_and_config(make_config, tmp_path, db, sources=[{**source, "exclude": ["audit_log"]}])
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("configuration reloaded")
        # The application goes on writing Postgres.
        await pg_rows(pg_dsn, "UPDATE app.items SET v = 'written in postgres' WHERE id = 1")

        async def arrived() -> bool:
            return sqlite_value(db, "SELECT v FROM items WHERE id = 1") == [("written in postgres",)]

        try:
            await eventually(arrived, 15, "the change to items to reach SQLite", daemon=d)
        except AssertionError:
            failing = [line for line in d.log().splitlines() if "failing" in line]
            raise AssertionError(f"the way back stopped for every table of the source: items in SQLite still "
                                 f"{sqlite_value(db, 'SELECT v FROM items WHERE id = 1')}; "
                                 f"{failing[-1] if failing else d.log()[-2000:]}") from None
        assert "unexpected error" not in d.log()
        assert "left out of the source's configuration" in d.log()

        # Meanwhile the application changes the table left out; configured again, it is
        # copied from Postgres, the change made while it was out included.
        await pg_rows(pg_dsn, "UPDATE app.audit_log SET v = 'while left out' WHERE id = 3")
        backup_and_config(make_config, tmp_path, db, sources=[source])
        d.proc.send_signal(signal.SIGHUP)

        async def copied() -> bool:
            return sqlite_value(db, "SELECT v FROM audit_log WHERE id = 3") == [("while left out",)]

        await eventually(copied, 30, "the table configured again to be copied from Postgres", daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert await compare_table(str(db), pg_dsn, "app", "audit_log") == []
        assert d.stop() == 0
