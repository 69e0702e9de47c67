"""KafkaPartitionHistory against the embedded broker: committed offsets, lookback by timestamp, skips."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from services.featurizer.exceptions import RestoreCancelled
from services.featurizer.history import KafkaPartitionHistory
from streamloop.contracts import Catalog
from streamloop.kafka import KafkaSettings
from streamloop.kafka.records import TopicPartitionRef
from streamloop.serde import SingleObjectSerde
from tests.topic_io import create_topics

pytestmark = pytest.mark.integration

T0 = int(time.time() * 1000) - 600_000  # recent: retention counts from the timestamp


@pytest.fixture
def filled(bootstrap_servers: str, unique_name: str, loop_catalog: Catalog):
    """Two partitions of 100 records each, one per second of Kafka timestamp; offset 70 of p0 is garbage."""
    topic = f"{unique_name}.history"
    create_topics(bootstrap_servers, [topic], partitions=2)
    serde = SingleObjectSerde(loop_catalog["input"].schema, loop_catalog.repository)
    producer = Producer({"bootstrap.servers": bootstrap_servers, "enable.idempotence": True})
    for partition in (0, 1):
        for i in range(100):
            value = b"not avro" if (partition, i) == (0, 70) else serde.encode({
                "transaction_id": f"{partition}-{i}", "card_id": "c", "timestamp": T0 + i * 1000, "amount": 1.0,
                "merchant_category": "fuel", "country": "DE"})
            producer.produce(topic, value=value, key=b"c", partition=partition, timestamp=T0 + i * 1000)
    producer.flush(30)
    return topic, serde


def history(bootstrap: str, group: str, topic: str, serde, **kwargs) -> KafkaPartitionHistory:  # noqa: ANN001
    return KafkaPartitionHistory(KafkaSettings(bootstrap_servers=bootstrap), group, {topic: serde}, timeout_s=30,
                                 **kwargs)


def test_replays_from_the_lookback_to_the_end_offset_skipping_undecodable(filled, bootstrap_servers, unique_name):
    topic, serde = filled
    reader = history(bootstrap_servers, unique_name, topic, serde)
    p0, p1 = TopicPartitionRef(topic, 0), TopicPartitionRef(topic, 1)
    got = list(reader.replay({p0: 80, p1: 50}, lookback_ms=20_000))
    by_partition = {p: [r.offset for r in got if r.partition == p] for p in (0, 1)}
    # The record at end - 1 is stamped 79 s (p0) and 49 s (p1); 20 s before: offsets 59 and 29.
    assert by_partition[0] == [o for o in range(59, 80) if o != 70]
    assert by_partition[1] == list(range(29, 50))
    assert got[0].value["transaction_id"] == "0-59" or got[0].value["transaction_id"] == "1-29"
    # A lookback past the start reads from the beginning; twice, so an earlier read leaves nothing paused.
    for _ in range(2):
        assert [r.offset for r in reader.replay({p1: 10}, lookback_ms=10**12)] == list(range(10))


def test_committed_offsets_are_the_groups(filled, bootstrap_servers, unique_name):
    topic, serde = filled
    reader = history(bootstrap_servers, unique_name, topic, serde)
    p0, p1 = TopicPartitionRef(topic, 0), TopicPartitionRef(topic, 1)
    assert reader.committed([p0, p1]) == {p0: None, p1: None}
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": unique_name})
    consumer.commit(offsets=[TopicPartition(topic, 0, 42)], asynchronous=False)
    consumer.close()
    assert reader.committed([p0, p1]) == {p0: 42, p1: None}


def test_a_stop_request_interrupts_a_replay(filled, bootstrap_servers, unique_name):
    topic, serde = filled
    reader = history(bootstrap_servers, unique_name, topic, serde, cancelled=lambda: True)
    with pytest.raises(RestoreCancelled):
        list(reader.replay({TopicPartitionRef(topic, 0): 100}, lookback_ms=10**12))
