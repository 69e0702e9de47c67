"""The input topic read as the featurizer's changelog: committed offsets and recent records.

When the featurizer is assigned a partition whose state it does not hold, it replays the
partition's recent input (without emitting) to rebuild its windows before the first batch
(docs/featurizer.md, "State survives restarts"). This module is that read. Its consumer carries the
featurizer's group id only to look up the group's committed offsets: it never subscribes, never
joins the group and never commits; records are read with ``assign``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from confluent_kafka import Consumer, KafkaException, TopicPartition

from services.featurizer.exceptions import RestoreCancelled, RestoreError
from streamloop.errors import DependencyUnavailable
from streamloop.kafka import ConsumedRecord, KafkaSettings
from streamloop.kafka.records import TopicPartitionRef
from streamloop.serde import Serde, SerdeError

log = logging.getLogger(__name__)

# A rebuild may run for many minutes, holding the consume loop (StreamloopStageStuck fires after
# 15): its log tells a replay still moving from a stuck one.
PROGRESS_LOG_INTERVAL_S = 60.0


class KafkaPartitionHistory:
    """Reads ``[start, end)`` of input partitions, ``start`` chosen by timestamp ``lookback_ms`` back.

    ``timeout_s`` bounds each broker request and how long a replay may go without progress, not
    the replay as a whole: how long a rebuild takes grows with the input rate and the partitions
    handed over at once, and a total bound that a rebuild cannot meet fails it on every restart.
    """

    def __init__(self, kafka: KafkaSettings, group_id: str, serdes: Mapping[str, Serde], *,
                 timeout_s: float = 300.0, batch_size: int = 1_000,
                 cancelled: Callable[[], bool] = lambda: False,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._config = {
            **kafka.common(),
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": kafka.fetch_wait_max_ms,
            "enable.partition.eof": False,
        }
        self._serdes = serdes
        self._timeout_s = timeout_s
        self._batch_size = batch_size
        self._monotonic = monotonic
        # Checked while reading: a stop request during a long rebuild leaves without waiting for it.
        self.cancelled = cancelled

    def committed(self, partitions: Sequence[TopicPartitionRef]) -> dict[TopicPartitionRef, int | None]:
        if not partitions:
            return {}
        consumer = Consumer(self._config)
        try:
            found = consumer.committed([TopicPartition(p.topic, p.partition) for p in partitions],
                                       timeout=self._timeout_s)
        except KafkaException as exc:
            raise RestoreError(f"cannot read the committed offsets of {len(partitions)} partitions: {exc}") from exc
        finally:
            consumer.close()
        return {TopicPartitionRef(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None for tp in found}

    def replay(self, ends: Mapping[TopicPartitionRef, int], lookback_ms: int) -> Iterator[ConsumedRecord]:
        """Every decodable record from the chosen start offset up to (not including) each end offset.

        The start is the first offset whose timestamp is at least ``lookback_ms`` before the
        timestamp of the record at ``end - 1``; records that cannot be decoded are skipped (they
        were dead-lettered when first consumed).
        """
        consumer = Consumer(self._config)
        try:
            ranges = self._ranges(consumer, ends, lookback_ms)
            if ranges:
                yield from self._read(consumer, ranges)
        except (KafkaException, DependencyUnavailable) as exc:  # a broker or a Schema Registry not answering
            raise RestoreError(f"cannot replay the input to rebuild state: {exc}") from exc
        finally:
            consumer.close()

    def _ranges(self, consumer: Consumer, ends: Mapping[TopicPartitionRef, int],
                lookback_ms: int) -> dict[tuple[str, int], tuple[int, int]]:
        bounds: dict[tuple[str, int], tuple[int, int]] = {}
        for ref, end in ends.items():
            low, high = consumer.get_watermark_offsets(TopicPartition(ref.topic, ref.partition),
                                                       timeout=self._timeout_s)
            end = min(end, high)
            if end > low:
                bounds[(ref.topic, ref.partition)] = (low, end)
        if not bounds:
            return {}
        # The timestamp of each partition's last record before its end offset anchors the lookback.
        last = {tp: end - 1 for tp, (_low, end) in bounds.items()}
        anchors: dict[tuple[str, int], int] = {}
        for message in self._messages(consumer, last, {tp: end for tp, (_low, end) in bounds.items()},
                                      stop_after_first=True):
            anchors[(message.topic(), message.partition())] = message.timestamp()[1]
        wanted = [TopicPartition(t, p, anchors[(t, p)] - lookback_ms) for t, p in bounds
                  if anchors.get((t, p), 0) - lookback_ms > 0]
        starts = {(tp.topic, tp.partition): tp.offset
                  for tp in (consumer.offsets_for_times(wanted, timeout=self._timeout_s) if wanted else [])}
        ranges = {}
        for tp, (low, end) in bounds.items():
            start = starts.get(tp, low)
            start = low if start is None or start < 0 else min(max(start, low), end)
            if start < end:
                ranges[tp] = (start, end)
        log.info("replaying %s to rebuild state", ", ".join(f"{t}[{p}] {s}..{e - 1}" for (t, p), (s, e) in
                                                            sorted(ranges.items())))
        return ranges

    def _read(self, consumer: Consumer, ranges: dict[tuple[str, int], tuple[int, int]]) -> Iterator[ConsumedRecord]:
        starts = {tp: start for tp, (start, _end) in ranges.items()}
        ends = {tp: end for tp, (_start, end) in ranges.items()}
        for message in self._messages(consumer, starts, ends):
            topic = message.topic()
            try:
                value = self._serdes[topic].decode(message.value())
            except SerdeError:
                continue
            key = message.key()
            yield ConsumedRecord(topic, message.partition(), message.offset(),
                                 key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
                                 value, message.timestamp()[1])

    def _messages(self, consumer: Consumer, starts: dict[tuple[str, int], int], ends: dict[tuple[str, int], int],
                  stop_after_first: bool = False):
        """Messages of each partition from its start offset until its end offset (or its first one).

        Raises RestoreError once ``timeout_s`` passes without progress: no partition read further
        or closed. Time the caller spends on the messages between two reads is not counted.
        """
        assignment = [TopicPartition(t, p, offset) for (t, p), offset in starts.items()]
        consumer.assign(assignment)
        consumer.resume(assignment)  # a pause from an earlier read of the same partition outlives unassign
        open_partitions = set(starts)
        # A redelivery (an offset reset to the start) is activity, not progress: only a partition
        # read beyond its furthest offset so far moves the replay towards its end.
        furthest = {tp: offset - 1 for tp, offset in starts.items()}
        last_progress = self._monotonic()
        next_progress_log = last_progress + PROGRESS_LOG_INTERVAL_S
        try:
            while open_partitions:
                if self.cancelled():
                    raise RestoreCancelled("stopped while rebuilding state")
                messages = consumer.consume(self._batch_size, 0.2)
                progressed = False
                for message in messages:
                    if message.error() is not None:
                        log.warning("replay: %s", message.error().str())
                        continue
                    tp = (message.topic(), message.partition())
                    if tp not in open_partitions:
                        continue
                    if message.offset() > furthest[tp]:
                        furthest[tp] = message.offset()
                        progressed = True
                    if message.offset() < ends[tp]:
                        yield message
                    if stop_after_first or message.offset() >= ends[tp] - 1:
                        self._close(consumer, open_partitions, tp)
                        progressed = True
                if not messages:
                    progressed = self._close_finished(consumer, open_partitions, ends)
                now = self._monotonic()
                if progressed:
                    last_progress = now
                    if now >= next_progress_log and open_partitions:
                        next_progress_log = now + PROGRESS_LOG_INTERVAL_S
                        log.info("replay progress: %s", self._whereabouts(open_partitions, furthest, ends))
                elif now - last_progress > self._timeout_s:
                    raise RestoreError(f"the replay made no progress for {self._timeout_s:g}s "
                                       f"(FEATURIZER_RESTORE_TIMEOUT_S): "
                                       f"{self._whereabouts(open_partitions, furthest, ends)}")
        finally:
            consumer.unassign()

    def _close_finished(self, consumer: Consumer, open_partitions: set[tuple[str, int]],
                        ends: dict[tuple[str, int], int]) -> bool:
        """Close partitions with nothing left below their end: the last offsets may be transaction
        markers (no message), or retention may have deleted the rest meanwhile. True if any closed."""
        closed = False
        for tp in list(open_partitions):
            partition = TopicPartition(*tp)
            try:
                low, _high = consumer.get_watermark_offsets(partition, timeout=5.0)
                position = consumer.position([partition])[0].offset
            except KafkaException as exc:
                # A broker slow to answer for a moment is not a failed rebuild: the replay's
                # no-progress timeout decides when waiting is over.
                log.warning("replay: cannot read the offsets of %s[%d]: %s", *tp, exc)
                continue
            if position >= ends[tp] or low >= ends[tp]:
                self._close(consumer, open_partitions, tp)
                closed = True
        return closed

    @staticmethod
    def _whereabouts(open_partitions: set[tuple[str, int]], furthest: dict[tuple[str, int], int],
                     ends: dict[tuple[str, int], int]) -> str:
        return ", ".join(f"{t}[{p}] at {furthest[(t, p)] + 1} of {ends[(t, p)]}" for t, p in sorted(open_partitions))

    @staticmethod
    def _close(consumer: Consumer, open_partitions: set[tuple[str, int]], tp: tuple[str, int]) -> None:
        open_partitions.discard(tp)
        consumer.pause([TopicPartition(*tp)])
