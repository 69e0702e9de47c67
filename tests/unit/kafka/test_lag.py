"""Consumer lag per group and partition, as `streamloop lag` and the dashboard show it."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

from confluent_kafka import TopicPartition

from streamloop.kafka import KafkaSettings, lag
from streamloop.kafka.lag import PartitionLag, group_lag


def test_a_committed_partition_lags_by_the_records_after_its_commit():
    assert PartitionLag("g", "t", 0, committed=7, end_offset=10, start_offset=5).lag == 3


def test_a_partition_without_a_commit_lags_by_the_records_retention_kept():
    """Seven days of retention deleted 990 records: the group (auto.offset.reset earliest) reads 10."""
    assert PartitionLag("g", "t", 0, committed=None, end_offset=1000, start_offset=990).lag == 10
    assert PartitionLag("g", "t", 0, committed=None, end_offset=1000, start_offset=-1).lag == 1000, "start unknown"


def test_a_commit_retention_has_passed_lags_by_the_records_kept_not_the_deleted_ones():
    assert PartitionLag("g", "t", 0, committed=100, end_offset=1000, start_offset=990).lag == 10


class _Admin:
    """A group that committed on partition 0 of a two-partition topic, not yet on partition 1."""

    def list_consumer_group_offsets(self, requests, request_timeout):
        done: Future = Future()
        done.set_result(SimpleNamespace(topic_partitions=[TopicPartition("t", 0, 95)]))
        return {requests[0].group_id: done}


class _Probe:
    WATERMARKS = {0: (90, 100), 1: (990, 1000)}

    def __init__(self, _config) -> None:
        pass

    def list_topics(self, topic, timeout):
        return SimpleNamespace(topics={topic: SimpleNamespace(partitions={0: None, 1: None})})

    def get_watermark_offsets(self, tp, timeout):
        return self.WATERMARKS[tp.partition]

    def close(self) -> None:
        pass


def test_group_lag_reads_the_start_of_partitions_the_group_has_not_committed_on(monkeypatch):
    monkeypatch.setattr(lag, "Consumer", _Probe)
    rows = group_lag(KafkaSettings(bootstrap_servers="127.0.0.1:1"), _Admin(), groups=["g"])
    assert [(r.partition, r.committed, r.lag) for r in rows] == [(0, 95, 5), (1, None, 10)]
