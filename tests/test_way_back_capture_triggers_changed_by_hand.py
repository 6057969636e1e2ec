"""After the cutover, the triggers that record Postgres's changes for the way back are
syncd's, but anyone with the rights can drop or disable one. The periodic full check
puts a missing trigger back and enables a disabled one, and since the changes made
meanwhile were never recorded, it copies the table again from Postgres (saying why):
nothing written in Postgres while capture was off stays missing from SQLite."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg
import pytest

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, wait_back

CAPTURE = ("_syncd_rcap_ins", "_syncd_rcap_upd", "_syncd_rcap_del", "_syncd_rcap_trunc")


def make_app(db, rows: int = 3) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO items VALUES (?, ?)", ((i, f"seed {i}") for i in range(1, rows + 1)))
    conn.commit()
    conn.close()


async def in_one_transaction(dsn: str, *statements: str) -> None:
    """The change by hand and the write together: no full check comes between them."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for sql in statements:
                await conn.execute(sql)
    finally:
        await conn.close()


def in_sqlite(db, item_id: int) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT id, v FROM items WHERE id = ?", (item_id,)).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("by_hand, expect", [
    (["DROP TRIGGER _syncd_rcap_upd ON app.items", "UPDATE app.items SET v = 'while uncaptured' WHERE id = 1"],
     (1, "while uncaptured")),
    (["ALTER TABLE app.items DISABLE TRIGGER _syncd_rcap_ins", "INSERT INTO app.items VALUES (50, 'while uncaptured')"],
     (50, "while uncaptured")),
    # Off and on again around a bulk load: at the next full check every trigger looks as it did.
    (["ALTER TABLE app.items DISABLE TRIGGER USER", "UPDATE app.items SET v = 'while uncaptured' WHERE id = 3",
      "ALTER TABLE app.items ENABLE TRIGGER USER"], (3, "while uncaptured")),
], ids=["dropped", "disabled", "off_and_on_again"])
async def test_a_change_made_while_a_capture_trigger_was_off_reaches_sqlite(
        tmp_path, make_config, pg_dsn, by_hand, expect):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db, stream={"schema_check_interval_seconds": 2})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        await in_one_transaction(pg_dsn, *by_hand)

        async def arrived() -> bool:
            return in_sqlite(db, expect[0]) == [expect]

        await eventually(arrived, 30, "the change made while capture was off", d)
        assert "event=capture_rearmed" in d.log()

        async def armed() -> bool:
            return await pg_rows(pg_dsn, "SELECT t.tgname, t.tgenabled::text FROM pg_trigger t WHERE t.tgrelid = "
                                         "'app.items'::regclass AND t.tgname LIKE '_syncd_rcap_%' ORDER BY 1") == \
                sorted((n, "O") for n in CAPTURE)

        await eventually(armed, 30, "every capture trigger there and enabled", d)
        await pg_rows(pg_dsn, "UPDATE app.items SET v = 'captured again' WHERE id = 2")

        async def followed() -> bool:
            return in_sqlite(db, 2) == [(2, "captured again")]

        await eventually(followed, 30, "a change made once capture was back", d)
        await wait_back(cfg, db, pg_dsn, daemon=d)


async def test_a_change_made_while_a_capture_trigger_was_off_during_a_copy_reaches_sqlite(
        tmp_path, make_config, pg_dsn):
    """The table's copy from Postgres is under way (a column added there) when a trigger
    is disabled and a row already copied is changed: the copy starts over once the
    trigger is back (or, had the copy ended first, the table is copied again)."""
    db = tmp_path / "app.db"
    make_app(db, rows=150_000)  # copied again 5,000 rows a step, each step followed by 0.1 s at least: seconds
    cfg = backup_and_config(make_config, tmp_path, db, stream={"schema_check_interval_seconds": 2})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        await pg_rows(pg_dsn, "ALTER TABLE app.items ADD COLUMN extra text")

        async def copying() -> bool:
            return "event=reload_started" in d.log()

        await eventually(copying, 60, "the table's copy", d)
        await asyncio.sleep(0.3)  # past its first rows
        await in_one_transaction(pg_dsn, "ALTER TABLE app.items DISABLE TRIGGER _syncd_rcap_upd",
                                 "UPDATE app.items SET v = 'while uncaptured' WHERE id = 1")

        async def arrived() -> bool:
            return in_sqlite(db, 1) == [(1, "while uncaptured")]

        await eventually(arrived, 60, "the change made while capture was off", d)
        assert "event=capture_rearmed" in d.log()
        await wait_back(cfg, db, pg_dsn, daemon=d)


async def test_triggers_turned_off_and_on_again_before_the_way_back_first_looks(tmp_path, make_config, pg_dsn):
    """The cutover notes the triggers it makes: turned off and on again before any daemon
    follows the source back (none runs at the cutover), they differ from that note."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db, stream={"schema_check_interval_seconds": 2})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert run_cli(cfg, "verify").returncode == 0
    r = run_cli(cfg, "cutover")
    assert r.returncode == 0, r.stdout + r.stderr
    await in_one_transaction(pg_dsn, "ALTER TABLE app.items DISABLE TRIGGER USER",
                             "UPDATE app.items SET v = 'while uncaptured' WHERE id = 2",
                             "ALTER TABLE app.items ENABLE TRIGGER USER")
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        async def arrived() -> bool:
            return in_sqlite(db, 2) == [(2, "while uncaptured")]

        await eventually(arrived, 30, "the change made while capture was off", d)
        assert "event=capture_rearmed" in d.log()
        await wait_back(cfg, db, pg_dsn, daemon=d)
