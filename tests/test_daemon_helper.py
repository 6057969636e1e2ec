"""The daemon helper itself: a test waiting for a daemon's log line waits for that
daemon's line, not for one an earlier daemon wrote into the same log file."""

from __future__ import annotations

from tests.support.daemon import DaemonProcess


def test_a_reused_log_file_is_waited_on_for_this_daemons_own_lines(tmp_path, make_config, app_db):
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("syncd running")
        assert d.stop() == 0
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("syncd running")
        # the first daemon's line did not stand in for this one's
        assert d.log().count("syncd running") == 2 and "syncd running" in d.own_log(), d.log()
        assert d.stop() == 0
    assert d.log().count("syncd stopped") == 2, d.log()
