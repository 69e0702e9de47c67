"""What goes wrong around the retrainer (a full artifact store, a bad label or feature, a champion
that no longer unpickles, a model that cannot predict) must not stop it nor cost a label."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from services.retrainer.processor import PUBLISH_RETRY_MS
from services.retrainer.rebuild import rebuild, recent_window
from services.retrainer.rebuild_policy import REBUILD_ATTEMPTS, REBUILD_RETRY_MAX_MS, REBUILD_RETRY_MS
from streamloop.contracts.learning_specs import ModelSpec
from streamloop.ml import ArtifactIdentity, build_model
from streamloop.ml.estimators import learned_classes
from streamloop.ml.exceptions import InvalidLabel
from streamloop.ml.features import InvalidFeatureValue
from streamloop.ml.prediction import predict, warm_up
from streamloop.ml.registry import CHAMPION, deployment_record, slot_key
from streamloop.ml.training import target, training_pair
from tests.unit.ml.test_artifact_store import pickled_from_a_module_gone_since
from tests.unit.model_publisher.factories import T0, consumed, drift_event, labeled_example, with_policy
from tests.unit.retrainer.test_resume import Counters, FakeResume, restarted
from tests.unit.retrainer.test_retrainer import Harness, candidates, labeled

FAILURES = ("streamloop_retrainer_publish_failures", (("pipeline", "card-fraud"),))


class FullDisk:
    """``store_bytes`` failing as a full disk does, until ``freed``; counts the attempts."""

    def __init__(self, store) -> None:
        self.write = store.store_bytes
        self.full = True
        self.attempts = 0

    def __call__(self, data: bytes):
        self.attempts += 1
        if self.full:
            raise OSError(28, "No space left on device")
        return self.write(data)


def test_a_candidate_that_cannot_be_stored_rejects_no_label_and_the_next_one_has_them_all(spec, tmp_path):
    harness = Harness(spec, tmp_path)
    harness.processor._metrics = Counters()
    disk = harness.store.store_bytes = FullDisk(harness.store)
    result = harness.processor.process(labeled(120))
    assert result.outputs == [] and result.rejections == [], "the labels were learned: none is dead-lettered"
    assert harness.processor.learner.learned_total == 120
    assert disk.attempts == 1, "one attempt, not one per label after the 50th"
    harness.now += PUBLISH_RETRY_MS - 1
    assert candidates(harness.processor.process(labeled(10, start=120))) == [] and disk.attempts == 1
    harness.now += 1
    assert candidates(harness.processor.process(labeled(1, start=130))) == [] and disk.attempts == 2
    assert harness.processor._metrics.counts[FAILURES] == 2
    disk.full = False
    harness.now += 2 * PUBLISH_RETRY_MS  # each failure doubles the wait
    published = candidates(harness.processor.process(labeled(1, start=131)))
    assert [(c["sample_count"], c["parent_version"]) for c in published] == [(132, harness.champion)]
    assert published[0]["source_offsets"] == [{"topic": "lab", "partition": 0, "start": 0, "end": 132}]
    assert candidates(harness.processor.process(labeled(50, start=132)))[0]["sample_count"] == 50, \
        "back to the usual cadence"


def test_a_time_based_publish_that_cannot_be_stored_does_not_stop_the_service(demo_pipeline, tmp_path):
    spec = with_policy(demo_pipeline, retrain={"online_publish_every_labels": None, "online_publish_every": 60_000,
                                               "schedule": None})
    harness = Harness(spec, tmp_path)
    disk = harness.store.store_bytes = FullDisk(harness.store)
    harness.processor.process(labeled(5))
    harness.now = T0 + 61_000
    assert harness.processor.tick(harness.now).outputs == []
    assert harness.processor.tick(harness.now + 500).outputs == [] and disk.attempts == 1
    disk.full = False
    harness.now += PUBLISH_RETRY_MS
    assert [c["sample_count"] for c in candidates(harness.processor.tick(harness.now))] == [5]


@pytest.fixture
def regression(spec) -> ModelSpec:
    return ModelSpec.model_validate({**spec.model.model_dump(), "task": "regression", "positive_class": None,
                                     "negative_class": None, "estimator": "river.linear_model.LinearRegression",
                                     "cost_matrix": None, "actions": []})


def test_a_regression_label_that_is_no_finite_number_is_dead_lettered_with_the_reason(spec, regression, tmp_path):
    harness = Harness(spec.model_copy(update={"model": regression}), tmp_path)
    labels = [12.5, "abc", True, math.nan, math.inf, None, 7]
    batch = [consumed("lab", {**labeled_example(i, False), "label": label}, offset=i) for i, label in enumerate(labels)]
    result = harness.processor.process(batch)
    assert [(r.record.offset, type(r.error)) for r in result.rejections] == [(i, InvalidLabel) for i in range(1, 6)]
    assert isinstance(result.rejections[0].error, ValueError)
    assert "a regression label must be a finite number, not 'abc'" in str(result.rejections[0].error)
    assert harness.processor.learner.learned_total == 2
    assert [r.offset for r in recent_window(regression, batch, 10, pipeline=spec.name)] == [0, 6], \
        "a rebuild's window leaves them out instead"


def test_a_huge_finite_feature_is_dead_lettered_and_the_online_challenger_stays_usable(spec, tmp_path):
    """1e160 is finite, but the scaler squares it: inf, then NaN weights in every later candidate."""
    harness = Harness(spec, tmp_path)
    huge = consumed("lab", {**labeled_example(40, True), "numeric": {"amount": 1e160, "distance_from_home_km": 3.0}},
                    offset=40)
    result = harness.processor.process([*labeled(40), huge, *labeled(60, start=41)])
    assert [r.record.offset for r in result.rejections] == [40]
    assert isinstance(result.rejections[0].error, InvalidFeatureValue)
    assert "numeric feature 'amount' is 1e+160, beyond ±1e+100" in str(result.rejections[0].error)
    published = candidates(result)
    assert [c["sample_count"] for c in published] == [50, 50]
    assert published[-1]["heldout_metrics"]["accuracy"] > 0.9
    output = predict(harness.store.load_published(published[-1]), {"amount": 20.0, "distance_from_home_km": 3.0},
                     spec.model)
    assert all(math.isfinite(p) for p in output.probabilities.values()) and output.predicted_class == "false"


def test_a_binary_model_takes_booleans_and_their_text_and_learns_its_positive_class_against_the_rest(spec):
    assert [target(spec.model, label) for label in (True, "true", "TRUE", False, "false", "fraud", 1)] == [
        True, True, True, False, False, False, False]
    with pytest.raises(InvalidLabel, match="no label"):
        target(spec.model, None)


def test_labels_sent_as_booleans_and_as_their_text_are_learned_as_one_pair_of_classes(spec, tmp_path):
    """A second label source sends "true"/"false": the tree sorted True with "true" and rejected every later label."""
    tree = spec.model.model_copy(update={"estimator": "river.tree.HoeffdingTreeClassifier", "params": {},
                                         "positive_class": None, "negative_class": None, "actions": [],
                                         "cost_matrix": None})
    harness = Harness(spec.model_copy(update={"model": tree}), tmp_path)
    batch = labeled(200)
    for record in batch[100:]:
        record.value["label"] = "true" if record.value["label"] else "false"
    result = harness.processor.process(batch)
    assert result.rejections == [] and harness.processor.learner.learned_total == 200
    assert [c["sample_count"] for c in candidates(result)] == [50, 50, 50, 50]
    output = predict(harness.processor.learner.model, {"amount": 900.0, "distance_from_home_km": 800.0,
                                                       "merchant_category=jewelry": 1.0}, tree)
    assert set(output.probabilities) == {"true", "false"}


def test_a_tree_told_true_then_a_text_class_learns_both_as_a_rebuild_does(spec, tmp_path):
    """A fresh tree's first label was True, the next ones "legit": it learned the boolean and the text beside it,
    so the online challenger's next prediction sorted them (TypeError) and every later label was dead-lettered."""
    tree = spec.model.model_copy(update={"estimator": "river.tree.HoeffdingTreeClassifier", "params": {},
                                         "positive_class": None, "negative_class": None, "actions": [],
                                         "cost_matrix": None})
    harness = Harness(spec.model_copy(update={"model": tree}), tmp_path)
    batch = labeled(200)
    for record in batch:
        if not record.value["label"]:
            record.value["label"] = "legit"
        elif record.offset % 2:
            record.value["label"] = "True"
    assert batch[0].value["label"] is True
    result = harness.processor.process(batch)
    assert result.rejections == [] and harness.processor.learner.learned_total == 200
    assert [c["sample_count"] for c in candidates(result)] == [50, 50, 50, 50]
    online = harness.processor.learner.model
    jewelry = {"amount": 900.0, "distance_from_home_km": 800.0, "merchant_category=jewelry": 1.0}
    assert set(predict(online, jewelry, tree).probabilities) == {"true", "legit"}
    rebuilt = rebuild(tree, batch, 200, 0.2, pipeline=spec.name).model
    assert learned_classes(rebuilt) == learned_classes(online) == {"true", "legit"}
    assert predict(rebuilt, jewelry, tree).predicted_class == predict(online, jewelry, tree).predicted_class == "true"


