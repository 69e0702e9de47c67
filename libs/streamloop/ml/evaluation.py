"""Prequential evaluation: every labeled prediction scored once, per model version, window and segment.

Prequential ("predict, then learn") means a prediction is judged on the label that arrives for
its event after it was made, never on data the model had already seen. The ground-truth
collector feeds one :class:`Outcome` per (event, model) as soon as the label is joined; this
module turns them into metrics:

- per model (name, version and role: champion, shadow or canary) and tumbling time window;
- over the whole population and per segment (each of the spec's ``segments`` fields and value);
- classification: ``accuracy``, ``log_loss``, ``f1``, ``precision``, ``recall``, ``roc_auc``;
  regression: ``mae``, ``rmse``; both: ``cost`` (total) and ``mean_cost`` from the spec's
  ``cost_matrix`` (``cost[actual][predicted]``) or ``cost_function``; and for classification
  ``mae`` and ``rmse`` of 1 − p(true class), the promotion metrics ``absolute_error`` and
  ``squared_error`` as the publisher scores them, so that it can watch either for decay;
- the label-delay distribution (``p50``, ``p90``, ``p99``, ``max`` of label_time - event_time).

River's metrics do the running sums (Accuracy, LogLoss/CrossEntropy, F1, Precision, Recall, MAE,
RMSE), so a window's accuracy is by construction what ``river.evaluate.progressive_val_score``
reports on the same sequence. ROC AUC and the delay quantiles are exact, computed from the
window's values: river's ``ROCAUC`` is a thresholded approximation and a window is small.

Pure: no I/O, no clock. The caller says what time an outcome belongs to.

>>> from streamloop.ml.evaluation import MetricSet, Outcome
>>> metric_set = MetricSet("classification", positive_class="true")
>>> for label, p in [(True, 0.9), (False, 0.2), (True, 0.4)]:
...     metric_set.update(Outcome("m", "v1", "CHAMPION", label,
...                               probabilities={"true": p, "false": 1 - p}))
>>> metric_set.sample_count, round(metric_set.metrics()["accuracy"], 3)
(3, 0.667)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal

import numpy as np
from river import metrics as river_metrics
from scipy.stats import rankdata

from streamloop.contracts.learning_specs import RegressionCost
from streamloop.contracts.pipeline import PipelineSpec
from streamloop.ml.promotion import class_key, true_class_probability

Task = Literal["classification", "regression"]
ModelKey = tuple[str, str, str]  # (model_name, model_version, role)
SegmentKey = tuple[str, str | None] | None  # None: the whole population
DELAY_QUANTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0))


@dataclass(frozen=True, slots=True)
class Outcome:
    """One model's prediction for one event, and the label that event turned out to have."""

    model_name: str
    model_version: str
    role: str
    label: Any
    predicted_class: str | None = None
    probabilities: Mapping[str, float] = field(default_factory=dict)
    value: float | None = None
    event_time: int = 0
    label_time: int = 0
    segments: Mapping[str, str] = field(default_factory=dict)
    event_id: str = ""

    @property
    def model(self) -> ModelKey:
        return (self.model_name, self.model_version, self.role)

    @property
    def label_delay_ms(self) -> int:
        """Label time minus event time; a label stamped before its event counts as no delay."""
        return max(0, self.label_time - self.event_time)

    def predicted(self) -> str | None:
        """The predicted class: as stated, else the most probable class."""
        if self.predicted_class is not None:
            return class_key(self.predicted_class)
        if not self.probabilities:
            return None
        return class_key(max(self.probabilities.items(), key=lambda item: item[1])[0])


