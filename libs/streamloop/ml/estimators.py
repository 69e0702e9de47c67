"""Building the spec's river model: preprocessing steps piped into the estimator."""

from __future__ import annotations

import importlib
from typing import Any

from river import base, compose

from streamloop.contracts.pipeline import ModelSpec
from streamloop.ml.exceptions import EstimatorSpecError


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
    steps: list[Any] = [_river_class(path)() for path in spec.preprocessing]
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
