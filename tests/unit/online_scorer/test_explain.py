"""Explanations: exact linear contributions, and perturbation for every other model."""

from __future__ import annotations

import doctest
import math
import random

import pytest
from river import compose, linear_model, preprocessing, tree

import streamloop.ml.explain as explain_module
from streamloop.contracts.learning_specs import ModelSpec
from streamloop.ml import assemble_features, build_model
from streamloop.ml.explain import LINEAR, PERTURBATION, explain, linear_contributions, perturbation_contributions
from streamloop.ml.prediction import predict
from streamloop.ml.training import training_pair
from tests.unit.online_scorer.fakes import categorical_features, numeric_features, trained_model


def test_doctests_run() -> None:
    assert doctest.testmod(explain_module).failed == 0


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_linear_contributions_plus_intercept_are_the_logit(spec) -> None:
    model = trained_model(spec)
    rng = random.Random(3)
    for _ in range(50):
        numeric, categorical = numeric_features(rng), categorical_features(rng)
        x = assemble_features(numeric, categorical)
        explanation = linear_contributions(model, x, categorical)
        assert explanation.method == LINEAR
        score = explanation.intercept + math.fsum(c.contribution for c in explanation.contributions)
        z = model["StandardScaler"].transform_one(x)
        # The decision score river itself computes, and the log-odds of its probability.
        assert score == pytest.approx(model["LogisticRegression"]._raw_dot_one(z), rel=1e-12, abs=1e-12)
        assert score == pytest.approx(_logit(model.predict_proba_one(x)[True]), rel=1e-9, abs=1e-9)
        assert len(explanation.contributions) == len(x)


def test_each_contribution_is_weight_times_standardized_value(spec) -> None:
    model = trained_model(spec)
    x = {"amount": 420.0, "distance_from_home_km": 3.0}
    explanation = linear_contributions(model, x)
    scaler, estimator = model["StandardScaler"], model["LogisticRegression"]
    for c in explanation.contributions:
        standardized = (x[c.feature] - scaler.means[c.feature]) / scaler.vars[c.feature] ** 0.5
        assert c.contribution == pytest.approx(estimator.weights[c.feature] * standardized, rel=1e-12)
        assert c.value == x[c.feature]


def test_linear_regression_without_scaler_sums_to_the_value() -> None:
    model = linear_model.LinearRegression(intercept_init=0.5)
    rng = random.Random(1)
    for _ in range(200):
        x = {"a": rng.random(), "b": rng.random()}
        model.learn_one(x, 3 * x["a"] - x["b"])
    x = {"a": 0.3, "b": 0.9}
    explanation = linear_contributions(model, x)
    assert explanation.intercept + math.fsum(c.contribution for c in explanation.contributions) == pytest.approx(
        model.predict_one(x), rel=1e-12)


def test_top_k_are_the_largest_in_magnitude_and_one_hot_features_show_their_category(spec) -> None:
    model = trained_model(spec)
    numeric, categorical = {"amount": 480.0, "distance_from_home_km": 400.0}, {"merchant_category": "jewelry"}
    x = assemble_features(numeric, categorical)
    full = linear_contributions(model, x, categorical)
    top = explain(model, x, task="classification", positive_class="true", top_k=2, categorical=categorical)
    assert [c.feature for c in top.contributions] == [c.feature for c in full.contributions[:2]]
    magnitudes = [abs(c.contribution) for c in full.contributions]
    assert magnitudes == sorted(magnitudes, reverse=True)
    shown = {c.feature: c.value for c in full.contributions}
    assert shown["merchant_category"] == "jewelry"
    assert shown["amount"] == 480.0


def test_top_k_is_the_start_of_the_full_ranking_ties_broken_by_shown_name_then_position(spec) -> None:
    # A new model's weights are all 0, so every contribution ties: the ranking then follows the
    # shown name (a one-hot feature is shown as its field: "m" sorts before "m0", "m=x" after).
    untrained = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    x = {"b": 1.0, "m0": 1.0, "m=x": 1.0, "a": 2.0}
    for top_k in (1, 2, 3, 4, None):
        explanation = linear_contributions(untrained, x, {"m": "x"}, top_k=top_k)
        assert [c.feature for c in explanation.contributions] == ["a", "b", "m", "m0"][:top_k]
        assert [c.value for c in explanation.contributions] == [2.0, 1.0, "x", 1.0][:top_k]
    model = trained_model(spec)
    rng = random.Random(5)
    for _ in range(30):
        numeric, categorical = numeric_features(rng), categorical_features(rng)
        x = assemble_features(numeric, categorical)
        for method in (linear_contributions, lambda m, x, *args, **kw: perturbation_contributions(
                m, x, "classification", "true", *args, **kw)):
            full = method(model, x, categorical).contributions
            for top_k in (1, 3, len(full)):
                assert method(model, x, categorical, top_k=top_k).contributions == full[:top_k]


