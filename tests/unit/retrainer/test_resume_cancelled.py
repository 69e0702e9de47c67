"""A stop, or a lease lost to another replica, during the resume gives it up at once, and nothing of it is kept.

The resume reads back and learns up to RETRAINER_RESUME_MAX_LABELS labels (20,000): a stop waited
for all of it, past a pod's grace period, and a replica that had lost its lease read and learned it
all while another learned on, then checked. Given up part-way, the learner must not go on from a
part of its line: nothing is consumed, committed or published, and the next resume starts over.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from services.retrainer.app import RetrainerApp, RetrainerTerm
from services.retrainer.learning_again import RESUME_SLICE
from services.retrainer.processor import RetrainerProcessor
from services.retrainer.rebuild_policy import InlineExecutor
from services.retrainer.resume import KafkaResume, ResumeCancelled, never
from streamloop.errors import DependencyUnavailable
from streamloop.kafka import KafkaSettings
from streamloop.kafka import runner as runner_module
from streamloop.kafka.group_history import READ_SLICE, GroupHistory, PartitionBounds
from streamloop.kafka.runner import StageRunner
from streamloop.kafka.runner_settings import RunnerSettings, StageTopics
from streamloop.ml.registry import CHAMPION, slot_key
from streamloop.serde.raw import RawSerde
from tests.kafka_fakes import FakeConsumer, FakeMessage, FakeProducer
from tests.unit.kafka.test_group_history import Unanswered
from tests.unit.model_publisher.factories import T0, labeled_example, with_policy
from tests.unit.retrainer.test_app import FakeLease, FakeRunner, FakeTableReader
from tests.unit.retrainer.test_resume import HOUR, FakeHistory, FakeResume, candidate_at, restarted
from tests.unit.retrainer.test_retrainer import TOPICS, Harness, candidates, labeled

LABELS = 20_000  # RETRAINER_RESUME_MAX_LABELS' default
SLICE_S = 0.25  # how long each slice of the first term's read takes to come: 5 s for all of them


class LabelsFromBytes:
    """The labeled-examples serde: a record's bytes are its example's number."""

    def decode(self, data: bytes) -> dict:
        number = int(data)
        return labeled_example(number, label=number % 3 == 0)


def label_messages(first: int, stop: int) -> list[FakeMessage]:
    return [FakeMessage(str(offset).encode(), offset, topic="lab") for offset in range(first, stop)]


class LabelsConsumer:
    """GroupHistory's consumer over the one partition of the labels: each slice takes ``slice_s`` to come."""

    def __init__(self, slice_s: float) -> None:
        self.slice_s = slice_s
        self.position = 0
        self.slices = 0

    def assign(self, partitions) -> None:
        self.position = partitions[0].offset

    def consume(self, n: int, _timeout: float) -> list[FakeMessage]:
        time.sleep(self.slice_s)
        self.slices += 1
        self.position += n
        return label_messages(self.position - n, self.position)

    def close(self) -> None:
        pass


class ResumingTerms:
    """Terms as ``build`` makes them: a real processor each, whose resume reads LABELS labels back
    through GroupHistory (the first term's slowly, SLICE_S a slice), up to the group's committed offset."""

    def __init__(self, spec, tmp_path) -> None:
        self.spec, self.tmp_path = spec, tmp_path
        self.made: list[RetrainerTerm] = []
        self.consumers: list[LabelsConsumer] = []
        self.history = GroupHistory(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "retrainer",
                                    {"lab": LabelsFromBytes()})
        self.history._consumer = self._consumer  # type: ignore[method-assign]
        self.history.bounds = lambda topic, _cancelled=None: \
            {0: PartitionBounds(0, LABELS, LABELS)} if topic == "lab" else {}
        self.history.offsets_at = lambda _topic, _time_ms, _bounds, _cancelled=None: {0: 0}

    def _consumer(self) -> LabelsConsumer:
        consumer = LabelsConsumer(SLICE_S if not self.consumers else 0.0)
        self.consumers.append(consumer)
        return consumer

    def reading(self) -> bool:
        """The first term's read is under way, two slices in."""
        return bool(self.consumers) and self.consumers[0].slices >= 2

    def __call__(self) -> RetrainerTerm:
        processor = Harness(self.spec, self.tmp_path).processor  # the bootstrap champion, deployed at T0
        processor.resume = KafkaResume(self.history, labeled_topic="lab", candidates_topic="cand",
                                       pipeline=self.spec.name, limit=LABELS)
        term = RetrainerTerm(processor, FakeRunner(), ThreadPoolExecutor(1))  # type: ignore[arg-type]
        self.made.append(term)
        return term


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def running(terms: ResumingTerms, lease: FakeLease | None) -> tuple[RetrainerApp, threading.Thread, list[int]]:
    app = RetrainerApp(terms, FakeTableReader(caught_up=True), SimpleNamespace(shutdown=lambda: None),  # type: ignore[arg-type]
                       60.0, lease)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(app.run()), daemon=True)
    thread.start()
    return app, thread, codes


