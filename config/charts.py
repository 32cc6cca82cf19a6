"""Charts drawn on the server as SVG: a few lines over time, with no chart
library in the page (the console runs on air-gapped clusters, and the
figures are already summed by the database). Pure logic: series in, the
coordinates a template draws out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

COLOURS = ["#0d6efd", "#d63384", "#198754", "#fd7e14", "#6f42c1", "#20c997", "#6c757d"]


@dataclass(frozen=True)
class Line:
    name: str
    colour: str
    points: str  # "x,y x,y ..." for an SVG polyline
    total: float
    last: float


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    lines: list[Line]
    peak: float
    start_label: str
    end_label: str

    @property
    def empty(self) -> bool:
        return not any(line.points for line in self.lines)


def line_chart(
    series: dict[str, dict[datetime, float]], *, start: datetime, end: datetime, step: timedelta,
    width: int = 640, height: int = 160, max_lines: int = len(COLOURS), label_format: str = "%H:%M",
) -> Chart:  # fmt: skip
    """Lines for `series` ({name: {bucket start: value}}) over [start, end) in buckets of `step`;
    a bucket without a value counts 0. The `max_lines` largest series are drawn."""
    buckets = []
    at = start
    while at < end:
        buckets.append(at)
        at += step
    filled = {name: {b.timestamp(): values.get(b, 0) for b in buckets} for name, values in series.items()}
    last = buckets[-1] if buckets else start
    return time_chart(
        filled, start=start.timestamp(), end=last.timestamp(), width=width, height=height, max_lines=max_lines,
        start_label=start.strftime(label_format), end_label=last.strftime(label_format),
    )  # fmt: skip


def time_chart(
    series: dict[str, dict[float, float]], *, start: float, end: float, width: int = 640, height: int = 160,
    max_lines: int = len(COLOURS), start_label: str = "", end_label: str = "",
) -> Chart:  # fmt: skip
    """Lines for `series` ({name: {unix time: value}}) between `start` and `end`; a time
    without a value is a gap in the line's data, not a zero. The largest series come first."""
    ranked = sorted(series.items(), key=lambda item: -sum(item[1].values()))[:max_lines]
    peak = max((v for _, values in ranked for v in values.values()), default=0) or 1
    span = (end - start) or 1
    lines = []
    for (name, values), colour in zip(ranked, COLOURS, strict=False):
        kept = sorted((t, v) for t, v in values.items() if start <= t <= end)
        points = " ".join(
            f"{(t - start) / span * width:.1f},{height - (v / peak) * (height - 4) - 2:.1f}" for t, v in kept
        )
        lines.append(
            Line(
                name=name, colour=colour, points=points, total=sum(v for _, v in kept), last=kept[-1][1] if kept else 0
            )
        )
    return Chart(width=width, height=height, lines=lines, peak=peak, start_label=start_label, end_label=end_label)


def floor_to(moment: datetime, step: timedelta) -> datetime:
    """`moment` rounded down to a whole `step` (steps of a minute or an hour, as the database truncates)."""
    seconds = int(step.total_seconds())
    stamp = int(moment.timestamp())
    return datetime.fromtimestamp(stamp - stamp % seconds, tz=moment.tzinfo)