def millis(value: Any) -> int:
    """A ``timestamp-millis`` as decoded (a datetime) or as written (a long), as ms since the epoch."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000) if value.tzinfo else int(value.replace(tzinfo=UTC).timestamp() * 1000)
    return int(value)


def outcomes_from_example(example: Mapping[str, Any]) -> list[Outcome]:
    """The outcomes of a LabeledExample record: one per model prediction it carries."""
    return [
        Outcome(
            model_name=p["model_name"], model_version=p["model_version"], role=p["role"],
            label=example["label"], predicted_class=p.get("predicted_class"),
            probabilities=p.get("probabilities") or {}, value=p.get("value"),
            event_time=millis(example["event_time"]), label_time=millis(example["label_time"]),
            segments=example.get("segments") or {}, event_id=example["event_id"],
        )
        for p in example.get("predictions") or []
    ]


def classification_cost(matrix: Mapping[str, Mapping[str, float]], actual: Any, predicted: Any) -> float:
    """``matrix[actual][predicted]``; a cell the spec leaves out costs 0 when right and 1 when wrong."""
    actual_key, predicted_key = class_key(actual), class_key(predicted)
    default = 0.0 if actual_key == predicted_key else 1.0
    return float(matrix.get(actual_key, {}).get(predicted_key, default))


def regression_cost(function: RegressionCost | None, actual: float, predicted: float) -> float:
    """Cost per unit over / under the truth (1 each when the spec gives no cost_function)."""
    error = float(predicted) - float(actual)
    over, under = (function.per_unit_over, function.per_unit_under) if function else (1.0, 1.0)
    return over * max(error, 0.0) + under * max(-error, 0.0)


def roc_auc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """Exact ROC AUC (Mann-Whitney U, ties counted half); None unless both classes are present."""
    positive = np.asarray(positives, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def delay_distribution(delays_ms: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 (linear interpolation) and max of label delays, in milliseconds."""
    if not delays_ms:
        return {}
    values = np.asarray(delays_ms, dtype=np.float64)
    summary = {name: float(np.percentile(values, q)) for name, q in DELAY_QUANTILES}
    summary["max"] = float(values.max())
    return summary


class MetricSet:
    """The metrics of one population (a model, a window, optionally a segment), updated per outcome."""

    def __init__(self, task: Task, positive_class: str | None = None,
                 cost_matrix: Mapping[str, Mapping[str, float]] | None = None,
                 cost_function: RegressionCost | None = None) -> None:
        self.task = task
        self.positive_class = class_key(positive_class) if positive_class is not None else None
        self.cost_matrix = cost_matrix
        self.cost_function = cost_function
        self.sample_count = 0
        self.delays: list[int] = []
        self._cost_total = 0.0
        self._cost_count = 0
        self._scores: list[float] = []
        self._positives: list[bool] = []
        self._probabilistic = 0  # outcomes with probabilities (log loss, ROC AUC)
        self._classified = 0  # outcomes with a predicted class (accuracy, F1)
        self._regressed = 0  # outcomes with a predicted value (MAE, RMSE)
        # Classification: sums of 1 − p(true class) and of its square over every outcome, an
        # outcome with no opinion included (the worst), as the candidates' held-out mae and rmse.
        self._true_class_error = 0.0
        self._true_class_squared_error = 0.0
        binary = self.positive_class is not None
        if task == "classification":
            self._accuracy = river_metrics.Accuracy()
            self._log_loss = river_metrics.LogLoss() if binary else river_metrics.CrossEntropy()
            # Binary metrics are fed booleans (is it the positive class?): river compares pos_val to
            # the labels and then looks the converted booleans up under pos_val again.
            self._f1 = river_metrics.F1() if binary else river_metrics.MacroF1()
            self._precision = river_metrics.Precision() if binary else None
            self._recall = river_metrics.Recall() if binary else None
        else:
            self._mae = river_metrics.MAE()
            self._rmse = river_metrics.RMSE()

    def update(self, outcome: Outcome) -> None:
        self.sample_count += 1
        self.delays.append(outcome.label_delay_ms)
        if self.task == "classification":
            self._update_classification(outcome)
        else:
            self._update_regression(outcome)

    def _update_classification(self, outcome: Outcome) -> None:
        truth = class_key(outcome.label)
        predicted = outcome.predicted()
        as_recorded = {"predicted_class": outcome.predicted_class, "probabilities": outcome.probabilities}
        error = 1.0 - true_class_probability(outcome.label, as_recorded, self.positive_class)
        self._true_class_error += error
        self._true_class_squared_error += error * error
        if predicted is not None:
            self._classified += 1
            if self.positive_class is None:
                self._accuracy.update(truth, predicted)
                self._f1.update(truth, predicted)
            else:
                # The model tells the positive class from the rest: so is it right or wrong.
                actual, guessed = truth == self.positive_class, predicted == self.positive_class
                for metric in (self._accuracy, self._f1, self._precision, self._recall):
                    metric.update(actual, guessed)
            if self.cost_matrix is not None:
                self._add_cost(classification_cost(self.cost_matrix, truth, predicted))
        probabilities = {class_key(k): float(v) for k, v in outcome.probabilities.items()}
        if not probabilities:
            return
        self._probabilistic += 1
        if self.positive_class is not None:
            score = probabilities.get(self.positive_class, 0.0)
            is_positive = truth == self.positive_class
            self._log_loss.update(is_positive, score)
            self._scores.append(score)
            self._positives.append(is_positive)
        else:
            self._log_loss.update(truth, probabilities)

    def _update_regression(self, outcome: Outcome) -> None:
        if outcome.value is None or isinstance(outcome.label, str | bool):
            return
        truth, predicted = float(outcome.label), float(outcome.value)
        self._regressed += 1
        self._mae.update(truth, predicted)
        self._rmse.update(truth, predicted)
        self._add_cost(regression_cost(self.cost_function, truth, predicted))

    def _add_cost(self, cost: float) -> None:
        self._cost_total += cost
        self._cost_count += 1

    def metrics(self) -> dict[str, float]:
        """The metrics that are defined for what was seen (no NaN: an undefined metric is left out)."""
        values: dict[str, float] = {}
        if self.task == "classification":
            if self._classified:
                values["accuracy"] = self._accuracy.get()
                values["f1"] = self._f1.get()
                if self._precision is not None and self._recall is not None:
                    values["precision"] = self._precision.get()
                    values["recall"] = self._recall.get()
            if self._probabilistic:
                values["log_loss"] = self._log_loss.get()
            auc = roc_auc(self._scores, self._positives) if self._scores else None
            if auc is not None:
                values["roc_auc"] = auc
            if self.sample_count:
                values["mae"] = self._true_class_error / self.sample_count
                values["rmse"] = math.sqrt(self._true_class_squared_error / self.sample_count)
        elif self._regressed:
            values["mae"] = self._mae.get()
            values["rmse"] = self._rmse.get()
        if self._cost_count:
            values["cost"] = self._cost_total
            values["mean_cost"] = self._cost_total / self._cost_count
        return {k: float(v) for k, v in values.items() if math.isfinite(v)}

    def label_delays(self) -> dict[str, float]:
        return delay_distribution(self.delays)


