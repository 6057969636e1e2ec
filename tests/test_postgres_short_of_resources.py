"""Postgres answering but short of a resource (its disk full, its memory): syncd's
writes fail there with SQLSTATE class 53. That is no outage: Postgres is reachable,
and what to mend is its disk, not the network. syncd says what Postgres said, as a
failing step, tried again until the writes go through."""

from __future__ import annotations

import json
import sqlite3

from tests.conftest import FAST_FAILOVER, write_config
from tests.support.daemon import DaemonProcess, run_cli, wait_for
from tests.support.sync import wait_caught_up

DISK_FULL = {"S": "ERROR", "V": "ERROR", "C": "53100",
             "M": 'could not extend file "base/16384/16385": No space left on device'}


async def test_a_full_disk_in_postgres_is_no_outage(outage, tmp_path, pg_dsn):
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
    assert "unreachable" not in line and "event=failing" in line, line
