"""`syncd rehearse` of one source while another is cut over for real, with
`[cutover] nocase = "citext"`: the rehearsal's copy is cut over first, so citext is
installed into the rehearsal's own schema; the real cutover then finds citext in the
database and types its NOCASE columns with it. Removing what the rehearsal made must not
take the extension, and with it those columns of the live, cut-over source, away."""

from __future__ import annotations

import os
import sqlite3
import subprocess

from tests.support.daemon import DaemonProcess, run_cli, syncd_cmd
from tests.support.sync import pg_rows, wait_caught_up

EMAILS = [(i, f"Person{i}@Example.com", f"person {i}") for i in range(1, 21)]


def make_app(path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT COLLATE NOCASE, name TEXT)")
    conn.executemany("INSERT INTO customers VALUES (?, ?, ?)", EMAILS)
    conn.close()


async def test_a_rehearsal_does_not_take_citext_from_a_source_cut_over_meanwhile(tmp_path, make_config, pg_dsn):
    crm, shop = tmp_path / "crm.db", tmp_path / "shop.db"
    make_app(crm)
    make_app(shop)
    backups = tmp_path / "backups"
    backups.mkdir()
    for db in (crm, shop):
        src, dst = sqlite3.connect(db), sqlite3.connect(backups / f"{db.stem}-latest.db")
        src.backup(dst)
        src.close()
        dst.close()
    cfg = make_config([{"name": "crm", "path": str(crm)}, {"name": "shop", "path": str(shop)}], sections={
        # Each backup told by its name: the files share their tables, and a backup taken
        # before capture carries nothing else that tells whose it is.
        "cutover": {"min_days": 0, "backup_glob": str(backups / "{source}-*.db"), "nocase": "citext"},
        "verify": {"interval_seconds": 0}})
    go = tmp_path / "go"
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(crm, pg_dsn, "crm", daemon=d)
        await wait_caught_up(shop, pg_dsn, "shop", daemon=d)
        assert run_cli(cfg, "verify").returncode == 0

        # Rehearse shop; its copy is cut over (citext installed), and its rollback waits.
        err = open(tmp_path / "rehearse.log", "wb")
        proc = subprocess.Popen(syncd_cmd(cfg, "rehearse", "--source", "shop"), stdout=subprocess.PIPE,
                                stderr=err, text=True, cwd=str(cfg.parent),
                                env={**os.environ, "SYNCD_ROLLBACK_HOLD_AT": "started",
                                     "SYNCD_ROLLBACK_RESUME_ON": str(go)})
        try:
            assert proc.stdout.readline().strip() == "holding at started"
            # Meanwhile the operator cuts crm over for real: the application now writes Postgres.
            out = run_cli(cfg, "cutover", "--source", "crm", timeout=120)
            assert out.returncode == 0, out.stdout + out.stderr
            assert await pg_rows(pg_dsn, "SELECT id, email, name FROM crm.customers ORDER BY id") == EMAILS
            go.touch()
            rehearsed, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            err.close()
        assert proc.returncode == 0, rehearsed

        # The live, cut-over source keeps its column and its values.
        columns = await pg_rows(pg_dsn, "SELECT column_name FROM information_schema.columns "
                                        "WHERE table_schema = 'crm' AND table_name = 'customers' ORDER BY ordinal_position")
        assert [c[0] for c in columns] == ["id", "email", "name"], f"crm.customers after the rehearsal: {columns}"
        assert await pg_rows(pg_dsn, "SELECT id, email, name FROM crm.customers ORDER BY id") == EMAILS
        assert d.stop() == 0
