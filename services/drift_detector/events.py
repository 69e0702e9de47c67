"""Detections, the champion they are about, and the cooldown that keeps one drift one event."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from streamloop.ml.drift import Severity

Kind = Literal["DATA", "PREDICTION", "CONCEPT"]
SEVERITY_RANK: dict[str, int] = {"INFO": 0, "WARNING": 1, "CRITICAL": 2}


def millis(value: Any) -> int:
    """A timestamp-millis field as decoded (``datetime``) or as written (int) -> epoch ms."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


@dataclass(frozen=True, slots=True)
class Champion:
    """The model version currently serving: what every window and error stream is about."""

    pipeline: str
    model_name: str
    version: str
    deployed_at: int

    @classmethod
    def from_deployment(cls, record: Mapping[str, Any]) -> Champion:
        return cls(record["pipeline"], record["model_name"], record["version"], millis(record["deployed_at"]))


@dataclass(frozen=True, slots=True)
class Detection:
    kind: Kind
    detector: str
    feature: str | None
    statistic: float
    p_value: float | None
    effect_size: float | None
    severity: Severity
    window_start: int
    window_end: int

    @property
    def key(self) -> tuple[str, str, str | None]:
        return self.kind, self.detector, self.feature

    def to_record(self, champion: Champion, detected_at: int) -> dict[str, Any]:
        """The ``streamloop.monitoring.DriftEvent`` record (dicts only at this edge)."""
        return {
            "pipeline": champion.pipeline,
            "kind": self.kind,
            "detector": self.detector,
            "feature": self.feature,
            "statistic": float(self.statistic),
            "p_value": None if self.p_value is None else float(self.p_value),
            "effect_size": None if self.effect_size is None else float(self.effect_size),
            "severity": self.severity,
            "window_start": int(self.window_start),
            "window_end": int(self.window_end),
            "model_name": champion.model_name,
            "model_version": champion.version,
            "detected_at": int(detected_at),
        }


class Cooldown:
    """One event per (kind, detector, feature) per ``cooldown_ms`` of stream time, unless it escalates.

    Stream time is the detection's ``window_end`` (event time), not the wall clock, so a replay
    after a restart or a fast backfill suppresses exactly what the live run would have. Within
    the cooldown a detection of a *higher* severity than the last one emitted still goes out
    (INFO, then CRITICAL: the retrainer hears about the CRITICAL), a repeat does not.
    """

    def __init__(self, cooldown_ms: int) -> None:
        self.cooldown_ms = cooldown_ms
        self._last: dict[tuple[str, str, str | None], tuple[int, int]] = {}

    def allow(self, detection: Detection) -> bool:
        """True (and the cooldown restarts) when the detection is new, escalates, or the cooldown is over."""
        rank = SEVERITY_RANK[detection.severity]
        last = self._last.get(detection.key)
        if last is not None and detection.window_end - last[0] < self.cooldown_ms and rank <= last[1]:
            return False
        self._last[detection.key] = (detection.window_end, rank)
        return True

    def restore(self, record: Mapping[str, Any]) -> None:
        """Take an emitted DriftEvent back in (read from the drift topic after a restart)."""
        key = (str(record["kind"]), str(record["detector"]), record.get("feature"))
        entry = (millis(record["window_end"]), SEVERITY_RANK.get(str(record["severity"]), 0))
        self._last[key] = max(entry, self._last.get(key, entry))

    def clear(self, kinds: tuple[str, ...]) -> None:
        """Forget the cooldowns of these kinds of detection."""
        self._last = {key: last for key, last in self._last.items() if key[0] not in kinds}
