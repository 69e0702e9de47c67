"""A binary model whose classes are not called true/false: 0/1 labels, or a positive class of "false".

The model learns positive-vs-rest as True/False (``training.target``); everything downstream
(predictions, actions, metrics, promotion losses) must speak the spec's class names.
"""

from __future__ import annotations

import math
import random

import pytest

from streamloop.contracts.learning_specs import ModelSpec
from streamloop.contracts.pipeline import PipelineSpec
from streamloop.ml import build_model
from streamloop.ml.evaluation import MetricSet, Outcome
from streamloop.ml.prediction import choose_action, predict
from streamloop.ml.promotion import class_key, event_loss
from streamloop.ml.training import training_pair


def example(rng: random.Random, positive: str, negative: str) -> dict:
    amount = rng.uniform(0, 1000)
    label = positive if amount > 500 else negative
    return {"numeric": {"amount": amount, "distance_from_home_km": rng.uniform(0, 10)},
            "categorical": {"merchant_category": "grocery"}, "label": label}


@pytest.mark.parametrize(("positive", "negative"), [("1", "0"), ("false", "true"), ("fraud", "legit")])
def test_a_well_trained_model_is_right_under_the_spec_s_class_names(
        demo_pipeline: PipelineSpec, positive: str, negative: str) -> None:
    spec = ModelSpec.model_validate({**demo_pipeline.model.model_dump(), "positive_class": positive,
                                     "negative_class": negative, "cost_matrix": None})
    model = build_model(spec)
    rng = random.Random(3)
    for _ in range(3000):
        model.learn_one(*training_pair(spec, example(rng, positive, negative)))
    metrics = MetricSet("classification", positive_class=spec.positive_class)
    losses = []
    for i in range(500):
        event = example(rng, positive, negative)
        x, _ = training_pair(spec, event)
        output = predict(model, x, spec)
        assert set(output.probabilities) == {positive, negative}
        assert output.predicted_class in (positive, negative)
        assert output.action == choose_action(spec.actions, probability=output.probabilities[positive])
        metrics.update(Outcome("m", "v1", "CHAMPION", event["label"], predicted_class=output.predicted_class,
                               probabilities=output.probabilities, event_id=str(i)))
        losses.append(event_loss("log_loss", spec, event["label"], output.record_fields()))
    figures = metrics.metrics()
    assert figures["accuracy"] >= 0.95 and figures["roc_auc"] >= 0.95 and figures["f1"] >= 0.9, figures
    assert sum(losses) / len(losses) < 0.3


def test_accuracy_is_positive_versus_rest_when_a_label_is_neither_class() -> None:
    metrics = MetricSet("classification", positive_class="fraud")
    # A label outside both classes ("review") is "not fraud": the model that said "legit" was right.
    metrics.update(Outcome("m", "v1", "CHAMPION", "review", predicted_class="legit",
                           probabilities={"fraud": 0.1, "legit": 0.9}))
    metrics.update(Outcome("m", "v1", "CHAMPION", "fraud", predicted_class="legit",
                           probabilities={"fraud": 0.4, "legit": 0.6}))
    assert metrics.metrics()["accuracy"] == pytest.approx(0.5)


def test_the_zero_one_loss_is_positive_versus_rest_too(demo_pipeline: PipelineSpec) -> None:
    spec = ModelSpec.model_validate({**demo_pipeline.model.model_dump(), "positive_class": "fraud",
                                     "negative_class": "legit", "cost_matrix": None})
    said_legit = {"predicted_class": "legit", "probabilities": {"fraud": 0.1, "legit": 0.9}}
    assert event_loss("zero_one", spec, "review", said_legit) == 0.0, "not fraud, as the model said"
    assert event_loss("zero_one", spec, "fraud", said_legit) == 1.0


