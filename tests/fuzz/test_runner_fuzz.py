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
from streamloop.kafka.runner import StageRunner
from streamloop.kafka.runner_settings import StageTopics
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
    runner.delivery.producer = FakeProducer()
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

    dead = [p for p in runner.delivery.producer.produced if p[0] == TOPIC + ".dlq"]
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
@given(items=st.lists(st.tuples(st.one_of(st.none(), st.sampled_from([b"a", b"b", b"c"]), st.binary(max_size=16)),
                                st.one_of(st.none(), st.binary(max_size=256),
                                          st.integers(0, 1000).map(lambda s: ("good", s)))),
                      min_size=1, max_size=20))
def test_the_deployments_table_skips_what_it_cannot_decode(items: list) -> None:
    """The scorer, retrainer and publisher read the registry through this reader: garbage is skipped.

    The table must end as applying the batch's records one by one would leave it: a keyless or
    undecodable record changes nothing, a tombstone deletes, a valid record sets its key; and
    ``on_change`` hears of each key the batch changed, once.
    """
    serde = SingleObjectSerde(DEPLOYMENT, REPOSITORY)
    changes: list = []
    reader = CompactedTopicReader(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "models.model-deployment.v1",
                                  serde, on_change=lambda k, v: changes.append(k))
    # The table already holds "a" and "b", so the fuzzed batch can delete and overwrite.
    before = {name: sample_record(DEPLOYMENT, seed) for seed, name in enumerate(["a", "b"])}
    reader._apply([FakeMessage(serde.encode(record), i, key=name.encode(), topic="models.model-deployment.v1")
                   for i, (name, record) in enumerate(before.items())])
    changes.clear()
    expected = {name: serde.decode(serde.encode(record)) for name, record in before.items()}
    messages, last_word = [], {}
    undecodable = tombstones = keyed = 0
    for offset, (key, value) in enumerate(items):
        if isinstance(value, tuple):
            record = sample_record(DEPLOYMENT, value[1])
            value = serde.encode(record)
        else:
            record = None
        messages.append(FakeMessage(value, offset, key=key, topic="models.model-deployment.v1"))
        if key is None:
            undecodable += 1
            continue
        keyed += 1
        name = key.decode("utf-8", "replace")
        if value is None:
            tombstones += 1
            last_word.pop(name, None)
            last_word[name] = None
        elif record is None:
            undecodable += 1  # random bytes never carry the single-object marker and a known fingerprint
        else:
            last_word.pop(name, None)  # keeps the keys in the order of their last words
            last_word[name] = serde.decode(value)
    # Changed, in the order of their last words: every key whose last word was a value, and every
    # key a tombstone took from the table.
    changed = [name for name, value in last_word.items() if value is not None or name in expected]
    for name, value in last_word.items():
        if value is None:
            expected.pop(name, None)
        else:
            expected[name] = value
    reader._apply(messages)
    assert reader.snapshot() == expected
    assert (reader.stats.records - len(before), reader.stats.tombstones, reader.stats.undecodable) == (
        keyed, tombstones, undecodable)
    assert changes == changed
    assert reader.stats.callback_errors == 0
