"""The retrainer's logic without a broker: online learning with dedupe, lineage, drift and scheduled rebuilds."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest

import streamloop
from services.retrainer.online import LINE_MEMORY, OnlineLearner
from services.retrainer.processor import RetrainerProcessor, RetrainerTopics
from services.retrainer.rebuild import RebuildSkipped, rebuild, recent_window
from services.retrainer.rebuild_policy import RebuildPolicy
from streamloop.contracts.pipeline import PipelineSpec
from streamloop.kafka.records import ConsumedRecord
from streamloop.ml import ArtifactIdentity, build_model
from streamloop.ml.registry import CHAMPION, DeploymentTable, deployment_record, slot_key
from tests.unit.model_publisher.factories import (
    T0,
    artifact_store,
    consumed,
    drift_event,
    labeled_example,
    signed_by_streamloop_0_1,
    with_policy,
)

TOPICS = RetrainerTopics("lab", "drift", "cand")
VERSION = re.compile(r"^fraud-\d{17}-[0-9a-f]{8}$")


def labeled(count: int, start: int = 0, partitions: int = 1, topic: str = "lab") -> list[ConsumedRecord]:
    """Separable examples (fraud: large amounts far from home), spread round-robin over partitions."""
    records = []
    for i in range(start, start + count):
        value = labeled_example(i, label=(i % 3 == 0))
        records.append(consumed(topic, value, offset=i // partitions, partition=i % partitions))
    return records


class Harness:
    def __init__(self, spec: PipelineSpec, root: Path, window: list[ConsumedRecord] | None = None,
                 policy: RebuildPolicy | None = None) -> None:
        self.spec = spec
        self.now = T0
        self.store = artifact_store(root)
        self.table = DeploymentTable()
        self.table.ready = True
        self.champion = self.set_champion("fraud-bootstrap-00000000")
        self.window_sizes: list[int] = []
        self._window = window or []
        self.processor = RetrainerProcessor(spec, TOPICS, self.table, self.store, self.read_window,
                                            policy=policy or RebuildPolicy(min_interval_ms=60_000, min_examples=50),
                                            clock=lambda: self.now)

    def read_window(self, size: int) -> list[ConsumedRecord]:
        self.window_sizes.append(size)
        return self._window

    def set_champion(self, version: str, model=None) -> str:
        ref = self.store.put_model(model if model is not None else build_model(self.spec.model),
                                   ArtifactIdentity(self.spec.name, self.spec.model.name, version))
        key = slot_key(self.spec.name, self.spec.model.name, CHAMPION)
        self.table.apply(key, deployment_record(self.spec.name, self.spec.model.name, CHAMPION, version,
                                                ref.to_record(), deployed_at=self.now))
        return version


def candidates(result) -> list[dict]:
    assert all(o.topic == "cand" and o.key == "fraud" for o in result.outputs)
    return [o.value for o in result.outputs]


def test_replays_and_duplicate_events_do_not_reach_the_online_model(spec):
    learner = OnlineLearner(spec.model)
    learner.reset(build_model(spec.model), "fraud-a")
    batch = labeled(40, partitions=2)
    assert sum(learner.learn(r) for r in batch) == 40
    state = pickle.dumps(learner.model)
    assert sum(learner.learn(r) for r in batch) == 0, "a replayed batch (same offsets) is skipped"
    again = [consumed("lab", r.value, r.offset + 1000, r.partition) for r in batch[:5]]
    assert sum(learner.learn(r) for r in again) == 0, "the same event ids at new offsets are skipped"
    older = consumed("lab", labeled_example(999, True), offset=3, partition=0)
    assert not learner.learn(older), "an offset below the partition's high-water mark is a replay"
    assert pickle.dumps(learner.model) == state
    assert learner.learned_total == 40 and learner.skipped_duplicates == 46
    assert learner.high_water() == {("lab", 0): 1002, ("lab", 1): 1001}


def test_an_online_candidate_every_n_labels_with_its_lineage(spec, tmp_path):
    harness = Harness(spec, tmp_path)
    batch = labeled(120, partitions=2)
    harness.now = T0 + 5_000
    published = candidates(harness.processor.process(batch))
    assert [c["trigger"] for c in published] == ["ONLINE", "ONLINE"]
    first, second = published
    assert first["parent_version"] == harness.champion and second["parent_version"] == first["version"]
    assert VERSION.match(first["version"]) and first["version"] < second["version"]
    assert first["sample_count"] == 50 and second["sample_count"] == 50
    assert first["source_offsets"] == [{"topic": "lab", "partition": 0, "start": 0, "end": 25},
                                       {"topic": "lab", "partition": 1, "start": 0, "end": 25}]
    assert second["source_offsets"] == [{"topic": "lab", "partition": 0, "start": 25, "end": 50},
                                        {"topic": "lab", "partition": 1, "start": 25, "end": 50}]
    # What the publisher needs to score it on examples it never learned (its parent's are its parent's).
    assert second["learned_through"] == [{"topic": "lab", "partition": 0, "offset": 49},
                                         {"topic": "lab", "partition": 1, "offset": 49}]
    assert second["read_through"] == second["learned_through"], "it learned everything it read"
    assert set(first["heldout_metrics"]) >= {"log_loss", "accuracy", "sample_count", "cost", "mean_cost"}
    assert first["code_version"].startswith(streamloop.__version__)
    assert first["estimator"] == "river.preprocessing.StandardScaler | river.linear_model.LogisticRegression"
    assert json.loads(first["params_json"])["LogisticRegression"]["l2"] == 0.0001
    assert first["created_at"] == T0 + 5_000 and second["created_at"] == T0 + 5_001
    model = harness.store.load_published(second)
    fraud = model.predict_proba_one({"amount": 900.0, "distance_from_home_km": 800.0, "merchant_category=jewelry": 1.0})
    assert fraud[True] > 0.5, "the candidate learned from the labels"
    assert harness.processor.learner.pending == 20


def test_the_learner_keeps_going_when_its_own_snapshot_is_promoted_and_restarts_on_a_foreign_one(spec, tmp_path):
    harness = Harness(spec, tmp_path)
    first = candidates(harness.processor.process(labeled(60)))[0]
    live = harness.processor.learner.model
    harness.set_champion(first["version"], model=harness.store.load_published(first))
    harness.processor.process(labeled(5, start=60))
    assert harness.processor.learner.model is live, "a promoted snapshot of this learner: keep learning"
    assert harness.processor.learner.pending == 15
    harness.set_champion("fraud-20990101000000000-deadbeef")
    more = candidates(harness.processor.process(labeled(50, start=65)))
    assert harness.processor.learner.model is not live
    assert more[0]["parent_version"] == "fraud-20990101000000000-deadbeef" and more[0]["sample_count"] == 50


def test_a_learner_remembers_only_its_line_s_recent_snapshots_while_the_champion_stays(spec):
    """Any snapshot could be promoted, but the publisher keeps a few on trial: the older ones were retired."""
    learner = OnlineLearner(spec.model)
    learner.reset(build_model(spec.model), "fraud-a")
    versions = [f"fraud-{i:05d}" for i in range(LINE_MEMORY + 500)]
    for version in versions:
        learner.published(version)
    assert all(learner.continues(v) for v in versions[-LINE_MEMORY:]), "a recent snapshot promoted: keep learning"
    assert not any(learner.continues(v) for v in ["fraud-a", *versions[:-LINE_MEMORY]])
    learner.reset(build_model(spec.model), versions[-1])
    assert learner.continues(versions[-1]) and not learner.continues(versions[-2])


def test_an_online_candidate_says_how_far_its_line_read_in_every_partition(spec, tmp_path):
    harness = Harness(spec, tmp_path)
    first = candidates(harness.processor.process(labeled(50, partitions=2)))[0]
    # Since the first snapshot: partition 1 only, and a copy of an event learned before (skipped).
    copy = consumed("lab", labeled_example(0, True), offset=25, partition=0)
    second = candidates(harness.processor.process([copy, *labeled(100, start=50, partitions=2)[1::2]]))[0]
    assert second["parent_version"] == first["version"]
    assert second["learned_through"] == [{"topic": "lab", "partition": 1, "offset": 74}]
    assert second["read_through"] == [{"topic": "lab", "partition": 0, "offset": 25},
                                      {"topic": "lab", "partition": 1, "offset": 74}]


def test_time_based_publishing_needs_new_labels(demo_pipeline, tmp_path):
    spec = with_policy(demo_pipeline, retrain={"online_publish_every_labels": None, "online_publish_every": 60_000,
                                               "schedule": None})
    harness = Harness(spec, tmp_path)
    assert harness.processor.tick(T0 + 61_000).outputs == [], "nothing learned: nothing to publish"
    harness.processor.process(labeled(5))
    assert harness.processor.tick(T0 + 30_000).outputs == [], "not yet a minute since the champion"
    harness.now = T0 + 61_000
    published = candidates(harness.processor.tick(harness.now))
    assert [(c["trigger"], c["sample_count"]) for c in published] == [("ONLINE", 5)]
    assert harness.processor.tick(T0 + 200_000).outputs == [], "nothing new since the last publish"
    harness.processor.process(labeled(1, start=5))
    assert harness.processor.tick(T0 + 100_000).outputs == []
    assert [c["sample_count"] for c in candidates(harness.processor.tick(T0 + 121_000))] == [1]


def triggers(result) -> list[str]:
    return [c["trigger"] for c in candidates(result)]


def test_a_drift_rebuild_waits_for_examples_after_the_detection_and_trains_on_them(spec, tmp_path):
    window = labeled(300, partitions=3)
    harness = Harness(spec, tmp_path, window=window)
    assert harness.processor.process([consumed("drift", drift_event("INFO"), 0)]).outputs == []
    assert harness.processor.process([consumed("drift", drift_event(pipeline="other"), 1)]).outputs == []
    assert harness.processor.process([consumed("drift", drift_event(), 2)]).outputs == []
    assert harness.window_sizes == [], "no rebuild on the examples of the concept that just stopped holding"
    # The detection's window ends at T0: the example of T0 itself and earlier ones do not count.
    before = [consumed("lab", labeled_example(-i, label=False), offset=i, partition=3) for i in range(0, 50)]
    assert "DRIFT" not in triggers(harness.processor.process(before))
    assert "DRIFT" not in triggers(harness.processor.process(labeled(299, start=1)))
    assert harness.window_sizes == []
    assert harness.processor.process([consumed("drift", drift_event("CRITICAL"), 3)]).outputs == [], \
        "a second detection while waiting starts nothing new"
    built = [c for c in candidates(harness.processor.process(labeled(1, start=300))) if c["trigger"] == "DRIFT"]
    assert harness.window_sizes == [300]
    candidate = built[0]
    assert candidate["parent_version"] == harness.champion
    assert candidate["sample_count"] == 240
    assert candidate["heldout_metrics"]["sample_count"] == 60
    assert candidate["heldout_metrics"]["accuracy"] >= 0.95
    assert candidate["source_offsets"] == [{"topic": "lab", "partition": p, "start": 0, "end": 100} for p in range(3)]
    assert candidate["learned_through"] == [{"topic": "lab", "partition": p, "offset": 99} for p in range(3)], \
        "the whole window, its held-out slice included: at or below these offsets, not held out for the publisher"
    assert candidate["read_through"] is None, "a rebuild is no online line to go on from"
    assert harness.processor.process([consumed("drift", drift_event(), 2)]).outputs == [], "a replayed event"
    harness.now += 30_000
    harness.processor.process([consumed("drift", drift_event("CRITICAL"), 4)])
    assert "DRIFT" not in triggers(harness.processor.process(labeled(300, start=301))), "within min interval"
    harness.now += 60_000
    harness.processor.process([consumed("drift", drift_event(), 5)])
    assert "DRIFT" in triggers(harness.processor.process(labeled(300, start=601)))
    assert harness.window_sizes == [300, 300]


def test_replayed_and_unlabeled_examples_do_not_count_down_to_a_drift_rebuild(spec, tmp_path):
    harness = Harness(spec, tmp_path, window=labeled(300))
    harness.processor.process([consumed("drift", drift_event(), 0)])
    fresh = labeled(299, start=1)
    assert "DRIFT" not in triggers(harness.processor.process(fresh))
    assert "DRIFT" not in triggers(harness.processor.process(fresh)), "the same offsets read again"
    resent = [consumed("lab", labeled_example(i, label=False), offset=i, partition=1) for i in range(1, 50)]
    assert "DRIFT" not in triggers(harness.processor.process(resent)), "the same events under new offsets"
    unlabeled = [consumed("lab", {**labeled_example(i, label=False), "label": None}, offset=i, partition=2)
                 for i in range(1000, 1050)]
    assert "DRIFT" not in triggers(harness.processor.process(unlabeled))
    assert harness.window_sizes == []
    assert "DRIFT" in triggers(harness.processor.process(labeled(1, start=300))), "the 300th new, learnable example"
    assert harness.window_sizes == [300]


def test_a_scheduled_rebuild(demo_pipeline, tmp_path):
    spec = with_policy(demo_pipeline, retrain={"online_publish_every_labels": None, "online_publish_every": None,
                                               "rebuild_window": 200, "schedule": 1_800_000})
    harness = Harness(spec, tmp_path, window=labeled(200))
    assert harness.processor.tick(T0 + 1_700_000).outputs == []
    harness.now = T0 + 1_800_000
    scheduled = candidates(harness.processor.tick(harness.now))
    assert [c["trigger"] for c in scheduled] == ["SCHEDULE"]
    assert harness.processor.tick(harness.now + 1000).outputs == []


def test_too_few_examples_skip_a_rebuild(spec, tmp_path):
    harness = Harness(spec, tmp_path, window=labeled(20))
    assert harness.processor.process([consumed("drift", drift_event(), 0)]).outputs == []
    assert "DRIFT" not in triggers(harness.processor.process(labeled(300, start=1)))
    assert harness.window_sizes == [300], "the rebuild ran and found too few examples in the window"
    with pytest.raises(RebuildSkipped):
        rebuild(spec.model, labeled(20), 300, 0.2, min_examples=50, pipeline=spec.name)


def test_the_window_is_the_most_recent_examples_one_per_event(spec):
    records = labeled(10)
    records.append(consumed("lab", records[3].value, offset=50))  # event 3 again, later
    late = labeled_example(99, True)
    late["label_time"] = T0 - 1  # labeled before everything else
    records.append(consumed("lab", late, offset=51))
    window = recent_window(spec.model, records, 5, pipeline=spec.name)
    assert [r.value["event_id"] for r in window] == ["evt-5", "evt-6", "evt-7", "evt-8", "evt-9"]
    whole = recent_window(spec.model, records, 100, pipeline=spec.name)
    assert whole[0].value["event_id"] == "evt-99" and len(whole) == 11


def test_a_rollback_restarts_the_learner_from_the_champion_it_returns_to(spec, tmp_path):
    harness = Harness(spec, tmp_path)
    first = candidates(harness.processor.process(labeled(50)))[0]
    harness.set_champion(first["version"], model=harness.store.load_published(first))
    harness.processor.process(labeled(10, start=50))
    live = harness.processor.learner.model
    ref = harness.store.put_model(build_model(spec.model), ArtifactIdentity("card-fraud", "fraud", harness.champion))
    harness.table.apply(slot_key("card-fraud", "fraud", CHAMPION), deployment_record(
        "card-fraud", "fraud", CHAMPION, harness.champion, ref.to_record(), deployed_at=T0,
        previous_version=first["version"], decision_id=f"{first['version']}:rollback"))
    harness.processor.process(labeled(1, start=60))
    assert harness.processor.learner.model is not live, "the line that was rolled back is not continued"
    assert harness.processor.learner.parent_version == harness.champion and harness.processor.learner.pending == 1


def test_a_record_that_cannot_be_learned_is_dead_lettered_and_the_batch_flows(spec, tmp_path):
    harness = Harness(spec, tmp_path)
    batch = labeled(3)
    broken = consumed("lab", {**batch[1].value, "numeric": {"amount": "a lot"}}, offset=1)
    result = harness.processor.process([batch[0], broken, batch[2]])
    assert [r.record.offset for r in result.rejections] == [1]
    assert harness.processor.learner.learned_total == 2


def test_a_champion_signed_again_after_a_failed_load_is_loaded_then(spec, tmp_path):
    """After an upgrade from 0.1 the champion does not load until `models re-sign` writes it again."""
    harness = Harness(spec, tmp_path)
    harness.set_champion("fraud-v1")
    key = slot_key(spec.name, spec.model.name, CHAMPION)
    current = harness.table.champion(spec.name, spec.model.name)
    legacy = signed_by_streamloop_0_1(current["artifact"]["sha256"])
    harness.table.apply(key, {**current, "artifact": {**current["artifact"], "signature": legacy}})
    harness.processor.process(labeled(1))
    assert harness.processor.learner.model is None, "a 0.1 signature is refused"
    harness.table.apply(key, current)  # what `streamloop models re-sign` writes: same version, new signature
    harness.processor.process(labeled(1, start=1))
    assert harness.processor.learner.model is not None, "loaded once signed again"


def test_a_rebuild_learns_only_its_own_pipeline_s_examples(spec):
    """Pipelines that share a topic prefix share the labeled-examples topic; the window read holds both."""
    ours = labeled(40)
    theirs = [consumed("lab", {**r.value, "pipeline": "another-pipeline", "event_id": f"other-{i}"},
                       offset=100 + i) for i, r in enumerate(labeled(40))]
    window = recent_window(spec.model, ours + theirs, 1000, pipeline=spec.name)
    assert {r.value["pipeline"] for r in window} == {spec.name} and len(window) == 40
    built = rebuild(spec.model, ours + theirs, 1000, 0.25, min_examples=10, pipeline=spec.name)
    assert built.sample_count == 30, "trained on 30 of ours, held out 10 of ours; none of theirs"
