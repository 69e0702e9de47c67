"""The featurizer's state replay, without a broker: what a dependency's outage or a stall turns into."""

from __future__ import annotations

import json
import logging
import math

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from services.featurizer.exceptions import RestoreError
from services.featurizer.history import KafkaPartitionHistory
from streamloop.kafka import KafkaSettings
from streamloop.kafka.records import TopicPartitionRef
from streamloop.serde import RegistryUnavailableError
from tests.kafka_fakes import FakeMessage
from tests.unit.featurizer.support import TOPIC, event, make_spec, processor, records, vectors


class RegistryDown:
    def decode(self, _data: bytes) -> dict:
        raise RegistryUnavailableError("registry lookup failed: connection refused")


def test_a_schema_registry_outage_during_the_replay_is_a_restore_error_not_a_traceback(monkeypatch) -> None:
    history = KafkaPartitionHistory(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "g", {"in": RegistryDown()})
    monkeypatch.setattr(history, "_ranges", lambda *_args: {("in", 0): (0, 1)})
    monkeypatch.setattr(history, "_messages", lambda *_args: iter([FakeMessage(b"x", 0, topic="in")]))
    with pytest.raises(RestoreError, match="registry lookup failed"):
        list(history.replay({TopicPartitionRef("in", 0): 1}, lookback_ms=60_000))


# -- how long a replay may take ---------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class LogConsumer:
    """confluent-kafka's Consumer over in-memory partitions of ``events``; each call takes fake time.

    ``consume`` hands out ``per_consume`` messages per partition in ``consume_s``. A partition read up
    to ``stall_at`` gets nothing more (``redeliver``: its previous message again, as after an offset
    reset). During ``outage`` (fake seconds) nothing answers: reads return nothing, lookups time out.
    """

    def __init__(self, clock: FakeClock, partitions: dict[int, list[dict]], *, per_consume: int = 1,
                 consume_s: float = 1.0, stall_at: int | None = None, redeliver: bool = False,
                 outage: tuple[float, float] = (math.inf, math.inf)) -> None:
        self.clock = clock
        self.log = {p: [FakeMessage(json.dumps(e).encode(), i, key=e["entity"].encode(), topic=TOPIC, partition=p,
                                    timestamp_ms=e["ts"]) for i, e in enumerate(events)]
                    for p, events in partitions.items()}
        self.per_consume, self.consume_s = per_consume, consume_s
        self.stall_at, self.redeliver, self.outage = stall_at, redeliver, outage
        self.positions: dict[int, int] = {}
        self.paused: set[int] = set()

    def _down(self) -> bool:
        return self.outage[0] <= self.clock.now < self.outage[1]

    def committed(self, partitions, timeout=None):  # noqa: ANN001, ANN201
        return [TopicPartition(tp.topic, tp.partition, len(self.log[tp.partition])) for tp in partitions]

    def get_watermark_offsets(self, partition, timeout=None):  # noqa: ANN001, ANN201
        if self._down():
            self.clock.now += timeout
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "no broker answered"))
        return 0, len(self.log[partition.partition])

    def offsets_for_times(self, partitions, timeout=None):  # noqa: ANN001, ANN201
        return [TopicPartition(tp.topic, tp.partition,
                               next((m.offset() for m in self.log[tp.partition] if m.timestamp()[1] >= tp.offset), -1))
                for tp in partitions]

    def assign(self, partitions) -> None:  # noqa: ANN001
        self.positions = {tp.partition: tp.offset for tp in partitions}

    def pause(self, partitions) -> None:  # noqa: ANN001
        self.paused |= {tp.partition for tp in partitions}

    def resume(self, partitions) -> None:  # noqa: ANN001
        self.paused -= {tp.partition for tp in partitions}

    def unassign(self) -> None:
        self.positions = {}

    def position(self, partitions):  # noqa: ANN001, ANN201
        return [TopicPartition(tp.topic, tp.partition, self.positions[tp.partition]) for tp in partitions]

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        if self._down():
            self.clock.now += timeout
            return []
        batch = []
        for p, position in self.positions.items():
            if p in self.paused:
                continue
            if position == self.stall_at:
                batch += [self.log[p][position - 1]] if self.redeliver else []
                continue
            taken = self.log[p][position:position + self.per_consume]
            batch += taken
            self.positions[p] = position + len(taken)
        self.clock.now += self.consume_s if batch else timeout
        return batch

    def close(self) -> None:
        pass


