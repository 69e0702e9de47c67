"""The online feature store interface: the latest features of each entity, guarded by event time.

Services depend on :class:`FeatureStore` only; each backend lives in its own module
(``redis_store.py``). Every write carries a version ``(event_time_ms, sequence)`` and a store keeps,
per entity, the write with the greatest version it was given, whatever order writes arrive in.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from streamloop.store.exceptions import InvalidFeatureWrite

# Versions are Kafka timestamps and offsets, both int64 on the wire.
MAX_VERSION_PART = 2**63 - 1


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def is_expired(event_time_ms: int, ttl_ms: int, now_ms: int) -> bool:
    """True once features of ``event_time_ms`` are more than ``ttl_ms`` old at ``now_ms``."""
    return now_ms - event_time_ms > ttl_ms


@dataclass(frozen=True)
class FeatureWrite:
    """The features of one entity computed from one source event.

    ``sequence`` breaks ties between equal event times: use a Kafka offset, which orders events
    of one entity because an entity is always keyed to one partition. The featurizer uses the
    greatest offset it applied to the entity, so a row recomputed over an event that arrived out of
    order replaces the row of the same event time (docs/featurizer.md, "The online store").
    """

    entity_key: str
    event_time_ms: int
    sequence: int
    numeric: dict[str, float] = field(default_factory=dict)
    categorical: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.entity_key, str) or not self.entity_key:
            raise InvalidFeatureWrite(f"entity_key must be a non-empty string, got {self.entity_key!r}")
        for name in ("event_time_ms", "sequence"):
            value = getattr(self, name)
            # bool is an int subclass, and a True offset is always a caller's bug.
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VERSION_PART:
                raise InvalidFeatureWrite(f"{name} must be an int in [0, 2**63 - 1], got {value!r}")

    @property
    def version(self) -> tuple[int, int]:
        return (self.event_time_ms, self.sequence)


@dataclass(frozen=True)
class FeatureRead:
    """The stored features of one entity; ``written_at_ms`` is when that version was first applied."""

    entity_key: str
    numeric: dict[str, float]
    categorical: dict[str, str]
    event_time_ms: int
    written_at_ms: int

    def freshness_ms(self, now_ms: int) -> int:
        """Age of the features by event time (negative if the event time is ahead of ``now_ms``)."""
        return now_ms - self.event_time_ms


class FeatureStore(ABC):
    """Latest features per (group, entity), written by the featurizer and read by the scorer.

    ``now_ms`` defaults to the wall clock; pass it to control time (tests, backfills).
    """

    @abstractmethod
    def write_many(
        self, group: str, writes: Sequence[FeatureWrite], now_ms: int | None = None
    ) -> list[bool]:
        """Apply each write whose version is greater than the stored one; True where applied.

        False means an equal or newer version was already stored, so replays are no-ops.
        """

    @abstractmethod
    def read_many(
        self, group: str, entity_keys: Sequence[str], now_ms: int | None = None
    ) -> list[FeatureRead | None]:
        """The stored features of each entity, in order; None where missing or expired."""

    @abstractmethod
    def delete_entities(self, group: str, entity_keys: Sequence[str]) -> int:
        """Remove entities outright (not a tombstone: an older replay may write them again)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections the store opened itself."""

    def write(self, group: str, write: FeatureWrite, now_ms: int | None = None) -> bool:
        return self.write_many(group, [write], now_ms)[0]

    def read(self, group: str, entity_key: str, now_ms: int | None = None) -> FeatureRead | None:
        return self.read_many(group, [entity_key], now_ms)[0]

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
