"""The runner runtime's composition root: its report loop, its counters and its internal topics."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from services.ground_truth_collector import join as join_module
from services.ground_truth_collector import runner_app
from services.ground_truth_collector.entries import Kind
from services.ground_truth_collector.join_stage import JoinStage
from services.ground_truth_collector.routing import (
    HEADER_DECIDED_AT,
    HEADER_JOIN_CLOCK,
    HEADER_ORIGIN,
    INPUT_ROLES,
    WATERMARK,
    control_headers,
)
from services.ground_truth_collector.runner_app import RunnerCollector
from streamloop.kafka.records import ConsumedRecord, TopicPartitionRef
from streamloop.telemetry import Telemetry
from tests.kafka_fakes import FakeAdmin, FakeMessage
from tests.unit.ground_truth_collector.factory import built, collector_settings
from tests.unit.ground_truth_collector.test_join_stage import KEYED, T0, at, event, join_runner, keyed, messages, stage
from tests.unit.ground_truth_collector.test_redis_state import Client
from tests.unit.ground_truth_collector.test_scoring import example


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> RunnerCollector:
    return built(collector_settings(monkeypatch), RunnerCollector)


class IdleRunner:
    """A stage runner that does nothing until it is stopped, as a stage between batches."""

    def __init__(self, group_id: str) -> None:
        self.group_id = group_id
        self.started = False
        self.stopped = threading.Event()

    def run(self) -> int:
        self.started = True
        self.stopped.wait(10)
        return 0

    def stop(self) -> None:
        self.stopped.set()


class RecordedShutdown:
    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self.shut_down = False

    def shutdown(self) -> None:
        self.shut_down = True
        self.telemetry.shutdown()


class Partition:
    """A join partition read by the report loop while the join thread reads a new partition in."""

    def __init__(self, join: JoinStage) -> None:
        self.join = join
        self.size = 0

    @property
    def pending(self) -> int:
        self.join.join(len(self.join.partitions))
        return 1


def test_the_state_gauges_read_the_partitions_while_the_join_thread_adds_one() -> None:
    join = stage(Client())
    join.partitions[0] = Partition(join)  # type: ignore[assignment] - only pending and size are read
    assert join.pending == 1, "a partition added meanwhile is counted at the next report"
    assert len(join.partitions) == 2


def test_a_report_loop_that_fails_still_stops_the_stages_and_the_telemetry(collector, monkeypatch) -> None:
    monkeypatch.setattr(collector, "ensure_internal_topics", lambda: None)
    monkeypatch.setattr(collector, "ensure_keyed_partitions", lambda: None)
    collector.runners = [IdleRunner(name) for name in ("grp", "grp.join", "grp.score")]
    monkeypatch.setattr(collector, "telemetry", RecordedShutdown(collector.telemetry))

    def failing(*_args) -> None:
        raise RuntimeError("dictionary changed size during iteration")

    monkeypatch.setattr(collector.report, "report", failing)
    assert collector.run() == 1
    assert all(runner.stopped.is_set() for runner in collector.runners) and collector.telemetry.shut_down


class ClosedUntil:
    """The metrics stage's closed_until in Redis: every window before it was reported already."""

    def __init__(self, value: int) -> None:
        self.value = value

    def get(self) -> int:
        return self.value

    def set(self, value: int) -> None:
        self.value = value


def test_the_metrics_stage_counters_are_exported_and_survive_its_rebuild(collector) -> None:
    collector.score.closed_until = ClosedUntil(T0 + 60_000)
    late = example("e1", T0)  # decided in a window already reported
    headers = [(HEADER_DECIDED_AT, str(T0).encode()), (HEADER_ORIGIN, f"{collector.keyed_topic}:0:1".encode())]
    record = ConsumedRecord(collector.joined_topic, 0, 0, "e1",
                            {"bytes": collector.score.example_serde.encode(late)}, T0, headers)
    collector.score.process([record])
    assert collector.totals()["outcomes_late"] == 1
    collector.score.on_assigned([TopicPartitionRef(collector.joined_topic, 0)])  # rebuilt from Redis and a replay
    collector.score.process([record])
    assert collector.totals()["outcomes_late"] == 2, "an exported counter never goes back"
    assert set(collector.totals()) >= {"joined", "no_matching_event", "outcomes_counted", "outcomes_snapshots"}


