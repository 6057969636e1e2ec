"""syncd_verify_behind_seconds and the fleet's 'checks are behind' warning measure the
checks the daemon could run: a source that cannot be checked (its file missing or
emptied) is reported as what it is, not as checks falling behind."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import asyncpg

from tests.support.app import create_items
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.pgcluster import free_port
from tests.support.sync import wait_caught_up
from tests.test_metrics import value


async def test_a_source_that_cannot_be_checked_is_no_check_falling_behind(tmp_path, make_config, pg_dsn):
    (tmp_path / "t").mkdir()
    good, gone = tmp_path / "t" / "good.db", tmp_path / "t" / "gone.db"
    create_items(good, rows=5)
    create_items(gone, rows=5)
    port = free_port()
    cfg = make_config([{"name": "{stem}", "path": str(tmp_path / "t" / "*.db")}],
                      metrics_listen=f"127.0.0.1:{port}", sections={"verify": {"interval_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(good, pg_dsn, "good", daemon=d)
        await wait_caught_up(gone, pg_dsn, "gone", daemon=d)
        wait_for(lambda: d.log().count("consistency check: equal") >= 2, 60, "both checked", d)
        gone.write_bytes(b"")  # emptied: the source is missing until the file comes back
        d.wait_log("is empty (0 bytes)")
        since = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=10)

        async def good_checked_since() -> bool:
            conn = await asyncpg.connect(pg_dsn)
            try:
                return bool(await conn.fetchval("SELECT count(*) FROM syncd.verify_runs WHERE source = 'good' "
                                                "AND started_at > $1", since))
            finally:
                await conn.close()

        deadline = asyncio.get_running_loop().time() + 60
        while not await good_checked_since():  # the good source goes on being checked every second
            assert d.alive() and asyncio.get_running_loop().time() < deadline, d.log()[-3000:]
            await asyncio.sleep(0.2)
        assert value(port, "syncd_verify_behind_seconds") < 5
        doc = json.loads(run_cli(cfg, "status", "--json").stdout)
        assert doc["verify_behind_seconds"] < 5, doc["verify_behind_seconds"]
        out = run_cli(cfg, "status").stdout
        assert "consistency checks are" not in out and "gone.db is empty" in out, out
        assert d.stop() == 0


async def test_checks_turned_off_by_sighup_are_not_behind(tmp_path, make_config, pg_dsn):
    """A check held up (a lock on its table in Postgres) puts the checks behind; [verify]
    interval_seconds = 0 by SIGHUP turns them off: nothing is behind any more, in
    syncd_verify_behind_seconds and `syncd status`, rather than the last figure for ever."""
    import signal

    db = tmp_path / "app.db"
    create_items(db, rows=5)
    port = free_port()
    cfg = make_config([{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{port}",
                      sections={"verify": {"interval_seconds": 1, "repair": False}})
    pg = await asyncpg.connect(pg_dsn)
    try:
        with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
            await wait_caught_up(db, pg_dsn, "app", daemon=d)
            d.wait_log("consistency check: equal")
            tx = pg.transaction()
            await tx.start()
            await pg.execute("LOCK TABLE app.items IN ACCESS EXCLUSIVE MODE")  # the next check waits
            try:
                wait_for(lambda: value(port, "syncd_verify_behind_seconds") > 1, 30, "the checks behind", d)
                make_config([{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{port}",
                            sections={"verify": {"interval_seconds": 0}})
                d.proc.send_signal(signal.SIGHUP)
                d.wait_log("configuration reloaded")
                wait_for(lambda: value(port, "syncd_verify_behind_seconds") == 0, 30, "nothing behind", d)
                doc = json.loads(run_cli(cfg, "status", "--json").stdout)
                assert doc["verify_behind_seconds"] == 0, doc["verify_behind_seconds"]
            finally:
                await tx.rollback()
            assert d.stop() == 0
    finally:
        await pg.close()
