"""Promotion statistics: per-event loss, paired tests and the promote / refuse / roll back verdicts.

Pure functions of numbers; the model publisher feeds them the losses of two models on the *same*
labeled events (every labeled example carries each model's prediction for its event), so a
challenger is judged on exactly the traffic its champion saw and the comparison is paired.

All margins are relative to the baseline's mean loss (``delta / baseline``), so one setting
means the same for log loss, squared error or a cost in currency units (docs/model-registry.md).

>>> import numpy as np
>>> from streamloop.contracts.learning_specs import PromotionSpec
>>> rng = np.random.default_rng(0)
>>> champion = rng.uniform(0.4, 0.6, 600)
>>> verdict = decide_promotion(champion, champion - 0.1, [{}] * 600, PromotionSpec())
>>> verdict.outcome, verdict.evidence["sample_count"]
('promote', 600.0)
>>> decide_promotion(champion, champion, [{}] * 600, PromotionSpec()).outcome
'refuse'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

from streamloop.contracts.learning_specs import ModelSpec, PromotionSpec

PairedTest = Literal["t", "wilcoxon"]
Outcome = Literal["promote", "refuse", "wait", "rollback", "keep"]

_EPS = 1e-15
_BOOL_KEYS = {"true": "true", "false": "false"}
# Metrics where a larger value is better; every other metric is a loss (smaller is better).
HIGHER_IS_BETTER = frozenset({"accuracy", "f1", "roc_auc", "precision", "recall"})


def class_key(value: Any) -> str:
    """A class label as the string every record uses: booleans are ``true`` / ``false``, and a whole
    number sent as a double (the label schema allows one) is the integer's text: 1.0 is class "1"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value)
    return _BOOL_KEYS.get(text.lower(), text)


def effective_metric(metric: str, task: str) -> str:
    """The per-event loss for a task: log loss and 0/1 loss make no sense for regression."""
    if task == "regression" and metric in ("log_loss", "zero_one"):
        return "squared_error"
    return metric


def probability_of_label(label: Any, probabilities: Mapping[str, float], positive_class: str | None) -> float | None:
    """The probability a model gave to the class that turned out true (None: it gave none)."""
    if not probabilities:
        return None
    probs = {class_key(k): float(v) for k, v in probabilities.items()}
    target = class_key(label)
    if target in probs:
        return probs[target]
    if positive_class is not None:
        positive = class_key(positive_class)
        # A binary model may report True/False while labels carry the positive class's name.
        scored = probs.get(positive, probs.get("true"))
        if scored is not None:
            return scored if target == positive else 1.0 - scored
    return 0.0


def true_class_probability(label: Any, prediction: Mapping[str, Any], positive_class: str | None) -> float:
    """The probability a prediction gave the class that turned out true, as its losses count it.

    Without probabilities, 1 or 0 as its predicted class is right or wrong; with no opinion at
    all, 0, as when a model names only other classes. Clipped to [1e-15, 1 - 1e-15].
    """
    p = probability_of_label(label, prediction.get("probabilities") or {}, positive_class)
    if p is None:
        predicted = predicted_class(prediction)
        p = 0.0 if predicted is None else (1.0 if predicted == class_key(label) else 0.0)
    return min(max(p, _EPS), 1.0 - _EPS)


def predicted_class(prediction: Mapping[str, Any]) -> str | None:
    if prediction.get("predicted_class") is not None:
        return class_key(prediction["predicted_class"])
    probabilities = prediction.get("probabilities") or {}
    if not probabilities:
        return None
    return class_key(max(probabilities.items(), key=lambda item: item[1])[0])


def event_loss(metric: str, model: ModelSpec, label: Any, prediction: Mapping[str, Any]) -> float | None:
    """One model's loss on one labeled event; None when its prediction cannot be scored that way.

    A classifier's prediction with neither class nor probabilities (no opinion yet) scores the
    worst loss, so any model with an opinion can beat an untrained champion.

    A loss that overflows (the squared error of a finite regression value 1.3e154 off, or its
    cost at a large unit price) is None too: one inf loss made the paired test's p-value NaN
    (inf − inf when both models' losses overflowed, an inf variance otherwise), read as p = 1, so
    every challenger compared on that event was refused and the champion that made it was never
    rolled back.

    ``prediction`` has the fields of a ``JoinedPrediction`` (predicted_class, probabilities, value).
    Cost: ``model.cost_matrix[actual][predicted]`` (a missing cell costs 0 when right, 1 when
    wrong), or ``model.cost_function`` per unit over / under for regression.
    """
    loss = _event_loss(effective_metric(metric, model.task), model, label, prediction)
    return loss if loss is None or math.isfinite(loss) else None


