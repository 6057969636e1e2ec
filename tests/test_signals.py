"""SIGTERM and SIGINT finish or roll back the batch in flight and exit 0 within 10 s."""

from __future__ import annotations

import signal
import time

import pytest

from tests.support.app import Writer, create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import wait_caught_up


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_stop_signal_during_heavy_streaming(tmp_path, make_config, pg_dsn, sig):
    db = tmp_path / "app.db"
    create_items(db, rows=20_000)
    cfg = make_config([{"name": "app", "path": str(db)}])
    writer = Writer(db, seconds=3, seed=11)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("snapshot started")
        time.sleep(1.0)
        started = time.monotonic()
        assert d.stop(sig, timeout=20) == 0
        assert time.monotonic() - started < 10
        assert "syncd stopped" in d.log()
    writer.result()
    with DaemonProcess(cfg, tmp_path / "again.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "items") == []
