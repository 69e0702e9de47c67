"""Catch-up after a concept drift: the change point, the learner's prequential record and replay, the processor."""

from __future__ import annotations

import copy
import io
import logging
import pickle
import random
import uuid

import fastavro
import pytest

from services.retrainer.catch_up import CatchUp, change_point, significant_rise
from services.retrainer.examples import score
from services.retrainer.lineage import CandidateFactory
from services.retrainer.online import OnlineLearner
from services.retrainer.processor import RetrainerProcessor
from streamloop.contracts.learning_specs import CatchUpSpec, RetrainSpec
from streamloop.contracts.pipeline import PipelineSpec
from streamloop.contracts.schemas import SchemaRepository
from streamloop.ml import build_model
from streamloop.ml.artifacts import ArtifactRef
from streamloop.ml.estimators import learned_classes
from streamloop.ml.promotion import event_loss
from streamloop.ml.registry import CHAMPION, deployment_record, slot_key
from streamloop.ml.training import training_pair
from tests.unit.model_publisher.factories import (
    T0,
    artifact_store,
    consumed,
    drift_event,
    labeled_example,
    with_policy,
)
from tests.unit.retrainer.test_retrainer import TOPICS, Harness, candidates, labeled


def test_the_change_point_is_where_the_error_rate_rises():
    rng = random.Random(3)
    errors = [float(rng.random() < 0.1) for _ in range(600)] + [float(rng.random() < 0.6) for _ in range(250)]
    assert 230 <= change_point(errors) <= 270


def test_no_change_point_without_a_rise_or_without_enough_errors():
    rng = random.Random(4)
    steady = [float(rng.random() < 0.2) for _ in range(800)]
    falling = [1.0] * 300 + [0.0] * 300
    assert change_point(falling) == 0, "a model getting better is no drift"
    assert change_point([0.0] * 30 + [1.0] * 29) == 0, "fewer than min_side on each side"
    rising = steady[:500] + [1.0] * 300
    assert change_point(rising) == 300


def test_a_significant_rise_is_one_a_steady_error_rate_would_rarely_make():
    rng = random.Random(5)
    steady = [[float(rng.random() < 0.2) for _ in range(500)] for _ in range(100)]
    assert all(change_point(errors) for errors in steady[:10]), "the estimate alone finds a rise in any noise"
    assert sum(bool(significant_rise(errors)) for errors in steady) <= 1, "steady errors rise by chance"
    risen = [float(rng.random() < 0.1) for _ in range(300)] + [float(rng.random() < 0.5) for _ in range(150)]
    assert 130 <= significant_rise(risen) <= 170
    slight = [float(rng.random() < 0.2) for _ in range(100)] + [float(rng.random() < 0.3) for _ in range(100)]
    assert change_point(slight) and not significant_rise(slight), "ten points on 100 errors: could be chance"
    burst = ([float(rng.random() < 0.15) for _ in range(200)] + [float(rng.random() < 0.9) for _ in range(30)]
             + [float(rng.random() < 0.15) for _ in range(200)])
    assert 225 <= significant_rise(burst) <= 235, "a learner that adapted again: its rise is over"
    adapting = [float(rng.random() < 0.5) for _ in range(60)] + [float(rng.random() < 0.15) for _ in range(300)]
    assert significant_rise(adapting) == 0, "high errors first, then lower: a learner getting better"
    assert significant_rise([0.0] * 30 + [1.0] * 29) == 0, "fewer than min_side on each side"
    assert significant_rise([0.0] * 20 + [1.0] * 100) == 90, "at least min_side errors before the rise"
    assert significant_rise([0.0] * 300 + [1.0] * 20) == 30, "the rise's errors and the next ones: min_side of them"


def test_a_second_change_soon_after_the_last_replay_is_seen():
    """The errors since the last replay begin with the learner's own while it adapted, high first."""
    rng = random.Random(11)

    def errors(adapting: int) -> list[float]:
        return [float(rng.random() < rate) for rate, count in ((0.5, adapting), (0.05, 260 - adapting), (0.35, 100))
                for _ in range(count)]

    found = [significant_rise(errors(120)) for _ in range(20)]
    assert sum(60 <= since <= 130 for since in found) >= 15, f"against all errors before it: 0 of 20. {found}"
    settling = [[float(rng.random() < rate) for rate, count in ((0.5, 120), (0.2, 100), (0.05, 300))
                 for _ in range(count)] for _ in range(50)]
    assert sum(bool(significant_rise(errors)) for errors in settling) <= 1, "getting better in steps is no rise"


