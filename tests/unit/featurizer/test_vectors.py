"""Passthrough, categorical (passthrough and one-hot), segments, time since previous, spec checks."""

from __future__ import annotations

import re

import pytest

from services.featurizer.exceptions import FeaturizerConfigError
from services.featurizer.vectors import check_spec
from streamloop.ml.categorical import OTHER, as_text
from tests.unit.featurizer.support import SCHEMA, event, make_spec, processor, records, vectors


def one(spec_features: dict, *events: dict, segments: tuple[str, ...] = ()) -> list[dict]:
    proc = processor(make_spec(spec_features, segments=segments))
    found = vectors(proc.process(records(list(events))))
    return [found[e["id"]] for e in events]


def test_passthrough_numbers_booleans_and_defaults() -> None:
    features = {"time_since_previous": False,
                "passthrough": [{"field": "x", "default": -1.0}, {"field": "n", "name": "count_n"}, {"field": "flag"}]}
    first, second = one(features, event(0, "a", 1_000, x=2.5, n=3, flag=True), event(1, "a", 2_000, x=None))
    assert first["numeric"] == {"x": 2.5, "count_n": 3.0, "flag": 1.0}
    assert second["numeric"] == {"x": -1.0, "count_n": 0.0, "flag": 0.0}
    (no_default,) = one({"time_since_previous": False, "passthrough": [{"field": "x"}]}, event(0, "a", 1, x=None))
    assert no_default["numeric"] == {}, "a null without a default is left out, not invented"


def test_categorical_passthrough_goes_to_the_categorical_map() -> None:
    features = {"time_since_previous": False,
                "categorical": [{"field": "cat"}, {"field": "flag", "name": "present"}]}
    (vector,) = one(features, event(0, "a", 1, cat="b", flag=True))
    assert vector["categorical"] == {"cat": "b", "present": "true"}
    assert vector["numeric"] == {}


def test_one_hot_without_categories_sets_only_the_seen_value() -> None:
    (vector,) = one({"time_since_previous": False, "categorical": [{"field": "cat", "encoding": "one_hot"}]},
                    event(0, "a", 1, cat="b"))
    assert vector["numeric"] == {"cat=b": 1.0} and vector["categorical"] == {}


def test_one_hot_with_categories_is_fixed_width_and_unknowns_follow_the_policy() -> None:
    keep = {"time_since_previous": False,
            "categorical": [{"field": "cat", "encoding": "one_hot", "categories": ["a", "b"]}]}
    known, unknown = one(keep, event(0, "a", 1, cat="b"), event(1, "a", 2, cat="z"))
    assert known["numeric"] == {"cat=a": 0.0, "cat=b": 1.0}
    assert unknown["numeric"] == {"cat=a": 0.0, "cat=b": 0.0, "cat=z": 1.0}
    other = {"time_since_previous": False, "categorical": [
        {"field": "cat", "name": "c", "encoding": "one_hot", "categories": ["a", "b"], "unknown": "other"},
        {"field": "cat", "name": "p", "categories": ["a"], "unknown": "other"}]}
    known, unknown = one(other, event(0, "a", 1, cat="a"), event(1, "a", 2, cat="z"))
    assert known["numeric"] == {"c=a": 1.0, "c=b": 0.0, f"c={OTHER}": 0.0} and known["categorical"] == {"p": "a"}
    assert unknown["numeric"] == {"c=a": 0.0, "c=b": 0.0, f"c={OTHER}": 1.0}
    assert unknown["categorical"] == {"p": OTHER}


def test_segments_copy_the_segment_fields_as_text() -> None:
    (vector,) = one({"time_since_previous": False}, event(0, "a", 1, cat="b", flag=False, n=4),
                    segments=("cat", "flag", "n", "x"))
    assert vector["segments"] == {"cat": "b", "flag": "false", "n": "4", "x": "1.0"}
    assert as_text(2) == "2" and as_text("x") == "x"


def test_time_since_previous_orders_by_event_time_and_is_capped_at_the_horizon() -> None:
    features = {"ttl": "10s", "allowed_lateness": "5s"}  # no aggregations: horizon = ttl + lateness = 15 s
    got = one(features, event(0, "a", 100_000), event(1, "a", 103_000), event(2, "a", 101_500),
              event(3, "a", 101_500), event(4, "a", 200_000), event(5, "b", 200_000))
    seconds = [v["numeric"]["time_since_previous_s"] for v in got]
    # The first event has no previous one: it reads the cap. An out-of-order event measures from the
    # event just before it in event time; equal times read 0.
    assert seconds == [15.0, 3.0, 1.5, 0.0, 15.0, 15.0]


def test_vectors_carry_identity_pipeline_and_late_flag() -> None:
    (vector,) = one({}, event(3, "card-1", 1_700_000_000_123))
    assert vector | {"numeric": None} == {
        "event_id": "e3", "entity_key": "card-1", "event_time": 1_700_000_000_123, "pipeline": "test-pipeline",
        "numeric": None, "categorical": {}, "segments": {}, "late": False}


@pytest.mark.parametrize(("features", "message"), [
    ({"aggregations": [{"name": "s", "field": "cat", "agg": "sum", "window": {"kind": "sliding", "size": 1}}]},
     "sum needs cat to be a number"),
    ({"aggregations": [{"name": "d", "field": "tags", "agg": "distinct_count",
                        "window": {"kind": "sliding", "size": 1}}]}, "distinct_count needs tags"),
    ({"passthrough": [{"field": "cat"}]}, "passthrough[0]: cat is not a number"),
    ({"categorical": [{"field": "items"}]}, "categorical[0]: items must be a single value"),
])
def test_specs_the_schema_cannot_serve_are_refused_up_front(features: dict, message: str) -> None:
    with pytest.raises(FeaturizerConfigError, match=re.escape(message)):
        check_spec(make_spec(features), SCHEMA)


def test_count_and_distinct_count_accept_strings() -> None:
    check_spec(make_spec({"aggregations": [
        {"name": "d", "field": "cat", "agg": "distinct_count", "window": {"kind": "sliding", "size": 1}},
        {"name": "c", "field": "cat", "agg": "count", "window": {"kind": "sliding", "size": 1}}]}), SCHEMA)
