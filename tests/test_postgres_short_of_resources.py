"""Postgres answering but short of a resource (its disk full, its memory): syncd's
writes fail there with SQLSTATE class 53. syncd retries as it does through an outage,
and says so as one (syncd_postgres_up 0, so SyncdPostgresDown fires), but names what
Postgres said: what to mend is its disk, not the network."""

from __future__ import annotations

import json
import re
import sqlite3
import time
import urllib.request

import asyncpg

from tests.conftest import FAST_FAILOVER, write_config
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.ports import free_port
from tests.support.sync import wait_caught_up

DISK_FULL = {"S": "ERROR", "V": "ERROR", "C": "53100",
             "M": 'could not extend file "base/16384/16385": No space left on device'}


async def test_a_full_disk_in_postgres_is_not_called_unreachable(outage, tmp_path, pg_dsn):
    proxy, dsn = outage
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');")
    conn.close()
    cfg = write_config(tmp_path / "syncd.toml", dsn, [{"name": "app", "path": str(db)}], sections=FAST_FAILOVER)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        proxy.fail_reply_to(b"applied_batches(source, after_seq", DISK_FULL)
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO t VALUES (2, 'b')")
        conn.commit()
        conn.close()
        wait_for(proxy.reply_failed.is_set, 30, "the batch's write refused", d)
        await wait_caught_up(db, pg_dsn, "app", daemon=d)  # tried again, it goes through
        log = d.own_log()
        assert d.stop() == 0
    [line] = [x for x in log.splitlines() if "No space left on device" in x]
    assert "Postgres unreachable" not in line and "short of a resource" in line, line
    assert "event=postgres_unreachable" in line, line  # an outage still: SyncdPostgresDown fires


async def test_status_says_what_the_daemon_meets_while_postgres_refuses_writes(tmp_path, make_config, pg_dsn):
    """While Postgres refuses every write for want of disk, `syncd status` (which reaches
    Postgres itself) says what the daemon meets, not a bare "postgres unreachable", and
    says it between two retries too: a new connection is no recovery."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cfg = make_config([{"name": "app", "path": str(db)}], metrics_listen=f"127.0.0.1:{port}")
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            # Every batch's bookkeeping row refused as a full disk refuses it.
            await pg.execute("CREATE FUNCTION public.full_disk() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                             "RAISE EXCEPTION 'could not extend file: No space left on device' "
                             "USING ERRCODE = 'disk_full'; END $$")
            await pg.execute("CREATE TRIGGER full_disk BEFORE INSERT ON syncd.applied_batches "
                             "FOR EACH ROW EXECUTE FUNCTION public.full_disk()")
            conn.execute("INSERT INTO t VALUES (2, 'b')")

            def said() -> bool:
                out = run_cli(cfg, "status")
                return "No space left on device" in out.stdout and out.returncode != 0

            wait_for(said, 60, "status naming the full disk", d)
            for _ in range(5):  # every retry meets it: no "streaming" between two (a new connection proves nothing)
                time.sleep(1)
                [src] = json.loads(run_cli(cfg, "status", "--json").stdout)["sources"]
                assert src["state"] == "postgres_unreachable", src
                assert "short of a resource" in src["daemon_detail"], src
                up = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
                assert re.search(r"^syncd_postgres_up 0(\.0)?$", up, re.M), up  # never 1 between two retries
            assert "recovered" not in d.own_log()
            await pg.execute("DROP TRIGGER full_disk ON syncd.applied_batches")
        finally:
            await pg.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    conn.close()
