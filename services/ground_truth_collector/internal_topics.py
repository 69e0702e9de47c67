"""The collector's own topics, which either runtime creates at start, before it reads anything.

Both runtimes write the same four: ``<group>-by-event`` (the inputs keyed by event id),
``<group>-joined`` (the joined examples, into the metrics stage) and a dead-letter topic for each.
They are created as the catalog's topics are replicated (STREAMLOOP_TOPIC_*, deploy/create_topics.py),
so that ``acks=all`` means the same on all of them; a broker that does not create topics on first
use (docker-compose.yml's Apache Kafka) would otherwise refuse their first record, and a dead
letter that only a rare record needs would find its topic missing long after the start.
"""

from __future__ import annotations

from confluent_kafka.admin import NewTopic

from streamloop.kafka.configuration import NewTopicSettings


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
