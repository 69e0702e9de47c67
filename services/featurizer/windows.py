"""Event-time windows and the aggregations computed over them (docs/featurizer.md has the rules).

Every window of an event at time ``t`` ends at ``t`` itself (the event and the events before it,
never after) and starts at an inclusive lower bound:

=========  ==========================================  ==========================================
kind       events of the entity with event time in     example: t = 12:34:56
=========  ==========================================  ==========================================
sliding    ``(t - size, t]``                           size 1h: (11:34:56, 12:34:56]
tumbling   ``[floor(t / size) * size, t]``             size 1h: [12:00:00, 12:34:56]
hopping    ``[k * hop, t]``, k the least integer with  size 1h, hop 10m: [11:40:00, 12:34:56]
           ``k * hop > t - size``: the oldest hop-
           aligned window ``[k*hop, k*hop + size)``
           that contains t
=========  ==========================================  ==========================================

>>> from streamloop.contracts.feature_specs import WindowSpec
>>> start = window_start(WindowSpec(kind="hopping", size=60, hop=20))
>>> start(125)  # windows [80, 140) and [100, 160) and [120, 180) contain 125; [80, 140) is the oldest
80
>>> window_start(WindowSpec(kind="sliding", size=60))(125), window_start(WindowSpec(kind="tumbling", size=60))(125)
(66, 120)
>>> aggregate("std", [1.0, 3.0]), aggregate("distinct_count", ["a", "b", "a"]), aggregate("mean", [])
(1.0, 2.0, None)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from streamloop.contracts.feature_specs import FeaturesSpec, WindowSpec

# A buffered event is ordered by its version key: event time, then Kafka offset (docs/featurizer.md).
# Offsets are below 2**63, so key >> 64 is the event time and key & OFFSET_MASK the offset.
SHIFT = 1 << 64
OFFSET_MASK = SHIFT - 1

# Aggregations whose value needs numbers (the field must be numeric or boolean in the schema).
NUMERIC_AGGREGATIONS = frozenset({"sum", "mean", "std", "min", "max", "last"})


def version_key(event_time_ms: int, offset: int) -> int:
    """One int that sorts events by (event time, offset); see :data:`SHIFT`."""
    return event_time_ms * SHIFT + offset


def window_start(window: WindowSpec) -> Callable[[int], int]:
    """The inclusive lower bound, in event time, of the window an event at ``t`` is aggregated over."""
    size = window.size
    if window.kind == "sliding":
        return lambda t: t - size + 1
    if window.kind == "tumbling":
        return lambda t: t - t % size
    hop = window.hop
    assert hop is not None  # the spec requires it for hopping windows
    return lambda t: ((t - size) // hop + 1) * hop


def horizon_ms(features: FeaturesSpec) -> int:
    """How far behind an entity's newest event time an event can still matter.

    An on-time event is at most ``allowed_lateness`` behind the entity's newest event and looks
    back at most one window size, so older events are evicted. Without aggregations the horizon
    is the features' TTL, which bounds ``time_since_previous_s``.
    """
    longest = max((a.window.size for a in features.aggregations), default=features.ttl)
    return longest + features.allowed_lateness


# An aggregation beyond a double (a sum of values near 1e308) is undefined, as an empty window's
# is: raising would dead-letter the event live, while a restore, which builds no vectors, would
# keep it in the window, and the state rebuilt would differ from the state lost.


def _sum(values: Sequence[float]) -> float | None:
    try:
        return math.fsum(values)
    except OverflowError:
        return None


def _mean(values: Sequence[float]) -> float | None:
    try:
        return math.fsum(values) / len(values) if values else None
    except OverflowError:
        return None


def _std(values: Sequence[float]) -> float | None:
    if not values:
        return None
    try:
        mean = math.fsum(values) / len(values)
        return math.sqrt(math.fsum([(x - mean) ** 2 for x in values]) / len(values))
    except OverflowError:
        return None


# Each takes the window's non-null values, oldest first; None means "undefined" (an empty window).
AGGREGATORS: dict[str, Callable[[Sequence[Any]], float | None]] = {
    "count": lambda values: float(len(values)),
    "distinct_count": lambda values: float(len(set(values))),
    "sum": _sum,
    "mean": _mean,
    "std": _std,
    "min": lambda values: float(min(values)) if values else None,
    "max": lambda values: float(max(values)) if values else None,
    "last": lambda values: float(values[-1]) if values else None,
}


def aggregate(agg: str, values: Sequence[Any]) -> float | None:
    """One aggregation over the non-null values of a window, oldest first; None when undefined.

    Sums are ``math.fsum`` (correctly rounded, so independent of order and of history: a rebuilt
    state gives bit-identical features). ``std`` is the population standard deviation.
    """
    try:
        return AGGREGATORS[agg](values)
    except KeyError:
        raise ValueError(f"unknown aggregation {agg!r}") from None
