"""A `syncd cutover` with the daemon running: the daemon notices it at its watch of the
sources' directions (every 2 s), not only at its bookkeeping recheck ([stream]
held_table_retry_seconds, 30 s here), and follows the source back to SQLite: a row the
application writes into Postgres right after the cutover reaches SQLite soon.

The cutover is held in its last transaction once everything is written and before it
commits ("turned"): the daemon sees the cutover's last write to the SQLite file (the
way back's checkpoint) while the switch is uncommitted, and reads the old direction.
Then it is held again once committed ("done"), before it closes the file: nothing in
the file changes after the commit, so only a look at Postgres tells the daemon that the
source turned, as when the cutover's steps after its commit take a while."""

from __future__ import annotations

import asyncio
import time

from tests.support.daemon import DaemonProcess, run_cli, syncd_cmd, wait_for
from tests.support.sync import wait_caught_up
from tests.support.way_back import backup_and_config, order_in_sqlite, orders_app, postgres_write

RECHECK_SECONDS = 30
POLL_SECONDS = 0.2
# Well inside the recheck: a cutover seen only there takes up to RECHECK_SECONDS.
NOTICED_WITHIN_SECONDS = 12


async def test_the_running_daemon_follows_a_cutover_back_well_before_its_recheck(tmp_path, make_config, pg_dsn):
    import os
    import subprocess

    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db, stream={"held_table_retry_seconds": RECHECK_SECONDS,
                                                               "poll_interval_seconds": POLL_SECONDS})
    resume = tmp_path / "resume"
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        proc = subprocess.Popen(syncd_cmd(cfg, "cutover"), stdout=subprocess.PIPE, text=True, cwd=str(cfg.parent),
                                env={**os.environ, "SYNCD_CUTOVER_HOLD_AT": "turned,done",
                                     "SYNCD_CUTOVER_RESUME_ON": str(resume)})
        try:
            assert proc.stdout.readline().strip() == "holding at turned"
            await asyncio.sleep(10 * POLL_SECONDS)  # the daemon's polls see the file's last write meanwhile
            resume.write_text("")
            assert proc.stdout.readline().strip() == "holding at done"
            done = time.monotonic()
            assert await postgres_write(pg_dsn, "right after the cutover") is None
            d.wait_log("the source now flows Postgres -> SQLite", timeout=NOTICED_WITHIN_SECONDS)
            left = NOTICED_WITHIN_SECONDS - (time.monotonic() - done)
            wait_for(lambda: order_in_sqlite(db, "right after the cutover"), max(left, 1), "the row in SQLite", d)
            resume.write_text("")
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert d.stop() == 0