def test_a_learner_that_is_nearly_always_right_makes_no_rise_of_a_few_errors():
    assert significant_rise([0.0] * 400 + [1.0] + [0.0] * 599) == 0, "one error in a thousand"
    assert significant_rise([0.0] * 300 + [1.0, 1.0] + [0.0] * 300) == 0
    rng = random.Random(7)
    sparse = [[float(rng.random() < rate) for _ in range(1000)] for rate in (0.002, 0.005, 0.01) for _ in range(30)]
    assert sum(bool(significant_rise(errors)) for errors in sparse) <= 1, "the normal approximation: 15 of 90"
    burst = [float(rng.random() < 0.01) for _ in range(500)] + [1.0] * 12 + [float(rng.random() < 0.01)
                                                                             for _ in range(300)]
    assert 300 <= significant_rise(burst) <= 320, "twelve errors in a row, where one in a hundred is usual"


def test_the_bound_counts_every_triple_tried():
    def errors(in_burst: int) -> list[float]:
        """One error in ten, then ``in_burst`` errors in 30, then one in ten again."""
        usual = [float(i % 10 == 0) for i in range(200)]
        return usual + [float(i < in_burst) for i in range(30)] + usual[:100]

    assert significant_rise(errors(13)) == 0, "p = 5.7e-6, between 0.01 and 0.05 over the 3,648 triples"
    assert significant_rise(errors(13), alpha=0.05) == 140
    assert significant_rise(errors(14)) == 140


def test_squared_errors_rise_too():
    rng = random.Random(8)
    steady = [0.0] + [rng.random() ** 2 * 0.5 for _ in range(400)]
    risen = steady + [0.5 + rng.random() ** 2 for _ in range(100)]
    assert significant_rise(steady) == 0 and 95 <= significant_rise(risen) <= 105
    assert significant_rise([0.0] * 400 + [25.0] + [0.0] * 599) == 0, "one outlier is no rise"
    assert significant_rise([0.0] * 300) == 0 and significant_rise([1.0] * 100 + [0.0] * 200) == 0


def test_catch_up_counts_down_and_changes_cadence_and_repeats():
    off = CatchUp(CatchUpSpec(), min_samples=500)
    assert not off.enabled and not off.start() and off.repeats == 1 and off.publish_every(5000) == 5000
    on = CatchUp(CatchUpSpec(labels=3, repeats=4, repeats_decay="none"), min_samples=500)
    assert on.publish_every(5000) == 5000 and on.repeats == 1, "only while active"
    assert on.start() is True and on.active
    assert on.publish_every(5000) == 250 and on.publish_every(None) == 250 and on.publish_every(100) == 100
    assert on.repeats == 4
    on.learned()
    assert on.start() is False, "already running: the countdown restarts; the learner decides on a second replay"
    assert on.labels_left == 3
    for _ in range(3):
        on.learned()
    assert not on.active and on.repeats == 1 and on.publish_every(5000) == 5000
    assert CatchUp(CatchUpSpec(labels=3, publish_every_labels=40), 500).publish_every(None) is None
    every = CatchUp(CatchUpSpec(labels=3, publish_every_labels=40), 500)
    every.start()
    assert every.publish_every(None) == 40


def test_repeats_decay_linearly_to_one_over_the_catch_up():
    catch_up = CatchUp(CatchUpSpec(labels=100, repeats=10), min_samples=500)
    assert catch_up.spec.repeats_decay == "linear", "the default"
    catch_up.start()
    seen = []
    while catch_up.active:
        seen.append(catch_up.repeats)
        catch_up.learned()
    assert len(seen) == 100
    assert seen[0] == 10 and seen[-1] == 1, "all of them at the drift, one at the end"
    assert seen == sorted(seen, reverse=True), "never rising"
    assert seen[50] == 5, "halfway, half of them"
    assert catch_up.repeats == 1, "over"
    catch_up.start()
    assert catch_up.repeats == 10, "a new concept drift starts over"
    constant = CatchUp(CatchUpSpec(labels=100, repeats=10, repeats_decay="none"), min_samples=500)
    constant.start()
    for _ in range(99):
        constant.learned()
    assert constant.active and constant.repeats == 10