def test_a_tree_champion_that_learned_booleans_dead_letters_another_class_and_goes_on_learning(spec, tmp_path):
    """Fed True/False by older versions, the tree cannot learn "legit" beside them: that label is dead-lettered with
    the reason, the others are learned, and a rebuild, whose fresh tree learns every class as text, can replace it."""
    tree = spec.model.model_copy(update={"estimator": "river.tree.HoeffdingTreeClassifier", "params": {},
                                         "positive_class": None, "negative_class": None, "actions": [],
                                         "cost_matrix": None})
    champion = build_model(tree)
    for record in labeled(200, start=1000):
        champion.learn_one(training_pair(tree, record.value)[0], record.value["label"])  # as older versions did
    assert learned_classes(champion) == {True, False}
    harness = Harness(spec.model_copy(update={"model": tree}), tmp_path)
    harness.champion = harness.set_champion("fraud-20990101000000000-0000a1d0", champion)
    batch = labeled(100)
    batch[10].value["label"] = "legit"
    batch[11].value["label"] = "false"
    result = harness.processor.process(batch)
    assert [(r.record.offset, type(r.error)) for r in result.rejections] == [(10, InvalidLabel)]
    assert "cannot learn 'legit' beside them" in str(result.rejections[0].error)
    assert harness.processor.learner.learned_total == 99
    assert learned_classes(harness.processor.learner.model) == {True, False}
    output = predict(harness.processor.learner.model, {"amount": 900.0, "distance_from_home_km": 800.0,
                                                       "merchant_category=jewelry": 1.0}, tree)
    assert set(output.probabilities) == {"true", "false"}
    assert learned_classes(rebuild(tree, batch, 100, 0.2, pipeline=spec.name).model) == {"true", "false", "legit"}


