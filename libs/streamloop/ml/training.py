"""A labeled example as an estimator learns it: the served features assembled, the label as a target.

One definition for everyone who trains on labeled examples: the retrainer (online challenger and
rebuilds) and the demo's offline reference model, so they learn exactly what the scorer serves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from streamloop.contracts.pipeline import ModelSpec
from streamloop.ml.estimators import learned_classes
from streamloop.ml.exceptions import InvalidLabel
from streamloop.ml.features import assemble_features
from streamloop.ml.promotion import class_key

_BOOLEAN_CLASSES = {"true": True, "false": False}


def label_problem(model: ModelSpec, label: Any) -> str | None:
    """Why ``model`` cannot learn ``label``, or None.

    A regressor needs a finite number, which a boolean is not here (the collector refuses one
    too). A classifier takes any label: with a positive class it learns that class against the
    rest, as accuracy, the promotion losses and the concept detectors count it
    (docs/pipeline-spec.md), so a label that is neither named class is a negative, not an error.
    """
    if label is None:
        return "the example has no label"
    if model.task == "regression" and (isinstance(label, bool) or not isinstance(label, int | float)
                                       or not math.isfinite(label)):
        return f"a regression label must be a finite number, not {label!r}"
    return None


def target(model: ModelSpec, label: Any, estimator: Any = None) -> Any:
    """The label as ``estimator`` learns it; InvalidLabel for one it cannot learn (``label_problem``).

    A classifier with a positive class learns a boolean (river's binary classifiers need one).
    Without one, a class is its ``class_key`` (1.0 is "1"), but ``true`` and ``false`` in any
    form (a boolean or its text) are one class each, as the records, the metrics and the spec
    read them: two forms of one class broke the estimators (a tree sorts its classes, and
    True < "true" raises; LogisticRegression takes ``int(label)``, and int("true") raises). They
    are the booleans, except for an ``estimator`` that has learned text classes (a tree fed
    "true"/"false" before booleans were learned as such, or one whose other classes are text):
    it keeps the text, which it can sort with what it knows. A regressor learns a float.
    """
    problem = label_problem(model, label)
    if problem is not None:
        raise InvalidLabel(problem)
    if model.task == "regression":
        return float(label)
    if model.positive_class is not None:
        return class_key(label) == class_key(model.positive_class)
    key = class_key(label)
    if key not in _BOOLEAN_CLASSES:
        return key
    known = learned_classes(estimator) if estimator is not None else None
    if known and any(isinstance(known_class, str) for known_class in known):
        return key
    return _BOOLEAN_CLASSES[key]


def training_pair(model: ModelSpec, example: Mapping[str, Any],
                  estimator: Any = None) -> tuple[dict[str, float], Any]:
    """The features and the target ``estimator`` learns (see ``target``; None: a fresh one)."""
    x = assemble_features(example.get("numeric") or {}, example.get("categorical") or {})
    return x, target(model, example["label"], estimator)
