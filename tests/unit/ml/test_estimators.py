"""The spec's model as built: scalers leave one-hot columns alone, and non-linear models see absent ones as 0."""

from __future__ import annotations

import random

import pytest
from river import linear_model, preprocessing

from streamloop.contracts import load_pipeline
from streamloop.contracts.learning_specs import ModelSpec
from streamloop.ml import assemble_features, build_model
from streamloop.ml.estimators import IndicatorDensifier, IndicatorPassthroughScaler
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
    explanation = linear_contributions(model, x, {"merchant_category": "jewelry"})
    top = explanation.contributions[0]
    assert (top.feature, top.value) == ("merchant_category", "jewelry")
    assert top.contribution == pytest.approx(model["LogisticRegression"].weights["merchant_category=jewelry"])


def noisy_events(n: int, seed: int = 3):
    """Fraud is 90 % likely on a jewelry purchase and 5 % on any other; the amount is noise."""
    rng = random.Random(seed)
    for _ in range(n):
        merchant = rng.choice(["grocery", "fuel", "jewelry"])
        x = assemble_features({"amount": rng.lognormvariate(3, 1)}, {"merchant_category": merchant})
        yield x, rng.random() < (0.9 if merchant == "jewelry" else 0.05)


def fraud_rates(model, seed: int = 9) -> dict[str, float]:
    """The model's mean fraud probability per merchant, on fresh events."""
    by_merchant: dict[str, list[float]] = {}
    for x, _ in noisy_events(3_000, seed=seed):
        merchant = next(k.split("=", 1)[1] for k in x if k.startswith("merchant_category="))
        by_merchant.setdefault(merchant, []).append(model.predict_proba_one(x).get(True, 0.0))
    return {m: sum(p) / len(p) for m, p in by_merchant.items()}


@pytest.mark.parametrize("estimator", ["river.tree.HoeffdingTreeClassifier", "river.naive_bayes.GaussianNB"])
def test_a_non_linear_model_sees_the_absent_one_hot_columns_as_zero(estimator: str) -> None:
    spec = ModelSpec(name="m", task="classification", estimator=estimator, positive_class="true")
    model = build_model(spec)
    assert list(model.steps)[0] == "IndicatorDensifier"
    for x, y in noisy_events(20_000):
        model.learn_one(x, y)
    rates = fraud_rates(model)
    # Without the zeros the model only ever saw each indicator at 1.0 and gave every merchant the same rate.
    assert rates["jewelry"] > 0.8 and rates["grocery"] < 0.15 and rates["fuel"] < 0.15, rates


def test_the_densifier_fills_in_only_columns_it_learned_and_at_most_its_cap_per_feature() -> None:
    densifier = IndicatorDensifier(max_per_feature=2)
    numeric_only = {"amount": 3.0}
    densifier.learn_one(numeric_only)
    assert densifier.transform_one(numeric_only) is numeric_only, "nothing to fill in: the event as it is"
    for merchant in ("fuel", "grocery", "jewelry"):
        densifier.learn_one({"amount": 1.0, f"merchant_category={merchant}": 1.0, "country=DE": 1.0})
    assert densifier.transform_one({"amount": 2.0, "merchant_category=fuel": 1.0}) == {
        "amount": 2.0, "merchant_category=fuel": 1.0, "merchant_category=grocery": 0.0, "country=DE": 0.0}
    assert "merchant_category=jewelry" not in densifier.transform_one({}), "the third merchant is over the cap"


def test_a_linear_model_gets_no_densifier_and_every_river_scaler_passes_indicators_through() -> None:
    linear = ModelSpec(name="m", task="classification", estimator="river.linear_model.LogisticRegression",
                       positive_class="true")
    assert isinstance(build_model(linear), linear_model.LogisticRegression), "an absent feature adds 0 to a dot product"
    for scaler in ("MinMaxScaler", "MaxAbsScaler", "RobustScaler", "AdaptiveStandardScaler", "StandardScaler"):
        model = build_model(linear.model_copy(update={"preprocessing": [f"river.preprocessing.{scaler}"]}))
        assert isinstance(model[scaler], getattr(preprocessing, scaler)), scaler
        for x, y in events(3_000):
            model.learn_one(x, y)
        assert model["LogisticRegression"].weights["merchant_category=jewelry"] > 1.0, scaler
