"""Small pure building blocks of the dashboard's figures: bounded series, aligned charts, rates, quantiles.

A chart, as the dashboard serves it, is one x axis (Unix seconds) shared by every series, with
``None`` where a series has no point; uPlot draws exactly that shape::

    {"x": [t0, t1, ...], "series": [{"label": "v1", "values": [0.91, None, ...]}], "marks": [...],
     "gaps": false}

``gaps`` says what a None is. False: only that the series has no point at that x (another has),
and the page joins the series' points across it. True: the series' source was not read then
(every series has a point, or a None, at every x), and the page draws a gap there.

A chart carries at most ``MAX_CHART_X`` x values however long its history: the loop keeps 30
model versions of up to 2,000 windows each, and versions that lived at different times share no
window, so the union alone could reach 60,000 x values (19 MB of JSON at every poll).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Point = tuple[float, float | None]

# About one x value per pixel of a chart (the page draws them some 560 to 700 pixels wide). The
# newest half are kept as they are, older points are averaged per equal slice of time.
MAX_CHART_X = 500


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
          marks: Sequence[Mapping[str, Any]] = (), max_x: int = MAX_CHART_X, gaps: bool = False) -> dict[str, Any]:
    """Series with their own x values, aligned on the union of every x (missing points are None).

    Beyond ``max_x`` x values, the newest ``max_x // 2`` stay as they are and the older ones are
    merged per equal slice of time into its latest x, each series' value there the mean of its
    finite values in the slice. A slice also ends at each series' last finite point: drawn at the
    slice's latest x, a series that ended inside it (a version retired) would reach past its end,
    up to a slice later, over the marks of what followed. So each series is drawn within the x of
    its own first and last point; the older x values are then fewer slices, one fewer per ending.
    """
    materialized = {label: list(points) for label, points in named.items()}
    xs = sorted({x for points in materialized.values() for x, _ in points})
    merged_into = _merged_x(xs, max_x, materialized.values())
    if merged_into is not None:
        xs = sorted(set(merged_into.values()))
    index = {x: i for i, x in enumerate(xs)}
    series = []
    for label, points in materialized.items():
        if merged_into is None:
            values: list[float | None] = [None] * len(xs)
            for x, y in points:
                values[index[x]] = finite(y)
        else:
            values = _means(points, merged_into, index, len(xs))
        series.append({"label": label, "values": values})
    return {"title": title, "unit": unit, "x": xs, "series": series, "marks": list(marks), "gaps": gaps}


def _merged_x(xs: Sequence[float], max_x: int, series: Iterable[Sequence[Point]]) -> dict[float, float] | None:
    """Each x (sorted, distinct) -> the x it is drawn at, None when all fit: ``max_x`` of them at most
    (more only when over ``max_x // 2`` series end among the older x values); a slice closes after
    each series' last finite point."""
    if len(xs) <= max_x:
        return None
    ends = {max((x for x, y in points if finite(y) is not None), default=None) for points in series} - {None}
    kept = max(1, max_x // 2)
    older, recent = xs[:-kept], xs[-kept:]
    cuts = {x for x in ends if older[0] <= x < older[-1]}
    slices = max(1, max_x - kept - len(cuts))
    low, width = older[0], (older[-1] - older[0]) / slices
    merged: list[int] = []  # the slice each older x is merged into, numbered from 0
    previous = None
    for i, x in enumerate(older):
        at = min(int((x - low) / width), slices - 1) if width > 0 else 0
        closed = at != previous or (i > 0 and older[i - 1] in cuts)
        merged.append((merged[-1] if merged else -1) + int(closed))
        previous = at
    latest = {}
    for x, at in zip(older, merged, strict=True):
        latest[at] = x  # xs are sorted: the last x of each slice wins
    return {**{x: latest[at] for x, at in zip(older, merged, strict=True)}, **{x: x for x in recent}}


def _means(points: Iterable[Point], merged_into: Mapping[float, float], index: Mapping[float, int],
           size: int) -> list[float | None]:
    sums, counts = [0.0] * size, [0] * size
    for x, y in points:
        value = finite(y)
        if value is not None:
            at = index[merged_into[x]]
            sums[at] += value
            counts[at] += 1
    return [total / count if count else None for total, count in zip(sums, counts, strict=True)]


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
