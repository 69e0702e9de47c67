"""Model output -> Prediction fields, action rules, default predictions and the stable hash split."""

from __future__ import annotations

import doctest
import math

import pytest

import streamloop.ml.prediction as prediction_module
from streamloop.contracts.learning_specs import ActionRule, ModelSpec
from streamloop.ml.prediction import (
    ModelOutput,
    ModelOutputError,
    choose_action,
    default_output,
    in_share,
    output_from_probabilities,
    output_from_value,
    predict,
    stable_share,
)

FRAUD_RULES = [
    ActionRule(when_probability_at_least=0.8, action="block"),
    ActionRule(when_probability_at_least=0.3, action="review"),
    ActionRule(otherwise="allow"),
]


def test_doctests_run() -> None:
    assert doctest.testmod(prediction_module).failed == 0


@pytest.mark.parametrize(("p_true", "action"), [(0.95, "block"), (0.8, "block"), (0.79, "review"), (0.3, "review"),
                                                (0.299, "allow"), (0.0, "allow")])
def test_actions_follow_the_rules_in_order_on_the_positive_probability(p_true: float, action: str) -> None:
    output = output_from_probabilities({False: 1 - p_true, True: p_true}, "true", FRAUD_RULES)
    assert output.action == action
    assert output.probabilities == {"false": 1 - p_true, "true": p_true}
    assert output.value is None


def test_predicted_class_is_the_most_probable_label_as_text() -> None:
    assert output_from_probabilities({False: 0.2, True: 0.8}, "true", []).predicted_class == "true"
    assert output_from_probabilities({"a": 0.1, "b": 0.6, "c": 0.3}, None, []).predicted_class == "b"
    assert output_from_probabilities({1: 0.7, 2: 0.3}, None, []).probabilities == {"1": 0.7, "2": 0.3}


def test_without_a_positive_class_actions_use_the_top_probability() -> None:
    rules = [ActionRule(when_probability_at_least=0.6, action="sure"), ActionRule(otherwise="unsure")]
    assert output_from_probabilities({"a": 0.1, "b": 0.7, "c": 0.2}, None, rules).action == "sure"
    assert output_from_probabilities({"a": 0.4, "b": 0.3, "c": 0.3}, None, rules).action == "unsure"


def test_no_rule_no_action() -> None:
    assert output_from_probabilities({False: 0.5, True: 0.5}, "true", []).action is None
    assert choose_action([ActionRule(when_probability_at_least=0.9, action="block")], probability=0.5) is None


def test_regression_value_and_value_rules() -> None:
    rules = [ActionRule(when_value_at_least=100.0, action="escalate"), ActionRule(otherwise="ignore")]
    assert output_from_value(150.0, rules).action == "escalate"
    assert output_from_value(99.9, rules) == output_from_value(99.9, rules)
    assert output_from_value(99.9, rules).action == "ignore"
    assert output_from_value(3, []).value == 3.0
    # Probability rules never hold for a regressor, and value rules never for a classifier.
    assert choose_action([ActionRule(when_probability_at_least=0.0, action="x")], value=5.0) is None
    assert choose_action([ActionRule(when_value_at_least=0.0, action="x")], probability=0.9) is None


def test_a_classifier_output_that_is_not_a_prediction_is_an_error() -> None:
    with pytest.raises(ModelOutputError):
        output_from_probabilities({True: math.nan, False: 0.5}, "true", [])


def test_a_classifier_with_no_opinion_yet_gets_no_class_and_the_default_action() -> None:
    from river import tree

    rules = [ActionRule(when_probability_at_least=0.8, action="block"), ActionRule(otherwise="allow")]
    untrained = tree.HoeffdingTreeClassifier()
    assert untrained.predict_proba_one({"amount": 1.0}) == {}, "river's untrained tree has no opinion"
    output = output_from_probabilities(untrained.predict_proba_one({"amount": 1.0}), "true", rules)
    assert output == ModelOutput(predicted_class=None, probabilities={}, value=None, action="allow")


@pytest.mark.parametrize("bad", [None, "x", math.inf, math.nan])
def test_a_regressor_output_that_is_not_a_number_is_an_error(bad: object) -> None:
    with pytest.raises(ModelOutputError):
        output_from_value(bad, [])


def test_record_fields_fit_the_prediction_schema(catalog) -> None:
    fields = {f["name"] for f in catalog["predictions"].schema.parsed["fields"]}
    assert set(output_from_value(1.0, []).record_fields()) <= fields


def test_predict_uses_the_task() -> None:
    from river import linear_model

    regressor = linear_model.LinearRegression(intercept_init=2.0)
    spec = ModelSpec(name="m", task="regression", estimator="river.linear_model.LinearRegression")
    assert predict(regressor, {}, spec).value == 2.0


def test_default_prediction_per_task() -> None:
    base = {"name": "m", "estimator": "river.linear_model.LogisticRegression"}
    assert default_output(ModelSpec(task="classification", **base)) is None
    as_class = default_output(ModelSpec(task="classification", default_prediction="false", **base))
    assert as_class.predicted_class == "false"
    as_probability = default_output(ModelSpec(task="classification", default_prediction=0.9, positive_class="true",
                                              actions=FRAUD_RULES, **base))
    assert as_probability.probabilities == {"true": 0.9}
    assert as_probability.action == "block"
    regression = default_output(ModelSpec(name="m", task="regression", estimator="river.linear_model.LinearRegression",
                                          default_prediction=12.5))
    assert regression.value == 12.5


def test_stable_share_is_deterministic_uniform_and_salted() -> None:
    ids = [f"txn-{i}" for i in range(20_000)]
    shares = [stable_share(i, "canary") for i in ids]
    assert shares == [stable_share(i, "canary") for i in ids]
    assert all(0.0 <= s < 1.0 for s in shares)
    assert abs(sum(s < 0.1 for s in shares) / len(ids) - 0.1) < 0.01
    explain = [stable_share(i, "explain") < 0.1 for i in ids]
    canary = [s < 0.1 for s in shares]
    both = sum(a and b for a, b in zip(explain, canary, strict=True)) / len(ids)
    assert abs(both - 0.01) < 0.005, "salts make the two splits independent"


def test_in_share_edges() -> None:
    assert all(in_share(f"e{i}", "s", 1.0) for i in range(100))
    assert not any(in_share(f"e{i}", "s", 0.0) for i in range(100))
