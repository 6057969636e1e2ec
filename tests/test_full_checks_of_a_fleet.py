"""The just-in-case full check of every source (a reconcile, every [stream]
schema_check_interval_seconds): a fleet's sources fall due about one a second, not all
in the same second, however few they are. Sources started or cut over together used to
fall due together whenever the fleet was smaller than the interval in seconds: 40 files
cut over at once made some 2,600 statements in two seconds, every minute."""

from __future__ import annotations

import time

from syncd.config import load_settings
from syncd.daemon import Daemon
from syncd.model import TO_SQLITE

INTERVAL = 60.0


def first_dues(make_config, tmp_path, files: int, direction: str | None = None) -> list[float]:
    """Seconds from now until each source's first full check, as the daemon plans them."""
    cfg = make_config([{"name": f"t{i:03d}", "path": str(tmp_path / f"t{i:03d}.db")} for i in range(files)],
                      sections={"stream": {"schema_check_interval_seconds": INTERVAL}})
    daemon = Daemon(load_settings(cfg), cfg)
    now = time.monotonic()
    made = [daemon._make(s, direction) if direction else daemon._make(s) for s in daemon.settings.sources]
    return sorted(p.last_full_check + p.recheck_every - now for p in made)


def test_a_small_fleet_falls_due_spread_over_about_a_second_a_source(make_config, tmp_path):
    dues = first_dues(make_config, tmp_path, 12)
    assert INTERVAL - 1 <= dues[0] and dues[-1] <= INTERVAL + 12 + 1, dues
    assert dues[-1] - dues[0] > 4, dues  # twelve at random in 12 s: all within 4 s is one chance in ~10^5


def test_a_fleet_cut_over_together_falls_due_spread_too(make_config, tmp_path):
    dues = first_dues(make_config, tmp_path, 12, TO_SQLITE)
    assert INTERVAL - 1 <= dues[0] and dues[-1] <= INTERVAL + 12 + 1, dues
    assert dues[-1] - dues[0] > 4, dues


def test_a_fleet_larger_than_the_interval_checks_each_source_once_per_second_of_fleet(make_config, tmp_path):
    dues = first_dues(make_config, tmp_path, 150)
    assert INTERVAL - 1 <= dues[0] and dues[-1] <= INTERVAL + 150 + 1, dues
    assert dues[-1] - dues[0] > 75, dues