def test_a_revoked_metrics_stage_exports_no_window(collector) -> None:
    """A replica that lost the metrics stage's partition went on exporting its last window's accuracy
    and label delay as current, beside the window reports of the replica that has it now."""
    collector.score.closed_until = ClosedUntil(T0)
    keyed = collector.keyed_topic
    closed = T0 + 60_000  # past the window of T0 and its lateness
    example_headers = [(HEADER_DECIDED_AT, str(T0).encode()), (HEADER_ORIGIN, f"{keyed}:0:1".encode()),
                       (HEADER_JOIN_CLOCK, str(T0).encode())]
    records = [ConsumedRecord(collector.joined_topic, 0, 0, "e1",
                              {"bytes": collector.score.example_serde.encode(example("e1", T0))}, T0, example_headers)]
    records += [ConsumedRecord(collector.joined_topic, 0, 1 + p, None, {"bytes": b""}, closed, control_headers(
        WATERMARK, (HEADER_ORIGIN, f"{keyed}:{p}:2".encode()), (HEADER_JOIN_CLOCK, str(closed).encode())))
        for p in range(collector.keyed_partitions)]
    score_runner = collector.runners[2]
    assert score_runner.processor is collector.score
    score_runner._on_assign(None, [TopicPartition(collector.joined_topic, 0)])
    collector.score.process(records)
    assert exported_series(collector, "streamloop_model_accuracy") == {("v1", "CHAMPION"): 1.0}
    assert exported_series(collector, "streamloop_label_delay_seconds")
    score_runner._on_revoke(None, [TopicPartition(collector.joined_topic, 0)])
    assert exported_series(collector, "streamloop_model_accuracy") == {}
    assert exported_series(collector, "streamloop_label_delay_seconds") == {}


def exported_series(collector: RunnerCollector, name: str) -> dict[tuple[str, str], float]:
    """``name``'s series as Prometheus scrapes them, by (version, role) (a quantile's: its last)."""
    registry = collector.telemetry.metrics.registry
    return {(sample.labels["model_version"], sample.labels["role"]): sample.value for family in registry.collect()
            if family.name == name for sample in family.samples}


def exported_events(collector: RunnerCollector) -> dict[str, float]:
    """streamloop_collector_events_total as Prometheus scrapes it, per event."""
    registry = collector.telemetry.metrics.registry
    return {sample.labels["event"]: sample.value for family in registry.collect()
            if family.name == "streamloop_collector_events" for sample in family.samples
            if sample.name.endswith("_total")}


def test_a_batch_retried_without_its_poison_record_exports_only_what_was_delivered(collector, monkeypatch) -> None:
    """The report thread runs while the join is part-way through a batch; a poison record then
    fails it, and the runner processes it again without that record, deciding differently."""
    join = stage(Client())
    collector.join, collector.counters = join, join.counters
    apply = join_module.JoinPartition.apply

    def report_then_fail_on_e2_prediction(self, item):
        decisions = apply(self, item)
        if item.event_id == "e2" and item.kind is Kind.PREDICTION:
            collector.report.report(collector.totals(), join.pending, join.entries)  # e2 joined, not delivered
            raise RuntimeError("poison")
        return decisions

    monkeypatch.setattr(join_module.JoinPartition, "apply", report_then_fail_on_e2_prediction)
    runner = join_runner(join)
    records = event("e1", 0) + event("e2", 3)
    runner._run_batch([FakeMessage(r.value["bytes"], r.offset, key=r.key.encode(), topic=KEYED, headers=r.headers)
                       for r in records])
    collector.report.report(collector.totals(), join.pending, join.entries)
    exported = exported_events(collector)
    assert runner.stats.dead_lettered == 1, "e2's prediction"
    assert (join.counters.joined, join.pending) == (1, 1), "e2's label waits for a prediction"
    assert exported["labels_in"] == 2 and exported["joined"] == 1
    decided = ("joined", "after_horizon", "no_matching_event", "duplicate")
    assert exported["labels_in"] == sum(exported.get(name, 0) for name in decided) + join.pending


def exported_gauge(collector: RunnerCollector, name: str) -> float | None:
    registry = collector.telemetry.metrics.registry
    values = [sample.value for family in registry.collect() if family.name == name for sample in family.samples]
    return values[0] if values else None


def test_the_partitions_held_given_up_are_exported_until_taken_back(collector) -> None:
    """What an alert can watch: partition_taken_over counts the refused writes, not how long the
    partition then stays held (StreamloopCollectorPartitionGivenUp, deploy/prometheus/alerts.yml)."""
    client, now = Client(), [0.0]
    join = stage(client, take_back_after_ms=120_000, monotonic=lambda: now[0])
    collector.join, collector.counters = join, join.counters
    runner = join_runner(join)
    runner._run_batch(messages([keyed(0, "f", Kind.FEATURES, "e0", event_time=at(T0), pipeline="p")]))
    collector.report_state()
    assert exported_gauge(collector, "streamloop_collector_partitions_given_up") == 0
    del client.hashes["join:0"]  # evicted whole: the next write is refused as a take-over
    label, features, prediction = event("e2", 1)
    runner._run_batch(messages([label]))
    collector.report_state()
    assert exported_gauge(collector, "streamloop_collector_partitions_given_up") == 1
    now[0] += 120
    runner._run_batch(messages([features]))  # the hash went unwritten: taken back, read again from 1
    collector.report_state()
    assert exported_gauge(collector, "streamloop_collector_partitions_given_up") == 0