@dataclass(frozen=True)
class EvaluationConfig:
    """What to compute and over which windows."""

    task: Task
    positive_class: str | None = None
    cost_matrix: Mapping[str, Mapping[str, float]] | None = None
    cost_function: RegressionCost | None = None
    segments: tuple[str, ...] = ()
    window_ms: int = 10_000
    allowed_lateness_ms: int = 5_000

    def __post_init__(self) -> None:
        if self.window_ms <= 0:
            raise ValueError("window_ms must be positive")
        if self.allowed_lateness_ms < 0:
            raise ValueError("allowed_lateness_ms must not be negative")

    @classmethod
    def from_spec(cls, spec: PipelineSpec, window_ms: int, allowed_lateness_ms: int) -> EvaluationConfig:
        model = spec.model
        return cls(task=model.task, positive_class=model.positive_class, cost_matrix=model.cost_matrix,
                   cost_function=model.cost_function, segments=tuple(spec.segments),
                   window_ms=window_ms, allowed_lateness_ms=allowed_lateness_ms)

    def metric_set(self) -> MetricSet:
        return MetricSet(self.task, self.positive_class, self.cost_matrix, self.cost_function)


@dataclass(frozen=True)
class WindowReport:
    """The metrics of one model over one closed window, overall (segment None) or for one segment."""

    model: ModelKey
    window_start: int
    window_end: int
    segment: SegmentKey
    sample_count: int
    metrics: dict[str, float]
    label_delay_ms: dict[str, float]

    def snapshot(self, pipeline: str, emitted_at: int) -> dict[str, Any]:
        """The MetricSnapshot record (monitoring/metric_snapshot.avsc)."""
        name, version, role = self.model
        return {
            "pipeline": pipeline, "model_name": name, "model_version": version, "role": role,
            "window_start": self.window_start, "window_end": self.window_end,
            "segment_field": self.segment[0] if self.segment else None,
            "segment_value": self.segment[1] if self.segment else None,
            "sample_count": self.sample_count, "metrics": dict(self.metrics),
            "label_delay_ms": dict(self.label_delay_ms), "emitted_at": emitted_at,
        }