def test_the_learner_records_each_loss_before_it_learns_the_label(demo_pipeline):
    spec = demo_pipeline.model
    learner = OnlineLearner(spec, loss_metric="log_loss", prequential_window=5)
    learner.reset(build_model(spec), "fraud-a")
    expected = []
    for record in labeled(8):
        shadow = copy.deepcopy(learner.model)
        x, _ = training_pair(spec, record.value)
        expected.append((record.value["event_id"], event_loss("log_loss", spec, record.value["label"],
                                                              score(shadow, spec, x))))
        assert learner.learn(record)
    assert learner.snapshot().prequential_losses == expected[-5:], "the last window, in order"
    learner.reset(build_model(spec), "fraud-b")
    assert learner.snapshot().prequential_losses == [], "another line's predictions are no evidence for this one"


def test_repeats_learn_a_label_more_than_once(demo_pipeline):
    spec = demo_pipeline.model
    once, thrice = OnlineLearner(spec), OnlineLearner(spec)
    once.reset(build_model(spec), "fraud-a")
    thrice.reset(build_model(spec), "fraud-a")
    record = labeled(1)[0]
    once.learn(record)
    thrice.learn(record, repeats=3)
    for _ in range(2):
        x, y = training_pair(spec, record.value)
        once.model.learn_one(x, y)
    assert pickle.dumps(once.model) == pickle.dumps(thrice.model)
    assert thrice.learned_total == 1 and thrice.pending == 1, "one label, however often learned"


def _concept_change(start: int, count: int, *, inverted: bool) -> list:
    """Examples whose every feature keeps the old concept's value; from the change on, only the label flips."""
    return [consumed("lab", labeled_example(i, label=i % 3 == 0) | ({"label": i % 3 != 0} if inverted else {}),
                     offset=i) for i in range(start, start + count)]


def _learner_past_a_change(spec, backlog: int) -> tuple[OnlineLearner, list]:
    """A learner that learned 300 examples of the old concept, then 100 whose labels flipped."""
    learner = OnlineLearner(spec, replay_backlog=backlog)
    learner.reset(build_model(spec), "fraud-a")
    records = _concept_change(0, 300, inverted=False) + _concept_change(300, 100, inverted=True)
    for record in records:
        learner.learn(record)
    return learner, records


def test_the_replay_learns_the_examples_since_the_change_point_again(demo_pipeline):
    spec = demo_pipeline.model
    # 300 examples of the old concept, then 100 with their labels inverted: the errors rise.
    learner, _ = _learner_past_a_change(spec, 400)
    before = pickle.dumps(learner.model)
    assert learner.replay_since_change(0) == 0 and pickle.dumps(learner.model) == before
    since = learner.replay_since_change(2)
    assert 80 <= since <= 120, since
    assert pickle.dumps(learner.model) != before
    assert learner.pending == 400, "a replay is not new labels"


