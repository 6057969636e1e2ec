"""A `syncd rehearse` that lost Postgres after its copy was cut over could not drop what
it made; the next one (as the first told the operator: "try again") must still run, not
find the rehearsal's bookkeeping of the earlier copy, cut over, and wait an hour for a
load that never streams."""

from __future__ import annotations

import os
import subprocess
from urllib.parse import urlsplit

from tests.support.daemon import run_cli, syncd_cmd
from tests.support.proxy import FaultProxy
from tests.support.verifying import sync_and_stop
from tests.test_rollback_rehearsal import make_app, schemas


async def test_a_rehearsal_after_one_that_lost_postgres_past_its_cutover_runs(app_db, make_config, pg_dsn,
                                                                              tmp_path):
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    parts = urlsplit(pg_dsn)
    proxy = FaultProxy(parts.hostname, parts.port or 5432)
    resume = tmp_path / "resume"
    env = {**os.environ, "SYNCD_POSTGRES__DSN": pg_dsn.replace(f":{parts.port}/", f":{proxy.port}/"),
           "SYNCD_ROLLBACK_HOLD_AT": "started", "SYNCD_ROLLBACK_RESUME_ON": str(resume)}
    log = open(tmp_path / "rehearse.log", "w")
    proc = subprocess.Popen(syncd_cmd(cfg, "rehearse"), stdout=subprocess.PIPE, stderr=log, text=True,
                            cwd=str(cfg.parent), env=env)
    try:
        assert proc.stdout.readline().strip() == "holding at started"  # the copy is cut over
        proxy.refuse()  # Postgres goes away: nothing the rehearsal made can be dropped
        resume.touch()
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
        proxy.close()
    assert proc.returncode != 0, out
    assert "syncd_rehearsal" in await schemas(pg_dsn)  # left behind
    r = run_cli(cfg, "rehearse", timeout=120)
    assert r.returncode == 0 and "rollback rehearsed on a copy" in r.stdout, r.stdout + r.stderr
    assert not {"app_rehearsal", "syncd_rehearsal"} & await schemas(pg_dsn)