def test_a_stop_during_the_resume_ends_the_run_at_once_with_nothing_consumed(spec, tmp_path) -> None:
    """SIGTERM waited for the whole read-back and its learning: past a slow cluster's 30 s grace period, a SIGKILL."""
    terms = ResumingTerms(spec, tmp_path)
    app, thread, codes = running(terms, None)
    assert wait_until(terms.reading, 5)
    stopped_at = time.monotonic()
    app.stop()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - stopped_at < 1.5 and codes == [0], \
        "at the read's next slice, not once all of it was read and learned"
    term = terms.made[0]
    assert terms.consumers[0].slices < LABELS // READ_SLICE
    assert not term.runner.running.is_set(), "the group is not joined only to leave it"
    assert term.processor.learner.learned_total == 0 and term.processor.learner.model is None


def test_a_lease_lost_during_the_resume_sends_the_replica_back_to_standby_and_the_next_term_starts_over(
        spec, tmp_path) -> None:
    """A replica that lost its lease read and learned the whole line, while the one that took over learned on."""
    terms = ResumingTerms(spec, tmp_path)
    lease = FakeLease()
    lease.granted.set()
    app, thread, _codes = running(terms, lease)
    assert wait_until(terms.reading, 5)
    lease.take_away()  # another replica took over
    assert wait_until(lambda: lease.acquires == 2, 1.5), "back to standby at the read's next slice"
    first = terms.made[0]
    assert not first.runner.running.is_set(), "nothing consumed, committed or published after the lease was lost"
    assert first.processor.learner.learned_total == 0 and len(terms.made) == 1
    lease.granted.set()  # the lease comes back: a new term, its resume from the start, whole
    assert wait_until(lambda: len(terms.made) == 2 and terms.made[1].runner.running.is_set(), 10)
    learner = terms.made[1].processor.learner
    assert learner.learned_total == LABELS and learner.skipped_duplicates == 0
    app.stop()
    thread.join(5)
    assert not thread.is_alive()


@pytest.mark.parametrize("ended_by", ["stop", "lease lost"])
def test_a_stop_or_a_lost_lease_while_the_broker_does_not_answer_a_lookup_of_the_resume_acts_at_once(
        spec, tmp_path, ended_by: str) -> None:
    """The lookups of the resume (the offsets, a timestamp's) were one broker call of RETRAINER_RESUME_TIMEOUT_S
    each, a minute, not sliced as its reads are: a stop, or a lease lost, during one waited for all of it."""
    terms = ResumingTerms(spec, tmp_path)
    hanging = Unanswered("committed")  # the group's committed offsets of the labels, which the resume ends at
    terms.history = GroupHistory(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "retrainer",
                                 {"lab": LabelsFromBytes()}, timeout_s=60.0)
    terms.history._consumer = lambda: hanging  # type: ignore[method-assign]
    lease = FakeLease() if ended_by == "lease lost" else None
    if lease is not None:
        lease.granted.set()
    app, thread, codes = running(terms, lease)
    assert wait_until(lambda: hanging.waits, 5), "the lookup under way"
    time.sleep(0.2)
    ended_at = time.monotonic()
    if lease is None:
        app.stop()
        thread.join(10)
        assert not thread.is_alive() and codes == [0]
    else:
        lease.take_away()
        assert wait_until(lambda: lease.acquires == 2, 10), "back to standby"
    assert time.monotonic() - ended_at < 1.5, "at the end of the wait under way, not once the minute has passed"
    assert not terms.made[0].runner.running.is_set() and hanging.closed
    if lease is not None:
        app.stop()
        thread.join(5)
        assert not thread.is_alive()


