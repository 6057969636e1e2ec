"""The rollback section of docs/cutover.md is a procedure that works: its commands, run
in order exactly as written (the configuration path and source name swapped for this
test's), take a cut-over source back to SQLite with the daemon running."""

from __future__ import annotations

import re
import shlex
import sqlite3
import subprocess
import sys

from tests.support.daemon import ROOT, DaemonProcess
from tests.support.sync import pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, wait_back

SOURCE = "epic7_sales_automation"


def runbook() -> list[str]:
    doc = (ROOT / "docs" / "cutover.md").read_text()
    section = doc[doc.index("## Rollback"):]
    return [line.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S) for line in block.splitlines()
            if line.strip()]


def test_the_runbook_is_these_commands():
    assert runbook() == [
        "syncd --config /etc/syncd/syncd.toml status",
        "syncd --config /etc/syncd/syncd.toml rollback --dry-run",
        f"syncd --config /etc/syncd/syncd.toml rollback --source {SOURCE}",
        "syncd --config /etc/syncd/syncd.toml verify",
    ]


async def test_the_documented_rollback_procedure(tmp_path, make_config, pg_dsn):
    db = tmp_path / f"{SOURCE}.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE crm_contacts (id INTEGER PRIMARY KEY, name TEXT, deal_value REAL)")
    conn.executemany("INSERT INTO crm_contacts VALUES (?, ?, ?)", [(i, f"contact {i}", 72375.0) for i in range(1, 17)])
    cfg = backup_and_config(make_config, tmp_path, db, sources=[{"name": SOURCE, "path": str(db)}])

    def run(line: str) -> subprocess.CompletedProcess:
        args = shlex.split(line.replace("/etc/syncd/syncd.toml", str(cfg)))
        assert args[0] == "syncd"
        return subprocess.run([sys.executable, "-m", "syncd", *args[1:]], capture_output=True, text=True, timeout=120)

    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, SOURCE, daemon=d)
        await pg_rows(pg_dsn, f'INSERT INTO "{SOURCE}".crm_contacts (name, deal_value) VALUES (\'won on Postgres\', 1)')
        await wait_back(cfg, db, pg_dsn, SOURCE, daemon=d)
        status, dry, switch, verify = runbook()
        r = run(status)
        assert r.returncode == 0, r.stdout
        assert "to sqlite" in r.stdout and "`syncd rollback` possible until" in r.stdout
        r = run(dry)
        assert r.returncode == 0 and "ready to roll back (dry run, nothing changed)" in r.stdout, r.stdout
        assert "expected write downtime" in r.stdout
        r = run(switch)
        assert r.returncode == 0 and f"{SOURCE}: rolled back to SQLite; write downtime" in r.stdout, r.stdout
        # step 4: the application writes its SQLite file again
        conn.execute("INSERT INTO crm_contacts (name, deal_value) VALUES ('back on SQLite', 2)")
        await wait_caught_up(db, pg_dsn, SOURCE, daemon=d)
        r = run(status)
        assert r.returncode == 0 and "to postgres" in r.stdout, r.stdout
        r = run(verify)
        assert r.returncode == 0, r.stdout
    assert (await pg_rows(pg_dsn, f'SELECT name FROM "{SOURCE}".crm_contacts WHERE id > 16 ORDER BY id')) == \
        [("won on Postgres",), ("back on SQLite",)]
