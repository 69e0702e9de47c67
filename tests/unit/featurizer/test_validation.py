"""Input validation: every rule and sanity check names its rule, before any state is touched."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.featurizer.validation import RecordValidator, to_millis
from streamloop.contracts import load_pipeline
from streamloop.contracts.feature_specs import MAX_KEY_BYTES
from streamloop.kafka import InvalidRecordError
from streamloop.kafka.dead_letters import RULE, dead_letter_headers, read_error_headers
from streamloop.ml.features import MAX_TEXT_LENGTH, feature_problem
from tests.conftest import DEMO_SPEC
from tests.unit.featurizer.support import SCHEMA, MemoryStore, event, make_spec, processor, records, vectors

RULES = {
    "x": {"required": True, "min": 0, "max": 100},
    "cat": {"type": "string", "allowed": ["a", "b"], "max_length": 1},
    "n": {"type": "long", "allowed": [0, 1, 2]},
    "flag": {"type": "boolean", "allowed": [False]},
}


def validator(rules: dict | None = None) -> RecordValidator:
    return RecordValidator(make_spec(validation=RULES if rules is None else rules).input, SCHEMA)


def rule_of(value: dict, rules: dict | None = None) -> str | None:
    try:
        validator(rules).validate(value)
    except InvalidRecordError as exc:
        return exc.rule
    return None


@pytest.mark.parametrize(("change", "rule"), [
    ({"x": None}, "x.required"),
    ({"x": -0.5}, "x.min"),
    ({"x": 100.5}, "x.max"),
    ({"cat": "c"}, "cat.allowed"),
    ({"cat": 7}, "cat.type"),
    ({"n": 3}, "n.allowed"),
    ({"n": 1.5}, "n.type"),
    ({"n": True}, "n.type"),
    ({"flag": True}, "flag.allowed"),
    ({"x": float("nan")}, "x.finite"),
    ({"x": float("inf")}, "x.finite"),
    ({"tags": {"a": float("-inf")}}, "tags.finite"),
    ({"tags": {str(i): 1.0 for i in range(5)}}, "tags.max_size"),
    ({"items": ["a"] * 5}, "items.max_size"),
    ({"id": ""}, "id.required"),
    ({"entity": None}, "entity.required"),
    ({"ts": None}, "ts.required"),
    ({"ts": "yesterday"}, "ts.type"),
    ({"ts": -1}, "ts.range"),
])
def test_each_failure_names_its_rule(change: dict, rule: str) -> None:
    assert rule_of(event(1, "a", 1_000, x=5.0) | change) == rule


def test_an_event_that_breaks_several_rules_names_every_one() -> None:
    # The producer sees every problem of the event in one dead letter, not one per round trip.
    with pytest.raises(InvalidRecordError) as caught:
        validator().validate(event(1, "a", 1_000, x=-0.5, cat="c", n=3) | {"id": ""})
    error = caught.value
    assert error.rule == "id.required", "the first failure, in the documented order, stays the rule"
    assert error.rules == ["id.required", "x.min", "cat.allowed", "n.allowed"]
    assert str(error).split("; ") == ["id (the event id) is missing", "x is -0.5, below the minimum 0.0",
                                      "cat is 'c', not one of the allowed values",
                                      "n is 3, not one of the allowed values"]


def test_a_field_is_named_once_even_when_it_breaks_a_sanity_check_and_a_rule() -> None:
    # NaN fails `finite`, and would fail nothing else (it passes min/max): one error for the field.
    with pytest.raises(InvalidRecordError) as caught:
        validator().validate(event(1, "a", 1_000, x=float("nan"), flag=True))
    assert caught.value.rules == ["x.finite", "flag.allowed"]
    with pytest.raises(InvalidRecordError) as single:
        validator().validate(event(1, "a", 1_000, x=float("nan")))
    assert single.value.rules == ["x.finite"] and str(single.value) == "x is nan"


def test_an_identity_field_with_a_rule_of_its_own_is_named_once() -> None:
    with pytest.raises(InvalidRecordError) as caught:
        validator({"ts": {"type": "long"}, "x": {"max": 1}}).validate(event(1, "a", 1_000, x=5.0) | {"ts": "yesterday"})
    assert caught.value.rules == ["ts.type", "x.max"]


def test_a_valid_event_returns_its_identity() -> None:
    assert validator().validate(event(7, "card", 1_234, x=5.0, n=2)) == ("e7", "card", 1_234)
    assert rule_of(event(1, "a", 1_000, x=5.0, tags={str(i): 1.0 for i in range(4)})) is None


def test_max_length_and_mixed_allowed_lists() -> None:
    assert rule_of(event(1, "a", 1, cat="ab"), {"cat": {"max_length": 1}}) == "cat.max_length"
    assert rule_of(event(1, "a", 1, items=["a", "b"]), {"items": {"max_length": 1}}) == "items.max_length"
    # A boolean never matches a number in an allowed list, although True == 1 in Python.
    assert rule_of(event(1, "a", 1, n=1), {"n": {"allowed": [1, "x"]}}) is None
    assert rule_of(event(1, "a", 1, flag=True), {"flag": {"allowed": [1, "x"]}}) == "flag.allowed"
    assert rule_of(event(1, "a", 1, x=2.0), {"x": {"allowed": [2, "x"]}}) is None
    assert rule_of(event(1, "a", 1, cat="b"), {"cat": {"min": 1}}) == "cat.type"


def test_nan_is_caught_before_range_rules() -> None:
    # NaN compares false with everything, so a min/max rule alone would let it through.
    assert rule_of(event(1, "a", 1, x=float("nan")), {"x": {"min": 0, "max": 1}}) == "x.finite"


def test_event_times_are_timestamps_or_longs() -> None:
    assert to_millis(datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)) == 1_700_000_000_123
    assert to_millis(datetime(1970, 1, 1, 0, 0, 1)) == 1_000, "naive datetimes are UTC"
    assert to_millis(5) == 5 and to_millis(True) is None and to_millis(1.5) is None


def test_demo_rules() -> None:
    spec = load_pipeline(DEMO_SPEC)
    demo = RecordValidator(spec.input, spec.input_schema())
    good = {"transaction_id": "t1", "card_id": "c1", "timestamp": 1_700_000_000_000, "amount": 12.5,
            "merchant_category": "fuel", "country": "DE", "customer_tier": "gold", "card_present": True,
            "distance_from_home_km": None}
    assert demo.validate(good) == ("t1", "c1", 1_700_000_000_000)
    broken = [({"amount": -1.0}, "amount.min"), ({"merchant_category": "casino"}, "merchant_category.allowed"),
              ({"country": "DEU"}, "country.max_length"), ({"amount": float("nan")}, "amount.finite"),
              ({"distance_from_home_km": 30_000.0}, "distance_from_home_km.max"),
              ({"country": None}, "country.required")]
    for change, rule in broken:
        with pytest.raises(InvalidRecordError) as caught:
            demo.validate(good | change)
        assert caught.value.rule == rule


def test_invalid_events_are_dead_lettered_before_touching_state() -> None:
    proc = processor(make_spec({"aggregations": [{"name": "c", "field": "x", "agg": "count",
                                                  "window": {"kind": "sliding", "size": 1000}}]},
                               validation={"x": {"max": 10}}))
    result = proc.process(records([event(0, "a", 1_000, x=50.0), event(1, "a", 1_000, x=float("nan")),
                                   event(2, "a", 1_000, x=5.0)]))
    assert [r.error.rule for r in result.rejections] == ["x.max", "x.finite"]  # type: ignore[attr-defined]
    assert all(r.stage == "VALIDATION" for r in result.rejections)
    assert len(result.outputs) == 1 and result.outputs[0].value["numeric"]["c"] == 1.0  # type: ignore[index]
    assert proc._partitions[("events", 0)].entities["a"].size == 1


# -- text the scorer refuses ----------------------------------------------------------------


ONE_HOT = {"categorical": [{"field": "cat", "encoding": "one_hot"}]}
COUNT = {"aggregations": [{"name": "count", "field": "x", "agg": "count", "window": {"kind": "sliding", "size": 1000}}]}
PASSTHROUGH = {"categorical": [{"field": "cat"}]}


@pytest.mark.parametrize(("features", "segments", "longest"), [
    (ONE_HOT, (), MAX_TEXT_LENGTH - len("cat=")),  # the column cat=<value> is what the scorer bounds
    (PASSTHROUGH, (), MAX_TEXT_LENGTH),
    ({}, ("cat",), MAX_TEXT_LENGTH),
    (PASSTHROUGH | {"categorical": [{"field": "cat"}, {"field": "cat", "name": "cat_hot", "encoding": "one_hot"}]},
     ("cat",), MAX_TEXT_LENGTH - len("cat_hot=")),
], ids=["one-hot", "passthrough", "segment", "the-strictest-of-several"])
def test_categorical_and_segment_text_is_at_most_what_the_scorer_takes(features: dict, segments: tuple,
                                                                       longest: int) -> None:
    proc = processor(make_spec(features, segments=segments))

    at_limit = proc.process(records([event(1, "a", 1_000, cat="c" * longest)]))
    (vector,) = vectors(at_limit).values()
    assert feature_problem(vector["numeric"], vector["categorical"]) is None, "the scorer takes what passes"

    over = proc.process(records([event(2, "a", 2_000, cat="c" * (longest + 1))], first_offset=1))
    (rejection,) = over.rejections
    assert rejection.stage == "VALIDATION" and rejection.error.rule == "cat.max_length"  # type: ignore[attr-defined]
    assert f"above the {longest} the scorer takes" in str(rejection.error)


def test_a_value_off_the_list_that_becomes_other_may_be_of_any_length() -> None:
    proc = processor(make_spec({"categorical": [{"field": "cat", "encoding": "one_hot", "categories": ["a"],
                                                 "unknown": "other"}]}))
    (vector,) = vectors(proc.process(records([event(1, "a", 1_000, cat="c" * 5_000)]))).values()
    assert vector["numeric"]["cat=__other__"] == 1.0


def test_a_categorical_value_too_long_for_the_scorer_is_dead_lettered_before_touching_state() -> None:
    store = MemoryStore()
    proc = processor(make_spec(ONE_HOT | COUNT), store=store)
    too_long = records([event(1, "b", 1_000, cat="c" * MAX_TEXT_LENGTH)])[0]
    fine = records([event(2, "a", 1_000)], first_offset=1)[0]

    result = proc.process([too_long, fine])

    (rejection,) = result.rejections
    assert rejection.record is too_long and rejection.stage == "VALIDATION"
    headers = read_error_headers(dead_letter_headers(None, topic=too_long.topic, partition=too_long.partition,
                                                     offset=too_long.offset, stage=rejection.stage,
                                                     error=rejection.error, service="featurizer"))
    assert headers[RULE] == "cat.max_length"
    assert [v["entity_key"] for v in vectors(result).values()] == ["a"], "no vector for the rejected event"
    assert [entity for _group, entity in store.rows] == ["a"], "no row for it either"
    assert "b" not in proc._partitions[("events", 0)].entities


# -- keys ------------------------------------------------------------------------------------


def test_an_event_id_or_entity_key_longer_than_a_key_may_be_is_refused() -> None:
    # Both are Kafka keys and Redis keys: bounded in UTF-8 bytes, what those systems store.
    at_limit = "é" * (MAX_KEY_BYTES // 2)
    assert validator().validate(event(1, at_limit, 1_000, x=5.0) | {"id": "k" * MAX_KEY_BYTES}) == (
        "k" * MAX_KEY_BYTES, at_limit, 1_000)
    two_byte = "é" * (MAX_KEY_BYTES // 2 + 1)  # within MAX_KEY_BYTES characters, past it in bytes
    with pytest.raises(InvalidRecordError) as caught:
        validator().validate(event(1, two_byte, 1_000, x=5.0) | {"id": "k" * (MAX_KEY_BYTES + 1)})
    assert caught.value.rules == ["id.max_length", "entity.max_length"]
    assert str(caught.value).split("; ") == [
        f"id (the event id) is {MAX_KEY_BYTES + 1} bytes long in UTF-8, above the {MAX_KEY_BYTES} a key may be "
        "(MAX_KEY_BYTES)",
        f"entity (the entity key) is {MAX_KEY_BYTES + 2} bytes long in UTF-8, above the {MAX_KEY_BYTES} a key may "
        "be (MAX_KEY_BYTES)"]


def test_an_event_id_with_a_nul_is_refused() -> None:
    # The collector refuses it downstream (NUL names its own state's fields); refused here, the
    # producer sees it in its input's dead letters.
    with pytest.raises(InvalidRecordError) as caught:
        validator().validate(event(1, "a", 1_000, x=5.0) | {"id": "\x00owner"})
    assert caught.value.rule == "id.reserved"
    assert validator().validate(event(1, "a", 1_000, x=5.0) | {"id": "tab\tok"})[0] == "tab\tok"


def test_an_over_long_entity_key_is_dead_lettered_before_touching_state() -> None:
    store = MemoryStore()
    proc = processor(make_spec(COUNT), store=store)
    too_long = records([event(1, "b" * (MAX_KEY_BYTES + 1), 1_000)])[0]

    result = proc.process([too_long, records([event(2, "a", 1_000)], first_offset=1)[0]])

    (rejection,) = result.rejections
    assert rejection.record is too_long and rejection.stage == "VALIDATION"
    assert rejection.error.rule == "entity.max_length"  # type: ignore[attr-defined]
    assert [entity for _group, entity in store.rows] == ["a"], "no Redis key for it"