def test_a_tree_champion_that_learned_true_and_false_as_text_goes_on_learning_them(spec, tmp_path):
    """A tree trained before 357bdee learned "true"/"false" as text; its online challenger then got booleans,
    and the tree sorted True with "true": every label after the upgrade was dead-lettered with a TypeError."""
    tree = spec.model.model_copy(update={"estimator": "river.tree.HoeffdingTreeClassifier", "params": {},
                                         "positive_class": None, "negative_class": None, "actions": [],
                                         "cost_matrix": None})
    champion = build_model(tree)
    for record in labeled(200, start=1000):
        champion.learn_one(training_pair(tree, record.value)[0], "true" if record.value["label"] else "false")
    harness = Harness(spec.model_copy(update={"model": tree}), tmp_path)
    harness.champion = harness.set_champion("fraud-20990101000000000-0000a1d0", champion)
    batch = labeled(200)
    for record in batch[100:]:
        record.value["label"] = "true" if record.value["label"] else "false"
    result = harness.processor.process(batch)
    assert result.rejections == [] and harness.processor.learner.learned_total == 200
    assert [(c["sample_count"], c["parent_version"]) for c in candidates(result)][0] == (50, harness.champion)
    output = predict(harness.processor.learner.model, {"amount": 900.0, "distance_from_home_km": 800.0,
                                                       "merchant_category=jewelry": 1.0}, tree)
    assert set(output.probabilities) == {"true", "false"}


def test_examples_dead_lettered_once_are_left_out_when_read_again_after_a_restart(spec, tmp_path):
    """They are among the labels a restarted retrainer reads again; learning them raised out of start-up."""
    earlier = labeled(6)
    bad_feature = consumed("lab", {**labeled_example(6, True), "numeric": {"amount": math.nan}}, offset=6)
    no_label = consumed("lab", {**labeled_example(7, True), "label": None}, offset=7)
    harness = restarted(spec, tmp_path, FakeResume([*earlier, bad_feature, no_label, *labeled(2, start=8)]))
    harness.processor.prepare()
    assert harness.processor.learner.learned_total == 8
    published = candidates(harness.processor.process(labeled(42, start=10)))
    assert [c["sample_count"] for c in published] == [50]


