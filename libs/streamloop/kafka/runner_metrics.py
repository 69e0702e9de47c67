"""What a stage runner reports: per-batch figures and lag (``RunnerMetrics``), and its own counts (``RunnerStats``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class RunnerMetrics(Protocol):
    """What the runner reports, once per batch (streamloop.telemetry.ServiceMetrics implements it)."""

    def record_batch(self, topic: str, partition_count: int, records: int, seconds: float,
                     errors: int = 0, latencies: Sequence[float] | None = None) -> None: ...

    def record_dead_letters(self, topic: str, error_class: str, count: int = 1) -> None: ...

    def record_dropped_outputs(self, topic: str, reason: str, count: int = 1) -> None: ...

    def record_broker_unreachable(self) -> None: ...

    def set_lag(self, group: str, lags: dict[tuple[str, int], float],
                behind_since: dict[tuple[str, int], float] | None = None) -> None: ...

    def forget_lag(self, group: str) -> None: ...


class _NoMetrics:
    def record_batch(self, topic: str, partition_count: int, records: int, seconds: float,
                     errors: int = 0, latencies: Sequence[float] | None = None) -> None:
        pass

    def record_broker_unreachable(self) -> None:
        pass

    def record_dead_letters(self, topic: str, error_class: str, count: int = 1) -> None:
        pass

    def record_dropped_outputs(self, topic: str, reason: str, count: int = 1) -> None:
        pass

    def set_lag(self, group: str, lags: dict[tuple[str, int], float],
                behind_since: dict[tuple[str, int], float] | None = None) -> None:
        pass

    def forget_lag(self, group: str) -> None:
        pass


@dataclass
class RunnerStats:
    consumed: int = 0
    produced: int = 0
    dead_lettered: int = 0
    # Outputs with no input record to dead-letter (a tick's) that Kafka refused for good or that did
    # not match their schema: lost.
    dropped: int = 0
    batches: int = 0
    commits_failed: int = 0
    delivery_retries: int = 0
    resent: int = 0  # acknowledged outputs sent again after a fatal producer error
    dependency_waits: int = 0  # retries while a Schema Registry or Redis was unavailable
