"""A labeled example as an estimator learns it: the served features assembled, the label as a target.

One definition for everyone who trains on labeled examples: the retrainer (online challenger and
rebuilds) and the demo's offline reference model, so they learn exactly what the scorer serves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from streamloop.contracts.learning_specs import ModelSpec
from streamloop.ml.estimators import learned_classes, learns_any_class, spec_learns_any_class
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
    Without one, a class is learned as its ``class_key``, the name the records, the metrics and
    the spec give it: 1.0 is "1", and ``true`` and ``false`` in any form (a boolean or its text)
    are "true" and "false". A model's classes must be of one type (a tree sorts them, and
    True < "fraud" raises), and the labels may name any class later, so the form is the
    estimator's, never the order the labels came in: every learner (the online challenger, a
    catch-up replay, a rebuild's fresh model) learns one label alike. Two exceptions keep the
    booleans for ``true`` and ``false``: a binary classifier (LogisticRegression and river's other
    linear ones, ``learns_any_class``), which takes ``int(label)``; and a model that has learned
    them as booleans (fed them so before text classes were learned as text; ``learned_classes``
    asks every multiclass model, SoftmaxRegression and the one-vs-rest wrapper too), which keeps
    them and cannot learn another class beside them: InvalidLabel, until a rebuild's model, which
    learns every class as text, replaces it. A regressor learns a float. ``estimator`` None is a
    fresh model of ``model``.
    """
    problem = label_problem(model, label)
    if problem is not None:
        raise InvalidLabel(problem)
    if model.task == "regression":
        return float(label)
    if model.positive_class is not None:
        return class_key(label) == class_key(model.positive_class)
    key = class_key(label)
    boolean = _BOOLEAN_CLASSES.get(key)
    if not (learns_any_class(estimator) if estimator is not None else spec_learns_any_class(model)):
        return key if boolean is None else boolean
    known = learned_classes(estimator) if estimator is not None else None
    if not known or not any(isinstance(known_class, bool) for known_class in known):
        return key
    if boolean is None:
        raise InvalidLabel(f"the model learned true and false as booleans (before classes were learned as "
                           f"text) and cannot learn {key!r} beside them; a rebuild's model learns every class "
                           f"as text")
    return boolean


def training_pair(model: ModelSpec, example: Mapping[str, Any],
                  estimator: Any = None) -> tuple[dict[str, float], Any]:
    """The features and the target ``estimator`` learns (see ``target``; None: a fresh one)."""
    x = assemble_features(example.get("numeric") or {}, example.get("categorical") or {})
    return x, target(model, example["label"], estimator)
