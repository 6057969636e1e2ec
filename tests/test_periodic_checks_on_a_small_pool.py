"""The daemon's periodic consistency check borrows a connection of its target's pool
and, when rows are in flight, waits for the stream to apply them. On a small pool
(`[postgres] max_connections = 3`: two pooled connections, as many as the default
`[verify] concurrency`) the checks must not take every pooled connection while they
wait for the very stream they starve: the sources keep streaming with normal lag, no
"Postgres unreachable" is reported while Postgres answers, and no check records rows
merely in flight as a difference."""

from __future__ import annotations

import time

from tests.conftest import write_config
from tests.support.app import Writer, create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import wait_caught_up


async def test_sources_keep_streaming_while_the_periodic_checks_run(pg_dsn, tmp_path):
    dbs = {n: tmp_path / f"{n}.db" for n in ("sales", "crm")}
    for db in dbs.values():
        create_items(db, rows=200)
    cfg = write_config(tmp_path / "syncd.toml", pg_dsn, [{"name": n, "path": str(db)} for n, db in dbs.items()],
                       sections={"postgres": {"max_connections": 3},
                                 "verify": {"interval_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        for n, db in dbs.items():
            await wait_caught_up(db, pg_dsn, n, daemon=d)
        writers = [Writer(db, seconds=6, seed=i, rate=40) for i, db in enumerate(dbs.values())]
        for w in writers:
            assert w.result()["lock_errors"] == 0
        started = time.monotonic()
        for n, db in dbs.items():
            # A writer at 40 transactions a second, a poll every 0.2 s: caught up within
            # seconds of the last write, however the checks are timed.
            await wait_caught_up(db, pg_dsn, n, daemon=d, timeout=60)
        caught_up_after = time.monotonic() - started
        log = d.log()
        assert d.stop() == 0
    unreachable = [x for x in log.splitlines() if "Postgres unreachable" in x or "timed out" in x]
    assert unreachable == [], "\n".join(unreachable[:5])
    differ = [x for x in log.splitlines() if "event=verify" in x and "differ" in x]
    assert differ == [], "\n".join(differ[:5])
    assert caught_up_after < 3, f"caught up {caught_up_after:.1f} s after the writes ended"
    for n, db in dbs.items():
        assert await compare_table(str(db), pg_dsn, n, "items") == [], n