def test_a_total_that_goes_back_is_not_counted_again_when_it_rises_to_where_it_was(collector) -> None:
    """OpenTelemetry drops a negative increment: the exported counter stays at the highest total."""
    for joined in (100, 105, 100, 105, 107):
        collector.report.report({"joined": joined}, 0, 0)
    assert exported_events(collector)["joined"] == 107


def test_every_topic_a_stage_dead_letters_to_is_created_with_the_internal_topics(collector, monkeypatch) -> None:
    """A broker that does not create topics on first use would refuse those dead letters for ever."""
    created: list = []
    monkeypatch.setattr(runner_app, "ensure_topics", lambda _admin, topics: created.extend(topics))
    collector.ensure_internal_topics()
    catalog = {collector.ctx.topic(role).name for role in INPUT_ROLES}  # their dead letters: the topics job's
    internal_dead_letters = {runner.topics.dead_letters.get(name, f"{name}.dlq")  # as the runner picks them
                             for runner in collector.runners for name in runner.topics.inputs if name not in catalog}
    assert internal_dead_letters == {collector.keyed_dead_letter_topic, f"{collector.joined_topic}.dlq"}
    assert internal_dead_letters <= {t.topic for t in created}


def test_a_keyed_topic_with_fewer_partitions_than_the_labels_topic_is_grown(collector, monkeypatch) -> None:
    """After docs/operations.md "Adding partitions" the re-key stage writes to the labels topic's count."""
    admin = FakeAdmin({collector.keyed_topic: collector.keyed_partitions - 1})
    monkeypatch.setattr(runner_app, "AdminClient", lambda _config: admin)
    collector.ensure_keyed_partitions()
    assert admin.grown == [(collector.keyed_topic, collector.keyed_partitions)]
    collector.ensure_keyed_partitions()
    assert admin.grown == [(collector.keyed_topic, collector.keyed_partitions)], "grown once"


def test_a_keyed_topic_that_cannot_grow_stops_the_start_with_one_line_saying_what_to_do(
        collector, monkeypatch, caplog) -> None:
    admin = FakeAdmin({collector.keyed_topic: collector.keyed_partitions - 1},
                      refuse=KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    monkeypatch.setattr(runner_app, "AdminClient", lambda _config: admin)
    monkeypatch.setattr(collector, "ensure_internal_topics", lambda: None)  # every topic exists
    collector.runners = [IdleRunner(name) for name in ("grp", "grp.join", "grp.score")]
    assert collector.run() == 1
    assert not any(runner.started for runner in collector.runners)
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "COLLECTOR_KEYED_PARTITIONS" in error and f"--partitions {collector.keyed_partitions}" in error
    assert "\n" not in error


class SilentBroker(FakeAdmin):
    def list_topics(self, topic: str | None = None, timeout: float = 0) -> SimpleNamespace:
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "no broker answered"))


def test_a_broker_that_does_not_answer_the_keyed_topic_check_is_one_error_line_and_exit_1(
        collector, monkeypatch, caplog) -> None:
    monkeypatch.setattr(runner_app, "AdminClient", lambda _config: SilentBroker())
    monkeypatch.setattr(collector, "ensure_internal_topics", lambda: None)
    collector.runners = [IdleRunner(name) for name in ("grp", "grp.join", "grp.score")]
    assert collector.run() == 1
    assert not any(runner.started for runner in collector.runners)
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "no broker answered" in error


class NeverVisible(FakeAdmin):
    """A broker that accepts the new topics but never lists them (ensure_topics waits, then gives up)."""

    def list_topics(self, topic: str | None = None, timeout: float = 0) -> SimpleNamespace:
        return SimpleNamespace(topics={})


def test_internal_topics_that_never_become_visible_are_one_error_line_and_exit_1(
        collector, monkeypatch, caplog) -> None:
    """BrokerUnavailableError escaped run() as a traceback, and the telemetry was never shut down."""
    from streamloop.kafka import admin as kafka_admin

    monkeypatch.setattr(runner_app, "AdminClient", lambda _config: NeverVisible())
    monkeypatch.setattr(runner_app, "ensure_topics",
                        lambda admin, topics: kafka_admin.ensure_topics(admin, topics, timeout_s=0.01))
    monkeypatch.setattr(collector, "telemetry", RecordedShutdown(collector.telemetry))
    collector.runners = [IdleRunner(name) for name in ("grp", "grp.join", "grp.score")]
    assert collector.run() == 1
    assert not any(runner.started for runner in collector.runners) and collector.telemetry.shut_down
    [error] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "topics not visible" in error.getMessage() and error.exc_info is None
