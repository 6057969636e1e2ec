"""Inline SVG charts for the status page (pure functions: data in, markup out).

Every text that reaches the markup is escaped; colours come from the page's CSS
classes, so the charts follow its light or dark scheme."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 320, 80
LEFT, RIGHT, TOP, BOTTOM = 40, 8, 8, 18
MAX_POINTS = 180  # per line: one hour at 5 s is 720 samples, more than a small chart can show


def _fmt(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".") if v < 10 else f"{v:,.0f}"


def nice_ceiling(v: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above v (1 for v <= 0)."""
    if not v > 0 or math.isinf(v):
        return 1.0
    power = 10 ** math.floor(math.log10(v))
    for step in (1, 2, 5, 10):
        if v <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def _downsample(times: list[float], values: list[float], keep: str) -> list[tuple[float, float]]:
    """At most MAX_POINTS points; each bucket keeps its max (lag: never understated) or
    its mean (rates). NaN (no sample) breaks the line."""
    points = list(zip(times, values))
    if len(points) <= MAX_POINTS:
        return points
    size = math.ceil(len(points) / MAX_POINTS)
    out = []
    for i in range(0, len(points), size):
        bucket = points[i:i + size]
        vals = [v for _, v in bucket if not math.isnan(v)]
        t = bucket[len(bucket) // 2][0]
        if not vals:
            out.append((t, math.nan))
        else:
            out.append((t, max(vals) if keep == "max" else sum(vals) / len(vals)))
    return out


def line_chart(times: list[float], values: list[float], end: float, window: float, *, label: str, unit: str,
               keep: str = "max", css: str = "") -> str:
    """A small line chart of values over the `window` seconds up to `end`."""
    start = end - window
    pts = [(t, v) for t, v in _downsample(times, values, keep) if t >= start]
    real = [v for _, v in pts if not math.isnan(v)]
    top = nice_ceiling(max(real) if real else 0.0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + plot_w * (t - start) / window

    def y(v: float) -> float:
        return TOP + plot_h * (1 - min(v, top) / top)

    lines, current = [], []
    for t, v in pts:
        if math.isnan(v):
            if current:
                lines.append(current)
            current = []
        else:
            current.append(f"{x(t):.1f},{y(v):.1f}")
    if current:
        lines.append(current)
    # Now and the highest are the samples', not the drawn points' (a rate's point is the mean
    # of a few samples). "Now" is the latest sample's: after samples with no figure (the
    # source stopped, or not knowing its lag), the last figure is said with its age.
    samples = [(t, v) for t, v in zip(times, values) if t >= start]
    seen = [v for _, v in samples if not math.isnan(v)]
    last_t, last = next(((t, v) for t, v in reversed(samples) if not math.isnan(v)), (end, math.nan))
    now = (f"now {_fmt(last)} {unit}" if not math.isnan(samples[-1][1]) else
           f"no figure now (the last, {_age(end - last_t)} ago: {_fmt(last)} {unit})") if seen else ""
    title = f"{label}: " + (f"{now}, highest {_fmt(max(seen))} {unit} in the last "
                            f"{window / 60:.0f} min" if seen else f"no samples yet in the last {window / 60:.0f} min")
    parts = [f'<svg class="chart {escape(css)}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{escape(title)}" data-points="{len(real)}">',
             f"<title>{escape(title)}</title>",
             f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}"/>',
             f'<line class="grid" x1="{LEFT}" y1="{TOP}" x2="{WIDTH - RIGHT}" y2="{TOP}"/>',
             f'<text class="tick" x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end">{escape(_fmt(top))}</text>',
             f'<text class="tick" x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end">0</text>',
             f'<text class="tick" x="{LEFT}" y="{HEIGHT - 4}">−{window / 60:.0f} min</text>',
             f'<text class="tick" x="{WIDTH - RIGHT}" y="{HEIGHT - 4}" text-anchor="end">now</text>',
             f'<text class="tick unit" x="{LEFT + plot_w / 2}" y="{HEIGHT - 4}" text-anchor="middle">'
             f"{escape(unit)}</text>"]
    for line in lines:
        if len(line) == 1:
            cx, cy = line[0].split(",")
            parts.append(f'<circle class="line" cx="{cx}" cy="{cy}" r="1.5"/>')
        else:
            parts.append(f'<polyline class="line" points="{" ".join(line)}"/>')
    if not real:
        parts.append(f'<text class="empty" x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" '
                     f'text-anchor="middle">no samples yet</text>')
    parts.append("</svg>")
    return "".join(parts)


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


@dataclass
class Slot:
    start: dt.datetime
    end: dt.datetime
    checks: int = 0
    errors: int = 0  # not clean, as the checklist counts them: differences, pending, failed or not compared
    not_compared: int = 0  # of the errors: the table was not streaming, so it could not be compared

    @property
    def kind(self) -> str:
        if self.errors:
            return "error"
        return "clean" if self.checks else "none"


def verification_slots(runs: list, start: dt.datetime, end: dt.datetime, slots: int = 48) -> list[Slot]:
    """Runs (VerifyRun: finished_at, clean, full_check) counted into `slots` equal
    intervals from start to end; runs outside are ignored."""
    span = max((end - start).total_seconds(), 1.0)
    step = dt.timedelta(seconds=span / slots)
    out = [Slot(start + i * step, start + (i + 1) * step) for i in range(slots)]
    for r in runs:
        offset = (r.finished_at - start).total_seconds()
        if offset < 0 or offset > span:
            continue
        s = out[min(slots - 1, int(offset / span * slots))]
        n = getattr(r, "count", 1)  # a row loaded in stretches stands for that many runs
        s.checks += n
        if not r.clean:
            s.errors += n
            s.not_compared += n if not r.full_check and r.error is None else 0
    return out


def verification_strip(slots: list[Slot], label: str) -> str:
    """One cell per interval with a check, coloured clean or error, on a grey band
    (no check); each cell's tooltip says when and what."""
    w, h, gap = 4, 14, 1
    width = len(slots) * (w + gap) - gap
    errors = sum(s.errors for s in slots)
    checks = sum(s.checks for s in slots)
    title = f"{label}: {checks} check(s), " + (f"{errors} not clean" if errors else "no consistency error")
    parts = [f'<svg class="strip" viewBox="0 0 {width} {h}" preserveAspectRatio="none" role="img" '
             f'aria-label="{escape(title)}" data-checks="{checks}" data-errors="{errors}">',
             f"<title>{escape(title)}</title>", f'<rect class="none" x="0" y="{h / 2 - 1}" width="{width}" height="2"/>']
    for i, s in enumerate(slots):
        if not s.checks:
            continue
        what = (f"{s.errors} of {s.checks} check(s) not clean"
                + (f" ({s.not_compared} not compared: the table was not streaming)" if s.not_compared else "")
                if s.errors else f"{s.checks} check(s), all equal")
        parts.append(f'<rect class="{s.kind}" x="{i * (w + gap)}" y="0" width="{w}" height="{h}">'
                     f"<title>{escape(_span(s))}: {escape(what)}</title></rect>")
    parts.append("</svg>")
    return "".join(parts)


def _span(s: Slot) -> str:
    a, b = s.start.astimezone(dt.timezone.utc), s.end.astimezone(dt.timezone.utc)
    fmt = "%H:%M" if a.date() == b.date() else "%Y-%m-%d %H:%M"
    return f"{a.strftime('%Y-%m-%d %H:%M')}–{b.strftime(fmt)} UTC"