def test_the_log_loss_is_positive_versus_rest_too(demo_pipeline: PipelineSpec) -> None:
    """A label of neither class is "not the positive class", as the model learned it: its loss is
    that of 1 - P(positive), not of a class the model gave no probability (the clipped worst)."""
    spec = ModelSpec.model_validate({**demo_pipeline.model.model_dump(), "positive_class": "1",
                                     "negative_class": "0", "cost_matrix": None})
    said_one = {"predicted_class": "1", "probabilities": {"1": 0.8, "0": 0.2}}
    assert event_loss("log_loss", spec, "2", said_one) == pytest.approx(-math.log(0.2))
    assert event_loss("log_loss", spec, "1", said_one) == pytest.approx(-math.log(0.8))
    # A model that reports True/False while the labels carry the classes' names, "2" among them.
    as_booleans = {"predicted_class": "true", "probabilities": {"true": 0.7, "false": 0.3}}
    assert event_loss("log_loss", spec, "1", as_booleans) == pytest.approx(-math.log(0.7))
    assert event_loss("log_loss", spec, "2", as_booleans) == pytest.approx(-math.log(0.3))
    assert event_loss("log_loss", spec, "0", as_booleans) == pytest.approx(-math.log(0.3))


def test_a_whole_number_label_sent_as_a_double_is_the_integer_s_class(demo_pipeline: PipelineSpec) -> None:
    from streamloop.ml.training import target

    spec = ModelSpec.model_validate({**demo_pipeline.model.model_dump(), "positive_class": 1.0,
                                     "negative_class": 0, "cost_matrix": None})
    assert (spec.positive_class, spec.negative_class) == ("1", "0")
    assert target(spec, 1.0) is True and target(spec, 1) is True and target(spec, "1") is True
    assert target(spec, 0.0) is False and class_key(2.5) == "2.5"


@pytest.mark.parametrize(("estimator", "yes", "no"), [("river.linear_model.LogisticRegression", True, False),
                                                      ("river.tree.HoeffdingTreeClassifier", "true", "false")])
def test_without_a_positive_class_a_boolean_and_its_text_are_one_class(demo_pipeline: PipelineSpec,
                                                                       estimator: str, yes: object, no: object) -> None:
    """Two label sources, one sending booleans, the other their text: one pair of classes, as the records read them.

    A binary classifier learns them as the booleans (it takes ``int(label)``); any other as their text, so that
    another class beside them is text too."""
    from streamloop.ml.training import target

    spec = ModelSpec.model_validate({**demo_pipeline.model.model_dump(), "estimator": estimator, "params": {},
                                     "positive_class": None, "negative_class": None, "cost_matrix": None})
    forms = [target(spec, label) for label in (True, "true", "True", "TRUE", False, "false", "False")]
    assert forms == [yes, yes, yes, yes, no, no, no]
    assert all(type(form) is type(yes) for form in forms)
    assert target(spec, "fraud") == "fraud" and target(spec, 1.0) == "1", "other classes are their text"
    model = build_model(spec)
    rng = random.Random(5)
    spellings = ([True, "true", "True"], [False, "false", "False"])
    for i in range(2000):
        event = example(rng, "fraud", "legit")
        event["label"] = spellings[event["label"] == "legit"][i % 3]
        model.learn_one(*training_pair(spec, event))
    right = 0
    for _ in range(200):
        event = example(rng, "true", "false")
        output = predict(model, training_pair(spec, event)[0], spec)
        assert set(output.probabilities) == {"true", "false"}
        right += output.predicted_class == event["label"]
    assert right >= 180


