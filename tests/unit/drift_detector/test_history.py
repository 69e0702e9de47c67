"""KafkaHistory.since over a fake GroupHistory: which ranges it reads and what it warns about."""

from __future__ import annotations

import logging

from services.drift_detector.history import KafkaHistory
from streamloop.kafka.group_history import PartitionBounds
from streamloop.kafka.records import ConsumedRecord


class FakeGroupHistory:
    def __init__(self, bounds: dict[int, PartitionBounds], starts: dict[int, int]) -> None:
        self._bounds, self._starts = bounds, starts
        self.reads: list[dict[int, tuple[int, int]]] = []

    def bounds(self, topic: str) -> dict[int, PartitionBounds]:
        return self._bounds

    def offsets_at(self, topic, time_ms, bounds):
        return self._starts

    def read(self, topic: str, ranges: dict[int, tuple[int, int]]) -> list[ConsumedRecord]:
        self.reads.append(dict(ranges))
        return [ConsumedRecord(topic=topic, partition=p, offset=o, key=None, value={"n": o}, timestamp_ms=1_000 + o)
                for p, (start, stop) in ranges.items() for o in range(start, stop)]


def test_since_reads_from_the_time_and_warns_of_nothing_when_the_log_starts_before_it(caplog):
    group = FakeGroupHistory({0: PartitionBounds(low=0, high=50, committed=40)}, {0: 10})
    with caplog.at_level(logging.WARNING):
        records = KafkaHistory(group).since("features", 500, 5)
    assert [r.offset for r in records] == [10, 11, 12, 13, 14]
    assert not caplog.records


def test_since_warns_when_the_records_since_the_time_may_have_aged_out(caplog):
    # Partition 1's first record at or after the time is its log start above 0: retention may have
    # deleted the records the reference should hold.
    group = FakeGroupHistory({0: PartitionBounds(low=0, high=50, committed=40),
                              1: PartitionBounds(low=30, high=80, committed=70)}, {0: 10, 1: 30})
    with caplog.at_level(logging.WARNING):
        records = KafkaHistory(group).since("features", 500, 4)
    assert len(records) == 4
    assert group.reads[0] == {0: (10, 14), 1: (30, 34)}
    [warning] = caplog.records
    assert "aged out of partitions [1]" in warning.getMessage() and "retention" in warning.getMessage()