@pytest.mark.parametrize(("positive", "negative"), [("1", "0"), ("false", "true")])
def test_a_positive_class_of_any_name_is_explained_toward_that_class(spec, positive: str, negative: str) -> None:
    # The model learns positive-vs-rest as True/False whatever the classes are called, so its
    # log-odds are the positive class's: a perfect sum, and the far, big purchase pushes toward it.
    model_spec = ModelSpec.model_validate({**spec.model.model_dump(), "positive_class": positive,
                                           "negative_class": negative})
    model = build_model(model_spec)
    rng = random.Random(7)
    for _ in range(500):
        numeric, categorical = numeric_features(rng), categorical_features(rng)
        label = positive if numeric["amount"] + numeric["distance_from_home_km"] > 600 else negative
        model.learn_one(*training_pair(model_spec, {"numeric": numeric, "categorical": categorical, "label": label}))
    x = assemble_features({"amount": 900.0, "distance_from_home_km": 700.0}, {"merchant_category": "grocery"})
    p_positive = predict(model, x, model_spec).probabilities[positive]
    assert p_positive > 0.9
    for method in ("linear", "perturbation"):
        if method == "linear":
            explanation = linear_contributions(model, x)
            score = explanation.intercept + math.fsum(c.contribution for c in explanation.contributions)
            assert score == pytest.approx(_logit(p_positive), rel=1e-9, abs=1e-9)
        else:
            explanation = perturbation_contributions(model, x, "classification", positive)
        by_feature = {c.feature: c.contribution for c in explanation.contributions}
        assert by_feature["amount"] > 0 and by_feature["distance_from_home_km"] > 0, (method, by_feature)


def test_non_linear_models_are_explained_by_perturbation() -> None:
    model = compose.Pipeline(preprocessing.StandardScaler(), tree.HoeffdingTreeClassifier(grace_period=20))
    rng = random.Random(5)
    for _ in range(2000):
        x = {"signal": rng.random(), "noise": rng.random()}
        model.learn_one(x, x["signal"] > 0.5)
    x = {"signal": 0.95, "noise": 0.5}
    explanation = explain(model, x, task="classification", positive_class="true", top_k=2)
    assert explanation.method == PERTURBATION
    assert explanation.intercept is None
    by_feature = {c.feature: c.contribution for c in explanation.contributions}
    base = model.predict_proba_one(x)[True]
    assert by_feature["signal"] == pytest.approx(base - model.predict_proba_one({"signal": 0.0, "noise": 0.5})[True])
    assert by_feature["signal"] > 0.5, "zeroing the feature that makes it True lowers p(True)"
    assert abs(by_feature["signal"]) >= abs(by_feature["noise"])


def test_perturbation_for_a_regressor_measures_the_value() -> None:
    model = tree.HoeffdingTreeRegressor(grace_period=20)
    rng = random.Random(2)
    for _ in range(1000):
        x = {"a": rng.random(), "b": rng.random()}
        model.learn_one(x, 10 * x["a"])
    x = {"a": 0.9, "b": 0.1}
    explanation = perturbation_contributions(model, x, "regression")
    contributions = {c.feature: c.contribution for c in explanation.contributions}
    assert contributions["a"] == pytest.approx(model.predict_one(x) - model.predict_one({"a": 0.0, "b": 0.1}))
    assert contributions["a"] > 5


@pytest.mark.parametrize("kind", ["linear", "perturbation"])
def test_columns_the_model_never_learned_rank_as_zero_and_never_grow_it(spec, kind: str) -> None:
    model = trained_model(spec) if kind == "linear" else compose.Pipeline(
        preprocessing.StandardScaler(), tree.HoeffdingTreeClassifier())
    if kind == "perturbation":
        rng = random.Random(5)
        for _ in range(300):
            numeric, categorical = numeric_features(rng), categorical_features(rng)
            model.learn_one(assemble_features(numeric, categorical), numeric["amount"] > 500)
    learned = dict(model["StandardScaler"].vars)
    rng = random.Random(9)
    for i in range(200):
        numeric, categorical = numeric_features(rng), {**categorical_features(rng), "merchant_category": f"new-{i}"}
        x = assemble_features(numeric, categorical)
        full = explain(model, x, task="classification", positive_class="true", top_k=None, categorical=categorical)
        assert len(full.contributions) == len(x), "every column is ranked, learned or not"
        shown = next(c for c in full.contributions if c.feature == "merchant_category")
        assert (shown.value, shown.contribution) == (f"new-{i}", 0.0), "never learned: no effect"
    assert dict(model["StandardScaler"].vars) == learned, "explaining grew nothing"


def test_an_untrained_model_still_names_its_top_features() -> None:
    model = compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())
    x = {"amount": 12.0, "distance_km": 3.0, "hour": 7.0, "merchant_category=fuel": 1.0}
    explanation = explain(model, x, task="classification", positive_class="true", top_k=3,
                          categorical={"merchant_category": "fuel"})
    assert [c.contribution for c in explanation.contributions] == [0.0, 0.0, 0.0]
    assert [c.feature for c in explanation.contributions] == ["amount", "distance_km", "hour"]
    assert model["StandardScaler"].vars == {}
