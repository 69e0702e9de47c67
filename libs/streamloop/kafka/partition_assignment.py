"""The runner's side of a consumer group rebalance, and the lag of the partitions it holds.

The runner knows which partitions the group assigned it (only those are committed and rewound), tells
its processor of each assignment and revocation, and reports each partition's lag: records behind,
and since when the oldest of them may have waited (``kafka_consumergroup_group_lag_seconds``).
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streamloop.kafka.lag import records_behind
from streamloop.kafka.pacing import FetchPacer
from streamloop.kafka.records import Processor, TopicPartitionRef
from streamloop.kafka.runner_metrics import RunnerMetrics

# The runner's logger: these lines report on the runner's batches, and every log line names its logger.
log = logging.getLogger("streamloop.kafka.runner")


class PartitionAssignment:
    """StageRunner's rebalance callbacks and lag report, over the partition state its ``__init__`` sets up."""

    service: str
    group_id: str
    processor: Processor
    metrics: RunnerMetrics
    consumer: Consumer | None
    pacer: FetchPacer | None
    _assigned: set[tuple[str, int]]
    _last_consumed_ms: dict[tuple[str, int], int]
    _caught_up_at: dict[tuple[str, int], float]
    _assigned_at: dict[tuple[str, int], float]
    _joining_since: float | None

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The join's wait is the group's: a member that left without a word (SIGKILL) and had no
        # static id (KAFKA_GROUP_INSTANCE_ID) holds its partitions until its session times out.
        joined = f", {time.monotonic() - self._joining_since:.1f} s after subscribing" \
            if self._joining_since is not None else ""
        self._joining_since = None
        log.info("%s: assigned %d partition%s%s%s", self.service, len(partitions), "" if len(partitions) == 1 else "s",
                 f" of {', '.join(sorted({tp.topic for tp in partitions}))}" if partitions else "", joined)
        self._assigned.update((tp.topic, tp.partition) for tp in partitions)
        now = time.time()
        for tp in partitions:
            self._assigned_at.setdefault((tp.topic, tp.partition), now)
        if self.pacer is not None:
            self.pacer.rebalanced(partitions)
        if hasattr(self.processor, "on_assigned"):
            self.processor.on_assigned([TopicPartitionRef(tp.topic, tp.partition) for tp in partitions])

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Batches are processed, delivered and committed before consume() returns to the
        # rebalance, so nothing is in flight here: the processor only drops its state.
        self._assigned.difference_update((tp.topic, tp.partition) for tp in partitions)
        for tp in partitions:
            for known in (self._last_consumed_ms, self._caught_up_at, self._assigned_at):
                known.pop((tp.topic, tp.partition), None)
        if self.pacer is not None:
            self.pacer.rebalanced()
        if hasattr(self.processor, "on_revoked"):
            self.processor.on_revoked([TopicPartitionRef(tp.topic, tp.partition) for tp in partitions])

    def _report_lag(self) -> None:
        if self.consumer is None:
            return
        if not self._assigned:
            # A replica left without partitions (scaled past the partition count) exports none,
            # rather than the last figures of partitions it no longer has.
            self.metrics.set_lag(self.group_id, {}, {})
            return
        partitions = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        now = time.time()
        try:
            positions = self.consumer.position(partitions)
            lag, behind_since = {}, {}
            for tp in positions:
                # While the pacer holds the partitions back, librdkafka does not know the position.
                known = self.pacer.position(tp.topic, tp.partition) if self.pacer is not None else None
                if known is not None:
                    tp.offset = known
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high is None or high < 0:
                    continue
                key = (tp.topic, tp.partition)
                lag[key] = records_behind(tp.offset, low, high)
                if lag[key]:
                    behind_since[key] = self._behind_since(key)
                else:
                    self._caught_up_at[key] = now
            # The metrics compute the age at each scrape, so it keeps growing while this thread is
            # stuck (a delivery retried, a slow dependency) and cannot report again.
            self.metrics.set_lag(self.group_id, lag, behind_since)
        except KafkaException as exc:
            log.debug("%s: lag report skipped: %s", self.service, exc)

    def _behind_since(self, key: tuple[str, int]) -> float:
        """The earliest time (epoch s) the oldest record still waiting in a partition with lag can date from.

        That record is no older than the last one consumed (by Kafka timestamp), nor than the last
        time the partition was seen caught up, so the age computed from this is an upper bound.
        With neither known, the assignment time stands in, and the age is then a floor: a record
        may have waited since before the assignment.
        """
        bounds = [self._caught_up_at.get(key)]
        if key in self._last_consumed_ms:
            bounds.append(self._last_consumed_ms[key] / 1000)
        known = [b for b in bounds if b is not None]
        return max(known) if known else self._assigned_at.get(key, time.time())
