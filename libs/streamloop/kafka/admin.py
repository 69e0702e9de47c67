"""Topic administration from the catalog: create what is missing, never alter what exists."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streamloop.contracts.catalog import Catalog
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.exceptions import BrokerUnavailableError, kafka_error_of

log = logging.getLogger(__name__)


def admin_client(kafka: KafkaSettings) -> AdminClient:
    return AdminClient(kafka.admin())


FIRST_ASK_S = 1.0


def wait_for_broker(admin: AdminClient, timeout_s: float = 30.0) -> None:
    """Block until the broker answers a metadata request, or raise BrokerUnavailableError.

    The first request waits at most FIRST_ASK_S: past it, a line says what the caller waits for
    (a service's start-up said nothing for up to a minute while its broker was down).
    """
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    ask_s = FIRST_ASK_S
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=min(ask_s, max(0.5, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            if last is None:
                error = kafka_error_of(exc)
                log.info("no Kafka broker answered yet (%s); waiting for one, for at most %.0f s in all",
                         error.str() if error is not None else exc, timeout_s)
            last = exc
            ask_s = 5.0
            time.sleep(0.5)
    raise BrokerUnavailableError(f"no Kafka broker answered within {timeout_s:.0f}s ({last})")


def topic_specs(catalog: Catalog, replication_factor: int = 1) -> list[NewTopic]:
    """One NewTopic per catalog topic and per dead-letter topic (same partitions, kept 30 days)."""
    topics = []
    for spec in catalog:
        topics.append(NewTopic(spec.name, spec.partitions, replication_factor, config=spec.config))
        if spec.dead_letter:
            topics.append(NewTopic(spec.dead_letter_topic, spec.partitions, replication_factor,
                                   config={"cleanup.policy": "delete", "retention.ms": str(30 * 86_400_000)}))
    return topics


def ensure_topics(admin: AdminClient, new_topics: list[NewTopic], timeout_s: float = 30.0) -> list[str]:
    """Create missing topics; returns the names created. Existing topics are left as they are."""
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [t for t in new_topics if t.topic not in existing]
    if not missing:
        return []
    created = []
    for name, future in admin.create_topics(missing, operation_timeout=timeout_s).items():
        try:
            future.result(timeout_s)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    _wait_until_visible(admin, [t.topic for t in missing], timeout_s)
    log.info("created %d topics", len(created))
    return created


def _wait_until_visible(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=timeout_s).topics
        if all(n in metadata and not metadata[n].error for n in names):
            return
        time.sleep(0.2)
    raise BrokerUnavailableError(f"topics not visible after {timeout_s:.0f}s: {names}")
