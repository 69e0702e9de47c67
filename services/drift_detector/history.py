"""Reading back what the detector consumed before, so a restart or a takeover rebuilds its windows.

Nothing here joins a consumer group: the reader assigns partitions and reads offset ranges. The
ranges end at the detector group's *committed* offsets, which is exactly where the stage runner
resumes, so no record is fed to the windows twice (once replayed, once live).

- ``since(topic, t, n)``: the first ``n`` records (by timestamp) produced at or after ``t``; the
  start offsets come from ``offsets_for_times``.
- ``tail(topic, n)``: the last ``n`` records (by timestamp) before the committed offsets.
- ``latest(topic, n)``: the last ``n`` decoded values of a topic the group does not consume (the
  drift topic, for the cooldowns).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from services.drift_detector.events import Champion
from services.drift_detector.exceptions import HistoryUnavailableError
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.records import ConsumedRecord
from streamloop.kafka.table_reader import CompactedTopicReader
from streamloop.serde import Serde, SerdeError

log = logging.getLogger(__name__)

Ranges = dict[int, tuple[int, int]]


class TableChampions:
    """The champion slot of the compacted deployments topic, as the shared table reader keeps it."""

    def __init__(self, reader: CompactedTopicReader, key: str) -> None:
        self.reader = reader
        self.key = key

    def champion(self) -> Champion | None:
        record = self.reader.get(self.key)
        if record is None or record.get("role") != "CHAMPION":
            return None
        return Champion.from_deployment(record)


class KafkaHistory:
    def __init__(self, kafka: KafkaSettings, group_id: str, serdes: Mapping[str, Serde],
                 timeout_s: float = 30.0) -> None:
        self.group_id = group_id
        self.serdes = dict(serdes)
        self.timeout_s = timeout_s
        self._common = kafka.common()
        self._fetch_wait = kafka.fetch_wait_max_ms

    def _consumer(self, group_id: str | None = None) -> Consumer:
        # The detector's own group id lets committed() answer for it; without subscribe() this
        # consumer never joins the group, so it cannot disturb the runner's membership.
        return Consumer({
            **self._common,
            "group.id": group_id or f"{self.group_id}.history.{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": self._fetch_wait,
        })

    def _bounds(self, consumer: Consumer, topic: str) -> dict[int, tuple[int, int, int]]:
        """(low, high, committed) per partition; committed is low when the group has none."""
        try:
            metadata = consumer.list_topics(topic, timeout=self.timeout_s).topics[topic]
            if metadata.error is not None:
                raise KafkaException(metadata.error)
            partitions = sorted(metadata.partitions)
            committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=self.timeout_s)
            bounds = {}
            for tp in committed:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=self.timeout_s)
                position = tp.offset if tp.offset >= 0 else low
                bounds[tp.partition] = (low, high, min(max(position, low), high))
            return bounds
        except KafkaException as exc:
            raise HistoryUnavailableError(f"cannot read the offsets of {topic}: {exc}") from exc

    def since(self, topic: str, time_ms: int, limit: int) -> list[ConsumedRecord]:
        consumer = self._consumer(self.group_id)
        try:
            bounds = self._bounds(consumer, topic)
            found = consumer.offsets_for_times([TopicPartition(topic, p, time_ms) for p in bounds],
                                               timeout=self.timeout_s)
            ranges: Ranges = {}
            for tp in found:
                stop = bounds[tp.partition][2]
                # -1: no record at or after time_ms; at or past the committed offset: nothing to replay.
                if tp.error is None and 0 <= tp.offset < stop:
                    ranges[tp.partition] = (tp.offset, min(stop, tp.offset + limit))
            records = self._read(consumer, topic, ranges)
        except KafkaException as exc:
            raise HistoryUnavailableError(f"cannot replay {topic} since {time_ms}: {exc}") from exc
        finally:
            consumer.close()
        return sorted(records, key=_order)[:limit]

    def tail(self, topic: str, limit: int) -> list[ConsumedRecord]:
        if limit <= 0:
            return []
        consumer = self._consumer(self.group_id)
        try:
            bounds = self._bounds(consumer, topic)
            ranges = {p: (max(low, stop - limit), stop) for p, (low, _high, stop) in bounds.items() if stop > low}
            records = self._read(consumer, topic, ranges)
        finally:
            consumer.close()
        return sorted(records, key=_order)[-limit:]

    def latest(self, topic: str, limit: int) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        consumer = self._consumer()
        try:
            bounds = self._bounds(consumer, topic)
            ranges = {p: (max(low, high - limit), high) for p, (low, high, _c) in bounds.items() if high > low}
            records = self._read(consumer, topic, ranges)
        finally:
            consumer.close()
        return [r.value for r in sorted(records, key=_order)[-limit:]]

    def _read(self, consumer: Consumer, topic: str, ranges: Ranges) -> list[ConsumedRecord]:
        """Every decodable record in [start, stop) of each partition; undecodable ones are skipped."""
        ranges = {p: r for p, r in ranges.items() if r[1] > r[0]}
        if not ranges:
            return []
        serde = self.serdes[topic]
        consumer.assign([TopicPartition(topic, p, start) for p, (start, _stop) in ranges.items()])
        remaining = dict(ranges)
        records: list[ConsumedRecord] = []
        deadline = time.monotonic() + self.timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise HistoryUnavailableError(f"replaying {topic} timed out with {len(remaining)} partitions left")
            messages = consumer.consume(1000, 0.2)
            if not messages:
                _drop_passed(consumer, topic, remaining)
            for message in messages:
                if message.error() is not None:
                    continue
                partition, offset = message.partition(), message.offset()
                bound = remaining.get(partition)
                if bound is None or offset >= bound[1]:
                    continue
                if offset + 1 >= bound[1]:
                    del remaining[partition]
                try:
                    value = serde.decode(message.value())
                except SerdeError:
                    continue  # the live run dead-lettered it
                key = message.key()
                records.append(ConsumedRecord(topic, partition, offset,
                                              key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
                                              value, message.timestamp()[1], list(message.headers() or [])))
        consumer.unassign()
        return records


def _drop_passed(consumer: Consumer, topic: str, remaining: Ranges) -> None:
    """Partitions whose position passed the stop offset (a gap: control records, compaction) are done."""
    try:
        for tp in consumer.position([TopicPartition(topic, p) for p in remaining]):
            if tp.offset >= remaining[tp.partition][1]:
                del remaining[tp.partition]
    except KafkaException as exc:
        log.debug("position check skipped: %s", exc)


def _order(record: ConsumedRecord) -> tuple[int, int, int]:
    return record.timestamp_ms, record.partition, record.offset
