"""The status page's charts: the daemon's in-memory lag and apply-rate ring (bounded,
oldest first, rates from the applied counter) and the SVG drawn from it and from the
verification history."""

from __future__ import annotations

import datetime as dt
import math
from types import SimpleNamespace

from syncd.page.history import HistoryView, LiveHistory
from syncd.report.svg import line_chart, nice_ceiling, verification_slots, verification_strip


def test_ring_keeps_the_last_window_oldest_first_with_rates():
    h = LiveHistory(window_seconds=50, interval_seconds=5)  # 10 slots
    assert h.capacity == 10
    for i in range(25):
        h.record(1000.0 + 5 * i, {"a": (float(i), 30.0 * i)})
    v = h.view()
    assert v.times == [1000.0 + 5 * i for i in range(15, 25)]
    assert v.sources["a"].lag_seconds == [float(i) for i in range(15, 25)]
    assert v.sources["a"].applied_per_second == [6.0] * 10  # 30 changes every 5 s


def test_a_source_appearing_later_or_missing_a_sample_has_gaps():
    h = LiveHistory(window_seconds=50, interval_seconds=5)
    h.record(0.0, {"a": (1.0, 0.0)})
    h.record(5.0, {"a": (1.0, 10.0), "b": (0.0, 100.0)})
    h.record(10.0, {"b": (0.0, 150.0)})
    v = h.view()
    a, b = v.sources["a"], v.sources["b"]
    assert math.isnan(a.applied_per_second[0]) and a.applied_per_second[1] == 2.0 and math.isnan(a.lag_seconds[2])
    assert math.isnan(b.lag_seconds[0]) and math.isnan(b.applied_per_second[1]) and b.applied_per_second[2] == 10.0
    h.record(15.0, {"b": (0.0, 20.0)})  # the counter went back (a reloaded source): no negative rate
    assert h.view().sources["b"].applied_per_second[-1] == 0.0
    h.forget("a")
    assert set(h.view().sources) == {"b"}
    back = HistoryView.from_json(h.view().as_json())
    assert back.times == h.view().times and back.sources["b"].applied_per_second[-1] == 0.0
    assert math.isnan(back.sources["b"].lag_seconds[0])


def test_due_follows_the_interval():
    h = LiveHistory(window_seconds=60, interval_seconds=5)
    assert h.due(0.0)
    h.record(0.0, {})
    assert not h.due(4.9) and h.due(5.0)


def test_nice_ceiling():
    assert [nice_ceiling(v) for v in (0, 0.3, 1, 1.2, 4.9, 7, 10, 11, 2000, 2001)] == \
        [1, 0.5, 1, 2, 5, 10, 10, 20, 2000, 5000]


def test_line_chart_breaks_at_gaps_and_escapes_its_labels():
    times = [float(t) for t in range(0, 100, 5)]
    values = [1.0] * 5 + [math.nan] * 5 + [3.0] * 10
    svg = line_chart(times, values, 95.0, 100.0, label="<lag>", unit="s")
    assert svg.count("<polyline") == 2 and 'data-points="15"' in svg
    assert "&lt;lag&gt;: now 3 s, highest 3 s" in svg and "<lag>" not in svg
    empty = line_chart([], [], 100.0, 3600.0, label="Lag", unit="s")
    assert "no samples yet" in empty and "<polyline" not in empty
    many = line_chart([float(t) for t in range(720)], [float(t % 7) for t in range(720)], 719.0, 720.0, label="x",
                      unit="s")
    assert many.count(",") <= 200  # one hour of samples drawn with at most 180 points


def run(at: dt.datetime, clean: bool, full: bool = True):
    return SimpleNamespace(finished_at=at, clean=clean, full_check=full, error=None)


def test_verification_slots_count_every_run_once_and_errors_as_the_checklist_does():
    start = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    end = start + dt.timedelta(days=14)
    runs = [run(start + dt.timedelta(hours=h), True) for h in range(0, 14 * 24, 6)]
    runs += [run(start + dt.timedelta(days=3, minutes=1), False),
             run(start + dt.timedelta(days=9), False, full=False),  # not compared counts as an error too
             run(start - dt.timedelta(days=1), False)]  # before the window: not shown
    slots = verification_slots(runs, start, end, 14)
    assert sum(s.checks for s in slots) == 56 + 2
    assert [i for i, s in enumerate(slots) if s.kind == "error"] == [3, 9]
    assert slots[9].not_compared == 1 and all(s.kind == "clean" for i, s in enumerate(slots) if i not in (3, 9))
    svg = verification_strip(slots, 'table "x"')
    assert 'data-checks="58"' in svg and 'data-errors="2"' in svg and svg.count('class="error"') == 2
    assert "table &quot;x&quot;" in svg


def test_a_chart_whose_latest_samples_are_missing_gives_no_figure_for_now():
    """A source whose lag is not known since a while (it stopped, or is starting again):
    the chart's "now" is not the last figure it had minutes ago; it says there is none now
    and which figure was the last."""
    times = [float(t) for t in range(0, 100, 5)]
    values = [4.0] * 10 + [math.nan] * 10
    svg = line_chart(times, values, 95.0, 100.0, label="Lag", unit="s")
    assert "now 4 s" not in svg, svg
    assert "no figure now (the last, 50 s ago: 4 s)" in svg, svg
    assert "now 3 s" in line_chart(times, [4.0] * 19 + [3.0], 95.0, 100.0, label="Lag", unit="s")


def test_a_charts_highest_and_now_are_samples_not_averages_of_them():
    """An hour of apply rates (720 samples, drawn as 180 points, each the mean of four):
    the chart says the highest rate sampled and the latest one, not the highest or the
    last of those means (a burst read a quarter of what it was)."""
    times = [float(t) for t in range(0, 3600, 5)]
    values = [0.0] * 720
    values[100] = 1000.0
    values[-1] = 8.0
    svg = line_chart(times, values, times[-1], 3600.0, label="Apply rate", unit="changes/s", keep="mean")
    assert "now 8 changes/s, highest 1,000 changes/s in the last 60 min" in svg, svg
