"""Consumer lag per group and partition, as `streamloop lag` and the dashboard show it."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

from confluent_kafka import KafkaError, KafkaException, TopicPartition

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


def _done(result) -> Future:
    done: Future = Future()
    if isinstance(result, BaseException):
        done.set_exception(result)
    else:
        done.set_result(result)
    return done


class _Admin:
    """Groups with their commits and their members' assignments, as the broker describes them.

    By default a group that committed on partition 0 of a two-partition topic, not yet on partition 1.
    """

    def __init__(self, commits=None, assignments=None) -> None:
        self.commits = commits if commits is not None else {"g": [TopicPartition("t", 0, 95)]}
        self.assignments = assignments if assignments is not None else {}

    def list_consumer_group_offsets(self, requests, request_timeout):
        group = requests[0].group_id
        return {group: _done(SimpleNamespace(topic_partitions=self.commits.get(group, [])))}

    def describe_consumer_groups(self, groups, request_timeout):
        def description(group):
            assigned = self.assignments.get(group, [])
            if isinstance(assigned, BaseException):
                return assigned
            members = [SimpleNamespace(assignment=SimpleNamespace(topic_partitions=[TopicPartition("t", p)]))
                       for p in assigned]
            return SimpleNamespace(group_id=group, members=members)
        return {group: _done(description(group)) for group in groups}


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


KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:1")


def test_group_lag_reads_the_start_of_partitions_the_group_has_not_committed_on(monkeypatch):
    monkeypatch.setattr(lag, "Consumer", _Probe)
    rows = group_lag(KAFKA, _Admin(), groups=["g"])
    assert [(r.partition, r.committed, r.lag) for r in rows] == [(0, 95, 5), (1, None, 10)]


def test_a_group_assigned_partitions_it_has_not_committed_on_lags_by_their_records(monkeypatch):
    """Its first batch not committed yet (or stuck): each partition lags by all it holds, not by nothing."""
    monkeypatch.setattr(lag, "Consumer", _Probe)
    admin = _Admin(commits={"g": [TopicPartition("t", 0, 95)]}, assignments={"g": [], "first-batch": [0, 1]})
    rows = group_lag(KAFKA, admin, groups=["first-batch", "g"])
    assert [(r.group, r.partition, r.committed, r.lag) for r in rows] == [
        ("first-batch", 0, None, 10), ("first-batch", 1, None, 10), ("g", 0, 95, 5), ("g", 1, None, 10)]


def test_a_group_assigned_one_partition_lags_on_every_partition_of_its_topic(monkeypatch):
    """The other partition's member may not have joined yet: its records are still to be read."""
    monkeypatch.setattr(lag, "Consumer", _Probe)
    rows = group_lag(KAFKA, _Admin(commits={}, assignments={"g": [1]}), groups=["g"])
    assert [(r.partition, r.committed, r.lag) for r in rows] == [(0, None, 10), (1, None, 10)]


def test_a_group_the_broker_cannot_describe_lags_on_the_topics_it_committed_on(monkeypatch):
    monkeypatch.setattr(lag, "Consumer", _Probe)
    refused = KafkaException(KafkaError(KafkaError.UNSUPPORTED_VERSION, "DescribeGroups"))
    admin = _Admin(commits={"g": [TopicPartition("t", 0, 95)], "new": []}, assignments={"g": refused, "new": refused})
    rows = group_lag(KAFKA, admin, groups=["g", "new"])
    assert [(r.group, r.partition, r.committed, r.lag) for r in rows] == [("g", 0, 95, 5), ("g", 1, None, 10)]
