"""The collector's own topics, which either runtime creates at start, before it reads anything.

Both runtimes write the same four: ``<group>-by-event`` (the inputs keyed by event id),
``<group>-joined`` (the joined examples, into the metrics stage) and a dead-letter topic for each.
They are created as the catalog's topics are replicated (STREAMLOOP_TOPIC_*, deploy/create_topics.py),
so that ``acks=all`` means the same on all of them; a broker that does not create topics on first
use (docker-compose.yml's Apache Kafka) would otherwise refuse their first record, and a dead
letter that only a rare record needs would find its topic missing long after the start.

The keyed topic, and with the faust runtime its join-state changelog, are grown at start to the
partitions the collector writes to (:func:`grow_keyed_topics`).
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from services.ground_truth_collector.settings import SERVICE
from streamloop.errors import StreamloopError
from streamloop.kafka.configuration import NewTopicSettings

log = logging.getLogger(__name__)
ADMIN_TIMEOUT_S = 30.0


class KeyedTopicError(StreamloopError):
    """A keyed topic has fewer partitions than the collector writes to, and could not be grown."""


def keyed_topic(group: str) -> str:
    return f"{group}-by-event"


def joined_topic(group: str) -> str:
    return f"{group}-joined"


def dead_letter_topic(topic: str) -> str:
    """An internal topic's own dead letters: a keyed record with no known origin, a joined example
    the metrics stage cannot read (it wrote it itself, so: a bug)."""
    return f"{topic}.dlq"


def internal_topics(group: str, keyed_partitions: int, replicated: NewTopicSettings) -> list[NewTopic]:
    """The four topics as either runtime creates them (existing ones are left as they are)."""
    keyed, joined = keyed_topic(group), joined_topic(group)
    return [NewTopic(name, partitions, replicated.replication_factor, config=replicated.config())
            for name, partitions in ((keyed, keyed_partitions), (joined, 1), (dead_letter_topic(keyed), 1),
                                     (dead_letter_topic(joined), 1))]


def grow_keyed_topics(admin: AdminClient, topics: list[str], wanted: int) -> None:
    """Give each of ``topics`` that exists ``wanted`` partitions, or as many as the one with the most.

    An existing topic keeps its count, so after the labels topic grew (docs/operations.md, "Adding
    partitions") the collector would write to keyed partitions that do not exist. The topics are
    grown together because faust's assignor gives a worker a partition of the keyed topic and the
    same partition of the join-state changelog only while both have one count: grown alone (by
    hand, say), the keyed topic would be read by one worker while another restored its state. A
    topic cannot shrink: one with more partitions than ``wanted`` keeps them (the extra ones get no
    records) and the others follow it. A topic that does not exist is left to whoever creates it
    (faust creates the changelog with ``wanted`` partitions).
    """
    # All topics at once: a metadata request naming a topic may create it on a broker that creates
    # topics on first use, with the broker's default partition count.
    listed = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    counts = {topic: len(listed[topic].partitions) for topic in topics if topic in listed}
    target = max([wanted, *counts.values()])
    for topic, count in counts.items():
        if count > wanted:
            log.warning("%s: %s has %d partitions, more than the %d of COLLECTOR_KEYED_PARTITIONS (unset: the labels "
                        "topic's); partitions %d to %d get no records", SERVICE, topic, count, wanted, wanted,
                        count - 1)
    for topic, count in counts.items():
        if count < target:
            _grow(admin, topic, count, target)


def _grow(admin: AdminClient, topic: str, existing: int, target: int) -> None:
    log.warning("%s: growing %s from %d to %d partitions (COLLECTOR_KEYED_PARTITIONS, unset: the labels topic's); "
                "until the join horizon has passed, a label may miss an event keyed before", SERVICE, topic, existing,
                target)
    try:
        for future in admin.create_partitions([NewPartitions(topic, target)],
                                              operation_timeout=ADMIN_TIMEOUT_S).values():
            future.result(ADMIN_TIMEOUT_S)
    except KafkaException as exc:
        if _partition_count(admin, topic) < target:  # else another replica grew it first
            raise KeyedTopicError(
                f"{topic} has {existing} partitions, fewer than the {target} the collector writes to "
                f"(COLLECTOR_KEYED_PARTITIONS, unset: the labels topic's), and could not be grown ({exc.args[0]}): "
                f"add them with kafka-topics.sh --alter --topic {topic} --partitions {target}") from exc
    deadline = time.monotonic() + ADMIN_TIMEOUT_S
    while _partition_count(admin, topic) < target:  # the producer that writes to them must see them
        if time.monotonic() > deadline:
            raise KeyedTopicError(f"{topic} grown to {target} partitions, but not visible after {ADMIN_TIMEOUT_S:.0f}s")
        time.sleep(0.2)


def _partition_count(admin: AdminClient, topic: str) -> int:
    listed = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    return len(listed[topic].partitions) if topic in listed else 0