class JsonSerde:
    def decode(self, data: bytes) -> dict:
        return json.loads(data)


COUNT_1M = {"aggregations": [{"name": "count", "field": "x", "agg": "count",
                              "window": {"kind": "sliding", "size": 60_000}}], "allowed_lateness": "10s"}


def replaying(monkeypatch, consumer: LogConsumer, timeout_s: float) -> KafkaPartitionHistory:  # noqa: ANN001
    monkeypatch.setattr("services.featurizer.history.Consumer", lambda _config: consumer)
    return KafkaPartitionHistory(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "g", {TOPIC: JsonSerde()},
                                 timeout_s=timeout_s, monotonic=consumer.clock)


def entity_events(entity: str, count: int) -> list[dict]:
    return [event(i, entity, 500 * i) for i in range(count)]


def test_a_rebuild_taking_many_timeouts_in_total_completes_while_records_keep_coming(monkeypatch, caplog) -> None:
    clock = FakeClock()
    consumer = LogConsumer(clock, {0: entity_events("a", 80), 1: entity_events("b", 80)}, consume_s=1.0)
    history = replaying(monkeypatch, consumer, timeout_s=5.0)
    proc = processor(make_spec(COUNT_1M), history=history)

    with caplog.at_level(logging.INFO, logger="services.featurizer.history"):
        proc.on_assigned([TopicPartitionRef(TOPIC, 0), TopicPartitionRef(TOPIC, 1)])

    assert clock.now > 16 * 5.0, "the rebuild took longer than the timeout in total"
    for partition, entity in ((0, "a"), (1, "b")):
        (vector,) = vectors(proc.process(records([event(80, entity, 40_000)], partition=partition,
                                                 first_offset=80))).values()
        assert vector["numeric"]["count"] == 81.0, f"{entity}: all 80 earlier events were rebuilt"
    assert "replay progress: events[0] at 60 of 80, events[1] at 60 of 80" in caplog.messages, \
        "a long rebuild reports how far it got every minute"


@pytest.mark.parametrize("redeliver", [False, True], ids=["nothing-arrives", "the-same-record-again"])
def test_a_replay_that_stops_progressing_fails_naming_the_setting(monkeypatch, redeliver: bool) -> None:
    clock = FakeClock()
    consumer = LogConsumer(clock, {0: entity_events("a", 30)}, per_consume=4, stall_at=12, redeliver=redeliver)
    history = replaying(monkeypatch, consumer, timeout_s=5.0)
    read: list[int] = []
    last_progress = 0.0

    with pytest.raises(RestoreError, match=r"no progress for 5s \(FEATURIZER_RESTORE_TIMEOUT_S\): events\[0\] at 12 "
                                           r"of 30"):
        for record in history.replay({TopicPartitionRef(TOPIC, 0): 30}, lookback_ms=10**12):
            if record.offset not in read:
                read.append(record.offset)
                last_progress = clock.now
    assert read == list(range(12))
    assert 5.0 < clock.now - last_progress <= 5.0 + 1.0, "it gave up one timeout after the last new record"


def test_a_broker_silent_for_less_than_the_timeout_does_not_fail_the_rebuild(monkeypatch) -> None:
    clock = FakeClock()
    # Silent from the second read of the records on, through the lookup that finds nothing came.
    consumer = LogConsumer(clock, {0: entity_events("a", 30)}, per_consume=4, outage=(2.5, 6.0))
    history = replaying(monkeypatch, consumer, timeout_s=10.0)

    read = [r.offset for r in history.replay({TopicPartitionRef(TOPIC, 0): 30}, lookback_ms=10**12)]

    assert read == list(range(30))


def test_a_broker_silent_for_longer_than_the_timeout_fails_the_rebuild_naming_the_setting(monkeypatch) -> None:
    clock = FakeClock()
    consumer = LogConsumer(clock, {0: entity_events("a", 30)}, per_consume=4, outage=(2.5, math.inf))
    history = replaying(monkeypatch, consumer, timeout_s=10.0)

    with pytest.raises(RestoreError, match="FEATURIZER_RESTORE_TIMEOUT_S"):
        list(history.replay({TopicPartitionRef(TOPIC, 0): 30}, lookback_ms=10**12))
