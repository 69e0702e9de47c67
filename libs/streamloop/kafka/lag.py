"""Consumer lag per group, topic and partition: end offset minus committed offset.

Figures carry kafka-lag-exporter's meaning, so dashboards built for it read ours unchanged.
A partition the group has not committed on yet lags by the records it holds (end minus start
offset): what the group will read, since its ``auto.offset.reset`` is earliest. Not the end
offset alone, which also counts every record retention has already deleted.
Lag is clamped at zero: a negative value can only come from a broker reporting a wrong end
offset (Tansu's T1 defect, docs/embedded-stack.md), and is reported as such by the conformance suite.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from streamloop.kafka.configuration import KafkaSettings


def records_behind(position: int | None, start: int, end: int) -> int:
    """Records of a partition holding ``[start, end)`` a consumer at ``position`` has yet to read.

    No position (nothing committed: -1 or an OFFSET_* sentinel), or one retention has passed: the
    consumer reads on from the first record kept (auto.offset.reset earliest), not the deleted ones.
    """
    at = -1 if position is None else position
    return max(0, end - max(at, start, 0))


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None
    end_offset: int
    start_offset: int = 0  # the low watermark: the first record retention has kept

    @property
    def lag(self) -> int:
        return records_behind(self.committed, self.start_offset, self.end_offset)


def consumer_groups(admin: AdminClient, timeout_s: float = 10.0) -> list[str]:
    result = admin.list_consumer_groups(request_timeout=timeout_s).result(timeout_s)
    return sorted(g.group_id for g in result.valid)


def group_lag(kafka: KafkaSettings, admin: AdminClient, groups: list[str] | None = None,
              timeout_s: float = 10.0) -> list[PartitionLag]:
    groups = groups if groups is not None else consumer_groups(admin, timeout_s)
    rows: list[PartitionLag] = []
    if not groups:
        return rows
    probe = Consumer(kafka.consumer("streamloop-lag-probe"))
    try:
        for group in groups:
            futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                        request_timeout=timeout_s)
            committed = {
                (tp.topic, tp.partition): tp.offset
                for tp in futures[group].result(timeout_s).topic_partitions or []
                if tp.error is None and tp.offset >= 0
            }
            # Every partition of each topic the group reads, also those it has not committed on yet.
            for topic in sorted({topic for topic, _ in committed}):
                partitions = probe.list_topics(topic, timeout=timeout_s).topics[topic].partitions
                for partition in sorted(partitions):
                    low, high = probe.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
                    rows.append(PartitionLag(group, topic, partition, committed.get((topic, partition)), high, low))
    finally:
        probe.close()
    return sorted(rows, key=lambda r: (r.group, r.topic, r.partition))
