"""Active/standby for a service whose state is global: a lease held through a one-partition group.

Every replica joins the consumer group ``<group>.lease`` (``lease_group``) on a one-partition topic. Kafka gives that
one partition to exactly one member: that replica is active and runs the stage runner, which is
then the only member of the service's own group and gets every input partition. The others
wait in the lease group. When the active replica dies, stalls or leaves, its lease-group session
ends, Kafka hands the partition to a standby, and the standby starts its runner (rebuilding its
state as after a restart). Takeover takes about one ``session.timeout.ms`` after a crash, and at
once after a clean stop of a dynamic member (a static member, ``group.instance.id``, never leaves
on close: its own restart takes the lease back without a rebalance; a standby waits out its session).

A stalled replica that comes back finds its lease revoked on its next poll and stops its runner;
until then both runners may briefly share the input partitions (at-least-once: duplicates, no loss).
The drift detector (global windows), the model publisher (the registry's single writer) and the
retrainer (one online challenger learning from every label) use it.

The lease's topic is one of the service's data topics, which the lease consumer is assigned but
never reads (paused) nor commits on: the lease group is no reader of it. Its id always ends with
``LEASE_GROUP_SUFFIX`` (the constructor refuses any other), and a service's is its own consumer
group's id with that suffix (``lease_group``), under ``streamloop.`` like every service group: that
is how consumer lag (streamloop.kafka.lag) knows to leave it out instead of showing it behind by
every record of the topic, and still shows another application's group that happens to end the same way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from streamloop.kafka.configuration import KafkaSettings

log = logging.getLogger(__name__)

LEASE_GROUP_SUFFIX = ".lease"


def lease_group(group_id: str) -> str:
    """The lease group of the service whose consumer group is ``group_id``."""
    return f"{group_id}{LEASE_GROUP_SUFFIX}"


def is_lease_group(group_id: str) -> bool:
    """Whether ``group_id`` is a streamloop service's lease (``[prefix]streamloop.<pipeline>.<service>.lease``)."""
    return group_id.endswith(LEASE_GROUP_SUFFIX) and ".streamloop." in f".{group_id}"


class LeaderLease:
    def __init__(self, kafka: KafkaSettings, group_id: str, topic: str, poll_s: float = 0.5) -> None:
        if not group_id.endswith(LEASE_GROUP_SUFFIX):
            # Consumer lag would count it as a reader of ``topic`` that never commits.
            raise ValueError(f"a lease group's id ends with {LEASE_GROUP_SUFFIX!r} (lease_group), not {group_id!r}")
        self.group_id = group_id
        self.topic = topic
        self.poll_s = poll_s
        # cooperative-sticky: a standby joining does not take the partition from the active replica
        # (an eager rebalance would revoke it and could hand it to the newcomer).
        self._config = kafka.consumer(group_id, **{"auto.offset.reset": "latest",
                                                   "partition.assignment.strategy": "cooperative-sticky"})
        self._consumer: Consumer | None = None
        self._held = threading.Event()
        self._lost = threading.Event()
        self._on_lost: Callable[[], None] | None = None
        self._watching = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._held.is_set()

    @property
    def lost(self) -> bool:
        """True when the lease was taken away while held (as opposed to released on shutdown)."""
        return self._lost.is_set()

    def acquire(self, stop: threading.Event) -> bool:
        """Wait (as a standby) until this replica holds the lease; False if ``stop`` is set first."""
        if self._consumer is None:
            self._consumer = Consumer(self._config)
            self._consumer.subscribe([self.topic], on_assign=self._assigned, on_revoke=self._revoked,
                                     on_lost=self._revoked)
            log.info("lease: waiting for %s[0] in group %s", self.topic, self.group_id)
        self._lost.clear()
        while not stop.is_set() and not self.held:
            self._consumer.poll(self.poll_s)  # the topic's records are never fetched (paused); only membership matters
            self._stop_fetching()
        return self.held

    def watch(self, on_lost: Callable[[], None]) -> None:
        """Keep the membership alive from a thread; ``on_lost`` runs if the lease is taken away."""
        self._on_lost = on_lost
        self._watching.set()
        self._thread = threading.Thread(target=self._keep_alive, name=f"lease {self.group_id}", daemon=True)
        self._thread.start()

    def unwatch(self) -> None:
        self._watching.clear()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self._on_lost = None

    def close(self) -> None:
        self.unwatch()
        if self._consumer is not None:
            self._consumer.close()  # a dynamic member leaves the group (a static one waits out its session)
            self._consumer = None
        self._held.clear()

    def _keep_alive(self) -> None:
        while self._watching.is_set() and self._consumer is not None:
            self._consumer.poll(self.poll_s)
            self._stop_fetching()

    def _stop_fetching(self) -> None:
        """Only membership matters, so the lease partition is paused: no fetches at all.

        On a broker that answers empty fetches at once (the embedded noida-db) an unpaused lease
        consumer spins, about 15 % of a core (kafka/pacing.py). Pausing is idempotent, and a
        partition assigned by a later rebalance is paused on the next turn.
        """
        if self._consumer is None:
            return
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.pause(assignment)

    def _assigned(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions:
            log.info("lease: acquired (%s)", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))
            self._held.set()

    def _revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not partitions or not self.held:
            return
        self._held.clear()
        if self._watching.is_set():
            log.warning("lease: lost; stopping the runner and going back to standby")
            self._lost.set()
            if self._on_lost is not None:
                self._on_lost()
