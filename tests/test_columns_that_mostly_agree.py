"""A column dropped and added again under its name (a plan reset to its default), or two
columns swapped by RENAME COLUMN, keeps the table's shape: syncd tells it from the data,
comparing what both sides hold for rows nothing has changed since (test_column_identity.py).
Such rows hold exactly what Postgres holds when the column is the one Postgres copied, so
any that disagree mean the column changed: here most values happen to be alike (most
accounts are on the default plan, most ship where they bill), and the rows that are not
must not keep their old values in Postgres."""

from __future__ import annotations

import sqlite3

import pytest

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import wait_caught_up

N = 1000
MIGRATIONS = {
    "plan_reset": "ALTER TABLE accounts DROP COLUMN plan; "
                  "ALTER TABLE accounts ADD COLUMN plan TEXT NOT NULL DEFAULT 'free';",
    "cities_swapped": "BEGIN; ALTER TABLE accounts RENAME COLUMN bill_city TO tmp; "
                      "ALTER TABLE accounts RENAME COLUMN ship_city TO bill_city; "
                      "ALTER TABLE accounts RENAME COLUMN tmp TO ship_city; COMMIT;",
}


@pytest.mark.parametrize("migration", MIGRATIONS)
async def test_a_changed_column_whose_values_mostly_agree_is_reloaded(app_db, make_config, pg_dsn, tmp_path,
                                                                        migration):
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT, bill_city TEXT, ship_city TEXT, "
                 "plan TEXT NOT NULL DEFAULT 'free')")
    # one account in twenty pays, and ships elsewhere than it bills
    conn.executemany("INSERT INTO accounts VALUES (?, ?, ?, ?, ?)",
                     [(i, f"user{i}@example.com", f"city{i}", f"city{i}" if i % 20 else f"depot{i}",
                       "free" if i % 20 else "pro") for i in range(1, N + 1)])
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.executescript(MIGRATIONS[migration])
        conn.execute("INSERT INTO accounts (id, email, bill_city, ship_city) VALUES (5000, 'new@example.com', 'x', 'y')")
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    problems = await compare_table(str(app_db), pg_dsn, "app", "accounts")
    assert problems == [], f"{len(problems)} differences, e.g. {problems[:2]}"