def test_the_collector_s_metrics_read_a_double_label_as_the_retrainer_s_do(demo_pipeline: PipelineSpec) -> None:
    """Labels sent as Avro doubles (1.0, 0.0): the collector read "1.0" against the prediction "1": false decay."""
    from streamloop.ml.promotion import holdout_metrics

    spec = ModelSpec.model_validate({**demo_pipeline.model.model_dump(), "positive_class": 1, "negative_class": 0,
                                     "cost_matrix": None})
    labels = [1.0, 0.0, 1.0, 0.0, 1.0]
    predictions = [{"predicted_class": "1" if y else "0", "probabilities": {"1": 0.9 if y else 0.2,
                                                                           "0": 0.1 if y else 0.8}}
                   for y in (1, 0, 1, 1, 0)]
    metrics = MetricSet("classification", positive_class=spec.positive_class)
    for label, prediction in zip(labels, predictions, strict=True):
        metrics.update(Outcome("m", "v1", "CHAMPION", label, **prediction))
    collected, heldout = metrics.metrics(), holdout_metrics(spec, labels, predictions)
    assert collected["accuracy"] == pytest.approx(heldout["accuracy"]) == pytest.approx(0.6)
    assert collected["log_loss"] == pytest.approx(heldout["log_loss"])


def test_a_tree_that_learned_true_and_false_as_text_keeps_them_as_text_and_a_fresh_one_learns_them_as_text(
        demo_pipeline: PipelineSpec) -> None:
    """A champion trained before the booleans were learned as such (357bdee) knows "true"/"false" as text:
    fed True beside them, the tree sorted True with "true" and rejected every later label after the upgrade."""
    from streamloop.ml.estimators import learned_classes

    spec = ModelSpec.model_validate({**demo_pipeline.model.model_dump(), "params": {"grace_period": 50},
                                     "estimator": "river.tree.HoeffdingTreeClassifier", "positive_class": None,
                                     "negative_class": None, "cost_matrix": None})
    rng = random.Random(7)
    champion = build_model(spec)
    for _ in range(300):
        event = example(rng, "true", "false")
        champion.learn_one(training_pair(spec, event)[0], event["label"])  # as the older code learned it
    assert learned_classes(champion) == {"true", "false"}
    spellings = ([True, "true", "True"], [False, "false", "False"])
    for i in range(600):
        event = example(rng, "true", "false")
        event["label"] = spellings[event["label"] == "false"][i % 3]
        x, y = training_pair(spec, event, champion)
        assert y == class_key(event["label"]), "the form the champion knows"
        champion.learn_one(x, y)
        assert set(predict(champion, x, spec).probabilities) == {"true", "false"}
    assert learned_classes(champion) == {"true", "false"}

    fresh = build_model(spec)
    assert learned_classes(fresh) == set()
    for i in range(100):
        event = example(rng, "true", "false")
        event["label"] = spellings[event["label"] == "false"][i % 3]
        fresh.learn_one(*training_pair(spec, event, fresh))
    assert learned_classes(fresh) == {"true", "false"}, "a model with no classes yet learns them as text"


def _tree(demo_pipeline: PipelineSpec) -> ModelSpec:
    return ModelSpec.model_validate({**demo_pipeline.model.model_dump(), "params": {"grace_period": 50},
                                     "estimator": "river.tree.HoeffdingTreeClassifier", "positive_class": None,
                                     "negative_class": None, "cost_matrix": None})


def test_a_fresh_tree_told_true_then_a_text_class_learns_every_class_as_text(demo_pipeline: PipelineSpec) -> None:
    """True first, then "fraud": the fresh tree learned the boolean, then the text beside it, and sorted them at its
    next prediction (TypeError); "true" from a second source was then a third class beside True."""
    from streamloop.ml.estimators import learned_classes
    from streamloop.ml.training import target

    spec = _tree(demo_pipeline)
    rng = random.Random(11)
    model = build_model(spec)
    spellings = ([True, "true", "True"], [False, "false", "FALSE"], ["fraud"])
    right = tested = 0
    for i in range(1500):
        event = example(rng, "true", "false")
        amount = event["numeric"]["amount"]
        kind = 0 if amount < 333 else 1 if amount < 666 else 2
        event["label"] = spellings[kind][i % len(spellings[kind])] if i else True
        x, y = training_pair(spec, event, model)
        assert y == target(spec, event["label"]), "the form a rebuild's fresh model learns it in"
        if i >= 1000:
            tested += 1
            right += predict(model, x, spec).predicted_class == class_key(event["label"])
        model.learn_one(x, y)
    assert learned_classes(model) == {"true", "false", "fraud"}
    assert set(predict(model, x, spec).probabilities) == {"true", "false", "fraud"}
    assert right >= 0.9 * tested


