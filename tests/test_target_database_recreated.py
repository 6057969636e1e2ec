"""One daemon, two target databases (the plan's synapse_core and synapse_business).
The second one's database is dropped while the daemon runs and created again, empty
(a server rebuilt on a fresh volume, say). Meanwhile the first target's source streams
on, and the second's says why it cannot go on; once the database is back, syncd makes
its bookkeeping again and loads the source anew: nothing is lost, no restart needed."""

from __future__ import annotations

import asyncio
import json
import secrets

import pytest

from tests.conftest import FAST_FAILOVER, _admin, write_config
from tests.support.app import Writer, create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.pgcluster import with_database
from tests.support.sync import wait_caught_up


@pytest.fixture
def two_databases(pg_server):
    names = [f"syncd_test_{x}_{secrets.token_hex(4)}" for x in ("core", "business")]
    for n in names:
        asyncio.run(_admin(pg_server, f'CREATE DATABASE "{n}"'))
    try:
        yield names
    finally:
        for n in names:
            asyncio.run(_admin(pg_server, f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))


def status_of(cfg, name: str) -> dict:
    doc = json.loads(run_cli(cfg, "status", "--json").stdout)
    return next(s for s in doc["sources"] if s["name"] == name)


async def test_a_target_database_dropped_and_created_again(two_databases, pg_server, tmp_path):
    core, business = two_databases
    core_dsn, business_dsn = with_database(pg_server, core), with_database(pg_server, business)
    sales, crm = tmp_path / "epic7_sales_automation.db", tmp_path / "synapse_business_crm.db"
    create_items(sales, rows=134)
    create_items(crm, rows=16)
    cfg = write_config(tmp_path / "syncd.toml", core_dsn,
                       [{"name": "sales", "path": str(sales)},
                        {"name": "crm", "path": str(crm), "dsn": business_dsn}], sections=FAST_FAILOVER)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(sales, core_dsn, "sales", daemon=d)
        await wait_caught_up(crm, business_dsn, "crm", daemon=d)

        await _admin(pg_server, f'DROP DATABASE "{business}" WITH (FORCE)')
        for w in [Writer(sales, seconds=2, seed=1, rate=50), Writer(crm, seconds=2, seed=2, rate=50)]:
            assert w.result()["lock_errors"] == 0
        await wait_caught_up(sales, core_dsn, "sales", daemon=d, timeout=20)
        wait_for(lambda: "does not exist" in (status_of(cfg, "crm").get("postgres_error") or ""), 30,
                 "crm's status naming the missing database", d)
        assert status_of(cfg, "sales")["state"] == "streaming"

        await _admin(pg_server, f'CREATE DATABASE "{business}"')
        for w in [Writer(sales, seconds=2, seed=3, rate=50), Writer(crm, seconds=2, seed=4, rate=50)]:
            assert w.result()["lock_errors"] == 0
        await wait_caught_up(crm, business_dsn, "crm", daemon=d, timeout=60)
        await wait_caught_up(sales, core_dsn, "sales", daemon=d, timeout=20)
        assert status_of(cfg, "crm")["state"] == "streaming"
        log = d.log()
        assert d.stop() == 0
    assert "unexpected error" not in log, [x for x in log.splitlines() if "unexpected error" in x][:3]
    assert await compare_table(str(sales), core_dsn, "sales", "items") == []
    assert await compare_table(str(crm), business_dsn, "crm", "items") == []
