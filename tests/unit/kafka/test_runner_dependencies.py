"""A dependency's outage (Schema Registry, Redis) is not the records' fault: the batch waits, nothing dead-lettered."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

import pytest

from streamloop.kafka import KafkaSettings
from streamloop.kafka import runner as runner_module
from streamloop.kafka.records import ConsumedRecord, OutgoingRecord, ProcessResult
from streamloop.kafka.runner import StageRunner
from streamloop.kafka.runner_settings import RunnerSettings, StageTopics
from streamloop.serde import RegistryUnavailableError
from streamloop.serde.raw import RawSerde
from streamloop.store import FeatureStoreUnavailable
from tests.kafka_fakes import FakeConsumer, FakeMessage, FakeProducer

SOURCE, SINK = "in.raw", "out.raw"


class RegistryDownAtFirst(RawSerde):
    """A Confluent-format serde whose registry does not answer the first ``outages`` lookups."""

    def __init__(self, outages: int) -> None:
        super().__init__()
        self.outages = outages

    def _lookup(self) -> None:
        if self.outages:
            self.outages -= 1
            raise RegistryUnavailableError("registry lookup failed: connection refused")

    def decode(self, data):
        self._lookup()
        return super().decode(data)

    def encode(self, record):
        self._lookup()
        return super().encode(record)


class StoreDownAtFirst:
    """Writes each record to a store that fails the first batch part-way; counts its state like a stateful stage."""

    def __init__(self) -> None:
        self.outages = 1
        self.seen: list[bytes] = []
        self.discards = 0

    def discard(self) -> None:
        self.discards += 1
        self.seen = []

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        result = ProcessResult()
        for record in batch:
            self.seen.append(record.value["bytes"])
            if self.outages and len(self.seen) == 2:
                self.outages -= 1
                raise FeatureStoreUnavailable("cannot write features: Connection refused")
            result.outputs.append(OutgoingRecord(SINK, record.key, record.value, source=record))
        return result


class Echo:
    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        return ProcessResult(outputs=[OutgoingRecord(SINK, r.key, r.value, source=r) for r in batch])


def stage(processor, input_serde=None, output_serde=None) -> StageRunner:
    runner = StageRunner("dependencies", "dependencies-group", KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                         StageTopics({SOURCE: input_serde or RawSerde()}, {SINK: output_serde or RawSerde()}),
                         processor, RunnerSettings(retry_backoff_s=0.001))
    runner.delivery.producer, runner.consumer = FakeProducer(), FakeConsumer()
    runner._assigned.add((SOURCE, 0))
    return runner


def batch(*values: bytes) -> list[FakeMessage]:
    return [FakeMessage(value, offset, key=b"k", topic=SOURCE) for offset, value in enumerate(values)]


def produced(runner: StageRunner) -> list[tuple[str, bytes]]:
    return [(topic, value) for topic, _key, value, _headers in runner.delivery.producer.produced]


def test_a_registry_outage_while_decoding_waits_instead_of_dead_lettering() -> None:
    runner = stage(Echo(), input_serde=RegistryDownAtFirst(outages=3))
    runner._run_batch(batch(b"a", b"b"))
    assert produced(runner) == [(SINK, b"a"), (SINK, b"b")], "no dead letter: the records were fine"
    assert runner.stats.dependency_waits == 3 and runner.consumer.commits[-1][0].offset == 2


def test_a_registry_outage_while_encoding_waits_instead_of_dead_lettering() -> None:
    runner = stage(Echo(), output_serde=RegistryDownAtFirst(outages=2))
    runner._run_batch(batch(b"a", b"b"))
    assert produced(runner) == [(SINK, b"a"), (SINK, b"b")]
    assert runner.stats.dependency_waits == 2 and runner.consumer.commits[-1][0].offset == 2


def test_an_output_schema_not_yet_registered_waits_instead_of_dead_lettering() -> None:
    """Pods that start before the topics Job registered a changed schema: the batch waits for it, whole.

    The schema looked up while encoding is the stage's own output schema, so the registry's "not
    found" says nothing about the input records; dead-lettered, every one would be lost.
    """
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    from streamloop.contracts.samples import sample_record
    from streamloop.contracts.schemas import SchemaRepository
    from streamloop.serde.confluent import ConfluentSerde

    label = SchemaRepository().load("labels/label.avsc")
    registry = SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4().hex}"})
    serde = ConfluentSerde(label, SINK, registry)  # auto-registration off, as in production

    class Labels:
        def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
            return ProcessResult(outputs=[OutgoingRecord(SINK, r.key, sample_record(label, r.offset), source=r)
                                          for r in batch])

    runner = stage(Labels(), output_serde=serde)
    waits: list[float] = []

    def the_job_registers_it_meanwhile(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            registry.register_schema(f"{SINK}-value", Schema(json.dumps(label.raw), "AVRO"))

    runner._sleep = the_job_registers_it_meanwhile
    assert runner._run_batch(batch(b"a", b"b"))
    assert [topic for topic, _value in produced(runner)] == [SINK, SINK], "not one dead letter"
    assert [serde.decode(value) for _topic, value in produced(runner)] == [sample_record(label, 0),
                                                                           sample_record(label, 1)]
    assert runner.stats.dependency_waits == 2 and runner.consumer.commits[-1][0].offset == 2


def test_a_store_outage_in_the_processor_retries_the_whole_batch_from_the_state_before_it() -> None:
    processor = StoreDownAtFirst()
    runner = stage(processor)
    runner._run_batch(batch(b"a", b"b", b"c"))
    assert produced(runner) == [(SINK, b"a"), (SINK, b"b"), (SINK, b"c")], "not one record dead-lettered"
    assert processor.discards == 1 and processor.seen == [b"a", b"b", b"c"], "the failed attempt's state dropped"
    assert runner.consumer.commits[-1][0].offset == 3


def test_a_stop_during_an_outage_leaves_the_batch_uncommitted_and_undead() -> None:
    runner = stage(Echo(), input_serde=RegistryDownAtFirst(outages=10**6))
    runner._sleep = lambda _s: runner.stop()  # SIGTERM arrives while the runner waits
    runner.pacer = type("OneBatch", (), {"consume": lambda _self, _n, _t: batch(b"a")})()
    runner._next_tick = float("inf")
    with pytest.raises(runner_module._Abandoned):  # run() catches it and leaves
        runner._turn()
    assert produced(runner) == [] and runner.consumer.commits == []
