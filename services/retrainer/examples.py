"""Labeled examples as a model sees them: the served features assembled, the label as a target.

Both the online challenger and a rebuild learn through ``training_pair`` (from
``streamloop.ml.training``, shared with the demo's offline reference model) and score through
``score``, so the two kinds of candidate are built and evaluated the same way the scorer serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streamloop.contracts.learning_specs import ModelSpec
from streamloop.ml.features import feature_problem
from streamloop.ml.prediction import ModelOutputError, predict
from streamloop.ml.training import label_problem


def score(estimator: Any, model: ModelSpec, x: Mapping[str, float]) -> dict[str, Any]:
    """The prediction fields (``predicted_class``, ``probabilities``, ``value``) a loss is computed from."""
    try:
        return predict(estimator, x, model).record_fields()
    except ModelOutputError:
        return {}


def learnable(example: Mapping[str, Any]) -> bool:
    """Features a model may learn from (streamloop.ml.features policy: no NaN, inf, huge or oversized input).

    The online learner lets ``training_pair`` raise, so such a record is dead-lettered with the
    reason; a rebuild leaves it out instead of failing on it.
    """
    return feature_problem(example.get("numeric") or {}, example.get("categorical") or {}) is None


def valid(model: ModelSpec, example: Mapping[str, Any]) -> bool:
    """A label the model may learn (``streamloop.ml.training.label_problem``).

    As with ``learnable``, the online learner lets ``training_pair`` raise, and a rebuild leaves
    such an example out.
    """
    return label_problem(model, example.get("label")) is None
