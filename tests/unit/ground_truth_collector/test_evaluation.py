"""Prequential metrics (streamloop.ml.evaluation) against computations written out by hand."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import numpy as np
import pytest

from streamloop.contracts.learning_specs import ModelSpec, RegressionCost
from streamloop.ml.evaluation import (
    Added,
    EvaluationConfig,
    MetricSet,
    Outcome,
    PrequentialEvaluator,
    classification_cost,
    delay_distribution,
    outcomes_from_example,
    regression_cost,
    roc_auc,
)
from streamloop.ml.promotion import holdout_metrics

COST = {"true": {"true": 0.0, "false": 50.0}, "false": {"true": 2.0, "false": 0.0}}
COUNTRIES = ["NL", "DE", "FR"]
TIERS = ["gold", "basic"]


def random_outcomes(n: int, seed: int = 7, models=(("fraud", "v1", "CHAMPION"), ("fraud", "v2", "SHADOW"))):
    rng = random.Random(seed)
    outcomes = []
    for i in range(n):
        event_time = 1_000_000 + i * 37
        truth = rng.random() < 0.3
        segments = {"country": rng.choice(COUNTRIES)}
        if rng.random() < 0.8:
            segments["customer_tier"] = rng.choice(TIERS)
        delay = rng.randint(0, 30_000)
        for name, version, role in models:
            p = min(1.0, max(0.0, (0.7 if truth else 0.3) + rng.uniform(-0.45, 0.45)))
            outcomes.append(Outcome(name, version, role, truth, predicted_class="true" if p >= 0.5 else "false",
                                    probabilities={"true": p, "false": 1 - p}, event_time=event_time,
                                    label_time=event_time + delay, segments=segments, event_id=f"e{i}"))
    return outcomes


def direct_metrics(outcomes: list[Outcome]) -> dict[str, float]:
    """Accuracy, log loss, F1, precision, recall, ROC AUC, cost, and the mean absolute and root
    mean squared 1 − p(true class), from their definitions."""
    truth = [o.label is True for o in outcomes]
    predicted = [o.predicted_class == "true" for o in outcomes]
    scores = [o.probabilities["true"] for o in outcomes]
    n = len(outcomes)
    tp = sum(t and p for t, p in zip(truth, predicted, strict=True))
    fp = sum(p and not t for t, p in zip(truth, predicted, strict=True))
    fn = sum(t and not p for t, p in zip(truth, predicted, strict=True))
    eps = 1e-15
    log_loss = -sum(math.log(min(max(s if t else 1 - s, eps), 1 - eps)) for t, s in zip(truth, scores, strict=True)) / n
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    values = {
        "accuracy": sum(t == p for t, p in zip(truth, predicted, strict=True)) / n,
        "log_loss": log_loss,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
    }
    misses = [1 - min(max(s if t else 1 - s, eps), 1 - eps) for t, s in zip(truth, scores, strict=True)]
    values["mae"] = sum(misses) / n
    values["rmse"] = math.sqrt(sum(m * m for m in misses) / n)
    positives = [s for s, t in zip(scores, truth, strict=True) if t]
    negatives = [s for s, t in zip(scores, truth, strict=True) if not t]
    if positives and negatives:  # P(score of a positive > score of a negative), ties half
        wins = sum((p > q) + 0.5 * (p == q) for p in positives for q in negatives)
        values["roc_auc"] = wins / (len(positives) * len(negatives))
    costs = [COST["true" if t else "false"]["true" if p else "false"] for t, p in zip(truth, predicted, strict=True)]
    values["cost"] = sum(costs)
    values["mean_cost"] = sum(costs) / n
    return values


def direct_delays(outcomes: list[Outcome]) -> dict[str, float]:
    delays = sorted(o.label_time - o.event_time for o in outcomes)

    def percentile(q: float) -> float:  # linear interpolation between closest ranks
        position = (len(delays) - 1) * q / 100
        low, high = math.floor(position), math.ceil(position)
        return delays[low] + (delays[high] - delays[low]) * (position - low)

    return {"p50": percentile(50), "p90": percentile(90), "p99": percentile(99), "max": float(delays[-1])}


def assert_close(actual: dict[str, float], expected: dict[str, float]) -> None:
    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_one_population_matches_the_textbook_definitions():
    outcomes = random_outcomes(300, models=(("fraud", "v1", "CHAMPION"),))
    metric_set = MetricSet("classification", positive_class="true", cost_matrix=COST)
    for outcome in outcomes:
        metric_set.update(outcome)
    assert metric_set.sample_count == 300
    assert_close(metric_set.metrics(), direct_metrics(outcomes))
    assert_close(metric_set.label_delays(), direct_delays(outcomes))


def test_every_window_model_and_segment_matches_a_direct_computation():
    outcomes = random_outcomes(600)
    config = EvaluationConfig("classification", positive_class="true", cost_matrix=COST,
                              segments=("country", "customer_tier"), window_ms=5_000, allowed_lateness_ms=0)
    evaluator = PrequentialEvaluator(config)
    for outcome in outcomes:
        assert evaluator.add(outcome, outcome.label_time) is Added.COUNTED
    reports = evaluator.close_all()

    groups: dict[tuple, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        start = outcome.label_time - outcome.label_time % 5_000
        groups[(outcome.model, start, None)].append(outcome)
        for field in ("country", "customer_tier"):
            groups[(outcome.model, start, (field, outcome.segments.get(field)))].append(outcome)
    assert len(reports) == len(groups)
    assert {(r.model, r.window_start, r.segment) for r in reports} == set(groups)
    for report in reports:
        members = groups[(report.model, report.window_start, report.segment)]
        assert report.window_end == report.window_start + 5_000
        assert report.sample_count == len(members)
        assert_close(report.metrics, direct_metrics(members))
        assert_close(report.label_delay_ms, direct_delays(members))
    missing_tier = [r for r in reports if r.segment == ("customer_tier", None)]
    assert missing_tier, "events without a segment value are a segment of their own (value null)"


def test_a_snapshot_record_per_report():
    outcome = Outcome("fraud", "v1", "CHAMPION", True, predicted_class="true",
                      probabilities={"true": 0.9, "false": 0.1}, event_time=1_000, label_time=3_000,
                      segments={"country": "NL"}, event_id="e1")
    evaluator = PrequentialEvaluator(EvaluationConfig("classification", "true", segments=("country",)))
    evaluator.add(outcome, 3_000)
    snapshots = [r.snapshot("card-fraud", 99) for r in evaluator.close_all()]
    assert [(s["segment_field"], s["segment_value"]) for s in snapshots] == [(None, None), ("country", "NL")]
    assert snapshots[0] == {
        "pipeline": "card-fraud", "model_name": "fraud", "model_version": "v1", "role": "CHAMPION",
        "window_start": 0, "window_end": 10_000, "segment_field": None, "segment_value": None,
        "sample_count": 1, "metrics": snapshots[0]["metrics"],
        "label_delay_ms": {"p50": 2_000.0, "p90": 2_000.0, "p99": 2_000.0, "max": 2_000.0}, "emitted_at": 99,
    }
    assert snapshots[0]["metrics"]["accuracy"] == 1.0 and "roc_auc" not in snapshots[0]["metrics"], \
        "ROC AUC is undefined with one class and is left out rather than NaN"


def test_windows_close_after_the_lateness_and_late_or_duplicate_outcomes_are_not_counted():
    config = EvaluationConfig("classification", "true", window_ms=10_000, allowed_lateness_ms=2_000)
    evaluator = PrequentialEvaluator(config)
    first = Outcome("m", "v1", "CHAMPION", True, predicted_class="true", event_id="a")
    assert evaluator.add(first, 5_000) is Added.COUNTED
    assert evaluator.add(first, 5_000) is Added.DUPLICATE
    assert evaluator.add(Outcome("m", "v1", "CHAMPION", False, predicted_class="true", event_id="b"),
                         11_999) is Added.COUNTED
    assert evaluator.close() == [], "window [0, 10 s) waits for the lateness"
    evaluator.advance(12_000)
    reports = evaluator.close()
    assert [(r.window_start, r.sample_count) for r in reports] == [(0, 1)]
    assert evaluator.closed_until == 10_000
    late = Outcome("m", "v1", "CHAMPION", True, predicted_class="false", event_id="c")
    assert evaluator.add(late, 9_000) is Added.LATE
    restarted = PrequentialEvaluator(config, closed_until=evaluator.closed_until)
    assert restarted.add(late, 9_000) is Added.LATE, "the boundary survives a restart"


def test_regression_metrics_and_cost():
    rng = np.random.default_rng(3)
    truth, predicted = rng.normal(10, 3, 200), rng.normal(10, 3, 200)
    cost = RegressionCost(per_unit_over=2.0, per_unit_under=5.0)
    metric_set = MetricSet("regression", cost_function=cost)
    for t, p in zip(truth, predicted, strict=True):
        metric_set.update(Outcome("m", "v1", "CHAMPION", float(t), value=float(p)))
    errors = predicted - truth
    expected_cost = float(np.sum(np.where(errors > 0, 2.0 * errors, -5.0 * errors)))
    assert_close(metric_set.metrics(), {
        "mae": float(np.mean(np.abs(errors))), "rmse": float(np.sqrt(np.mean(errors**2))),
        "cost": expected_cost, "mean_cost": expected_cost / 200,
    })


def test_cost_matrix_cells_and_defaults():
    assert classification_cost(COST, True, "false") == 50.0
    assert classification_cost(COST, "false", True) == 2.0
    assert classification_cost(COST, "True", "true") == 0.0, "boolean spellings are one class"
    assert classification_cost({}, "a", "a") == 0.0 and classification_cost({}, "a", "b") == 1.0
    assert regression_cost(None, 10.0, 12.5) == 2.5
    assert regression_cost(RegressionCost(per_unit_over=3.0, per_unit_under=1.0), 10.0, 12.0) == 6.0


def test_multiclass_without_positive_class():
    metric_set = MetricSet("classification")
    for label, probabilities in [("a", {"a": 0.7, "b": 0.2, "c": 0.1}), ("b", {"a": 0.5, "b": 0.4, "c": 0.1}),
                                 ("c", {"a": 0.1, "b": 0.1, "c": 0.8})]:
        metric_set.update(Outcome("m", "v1", "CHAMPION", label, probabilities=probabilities))
    values = metric_set.metrics()
    assert values["accuracy"] == pytest.approx(2 / 3)
    assert values["log_loss"] == pytest.approx(-(math.log(0.7) + math.log(0.4) + math.log(0.8)) / 3)
    assert values["mae"] == pytest.approx((0.3 + 0.6 + 0.2) / 3)
    assert values["rmse"] == pytest.approx(math.sqrt((0.3**2 + 0.6**2 + 0.2**2) / 3))
    assert "roc_auc" not in values and "precision" not in values


def test_classification_mae_and_rmse_are_the_candidates_held_out_ones():
    """The publisher's metric_decay compares a champion's live mae or rmse (promotion metric
    absolute_error or squared_error) with its candidate's held-out one: both must score the same
    events the same way, a prediction with no probabilities or no opinion at all included."""
    spec = ModelSpec(name="fraud", task="classification", estimator="river.linear_model.LogisticRegression",
                     positive_class="fraud", negative_class="ok")
    predictions = [{"predicted_class": "fraud", "probabilities": {"fraud": 0.8, "ok": 0.2}},
                   {"predicted_class": "ok", "probabilities": {"True": 0.3, "False": 0.7}},
                   {"predicted_class": "fraud", "probabilities": {}},
                   {"predicted_class": None, "probabilities": {}},
                   {"predicted_class": None, "probabilities": {"ok": 0.6, "fraud": 0.4}}]
    labels = ["fraud", "fraud", "ok", "ok", "ok"]
    metric_set = MetricSet("classification", positive_class="fraud")
    for label, prediction in zip(labels, predictions, strict=True):
        metric_set.update(Outcome("fraud", "v1", "CHAMPION", label, **prediction))
    live, held_out = metric_set.metrics(), holdout_metrics(spec, labels, predictions)
    assert live["mae"] == pytest.approx(held_out["mae"]) == pytest.approx((0.2 + 0.7 + 1 + 1 + 0.4) / 5)
    assert live["rmse"] == pytest.approx(held_out["rmse"])


def test_roc_auc_and_delay_helpers():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [True, False]) == pytest.approx(0.5)
    assert roc_auc([0.2], [True]) is None
    assert delay_distribution([]) == {}
    assert delay_distribution([5]) == {"p50": 5.0, "p90": 5.0, "p99": 5.0, "max": 5.0}


def test_outcomes_from_a_labeled_example_one_per_model():
    example = {"event_id": "e1", "label": True, "event_time": 1, "label_time": 5, "segments": {"country": "NL"},
               "predictions": [
                   {"model_name": "fraud", "model_version": "v1", "role": "CHAMPION", "predicted_class": "true",
                    "probabilities": {"true": 0.9}, "value": None},
                   {"model_name": "fraud", "model_version": "v2", "role": "SHADOW", "predicted_class": None,
                    "probabilities": {"true": 0.2, "false": 0.8}, "value": None}]}
    outcomes = outcomes_from_example(example)
    assert [o.model for o in outcomes] == [("fraud", "v1", "CHAMPION"), ("fraud", "v2", "SHADOW")]
    assert [o.predicted() for o in outcomes] == ["true", "false"]
    assert outcomes[0].label_delay_ms == 4 and outcomes[0].segments == {"country": "NL"}
