"""kill -9 of the daemon at random instants while SQLite follows Postgres under load: the
reverse checkpoint commits with the rows in SQLite, so on restart nothing is lost and
nothing applied twice, and SQLite ends equal to Postgres."""

from __future__ import annotations

import contextlib
import random
import time

from tests.support.app import create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import changelog_max, eventually
from tests.support.way_back import PgWriter, applied_but_unpruned, backup_and_config, cut_over, wait_back

KILLS = 22  # at least, while the application writes
MAX_KILLS = 60  # more, until one lands between a SQLite commit and the prune in Postgres


async def test_kill9_during_the_way_back_at_random_points(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=2000, journal="wal")
    create_items(db, table="second", rows=500)
    cfg = backup_and_config(make_config, tmp_path, db, stream={"batch_size": 40, "poll_interval_seconds": 0.2,
                                                               "held_table_retry_seconds": 0.5})
    with DaemonProcess(cfg, tmp_path / "cutover.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    forward_end = changelog_max(db)
    rnd = random.Random(20261201)
    # The application writes for as long as the kills go on (stopped after the last).
    writers = [PgWriter(pg_dsn, seconds=600, seed=1, rate=120),
               PgWriter(pg_dsn, seconds=600, seed=2, table="second", rate=60, ids=500)]
    windows = i = 0
    try:
        # Where a kill lands is chance (on a busy machine each start takes longer): kill
        # again until one has landed in that window, aimed at it after the random ones.
        while i < KILLS or (windows == 0 and i < MAX_KILLS):
            i += 1
            d = DaemonProcess(cfg, tmp_path / f"run{i}.log")
            with d:
                d.wait_log("syncd running", timeout=30)
                if i > KILLS:  # none of the random kills landed in the window: aim for it
                    with contextlib.suppress(AssertionError):  # not open in time: kill anyway, and count
                        await eventually(lambda: applied_but_unpruned(db, pg_dsn), timeout=15, daemon=d)
                else:
                    time.sleep(rnd.uniform(0.1, 1.5))
                d.kill9()
            windows += await applied_but_unpruned(db, pg_dsn) > 0
    finally:
        summaries = [w.stop() for w in writers]
    assert all(s["transactions"] > 100 for s in summaries), summaries
    with DaemonProcess(cfg, tmp_path / "final.log") as d:
        d.wait_log("syncd running")
        await wait_back(cfg, db, pg_dsn, timeout=120, daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "items") == []
    assert await compare_table(str(db), pg_dsn, "app", "second") == []
    assert changelog_max(db) == forward_end  # no copy of syncd's own writes left to stream forward later
    assert windows >= 1, "no kill landed between a SQLite commit and the prune in Postgres"
