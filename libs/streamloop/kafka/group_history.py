"""Reading again what a consumer group consumed before, without joining the group.

A service that keeps state in memory rebuilds it after a restart or a takeover by reading its
own past input: ranges that end at its group's committed offsets, which is exactly where its stage
runner resumes, so no record is fed twice (once replayed, once live). The consumer here carries
the group id only to look the committed offsets up: it never subscribes, so it never joins the
group (and cannot disturb the runner's membership), and it never commits; it reads with ``assign``.

Every broker call takes a ``cancelled`` (a stop, a lost lease) that it looks at often: a read
between two slices of records, and each call that looks offsets up (the topic's partitions, the
committed offsets, the watermarks, a timestamp's offsets) between two waits for its answer, the
first of CALL_SLICE_S, each next twice as long up to CALL_SLICE_MAX_S, asked again until
``timeout_s`` has passed. As one call of
``timeout_s``, a lookup the broker did not answer held a stop for that long (a minute for the
retrainer's resume).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.exceptions import KafkaRuntimeError, kafka_error_of
from streamloop.kafka.records import ConsumedRecord
from streamloop.serde import Serde, SerdeError

log = logging.getLogger(__name__)

Ranges = dict[int, tuple[int, int]]  # partition -> [start, stop)
READ_SLICE = 1_000  # records taken per consume(): a read's cancellation is looked at between two
# How long one wait for a lookup's answer lasts (list_topics, committed, the watermarks,
# offsets_for_times): its cancellation is looked at between two.
CALL_SLICE_S = 0.5
# Each wait left unanswered doubles the next, up to this: a broker that needs longer than one slice
# for a request (a loaded machine, a topic with many segments to search by time) still answers one,
# and a stop waits at most this long.
CALL_SLICE_MAX_S = 4.0
# What librdkafka raises when a lookup had no answer within its timeout (it waits the whole
# timeout for each of them, whatever the broker did): asked again while ``timeout_s`` lasts.
UNANSWERED = frozenset({KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})
Cancelled = Callable[[], bool]
T = TypeVar("T")


class HistoryUnavailableError(KafkaRuntimeError):
    """The group's past input could not be read (offsets unknown, or the read timed out)."""


class HistoryReadCancelled(KafkaRuntimeError):
    """The caller's ``cancelled`` turned true during a read (a stop, say): it was given up, and returned nothing.

    No ``HistoryUnavailableError``: a caller that goes on without its history when it cannot be
    read must not go on when it was asked to stop.
    """


@dataclass(frozen=True)
class PartitionBounds:
    low: int
    high: int
    committed: int  # clamped to [low, high]; low when the group has committed nothing here