def test_what_a_replay_learns_is_in_the_next_snapshots_lineage_even_after_a_reset(demo_pipeline, monkeypatch):
    spec = demo_pipeline.model
    learner = OnlineLearner(spec, replay_backlog=400)
    learner.reset(build_model(spec), "fraud-a")
    for i in range(160):  # offsets 0-79 on each of two partitions
        learner.learn(consumed("lab", labeled_example(i, label=i % 3 == 0), offset=i // 2, partition=i % 2))
    # The champion changes to another line (a rebuild, or a rollback): this learner starts from it
    # and learns one label; a concept drift then replays the backlog into it.
    learner.reset(build_model(spec), "fraud-rebuilt")
    learner.learn(consumed("lab", labeled_example(500, label=True), offset=80, partition=0))
    monkeypatch.setattr("services.retrainer.online.change_point", lambda errors: len(errors))
    assert learner.replay_since_change(1) == 161
    spans = {r.partition: (r.start, r.end) for r in learner.snapshot().source_offsets}
    assert spans == {0: (0, 81), 1: (0, 80)}, "the publisher must not take partition 1's 0-79 for held out"


def test_a_replay_into_another_line_s_tree_learns_true_and_false_in_the_form_that_tree_knows(demo_pipeline,
                                                                                               monkeypatch):
    """The backlog was learned by a tree that knows "true"/"false" as text (trained before 357bdee); a
    rebuild's tree, which learned booleans, replaced it: replaying the text into it raised TypeError."""
    spec = demo_pipeline.model.model_copy(update={"estimator": "river.tree.HoeffdingTreeClassifier", "params": {},
                                                  "positive_class": None, "negative_class": None, "actions": [],
                                                  "cost_matrix": None})
    old, rebuilt = build_model(spec), build_model(spec)
    for record in _concept_change(1000, 200, inverted=False):
        x, y = training_pair(spec, record.value)
        old.learn_one(x, "true" if y else "false")
        rebuilt.learn_one(x, y)
    learner = OnlineLearner(spec, replay_backlog=400)
    learner.reset(old, "fraud-a")
    for record in _concept_change(0, 150, inverted=False) + _concept_change(150, 50, inverted=True):
        learner.learn(record)
    learner.reset(rebuilt, "fraud-rebuilt")
    learner.learn(consumed("lab", labeled_example(500, label=True), offset=500))
    monkeypatch.setattr("services.retrainer.online.change_point", lambda errors: len(errors))
    assert learner.replay_since_change(1) == 201
    x, _ = training_pair(spec, labeled_example(501, label=True))
    assert set(score(learner.model, spec, x)["probabilities"]) == {"true", "false"}


def test_a_replay_into_a_tree_that_learned_booleans_leaves_out_a_class_it_cannot_learn_beside_them(demo_pipeline,
                                                                                                     monkeypatch):
    """The backlog was learned by a tree of text classes, "legit" among them; the line was then rolled back to a
    tree that learned True/False (older versions): replaying "legit" into it made every later prediction raise."""
    spec = demo_pipeline.model.model_copy(update={"estimator": "river.tree.HoeffdingTreeClassifier", "params": {},
                                                  "positive_class": None, "negative_class": None, "actions": [],
                                                  "cost_matrix": None})
    legacy = build_model(spec)
    for record in _concept_change(1000, 200, inverted=False):
        legacy.learn_one(training_pair(spec, record.value)[0], record.value["label"])  # as older versions did
    learner = OnlineLearner(spec, replay_backlog=400)
    learner.reset(build_model(spec), "fraud-a")
    records = _concept_change(0, 150, inverted=False) + _concept_change(150, 50, inverted=True)
    for record in records[::5]:
        record.value["label"] = "legit"
    for record in records:
        learner.learn(record)
    assert learned_classes(learner.model) == {"true", "false", "legit"}
    learner.reset(legacy, "fraud-legacy")
    learner.learn(consumed("lab", labeled_example(500, label=True), offset=500))
    monkeypatch.setattr("services.retrainer.online.change_point", lambda errors: len(errors))
    assert learner.replay_since_change(1) == 201
    assert learned_classes(learner.model) == {True, False}
    x, _ = training_pair(spec, labeled_example(501, label=True))
    assert set(score(learner.model, spec, x)["probabilities"]) == {"true", "false"}
    assert learner.refit_since_change(2) == 201 and learned_classes(learner.model) == {True, False}


def test_a_refit_starts_over_from_the_model_before_the_replay(demo_pipeline):
    spec = demo_pipeline.model
    learner, records = _learner_past_a_change(spec, 500)
    before_replay = copy.deepcopy(learner.model)
    since = learner.replay_since_change(2)
    later = _concept_change(400, 30, inverted=True)
    for record in later:
        learner.learn(record, repeats=3)
    assert learner.refit_since_change(2) == since + 30
    expected = copy.deepcopy(before_replay)
    examples = records[400 - since:]
    for _ in range(2):
        for record in examples + later:
            expected.learn_one(*training_pair(spec, record.value))
    assert pickle.dumps(learner.model) == pickle.dumps(expected), \
        "every example since the change learned twice, the later ones' repeats gone"
    refitted = pickle.dumps(learner.model)
    learner.refit_since_change(2)
    assert pickle.dumps(learner.model) == refitted, "a second refit learns nothing twice over"


def test_once_the_change_point_has_left_the_backlog_a_refit_takes_all_of_it(demo_pipeline):
    spec = demo_pipeline.model
    learner, _ = _learner_past_a_change(spec, 400)
    learner.replay_since_change(1)
    for record in _concept_change(400, 400, inverted=True):
        learner.learn(record)
    assert learner.refit_since_change(1) == 400


def test_a_refit_needs_a_replay_on_this_line(demo_pipeline):
    spec = demo_pipeline.model
    learner, _ = _learner_past_a_change(spec, 400)
    unchanged = pickle.dumps(learner.model)
    assert learner.refit_since_change(2) == 0 and pickle.dumps(learner.model) == unchanged, "no replay yet"
    learner.replay_since_change(2)
    learner.reset(build_model(spec), "fraud-rebuilt")
    unchanged = pickle.dumps(learner.model)
    assert learner.refit_since_change(2) == 0 and pickle.dumps(learner.model) == unchanged, \
        "the model before the replay belongs to another line"


def test_a_later_drift_replays_again_only_after_the_learners_own_errors_rose(demo_pipeline):
    spec = demo_pipeline.model
    learner, _ = _learner_past_a_change(spec, 1000)
    learner.replay_since_change(2)
    rng = random.Random(6)
    for record in _concept_change(400, 200, inverted=True):
        if rng.random() < 0.15:  # noise, so the errors since the replay have a most likely rise too
            record.value["label"] = not record.value["label"]
        learner.learn(record, repeats=3)
    caught_up = pickle.dumps(learner.model)
    assert learner.replay_since_new_change(2) == 0 and pickle.dumps(learner.model) == caught_up, \
        "a re-detection of the first change: nothing new for this learner"
    assert learner.refit_since_change(2) == 300, "the refits still start at the first change"
    second = _concept_change(600, 100, inverted=False)  # the first concept again
    for record in second:
        learner.learn(record, repeats=3)
    before_replay = copy.deepcopy(learner.model)
    since = learner.replay_since_new_change(2)
    assert 30 <= since <= 100, since
    assert learner.refit_since_change(2) == since
    expected = copy.deepcopy(before_replay)
    for _ in range(2):
        for record in second[100 - since:]:
            expected.learn_one(*training_pair(spec, record.value))
    assert pickle.dumps(learner.model) == pickle.dumps(expected), \
        "the refits start over from the model at the second drift, with only the second change's examples"
    assert learner.replay_since_new_change(2) == 0, "sought among the errors since the second replay: none yet"


def test_once_the_last_replay_has_left_the_backlog_a_second_change_is_sought_in_all_of_it(demo_pipeline):
    spec = demo_pipeline.model
    learner, _ = _learner_past_a_change(spec, 300)
    learner.replay_since_change(2)
    rng = random.Random(9)
    for record in _concept_change(400, 400, inverted=True):  # the replay's examples leave the backlog
        if rng.random() < 0.1:
            record.value["label"] = not record.value["label"]
        learner.learn(record, repeats=3)
    assert learner.replay_since_new_change(2) == 0
    for record in _concept_change(800, 100, inverted=False):
        learner.learn(record, repeats=3)
    assert 60 <= learner.replay_since_new_change(2) <= 100


def test_a_later_drift_needs_a_first_replay_on_this_line(demo_pipeline):
    spec = demo_pipeline.model
    learner, _ = _learner_past_a_change(spec, 1000)
    unchanged = pickle.dumps(learner.model)
    assert learner.replay_since_new_change(2) == 0 and pickle.dumps(learner.model) == unchanged


@pytest.fixture
def catch_up_spec(demo_pipeline) -> PipelineSpec:
    return with_policy(demo_pipeline,
                       retrain={"online_publish_every_labels": 1000, "online_publish_every": None,
                                "rebuild_on_drift": False, "schedule": None,
                                "catch_up": CatchUpSpec(labels=100, repeats=2, publish_every_labels=20)},
                       promotion={"min_samples": 50})


def test_a_concept_drift_publishes_at_once_then_often_with_prequential_losses(catch_up_spec, tmp_path):
    harness = Harness(catch_up_spec, tmp_path)
    assert candidates(harness.processor.process(labeled(70))) == []
    assert harness.processor.process([consumed("drift", drift_event(kind="DATA"), 0)]).outputs == [], \
        "data drift says nothing about the model"
    first = candidates(harness.processor.process([consumed("drift", drift_event("INFO"), 1),
                                                  consumed("drift", drift_event(), 2)]))
    assert [c["trigger"] for c in first] == ["ONLINE"] and first[0]["sample_count"] == 70
    losses = first[0]["prequential_losses"]
    assert [p["event_id"] for p in losses] == [f"evt-{i}" for i in range(10, 70)], "the last 1.2 x min_samples"
    assert all(p["loss"] >= 0 for p in losses)
    during = candidates(harness.processor.process(labeled(100, start=70)))
    assert [c["sample_count"] for c in during] == [20] * 5
    assert all(len(c["prequential_losses"]) == 60 for c in during)
    assert during[-1]["prequential_losses"][-1]["event_id"] == "evt-169"
    after = candidates(harness.processor.process(labeled(1000, start=170)))
    assert [c["sample_count"] for c in after] == [1000] and after[0]["prequential_losses"] == [], \
        "catch-up over: the usual cadence, judged as a shadow"


def encoded_size(candidate: dict) -> int:
    encoded = io.BytesIO()
    fastavro.schemaless_writer(encoded, SchemaRepository().load("models/model_candidate.avsc").parsed, candidate)
    return len(encoded.getvalue())


def test_a_candidate_fits_in_a_kafka_record_whatever_min_samples(demo_pipeline, tmp_path):
    """1.2 x min_samples losses with UUID event ids took over a megabyte past a min_samples of about 18,500."""
    spec = with_policy(demo_pipeline, promotion={"min_samples": 20_000})
    losses = [(str(uuid.UUID(int=i)), 0.25) for i in range(int(1.2 * spec.promotion.min_samples))]
    factory = CandidateFactory(spec, artifact_store(tmp_path), lambda: T0)  # KafkaSettings' 1,000,000 bytes
    candidate = factory.build(build_model(spec.model), "ONLINE", "fraud-a", [], 100, {}, losses)
    assert encoded_size(candidate) < 1_000_000
    kept = [(p["event_id"], p["loss"]) for p in candidate["prequential_losses"]]
    assert 11_000 <= len(kept) < len(losses) and kept == losses[-len(kept):], "the most recent, half the limit"


def test_the_cap_follows_the_producer_s_limit_and_is_logged_once(catch_up_spec, tmp_path, caplog):
    harness = Harness(catch_up_spec, tmp_path)
    harness.processor = RetrainerProcessor(catch_up_spec, TOPICS, harness.table, harness.store, harness.read_window,
                                           clock=lambda: harness.now, max_candidate_bytes=1_000)
    harness.processor.process(labeled(70))
    with caplog.at_level(logging.WARNING, logger="services.retrainer.lineage"):
        first = candidates(harness.processor.process([consumed("drift", drift_event(), 0)]))
        during = candidates(harness.processor.process(labeled(40, start=70)))
    assert [p["event_id"] for p in first[0]["prequential_losses"]] == [f"evt-{i}" for i in range(37, 70)], \
        "33 of 15 bytes each, of the 500 bytes given to them"
    assert len(during) == 2 and during[-1]["prequential_losses"][-1]["event_id"] == "evt-109"
    assert all(encoded_size(c) - encoded_size({**c, "prequential_losses": []}) <= 500 for c in first + during)
    assert len(caplog.records) == 1 and "the last 33 of 60" in caplog.records[0].getMessage()


def test_catch_up_is_off_unless_the_spec_asks(demo_pipeline, tmp_path):
    assert RetrainSpec().catch_up == CatchUpSpec() and not CatchUp(CatchUpSpec(), 500).enabled
    spec = with_policy(demo_pipeline, retrain={"online_publish_every_labels": 50, "online_publish_every": None,
                                               "rebuild_on_drift": False, "schedule": None,
                                               "catch_up": RetrainSpec().catch_up})
    harness = Harness(spec, tmp_path)
    harness.processor.process(labeled(30))
    assert harness.processor.process([consumed("drift", drift_event("CRITICAL"), 0)]).outputs == []
    published = candidates(harness.processor.process(labeled(20, start=30)))
    assert [c["prequential_losses"] for c in published] == [[]]


def _catch_up_harness(catch_up_spec, tmp_path, **catch_up_fields) -> Harness:
    catch_up = catch_up_spec.retrain.catch_up.model_copy(
        update={"replay_passes": 2, "replay_backlog": 600, **catch_up_fields})
    return Harness(with_policy(catch_up_spec, retrain={"catch_up": catch_up}), tmp_path)


@pytest.mark.parametrize("each_candidate", [True, False])
def test_with_replay_each_candidate_every_catch_up_candidate_but_the_first_is_a_refit(
        catch_up_spec, tmp_path, monkeypatch, each_candidate):
    harness = _catch_up_harness(catch_up_spec, tmp_path, replay_each_candidate=each_candidate)
    learner = harness.processor.learner
    refits: list[int] = []
    refit = OnlineLearner.refit_since_change
    monkeypatch.setattr(OnlineLearner, "refit_since_change",
                        lambda self, passes: refits.append(refit(self, passes)) or refits[-1])
    harness.processor.process(_concept_change(0, 300, inverted=False) + _concept_change(300, 100, inverted=True))
    first = candidates(harness.processor.process([consumed("drift", drift_event(), 0)]))
    assert len(first) == 1 and refits == [], "the drift's own replay is the first candidate's"
    # Exactly one catch-up candidate (every 20 labels), published at the end of the batch.
    (candidate,) = candidates(harness.processor.process(_concept_change(400, 20, inverted=True)))
    published = pickle.dumps(harness.store.load_published(candidate))
    assert pickle.dumps(learner.model) == published, "the learner goes on from its candidate"
    assert len(refits) == (1 if each_candidate else 0) and all(refits)
    assert refit(learner, 2) > 0
    if each_candidate:
        assert pickle.dumps(learner.model) == published, "the candidate was the refit: another one changes nothing"
        (span,) = candidate["source_offsets"]
        assert (span["start"], span["end"]) == (420 - refits[0], 420), "a refit's lineage names all it learned"
    else:
        assert pickle.dumps(learner.model) != published, "the candidate was the live model, repeats and all"
    harness.processor.process(_concept_change(420, 2000, inverted=True))
    # Catch-up lasts 100 labels: four more candidates, each refit on 20 more examples, then none.
    assert refits == ([refits[0] + 20 * k for k in range(5)] if each_candidate else []), \
        "one refit per candidate until catch-up is over"


def _past_the_first_drift(catch_up_spec, tmp_path, metrics=None, **catch_up_fields) -> tuple[Harness, list[dict]]:
    """The examples' pipeline's catch-up, 400 labels of one concept, 150 of another, then its drift event.

    Returns the harness and the candidates the drift published.
    """
    harness = _catch_up_harness(catch_up_spec, tmp_path, labels=2000, repeats=10, replay_passes=9,
                                replay_backlog=1000, publish_every_labels=50, **catch_up_fields)
    harness.processor._metrics = metrics
    harness.processor.process(_concept_change(0, 400, inverted=False) + _concept_change(400, 150, inverted=True))
    return harness, candidates(harness.processor.process([consumed("drift", drift_event(), 0)]))


def test_after_a_second_change_during_catch_up_the_refits_learn_the_newest_concept(catch_up_spec, tmp_path):
    harness, _ = _past_the_first_drift(catch_up_spec, tmp_path)
    process = harness.processor.process
    process(_concept_change(550, 300, inverted=True))  # concept B, caught up with
    harness.processor.catch_up.labels_left = 700
    assert candidates(process([consumed("drift", drift_event(), 1)])) == [], \
        "another detector's view of the first change: no replay"
    assert harness.processor.catch_up.labels_left == 2000, "the countdown restarts"
    process(_concept_change(850, 150, inverted=False))  # concept C: A again
    assert len(candidates(process([consumed("drift", drift_event(), 2)]))) == 1, "a replay, published at once"
    (candidate, *_) = candidates(process(_concept_change(1000, 150, inverted=False)))
    model = harness.store.load_published(candidate)
    fresh = _concept_change(5000, 300, inverted=False)
    losses = [event_loss("log_loss", catch_up_spec.model, r.value["label"],
                         score(model, catch_up_spec.model, training_pair(catch_up_spec.model, r.value)[0]))
              for r in fresh]
    assert sum(losses) / len(losses) < 0.05, "the live model with its repeats gets there (~0.02 in the review)"


def test_the_catch_up_counters_count_replays_not_re_detections(catch_up_spec, tmp_path):
    from prometheus_client import generate_latest

    from streamloop.telemetry import ServiceMetrics

    metrics = ServiceMetrics("retrainer")
    try:
        harness, _ = _past_the_first_drift(catch_up_spec, tmp_path, metrics)
        process = harness.processor.process
        process(_concept_change(550, 300, inverted=True))
        process([consumed("drift", drift_event(), 1)])  # a re-detection of the first change
        text = generate_latest(metrics.registry).decode()
        assert 'streamloop_retrainer_catch_ups_total{pipeline="card-fraud",service="retrainer"} 1.0' in text
        assert "streamloop_retrainer_catch_up_replays_total{" not in text, "a re-detection replays nothing"
        process(_concept_change(850, 150, inverted=False))
        process([consumed("drift", drift_event(), 2)])  # a second change
        text = generate_latest(metrics.registry).decode()
    finally:
        metrics.shutdown()
    assert 'streamloop_retrainer_catch_ups_total{pipeline="card-fraud",service="retrainer"} 1.0' in text
    assert 'streamloop_retrainer_catch_up_replays_total{pipeline="card-fraud",service="retrainer"} 1.0' in text


def test_without_refits_a_later_drift_only_restarts_the_countdown(catch_up_spec, tmp_path, monkeypatch):
    harness, _ = _past_the_first_drift(catch_up_spec, tmp_path, replay_each_candidate=False)
    monkeypatch.setattr(OnlineLearner, "replay_since_new_change", lambda self, passes: pytest.fail("replayed"))
    process = harness.processor.process
    process(_concept_change(550, 300, inverted=True) + _concept_change(850, 150, inverted=False))
    harness.processor.catch_up.labels_left = 700
    monkeypatch.setattr(OnlineLearner, "replay_since_change", lambda self, passes: pytest.fail("replayed"))
    assert candidates(process([consumed("drift", drift_event(), 1)])) == []
    assert harness.processor.catch_up.labels_left == 2000


def test_a_later_drift_after_a_restart_from_another_line_replays_as_a_first_drift(catch_up_spec, tmp_path):
    harness, _ = _past_the_first_drift(catch_up_spec, tmp_path)
    process, learner = harness.processor.process, harness.processor.learner
    assert learner.replayed_on_this_line
    harness.set_champion("fraud-other-line")  # a rebuild's, say: the learner restarts from it
    process(_concept_change(550, 200, inverted=True))
    assert harness.processor.catch_up.active and not learner.replayed_on_this_line
    restarted = pickle.dumps(learner.model)
    (candidate,) = candidates(process([consumed("drift", drift_event(), 1)]))
    assert learner.replayed_on_this_line and pickle.dumps(learner.model) != restarted
    published = harness.store.load_published(candidate)
    assert pickle.dumps(published) == pickle.dumps(learner.model), "the replay, published at once"


def test_a_rollback_to_a_version_of_this_line_keeps_the_refits_start(catch_up_spec, tmp_path):
    harness, (replayed,) = _past_the_first_drift(catch_up_spec, tmp_path)
    process, learner = harness.processor.process, harness.processor.learner
    *_, queued = candidates(process(_concept_change(550, 100, inverted=True)))
    ref = ArtifactRef.from_record(replayed["artifact"])
    harness.table.apply(slot_key("card-fraud", "fraud", CHAMPION), deployment_record(
        "card-fraud", "fraud", CHAMPION, replayed["version"], ref.to_record(), deployed_at=T0,
        decision_id="fraud-later:rollback"))
    process(_concept_change(650, 10, inverted=True))
    assert learner.parent_version == replayed["version"], "restarted from the version rolled back to"
    assert learner.replayed_on_this_line, "it is this line's: its refits start where they did"
    assert learner.refit_since_change(9) >= 110 + 30, "from the change point on, not from the rollback"
    assert candidates(process([consumed("drift", drift_event(), 1)])) == [], \
        "a re-detection: no second replay of what the version rolled back to learned"
    harness.set_champion(queued["version"])  # a candidate of this line from before the rollback, promoted
    process(_concept_change(660, 10, inverted=True))
    assert learner.parent_version == queued["version"] and learner.replayed_on_this_line, \
        "it learned the replay too: its refits start where they did"
