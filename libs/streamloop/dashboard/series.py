"""Small pure building blocks of the dashboard's figures: bounded series, aligned charts, rates, quantiles.

A chart, as the dashboard serves it, is one x axis (Unix seconds) shared by every series, with
``None`` where a series has no point; uPlot draws exactly that shape::

    {"x": [t0, t1, ...], "series": [{"label": "v1", "values": [0.91, None, ...]}], "marks": [...]}
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Point = tuple[float, float | None]


def finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, NaN or infinite (JSON has no NaN)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class Ring:
    """The last ``size`` points of one series, oldest first."""

    def __init__(self, size: int) -> None:
        self._points: deque[Point] = deque(maxlen=size)

    def append(self, x: float, y: float | None) -> None:
        self._points.append((x, finite(y)))

    def points(self) -> list[Point]:
        return list(self._points)

    def last(self) -> float | None:
        return self._points[-1][1] if self._points else None

    def __len__(self) -> int:
        return len(self._points)


def chart(named: Mapping[str, Iterable[Point]], *, title: str, unit: str = "",
          marks: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Series with their own x values, aligned on the union of every x (missing points are None)."""
    materialized = {label: list(points) for label, points in named.items()}
    xs = sorted({x for points in materialized.values() for x, _ in points})
    index = {x: i for i, x in enumerate(xs)}
    series = []
    for label, points in materialized.items():
        values: list[float | None] = [None] * len(xs)
        for x, y in points:
            values[index[x]] = finite(y)
        series.append({"label": label, "values": values})
    return {"title": title, "unit": unit, "x": xs, "series": series, "marks": list(marks)}


def chart_points(spec: Mapping[str, Any]) -> int:
    """How many values a chart draws (what the page reports as ``data-points``)."""
    return sum(1 for series in spec["series"] for value in series["values"] if value is not None)


class CounterRates:
    """Per-second rates of monotonic counters between two readings, robust to restarts.

    A counter that went down was reset (its process restarted): its whole new value is counted
    as the increase, as Prometheus' ``rate()`` does.
    """

    def __init__(self) -> None:
        self._last: dict[Any, tuple[float, float]] = {}

    def seed(self, key: Any, at_s: float, value: float = 0.0) -> None:
        """Start ``key`` at ``value`` (a series that appeared since its process was last read started at 0)."""
        self._last.setdefault(key, (at_s, value))

    def update(self, key: Any, at_s: float, value: float) -> float | None:
        """The rate since the previous reading of ``key``, or None on its first reading."""
        previous = self._last.get(key)
        self._last[key] = (at_s, value)
        if previous is None or at_s <= previous[0]:
            return None
        increase = value - previous[1] if value >= previous[1] else value
        return increase / (at_s - previous[0])

    def increase(self, key: Any, at_s: float, value: float) -> float | None:
        """The increase since the previous reading (None on the first one), restarts handled."""
        previous = self._last.get(key)
        self._last[key] = (at_s, value)
        if previous is None:
            return None
        return value - previous[1] if value >= previous[1] else value


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile``: ``buckets`` are (upper bound, cumulative count), sorted.

    Linear interpolation inside the bucket holding the rank; a rank in the ``+Inf`` bucket
    answers the highest finite bound. None when the histogram is empty.
    """
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            width = count - lower_count
            if width <= 0:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / width
        lower_bound, lower_count = bound, count
    return lower_bound


def subtract_buckets(current: Mapping[float, float], previous: Mapping[float, float] | None) -> dict[float, float]:
    """Cumulative bucket counts observed since ``previous``; the whole of ``current`` after a reset."""
    if previous is None:
        return dict(current)
    if sum(current.values()) < sum(previous.values()) or any(current[b] < previous.get(b, 0) for b in current):
        return dict(current)
    return {bound: count - previous.get(bound, 0.0) for bound, count in current.items()}


def add_buckets(into: dict[float, float], more: Mapping[float, float]) -> None:
    for bound, count in more.items():
        into[bound] = into.get(bound, 0.0) + count
