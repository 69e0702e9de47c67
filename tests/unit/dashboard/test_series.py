import math

import pytest

from streamloop.dashboard.series import (
    MAX_CHART_X,
    CounterRates,
    Ring,
    chart,
    chart_points,
    finite,
    histogram_quantile,
    subtract_buckets,
)


def test_chart_aligns_series_on_the_union_of_their_x_values():
    spec = chart({"a": [(1.0, 0.5), (3.0, 0.7)], "b": [(2.0, 1.0), (3.0, float("nan"))]}, title="t", unit="u")
    assert spec["x"] == [1.0, 2.0, 3.0]
    assert spec["series"] == [{"label": "a", "values": [0.5, None, 0.7]}, {"label": "b", "values": [None, 1.0, None]}]
    assert chart_points(spec) == 3
    assert spec["title"] == "t" and spec["marks"] == []


def test_a_long_history_is_charted_in_at_most_max_x_values_the_newest_as_they_are():
    # "a" has 100 points at x 0..99, "b" the odd ones of them only, one not finite.
    a = [(float(x), float(x)) for x in range(100)]
    b = [(float(x), 1.0 if x != 9 else math.nan) for x in range(1, 100, 2)]
    spec = chart({"a": a, "b": b}, title="t", max_x=10)
    # The newest 5 as they are; the 95 older ones in 5 equal slices of time (width 94 / 5), each
    # drawn at its latest x with the mean of what each series has in it.
    assert spec["x"] == [18.0, 37.0, 56.0, 75.0, 94.0, 95.0, 96.0, 97.0, 98.0, 99.0]
    values = {s["label"]: s["values"] for s in spec["series"]}
    assert values["a"] == [9.0, 28.0, 47.0, 66.0, 85.0, 95.0, 96.0, 97.0, 98.0, 99.0]
    assert values["b"] == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, None, 1.0, None, 1.0]
    # Within the limit, nothing is merged.
    assert chart({"a": a}, title="t", max_x=100)["x"] == [x for x, _ in a]
    assert MAX_CHART_X <= 1000


def test_a_merged_slice_never_draws_a_series_past_its_last_point():
    """v1 champion until its retirement at 60,000 s, then v2, then v3 from 90,000 s: each slice was drawn
    at its latest x of any series, so v1's line ran on to 60,270 s, past the PROMOTE of v2."""
    lives = {"v1": range(60, 60_001, 60), "v2": range(60_030, 90_001, 60), "v3": range(90_030, 120_001, 60)}
    named = {label: [(float(t), 0.9) for t in times] for label, times in lives.items()}
    spec = chart(named, title="acc", marks=[{"x": 60_000, "label": "PROMOTE v2"}])
    assert len(spec["x"]) == MAX_CHART_X
    for series in spec["series"]:
        drawn = [x for x, value in zip(spec["x"], series["values"], strict=True) if value is not None]
        times = lives[series["label"]]
        assert times[0] <= drawn[0] and drawn[-1] == times[-1], series["label"]
    # A source that stopped answering: its last slice ends at its last reading, the rest is a gap.
    gone = chart({"up": [(float(x), 1.0) for x in range(100)],
                  "gone": [(float(x), 1.0 if x <= 30 else None) for x in range(100)]}, title="t", max_x=10, gaps=True)
    values = dict(zip(gone["x"], gone["series"][1]["values"], strict=True))
    assert max(x for x, value in values.items() if value is not None) == 30.0
    assert len(gone["x"]) == 10


def test_ring_keeps_the_last_points_and_drops_non_finite_values():
    ring = Ring(2)
    for x, y in [(1, 1.0), (2, math.inf), (3, 3.0)]:
        ring.append(x, y)
    assert ring.points() == [(2, None), (3, 3.0)]
    assert ring.last() == 3.0 and finite("x") is None


def test_counter_rates_survive_a_restart():
    rates = CounterRates()
    assert rates.update("k", 10.0, 100) is None
    assert rates.update("k", 12.0, 300) == 100.0
    # The process restarted: its counter starts again at zero; the new value is the increase.
    assert rates.update("k", 14.0, 50) == 25.0


@pytest.mark.parametrize(("q", "expected"), [(0.5, 0.05), (0.7, 0.075), (0.9, 0.1), (0.99, 0.25)])
def test_histogram_quantile_interpolates_like_prometheus(q, expected):
    # 100 observations: 50 under 0.05, 40 in (0.05, 0.1], 10 in (0.1, +Inf).
    buckets = [(0.05, 50), (0.1, 90), (0.25, 90), (math.inf, 100)]
    value = histogram_quantile(q, buckets)
    assert value == pytest.approx(expected)


def test_histogram_quantile_of_an_empty_histogram_is_none():
    assert histogram_quantile(0.5, [(0.1, 0), (math.inf, 0)]) is None
    assert histogram_quantile(0.5, []) is None


def test_subtract_buckets_takes_the_whole_reading_after_a_reset():
    assert subtract_buckets({0.1: 5, math.inf: 8}, {0.1: 2, math.inf: 3}) == {0.1: 3, math.inf: 5}
    assert subtract_buckets({0.1: 1, math.inf: 1}, {0.1: 2, math.inf: 3}) == {0.1: 1, math.inf: 1}
    assert subtract_buckets({0.1: 1}, None) == {0.1: 1}
