"""Window bounds and aggregations, each against a brute-force definition."""

from __future__ import annotations

import math
import random

import pytest

from services.featurizer.windows import AGGREGATORS, aggregate, horizon_ms, version_key, window_start
from streamloop.contracts.feature_specs import WindowSpec
from tests.unit.featurizer.support import (
    AGGREGATIONS,
    WINDOWS,
    all_aggregations_spec,
    make_spec,
    reference_aggregate,
    reference_start,
)


@pytest.mark.parametrize("kind", sorted(WINDOWS))
def test_window_start_matches_the_definition(kind: str) -> None:
    window = WINDOWS[kind]
    start = window_start(WindowSpec(**window))
    for t in list(range(0, 200_001, 997)) + [0, 19_999, 20_000, 59_999, 60_000, 60_001, 1_700_000_000_123]:
        assert start(t) == reference_start(window, t), (kind, t)
        assert start(t) <= t


def test_window_edges() -> None:
    sliding = window_start(WindowSpec(kind="sliding", size=1000))
    assert sliding(5000) == 4001, "sliding is (t - size, t]: an event exactly size ago is out"
    tumbling = window_start(WindowSpec(kind="tumbling", size=1000))
    assert tumbling(5000) == 5000 and tumbling(5999) == 5000
    hopping = window_start(WindowSpec(kind="hopping", size=1000, hop=250))
    assert hopping(5000) == 4250 and hopping(5249) == 4250 and hopping(5250) == 4500
    equal = window_start(WindowSpec(kind="hopping", size=1000, hop=1000))
    assert equal(5500) == tumbling(5500), "hop == size is tumbling"


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_every_aggregation_matches_brute_force(agg: str) -> None:
    rng = random.Random(agg)
    for n in [0, 1, 2, 3, 10, 100]:
        values = [round(rng.uniform(-1e3, 1e3), rng.choice([0, 2, 6])) for _ in range(n)]
        got, expected = aggregate(agg, values), reference_aggregate(agg, values)
        if expected is None:
            assert got is None
        else:
            assert math.isclose(got, expected, rel_tol=1e-12, abs_tol=1e-9), (agg, n)


def test_sums_are_exact_whatever_the_order() -> None:
    values = [1e16, 1.0, -1e16, 1.0] * 50
    shuffled = values[:]
    random.Random(1).shuffle(shuffled)
    assert aggregate("sum", values) == aggregate("sum", shuffled) == 100.0
    assert aggregate("std", values) == aggregate("std", shuffled)


def test_distinct_count_of_strings_and_undefined_on_empty_windows() -> None:
    assert aggregate("distinct_count", ["a", "b", "a"]) == 2.0
    assert aggregate("count", []) == 0.0 and aggregate("sum", []) == 0.0 and aggregate("distinct_count", []) == 0.0
    assert all(aggregate(a, []) is None for a in ("mean", "std", "min", "max", "last"))
    assert set(AGGREGATORS) == set(AGGREGATIONS)
    with pytest.raises(ValueError, match="unknown"):
        aggregate("median", [1.0])


def test_an_aggregation_beyond_a_double_is_undefined_not_an_error() -> None:
    assert [aggregate(agg, [1e308, 1e308]) for agg in ("sum", "mean", "std")] == [None, None, None]
    assert aggregate("std", [1e200, -1e200]) is None, "its squares are beyond a double"
    assert aggregate("max", [1e308, 1e308]) == 1e308


def test_horizon_is_the_longest_window_plus_lateness() -> None:
    assert horizon_ms(all_aggregations_spec(lateness=30_000).features) == 90_000
    assert horizon_ms(make_spec({"ttl": "1h", "allowed_lateness": "1s"}).features) == 3_601_000


def test_version_keys_order_by_time_then_offset() -> None:
    keys = [version_key(t, o) for t, o in [(5, 2**63 - 1), (6, 0), (5, 3), (0, 1)]]
    assert sorted(keys) == [version_key(0, 1), version_key(5, 3), version_key(5, 2**63 - 1), version_key(6, 0)]


def test_the_module_examples_run() -> None:
    import doctest

    from services.featurizer import windows

    assert doctest.testmod(windows).failed == 0
