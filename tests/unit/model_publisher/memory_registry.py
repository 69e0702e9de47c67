"""``RegistryClient`` over registry topics held in lists: what ``streamloop models`` runs, without a broker.

Used by the unit tests of the registry client and of the ``streamloop models`` commands.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from streamloop.contracts import PipelineSpec, load_catalog
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.records import OutgoingRecord
from streamloop.ml.artifacts import ArtifactSigner
from streamloop.ml.registry_client import Output, RawRecord, RegistryClient
from tests.unit.model_publisher.factories import SIGNING_KEY, T0, candidate
from tests.unit.model_publisher.test_publisher import TOPICS, Harness, promote

# The publisher harness's topic names, as the client's catalog roles.
ROLES = {TOPICS.model_deployments: "model_deployments", TOPICS.model_decisions: "model_decisions",
         TOPICS.model_candidates: "model_candidates"}


class Entry(tuple):
    """One record of a topic: ``(key, value)``, and its ``headers`` (a tombstone's signature) beside."""

    headers: list[tuple[str, bytes]]

    def __new__(cls, key: str | None, value: dict[str, Any] | None, headers: list | None = None) -> Entry:
        entry = super().__new__(cls, (key, value))
        entry.headers = list(headers or [])
        return entry


class InMemoryRegistry(RegistryClient):
    """Reads back, in order, what it or the publisher wrote (headers too: a tombstone's signature); nothing
    is compacted."""

    def __init__(self, pipeline: PipelineSpec, key: bytes = SIGNING_KEY) -> None:
        super().__init__(pipeline, load_catalog(pipeline), KafkaSettings(bootstrap_servers="unused:9092"))
        # The harness's key: it signs and verifies deployment records as the publisher does (no
        # store: the artifacts the tests promote are not verified).
        self._keys = ArtifactSigner({"default": key}, "default")
        self.topics: dict[str, list[tuple[str | None, dict[str, Any] | None]]] = {role: [] for role in ROLES.values()}

    @property
    def signer(self) -> ArtifactSigner:
        return self._keys

    def _read_positioned(self, role: str) -> list[tuple[RawRecord, dict[str, Any] | None]]:
        return [(RawRecord(entry[0], None, 0, offset, list(getattr(entry, "headers", []))), entry[1])
                for offset, entry in enumerate(self.topics[role])]

    def _produce(self, outputs: list[Output]) -> None:
        for role, key, value, *headers in outputs:
            self.topics[role].append(Entry(key, value, headers[0] if headers else None))

    def add(self, records: Iterable[OutgoingRecord]) -> InMemoryRegistry:
        """Append the publisher's (or a test's) records to the topics they were produced to."""
        for record in records:
            if record.topic in ROLES:
                self.topics[ROLES[record.topic]].append(Entry(record.key, record.value, record.headers))
        return self

    def add_candidate(self, candidate: dict[str, Any]) -> str:
        self.topics["model_candidates"].append((candidate["version"], candidate))
        return candidate["version"]

    def champion(self) -> dict[str, Any] | None:
        return self.state().table.champion(self.pipeline.name, self.model_name)


def bootstrapped(harness: Harness) -> tuple[InMemoryRegistry, str]:
    """A registry whose champion is the publisher's bootstrap model, which has no predecessor."""
    first = harness.bootstrap()
    return InMemoryRegistry(harness.spec).add(harness.written), first


def promoted(harness: Harness) -> tuple[InMemoryRegistry, str, str]:
    """A registry whose champion (second) the publisher promoted over its bootstrap model (first), kept for
    the watch; returns (registry, first, second)."""
    first, second = promote(harness)
    return InMemoryRegistry(harness.spec).add(harness.written), first, second


def new_candidates(harness: Harness, registry: InMemoryRegistry, count: int) -> list[str]:
    """``count`` versions the retrainer built, oldest first, on the candidates topic only."""
    return [registry.add_candidate(candidate(harness.spec, harness.store, created_ms=T0 + i + 1))
            for i in range(count)]
