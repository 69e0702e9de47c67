"""Consumer lag per group and partition, as `streamloop lag` and the dashboard show it."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import OffsetSpec

from streamloop.kafka import KafkaSettings, lag
from streamloop.kafka.lag import PartitionLag, group_lag
from streamloop.kafka.lease import LeaderLease, lease_group


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


WATERMARKS = {("t", 0): (90, 100), ("t", 1): (990, 1000)}
REFUSED = KafkaException(KafkaError(KafkaError.UNSUPPORTED_VERSION, "not supported by the broker"))


class _Admin:
    """Groups (those with commits or assignments) with their commits and their members' assignments,
    as the broker describes them, and topic ``t``'s two partitions with their offsets.

    By default a group that committed on partition 0 of a two-partition topic, not yet on partition 1.
    ``offsets_refused`` fails the ListOffsets call, ``unanswered`` the answer for those partitions.
    """

    def __init__(self, commits=None, assignments=None, offsets_refused=False, unanswered=()) -> None:
        self.commits = commits if commits is not None else {"g": [TopicPartition("t", 0, 95)]}
        self.assignments = assignments if assignments is not None else {}
        self.offsets_refused, self.unanswered = offsets_refused, set(unanswered)
        self.offsets_asked: list[list[tuple[str, int]]] = []
        self.metadata_asked = 0

    def list_consumer_groups(self, request_timeout):
        return _done(SimpleNamespace(valid=[SimpleNamespace(group_id=g) for g in {*self.commits, *self.assignments}]))

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

    def list_topics(self, timeout):
        self.metadata_asked += 1
        return SimpleNamespace(topics={"t": SimpleNamespace(partitions={0: None, 1: None})})

    def list_offsets(self, specs, isolation_level, request_timeout):
        if self.offsets_refused:
            raise REFUSED
        self.offsets_asked.append(sorted((tp.topic, tp.partition) for tp in specs))
        side = 0 if next(iter(specs.values())) is OffsetSpec.earliest() else 1
        return {tp: _done(REFUSED if (tp.topic, tp.partition) in self.unanswered
                          else SimpleNamespace(offset=WATERMARKS[(tp.topic, tp.partition)][side]))
                for tp in specs}


class _Probe:
    """The consumer lag falls back on: records what it was asked, and whether it was closed; fails on
    the partitions in ``failing``."""

    def __init__(self, _config=None, failing=()) -> None:
        self.asked: list[tuple[str, int]] = []
        self.closed = False
        self.failing = set(failing)

    def get_watermark_offsets(self, tp, timeout):
        self.asked.append((tp.topic, tp.partition))
        if (tp.topic, tp.partition) in self.failing:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "leader not available"))
        return WATERMARKS[(tp.topic, tp.partition)]

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def probes(monkeypatch) -> list[_Probe]:
    """The consumers lag makes for itself."""
    made: list[_Probe] = []

    def make(config) -> _Probe:
        made.append(_Probe(config))
        return made[-1]

    monkeypatch.setattr(lag, "Consumer", make)
    return made


KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:1")


def test_group_lag_reads_the_start_of_partitions_the_group_has_not_committed_on(probes):
    rows = group_lag(KAFKA, _Admin(), groups=["g"])
    assert [(r.partition, r.committed, r.lag) for r in rows] == [(0, 95, 5), (1, None, 10)]


def test_a_group_assigned_partitions_it_has_not_committed_on_lags_by_their_records(probes):
    """Its first batch not committed yet (or stuck): each partition lags by all it holds, not by nothing."""
    admin = _Admin(commits={"g": [TopicPartition("t", 0, 95)]}, assignments={"g": [], "first-batch": [0, 1]})
    rows = group_lag(KAFKA, admin, groups=["first-batch", "g"])
    assert [(r.group, r.partition, r.committed, r.lag) for r in rows] == [
        ("first-batch", 0, None, 10), ("first-batch", 1, None, 10), ("g", 0, 95, 5), ("g", 1, None, 10)]


def test_a_group_assigned_one_partition_lags_on_every_partition_of_its_topic(probes):
    """The other partition's member may not have joined yet: its records are still to be read."""
    rows = group_lag(KAFKA, _Admin(commits={}, assignments={"g": [1]}), groups=["g"])
    assert [(r.partition, r.committed, r.lag) for r in rows] == [(0, None, 10), (1, None, 10)]


def test_a_lease_group_reads_nothing_and_is_left_out_even_when_named(probes):
    """The drift detector's lease member is assigned drift_events[0], paused, and never commits: shown,
    it lagged by every record of the topic, growing for ever, in streamloop lag, top and the dashboard."""
    service, lease = "p.streamloop.demo.drift-detector", lease_group("p.streamloop.demo.drift-detector")
    admin = _Admin(commits={service: [TopicPartition("t", 0, 100), TopicPartition("t", 1, 1000)]},
                   assignments={lease: [0], service: [0, 1]})
    for groups in (None, [service, lease]):
        rows = group_lag(KAFKA, admin, groups=groups)
        assert [(r.group, r.partition, r.lag) for r in rows] == [(service, 0, 0), (service, 1, 0)], groups
    assert group_lag(KAFKA, admin, groups=[lease]) == []


