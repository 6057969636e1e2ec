"""Postgres answering but short of a resource (its disk full, its memory): syncd's
writes fail there with SQLSTATE class 53. syncd retries as it does through an outage,
and says so as one (syncd_postgres_up 0, so SyncdPostgresDown fires), but names what
Postgres said: what to mend is its disk, not the network."""

from __future__ import annotations

import sqlite3

from tests.conftest import FAST_FAILOVER, write_config
from tests.support.daemon import DaemonProcess, wait_for
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