def test_a_tree_that_learned_true_and_false_as_booleans_keeps_them_and_refuses_another_class(
        demo_pipeline: PipelineSpec) -> None:
    """A tree fed booleans by older versions cannot sort a text class with them: the label is refused with the
    reason (dead-lettered), and the tree goes on predicting and learning true and false in any spelling."""
    from streamloop.ml.estimators import learned_classes
    from streamloop.ml.exceptions import InvalidLabel
    from streamloop.ml.training import target

    spec = _tree(demo_pipeline)
    rng = random.Random(13)
    legacy = build_model(spec)
    for _ in range(300):
        event = example(rng, "true", "false")
        legacy.learn_one(training_pair(spec, event)[0], event["label"] == "true")  # as the older code learned it
    assert learned_classes(legacy) == {True, False}
    assert [target(spec, label, legacy) for label in (True, "true", "TRUE", False, "false")] == [
        True, True, True, False, False]
    with pytest.raises(InvalidLabel, match="cannot learn 'fraud' beside them; a rebuild's model learns every"):
        target(spec, "fraud", legacy)
    event = example(rng, "true", "false")
    legacy.learn_one(*training_pair(spec, event, legacy))
    assert set(predict(legacy, training_pair(spec, event)[0], spec).probabilities) == {"true", "false"}
    assert learned_classes(legacy) == {True, False}


@pytest.mark.parametrize("estimator", ["river.linear_model.SoftmaxRegression", "river.dummy.PriorClassifier"])
def test_a_multiclass_model_with_no_class_list_that_learned_booleans_keeps_them(estimator: str) -> None:
    """SoftmaxRegression and PriorClassifier keep no list of classes: one fed booleans by older versions was
    taken for a model with none and learned "true" and "false" beside True and False, four classes whose
    probabilities, folded by class name, added up to more than 1."""
    from streamloop.ml.estimators import learned_classes
    from streamloop.ml.exceptions import InvalidLabel
    from streamloop.ml.training import target

    spec = ModelSpec.model_validate({"name": "m", "task": "classification", "estimator": estimator})
    assert learned_classes(build_model(spec)) in (None, set()), "a fresh one has learned nothing"
    legacy = build_model(spec)
    for i in range(200):
        label = i % 2 == 0
        legacy.learn_one({"amount": float(label)}, label)  # as the older code learned it
    assert learned_classes(legacy) == {True, False}
    assert [target(spec, label, legacy) for label in (True, "true", False, "FALSE")] == [True, True, False, False]
    with pytest.raises(InvalidLabel, match="cannot learn 'fraud' beside them"):
        target(spec, "fraud", legacy)
    for i in range(20):
        label = ("true", "false")[i % 2]
        legacy.learn_one({"amount": float(label == "true")}, target(spec, label, legacy))
    assert learned_classes(legacy) == {True, False}
    assert set(legacy.predict_proba_one({"amount": 1.0})) == {True, False}
    probabilities = predict(legacy, {"amount": 1.0}, spec).probabilities
    assert set(probabilities) == {"true", "false"} and sum(probabilities.values()) == pytest.approx(1)


def test_a_one_vs_rest_wrapper_names_the_classes_it_learned_not_its_untrained_template() -> None:
    from river import linear_model, multiclass

    from streamloop.ml.estimators import learned_classes

    model = multiclass.OneVsRestClassifier(linear_model.LogisticRegression())
    assert not learned_classes(model)
    for i in range(30):
        model.learn_one({"amount": float(i % 3)}, (True, False)[i % 2])
    assert learned_classes(model) == {True, False}
