"""After a restart the online challenger learns again what its line had learned since the champion."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.retrainer.online import OnlineLearner
from services.retrainer.processor import RetrainerProcessor
from services.retrainer.resume import (
    KafkaResume,
    LineSnapshots,
    Resumed,
    ResumePoint,
    TimerStarts,
    line_snapshots,
    most_recent,
    never,
    resume_point,
    resume_ranges,
)
from streamloop.kafka.group_history import HistoryReadCancelled, PartitionBounds
from streamloop.ml import build_model
from streamloop.ml.registry import CHAMPION, deployment_record, new_version, slot_key, version_created_ms
from tests.unit.model_publisher.factories import T0, consumed, labeled_example, with_policy
from tests.unit.retrainer.test_retrainer import TOPICS, Harness, candidates, labeled

ONLINE_CANDIDATE = {
    "version": "fraud-20260101000000000-aaaaaaaa", "trigger": "ONLINE", "created_at": T0 + 9_000,
    "learned_through": [{"topic": "lab", "partition": 0, "offset": 41},
                        {"topic": "other", "partition": 1, "offset": 7}],
}


def champion(decision_id: str | None = None, deployed_at: int | datetime = T0 + 20_000) -> dict:
    return {"version": ONLINE_CANDIDATE["version"], "deployed_at": deployed_at, "decision_id": decision_id}


def test_a_version_tells_when_it_was_created():
    assert version_created_ms(new_version("fraud", "0123456789abcdef", 1_765_000_000_123)) == 1_765_000_000_123
    assert version_created_ms(new_version("card-fraud-x", "0123456789abcdef", 5)) == 5
    assert version_created_ms("fraud-bootstrap-0123abcd") is None
    assert version_created_ms("fraud-20261399000000000-0123abcd") is None, "no 13th month"
    assert version_created_ms("fraud") is None


def test_an_online_champion_resumes_after_what_it_read_another_from_its_deployment():
    assert resume_point(champion("v:promote"), ONLINE_CANDIDATE, "lab") == ResumePoint({0: 42}, T0 + 9_000), \
        "a candidate from before read_through: what it learned"
    read = {**ONLINE_CANDIDATE, "read_through": [{"topic": "lab", "partition": 0, "offset": 45},
                                                 {"topic": "lab", "partition": 3, "offset": 9}]}
    assert resume_point(champion("v:promote"), read, "lab") == ResumePoint({0: 46, 3: 10}, T0 + 9_000)
    deployed = datetime.fromtimestamp((T0 + 20_000) / 1000, UTC)
    for decision, candidate in [("v:rollback", ONLINE_CANDIDATE),  # the line restarted from it at the rollback
                                ("v:promote", {**ONLINE_CANDIDATE, "trigger": "DRIFT"}),
                                ("v:promote", None)]:  # the bootstrap, or its record left the topic
        assert resume_point(champion(decision, deployed), candidate, "lab") == ResumePoint({}, T0 + 20_000)


def test_ranges_end_at_the_committed_offsets_and_keep_the_most_recent_labels_of_each_partition():
    bounds = {0: PartitionBounds(0, 100, 90), 1: PartitionBounds(10, 60, 50), 2: PartitionBounds(0, 5, 5),
              3: PartitionBounds(0, 0, 0)}
    point = ResumePoint({0: 42, 2: 9}, T0)
    at_time = {0: 3, 1: 0, 2: 1, 3: 0}
    assert resume_ranges(point, at_time, bounds, limit=1_000) == {0: (42, 90), 1: (10, 50)}
    assert resume_ranges(point, at_time, bounds, limit=80) == {0: (70, 90), 1: (30, 50)}, "20 per partition"
    assert resume_ranges(ResumePoint({}, T0), {0: 95, 1: 30}, bounds, limit=1_000) == {1: (30, 50)}
    # Partition 1's times are all earlier than partition 0's; partition 0's go backwards at offset 2
    # (another collector replica's clock): it stays in offset order, or offset 1 would be skipped.
    times = {(0, 0): 50, (0, 1): 70, (0, 2): 60, (0, 3): 80, (1, 0): 10, (1, 1): 20}
    records = [consumed("lab", labeled_example(10 * p + o, o % 2 == 0), offset=o, partition=p, timestamp_ms=T0 + t)
               for (p, o), t in times.items()]
    assert [(r.partition, r.offset) for r in most_recent(records, 10)] == [(1, 0), (1, 1), (0, 0), (0, 1),
                                                                           (0, 2), (0, 3)]
    assert [(r.partition, r.offset) for r in most_recent(records, 3)] == [(0, 1), (0, 2), (0, 3)]


class FakeResume:
    def __init__(self, records=(), error: Exception | None = None, read_through: dict | None = None,
                 snapshots: LineSnapshots | None = None) -> None:
        self.records = list(records)
        self.error = error
        self.read_through = read_through or {}
        self.snapshots = snapshots
        self.calls: list[str] = []

    def __call__(self, deployment: dict, cancelled=never) -> Resumed:
        self.calls.append(deployment["version"])
        if self.error:
            raise self.error
        return Resumed(self.records, self.read_through, self.snapshots)


class Counters:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, tuple], float] = {}

    def counter(self, name):
        def add(amount, attributes):
            key = (name, tuple(sorted(attributes.items())))
            self.counts[key] = self.counts.get(key, 0) + amount
        return add


def restarted(spec, tmp_path, resume: FakeResume) -> Harness:
    harness = Harness(spec, tmp_path)
    harness.processor.resume = resume
    harness.processor._metrics = Counters()
    return harness


def test_a_restarted_learner_learns_again_what_its_line_had_learned_since_the_champion(spec, tmp_path):
    earlier = labeled(30, partitions=2)  # offsets 0-14 of partitions 0 and 1, read again
    foreign = consumed("lab", labeled_example(99, True, pipeline="other-pipeline"), offset=15, partition=0)
    resume = FakeResume([*earlier, foreign])
    harness = restarted(spec, tmp_path, resume)
    published = candidates(harness.processor.process(labeled(20, start=30, partitions=2)))
    assert resume.calls == [harness.champion]
    # 30 read again + 20 live = 50 = online_publish_every_labels: one candidate with all of them.
    assert [c["sample_count"] for c in published] == [50]
    assert published[0]["parent_version"] == harness.champion
    assert published[0]["source_offsets"] == [{"topic": "lab", "partition": 0, "start": 0, "end": 25},
                                              {"topic": "lab", "partition": 1, "start": 0, "end": 25}]
    counts = harness.processor._metrics.counts
    assert counts[("streamloop_retrainer_resumes", (("outcome", "resumed"), ("pipeline", "card-fraud")))] == 1
    assert counts[("streamloop_retrainer_labels_learned", (("pipeline", "card-fraud"),))] == 50
    # A later champion from another line restarts the learner from it, without reading anything again.
    harness.set_champion("fraud-20990101000000000-deadbeef")
    harness.processor.process(labeled(1, start=50))
    assert resume.calls == [harness.champion] and harness.processor.learner.pending == 1


def test_after_a_restart_the_labels_its_line_s_last_snapshot_had_are_not_counted_again(spec, tmp_path):
    """Each restart published a near-duplicate of the last candidate at its first new label."""
    last = "fraud-20231114221320000-0000000b"
    resume = FakeResume(labeled(60, partitions=2), read_through={("lab", 0): 29, ("lab", 1): 29},
                        snapshots=LineSnapshots(["fraud-20231114221310000-0000000a", last],
                                                {("lab", 0): 24, ("lab", 1): 24}))
    harness = restarted(spec, tmp_path, resume)
    harness.processor.prepare()
    learner = harness.processor.learner
    assert learner.learned_total == 60 and learner.pending == 10, "50 of them were in its last candidate"
    assert candidates(harness.processor.process(labeled(1, start=60, partitions=2))) == []
    assert candidates(harness.processor.process(labeled(38, start=61, partitions=2))) == [], "49 past it"
    [published] = candidates(harness.processor.process(labeled(1, start=99, partitions=2)))
    assert published["sample_count"] == 50 and published["parent_version"] == last
    assert published["source_offsets"] == [{"topic": "lab", "partition": 0, "start": 25, "end": 50},
                                           {"topic": "lab", "partition": 1, "start": 25, "end": 50}]
    assert learner.continues("fraud-20231114221310000-0000000a"), "promoted, it is an ancestor of this learner"


def test_the_next_snapshot_says_how_far_the_group_had_read_in_every_partition(spec, tmp_path):
    # Partition 2 gave no label to learn again (the champion had learned up to its committed
    # offset); partition 3 has none yet. Without them, a second restart could not tell where the line stood.
    resume = FakeResume(labeled(40, partitions=2), read_through={
        ("lab", 0): 19, ("lab", 1): 19, ("lab", 2): 7, ("lab", 3): -1})
    harness = restarted(spec, tmp_path, resume)
    published = candidates(harness.processor.process(labeled(10, start=40, partitions=2)))
    assert published[0]["read_through"] == [{"topic": "lab", "partition": 0, "offset": 24},
                                            {"topic": "lab", "partition": 1, "offset": 24},
                                            {"topic": "lab", "partition": 2, "offset": 7},
                                            {"topic": "lab", "partition": 3, "offset": -1}]


def test_labels_that_passed_before_the_first_champion_loaded_are_learned_when_read_again(spec, tmp_path):
    resume = FakeResume()
    harness = restarted(spec, tmp_path, resume)
    harness.table.apply(slot_key(spec.name, spec.model.name, CHAMPION), None)  # the table has no champion yet
    before = labeled(10)
    harness.processor.process(before)
    assert harness.processor.learner.learned_total == 0 and resume.calls == []
    resume.records = before  # committed by the runner, so read again once the champion loads
    harness.set_champion(harness.champion)
    harness.processor.process(labeled(5, start=10))
    assert resume.calls == [harness.champion]
    assert harness.processor.learner.learned_total == 15 and harness.processor.learner.skipped_duplicates == 0


def test_no_champion_is_loaded_from_a_table_read_in_part(spec, tmp_path):
    """The processor's own guard (the app prepares nothing before the table is read, test_app.py): a
    table read in part may still show a champion since replaced. Loading it spent the one resume on
    it, and the real one, once read, restarted the learner with nothing."""
    resume = FakeResume()
    harness = restarted(spec, tmp_path, resume)  # the table shows the old champion, the bootstrap
    harness.table.ready = False
    harness.processor.prepare()
    harness.processor.process(labeled(5, start=40))  # they pass unlearned, and are committed
    assert harness.processor.learner.model is None and resume.calls == []
    real = harness.set_champion("fraud-20990101000000000-deadbeef")
    resume.records = labeled(45)  # the 40 the real champion's line had learned before the restart, and those 5
    harness.table.ready = True  # the deployments table is read to its end
    published = candidates(harness.processor.process(labeled(10, start=45)))
    assert resume.calls == [real] and harness.processor.learner.learned_total == 55
    assert [(c["sample_count"], c["parent_version"]) for c in published] == [(50, real)]


def test_labels_read_again_are_all_learned_though_their_times_go_backwards(spec, tmp_path):
    earlier = [consumed("lab", labeled_example(i, i % 3 == 0), offset=i, partition=0,
                        timestamp_ms=T0 + (1_000 if i == 3 else i)) for i in range(8)]
    resume = FakeResume(most_recent(earlier, 100))
    harness = restarted(spec, tmp_path, resume)
    harness.processor.prepare()
    assert harness.processor.learner.learned_total == 8 and harness.processor.learner.skipped_duplicates == 0


def test_the_champion_is_loaded_and_its_line_resumed_before_the_first_batch(spec, tmp_path):
    resume = FakeResume(labeled(10))
    harness = restarted(spec, tmp_path, resume)
    harness.processor.prepare()
    assert resume.calls == [harness.champion] and harness.processor.learner.learned_total == 10
    harness.processor.process(labeled(5, start=10))
    assert resume.calls == [harness.champion] and harness.processor.learner.learned_total == 15


def test_a_champion_that_does_not_load_leaves_the_resume_to_the_next_one(spec, tmp_path):
    resume = FakeResume(labeled(13))  # what the runner will have committed when the next champion loads
    harness = restarted(spec, tmp_path, resume)
    signed_for_another = harness.table.champion(spec.name, spec.model.name)["artifact"]
    harness.table.apply(slot_key(spec.name, spec.model.name, CHAMPION), deployment_record(
        spec.name, spec.model.name, CHAMPION, "fraud-20990101000000000-0badc0de", signed_for_another, deployed_at=T0))
    harness.processor.process(labeled(3, start=10))
    assert harness.processor.learner.model is None and resume.calls == []
    harness.set_champion("fraud-20990101000000001-00c0ffee")
    harness.processor.process(labeled(2, start=13))
    assert resume.calls == ["fraud-20990101000000001-00c0ffee"]
    assert harness.processor.learner.learned_total == 15, "13 read again (the 3 that passed unlearned too) + 2 live"


def test_a_failed_read_leaves_the_learner_going_on_from_the_next_label(spec, tmp_path):
    resume = FakeResume(error=TimeoutError("reading lab again timed out"))
    harness = restarted(spec, tmp_path, resume)
    harness.processor.process(labeled(5))
    assert harness.processor.learner.learned_total == 5 and harness.processor.learner.parent_version == harness.champion
    counts = harness.processor._metrics.counts
    assert counts[("streamloop_retrainer_resumes", (("outcome", "failed"), ("pipeline", "card-fraud")))] == 1


def test_a_learner_that_learned_cannot_forget_what_it_saw(spec):
    learner = OnlineLearner(spec.model)
    learner.reset(build_model(spec.model), "fraud-a")
    assert learner.learn(labeled(1)[0])
    with pytest.raises(RuntimeError, match="learn twice"):
        learner.forget_passed()


class FakeHistory:
    """GroupHistory over in-memory topics: {topic: {partition: [(timestamp_ms, value), ...]}} and committed offsets."""

    def __init__(self, topics: dict, committed: dict) -> None:
        self.topics, self.committed = topics, committed
        self.times_asked: list[tuple[str, int]] = []
        self.reads = 0

    def bounds(self, topic: str, cancelled=None) -> dict:
        return {p: PartitionBounds(0, len(rs), self.committed.get((topic, p), 0))
                for p, rs in self.topics[topic].items()}

    def offsets_at(self, topic: str, time_ms: int, bounds: dict, cancelled=None) -> dict:
        assert bounds == self.bounds(topic), "the bounds the caller read"
        self.times_asked.append((topic, time_ms))
        return {p: next((o for o, (t, _) in enumerate(rs) if t >= time_ms), len(rs))
                for p, rs in self.topics[topic].items()}

    def read(self, topic: str, ranges: dict, cancelled=None) -> list:
        self.reads += 1
        if cancelled is not None and cancelled():  # as GroupHistory does before its first slice
            raise HistoryReadCancelled(f"reading {topic} again was given up")
        return [consumed(topic, self.topics[topic][p][o][1], offset=o, partition=p,
                         timestamp_ms=self.topics[topic][p][o][0])
                for p, (start, stop) in ranges.items() for o in range(start, stop)]


def test_kafka_resume_finds_the_champions_candidate_and_reads_after_what_its_learner_had_read():
    created = T0 + 50_000
    version = new_version("fraud", "0123456789abcdef", created)
    candidate = {"version": version, "pipeline": "card-fraud", "trigger": "ONLINE", "created_at": created,
                 "learned_through": [], "read_through": [{"topic": "lab", "partition": 0, "offset": 5},
                                                         {"topic": "lab", "partition": 1, "offset": 8}]}
    other = {**candidate, "version": new_version("fraud", "fedcba9876543210", created)}
    labels = {p: [(T0 + 1000 * o, labeled_example(10 * p + o, o % 2 == 0)) for o in range(12)] for p in (0, 1)}
    history = FakeHistory({"cand": {0: [(T0, {"version": "old"}), (created + 3, other), (created + 5, candidate)]},
                           "lab": labels}, committed={("lab", 0): 10, ("lab", 1): 7})
    resume = KafkaResume(history, labeled_topic="lab", candidates_topic="cand", pipeline="card-fraud", limit=100)
    resumed = resume({"version": version, "deployed_at": T0, "decision_id": f"{version}:promote"})
    assert [(r.partition, r.offset) for r in resumed.records] == [(0, 6), (0, 7), (0, 8), (0, 9)], \
        "partition 1: its learner had read past the committed offset (killed before the commit)"
    assert resumed.read_through == {("lab", 0): 9, ("lab", 1): 8}
    assert history.times_asked == [("cand", created)], "the candidate found from its version's time"
    # A version with no candidate record (the bootstrap): from the deployment's time on.
    history.times_asked.clear()
    resumed = resume({"version": "fraud-bootstrap-0123abcd", "deployed_at": T0 + 4_000, "decision_id": None})
    assert history.times_asked == [("lab", T0 + 4_000)]
    assert {(r.partition, r.offset) for r in resumed.records} == {(0, o) for o in range(4, 10)} | {
        (1, o) for o in range(4, 7)}
    assert KafkaResume(history, labeled_topic="lab", candidates_topic="cand", pipeline="card-fraud",
                       limit=0)({"version": version}) == Resumed([], {})


def test_the_line_s_snapshots_are_its_online_candidates_since_it_started():
    def online(created: int, version: str, **marks) -> dict:
        return {"version": version, "pipeline": "card-fraud", "trigger": "ONLINE", "created_at": created, **marks}

    newest = online(T0 + 30, "c", read_through=[{"topic": "lab", "partition": 0, "offset": 99},
                                                {"topic": "other", "partition": 0, "offset": 7}])
    read = [online(T0 + 20, "b"), newest, online(T0 - 1, "before"), {**online(T0 + 40, "d"), "trigger": "DRIFT"}]
    assert line_snapshots(read, T0, "lab") == LineSnapshots(["b", "c"], {("lab", 0): 99})
    assert line_snapshots(read, T0 + 31, "lab") is None
    older = online(T0 + 30, "c", learned_through=[{"topic": "lab", "partition": 2, "offset": 5}])
    assert line_snapshots([older], T0, "lab").read_through == {("lab", 2): 5}, "a candidate from before read_through"
    snapshots = LineSnapshots(["c"], {("lab", 0): 99})
    assert snapshots.had(consumed("lab", {}, 99)) and not snapshots.had(consumed("lab", {}, 100))
    assert not snapshots.had(consumed("lab", {}, 0, partition=1)), "a partition it had read nothing in"


def test_a_crash_looping_retrainer_publishes_as_one_that_kept_running(spec, tmp_path):
    """One process learns 60 labels (a candidate at 50), then five restarts learn 10 new labels each."""
    labels = labeled(110)
    history = FakeHistory({"lab": {0: [(T0 + r.offset, r.value) for r in labels]}, "cand": {0: []}}, committed={})

    def run(lifetimes: list[int]) -> list[dict]:
        history.topics["cand"][0].clear()
        history.committed.clear()
        read = 0
        for count in lifetimes:
            harness = Harness(spec, tmp_path)  # the bootstrap champion throughout, deployed at T0
            harness.now = T0 + 1_000 + read
            harness.processor.resume = KafkaResume(history, labeled_topic="lab", candidates_topic="cand",
                                                   pipeline=spec.name, limit=1_000)
            harness.processor.prepare()
            published = candidates(harness.processor.process(labels[read:read + count]))
            history.topics["cand"][0] += [(c["created_at"], c) for c in published]
            read += count
            history.committed[("lab", 0)] = read
        return [c for _, c in history.topics["cand"][0]]

    kept_running = [(c["sample_count"], c["source_offsets"]) for c in run([110])]
    restarted = run([60, 10, 10, 10, 10, 10])
    assert [(c["sample_count"], c["source_offsets"]) for c in restarted] == kept_running == [
        (50, [{"topic": "lab", "partition": 0, "start": 0, "end": 50}]),
        (50, [{"topic": "lab", "partition": 0, "start": 50, "end": 100}])]
    assert restarted[1]["parent_version"] == restarted[0]["version"]


HOUR = 3_600_000
HOUR = 3_600_000


def candidate_at(created: int, trigger: str = "ONLINE", pipeline: str = "card-fraud") -> tuple[int, dict]:
    return created, {"version": f"fraud-{created}", "pipeline": pipeline, "trigger": trigger, "created_at": created}


def test_after_a_restart_the_schedule_runs_from_the_newest_rebuild_read_back():
    now, day = T0 + 100 * HOUR, 24 * HOUR
    deployed = {"version": "fraud-bootstrap-0123abcd", "deployed_at": T0, "decision_id": None}
    topic: list = []
    resume = KafkaResume(FakeHistory({"cand": {0: topic}}, committed={}), labeled_topic="lab",
                         candidates_topic="cand", pipeline="card-fraud", limit=100)

    def schedule_start(champion: dict | None) -> int | None:
        return resume.timer_starts(now, day, None, champion).schedule_ms

    assert schedule_start(None) is None, "nothing known: from now"
    assert schedule_start(deployed) == T0, "no rebuild since the champion was deployed"
    topic += [candidate_at(now - 30 * HOUR, "SCHEDULE"), candidate_at(now - 9 * HOUR, "DRIFT"),
              *(candidate_at(now - 8 * HOUR + i) for i in range(150)),  # more than a page
              candidate_at(now - HOUR, "SCHEDULE", pipeline="another-pipeline")]
    assert schedule_start(deployed) == now - 9 * HOUR, "a drift rebuild restarts the schedule too"
    del topic[1]
    # No rebuild within a day: reading stops at the first candidate older than that, and it is due.
    topic[1:1] = [candidate_at(now - 25 * HOUR + i) for i in range(500)]
    history_reads = resume.history.reads
    assert schedule_start(None) <= now - day
    assert resume.history.reads - history_reads <= 3, "not the whole topic"
    del topic[:501]
    assert schedule_start(None) == now - 8 * HOUR, "no rebuild since its oldest candidate"
    assert schedule_start(deployed) == T0


def test_after_a_restart_online_publishing_runs_from_the_newest_online_candidate_read_in_the_same_pass():
    now, day, minute = T0 + 100 * HOUR, 24 * HOUR, 60_000
    deployed = {"version": "fraud-bootstrap-0123abcd", "deployed_at": T0, "decision_id": None}
    topic: list = []
    history = FakeHistory({"cand": {0: topic}}, committed={})
    resume = KafkaResume(history, labeled_topic="lab", candidates_topic="cand", pipeline="card-fraud", limit=100)
    assert resume.timer_starts(now, None, minute, None) == TimerStarts(None, None), "nothing known: from now"
    assert resume.timer_starts(now, None, minute, deployed) == TimerStarts(None, T0), \
        "none since the champion's deployment, when the learner restarted from it"
    topic += [candidate_at(now - 9 * HOUR, "DRIFT"), *(candidate_at(now - 8 * HOUR + i) for i in range(150)),
              candidate_at(now - 40_000), candidate_at(now - 30_000, "MANUAL"),
              candidate_at(now - 10_000, pipeline="another-pipeline")]
    reads = history.reads
    assert resume.timer_starts(now, day, minute, deployed) == TimerStarts(now - 9 * HOUR, now - 40_000)
    both = history.reads - reads
    reads = history.reads
    resume.timer_starts(now, day, None, deployed)
    assert history.reads - reads == both == 2, "one read back for both timers: the schedule's alone costs as much"
    reads = history.reads
    assert resume.timer_starts(now, None, minute, deployed) == TimerStarts(None, now - 40_000)
    assert history.reads - reads == 1, "no rebuild looked for without a schedule"
    assert resume.timer_starts(now, None, None, deployed) == TimerStarts(None, None)
    assert history.reads - reads == 1, "no timer, no read"
    redeployed = {**deployed, "deployed_at": now - 20_000}
    assert resume.timer_starts(now, None, minute, redeployed) == TimerStarts(None, now - 20_000), \
        "a champion deployed after the newest online candidate restarted the learner, and the period with it"
    # The newest online candidate is hours old: online publishing is due at once.
    del topic[-3]
    reads = history.reads
    assert resume.timer_starts(now, None, minute, deployed).online_publish_ms <= now - minute
    assert history.reads - reads == 1


def restarted_on(history: FakeHistory, harness: Harness, read_window=None) -> None:
    """``harness``'s processor as a restart builds it: its timers start from what ``history`` reads back of
    the candidates topic; on the harness's clock, reading ``read_window`` (the harness's own unless given)."""
    resume = KafkaResume(history, labeled_topic="lab", candidates_topic="cand", pipeline=harness.spec.name, limit=100)
    harness.processor = RetrainerProcessor(harness.spec, TOPICS, harness.table, harness.store,
                                           read_window or harness.read_window, clock=lambda: harness.now,
                                           timer_starts=resume.timer_starts)
    harness.processor.prepare()


def test_a_retrainer_restarted_more_often_than_its_schedule_still_rebuilds_on_it(demo_pipeline, tmp_path):
    spec = with_policy(demo_pipeline, retrain={"online_publish_every_labels": None, "online_publish_every": None,
                                               "rebuild_window": 200, "schedule": 24 * HOUR})
    topic: list = []  # the candidates topic: (timestamp, candidate)
    history = FakeHistory({"cand": {0: topic}}, committed={})
    for start in (T0, T0 + 20 * HOUR, T0 + 40 * HOUR):  # restarted every 20 hours
        harness = Harness(spec, tmp_path, window=labeled(200))
        harness.now = start
        restarted_on(history, harness)
        for harness.now in range(start, start + 20 * HOUR, HOUR // 6):
            topic += [(harness.now, c) for c in candidates(harness.processor.tick(harness.now))]
    assert [(c["trigger"], c["created_at"]) for _, c in topic] == [("SCHEDULE", T0 + 24 * HOUR),
                                                                   ("SCHEDULE", T0 + 48 * HOUR)], \
        "every 24 hours from the bootstrap champion's deployment"


def test_a_retrainer_restarted_more_often_than_online_publish_every_still_publishes_on_it(demo_pipeline, tmp_path):
    """Fewer labels than online_publish_every_labels: only the timer publishes the online challenger."""
    minute = 60_000
    spec = with_policy(demo_pipeline, retrain={"online_publish_every_labels": 1_000, "online_publish_every": minute,
                                               "schedule": None})
    topic: list = []  # the candidates topic: (timestamp, candidate)
    history = FakeHistory({"cand": {0: topic}}, committed={})
    examples = iter(labeled(1_000))
    for start in range(T0, T0 + 4 * minute, 40_000):  # restarted every 40 s
        harness = Harness(spec, tmp_path)  # the bootstrap champion, deployed at T0
        harness.now = start
        restarted_on(history, harness)
        for harness.now in range(start, start + 40_000, 5_000):
            harness.processor.process([next(examples)])
            topic += [(harness.now, c) for c in candidates(harness.processor.tick(harness.now))]
    assert [(c["trigger"], c["created_at"] - T0) for _, c in topic] == [("ONLINE", minute), ("ONLINE", 2 * minute),
                                                                        ("ONLINE", 3 * minute)], \
        "every minute from the bootstrap champion's deployment, then from the last online candidate"


def test_a_restart_leaves_the_schedule_where_it_was(demo_pipeline, tmp_path):
    """A rebuild takes a while, and its candidate is created as it ends: the one time a restart
    can read back. The schedule runs from there in a process that goes on, too."""
    spec = with_policy(demo_pipeline, retrain={"online_publish_every_labels": None, "online_publish_every": None,
                                               "rebuild_window": 200, "schedule": 24 * HOUR})

    def created(lifetimes: list[tuple[int, int]]) -> list[int]:
        topic: list = []  # the candidates topic: (timestamp, candidate)
        history = FakeHistory({"cand": {0: topic}}, committed={})
        for start, end in lifetimes:
            harness = Harness(spec, tmp_path, window=labeled(200))
            harness.now = start

            def slow_window(size: int, harness: Harness = harness) -> list:
                harness.now += HOUR  # reading the window, training, storing the artifact
                return harness.read_window(size)

            restarted_on(history, harness, slow_window)
            for now in range(start, end, HOUR // 6):
                harness.now = max(harness.now, now)
                topic += [(harness.now, c) for c in candidates(harness.processor.tick(harness.now))]
        return [c["created_at"] for _, c in topic]

    uninterrupted = created([(T0, T0 + 60 * HOUR)])
    assert uninterrupted == [T0 + 25 * HOUR, T0 + 50 * HOUR], "every 24 hours from the last rebuild's candidate"
    assert created([(T0, T0 + 30 * HOUR), (T0 + 30 * HOUR, T0 + 60 * HOUR)]) == uninterrupted
