"""The re-key stage: records to the partition of their event id, resume markers first after a start."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from services.ground_truth_collector.entries import Kind
from services.ground_truth_collector.rekey_stage import RekeyStage, keyed_partition
from services.ground_truth_collector.routing import RESUME, control_of
from streamloop.contracts.feature_specs import MAX_KEY_BYTES
from streamloop.contracts.samples import sample_record
from streamloop.contracts.schemas import SchemaRepository
from streamloop.kafka import KafkaSettings, StageRunner, dead_letters
from streamloop.kafka.records import ConsumedRecord, TopicPartitionRef
from streamloop.kafka.runner_settings import RunnerSettings, StageTopics
from streamloop.serde import SingleObjectSerde
from streamloop.serde.raw import RawSerde
from tests.kafka_fakes import FakeConsumer, FakeMessage, FakeProducer

REPOSITORY = SchemaRepository()
FEATURES = "t.features"
SERDE = SingleObjectSerde(REPOSITORY.load("features/feature_vector.avsc"), REPOSITORY)


def stage() -> RekeyStage:
    return RekeyStage({FEATURES: Kind.FEATURES}, {FEATURES: SERDE}, "t.by-event", 6, "classification",
                      idle_after_ms=1_000)


def vector(offset: int, event_id: str) -> ConsumedRecord:
    value = SERDE.encode({**sample_record(SERDE.schema, offset), "event_id": event_id})
    return ConsumedRecord(FEATURES, 0, offset, "card-1", {"bytes": value}, 1_700_000_000_000)


def test_after_an_assignment_the_resume_markers_precede_the_first_records() -> None:
    rekey = stage()
    rekey.on_assigned([TopicPartitionRef(FEATURES, 0)])
    outputs = rekey.process([vector(0, "evt-1"), vector(1, "evt-2")]).outputs
    assert [control_of(o.headers) for o in outputs[:6]] == [RESUME] * 6
    assert sorted(o.partition for o in outputs[:6]) == list(range(6))
    assert [(o.key, o.partition) for o in outputs[6:]] == [("evt-1", keyed_partition("evt-1", 6)),
                                                          ("evt-2", keyed_partition("evt-2", 6))]
    # Once per start: the next batch and the next tick carry none.
    assert all(control_of(o.headers) is None for o in rekey.process([vector(2, "evt-3")]).outputs)
    assert not any(control_of(o.headers) == RESUME for o in rekey.tick(1_700_000_000_500).outputs)


def test_an_empty_event_id_is_rejected_as_invalid() -> None:
    result = stage().process([vector(0, "")])
    assert not result.outputs and result.rejections[0].error.rule == "event_id.required"


SERDES = {topic: SingleObjectSerde(REPOSITORY.load(path), REPOSITORY) for topic, path in (
    ("t.predictions", "inference/prediction.avsc"), ("t.labels", "labels/label.avsc"))}
KINDS = {FEATURES: Kind.FEATURES, "t.predictions": Kind.PREDICTION, "t.labels": Kind.LABEL}


def record_of(topic: str, offset: int, event_id: str, **fields) -> ConsumedRecord:
    serde = SERDE if topic == FEATURES else SERDES[topic]
    value = serde.encode({**sample_record(serde.schema, offset), "event_id": event_id, **fields})
    return ConsumedRecord(topic, 0, offset, "k", {"bytes": value}, 1_700_000_000_000)


def rekeying(task: str) -> RekeyStage:
    return RekeyStage(KINDS, {FEATURES: SERDE, **SERDES}, "t.by-event", 6, task, idle_after_ms=1_000)


# A regression label is decoded whole (its type check), the others read from their leading field.
CASES = [(FEATURES, "classification", {}), ("t.predictions", "classification", {}),
         ("t.labels", "classification", {"label": True}), ("t.labels", "regression", {"label": 2.5})]
REFUSED = [("\x00owner", "event_id.reserved"), ("\x00meta/0", "event_id.reserved"), ("e1\x00", "event_id.reserved"),
           ("e" * 1025, "event_id.max_length"), ("é" * 513, "event_id.max_length")]


@pytest.mark.parametrize(("topic", "task", "fields"), CASES)
@pytest.mark.parametrize(("event_id", "rule"), REFUSED)
def test_an_event_id_the_join_state_cannot_hold_is_rejected_as_invalid(topic, task, fields, event_id, rule) -> None:
    """A NUL names the join's own fields in its state ("\x00owner" overwrote the owner counter and
    stopped the partition's join for good); a key is at most MAX_KEY_BYTES long in UTF-8."""
    result = rekeying(task).process([record_of(topic, 0, event_id, **fields)])
    assert not result.outputs
    [rejection] = result.rejections
    assert (rejection.stage, rejection.error.rule) == (dead_letters.STAGE_VALIDATION, rule)