def _event_loss(metric: str, model: ModelSpec, label: Any, prediction: Mapping[str, Any]) -> float | None:
    if model.task == "regression":
        value = prediction.get("value")
        if value is None or label is None or isinstance(label, str | bool):
            return None
        error = float(value) - float(label)
        if metric == "absolute_error":
            return abs(error)
        if metric == "cost":
            unit = model.cost_function
            over, under = (unit.per_unit_over, unit.per_unit_under) if unit else (1.0, 1.0)
            return over * max(error, 0.0) + under * max(-error, 0.0)
        return error * error
    if metric in ("zero_one", "cost"):
        predicted = predicted_class(prediction)
        actual = class_key(label)
        row = (model.cost_matrix or {}).get(actual, {})
        if predicted is None:
            # No opinion (prediction.output_from_probabilities): as wrong as an answer can be.
            return 1.0 if metric == "zero_one" else float(max([1.0, *row.values()]))
        if metric == "zero_one":
            if model.positive_class is not None:  # positive-vs-rest, as the model learned and accuracy counts
                return float((predicted == model.positive_class) != (actual == model.positive_class))
            return float(predicted != actual)
        return float(row.get(predicted, 0.0 if predicted == actual else 1.0))
    p = true_class_probability(label, prediction, model.positive_class)
    if metric == "log_loss":
        return -math.log(p)
    if metric == "absolute_error":
        return 1.0 - p
    return (1.0 - p) ** 2


