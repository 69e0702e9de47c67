"""A labeled example as an estimator learns it: the served features assembled, the label as a target.

One definition for everyone who trains on labeled examples: the retrainer (online challenger and
rebuilds) and the demo's offline reference model, so they learn exactly what the scorer serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streamloop.contracts.pipeline import ModelSpec
from streamloop.ml.features import assemble_features
from streamloop.ml.promotion import class_key


def target(model: ModelSpec, label: Any) -> Any:
    """The label as the estimator learns it.

    A classifier with a positive class learns a boolean (river's binary classifiers need one);
    a boolean label stays boolean; other classes become their text. A regressor learns a float.
    """
    if model.task == "regression":
        return float(label)
    if model.positive_class is not None:
        return class_key(label) == class_key(model.positive_class)
    return label if isinstance(label, bool) else class_key(label)


def training_pair(model: ModelSpec, example: Mapping[str, Any]) -> tuple[dict[str, float], Any]:
    x = assemble_features(example.get("numeric") or {}, example.get("categorical") or {})
    return x, target(model, example["label"])
