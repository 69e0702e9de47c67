"""Replaying the recent labeled examples from Kafka for a rebuild.

A separate consumer that ``assign()``s each partition at its end offset minus the window and reads
up to the end offset seen when it started; it joins no group and commits nothing, so it never
disturbs the retrainer's own consumer group. Each partition contributes up to ``window`` records;
``rebuild.recent_window`` then keeps the ``window`` most recent by label time across partitions.

A read that has not reached every partition's end offset by its deadline fails
(``WindowReadIncomplete``) rather than returning what it has: a partition is read from its oldest
record, so what is missing is the newest, the examples a drift rebuild waited for. The rebuild
then fails and is tried again with backoff (rebuild_policy.py), rather than training on the
concept that stopped holding, or being skipped for too few examples.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streamloop.errors import DependencyUnavailable
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.records import ConsumedRecord
from streamloop.serde import Serde, SerdeError

log = logging.getLogger(__name__)


class WindowReadIncomplete(DependencyUnavailable):
    """Some partitions were not read to their end offset within the read's timeout."""


class KafkaWindowReader:
    """``reader(n)``: the last ``n`` records of every partition of ``topic``, decoded."""

    def __init__(self, kafka: KafkaSettings, topic: str, serde: Serde, timeout_s: float = 60.0) -> None:
        self.kafka = kafka
        self.topic = topic
        self.serde = serde
        self.timeout_s = timeout_s

    def __call__(self, window: int) -> list[ConsumedRecord]:
        config: dict[str, Any] = self.kafka.consumer(f"{self.kafka.client_id}.window.{uuid.uuid4().hex[:12]}",
                                                     **{"enable.partition.eof": True})
        config.pop("group.instance.id", None)
        consumer = Consumer(config)
        try:
            return self._read(consumer, window)
        finally:
            consumer.close()

    def _read(self, consumer: Consumer, window: int) -> list[ConsumedRecord]:
        metadata = consumer.list_topics(self.topic, timeout=self.timeout_s).topics[self.topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=self.timeout_s)
            if high > low:
                ends[partition] = high
                starts.append(TopicPartition(self.topic, partition, max(low, high - window)))
        consumer.assign(starts)
        pending = set(ends)
        records: list[ConsumedRecord] = []
        deadline = time.monotonic() + self.timeout_s
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.2):
                error = message.error()
                partition = message.partition()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(partition)
                    else:
                        log.warning("window read of %s: %s", self.topic, error.str())
                    continue
                offset = message.offset()
                if offset >= ends[partition]:
                    pending.discard(partition)
                    continue
                try:
                    value = self.serde.decode(message.value())
                except SerdeError:
                    continue  # the retrainer's consumer dead-letters it; a rebuild just leaves it out
                key = message.key()
                records.append(ConsumedRecord(self.topic, partition, offset,
                                              key.decode("utf-8", "replace") if key is not None else None,
                                              value, message.timestamp()[1]))
                if offset >= ends[partition] - 1:
                    pending.discard(partition)
        if pending:
            raise WindowReadIncomplete(f"window read of {self.topic}: partitions {sorted(pending)} not read to "
                                       f"their end within {self.timeout_s:g}s")
        return records
