"""Reading a rebuild's window from Kafka, against a fake consumer: a read cut short fails, it is not trained on."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError

from services.retrainer import window as window_module
from services.retrainer.rebuild_policy import REBUILD_RETRY_MS
from services.retrainer.window import KafkaWindowReader, WindowReadIncomplete
from streamloop.errors import DependencyUnavailable
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.records import ConsumedRecord
from tests.unit.model_publisher.factories import T0, consumed, drift_event
from tests.unit.retrainer.test_failures import rebuild_only
from tests.unit.retrainer.test_resume import Counters
from tests.unit.retrainer.test_retrainer import Harness, candidates, labeled

TOPIC = "lab"


class FakeMessage:
    def __init__(self, partition: int, offset: int, value: dict | None = None, error: KafkaError | None = None):
        self._partition, self._offset, self._value, self._error = partition, offset, value, error

    def error(self) -> KafkaError | None:
        return self._error

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"card"

    def value(self) -> bytes:
        return json.dumps(self._value).encode()

    def timestamp(self) -> tuple[int, int]:
        return 1, T0


class FakeConsumer:
    """A topic whose partition ``p`` holds ``logs[p]``; a partition in ``stalled`` delivers nothing
    past its first record, as from a broker too slow to serve the rest within the read's timeout."""

    def __init__(self, logs: dict[int, list[dict]], stalled: set[int] = frozenset()) -> None:
        self.logs = logs
        self.stalled = set(stalled)
        self.positions: dict[int, int] = {}
        self.closed = False

    def list_topics(self, topic: str, timeout: float) -> SimpleNamespace:
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions=dict.fromkeys(self.logs))})

    def get_watermark_offsets(self, tp, timeout: float) -> tuple[int, int]:
        return 0, len(self.logs[tp.partition])

    def assign(self, partitions) -> None:
        self.positions = {tp.partition: tp.offset for tp in partitions}

    def consume(self, count: int, timeout: float) -> list[FakeMessage]:
        messages = []
        for partition, position in self.positions.items():
            log = self.logs[partition]
            if partition in self.stalled and position > 0:
                continue
            if position >= len(log):
                messages.append(FakeMessage(partition, position, error=KafkaError(KafkaError._PARTITION_EOF)))
                continue
            messages.append(FakeMessage(partition, position, log[position]))
            self.positions[partition] = position + 1
        if not messages:
            time.sleep(0.01)  # a real consume() waits out its timeout when there is nothing to deliver
        return messages[:count]

    def close(self) -> None:
        self.closed = True


def logs_of(records: list[ConsumedRecord]) -> dict[int, list[dict]]:
    logs: dict[int, list[dict]] = {}
    for record in records:
        logs.setdefault(record.partition, []).append(record.value)
    return logs


@pytest.fixture
def broker(monkeypatch):
    """The consumer every window read gets; set ``broker.consumer`` before reading."""
    state = SimpleNamespace(consumer=None)
    monkeypatch.setattr(window_module, "Consumer", lambda _config: state.consumer)
    return state


def reader(timeout_s: float = 0.3) -> KafkaWindowReader:
    return KafkaWindowReader(KafkaSettings(bootstrap_servers="unused:9092"), TOPIC,
                             SimpleNamespace(decode=json.loads), timeout_s=timeout_s)


def test_the_window_is_the_last_records_of_every_partition(broker):
    broker.consumer = FakeConsumer(logs_of(labeled(40, partitions=2)))
    records = reader()(5)
    assert sorted((r.partition, r.offset) for r in records) == [(p, o) for p in (0, 1) for o in range(15, 20)]
    assert broker.consumer.closed


def test_a_partition_not_read_to_its_end_fails_the_read_instead_of_returning_the_older_records(broker):
    """Each partition is read oldest first: what the deadline cuts off is the newest examples."""
    broker.consumer = FakeConsumer(logs_of(labeled(40, partitions=2)), stalled={1})
    with pytest.raises(WindowReadIncomplete, match=r"partitions \[1\] not read to their end within 0.3s"):
        reader(timeout_s=0.3)(20)
    assert issubclass(WindowReadIncomplete, DependencyUnavailable)
    assert broker.consumer.closed


def test_a_rebuild_whose_window_was_cut_short_is_tried_again(broker, demo_pipeline, tmp_path):
    """It used to train on the records read by then: a drift rebuild on the concept that stopped holding,
    or, with none read, a rebuild skipped for too few examples and never tried again."""
    harness = Harness(rebuild_only(demo_pipeline), tmp_path)
    harness.processor._metrics = Counters()
    harness.processor.rebuilds.window = reader(timeout_s=0.2)
    fresh = labeled(300, start=1, partitions=2)
    broker.consumer = FakeConsumer(logs_of(fresh), stalled={0, 1})
    harness.processor.process([consumed("drift", drift_event(), 0)])
    assert [c for c in candidates(harness.processor.process(fresh)) if c["trigger"] == "DRIFT"] == []
    counts = harness.processor._metrics.counts
    assert counts[("streamloop_retrainer_rebuild_retries", (("pipeline", "card-fraud"),))] == 1
    assert ("streamloop_retrainer_rebuilds_skipped", (("pipeline", "card-fraud"), ("reason", "too_few_examples"))) \
        not in counts
    broker.consumer = FakeConsumer(logs_of(fresh))  # the broker answers again
    harness.now += REBUILD_RETRY_MS
    built = candidates(harness.processor.tick(harness.now))
    assert [c["trigger"] for c in built] == ["DRIFT"]
    assert built[0]["source_offsets"] == [{"topic": TOPIC, "partition": 0, "start": 0, "end": 150},
                                          {"topic": TOPIC, "partition": 1, "start": 0, "end": 150}]
