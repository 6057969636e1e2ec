"""Verification while the application writes and the daemon streams: rows in flight are
never reported as differences, real differences still are, and changes the daemon has
not applied (because it is not running) are reported as pending, saying so."""

from __future__ import annotations

import sqlite3

import pytest

from tests.support.app import Writer, create_items
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.sync import changelog_max, wait_caught_up
from tests.support.verifying import found, pg_execute, sync_and_stop, tables, verify_json, verify_section

ROWS = 20_000
WRITER_IDS = 1000  # the writer touches ids 1..2000 (key changes move rows up to 2*ids)
# Transactions per second the daemon keeps up with on a small shared machine; in
# rollback-journal mode readers and writers exclude each other, so far fewer.
RATE = {"wal": 400, "delete": 100}


def writing(db, writer: Writer, entries: int = 100) -> None:
    """Wait until the writer has committed `entries` changes: verify must overlap them."""
    start = changelog_max(db)
    wait_for(lambda: changelog_max(db) >= start + entries or writer.proc.poll() is not None, 30, "the writer")
    assert writer.proc.poll() is None, writer.proc.communicate()


@pytest.mark.parametrize("journal", ["wal", "delete"])
async def test_no_false_differences_while_the_application_writes(tmp_path, make_config, pg_dsn, journal):
    db = tmp_path / "app.db"
    create_items(db, rows=ROWS, journal=journal)
    cfg = make_config([{"name": "app", "path": str(db)}], extra=verify_section(chunk_rows=64))
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        writer = Writer(db, seconds=120, seed=11, ids=WRITER_IDS, rate=RATE[journal])
        writing(db, writer)
        for _ in range(2):
            rc, doc = verify_json(cfg, "--wait", "20")
            items = tables(doc)["items"]
            assert writer.proc.poll() is None, "the writer stopped before verify finished: nothing was tested"
            assert rc == 0, (items["differences"][:10], items["reason"], items["error"], doc["sources"][0]["error"])
            assert items["pending"] == 0 and items["rows_sqlite"] > 0
            # "equal" beside unequal totals says why they may differ
            assert items["rows_sqlite"] == items["rows_postgres"] or "rows in flight" in items["in_flight"], items
        writer.proc.terminate()
        assert writer.result()["transactions"] > 0
        assert d.stop() == 0


async def test_real_difference_found_while_the_application_writes(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=ROWS, journal="wal")
    cfg = make_config([{"name": "app", "path": str(db)}], extra=verify_section(chunk_rows=64))
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        writer = Writer(db, seconds=120, seed=12, ids=WRITER_IDS, rate=RATE["wal"])
        writing(db, writer)
        # Rows the writer never touches, changed in Postgres behind syncd's back.
        await pg_execute(pg_dsn, "UPDATE app.items SET n = -n WHERE id = 4100; DELETE FROM app.items WHERE id = 4200;"
                                 "INSERT INTO app.items (id, v) VALUES (99999, 'extra')")
        rc, doc = verify_json(cfg, "--wait", "20")
        assert writer.proc.poll() is None, "the writer stopped before verify finished: nothing was tested"
        writer.proc.terminate()
        writer.result()
        assert d.stop() == 0
    assert rc == 1, (doc["sources"][0]["error"], tables(doc)["items"]["error"])
    assert found(doc, "items") == {("different", (4100,), ("n",)), ("missing", (4200,), ()),
                                   ("extra", (99999,), ())}
    items = tables(doc)["items"]
    assert (items["missing"], items["extra"], items["different"], items["pending"]) == (1, 1, 1, 0)


async def test_pending_when_the_daemon_is_not_running(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=300)
    cfg = make_config([{"name": "app", "path": str(db)}], extra=verify_section())
    await sync_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE items SET v = 'changed while syncd was down' WHERE id IN (10, 20)")
    conn.execute("DELETE FROM items WHERE id = 30")
    conn.commit()
    await pg_execute(pg_dsn, "UPDATE app.items SET v = 'tampered' WHERE id = 40")  # a real difference

    rc, doc = verify_json(cfg, "--wait", "1")
    assert rc == 1
    items = tables(doc)["items"]
    assert {(d["kind"], tuple(d["key"])) for d in items["differences"]} == {
        ("pending", (10,)), ("pending", (20,)), ("pending", (30,)), ("different", (40,))}
    assert items["pending"] == 3 and items["different"] == 1
    assert items["reason"] == ("3 change(s) not yet applied; the checkpoint did not move in 1 s: "
                               "is the daemon running?")

    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        rc, doc = verify_json(cfg, "--wait", "5")
        assert d.stop() == 0
    assert rc == 1, (doc["sources"][0]["error"], tables(doc)["items"]["error"])
    assert found(doc, "items") == {("different", (40,), ("v",))}


async def test_keys_whose_case_changed_are_pending_however_many(tmp_path, make_config, pg_dsn):
    """A NOCASE key's spelling changed in SQLite and not applied yet: its old spelling is in
    Postgres, its new one in SQLite, both looked up, and both find the one SQLite row.
    Looked up in several batches (hundreds of keys), each row is still one row: pending,
    never "two SQLite rows that are one key in Postgres"."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE tags (name TEXT PRIMARY KEY COLLATE NOCASE, note TEXT)")
    conn.executemany("INSERT INTO tags VALUES (?, ?)", [(f"tag{i:04d}", f"note {i}") for i in range(1200)])
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(db)}], extra=verify_section())
    await sync_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    conn.execute("UPDATE tags SET name = upper(name) WHERE rowid <= 700")  # no daemon runs: not applied
    conn.commit()
    conn.close()

    rc, doc = verify_json(cfg, "--wait", "1")
    tags = tables(doc)["tags"]
    assert rc == 1 and tags["error"] is None
    assert [d for d in tags["differences"] if d["kind"] != "pending"] == []
    assert (tags["missing"], tags["extra"], tags["different"], tags["pending"]) == (0, 0, 0, 1400)
