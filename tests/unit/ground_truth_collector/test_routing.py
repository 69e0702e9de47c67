"""The checks a record passes before it reaches the join: its event id, and a regression label's value."""

from __future__ import annotations

import pytest

from services.ground_truth_collector.entries import Kind
from services.ground_truth_collector.routing import (
    HEADER_DECIDED_AT,
    WATERMARK,
    carries_example,
    control_headers,
    event_id_of,
)
from streamloop.kafka.exceptions import InvalidRecordError


@pytest.mark.parametrize(("label", "rule"), [("12.5", "label.type"), (True, "label.type"), (None, "label.type"),
                                             (float("nan"), "label.finite"), (float("inf"), "label.finite")])
def test_a_regression_label_no_model_can_learn_is_refused_with_its_rule(label, rule) -> None:
    with pytest.raises(InvalidRecordError) as refused:
        event_id_of(Kind.LABEL, {"event_id": "e1", "label": label}, "regression")
    assert refused.value.rule == rule


def test_a_finite_regression_label_and_any_classification_label_pass() -> None:
    assert event_id_of(Kind.LABEL, {"event_id": "e1", "label": -3}, "regression") == "e1"
    assert event_id_of(Kind.LABEL, {"event_id": "e2", "label": "review"}, "classification") == "e2"
    with pytest.raises(InvalidRecordError):
        event_id_of(Kind.LABEL, {"event_id": "", "label": 1.0}, "regression")


def test_a_joined_record_carries_an_example_only_as_a_data_record_with_its_decision_time() -> None:
    """The one test both runtimes' metrics stages make before decoding a joined record."""
    decided = (HEADER_DECIDED_AT, b"1700000000000")
    assert carries_example([("traceparent", b"00-x"), decided])
    assert not carries_example([("traceparent", b"00-x")]), "no decision: nothing to decode"
    assert not carries_example(control_headers(WATERMARK, decided)), "a marker, whatever else it says"