def holdout_metrics(model: ModelSpec, labels: Sequence[Any],
                    predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Metrics of predictions on held-out labeled events, named as metric snapshots name them.

    ``accuracy`` and ``log_loss`` (classification), ``mae`` and ``rmse`` (of the value for
    regression; of 1 − p(true class) for classification, as the promotion metrics
    ``absolute_error`` and ``squared_error`` score it), ``cost`` (total) and ``mean_cost`` when
    the spec has costs, and ``sample_count``.
    """
    names = ["absolute_error", "squared_error"]
    if model.task == "classification":
        names += ["log_loss", "zero_one"]
    if model.cost_matrix or model.cost_function:
        names.append("cost")
    result: dict[str, float] = {"sample_count": float(len(labels))}
    for name in names:
        losses = [event_loss(name, model, y, p) for y, p in zip(labels, predictions, strict=True)]
        scored = [loss for loss in losses if loss is not None]
        if not scored:
            continue
        mean = float(np.mean(scored))
        if name == "zero_one":
            result["accuracy"] = 1.0 - mean
        elif name == "absolute_error":
            result["mae"] = mean
        elif name == "squared_error":
            result["rmse"] = math.sqrt(mean)
        elif name == "cost":
            result["cost"] = float(np.sum(scored))
            result["mean_cost"] = mean
        else:
            result[name] = mean
    return result


def relative_change(value: float, baseline: float) -> float:
    """``(value - baseline) / |baseline|``; positive means ``value`` is the larger loss."""
    return (value - baseline) / max(abs(baseline), 1e-12)


def paired_test(baseline: np.ndarray, challenger: np.ndarray, test: PairedTest = "t") -> tuple[float, float]:
    """One-sided paired test that the challenger's loss is smaller: (statistic, p-value)."""
    differences = baseline - challenger
    if differences.size < 2 or np.allclose(differences, 0.0):
        return 0.0, 1.0
    if np.allclose(differences, differences[0], rtol=1e-9, atol=1e-12):
        # Every event improved (or worsened) by the same amount: no variance to test against.
        return (math.inf, 0.0) if differences[0] > 0 else (-math.inf, 1.0)
    if test == "wilcoxon":
        result = stats.wilcoxon(differences, alternative="greater", zero_method="wilcox")
    else:
        result = stats.ttest_rel(baseline, challenger, alternative="greater")
    p_value = float(result.pvalue)
    return float(result.statistic), p_value if math.isfinite(p_value) else 1.0


@dataclass(frozen=True)
class SegmentDelta:
    field: str
    value: str
    sample_count: int
    baseline_mean: float
    challenger_mean: float

    @property
    def regression(self) -> float:
        """How much worse the challenger is on this segment, relative to the baseline (negative: better)."""
        return relative_change(self.challenger_mean, self.baseline_mean)

    @property
    def name(self) -> str:
        return f"{self.field}={self.value}"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str
    evidence: dict[str, float] = field(default_factory=dict)
    segment: str | None = None


# The segment of the events that have no value for a segment field.
NO_SEGMENT_VALUE = "(none)"


def segment_deltas(baseline: np.ndarray, challenger: np.ndarray,
                   segments: Sequence[Mapping[str, str]]) -> list[SegmentDelta]:
    groups: dict[tuple[str, str], list[int]] = {}
    for index, fields in enumerate(segments):
        for name, value in fields.items():
            groups.setdefault((name, str(value)), []).append(index)
    deltas = []
    for (name, value), indices in sorted(groups.items()):
        rows = np.asarray(indices)
        deltas.append(SegmentDelta(name, value, len(indices), float(baseline[rows].mean()),
                                   float(challenger[rows].mean())))
    return deltas


def _evidence(baseline: np.ndarray, challenger: np.ndarray, statistic: float, p_value: float,
              segments: Sequence[SegmentDelta]) -> dict[str, float]:
    base, chal = float(baseline.mean()), float(challenger.mean())
    evidence = {
        "sample_count": float(baseline.size),
        "baseline_mean_loss": base,
        "challenger_mean_loss": chal,
        "mean_loss_delta": base - chal,
        "relative_improvement": -relative_change(chal, base),
        "p_value": p_value,
        "statistic": statistic if math.isfinite(statistic) else math.copysign(1e308, statistic),
    }
    for segment in segments:
        evidence[f"segment.{segment.name}.sample_count"] = float(segment.sample_count)
        evidence[f"segment.{segment.name}.relative_regression"] = segment.regression
    return evidence


def decide_promotion(baseline: Sequence[float] | np.ndarray, challenger: Sequence[float] | np.ndarray,
                     segments: Sequence[Mapping[str, str]], spec: PromotionSpec,
                     test: PairedTest = "t") -> Verdict:
    """Promote only a challenger significantly and sufficiently better overall and on every segment.

    ``baseline[i]`` and ``challenger[i]`` are the two models' losses on the same event ``i``,
    whose segment values are ``segments[i]``. Below ``spec.min_samples`` the verdict is ``wait``.
    """
    base = np.asarray(baseline, dtype=np.float64)
    chal = np.asarray(challenger, dtype=np.float64)
    if base.size < spec.min_samples:
        return Verdict("wait", f"{base.size} of {spec.min_samples} paired samples",
                       {"sample_count": float(base.size)})
    statistic, p_value = paired_test(base, chal, test)
    deltas = segment_deltas(base, chal, segments)
    evidence = _evidence(base, chal, statistic, p_value, deltas)
    improvement = evidence["relative_improvement"]
    summary = (f"mean loss {evidence['challenger_mean_loss']:.4g} vs {evidence['baseline_mean_loss']:.4g} "
               f"({improvement:+.2%}), p={p_value:.3g} on {base.size} events")
    if improvement <= 0 or improvement < spec.min_improvement or p_value >= spec.p_value:
        return Verdict("refuse", f"no significant improvement: {summary} (needs p<{spec.p_value:g}, "
                                 f"improvement>={spec.min_improvement:.2%})", evidence)
    eligible = [d for d in deltas if d.sample_count >= spec.segment_min_samples]
    regressed = [d for d in eligible if d.regression > spec.segment_max_regression]
    if regressed:
        worst = max(regressed, key=lambda d: d.regression)
        return Verdict("refuse", f"better overall ({summary}) but segment {worst.name} regresses by "
                                 f"{worst.regression:.2%} (> {spec.segment_max_regression:.2%}) on "
                                 f"{worst.sample_count} events", evidence, segment=worst.name)
    return Verdict("promote", f"significantly better: {summary}", evidence)


def rollback_looks(min_samples: int, watch_samples: int) -> list[int]:
    """The sample counts the rollback watch tests at: ``min_samples``, doubling, then the watch's end."""
    looks, count = [], min_samples
    while count < watch_samples:
        looks.append(count)
        count *= 2
    return [*looks, max(watch_samples, min_samples)]


def decide_rollback(predecessor: Sequence[float] | np.ndarray, champion: Sequence[float] | np.ndarray,
                    spec: PromotionSpec, test: PairedTest = "t", *, watch_samples: int) -> Verdict:
    """Roll back a newly promoted champion that is significantly worse than its predecessor.

    Both models scored the same post-promotion events (the predecessor as a shadow). A rollback
    needs both: a live loss beyond ``spec.rollback_margin`` above the predecessor's, and a
    one-sided paired test that the new champion's loss is larger. A margin alone rolled back a
    champion as good as its predecessor whenever the noise of a few hundred events crossed it,
    undoing a promotion that was itself significant.

    The watch is called at every labeled batch, and testing the growing sample each time rolled
    back about a quarter of champions exactly as good as their predecessor at p < 0.05 (a
    review's simulation: 43 of 200). So the test looks at a few prefixes only
    (``rollback_looks``: the first ``spec.rollback_min_samples`` events, twice as many and so
    on, and the whole watch), each at ``spec.rollback_p_value`` divided by their number, which
    bounds the false rollbacks of the whole watch by ``spec.rollback_p_value``. Between looks the
    verdict is the last look's. A badly worse model is still significant at the first look.

    Beyond the margin but not significantly is ``wait``: the watch goes on, and the caller holds
    challengers back meanwhile, so none can replace a champion that may yet be rolled back. At
    the watch's last look it is ``keep``: over the whole watch the champion was not shown worse.
    """
    looks = rollback_looks(spec.rollback_min_samples, watch_samples)
    reached = [look for look in looks if look <= len(predecessor)]
    if not reached:
        return Verdict("wait", f"{len(predecessor)} of {spec.rollback_min_samples} post-promotion samples",
                       {"sample_count": float(len(predecessor))})
    look = reached[-1]
    base = np.asarray(predecessor, dtype=np.float64)[:look]
    new = np.asarray(champion, dtype=np.float64)[:look]
    # rollback_p_value 1.0 is the margin-only rule, whatever the number of looks.
    level = spec.rollback_p_value / len(looks) if spec.rollback_p_value < 1.0 else 1.0
    # Tested the other way round: is the new champion's loss larger?
    statistic, p_value = paired_test(new, base, test)
    evidence = _evidence(base, new, statistic, p_value, [])
    regression = relative_change(evidence["challenger_mean_loss"], evidence["baseline_mean_loss"])
    evidence["relative_regression"] = regression
    summary = (f"live mean loss {evidence['challenger_mean_loss']:.4g} vs predecessor "
               f"{evidence['baseline_mean_loss']:.4g} ({regression:+.2%}), p={p_value:.3g} on the first {look} "
               f"events (look {len(reached)} of {len(looks)})")
    if regression <= spec.rollback_margin:
        return Verdict("keep", f"within the rollback margin: {summary}", evidence)
    if p_value < level:
        return Verdict("rollback", f"new champion worse than its predecessor: {summary} "
                                   f"(margin {spec.rollback_margin:.2%}, p<{level:.3g}: {spec.rollback_p_value:g} "
                                   f"over {len(looks)} looks)", evidence)
    if look == looks[-1]:
        return Verdict("keep", f"not shown worse over the whole watch: {summary} (needs p<{level:.3g})", evidence)
    return Verdict("wait", f"worse beyond the margin, not yet significantly: {summary} (needs p<{level:.3g})",
                   evidence)


def decide_canary(champion: Sequence[float] | np.ndarray, canary: Sequence[float] | np.ndarray,
                  spec: PromotionSpec) -> Verdict:
    """Judge a canary by the events it served against the events the champion served meanwhile.

    A canary answers its share of events *instead of* the champion, so the two samples are
    disjoint: the comparison is unpaired (Welch's t-test, reported as evidence), but the split is
    a hash of the event id, so both samples come from the same traffic. ``promote`` once the
    canary served ``spec.rollback_min_samples`` events within ``spec.rollback_margin`` of the
    champion; ``rollback`` when it is worse beyond the margin.
    """
    base = np.asarray(champion, dtype=np.float64)
    new = np.asarray(canary, dtype=np.float64)
    if new.size < spec.rollback_min_samples or base.size < 2:
        return Verdict("wait", f"{new.size} of {spec.rollback_min_samples} canary-served events",
                       {"sample_count": float(new.size)})
    base_mean, new_mean = float(base.mean()), float(new.mean())
    if np.std(base) == 0.0 and np.std(new) == 0.0:
        p_value = 0.0 if new_mean > base_mean else 1.0
    else:
        p_value = float(stats.ttest_ind(new, base, equal_var=False, alternative="greater").pvalue)
    regression = relative_change(new_mean, base_mean)
    evidence = {
        "sample_count": float(new.size), "baseline_sample_count": float(base.size),
        "baseline_mean_loss": base_mean, "challenger_mean_loss": new_mean, "mean_loss_delta": base_mean - new_mean,
        "relative_regression": regression, "p_value": p_value if math.isfinite(p_value) else 1.0,
    }
    summary = (f"canary mean loss {new_mean:.4g} on {new.size} events vs champion {base_mean:.4g} on "
               f"{base.size} ({regression:+.2%})")
    if regression > spec.rollback_margin:
        return Verdict("rollback", f"canary worse than the champion: {summary} (margin {spec.rollback_margin:.2%})",
                       evidence)
    return Verdict("promote", f"canary held up: {summary}", evidence)
