"""Building the spec's river model: preprocessing steps piped into the estimator.

Two adaptations keep categorical features visible to every river model. Each categorical feature
reaches the model as one-hot indicator columns (``name=value``, see ``streamloop.ml.features``),
and only the hot column is present in an event:

- **Scalers pass indicators through.** A river scaler keeps statistics only for the features
  present in an event; an indicator is present only when it is 1.0, so its variance (or range)
  is 0 and river scales it to 0.0. A linear model behind it could never learn from a categorical
  feature (measured on the card demo: every ``merchant_category=`` and ``country=`` weight stayed
  0). Each river scaler step is built as its ``IndicatorPassthrough*`` subclass below.
- **Non-linear models see the absent columns as 0.0.** A tree or naive Bayes model that only
  ever sees an indicator at 1.0 cannot split on it or estimate it (measured: a Hoeffding tree
  gave jewelry and grocery the same fraud probability, 0.19, where the truth was 0.90 and 0.05).
  :class:`IndicatorDensifier` goes first in their pipeline and fills in the columns the model has
  seen. A linear model needs none: an absent feature and a 0.0 add the same to its dot product.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Collection
from typing import Any

from river import base, compose, linear_model, preprocessing

from streamloop.contracts.learning_specs import ModelSpec
from streamloop.ml.exceptions import EstimatorSpecError
from streamloop.ml.features import INDICATOR_SEPARATOR


class _PassIndicators:
    """Mixed into a river scaler: the scaler's transform, then every indicator column as it came."""

    def transform_one(self, x: dict) -> dict:
        # river keeps (unused) statistics for the indicators too: cheaper than filtering every event.
        scaled = super().transform_one(x)  # type: ignore[misc]
        for name, value in x.items():
            if INDICATOR_SEPARATOR in name:
                scaled[name] = value
        return scaled


class IndicatorPassthroughScaler(_PassIndicators, preprocessing.StandardScaler):
    """river's StandardScaler on the numeric features; one-hot indicator columns pass through unscaled."""


class IndicatorPassthroughMinMaxScaler(_PassIndicators, preprocessing.MinMaxScaler):
    """river's MinMaxScaler on the numeric features; one-hot indicator columns pass through."""


class IndicatorPassthroughMaxAbsScaler(_PassIndicators, preprocessing.MaxAbsScaler):
    """river's MaxAbsScaler on the numeric features; one-hot indicator columns pass through."""


class IndicatorPassthroughRobustScaler(_PassIndicators, preprocessing.RobustScaler):
    """river's RobustScaler on the numeric features; one-hot indicator columns pass through."""


class IndicatorPassthroughAdaptiveStandardScaler(_PassIndicators, preprocessing.AdaptiveStandardScaler):
    """river's AdaptiveStandardScaler on the numeric features; one-hot indicator columns pass through."""


class IndicatorDensifier(base.Transformer):
    """Every one-hot column the model has learned, 0.0 in an event that does not have it.

    At most ``max_per_feature`` columns per categorical feature are filled in (the first ones
    seen): a feature with thousands of categories would otherwise make every event that wide.
    """

    def __init__(self, max_per_feature: int = 64) -> None:
        self.max_per_feature = max_per_feature
        self.columns: dict[str, float] = {}
        self._per_feature: dict[str, int] = {}

    def learn_one(self, x: dict) -> None:
        for name in x:
            if INDICATOR_SEPARATOR in name and name not in self.columns:
                feature = name.split(INDICATOR_SEPARATOR, 1)[0]
                count = self._per_feature.get(feature, 0)
                if count < self.max_per_feature:
                    self._per_feature[feature] = count + 1
                    self.columns[name] = 0.0

    def transform_one(self, x: dict) -> dict:
        if not self.columns:
            return x
        return {**self.columns, **x}


_BUILT_AS = {
    "river.preprocessing.StandardScaler": IndicatorPassthroughScaler,
    "river.preprocessing.MinMaxScaler": IndicatorPassthroughMinMaxScaler,
    "river.preprocessing.MaxAbsScaler": IndicatorPassthroughMaxAbsScaler,
    "river.preprocessing.RobustScaler": IndicatorPassthroughRobustScaler,
    "river.preprocessing.AdaptiveStandardScaler": IndicatorPassthroughAdaptiveStandardScaler,
}


