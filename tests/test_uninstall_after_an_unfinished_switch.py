"""`syncd uninstall` after a cutover or rollback that stopped before finishing (killed,
the machine rebooted) while no daemon ran. The switch left the application's database
frozen, which the daemon or the next `syncd cutover`/`syncd rollback` would undo; the
operator abandons the migration instead ("Before phase 5 ... stop syncd, `syncd
uninstall`"). The application must get its database back: a file never cut over must
not stay frozen with a message saying it was moved to PostgreSQL, nor Postgres with one
saying it was moved back to SQLite. An uninstall while a switch runs is refused."""

from __future__ import annotations

import os
import subprocess

from tests.support.daemon import DaemonProcess, held_at, run_cli, syncd_cmd
from tests.support.sync import pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over, orders_app, postgres_write, sqlite_write





async def test_uninstall_after_a_killed_cutover_gives_the_file_back_to_the_application(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        assert d.stop() == 0
    with held_at(cfg, "cutover", "verified") as proc:
        proc.kill()  # frozen, drained and verified; the switch itself never happened
        proc.wait(10)
    assert await pg_rows(pg_dsn, "SELECT direction FROM syncd.sources") == [("to_postgres",)]
    r = run_cli(cfg, "uninstall")
    assert r.returncode == 0, r.stdout + r.stderr
    refused = sqlite_write(db, "after the uninstall")
    assert refused is None, (
        f"the application's SQLite file, never cut over (Postgres records no cutover), refuses writes after "
        f"`syncd uninstall`: {refused!r}; uninstall said: {r.stdout.strip()}")
    assert "it was cut over" not in r.stdout, r.stdout


async def test_uninstall_after_a_killed_rollback_gives_postgres_back_to_the_application(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    assert await postgres_write(pg_dsn, "on Postgres after the cutover") is None
    with held_at(cfg, "rollback", "verified") as proc:
        proc.kill()  # Postgres frozen; the direction never turned
        proc.wait(10)
    assert await pg_rows(pg_dsn, "SELECT direction FROM syncd.sources") == [("to_sqlite",)]
    r = run_cli(cfg, "uninstall")
    assert r.returncode == 0, r.stdout + r.stderr
    refused = await postgres_write(pg_dsn, "after the uninstall")
    assert refused is None, (
        f"Postgres, the application's database (the rollback never happened), refuses its writes after "
        f"`syncd uninstall`: {refused!r}; uninstall said: {r.stdout.strip()}")


async def test_uninstall_is_refused_while_a_cutover_runs(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    orders_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0
        assert d.stop() == 0
    resume = tmp_path / "resume"
    errors = open(tmp_path / "cutover.err", "w")
    proc = subprocess.Popen(syncd_cmd(cfg, "cutover"), stdout=subprocess.PIPE, stderr=errors, text=True,
                            cwd=str(cfg.parent), env={**os.environ, "SYNCD_CUTOVER_HOLD_AT": "verified",
                                                      "SYNCD_CUTOVER_RESUME_ON": str(resume)})
    try:
        assert proc.stdout.readline().strip() == "holding at verified"
        r = run_cli(cfg, "uninstall")
        resume.write_text("")
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        errors.close()
    assert r.returncode == 1 and "cutover or rollback" in r.stdout, (
        f"uninstall went ahead while a cutover ran (rc {r.returncode}): {r.stdout.strip()}\ncutover: {out}")
    # The cutover finished with its way back armed: capture still in the file.
    assert proc.returncode == 0, out
    assert (await pg_rows(pg_dsn, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE '_syncd_rcap_%'"))[0][0] > 0