def test_another_application_s_group_that_ends_as_a_lease_does_is_shown(probes):
    """Only a streamloop service's lease is left out: billing.lease is some other reader's group."""
    admin = _Admin(commits={"billing.lease": [TopicPartition("t", 0, 4)]}, assignments={"billing.lease": [0]})
    for groups in (None, ["billing.lease"]):
        assert [(r.group, r.partition) for r in group_lag(KAFKA, admin, groups=groups)] == [
            ("billing.lease", 0), ("billing.lease", 1)], groups


def test_a_lease_is_refused_a_group_id_lag_would_not_know_as_a_lease():
    with pytest.raises(ValueError, match="ends with '.lease'"):
        LeaderLease(KAFKA, "p.streamloop.demo.drift-detector-lease", "t")
    assert LeaderLease(KAFKA, lease_group("g"), "t").group_id == "g.lease"


def test_a_group_the_broker_cannot_describe_lags_on_the_topics_it_committed_on(probes):
    admin = _Admin(commits={"g": [TopicPartition("t", 0, 95)], "new": []}, assignments={"g": REFUSED, "new": REFUSED})
    rows = group_lag(KAFKA, admin, groups=["g", "new"])
    assert [(r.group, r.partition, r.committed, r.lag) for r in rows] == [("g", 0, 95, 5), ("g", 1, None, 10)]


def test_each_partitions_offsets_are_asked_once_per_round_whatever_the_groups_reading_it(probes):
    """Three groups on one topic: one metadata request, one earliest and one latest ListOffsets over its
    two partitions, and no consumer made; not a lookup per group and partition."""
    admin = _Admin(commits={g: [TopicPartition("t", 0, 95)] for g in ("a", "b", "c")})
    rows = group_lag(KAFKA, admin, groups=["a", "b", "c"])
    assert [(r.group, r.partition, r.lag) for r in rows] == [
        (g, p, lag) for g in ("a", "b", "c") for p, lag in ((0, 5), (1, 10))]
    assert admin.offsets_asked == [[("t", 0), ("t", 1)]] * 2
    assert admin.metadata_asked == 1
    assert probes == []


def test_a_broker_without_list_offsets_is_asked_per_partition_by_one_consumer(probes):
    rows = group_lag(KAFKA, _Admin(offsets_refused=True, commits={"a": [TopicPartition("t", 0, 95)],
                                                                  "b": [TopicPartition("t", 1, 995)]}),
                     groups=["a", "b"])
    assert [(r.group, r.partition, r.lag) for r in rows] == [("a", 0, 5), ("a", 1, 10), ("b", 0, 10), ("b", 1, 5)]
    assert [(p.asked, p.closed) for p in probes] == [([("t", 0), ("t", 1)], True)]


def test_only_the_partitions_list_offsets_did_not_answer_for_are_asked_again(probes):
    rows = group_lag(KAFKA, _Admin(unanswered={("t", 1)}), groups=["g"])
    assert [(r.partition, r.lag) for r in rows] == [(0, 5), (1, 10)]
    assert [(p.asked, p.closed) for p in probes] == [([("t", 1)], True)]


def test_a_callers_consumer_is_the_fallback_and_stays_open_for_its_next_round(probes):
    mine = _Probe()
    for _ in range(2):
        group_lag(KAFKA, _Admin(offsets_refused=True), groups=["g"], probe=mine)
    assert (mine.asked, mine.closed, probes) == ([("t", 0), ("t", 1)] * 2, False, [])


def test_a_partition_whose_offsets_cannot_be_read_at_all_is_left_out_not_the_whole_round(probes, caplog):
    """ListOffsets did not answer for t[1] and its fallback failed too: the KafkaException failed the
    round for every group and partition. t[1] is left out, said once, not at every round."""
    admin = _Admin(commits={g: [TopicPartition("t", 0, 95)] for g in ("a", "b")}, unanswered={("t", 1)})
    mine = _Probe(failing={("t", 1)})
    caplog.set_level("INFO", logger=lag.__name__)
    for _ in range(2):
        rows = group_lag(KAFKA, admin, groups=["a", "b"], probe=mine)
        assert [(r.group, r.partition, r.lag) for r in rows] == [("a", 0, 5), ("b", 0, 5)]

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == lag.__name__]

    assert said() == [
        "lag: cannot read the offsets of t[1], left out of the lag until they are read: "
        "KafkaError{code=_TIMED_OUT,val=-185,str=\"leader not available\"}"]
    mine.failing.clear()
    rows = group_lag(KAFKA, admin, groups=["a"], probe=mine)
    assert [(r.partition, r.lag) for r in rows] == [(0, 5), (1, 10)]
    assert said()[1:] == ["lag: the offsets of t[1] are read again"]
