"""Producing to and draining topics in tests, with the project's own serdes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamloop.kafka.admin import ensure_topics


def create_topics(bootstrap: str, names: Iterable[str], partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    ensure_topics(admin, [NewTopic(n, partitions, 1) for n in names])


def produce(bootstrap: str, topic: str, items: Iterable[tuple[bytes | str | None, bytes | None]],
            headers: list[tuple[str, bytes]] | None = None) -> int:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5})
    failures: list[str] = []
    count = 0

    def on_delivery(error, _message) -> None:
        if error is not None:
            failures.append(error.str())

    for key, value in items:
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        count += 1
    producer.flush(60)
    assert not failures, failures[:3]
    return count


@dataclass
class Drained:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    partition: int
    offset: int


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "streamloop-test-probe"})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in metadata.partitions}
    finally:
        consumer.close()


def drain(bootstrap: str, topic: str, expected: int | None = None, timeout_s: float = 60.0,
          until: Callable[[list[Drained]], bool] | None = None) -> list[Drained]:
    """Read a topic from the beginning (no group commits) until ``expected`` records or the end."""
    ends = end_offsets(bootstrap, topic)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "streamloop-test-drain",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 10})
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    records: list[Drained] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.2):
                if message.error() is None:
                    records.append(Drained(message.key(), message.value(), list(message.headers() or []),
                                           message.partition(), message.offset()))
            if expected is not None and len(records) >= expected:
                break
            if until is not None and until(records):
                break
            if expected is None and until is None and len(records) >= sum(ends.values()):
                break
    finally:
        consumer.close()
    return records