def test_a_champion_that_no_longer_unpickles_is_a_load_failure_not_a_crash(spec, tmp_path):
    """After a river upgrade renamed a class, the champion's artifact verifies but does not unpickle."""
    resume = FakeResume(labeled(8))  # what the group will have committed when the next champion loads
    harness = restarted(spec, tmp_path, resume)
    identity = ArtifactIdentity(spec.name, spec.model.name, "fraud-20990101000000000-00000001")
    ref = harness.store.sign(harness.store.store_bytes(pickled_from_a_module_gone_since("river_renamed")), identity)
    harness.table.apply(slot_key(spec.name, spec.model.name, CHAMPION), deployment_record(
        spec.name, spec.model.name, CHAMPION, identity.version, ref.to_record(), deployed_at=T0))
    harness.processor.prepare()
    assert harness.processor.learner.model is None and resume.calls == []
    counts = harness.processor._metrics.counts
    assert counts[("streamloop_retrainer_champion_load_failures", (("pipeline", "card-fraud"),))] == 1
    assert harness.processor.process(labeled(3, start=5)).rejections == []
    harness.set_champion("fraud-20990101000000001-00000002")
    harness.processor.process(labeled(2, start=8))
    assert resume.calls == ["fraud-20990101000000001-00000002"]
    assert harness.processor.learner.learned_total == 10, "the next champion loads, with the labels since read again"


def test_a_champion_whose_uri_names_no_possible_file_is_a_load_failure_not_a_crash(spec, tmp_path):
    """An encoded NUL in the artifact's URI raised ValueError out of prepare(): the service crash-looped."""
    harness = restarted(spec, tmp_path, FakeResume())
    bootstrap = harness.table.champion(spec.name, spec.model.name)
    artifact = {**bootstrap["artifact"], "uri": bootstrap["artifact"]["uri"] + "%00"}
    harness.table.apply(slot_key(spec.name, spec.model.name, CHAMPION), deployment_record(
        spec.name, spec.model.name, CHAMPION, "fraud-20990101000000000-deadbeef", artifact, deployed_at=T0))
    harness.processor.prepare()
    assert harness.processor.learner.model is None
    counts = harness.processor._metrics.counts
    assert counts[("streamloop_retrainer_champion_load_failures", (("pipeline", "card-fraud"),))] == 1


def rebuild_only(demo_pipeline):
    return with_policy(demo_pipeline, retrain={"online_publish_every_labels": None, "online_publish_every": None,
                                               "rebuild_window": 300, "schedule": None})


def test_a_drift_rebuild_that_cannot_be_stored_is_tried_again_with_backoff(demo_pipeline, tmp_path):
    harness = Harness(rebuild_only(demo_pipeline), tmp_path, window=labeled(300))
    harness.processor._metrics = Counters()
    disk = harness.store.store_bytes = FullDisk(harness.store)
    harness.processor.process([consumed("drift", drift_event(), 0)])
    # Each attempt reads its window again (the disk is also tried by catch-up's online candidate).
    assert candidates(harness.processor.process(labeled(300, start=1))) == [] and len(harness.window_sizes) == 1
    harness.now += REBUILD_RETRY_MS - 1
    assert candidates(harness.processor.tick(harness.now)) == [] and len(harness.window_sizes) == 1, \
        "not before its backoff"
    harness.now += 1
    # The second attempt runs (inline, collected in the same tick) and fails.
    assert candidates(harness.processor.tick(harness.now)) == [] and len(harness.window_sizes) == 2
    disk.full = False
    harness.now += 2 * REBUILD_RETRY_MS - 1
    assert candidates(harness.processor.tick(harness.now)) == [] and len(harness.window_sizes) == 2, \
        "each failure doubles it"
    harness.now += 1
    built = candidates(harness.processor.tick(harness.now))
    assert [c["trigger"] for c in built] == ["DRIFT"] and built[0]["parent_version"] == harness.champion
    assert harness.window_sizes == [300, 300, 300]
    retries = ("streamloop_retrainer_rebuild_retries", (("pipeline", "card-fraud"),))
    assert harness.processor._metrics.counts[retries] == 2
    harness.now += 3_600_000
    assert candidates(harness.processor.tick(harness.now)) == [] and harness.window_sizes == [300, 300, 300], \
        "done: nothing more to try"


def test_a_rebuild_that_keeps_failing_is_given_up_after_its_attempts(demo_pipeline, tmp_path):
    harness = Harness(rebuild_only(demo_pipeline), tmp_path, window=labeled(300))
    harness.processor._metrics = Counters()
    disk = harness.store.store_bytes = FullDisk(harness.store)
    harness.processor.process([consumed("drift", drift_event(), 0)])
    harness.processor.process(labeled(300, start=1))
    for _ in range(20):
        harness.now += REBUILD_RETRY_MAX_MS
        harness.processor.tick(harness.now)
    assert len(harness.window_sizes) == REBUILD_ATTEMPTS and disk.full
    gave_up = ("streamloop_retrainer_rebuilds_skipped", (("pipeline", "card-fraud"), ("reason", "failed")))
    assert harness.processor._metrics.counts[gave_up] == 1


