"""A SQLite file whose writer stopped mid-transaction (killed, crashed, the host lost
power) keeps that transaction's journal beside it until a read-write connection opens
the file and rolls the transaction back. `syncd status` reads the file read-only, which
SQLite refuses until then ("attempt to write a readonly database"): status called the
source missing. The file is there and whole: status says why it cannot read it now and
what ends that, and leaves the file as it found it."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

from tests.support.app import create_items
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import wait_caught_up

KILLED_WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA cache_size = 2")  # the change reaches the file itself before the commit
conn.execute("BEGIN")
conn.execute("UPDATE items SET v = 'never committed'")
print("written", flush=True)
time.sleep(60)
"""


def killed_mid_transaction(db) -> None:
    """The application's writer, killed between its writes and its commit."""
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "written"
    finally:
        writer.kill()
        writer.wait(10)


async def test_a_file_left_mid_transaction_is_not_shown_missing(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    journal = tmp_path / "app.db-journal"
    create_items(db, rows=2000, journal="delete")
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    killed_mid_transaction(db)
    assert journal.exists()
    r = run_cli(cfg, "status", "--json")
    src = json.loads(r.stdout)["sources"][0]
    assert src["state"] == "file_locked", src
    messages = [p["message"] for p in src["problems"]]
    assert any(str(journal) in m and "rolls it back" in m for m in messages), messages
    assert not any("readonly" in m for m in messages), messages
    assert journal.exists()  # status only reads
    app = sqlite3.connect(db)  # the application opens its file again: SQLite rolls the transaction back
    assert app.execute("SELECT count(*) FROM items WHERE v = 'never committed'").fetchone()[0] == 0
    app.close()
    r = run_cli(cfg, "status", "--json")
    src = json.loads(r.stdout)["sources"][0]
    assert src["state"] == "daemon_not_running" and src["sqlite_error"] is None, src


async def test_schema_and_report_say_why_they_cannot_read_a_file_left_mid_transaction(tmp_path, make_config, pg_dsn):
    """`syncd schema` and `syncd report` read the file read-only too: they say what
    status says, not "attempt to write a readonly database" of a command that writes
    nothing."""
    db = tmp_path / "app.db"
    journal = tmp_path / "app.db-journal"
    create_items(db, rows=2000, journal="delete")
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    killed_mid_transaction(db)
    for verb in ("schema", "report"):
        r = run_cli(cfg, verb)
        assert r.returncode != 0, r.stdout
        assert "was left mid-transaction" in r.stdout and str(journal) in r.stdout, (verb, r.stdout[-2000:])
        assert "readonly" not in r.stdout + r.stderr, (verb, r.stdout[-2000:])
    assert journal.exists()  # they only read
