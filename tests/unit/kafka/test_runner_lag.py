"""The runner's health metrics: records behind, how far behind in time (the StreamloopConsumerLagOld alert),
and an unreachable broker."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
from confluent_kafka import KafkaError, TopicPartition

from streamloop.kafka import KafkaSettings
from streamloop.kafka.records import ConsumedRecord, ProcessResult
from streamloop.kafka.runner import StageRunner, StageTopics
from streamloop.serde.raw import RawSerde
from tests.kafka_fakes import FakeConsumer, FakeMessage, FakeProducer

SOURCE = "in.raw"


class PositionedConsumer(FakeConsumer):
    """A consumer at ``positions`` of partitions whose high watermarks are ``ends``."""

    def __init__(self, positions: dict[int, int], ends: dict[int, int]) -> None:
        super().__init__()
        self.positions, self.ends = positions, ends

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.positions[tp.partition]) for tp in partitions]

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False) -> tuple[int, int]:
        return 0, self.ends[tp.partition]


class LagRecorder:
    def __init__(self) -> None:
        self.reports: list[tuple[dict, dict | None]] = []
        self.unreachable = 0

    def record_batch(self, *_args, **_kwargs) -> None:
        pass

    def record_dead_letters(self, *_args, **_kwargs) -> None:
        pass

    def record_broker_unreachable(self) -> None:
        self.unreachable += 1

    def set_lag(self, _group: str, lags: dict, lag_seconds: dict | None = None) -> None:
        self.reports.append((lags, lag_seconds))


class Accept:
    def process(self, _batch: Sequence[ConsumedRecord]) -> ProcessResult:
        return ProcessResult()


@pytest.fixture
def reported() -> tuple[StageRunner, LagRecorder, PositionedConsumer]:
    metrics = LagRecorder()
    stage = StageRunner("lag", "lag-group", KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                        StageTopics({SOURCE: RawSerde()}, {}), Accept(), metrics=metrics)
    consumer = PositionedConsumer(positions={0: 5, 1: 3, 2: 0}, ends={0: 10, 1: 3, 2: 4})
    stage.producer, stage.consumer = FakeProducer(), consumer
    stage._on_assign(consumer, [TopicPartition(SOURCE, p) for p in (0, 1, 2)])
    now_ms = int(time.time() * 1000)
    # Partition 0 consumed up to a record two minutes old, five more wait; partition 1 caught up.
    stage._run_batch([FakeMessage(b"x", offset, topic=SOURCE, partition=0, timestamp_ms=now_ms - 180_000 + offset)
                      for offset in range(4)]
                     + [FakeMessage(b"x", 4, topic=SOURCE, partition=0, timestamp_ms=now_ms - 120_000),
                        FakeMessage(b"x", 2, topic=SOURCE, partition=1, timestamp_ms=now_ms - 60_000)])
    return stage, metrics, consumer


def test_a_partition_behind_reports_the_age_of_its_last_consumed_record(reported) -> None:
    stage, metrics, _consumer = reported
    stage._report_lag()
    lags, seconds = metrics.reports[-1]
    assert lags == {(SOURCE, 0): 5, (SOURCE, 1): 0, (SOURCE, 2): 4}
    assert seconds is not None and set(seconds) == {(SOURCE, 0), (SOURCE, 1)}, "partition 2: nothing consumed yet"
    assert 120 <= seconds[(SOURCE, 0)] < 125
    assert seconds[(SOURCE, 1)] == 0.0, "caught up: no time lag, however old its last record"


def test_a_stalled_partition_s_time_lag_grows_and_a_revoked_one_is_forgotten(reported, monkeypatch) -> None:
    stage, metrics, consumer = reported
    later = time.time() + 600
    monkeypatch.setattr(time, "time", lambda: later)
    stage._report_lag()
    assert 720 <= metrics.reports[-1][1][(SOURCE, 0)] < 725, "ten minutes on, nothing consumed: ten minutes older"
    stage._on_revoke(consumer, [TopicPartition(SOURCE, 0)])
    stage._on_assign(consumer, [TopicPartition(SOURCE, 0)])
    stage._report_lag()
    assert (SOURCE, 0) not in metrics.reports[-1][1], "a partition handed back is not judged by an old record"


def test_every_unreachable_broker_report_is_counted_though_the_log_is_rate_limited(reported, caplog) -> None:
    stage, metrics, _consumer = reported
    for code in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE):
        stage._on_client_error(KafkaError(code))
    stage._on_client_error(KafkaError(KafkaError._MSG_TIMED_OUT))  # not about reaching the broker
    assert metrics.unreachable == 3
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1
