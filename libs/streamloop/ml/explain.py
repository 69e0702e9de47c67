"""Per-prediction explanations: the top-k features that moved one prediction, and by how much.

Two methods, recorded on the prediction as ``explanation_method``:

- ``linear_contribution``, for river's ``LogisticRegression`` / ``LinearRegression``, alone or
  behind ``StandardScaler`` steps in a ``Pipeline``: a feature's contribution is its weight times
  its standardized value, so the intercept plus every feature's contribution is the decision score
  (the positive class's log-odds, or the predicted value) up to float rounding. Cost: one pass
  over the features.
- ``perturbation_zero``, for every other model: a feature's contribution is how much the
  positive-class probability (or the value) falls when the feature is set to 0 (for a one-hot
  feature: when the category is absent). Setting to 0 rather than dropping the feature, because
  river trees send a missing feature down their most travelled branch, which often hides the
  feature's effect. Cost: one extra prediction per feature, which is why the spec samples the
  explained events (``explanations.sample_share``).

A column the model never learned contributes exactly 0 either way (no weight, standardized to 0,
no split), and asking the model would grow it (``streamloop.ml.learned_columns``): such columns are
ranked with 0 without reaching the model, so an untrained model's explanation still names features.

Examples
--------
>>> from river import linear_model
>>> model = linear_model.LinearRegression(intercept_init=1.0)
>>> model.learn_one({"a": 1.0, "b": 2.0}, 3.0)
>>> e = explain(model, {"a": 1.0, "b": 2.0}, task="regression", top_k=1)
>>> e.method, [c.feature for c in e.contributions]
('linear_contribution', ['b'])
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from river import compose, linear_model, preprocessing

from streamloop.ml.features import INDICATOR_SEPARATOR
from streamloop.ml.learned_columns import known_only
from streamloop.ml.prediction import label_text

LINEAR = "linear_contribution"
PERTURBATION = "perturbation_zero"

Task = Literal["classification", "regression"]


@dataclass(frozen=True, slots=True)
class Contribution:
    """One feature's effect; ``value`` is the feature as served (a category for a one-hot feature)."""

    feature: str
    value: float | str | None
    contribution: float

    def record(self) -> dict[str, Any]:
        return {"feature": self.feature, "value": self.value, "contribution": self.contribution}


@dataclass(frozen=True, slots=True)
class Explanation:
    """Contributions, largest effect first; ``intercept`` is set for the linear method only."""

    method: str
    contributions: tuple[Contribution, ...]
    intercept: float | None = None

    def top(self, k: int) -> Explanation:
        return Explanation(self.method, self.contributions[:k], self.intercept)


def explain(model: Any, x: Mapping[str, float], *, task: Task, positive_class: str | None = None,
            top_k: int = 3, categorical: Mapping[str, str] | None = None) -> Explanation:
    """The ``top_k`` largest contributions to the prediction of ``model`` for ``x``.

    ``x`` is the assembled feature dict; with ``categorical`` (the raw categorical features),
    a one-hot feature ``name=value`` is reported as feature ``name`` with value ``value``.
    """
    explanation = linear_contributions(model, x, categorical, top_k=top_k)
    if explanation is None:
        explanation = perturbation_contributions(model, x, task, positive_class, categorical, top_k=top_k)
    return explanation


def linear_parts(model: Any) -> tuple[list[Any], Any] | None:
    """(scaler steps, linear estimator) when ``model`` is explained exactly, else None."""
    steps = list(model.steps.values()) if isinstance(model, compose.Pipeline) else [model]
    *pre, final = steps
    if not isinstance(final, linear_model.LogisticRegression | linear_model.LinearRegression):
        return None
    if not all(isinstance(step, preprocessing.StandardScaler) for step in pre):
        return None
    return pre, final