def test_an_online_challenger_that_cannot_predict_is_not_published_and_restarts_from_the_champion(spec, tmp_path):
    """The scorer refuses a model whose warm-up prediction fails; the publisher would still put it on trial."""
    harness = Harness(spec, tmp_path)
    harness.processor._metrics = Counters()
    harness.processor.process(labeled(30))
    poisoned = harness.processor.learner.model
    poisoned.learn_one({"amount": 1e160}, True)  # past the checks: the scaler's variance overflows, weights turn NaN
    writes = harness.store.store_bytes = FullDisk(harness.store)
    writes.full = False
    result = harness.processor.process(labeled(20, start=30))
    assert result.outputs == [] and result.rejections == [], "no candidate, and no label is to blame"
    assert writes.attempts == 0, "nothing stored for it"
    unusable = ("streamloop_retrainer_unusable_candidates", (("pipeline", "card-fraud"), ("trigger", "ONLINE")))
    assert harness.processor._metrics.counts[unusable] == 1
    learner = harness.processor.learner
    assert learner.model is not poisoned and learner.parent_version == harness.champion and learner.pending == 0
    published = candidates(harness.processor.process(labeled(50, start=50)))
    assert [(c["sample_count"], c["parent_version"]) for c in published] == [(50, harness.champion)]
    output = warm_up(harness.store.load_published(published[0]), spec.model)
    assert all(math.isfinite(p) for p in output.probabilities.values())


def test_an_online_challenger_that_cannot_predict_with_its_champion_retired_waits_for_the_next_champion(
        spec, tmp_path):
    """No champion to restart from: the learner drops its model, and the next champion deployed loads,
    the very record retired and written again included (its version is no longer taken as loaded)."""
    harness = Harness(spec, tmp_path)
    harness.processor._metrics = Counters()
    harness.processor.process(labeled(30))
    harness.processor.learner.model.learn_one({"amount": 1e160}, True)  # weights turn NaN
    key = slot_key(spec.name, spec.model.name, CHAMPION)
    deployed = harness.table.champion(spec.name, spec.model.name)
    harness.table.apply(key, None)  # the slot is retired
    result = harness.processor.process(labeled(20, start=30))
    assert result.outputs == [] and result.rejections == [], "no candidate, and no label is to blame"
    unusable = ("streamloop_retrainer_unusable_candidates", (("pipeline", "card-fraud"), ("trigger", "ONLINE")))
    assert harness.processor._metrics.counts[unusable] == 1
    learner = harness.processor.learner
    assert learner.model is None and learner.pending == 0
    learned = learner.learned_total
    assert candidates(harness.processor.process(labeled(60, start=50))) == [] and learner.learned_total == learned, \
        "nothing to learn with until a champion is deployed"
    harness.table.apply(key, deployed)
    published = candidates(harness.processor.process(labeled(50, start=110)))
    assert [(c["sample_count"], c["parent_version"]) for c in published] == [(50, harness.champion)]
    output = warm_up(harness.store.load_published(published[0]), spec.model)
    assert all(math.isfinite(p) for p in output.probabilities.values())


def test_a_rebuild_that_cannot_predict_is_not_published_nor_tried_again(demo_pipeline, tmp_path, monkeypatch):
    from services.retrainer import rebuild_policy
    from tests.unit.online_scorer.fakes import BrokenClassifier

    built = rebuild_policy.rebuild
    monkeypatch.setattr(rebuild_policy, "rebuild", lambda *a, **k: replace(built(*a, **k), model=BrokenClassifier()))
    harness = Harness(rebuild_only(demo_pipeline), tmp_path, window=labeled(300))
    harness.processor._metrics = Counters()
    harness.processor.process([consumed("drift", drift_event(), 0)])
    published = candidates(harness.processor.process(labeled(300, start=1)))
    assert [c["trigger"] for c in published] == ["ONLINE"] and len(harness.window_sizes) == 1, "catch-up's alone"
    unusable = ("streamloop_retrainer_unusable_candidates", (("pipeline", "card-fraud"), ("trigger", "DRIFT")))
    assert harness.processor._metrics.counts[unusable] == 1
    harness.now += REBUILD_RETRY_MAX_MS
    assert candidates(harness.processor.tick(harness.now)) == [] and len(harness.window_sizes) == 1, \
        "the same window would build the same model"
