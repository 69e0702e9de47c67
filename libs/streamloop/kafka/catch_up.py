"""Whether a reader that assigns itself partitions has read them up to where they ended when it began.

A reader outside a group (a table reader, the dashboard's) takes the high watermark of each
partition when it assigns it as the end to reach: what it holds once every partition is read that
far is what the topic held then, and records written later are live changes, not a backlog.

Usage::

    ends = end_offsets(consumer, topic, partitions, timeout_s)   # before assigning them
    pending = {(topic, p) for p, end in ends.items() if end > 0}
    ...
    pending = still_behind(pacer, pending, {(topic, p): end for p, end in ends.items()}, messages)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streamloop.kafka.pacing import FetchPacer

log = logging.getLogger(__name__)

Partition = tuple[str, int]


def end_offsets(consumer: Consumer, topic: str, partitions: Iterable[int], timeout_s: float) -> dict[int, int]:
    """Each partition's high watermark, 0 for one that holds nothing (nothing to wait for); raises KafkaException."""
    ends = {}
    for partition in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
        ends[partition] = high if high > low else 0
    return ends


def still_behind(pacer: FetchPacer, pending: set[Partition], ends: Mapping[Partition, int],
                 messages: list[Message]) -> set[Partition]:
    """The partitions of ``pending`` not read up to their end yet, once ``messages`` are read."""
    for message in messages:
        where = (message.topic(), message.partition())
        if message.error() is None and message.offset() + 1 >= ends.get(where, 0):
            pending.discard(where)
    if pending and not messages:
        # Control records (transaction markers) are never delivered; the position passes them.
        # While the pacer holds the partitions back, its own position is the one known.
        try:
            for tp in pacer.consumer.position([TopicPartition(topic, p) for topic, p in pending]):
                offset = pacer.position(tp.topic, tp.partition) if pacer.resting else tp.offset
                if offset is not None and offset >= ends[(tp.topic, tp.partition)]:
                    pending.discard((tp.topic, tp.partition))
        except KafkaException as exc:
            log.debug("position check skipped: %s", exc)
    return pending
