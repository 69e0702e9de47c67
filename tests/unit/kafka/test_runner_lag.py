"""The runner's health metrics: records behind, how far behind in time (the StreamloopConsumerLagOld alert),
and an unreachable broker."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
from confluent_kafka import OFFSET_INVALID, KafkaError, TopicPartition

from streamloop.kafka import KafkaSettings
from streamloop.kafka.records import ConsumedRecord, ProcessResult
from streamloop.kafka.runner import StageRunner
from streamloop.kafka.runner_settings import StageTopics
from streamloop.serde.raw import RawSerde
from tests.kafka_fakes import FakeConsumer, FakeMessage, FakeProducer

SOURCE = "in.raw"


class PositionedConsumer(FakeConsumer):
    """A consumer at ``positions`` of partitions whose high watermarks are ``ends`` (low: ``starts``, else 0)."""

    def __init__(self, positions: dict[int, int], ends: dict[int, int], starts: dict[int, int] | None = None) -> None:
        super().__init__()
        self.positions, self.ends, self.starts = positions, ends, starts or {}

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.positions[tp.partition]) for tp in partitions]

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False) -> tuple[int, int]:
        return self.starts.get(tp.partition, 0), self.ends[tp.partition]


class LagRecorder:
    """The lag the runner reports, and the ages a scrape at ``now`` would read from it."""

    def __init__(self) -> None:
        self.lags: dict = {}
        self.behind_since: dict | None = None
        self.unreachable = 0
        self.forgotten = False

    def record_batch(self, *_args, **_kwargs) -> None:
        pass

    def record_dead_letters(self, *_args, **_kwargs) -> None:
        pass

    def record_broker_unreachable(self) -> None:
        self.unreachable += 1

    def set_lag(self, _group: str, lags: dict, behind_since: dict | None = None) -> None:
        self.lags, self.behind_since = lags, behind_since

    def forget_lag(self, _group: str) -> None:
        self.lags, self.behind_since = {}, None
        self.forgotten = True

    def ages(self, now: float) -> dict:
        return {key: (now - self.behind_since[key]) if lag else 0.0 for key, lag in self.lags.items()}


class Accept:
    def process(self, _batch: Sequence[ConsumedRecord]) -> ProcessResult:
        return ProcessResult()


@pytest.fixture
def reported(monkeypatch: pytest.MonkeyPatch) -> tuple[StageRunner, LagRecorder, PositionedConsumer]:
    """The runner with its lag found; the clock (time.time, which the runner and the ages read) is
    frozen at a whole second, so that each age is exact however slowly the test runs."""
    now = float(int(time.time()))
    monkeypatch.setattr(time, "time", lambda: now)
    metrics = LagRecorder()
    stage = StageRunner("lag", "lag-group", KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                        StageTopics({SOURCE: RawSerde()}, {}), Accept(), metrics=metrics)
    consumer = PositionedConsumer(positions={0: 5, 1: 3, 2: 0}, ends={0: 10, 1: 3, 2: 4})
    stage.delivery.producer, stage.consumer = FakeProducer(), consumer
    stage._on_assign(consumer, [TopicPartition(SOURCE, p) for p in (0, 1, 2)])
    now_ms = int(time.time() * 1000)
    # Partition 0 consumed up to a record two minutes old, five more wait; partition 1 caught up;
    # nothing of partition 2 consumed yet.
    stage._run_batch([FakeMessage(b"x", offset, topic=SOURCE, partition=0, timestamp_ms=now_ms - 180_000 + offset)
                      for offset in range(4)]
                     + [FakeMessage(b"x", 4, topic=SOURCE, partition=0, timestamp_ms=now_ms - 120_000),
                        FakeMessage(b"x", 2, topic=SOURCE, partition=1, timestamp_ms=now_ms - 60_000)])
    return stage, metrics, consumer


def test_a_partition_behind_is_as_old_as_its_last_consumed_record(reported) -> None:
    stage, metrics, _consumer = reported
    stage._report_lag()
    assert metrics.lags == {(SOURCE, 0): 5, (SOURCE, 1): 0, (SOURCE, 2): 4}
    ages = metrics.ages(time.time() + 7)  # scraped 7 s after the report
    assert ages[(SOURCE, 0)] == 127.0
    assert ages[(SOURCE, 1)] == 0.0, "caught up: no time lag, however old its last record"
    assert ages[(SOURCE, 2)] == 7.0, "nothing consumed yet: behind since its assignment, at least"


def test_an_unknown_position_lags_by_the_records_retention_kept(reported) -> None:
    """Before its first fetch the position is unknown; the group reads from the start (auto.offset.reset earliest)."""
    stage, metrics, consumer = reported
    consumer.positions[2] = OFFSET_INVALID
    consumer.ends[2], consumer.starts[2] = 1000, 990
    stage._report_lag()
    assert metrics.lags[(SOURCE, 2)] == 10


def test_the_age_grows_at_each_scrape_while_the_runner_cannot_report(reported) -> None:
    """A runner stuck retrying a delivery reports nothing; the age is computed when scraped."""
    stage, metrics, _consumer = reported
    stage._report_lag()
    assert metrics.ages(time.time() + 600)[(SOURCE, 0)] == 720.0


def test_a_sparse_partition_is_no_further_behind_than_when_it_was_last_caught_up(reported, monkeypatch) -> None:
    """On a quiet partition the last record may be days old; the new one waited only since the last report."""
    stage, metrics, consumer = reported
    stage._report_lag()  # partition 1 caught up now, its last record a minute old
    consumer.ends[1] = 4  # a record arrives
    later = time.time() + 5
    monkeypatch.setattr(time, "time", lambda: later)
    stage._report_lag()
    assert metrics.lags[(SOURCE, 1)] == 1
    assert metrics.ages(later)[(SOURCE, 1)] == 5.0


def test_a_revoked_partition_is_forgotten_and_a_replica_without_partitions_exports_none(reported) -> None:
    stage, metrics, consumer = reported
    stage._on_revoke(consumer, [TopicPartition(SOURCE, 0)])
    stage._on_assign(consumer, [TopicPartition(SOURCE, 0)])
    stage._report_lag()
    assert metrics.ages(time.time() + 7)[(SOURCE, 0)] == 7.0, "handed back: not judged by a record consumed before"
    stage._on_revoke(consumer, [TopicPartition(SOURCE, p) for p in (0, 1, 2)])
    stage._report_lag()
    assert (metrics.lags, metrics.behind_since) == ({}, {})


def test_a_stopped_runner_stops_exporting_its_lag(reported) -> None:
    stage, metrics, _consumer = reported
    stage._report_lag()
    assert metrics.lags
    stage._shutdown()  # a replica that lost its lease serves metrics on: no stale lag, no growing report age
    assert metrics.forgotten and metrics.lags == {}


def test_every_unreachable_broker_report_is_counted_though_the_log_is_rate_limited(reported, caplog) -> None:
    stage, metrics, _consumer = reported
    for code in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE):
        stage.delivery._producer_config["error_cb"](KafkaError(code))
    stage._on_consumer_client_error(KafkaError(KafkaError._MSG_TIMED_OUT))  # not about reaching the broker
    assert metrics.unreachable == 3
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1
