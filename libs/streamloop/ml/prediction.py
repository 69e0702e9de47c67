"""From a model's output to a Prediction's fields: the one mapping the stream and gRPC paths share.

A classifier's output becomes ``predicted_class`` and ``probabilities`` (labels as strings, so
``True`` reads ``"true"`` like the spec's ``positive_class``); a regressor's becomes ``value``.
The spec's action rules then map the positive-class probability (or the value) to an action.

Examples
--------
>>> from streamloop.contracts.learning_specs import ActionRule
>>> rules = [ActionRule(when_probability_at_least=0.8, action="block"), ActionRule(otherwise="allow")]
>>> output_from_probabilities({False: 0.1, True: 0.9}, positive_class="true", rules=rules)
ModelOutput(predicted_class='true', probabilities={'false': 0.1, 'true': 0.9}, value=None, action='block')
>>> stable_share("txn-42", "canary") == stable_share("txn-42", "canary")
True
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamloop.contracts.learning_specs import ActionRule, ModelSpec
from streamloop.ml.exceptions import ModelError


class ModelOutputError(ModelError):
    """A model returned something that is not a prediction (a NaN probability or value, a value that is no number)."""


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """The task-dependent part of a Prediction record."""

    predicted_class: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    value: float | None = None
    action: str | None = None

    def record_fields(self) -> dict[str, Any]:
        return {"predicted_class": self.predicted_class, "probabilities": self.probabilities,
                "value": self.value, "action": self.action}


def label_text(label: Any) -> str:
    """A class label as the contracts write it: booleans lower-case, everything else ``str``."""
    if isinstance(label, bool):
        return "true" if label else "false"
    return str(label)


def positive_probability(probabilities: Mapping[str, float], positive_class: str | None) -> float | None:
    """The probability the action rules compare: the positive class's, else the top class's."""
    if not probabilities:
        return None
    if positive_class is not None:
        return probabilities.get(positive_class, 0.0)
    return max(probabilities.values())


def choose_action(rules: Sequence[ActionRule], probability: float | None = None,
                  value: float | None = None) -> str | None:
    """The first rule that holds, in the spec's order; rules about the other task never hold."""
    for rule in rules:
        if rule.otherwise is not None:
            return rule.otherwise
        if rule.when_probability_at_least is not None:
            if probability is not None and probability >= rule.when_probability_at_least:
                return rule.action
        elif rule.when_value_at_least is not None and value is not None and value >= rule.when_value_at_least:
            return rule.action
    return None


def output_from_probabilities(probabilities: Mapping[Any, float], positive_class: str | None,
                              rules: Sequence[ActionRule]) -> ModelOutput:
    """A classifier's output; the predicted class is the most probable (first one on a tie).

    No probabilities at all is a classifier with no opinion yet: river's trees, naive Bayes and
    nearest neighbours answer so until they learn their first example, and the publisher's
    bootstrap champion is such a model. It gets no class and the rules' ``otherwise`` action, and
    its losses are the worst (``streamloop.ml.promotion.event_loss``). Refusing it left a tree
    pipeline with no champion the scorer would load, so no predictions, no joined labels and no
    model, ever.
    """
    if not probabilities:
        return ModelOutput(action=choose_action(rules, probability=None))
    texts: dict[str, float] = {}
    for label, probability in probabilities.items():
        probability = float(probability)
        if not math.isfinite(probability):
            raise ModelOutputError(f"the classifier returned probability {probability} for {label!r}")
        texts[label_text(label)] = probability
    predicted = max(texts, key=texts.__getitem__)
    action = choose_action(rules, probability=positive_probability(texts, positive_class))
    return ModelOutput(predicted_class=predicted, probabilities=texts, action=action)


def output_from_value(value: Any, rules: Sequence[ActionRule]) -> ModelOutput:
    """A regressor's output."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ModelOutputError(f"the regressor returned {value!r}, not a number") from exc
    if not math.isfinite(number):
        raise ModelOutputError(f"the regressor returned {number}")
    return ModelOutput(value=number, action=choose_action(rules, value=number))


def named_classes(probabilities: Mapping[Any, float], spec: ModelSpec) -> Mapping[Any, float]:
    """A binary model's answer under the spec's class names.

    With a positive class the model learned positive-vs-rest as True/False (``training.target``):
    True is ``positive_class`` and False ``negative_class``, whatever the labels are called.
    """
    if spec.positive_class is None:
        return probabilities
    return {(spec.positive_class if label else spec.negative_class) if isinstance(label, bool) else label: p
            for label, p in probabilities.items()}


def predict(model: Any, x: Mapping[str, float], spec: ModelSpec) -> ModelOutput:
    """Score one assembled feature dict (``assemble_features``) with a river model."""
    if spec.task == "classification":
        return output_from_probabilities(named_classes(model.predict_proba_one(x), spec), spec.positive_class,
                                         spec.actions)
    return output_from_value(model.predict_one(x), spec.actions)


def typical_vector(model: Any) -> dict[str, float]:
    """A warm-up input: the first scaler's running means when there is one, else no features."""
    steps = getattr(model, "steps", None)
    first = next(iter(steps.values()), None) if isinstance(steps, dict) else None
    means = getattr(first, "means", None)
    if isinstance(means, dict):
        return {name: float(mean) for name, mean in list(means.items()) if isinstance(mean, int | float)}
    return {}


def warm_up(model: Any, spec: ModelSpec) -> ModelOutput:
    """The prediction a scorer makes before it serves ``model``; whatever it raises, the scorer refuses the model.

    The retrainer makes it too before it publishes a candidate: one that fails it (NaN weights,
    say) would be refused by every scorer, and only take a shadow's place at the publisher.
    """
    return predict(model, typical_vector(model), spec)


def default_output(spec: ModelSpec) -> ModelOutput | None:
    """The spec's ``default_prediction`` as an output, or None when the spec has none.

    For a classifier a string is the default class and a number the positive class's probability.
    """
    default = spec.default_prediction
    if default is None:
        return None
    if spec.task == "regression":
        return output_from_value(default, spec.actions)
    if isinstance(default, str):
        return ModelOutput(predicted_class=default, action=choose_action(spec.actions))
    probability = float(default)
    positive = spec.positive_class or "true"
    return ModelOutput(predicted_class=positive if probability >= 0.5 else None,
                       probabilities={positive: probability},
                       action=choose_action(spec.actions, probability=probability))


def stable_share(key: str, salt: str) -> float:
    """A number in [0, 1) fixed by ``key`` and ``salt``: the same event always falls the same way.

    Used to pick the events a canary scores and the events that get an explanation; different
    salts make the two choices independent of each other.
    """
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=salt.encode("utf-8")[:16]).digest()
    return int.from_bytes(digest, "big") / 2**64


def in_share(key: str, salt: str, share: float) -> bool:
    """True for a ``share`` fraction of keys (exactly all for 1.0, none for 0.0)."""
    if share >= 1.0:
        return True
    if share <= 0.0:
        return False
    return stable_share(key, salt) < share
