"""Building the spec's river model: preprocessing steps piped into the estimator.

A ``river.preprocessing.StandardScaler`` step is built as :class:`IndicatorPassthroughScaler`:
it scales the numeric features and passes the one-hot indicator columns (``name=value``, see
``streamloop.ml.features``) through as they are. river's scaler keeps statistics only for the
features present in an event, and an indicator is present only when it is 1.0: its variance is
0 and river scales it to 0.0, so a linear model behind it could never learn from a categorical
feature (measured on the card demo: every ``merchant_category=`` and ``country=`` weight stayed 0).
"""

from __future__ import annotations

import importlib
from typing import Any

from river import base, compose, preprocessing

from streamloop.contracts.pipeline import ModelSpec
from streamloop.ml.exceptions import EstimatorSpecError
from streamloop.ml.features import INDICATOR_SEPARATOR


class IndicatorPassthroughScaler(preprocessing.StandardScaler):
    """river's StandardScaler on the numeric features; one-hot indicator columns pass through unscaled."""

    def transform_one(self, x: dict) -> dict:
        # river keeps (unused) statistics for the indicators too: cheaper than filtering every event.
        scaled = super().transform_one(x)
        for name, value in x.items():
            if INDICATOR_SEPARATOR in name:
                scaled[name] = value
        return scaled


_BUILT_AS = {"river.preprocessing.StandardScaler": IndicatorPassthroughScaler}


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
    if not steps:
        return estimator
    return compose.Pipeline(*steps, estimator)


def final_estimator(model: base.Estimator) -> base.Estimator:
    """The estimator at the end of a pipeline (the model itself when it is not a pipeline)."""
    if isinstance(model, compose.Pipeline):
        return list(model.steps.values())[-1]
    return model