def _river_class(path: str) -> type:
    module_name, _, class_name = path.rpartition(".")
    if not path.startswith("river."):
        raise EstimatorSpecError(f"{path!r} is not a river class")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise EstimatorSpecError(f"cannot import {path}: {exc}") from exc


def build_model(spec: ModelSpec) -> base.Estimator:
    """A fresh, untrained model as the spec declares it."""
    estimator_class = _river_class(spec.estimator)
    try:
        estimator = estimator_class(**spec.params)
    except TypeError as exc:
        raise EstimatorSpecError(f"model.params do not fit {spec.estimator}: {exc}") from exc
    # Steps keep the spec's names (``model["StandardScaler"]``), whichever class is built for them.
    steps: list[Any] = [(path.rpartition(".")[2], (_BUILT_AS.get(path) or _river_class(path))())
                        for path in spec.preprocessing]
    if spec.task == "classification" and not isinstance(estimator, base.Classifier):
        raise EstimatorSpecError(f"{spec.estimator} is not a classifier but model.task is classification")
    if spec.task == "regression" and not isinstance(estimator, base.Regressor):
        raise EstimatorSpecError(f"{spec.estimator} is not a regressor but model.task is regression")
    if not spec.estimator.startswith("river.linear_model."):
        steps.insert(0, ("IndicatorDensifier", IndicatorDensifier()))
    if not steps:
        return estimator
    return compose.Pipeline(*steps, estimator)


def final_estimator(model: base.Estimator) -> base.Estimator:
    """The estimator at the end of a pipeline (the model itself when it is not a pipeline)."""
    if isinstance(model, compose.Pipeline):
        return list(model.steps.values())[-1]
    return model


# Where river's classifiers keep the classes they have learned: trees, kNN and NoChangeClassifier
# a set, the Mondrian tree a private set, naive Bayes a Counter of them.
_CLASS_ATTRIBUTES = ("classes", "_classes", "class_counts")


def learned_classes(model: base.Estimator) -> set[Any] | None:
    """The classes ``model`` has learned, in the form it learned them; None when it cannot say.

    A pipeline answers for its final step, an ensemble for its members (a wrapper ensemble's own
    model is the untrained template it copied), any other wrapper for the model it wraps, or for
    itself when that one has learned nothing (one-vs-rest trains copies of it). SoftmaxRegression
    keeps a weight vector per class. A multiclass model with no such list (PriorClassifier, the
    one-vs-rest wrapper) is asked for its probabilities of no features: it names every class it
    has learned. LogisticRegression and the other binary linear models keep none and are not asked:
    they take booleans only.
    """
    estimator = final_estimator(model)
    if isinstance(estimator, base.Ensemble):
        known = [classes for member in estimator if (classes := learned_classes(member)) is not None]
        return set().union(*known) if known else None
    classes = learned_classes(estimator._wrapped_model) if isinstance(estimator, base.Wrapper) else None
    if classes:
        return classes
    for name in _CLASS_ATTRIBUTES:
        attribute = getattr(estimator, name, None)
        if isinstance(attribute, Collection) and not isinstance(attribute, str):
            return set(attribute)
    if isinstance(estimator, linear_model.SoftmaxRegression):
        return set(estimator.weights)
    if learns_any_class(estimator):
        try:
            probabilities = estimator.predict_proba_one({})
        except Exception:  # noqa: BLE001 - a model that cannot predict without features cannot say
            probabilities = None
        if probabilities:
            return set(probabilities)
    return classes


def learns_any_class(model: base.Estimator) -> bool:
    """False for a binary classifier (LogisticRegression and river's other linear ones: ``int(label)``).

    river's own tag: a pipeline answers for its final step, a wrapper for the model it wraps.
    """
    return bool(getattr(final_estimator(model), "_multiclass", True))


def spec_learns_any_class(spec: ModelSpec) -> bool:
    """``learns_any_class`` for a fresh model of ``spec`` (one is built once per estimator and params)."""
    return _fresh_learns_any_class(spec.model_dump_json(include={"name", "task", "estimator", "params"}))


@functools.lru_cache(maxsize=32)
def _fresh_learns_any_class(spec_json: str) -> bool:
    return learns_any_class(build_model(ModelSpec.model_validate_json(spec_json)))
