"""A batch whose delivery partly failed: the retry sends again only what was not acknowledged."""

from __future__ import annotations

from collections.abc import Sequence

from confluent_kafka import KafkaError

from streamloop.contracts.samples import sample_record
from streamloop.contracts.schemas import SchemaRepository
from streamloop.kafka import KafkaSettings
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
