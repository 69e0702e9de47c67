"""The StageRunner's decode -> dead-letter path with hostile bytes, and the side readers that skip them.

A fake consumer message and producer stand in for librdkafka, so a batch runs in microseconds: every
undecodable record must become exactly one dead letter carrying its original bytes and the error
headers, the good records of the batch must reach the processor, and the batch is committed.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from streamloop.contracts.samples import sample_record
from streamloop.contracts.schemas import SchemaRepository
from streamloop.kafka import KafkaSettings
from streamloop.kafka import dead_letters as dl
from streamloop.kafka.records import ConsumedRecord, ProcessResult
from streamloop.kafka.runner import StageRunner, StageTopics
from streamloop.kafka.table_reader import CompactedTopicReader
from streamloop.serde import SingleObjectSerde
from tests.fuzz.conftest import FUZZ
from tests.kafka_fakes import FakeConsumer, FakeMessage, FakeProducer

REPOSITORY = SchemaRepository()
VECTOR = REPOSITORY.load("features/feature_vector.avsc")
DEPLOYMENT = REPOSITORY.load("models/model_deployment.avsc")
TOPIC = "features.feature-vector.v1"  # FakeMessage's default topic too


class Recording:
    def __init__(self) -> None:
        self.seen: list[ConsumedRecord] = []

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        self.seen.extend(batch)
        return ProcessResult()


def make_runner() -> tuple[StageRunner, Recording]:
    processor = Recording()
    serde = SingleObjectSerde(VECTOR, REPOSITORY)
    runner = StageRunner("fuzz", "fuzz-group", KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                         StageTopics(inputs={TOPIC: serde}, outputs={}), processor)
    runner.producer = FakeProducer()
    runner.consumer = FakeConsumer()
    runner._assigned.add((TOPIC, 0))
    return runner, processor


@FUZZ
@given(values=st.lists(st.one_of(st.none(), st.binary(max_size=512),
                                 st.integers(0, 1000).map(lambda s: ("good", s))), min_size=1, max_size=30))
def test_poison_records_become_dead_letters_and_the_batch_flows(values: list) -> None:
    runner, processor = make_runner()
    serde = runner.topics.inputs[TOPIC]
    messages, good = [], 0
    for offset, value in enumerate(values):
        if isinstance(value, tuple):
            value = serde.encode(sample_record(VECTOR, value[1]))
            good += 1
        messages.append(FakeMessage(value, offset, headers=[("origin", b"fuzz")]))
    runner._run_batch(messages)

    dead = [p for p in runner.producer.produced if p[0] == TOPIC + ".dlq"]
    assert len(processor.seen) + len(dead) == len(values)
    assert len(processor.seen) >= good  # garbage that happens to decode is processed, never lost
    for _topic, key, value, headers in dead:
        errors = dl.read_error_headers(headers)
        original = messages[int(errors[dl.OFFSET])]
        assert (key, value) == (original.key(), original.value())
        assert errors[dl.STAGE] == dl.STAGE_DECODE
        assert errors[dl.CLASS_NAME].startswith("streamloop.serde.exceptions.")
        assert ("origin", b"fuzz") in headers
    assert runner.consumer.commits and runner.consumer.commits[-1][0].offset == len(values)
    assert runner.stats.dead_lettered == len(dead)


@FUZZ
@given(values=st.lists(st.one_of(st.none(), st.binary(max_size=256)), min_size=1, max_size=20),
       keys=st.lists(st.one_of(st.none(), st.binary(max_size=16)), min_size=20, max_size=20))
def test_the_deployments_table_skips_what_it_cannot_decode(values: list, keys: list) -> None:
    """The scorer, retrainer and publisher read the registry through this reader: garbage is skipped."""
    changes: list = []
    reader = CompactedTopicReader(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "models.model-deployment.v1",
                                  SingleObjectSerde(DEPLOYMENT, REPOSITORY), on_change=lambda k, v: changes.append(k))
    messages = [FakeMessage(v, i, key=keys[i], topic="models.model-deployment.v1") for i, v in enumerate(values)]
    reader._apply(messages)
    assert reader.stats.callback_errors == 0
    assert reader.stats.undecodable + reader.stats.records >= sum(1 for v in values if v is not None)
