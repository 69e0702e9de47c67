"""Parity with river: with no label delay, the collector's prequential accuracy is river's.

The pure half of the issue's parity test. Each event is scored before its label is learned,
exactly as the scorer (predict) and the retrainer (learn) do in the loop; the scores reach the
metrics as LabeledExample records, through the same code the collector runs
(``outcomes_from_example`` and ``PrequentialEvaluator``). ``river.evaluate.progressive_val_score``
on the same stream and a fresh copy of the same model must agree exactly. The one difference
in bookkeeping is the first event when the untrained model has no answer (empty probabilities,
as a Hoeffding tree's): river skips it, and the collector counts it as a sample without a
predicted class, which a window's accuracy leaves out. The end-to-end version (through Kafka,
with the retrainer) belongs to the retrainer's tests.
"""

from __future__ import annotations

import itertools

import pytest
from river import datasets, evaluate, linear_model, metrics, preprocessing, tree

from streamloop.ml.evaluation import EvaluationConfig, PrequentialEvaluator, class_key, outcomes_from_example


def scaled_logistic_regression():
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def hoeffding_tree():
    return tree.HoeffdingTreeClassifier(grace_period=50)


def labeled_example(i: int, x: dict, y, probabilities: dict) -> dict:
    """What the collector emits for event i, with the model's answer as the scorer writes it."""
    texts = {class_key(label): float(p) for label, p in probabilities.items()}
    predicted = max(texts, key=texts.__getitem__) if texts else None
    return {"event_id": f"e{i}", "entity_key": "k", "pipeline": "p", "event_time": 1_000 * i,
            "label_time": 1_000 * i, "label": y, "numeric": x, "categorical": {}, "segments": {},
            "predictions": [{"model_name": "m", "model_version": "v1", "role": "CHAMPION",
                             "predicted_class": predicted, "probabilities": texts, "value": None}],
            "features_offset": None}


@pytest.mark.parametrize("make_model", [scaled_logistic_regression, hoeffding_tree])
@pytest.mark.parametrize("dataset", [datasets.Phishing, lambda: itertools.islice(datasets.Bananas(), 2_000)])
def test_prequential_accuracy_equals_river_progressive_val_score(make_model, dataset):
    stream = list(dataset())
    river_accuracy = evaluate.progressive_val_score(stream, make_model(), metrics.Accuracy()).get()

    model = make_model()
    config = EvaluationConfig("classification", positive_class="true", window_ms=10_000, allowed_lateness_ms=0)
    evaluator = PrequentialEvaluator(config)
    unanswered: list[int] = []
    for i, (x, y) in enumerate(stream):
        example = labeled_example(i, x, y, model.predict_proba_one(x))  # the scorer, before the label
        if example["predictions"][0]["predicted_class"] is None:
            unanswered.append(example["event_time"])
        for outcome in outcomes_from_example(example):  # the collector, when the label arrives
            evaluator.add(outcome, example["label_time"])
        model.learn_one(x, y)  # the retrainer, after the label
    reports = evaluator.close_all()

    def answered(report) -> int:
        return report.sample_count - sum(report.window_start <= t < report.window_end for t in unanswered)

    correct = sum(round(r.metrics["accuracy"] * answered(r)) for r in reports if answered(r))
    # A tree has no answer before its first label; a logistic regression answers 0.5 / 0.5.
    assert unanswered == ([0] if make_model is hoeffding_tree else [])
    assert sum(r.sample_count for r in reports) == len(stream)
    assert len(reports) > 10, "accuracy is pooled over many 10 s windows, weighted by their answers"
    assert correct / (len(stream) - len(unanswered)) == pytest.approx(river_accuracy, abs=1e-12)
