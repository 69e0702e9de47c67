"""The columns a served model has learned, so that scoring never grows it.

river's scalers keep an entry for every feature name they are asked to transform, even when only
predicting (their statistics are defaultdicts), so a producer sending a new category value on
every event (a one-hot feature with no ``categories`` in the spec) would grow every served model
without end. A column no step has learned adds nothing to a linear model's score (its weight is
0) and is not split on by a tree, so :func:`known_only` drops it before a served model predicts:
the online scorer on both its paths, and the model publisher scoring deployed versions on held-out
examples. A learner (the retrainer's) is given every column: it learns them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from river import preprocessing

from streamloop.ml.estimators import IndicatorDensifier

# Per river scaler, a dict its learn_one fills for every feature it learns and its transform_one
# reads (a defaultdict: reading an unseen name adds it).
_STATISTICS: tuple[tuple[type, str], ...] = (
    (preprocessing.StandardScaler, "vars"),
    (preprocessing.MinMaxScaler, "min"),
    (preprocessing.MaxAbsScaler, "abs_max"),
    (preprocessing.RobustScaler, "median"),
    (preprocessing.AdaptiveStandardScaler, "vars"),
)


def learned_columns(model: Any) -> dict[str, Any] | None:
    """The columns the model's first scaler has learned (as its keys), or None when it has no such scaler.

    A pipeline step learns every column that reaches it, and the spec's preprocessing comes first
    (after the IndicatorDensifier, which only fills in columns already learned), so the first
    scaler has learned every column any step has. Without a scaler nothing grows when predicting
    (river's linear models, trees, naive Bayes and k-NN were checked), and nothing is dropped.
    """
    steps = getattr(model, "steps", None)
    if not isinstance(steps, dict):  # not a pipeline
        return None
    for step in steps.values():
        attribute = _statistics_of(type(step))
        if attribute == _PASS:
            continue
        statistics = getattr(step, attribute, None) if attribute is not None else None
        # Any other first step may rename columns: no telling what it learned.
        return statistics if isinstance(statistics, dict) else None
    return None


_PASS = ""  # a step that renames no column and learns none of its own (the IndicatorDensifier)


@functools.cache
def _statistics_of(step_class: type) -> str | None:
    # Per class, not per event: these subclass checks cost half as much as the prediction.
    if issubclass(step_class, IndicatorDensifier):
        return _PASS
    return next((attribute for kind, attribute in _STATISTICS if issubclass(step_class, kind)), None)


def known_only(model: Any, x: Mapping[str, float]) -> Mapping[str, float]:
    """``x`` without the columns ``model`` has never learned (``x`` itself when it has none)."""
    learned = learned_columns(model)
    if learned is None or x.keys() <= learned.keys():
        return x
    return {name: value for name, value in x.items() if name in learned}
