"""Delivery retries: a batch sends again only what was not acknowledged, and a fatal producer error
also sends again what was acknowledged in the last window (the broker may have lost it)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime

from confluent_kafka import KafkaError, KafkaException

from streamloop.contracts.samples import sample_record
from streamloop.contracts.schemas import SchemaRepository
from streamloop.kafka import KafkaSettings
from streamloop.kafka import runner as runner_module
from streamloop.kafka.records import ConsumedRecord, OutgoingRecord, ProcessResult
from streamloop.kafka.runner import RunnerSettings, StageRunner, StageTopics
from streamloop.serde import SingleObjectSerde
from tests.kafka_fakes import FakeConsumer, FakeMessage, FakeProducer

REPOSITORY = SchemaRepository()
VECTOR = REPOSITORY.load("features/feature_vector.avsc")
SOURCE, SINK = "in.feature-vector.v1", "out.feature-vector.v1"


class FlakyProducer(FakeProducer):
    """Fails the first delivery of every other record, as a broker restart does to a batch in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: list[bytes] = []

    def deliver(self, value: bytes | None):
        sent = [v for _t, _k, v, _h in self.produced]
        if value in sent or len(sent) % 2 == 0:
            return None
        self.failed.append(value)
        return KafkaError(KafkaError._MSG_TIMED_OUT)

    @property
    def sent(self) -> list[bytes | None]:
        return [v for _t, _k, v, _h in self.produced]


class Echo:
    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        return ProcessResult(outputs=[OutgoingRecord(SINK, r.key, r.value, source=r) for r in batch])


def test_a_retry_resends_only_the_unacknowledged_outputs() -> None:
    serde = SingleObjectSerde(VECTOR, REPOSITORY)
    runner = StageRunner("delivery", "delivery-group", KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                         StageTopics(inputs={SOURCE: serde}, outputs={SINK: serde}), Echo(),
                         RunnerSettings(retry_backoff_s=0.001))
    producer, consumer = FlakyProducer(), FakeConsumer()
    runner.producer, runner.consumer = producer, consumer
    runner._assigned.add((SOURCE, 0))
    values = [serde.encode(sample_record(VECTOR, seed)) for seed in range(6)]
    runner._run_batch([FakeMessage(v, offset, topic=SOURCE) for offset, v in enumerate(values)])

    assert len(producer.failed) == 3
    # Each output acknowledged exactly once: the retry sent the three that failed, and only those.
    assert producer.sent == values + producer.failed
    assert runner.stats.produced == 6 and runner.stats.delivery_retries == 1
    assert consumer.commits[-1][0].offset == 6


class DesynchronizedProducer(FakeProducer):
    """Acknowledges the first ``healthy`` records, then fails as after a broker restart that lost its state."""

    def __init__(self, healthy: int) -> None:
        super().__init__()
        self.healthy = healthy

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None, **pinned) -> None:
        if len(self.produced) >= self.healthy:
            raise KafkaException(KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
                                            "sequence desynchronization with broker 1", fatal=True))
        super().produce(topic, value, key, headers, on_delivery, **pinned)


class Stamping:
    """Echo, each output stamped with the number of the run that made it: a replay's bytes differ,
    as the featurizer's vectors do (their computed_at)."""

    def __init__(self) -> None:
        self.runs = 0

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        self.runs += 1
        return ProcessResult(outputs=[OutgoingRecord(SINK, r.key, {**r.value, "computed_at": self.runs}, source=r)
                                      for r in batch])


def desync_runner(monkeypatch, window_s: float, processor=None,
                  healthy: int = 3) -> tuple[StageRunner, SingleObjectSerde, FakeProducer]:
    serde = SingleObjectSerde(VECTOR, REPOSITORY)
    runner = StageRunner("delivery", "delivery-group", KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                         StageTopics(inputs={SOURCE: serde}, outputs={SINK: serde}), processor or Echo(),
                         RunnerSettings(retry_backoff_s=0.001, resend_window_s=window_s))
    replacement = FakeProducer()
    monkeypatch.setattr(runner_module, "Producer", lambda _config: replacement)
    runner.producer, runner.consumer = DesynchronizedProducer(healthy=healthy), FakeConsumer()
    runner._assigned.add((SOURCE, 0))
    return runner, serde, replacement


def test_a_fatal_producer_error_sends_the_recently_acknowledged_outputs_again(monkeypatch) -> None:
    runner, serde, replacement = desync_runner(monkeypatch, window_s=60.0)
    values = [serde.encode(sample_record(VECTOR, seed)) for seed in range(6)]
    runner._run_batch([FakeMessage(v, offset, topic=SOURCE) for offset, v in enumerate(values[:3])])
    runner._run_batch([FakeMessage(v, offset, topic=SOURCE) for offset, v in enumerate(values[3:], start=3)])

    # The first batch was acknowledged and committed, but the broker that lost its sequence state
    # may have lost those records too: the new producer sends them again before the second batch.
    assert [v for _t, _k, v, _h in replacement.produced] == values
    assert runner.stats.resent == 3 and runner.stats.delivery_retries == 1
    assert runner.consumer.commits[-1][0].offset == 6


def test_outputs_acknowledged_before_the_window_are_not_sent_again(monkeypatch) -> None:
    runner, serde, replacement = desync_runner(monkeypatch, window_s=60.0)
    values = [serde.encode(sample_record(VECTOR, seed)) for seed in range(6)]
    runner._run_batch([FakeMessage(v, offset, topic=SOURCE) for offset, v in enumerate(values[:3])])
    runner._acknowledged = deque((acked_at - 61.0, record) for acked_at, record in runner._acknowledged)
    runner._run_batch([FakeMessage(v, offset, topic=SOURCE) for offset, v in enumerate(values[3:], start=3)])
    assert [v for _t, _k, v, _h in replacement.produced] == values[3:]
    assert runner.stats.resent == 0

    off, serde, replacement = desync_runner(monkeypatch, window_s=0.0)
    off._run_batch([FakeMessage(v, offset, topic=SOURCE) for offset, v in enumerate(values[:3])])
    off._run_batch([FakeMessage(v, offset, topic=SOURCE) for offset, v in enumerate(values[3:], start=3)])
    assert [v for _t, _k, v, _h in replacement.produced] == values[3:], "a window of 0 turns it off"


def test_an_input_read_twice_within_the_window_has_its_outputs_sent_again_once(monkeypatch) -> None:
    runner, serde, replacement = desync_runner(monkeypatch, window_s=60.0, processor=Stamping(), healthy=6)
    values = [serde.encode(sample_record(VECTOR, seed)) for seed in range(6)]
    first = [FakeMessage(v, offset, topic=SOURCE) for offset, v in enumerate(values[:3])]
    runner._run_batch(first)
    runner._run_batch(first)  # read again: the group rejoined from an offset commit the broker lost
    runner._run_batch([FakeMessage(v, offset, topic=SOURCE) for offset, v in enumerate(values[3:], start=3)])

    # Six outputs of offsets 0-2 were acknowledged (two copies each), then the producer failed.
    # Each output is sent again once, as its latest copy; then the third batch.
    resent = [serde.decode(v) for _t, _k, v, _h in replacement.produced]
    assert [r["event_id"] for r in resent] == [serde.decode(v)["event_id"] for v in values]
    assert [r["computed_at"] for r in resent] == [to_datetime(2)] * 3 + [to_datetime(3)] * 3
    assert runner.stats.resent == 3


def to_datetime(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, tz=UTC)
