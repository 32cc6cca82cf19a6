"""The SVG line charts' arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from config.charts import floor_to, line_chart

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def test_each_bucket_is_a_point_and_a_missing_bucket_counts_zero():
    chart = line_chart(
        {"a": {T0: 4, T0 + 2 * MINUTE: 2}}, start=T0, end=T0 + 3 * MINUTE, step=MINUTE, width=200, height=100
    )
    (line,) = chart.lines
    assert line.points == "0.0,2.0 100.0,98.0 200.0,50.0"
    assert (line.total, line.last, chart.peak) == (6, 2, 4)


def test_the_largest_series_are_drawn_first_and_at_most_max_lines():
    series = {name: {T0: value} for name, value in (("small", 1), ("big", 9), ("mid", 5))}
    chart = line_chart(series, start=T0, end=T0 + MINUTE, step=MINUTE, max_lines=2)
    assert [line.name for line in chart.lines] == ["big", "mid"]
    assert line_chart({}, start=T0, end=T0 + MINUTE, step=MINUTE).empty


def test_floor_to_rounds_down_to_the_bucket():
    assert floor_to(T0 + timedelta(minutes=7, seconds=31), MINUTE) == T0 + 7 * MINUTE
    assert floor_to(T0 + timedelta(minutes=59), timedelta(hours=1)) == T0
