"""The checklist's row-count match while the application writes: Postgres and SQLite
are counted one after the other, so a count taken while changes are on their way
differs by at most those changes. The check allows exactly them, and no more: a row
missing in Postgres still fails it."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config

TRIES = 6


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=delete")  # rollback journal: every read holds the writers back
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO events VALUES (?, ?)", [(i, f"e{i}") for i in range(1, 1001)])
    conn.commit()
    conn.close()


def migrated(cfg) -> dict:
    r = run_cli(cfg, "report", "--format", "json")
    doc = json.loads(r.stdout)
    return next(i for i in doc["checklist"] if i["key"] == "migrated")


def writer(db, stop: threading.Event) -> None:
    conn = sqlite3.connect(db, isolation_level=None, timeout=5)
    i = 10_000
    while not stop.is_set():
        i += 1
        conn.execute("INSERT INTO events VALUES (?, 'written meanwhile')", (i,))
        if i % 3 == 0:
            conn.execute("DELETE FROM events WHERE id = ?", (i - 1,))
        time.sleep(0.01)
    conn.close()


async def test_counts_taken_while_the_application_writes_match(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        v = run_cli(cfg, "verify")
        assert v.returncode == 0, v.stdout + v.stderr
        stop = threading.Event()
        t = threading.Thread(target=writer, args=(db, stop))
        t.start()
        try:
            items = [migrated(cfg) for _ in range(TRIES)]
        finally:
            stop.set()
            t.join()
        counted = [i for i in items if any("rows" in line for line in i["problems"] + i["evidence"])]
        assert len(counted) == TRIES, items
        assert all(i["ok"] for i in items), [i["problems"] for i in items]
        on_the_way = [e for i in items for e in i["evidence"] if "on their way" in e]

        # A row Postgres lost is no change on its way: the item fails.
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        await pg_rows(pg_dsn, "DELETE FROM app.events WHERE id = 5")
        item = migrated(cfg)
        assert not item["ok"] and any("rows in SQLite" in p for p in item["problems"]), item
        assert d.stop() == 0
    # With the daemon stopped, changes stay on their way: a row updated over and over moves
    # no count, so it excuses no missing row...
    app = sqlite3.connect(db, isolation_level=None)
    for n in range(50):
        app.execute("UPDATE events SET v = ? WHERE id = 7", (f"hot {n}",))
    item = migrated(cfg)
    assert not item["ok"] and any("rows in SQLite" in p for p in item["problems"]), item
    # ...and an insert on its way excuses one row more in SQLite, not two
    app.execute("INSERT INTO events VALUES (99999, 'on its way')")
    item = migrated(cfg)
    assert not item["ok"] and any("rows in SQLite" in p for p in item["problems"]), item
    # ...nor does a REPLACE of a key both sides hold, nor a row inserted and deleted again:
    # each is an insert on its way, and neither moves a count
    app.execute("INSERT OR REPLACE INTO events VALUES (8, 'replaced')")
    app.execute("INSERT INTO events VALUES (99998, 'short-lived')")
    app.execute("DELETE FROM events WHERE id = 99998")
    app.close()
    item = migrated(cfg)
    assert not item["ok"] and any("rows in SQLite" in p for p in item["problems"]), item
    print(f"{len(on_the_way)} of {TRIES} counts were taken with changes on their way")
