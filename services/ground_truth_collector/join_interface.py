"""What the join (join.py) is given and what it gives back, beside its decisions.

- :class:`JoinConfig`: its horizon, grace, memory and size limits, and the sources that feed its clock.
- :class:`StateStore`: where a partition's entries live (state.py for tests and the faust table,
  redis_state.py for the stage runners), and :data:`META_PREFIX`, the key prefix of each
  partition's own record (its clock) among them.
- :class:`JoinCounters`: what the join did, exported by both runtimes (reporting.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

META_PREFIX = "\x00meta/"


@dataclass(frozen=True)
class JoinConfig:
    pipeline: str
    horizon_ms: int
    grace_ms: int = 30_000
    remember_ms: int = 600_000
    max_entries: int = 200_000
    idle_after_ms: int = 30_000
    future_tolerance_ms: int = 3_600_000
    sources: tuple[str, ...] = ()  # the source partitions ("topic:partition") expected to feed the clock

    def __post_init__(self) -> None:
        if self.horizon_ms <= 0 or self.max_entries < 1 or self.idle_after_ms <= 0:
            raise ValueError("horizon_ms, max_entries and idle_after_ms must be positive")
        if min(self.grace_ms, self.remember_ms, self.future_tolerance_ms) < 0:
            raise ValueError("grace, remember and future tolerance must not be negative")


@dataclass
class JoinCounters:
    """What the join did since the process started (the state itself survives restarts)."""

    labels_in: int = 0
    joined: int = 0
    joined_without_prediction: int = 0
    after_horizon: int = 0
    no_matching_event: int = 0
    duplicate: int = 0
    evicted: int = 0
    expired_events: int = 0  # events that were never labeled
    late_predictions: int = 0  # predictions after their event was joined (scored, not joined)
    duplicate_features: int = 0
    duplicate_predictions: int = 0
    ignored_after_decision: int = 0  # features or predictions for an event already given up on
    replayed: int = 0  # records the entry already holds (a replay after a restart): nothing to do
    implausible_times: int = 0  # times beyond their Kafka timestamp + future tolerance: left out of the clock
    forgotten_too_large: int = 0  # entries deleted at their deadline: remembered, larger than the store takes

    @property
    def decided(self) -> int:
        return self.joined + self.after_horizon + self.no_matching_event + self.duplicate

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class StateStore(Protocol):
    """Where entries live: a dict in tests, a changelog-backed table in the service."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any], partition: int) -> None: ...

    def delete(self, key: str, partition: int) -> None: ...

    def entries(self, partition: int) -> Iterable[tuple[str, dict[str, Any]]]: ...
