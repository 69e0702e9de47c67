"""Idle-fetch pacing: a consumer that found nothing stops fetching for a while.

Apache Kafka holds an empty Fetch for up to ``fetch.wait.max.ms``, so an idle librdkafka consumer
costs a few requests a second. The embedded noida-db broker answers an empty Fetch at once and
librdkafka sends the next one at once: one idle consumer sent about 8,000–11,000 Fetch/s whatever
``fetch.wait.max.ms`` said, costing about 35 % of a core in the broker and 40 % in the client, and
the stack's sixteen consumers filled both cores of the development machine before a single event
(docs/embedded-stack.md, measured with ``benchmarks/idle_fetch.py``). No client setting stops it:
``fetch.min.bytes`` is ignored too, and ``pause()``/``resume()`` stop the spin but the first fetch
after a resume waited up to a second (librdkafka wakes its broker thread late).

What works is to take the partitions away: after a consume that drained what was there, the
pacer unassigns them (librdkafka stops fetching them) and, ``pause_s`` later, assigns them again
at the positions it tracked, so fetching starts at once from the next unread record. A record
is therefore never skipped or read twice by pacing; it waits at most ``pause_s`` (plus the
listen window) longer when the topic is quiet, and not at all while records keep coming (a full
batch is followed by the next consume straight away).

Where the positions come from:

- every record handed out moves its partition's position to ``offset + 1``;
- a partition not read since it was assigned starts where the assignment put it: for readers
  that assign themselves, the offset they gave (a logical one such as ``OFFSET_BEGINNING`` is
  resolved to the partition's first offset); for group members, the committed offset, or the
  first offset when nothing was committed (the groups' ``auto.offset.reset`` is earliest).
  Re-assigning at explicit offsets matters: at a logical offset librdkafka would look the
  offset up again on every turn, and the first fetch came too late for the listen window.
- a partition whose position cannot be found is never held back (it costs the spin, not a record).

Group members must call ``rebalanced()`` from their assign, revoke and lost callbacks: a
rebalance that happens while the pacer holds the partitions back replaces the assignment, and
the pacer then forgets what it held instead of restoring a stale one.

A short consume right after the partitions come back does not prove the topic quiet: on a busy
machine the first fetch may not have answered within the listen window. The pacer rests only
when no partition is known to hold unread records (its position is at the high watermark of
the last fetch response), so a backlog is never starved by the pauses.

With ``pause_s`` 0 (the default, for Apache Kafka) ``consume`` is the consumer's own.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from confluent_kafka import OFFSET_END, Consumer, KafkaException, Message, TopicPartition

Position = tuple[str, int]


class FetchPacer:
    def __init__(self, consumer: Consumer, pause_s: float, listen_s: float = 0.005, *,
                 verify_every_s: float = 1.0, timeout_s: float = 5.0) -> None:
        self.consumer = consumer
        self.pause_s = max(0.0, pause_s)
        self.listen_s = listen_s
        self.verify_every_s = verify_every_s
        self.timeout_s = timeout_s
        self._positions: dict[Position, int] = {}
        self._held_back: list[TopicPartition] | None = None
        self._resume_at = 0.0
        self._next_verify = 0.0
        self.rests = 0

    @property
    def enabled(self) -> bool:
        return self.pause_s > 0

    @property
    def resting(self) -> bool:
        return self._held_back is not None

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Assign partitions (for consumers outside a group), remembering where each starts."""
        partitions = list(partitions)
        self._held_back = None
        self._positions = {}
        if self.enabled:
            for tp in partitions:
                self._positions[(tp.topic, tp.partition)] = self._resolve(tp, tp.offset)
        self.consumer.assign(partitions)

    def add(self, partitions: Iterable[TopicPartition]) -> None:
        """Assign more partitions (for consumers outside a group), keeping those assigned.

        While the pacer holds the assignment back, the new partitions are held back with it and
        come back with it; otherwise they are added at once (``incremental_assign``).
        """
        partitions = list(partitions)
        if self.enabled:
            resolved = []
            for tp in partitions:
                position = self._positions[(tp.topic, tp.partition)] = self._resolve(tp, tp.offset)
                # At an explicit offset, as ``consume`` assigns them again after a rest.
                resolved.append(TopicPartition(tp.topic, tp.partition, position) if position >= 0 else tp)
            partitions = resolved
        if self._held_back is not None:
            self._held_back += partitions
        else:
            self.consumer.incremental_assign(partitions)

    def rebalanced(self, assigned: list[TopicPartition] | None = None) -> None:
        """The group changed this member's partitions: positions and anything held back are void.

        With ``assigned`` (from an assign callback), each partition's position becomes its
        committed offset, or its first offset when the group has committed none (streamloop's
        groups reset to the earliest record).
        """
        self._positions = {}
        self._held_back = None
        if not assigned or not self.enabled:
            return
        try:
            committed = self.consumer.committed(assigned, timeout=self.timeout_s)
        except KafkaException:
            return  # unknown positions: the pacer does not rest until records tell it where it is
        for tp in committed:
            self._positions[(tp.topic, tp.partition)] = self._resolve(tp, tp.offset)

    def position(self, topic: str, partition: int) -> int | None:
        """The next offset this consumer reads from the partition, when known."""
        offset = self._positions.get((topic, partition))
        return offset if offset is not None and offset >= 0 else None

    def seek(self, position: TopicPartition) -> None:
        """Read an assigned partition again from ``position.offset``; held back, it comes back there."""
        where = (position.topic, position.partition)
        if self.enabled:
            self._positions[where] = position.offset
        if self._held_back is not None:
            self._held_back = [position if (tp.topic, tp.partition) == where else tp for tp in self._held_back]
        else:
            self.consumer.seek(position)

    def consume(self, num_messages: int, timeout_s: float) -> list[Message]:
        if not self.enabled:
            return self.consumer.consume(num_messages, timeout_s)
        if self._held_back is not None:
            remaining = self._resume_at - time.monotonic()
            if remaining > 0:
                # Nothing is assigned, so this only serves callbacks (rebalances, errors) and waits.
                events = self.consumer.consume(num_messages, min(remaining, timeout_s))
                if events or time.monotonic() < self._resume_at:
                    return events
            if self._held_back is not None:  # a rebalance may have replaced the assignment meanwhile
                self.consumer.assign(self._held_back)
                self._held_back = None
        messages = self.consumer.consume(num_messages, self.listen_s)
        for message in messages:
            if message.error() is None:
                self._positions[(message.topic(), message.partition())] = message.offset() + 1
        if len(messages) < num_messages:
            self._rest()
        return messages

    def _rest(self) -> None:
        assignment = self.consumer.assignment()
        if not assignment:
            return
        restart = [TopicPartition(tp.topic, tp.partition, self._positions.get((tp.topic, tp.partition), -1))
                   for tp in assignment]
        if any(tp.offset < 0 for tp in restart) or self._unread_records_known(restart):
            return
        self._held_back = restart
        self._resume_at = time.monotonic() + self.pause_s
        self.consumer.unassign()
        self.rests += 1

    def _unread_records_known(self, restart: list[TopicPartition]) -> bool:
        """Whether a partition is known to hold records past its position.

        Usually from the high watermark of the last fetch response (no request). That value may
        be stale when the fetch after a re-assignment has not answered yet, so once every
        ``verify_every_s`` the broker is asked: under any load a backlog waits at most that long.
        """
        cached = time.monotonic() < self._next_verify
        if not cached:
            self._next_verify = time.monotonic() + self.verify_every_s
        for tp in restart:
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, timeout=self.timeout_s, cached=cached)
            except KafkaException:
                continue
            if high is not None and high > tp.offset:
                return True
        return False

    def _resolve(self, tp: TopicPartition, offset: int) -> int:
        """An explicit offset for a logical one: the first record, or the end for OFFSET_END."""
        if offset >= 0:
            return offset
        try:
            low, high = self.consumer.get_watermark_offsets(tp, timeout=self.timeout_s)
        except KafkaException:
            return -1
        return high if offset == OFFSET_END else low