@pytest.mark.parametrize(("topic", "task", "fields"), CASES)
def test_an_event_id_of_max_key_bytes_and_other_control_characters_pass(topic, task, fields) -> None:
    event_ids = ["e" * MAX_KEY_BYTES, "é" * (MAX_KEY_BYTES // 2), "tab\tnew\nline\x01"]
    records = [record_of(topic, offset, event_id, **fields) for offset, event_id in enumerate(event_ids)]
    result = rekeying(task).process(records)
    assert not result.rejections and [o.key for o in result.outputs] == event_ids


def test_a_reserved_event_id_goes_to_its_source_topics_dead_letters_with_its_rule() -> None:
    from streamloop.kafka import KafkaSettings, RunnerSettings, StageRunner, StageTopics
    from streamloop.serde.raw import RawSerde
    from tests.kafka_fakes import FakeConsumer, FakeMessage, FakeProducer

    topics = StageTopics({"t.labels": RawSerde()}, {"t.by-event": RawSerde()}, {"t.labels": "t.labels.dlq"})
    runner = StageRunner("collector", "g", KafkaSettings(bootstrap_servers="127.0.0.1:1"), topics,
                         rekeying("classification"), RunnerSettings())
    runner.delivery.producer, runner.consumer = FakeProducer(), FakeConsumer()
    label = record_of("t.labels", 7, "\x00owner", label=True)
    runner._run_batch([FakeMessage(label.value["bytes"], 7, key=b"\x00owner", topic="t.labels")])
    [(topic, _, value, headers)] = runner.delivery.producer.produced
    assert (topic, value) == ("t.labels.dlq", label.value["bytes"]), "dead-lettered, not forwarded to the join"
    errors = dead_letters.read_error_headers(headers)
    assert (errors[dead_letters.STAGE], errors[dead_letters.RULE]) == (dead_letters.STAGE_VALIDATION,
                                                                       "event_id.reserved")


class FailingAtFirst:
    """A Confluent-format serde (no leading_string): "boom" is a poison record, "reg" meets an outage once."""

    def __init__(self) -> None:
        self.down_once = True

    def decode(self, data: bytes) -> dict:
        from streamloop.serde import RegistryUnavailableError

        value = SERDE.decode(data)
        if value["event_id"] == "boom":
            raise RuntimeError("a bug on this record")
        if value["event_id"] == "reg" and self.down_once:
            self.down_once = False
            raise RegistryUnavailableError("registry lookup failed: connection refused")
        return value


def test_resume_markers_held_by_an_attempt_the_runner_drops_go_out_with_the_next() -> None:
    """Record by record after a poison record, then an outage: the runner drops the attempt (discard)
    and makes it again; its resume markers must be in what is finally sent, once."""
    from streamloop.kafka import KafkaSettings, RunnerSettings, StageRunner, StageTopics

    rekey = RekeyStage({FEATURES: Kind.FEATURES}, {FEATURES: FailingAtFirst()}, "t.by-event", 6, "classification",
                       idle_after_ms=1_000)
    rekey.on_assigned([TopicPartitionRef(FEATURES, 0)])
    runner = StageRunner("collector", "g", KafkaSettings(bootstrap_servers="127.0.0.1:1"), StageTopics({}, {}),
                         rekey, RunnerSettings(retry_backoff_s=0.001))
    result = runner._patiently("processing", runner._attempt([vector(0, "a"), vector(1, "boom"), vector(2, "reg")]))
    controls = [control_of(o.headers) for o in result.outputs]
    assert controls[:6] == [RESUME] * 6 and controls.count(RESUME) == 6
    assert [o.key for o in result.outputs[6:]] == ["a", "reg"] and len(result.rejections) == 1
    rekey.delivered()
    assert not any(control_of(o.headers) == RESUME for o in rekey.process([vector(3, "b")]).outputs)


class KeyedTopic(FakeProducer):
    """The keyed topic with ``partitions`` partitions, grown to ``grown`` once produce() has refused ``refusals``
    records pinned past them. librdkafka reports the first such record in its delivery report, before it knows
    the topic's partition count, then raises _UNKNOWN_PARTITION from produce(). What it took is in ``taken``."""

    def __init__(self, partitions: int, grown: int, refusals: int) -> None:
        super().__init__()
        self.partitions, self.grown, self.refusals = partitions, grown, refusals
        self.reported, self.refused = False, 0
        self.taken: list[tuple[bytes | None, int]] = []

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None, partition=-1) -> None:
        error = None
        if partition >= self.partitions:
            if self.reported:
                self.refused += 1
                if self.refused == self.refusals:
                    self.partitions = self.grown  # the operator added them (docs/operations.md)
                raise KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION))
            self.reported, error = True, KafkaError(KafkaError._UNKNOWN_PARTITION)
        else:
            self.taken.append((key, partition))
        self.produced.append((topic, key, value, headers or []))
        on_delivery(error, None)


def test_a_keyed_partition_the_topic_lacks_holds_the_batch_until_it_is_added_and_never_stops_the_stage() -> None:
    """ensure_keyed_partitions grows the keyed topic at start; one that has fewer partitions anyway (grown
    by hand later, or a replica started with another count) has the batch wait and retry, uncommitted.
    produce() raised _UNKNOWN_PARTITION out of the runner on the first retry: the collector stopped."""
    producer = KeyedTopic(partitions=2, grown=6, refusals=3)
    runner = StageRunner("ground-truth-collector", "collector", KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                         StageTopics({FEATURES: RawSerde()}, {"t.by-event": RawSerde()}), stage(),
                         RunnerSettings(retry_backoff_s=0.001))
    runner.delivery.producer, runner.consumer = producer, FakeConsumer()
    runner._assigned.add((FEATURES, 0))
    event_ids = ["evt-1", "evt-6", "evt-2", "evt-8"]  # partitions 3, 0, 5 and 1 of 6
    runner._run_batch([FakeMessage(SERDE.encode({**sample_record(SERDE.schema, offset), "event_id": event_id}),
                                   offset, topic=FEATURES) for offset, event_id in enumerate(event_ids)])

    assert sorted(producer.taken) == sorted((e.encode(), keyed_partition(e, 6)) for e in event_ids), \
        "each in its partition, once"
    assert producer.refused == 3 and runner.stats.delivery_retries >= 2
    assert runner.stats.dead_lettered == 0
    assert [c[0].offset for c in runner.consumer.commits] == [4], "committed once, all acknowledged"
