"""`syncd rehearse` stopped the way services and terminals stop a command: SIGTERM
(`timeout`, a CI job cancelled, `systemctl stop` of a unit running it, `kill`) and
SIGHUP (the SSH session it ran in dropped). Docs (cutover.md): the rehearsal "drops
everything it made, whatever happened"; its copy of the application's file, a second
copy of the business's data, must not stay behind in the temporary directory, and its
schemas must not stay in Postgres."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.support.daemon import interrupted_waiting, syncd_cmd
from tests.support.verifying import sync_and_stop, verify
from tests.test_rollback_rehearsal import make_app, schemas, sqlite_state


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
async def test_a_rehearsal_stopped_by_a_signal_removes_what_it_made(app_db, make_config, pg_dsn, tmp_path, sig):
    make_app(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    before_file, before_schemas = sqlite_state(app_db), await schemas(pg_dsn)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(syncd_cmd(cfg, "rehearse"), stdout=subprocess.PIPE, text=True, cwd=str(cfg.parent),
                            env={**os.environ, "TMPDIR": str(tmp), "SYNCD_CUTOVER_HOLD_AT": "frozen"})
    try:
        assert proc.stdout.readline().strip() == "holding at frozen"
        assert {"app_rehearsal", "syncd_rehearsal"} <= await schemas(pg_dsn)
        assert [p.name for p in tmp.iterdir() if p.name.startswith("syncd-rehearsal-")]  # the copy is there
        proc.send_signal(sig)  # in the middle of the copy's cutover
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    left = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))
    assert left == [], f"the rehearsal stopped by {sig.name} (exit {proc.returncode}) left in $TMPDIR: {left}"
    assert await schemas(pg_dsn) == before_schemas
    assert sqlite_state(app_db) == before_file
    assert verify(cfg).returncode == 0


def test_ctrl_c_while_postgres_does_not_answer_waits_for_it_once(tmp_path, outage):
    """Ctrl-C while `syncd rehearse` of three sources waits for a Postgres that drops every
    packet: it asks once whether a rehearsal schema is left and says of each source that
    it cannot tell, exit 130; it waited [postgres] connect_timeout_seconds for each source."""
    from tests.conftest import write_config

    proxy, dsn = outage
    sources = []
    for name in ("a", "b", "c"):
        make_app(tmp_path / f"{name}.db")
        sources.append({"name": name, "path": str(tmp_path / f"{name}.db")})
    cfg = write_config(tmp_path / "syncd.toml", dsn, sources, sections={"postgres": {"connect_timeout_seconds": 1}})
    proxy.stall()
    code, out, took = interrupted_waiting(cfg, "rehearse", proxy)
    assert code == 130 and "syncd rehearse: interrupted" in out and "Traceback" not in out, out
    for name in ("a", "b", "c"):
        assert f"{name}: cannot tell whether a rehearsal schema is left: cannot connect to" in out, out
    assert took < 2.3, f"{took:.1f} s after Ctrl-C"  # one timeout