def test_a_resume_cancelled_while_learning_again_keeps_nothing_and_the_next_is_the_whole_line(spec, tmp_path):
    """The champion's model learns in place: a resume given up part-way left it with a part of the line,
    and the next one, having learned, could not even forget what passed by (forget_passed)."""
    labels = labeled(2_500, partitions=2)

    def first_candidate(cancel_once: bool) -> dict:
        resume = FakeResume(labels, read_through={("lab", 0): 1_249, ("lab", 1): 1_249})
        harness = restarted(spec, tmp_path, resume)
        processor = harness.processor
        if cancel_once:
            processor.cancelled = lambda: processor.learner.learned_total >= RESUME_SLICE
            with pytest.raises(ResumeCancelled):
                processor.prepare()
            assert processor.learner.learned_total == 0 and processor.learner.model is None, "nothing kept"
            assert processor._metrics.counts == {}, "neither resumed nor failed: a failed one goes on without"
            processor.cancelled = never
        processor.prepare()
        assert resume.calls == [harness.champion] * (2 if cancel_once else 1)
        assert processor.learner.learned_total == 2_500 and processor.learner.skipped_duplicates == 0
        [published] = candidates(processor.process(labeled(2, start=2_500, partitions=2)))
        return published

    again, never_stopped = first_candidate(cancel_once=True), first_candidate(cancel_once=False)
    keys = ("parent_version", "sample_count", "source_offsets", "read_through")
    assert {k: again[k] for k in keys} == {k: never_stopped[k] for k in keys}
    assert again["sample_count"] == 2_501, "published at the first label learned past 50 pending"


def test_a_resume_cancelled_while_reading_the_timers_back_does_not_run_them_from_now(demo_pipeline, tmp_path, caplog):
    spec = with_policy(demo_pipeline, retrain={"online_publish_every_labels": None, "online_publish_every": None,
                                               "rebuild_window": 200, "schedule": 24 * HOUR})
    now = T0 + 100 * HOUR
    history = FakeHistory({"cand": {0: [candidate_at(now - 20 * HOUR, "SCHEDULE")]}}, committed={})
    harness = Harness(spec, tmp_path, window=labeled(200))
    harness.now = now
    resume = KafkaResume(history, labeled_topic="lab", candidates_topic="cand", pipeline=spec.name, limit=100)
    harness.processor = processor = RetrainerProcessor(spec, TOPICS, harness.table, harness.store, harness.read_window,
                                                       clock=lambda: harness.now, timer_starts=resume.timer_starts)
    processor.cancelled = lambda: True
    with caplog.at_level(logging.WARNING), pytest.raises(ResumeCancelled):
        processor.prepare()
    assert "the timers run from now" not in caplog.text
    processor.cancelled = never
    processor.prepare()
    harness.now = now + 4 * HOUR - 1
    assert candidates(processor.tick(harness.now)) == []
    harness.now = now + 4 * HOUR
    assert [c["trigger"] for c in candidates(processor.tick(harness.now))] == ["SCHEDULE"], \
        "24 hours after the rebuild read back"


def test_a_first_champion_s_resume_cancelled_in_a_batch_leaves_the_batch_uncommitted(spec, tmp_path) -> None:
    """With no champion at start-up, the first one deployed is resumed at a batch: given up there, the
    batch must be neither learned on a part of the line, published from, nor committed."""
    earlier = labeled(40)  # passed by before the first champion, committed: read back once it loads

    class StoppedDuringTheRead(FakeResume):
        def __call__(self, deployment: dict, cancelled=never):
            runner.stop()  # SIGTERM, or the lease lost (LeasedService stops the runner for both)
            return super().__call__(deployment, cancelled)

    resume = StoppedDuringTheRead(earlier, read_through={("lab", 0): 39})
    harness = restarted(spec, tmp_path, resume)
    harness.table.apply(slot_key(spec.name, spec.model.name, CHAMPION), None)  # no champion yet
    harness.processor.prepare()
    harness.processor.process(earlier)
    champion = harness.set_champion("fraud-20990101000000000-deadbeef")
    runner = StageRunner("retrainer", "retrainer-group", KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                         StageTopics({"lab": LabelsFromBytes()}, {"cand": RawSerde()}),  # type: ignore[dict-item]
                         harness.processor, RunnerSettings(retry_backoff_s=0.001))
    runner.delivery.producer, runner.consumer = FakeProducer(), FakeConsumer()
    runner._assigned.add(("lab", 0))
    RetrainerTerm(harness.processor, runner, InlineExecutor())  # type: ignore[arg-type]
    runner.pacer = SimpleNamespace(consume=lambda _n, _t: label_messages(40, 50))
    runner._next_tick = float("inf")
    with pytest.raises(runner_module._Abandoned):  # run() catches it and leaves
        runner._turn()
    assert runner.delivery.producer.produced == [] and runner.consumer.commits == [], \
        "the 10th label would have published a candidate of the 40 read back and those 10, then committed"
    assert harness.processor.learner.learned_total == 0 and harness.processor.learner.model is None
    assert issubclass(ResumeCancelled, DependencyUnavailable), "what the runner abandons a batch on when stopping"
    harness.processor.cancelled = never  # the batch read again by whoever holds the group next: from the start
    [published] = candidates(harness.processor.process(labeled(10, start=40)))
    assert resume.calls == [champion, champion] and published["sample_count"] == 50
    assert published["source_offsets"] == [{"topic": "lab", "partition": 0, "start": 0, "end": 50}]
