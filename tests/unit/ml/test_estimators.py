"""The spec's model as built: a StandardScaler step scales numbers and leaves one-hot columns alone."""

from __future__ import annotations

import random

import pytest
from river import linear_model, preprocessing

from streamloop.contracts import load_pipeline
from streamloop.ml import assemble_features, build_model
from streamloop.ml.estimators import IndicatorPassthroughScaler
from streamloop.ml.explain import linear_contributions
from tests.conftest import DEMO_SPEC


def events(n: int, seed: int = 3):
    """Fraud is a jewelry purchase; the amount is noise. Only the categorical feature tells."""
    rng = random.Random(seed)
    for _ in range(n):
        merchant = rng.choice(["grocery", "fuel", "jewelry"])
        yield assemble_features({"amount": rng.uniform(1, 500)}, {"merchant_category": merchant}), merchant == "jewelry"


def test_one_hot_columns_pass_through_and_numbers_are_scaled_as_river_scales_them() -> None:
    ours, river_scaler = IndicatorPassthroughScaler(), preprocessing.StandardScaler()
    for x, _ in events(200):
        ours.learn_one(x)
        river_scaler.learn_one({"amount": x["amount"]})
    x = {"amount": 120.0, "merchant_category=fuel": 1.0}
    assert ours.transform_one(x) == {"amount": river_scaler.transform_one({"amount": 120.0})["amount"],
                                     "merchant_category=fuel": 1.0}
    # river's own scaler turns an indicator into 0.0: it is 1.0 whenever present, so its variance is 0.
    plain = preprocessing.StandardScaler()
    for x, _ in events(200):
        plain.learn_one(x)
    assert plain.transform_one({"merchant_category=fuel": 1.0}) == {"merchant_category=fuel": 0.0}


def test_the_demo_model_learns_from_its_categorical_features() -> None:
    spec = load_pipeline(DEMO_SPEC).model
    model = build_model(spec)
    assert list(model.steps) == ["StandardScaler", "LogisticRegression"], "steps keep the spec's names"
    assert isinstance(model["StandardScaler"], preprocessing.StandardScaler)
    for x, y in events(3_000):
        model.learn_one(x, y)
    weights = model["LogisticRegression"].weights
    assert weights["merchant_category=jewelry"] > 1.0 > 0 > weights["merchant_category=grocery"]
    hits = sum(model.predict_one(x) == y for x, y in events(1_000, seed=4))
    assert hits >= 990, "a jewelry purchase is fraud, and the model can see it"
    # The same spec with river's scaler could not: the indicator columns reach the model as 0.0.
    river_pipeline = preprocessing.StandardScaler() | linear_model.LogisticRegression(**spec.params)
    for x, y in events(3_000):
        river_pipeline.learn_one(x, y)
    assert river_pipeline["LogisticRegression"].weights["merchant_category=jewelry"] == 0.0


def test_explanations_name_the_categorical_feature_that_decided() -> None:
    spec = load_pipeline(DEMO_SPEC).model
    model = build_model(spec)
    for x, y in events(3_000):
        model.learn_one(x, y)
    x = assemble_features({"amount": 250.0}, {"merchant_category": "jewelry"})
    explanation = linear_contributions(model, x, spec.positive_class, {"merchant_category": "jewelry"})
    top = explanation.contributions[0]
    assert (top.feature, top.value) == ("merchant_category", "jewelry")
    assert top.contribution == pytest.approx(model["LogisticRegression"].weights["merchant_category=jewelry"])