class Added(Enum):
    COUNTED = "counted"
    DUPLICATE = "duplicate"  # the same (event, model) was already counted in its window
    LATE = "late"  # its window had already been closed and reported


class _Window:
    __slots__ = ("populations", "seen", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        self.populations: dict[tuple[ModelKey, SegmentKey], MetricSet] = {}
        self.seen: set[tuple[str, ModelKey]] = set()


class PrequentialEvaluator:
    """Tumbling windows of outcomes, per model and segment; a window is reported once, when it closes.

    ``add(outcome, at_ms)`` files the outcome in the window holding ``at_ms``. The evaluator's
    clock is the latest ``at_ms`` seen, or only what is given to ``advance`` (``auto_advance=False``,
    for a caller with a watermark of its own); a window closes when the clock passes its end by
    ``allowed_lateness_ms``. After that, outcomes for it are LATE and not counted,
    so a reported window never changes. ``closed_until`` restores that boundary after a restart.
    """

    def __init__(self, config: EvaluationConfig, closed_until: int | None = None, auto_advance: bool = True) -> None:
        self.config = config
        self.auto_advance = auto_advance  # False: only ``advance`` moves the clock (the caller's watermark)
        self.clock: int | None = None
        self.closed_until = closed_until
        self._windows: dict[int, _Window] = {}

    def window_start(self, at_ms: int) -> int:
        return at_ms - at_ms % self.config.window_ms

    def add(self, outcome: Outcome, at_ms: int) -> Added:
        start = self.window_start(at_ms)
        if self.auto_advance:
            self.advance(at_ms)
        if self.closed_until is not None and start < self.closed_until:
            return Added.LATE
        window = self._windows.get(start)
        if window is None:
            window = self._windows[start] = _Window(start)
        identity = (outcome.event_id, outcome.model)
        if outcome.event_id and identity in window.seen:
            return Added.DUPLICATE
        window.seen.add(identity)
        for segment in self._segments_of(outcome):
            population = window.populations.get((outcome.model, segment))
            if population is None:
                population = window.populations[(outcome.model, segment)] = self.config.metric_set()
            population.update(outcome)
        return Added.COUNTED

    def _segments_of(self, outcome: Outcome) -> Iterable[SegmentKey]:
        yield None
        for name in self.config.segments:
            yield (name, outcome.segments.get(name))

    def advance(self, now_ms: int) -> None:
        if self.clock is None or now_ms > self.clock:
            self.clock = now_ms

    @property
    def open_windows(self) -> list[int]:
        return sorted(self._windows)

    def close(self) -> list[WindowReport]:
        """Report and forget every window the clock has passed by more than the allowed lateness."""
        if self.clock is None:
            return []
        horizon = self.clock - self.config.allowed_lateness_ms
        ready = [s for s in self._windows if s + self.config.window_ms <= horizon]
        return self._report(ready, boundary=self.window_start(horizon))

    def close_all(self) -> list[WindowReport]:
        """Report every open window (at shutdown, or in tests)."""
        if not self._windows:
            return []
        last = max(self._windows)
        return self._report(list(self._windows), boundary=last + self.config.window_ms)

    def _report(self, starts: list[int], boundary: int) -> list[WindowReport]:
        reports: list[WindowReport] = []
        for start in sorted(starts):
            window = self._windows.pop(start)
            end = start + self.config.window_ms
            for (model, segment), population in sorted(window.populations.items(), key=_population_order):
                reports.append(WindowReport(model, start, end, segment, population.sample_count,
                                            population.metrics(), population.label_delays()))
        if self.closed_until is None or boundary > self.closed_until:
            self.closed_until = boundary
        return reports


def _population_order(item: tuple[tuple[ModelKey, SegmentKey], MetricSet]) -> tuple:
    (model, segment), _ = item
    return (model, segment is not None, segment[0] if segment else "", str(segment[1]) if segment else "")
