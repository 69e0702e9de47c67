"""Reading back what the detector consumed before, so a restart or a takeover rebuilds its windows.

Nothing here joins a consumer group: the reader assigns partitions and reads offset ranges. The
ranges end at the detector group's *committed* offsets, which is exactly where the stage runner
resumes, so no record is fed to the windows twice (once replayed, once live).

- ``since(topic, t, n, counts)``: the first ``n`` records (by timestamp) produced at or after
  ``t`` that ``counts`` accepts (the champion's own: a shared topic also holds other pipelines'
  records and canary predictions); the start offsets come from ``offsets_for_times``.
- ``tail(topic, n)``: the last ``n`` records (by timestamp) before the committed offsets.
- ``latest(topic, n)``: the last ``n`` decoded values of a topic the group does not consume (the
  drift topic, for the cooldowns).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from services.drift_detector.events import Champion
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.group_history import GroupHistory
from streamloop.kafka.records import ConsumedRecord
from streamloop.kafka.table_reader import CompactedTopicReader
from streamloop.serde import Serde

log = logging.getLogger(__name__)

MAX_SINCE_READS = 20


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
    """The detector's history, read with ``GroupHistory`` under the detector's group id (for its committed offsets)."""

    def __init__(self, group: GroupHistory) -> None:
        self.group = group

    @classmethod
    def of_group(cls, kafka: KafkaSettings, group_id: str, serdes: Mapping[str, Serde],
                 timeout_s: float = 30.0) -> KafkaHistory:
        return cls(GroupHistory(kafka, group_id, serdes, timeout_s))

    def since(self, topic: str, time_ms: int, limit: int,
              counts: Callable[[ConsumedRecord], bool] = lambda _record: True) -> list[ConsumedRecord]:
        """Read on, ``limit`` records per partition at a time, until ``limit`` records count.

        Reading only the first ``limit`` records left the reference short whenever some did not
        count, and the detector then filled it with whatever came next: recent, maybe drifted, data.
        At most ``MAX_SINCE_READS`` rounds, so a topic where almost nothing counts is not read whole.
        """
        bounds = self.group.bounds(topic)
        starts = self.group.offsets_at(topic, time_ms, bounds)
        # No record at or after time_ms (the high watermark), or one past the committed offset: nothing to replay.
        positions = {p: starts[p] for p, bound in bounds.items() if starts.get(p, bound.high) < bound.committed}
        # A start at a log start above 0 may be retention's doing, not the time's: the records from
        # time_ms on may have been deleted, and the reference is then built from later, maybe
        # drifted, data. Kafka cannot tell which; the operator should know to lengthen retention.
        trimmed = sorted(p for p, start in positions.items() if start == bounds[p].low > 0)
        if trimmed:
            log.warning("%s: the records since %d may have aged out of partitions %s (each starts at its "
                        "log start): a reference read from there is built from the oldest records kept; "
                        "keep the topic's retention longer than a champion's life", topic, time_ms, trimmed)
        counted: list[ConsumedRecord] = []
        for _round in range(MAX_SINCE_READS):
            ranges = {p: (start, min(bounds[p].committed, start + limit)) for p, start in positions.items()
                      if start < bounds[p].committed}
            if not ranges or len(counted) >= limit:
                break
            counted += [record for record in self.group.read(topic, ranges) if counts(record)]
            positions.update({p: end for p, (_start, end) in ranges.items()})
        return sorted(counted, key=_order)[:limit]

    def tail(self, topic: str, limit: int) -> list[ConsumedRecord]:
        if limit <= 0:
            return []
        ranges = {p: (max(b.low, b.committed - limit), b.committed) for p, b in self.group.bounds(topic).items()}
        return sorted(self.group.read(topic, ranges), key=_order)[-limit:]

    def latest(self, topic: str, limit: int) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        ranges = {p: (max(b.low, b.high - limit), b.high) for p, b in self.group.bounds(topic).items()}
        return [r.value for r in sorted(self.group.read(topic, ranges), key=_order)[-limit:]]


def _order(record: ConsumedRecord) -> tuple[int, int, int]:
    return record.timestamp_ms, record.partition, record.offset