class GroupHistory:
    """``bounds``, ``offsets_at`` and ``read`` over the topics a group consumes (or any other topic)."""

    def __init__(self, kafka: KafkaSettings, group_id: str, serdes: Mapping[str, Serde],
                 timeout_s: float = 30.0) -> None:
        self.group_id = group_id
        self.serdes = dict(serdes)
        self.timeout_s = timeout_s
        self._common = kafka.common()
        self._fetch_wait = kafka.fetch_wait_max_ms

    def _consumer(self) -> Consumer:
        return Consumer({**self._common, **self.reading_options()})

    def reading_options(self) -> dict:
        """The reading consumer's options on top of the shared client settings (security included)."""
        return {
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": self._fetch_wait,
            # A range that starts below the log start (retention passed it since ``bounds``) is read
            # from the first record left; librdkafka's default, latest, would skip to the end.
            "auto.offset.reset": "earliest",
        }

    def bounds(self, topic: str, cancelled: Cancelled | None = None) -> dict[int, PartitionBounds]:
        """Each partition's watermarks and the group's committed offset; ``HistoryReadCancelled`` once
        ``cancelled`` is true, between two waits of CALL_SLICE_S for an answer."""
        consumer = self._consumer()
        try:
            return self._bounds(consumer, topic, cancelled)
        finally:
            consumer.close()

    def _bounds(self, consumer: Consumer, topic: str, cancelled: Cancelled | None = None) -> dict[int, PartitionBounds]:
        try:
            metadata = self._answer(lambda timeout: consumer.list_topics(topic, timeout=timeout),
                                    f"the partitions of {topic}", cancelled).topics[topic]
            if metadata.error is not None:
                raise KafkaException(metadata.error)
            committed = self._answer(
                lambda timeout: consumer.committed([TopicPartition(topic, p) for p in sorted(metadata.partitions)],
                                                   timeout=timeout),
                f"the committed offsets of {topic}", cancelled)
            bounds = {}
            for tp in committed:
                low, high = self._answer(
                    lambda timeout, tp=tp: consumer.get_watermark_offsets(TopicPartition(topic, tp.partition),
                                                                          timeout=timeout),
                    f"the watermarks of {topic} [{tp.partition}]", cancelled)
                position = tp.offset if tp.offset >= 0 else low
                bounds[tp.partition] = PartitionBounds(low, high, min(max(position, low), high))
            return bounds
        except KafkaException as exc:
            raise HistoryUnavailableError(f"cannot read the offsets of {topic}: {exc}") from exc

    def offsets_at(self, topic: str, time_ms: int, bounds: Mapping[int, PartitionBounds],
                   cancelled: Cancelled | None = None) -> dict[int, int]:
        """Per partition of ``bounds`` (``bounds(topic)``, which the caller has read already), the first
        offset whose timestamp is at or after ``time_ms`` (the high watermark if none).

        ``HistoryReadCancelled`` once ``cancelled`` is true, between two waits of CALL_SLICE_S for the answer.
        """
        consumer = self._consumer()
        try:
            found = self._answer(
                lambda timeout: consumer.offsets_for_times([TopicPartition(topic, p, time_ms) for p in bounds],
                                                           timeout=timeout),
                f"the offsets of {topic} at {time_ms}", cancelled)
        except KafkaException as exc:
            raise HistoryUnavailableError(f"cannot find the offsets of {topic} at {time_ms}: {exc}") from exc
        finally:
            consumer.close()
        return {tp.partition: tp.offset if tp.error is None and tp.offset >= 0 else bounds[tp.partition].high
                for tp in found}

    def read(self, topic: str, ranges: Mapping[int, tuple[int, int]],
             cancelled: Cancelled | None = None) -> list[ConsumedRecord]:
        """Every decodable record in ``[start, stop)`` of each partition, in offset order per partition.

        Undecodable records are left out: the live run dead-lettered them. ``cancelled`` is asked
        before each slice (one ``consume``: up to READ_SLICE records, or 0.2 s); once it is true
        the read raises ``HistoryReadCancelled``, so a read of many thousand records does not hold
        a stop up until its end.
        """
        ranges = {p: r for p, r in ranges.items() if r[1] > r[0]}
        if not ranges:
            return []
        consumer = self._consumer()
        try:
            return self._read(consumer, topic, ranges, cancelled)
        except KafkaException as exc:
            raise HistoryUnavailableError(f"cannot read {topic} again: {exc}") from exc
        finally:
            consumer.close()

    def _read(self, consumer: Consumer, topic: str, ranges: Ranges,
              cancelled: Cancelled | None = None) -> list[ConsumedRecord]:
        serde = self.serdes[topic]
        consumer.assign([TopicPartition(topic, p, start) for p, (start, _stop) in ranges.items()])
        remaining = dict(ranges)
        records: list[ConsumedRecord] = []
        deadline = time.monotonic() + self.timeout_s
        while remaining:
            if cancelled is not None and cancelled():
                raise HistoryReadCancelled(f"reading {topic} again was given up with {len(remaining)} partitions left "
                                           f"({len(records)} records read)")
            if time.monotonic() > deadline:
                raise HistoryUnavailableError(f"reading {topic} again timed out with {len(remaining)} partitions left")
            messages = consumer.consume(READ_SLICE, 0.2)
            if not messages:
                _drop_passed(consumer, topic, remaining)
            for message in messages:
                if message.error() is not None:
                    continue
                partition, offset = message.partition(), message.offset()
                bound = remaining.get(partition)
                if bound is None:
                    continue
                if offset >= bound[1]:
                    # Past the range (retention deleted it whole and the reset went to the log start
                    # beyond it): nothing of it is left to read.
                    del remaining[partition]
                    continue
                if offset + 1 >= bound[1]:
                    del remaining[partition]
                try:
                    value = serde.decode(message.value())
                except SerdeError:
                    continue
                key = message.key()
                records.append(ConsumedRecord(topic, partition, offset,
                                              key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
                                              value, message.timestamp()[1], list(message.headers() or [])))
        return records

    def _answer(self, call: Callable[[float], T], what: str, cancelled: Cancelled | None) -> T:
        """``call(timeout)``'s answer, waited for CALL_SLICE_S at a time and for ``timeout_s`` in all.

        A wait that ends unanswered (UNANSWERED) is asked again, for twice as long each time up to
        CALL_SLICE_MAX_S, and ``cancelled`` is looked at between two; librdkafka goes on connecting
        and finding the coordinator between two, so a slow broker answers a later one, and one that
        takes longer than CALL_SLICE_S over a single request answers a longer wait. Any other error
        is raised at once, as the one long call raised it; the last unanswered one once
        ``timeout_s`` has passed.
        """
        if cancelled is None:
            return call(self.timeout_s)
        deadline = time.monotonic() + self.timeout_s
        slice_s = CALL_SLICE_S
        while True:
            if cancelled():
                raise HistoryReadCancelled(f"looking up {what} was given up")
            started = time.monotonic()
            wait = min(slice_s, deadline - started)
            try:
                return call(max(wait, 0.0))
            except KafkaException as exc:
                error = kafka_error_of(exc)
                if error is None or error.code() not in UNANSWERED or time.monotonic() >= deadline:
                    raise
            slice_s = min(2 * slice_s, CALL_SLICE_MAX_S)
            # Unanswered sooner than asked (not librdkafka's way, but no busy loop if it were).
            time.sleep(max(started + wait - time.monotonic(), 0.0))


def _drop_passed(consumer: Consumer, topic: str, remaining: Ranges) -> None:
    """Partitions whose position passed the stop offset (a gap: control records, compaction) are done."""
    try:
        for tp in consumer.position([TopicPartition(topic, p) for p in remaining]):
            if tp.offset >= remaining[tp.partition][1]:
                del remaining[tp.partition]
    except KafkaException as exc:
        log.debug("position check skipped: %s", exc)