def linear_contributions(model: Any, x: Mapping[str, float], categorical: Mapping[str, str] | None = None, *,
                         top_k: int | None = None) -> Explanation | None:
    """Each feature's weight x standardized value (the ``top_k`` largest, or all), or None when
    the model is not linear.

    A logistic model's score is the log-odds of True, which is the positive class whatever its
    name (``training.target``): the weights need no sign of their own.
    """
    parts = linear_parts(model)
    if parts is None:
        return None
    scalers, estimator = parts
    z: Mapping[str, float] = known_only(model, x)
    for scaler in scalers:
        z = scaler.transform_one(z)
    weights = estimator.weights
    contributions = [(name, weights.get(name, 0.0) * value) for name, value in z.items()]
    return Explanation(LINEAR, _ranked(contributions + _unlearned(z, x), x, categorical, top_k),
                       float(estimator.intercept))


def perturbation_contributions(model: Any, x: Mapping[str, float], task: Task, positive_class: str | None = None,
                               categorical: Mapping[str, str] | None = None, *,
                               top_k: int | None = None) -> Explanation:
    """Every feature's drop in the positive-class probability (or value) when it is set to 0."""
    served, x = x, known_only(model, x)
    if task == "classification":
        base = model.predict_proba_one(x)
        target = _target_label(base, positive_class)

        def score(features: Mapping[str, float]) -> float:
            return float(model.predict_proba_one(features).get(target, 0.0))

        baseline = float(base.get(target, 0.0))
    else:

        def score(features: Mapping[str, float]) -> float:
            return float(model.predict_one(features))

        baseline = score(x)
    contributions = [(name, baseline - score({**x, name: 0.0})) for name in x]
    return Explanation(PERTURBATION, _ranked(contributions + _unlearned(x, served), served, categorical, top_k))


def _unlearned(known: Mapping[str, float], x: Mapping[str, float]) -> list[tuple[str, float]]:
    """The columns of ``x`` left out of ``known``, each with its contribution: 0."""
    return [] if known.keys() >= x.keys() else [(name, 0.0) for name in x if name not in known]


def _target_label(probabilities: Mapping[Any, float], positive_class: str | None) -> Any:
    if positive_class is not None:
        # A model with a positive class learned it as True (``training.target``), whatever its name:
        # with the positive class "false", False is the rest.
        if any(label is True for label in probabilities):
            return True
        for label in probabilities:
            if label_text(label) == positive_class:
                return label
    return max(probabilities, key=probabilities.__getitem__) if probabilities else None


def _shown(name: str, x: Mapping[str, float], categorical: Mapping[str, str] | None) -> tuple[str, float | str]:
    shown = _shown_name(name, x, categorical)
    if shown != name:  # a one-hot feature: its field, with the category as the value
        return shown, name[len(shown) + 1:]
    return name, float(x[name]) if name in x else 0.0


def _shown_name(name: str, x: Mapping[str, float], categorical: Mapping[str, str] | None) -> str:
    """The feature as reported: the event's hot one-hot column ``field=category`` is ``field``.

    Hot either way a categorical reaches the model: from the event's ``categorical`` map (one-hot
    in ``assemble_features``) or as a column the featurizer already one-hot encoded (1.0 in ``x``).
    """
    if INDICATOR_SEPARATOR in name:
        field, _, category = name.partition(INDICATOR_SEPARATOR)
        if x.get(name) == 1.0 or (categorical and categorical.get(field) == category):
            return field
    return name


def _ranked(contributions: list[tuple[str, float]], x: Mapping[str, float],
            categorical: Mapping[str, str] | None, top_k: int | None) -> tuple[Contribution, ...]:
    """(feature, contribution) pairs as Contributions: largest effect first, ties by shown name.

    Ranked as plain tuples, compared in C, whose position field settles every tie before the
    rest is compared; only the kept pairs become Contributions. A spec may explain every event,
    and with wide feature vectors one frozen dataclass per feature, sorted by a Python key, cost
    several times the prediction itself (docs/benchmarks.md, "Explanations", has the figures).
    """
    keyed = [(-abs(contribution), _shown_name(name, x, categorical), position, name, contribution)
             for position, (name, contribution) in enumerate(contributions)]
    kept = sorted(keyed) if top_k is None else heapq.nsmallest(top_k, keyed)
    return tuple(Contribution(*_shown(name, x, categorical), contribution) for *_, name, contribution in kept)
