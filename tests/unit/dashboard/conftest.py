"""Records as the monitoring topics carry them (decoded), for the dashboard's assembly tests, and a
scorer's /metrics as the dashboard scrapes them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import generate_latest

from streamloop.dashboard.prometheus import Sample, parse_samples
from streamloop.telemetry import ServiceMetrics

T0 = 1_700_000_000_000  # ms


@pytest.fixture
def scorer():
    metrics = ServiceMetrics("online-scorer")
    yield metrics
    metrics.shutdown()


def read(metrics: ServiceMetrics) -> list[Sample]:
    return parse_samples(generate_latest(metrics.registry).decode())


def snapshot(version: str, window_end: int, accuracy: float, *, role: str = "CHAMPION", segment: tuple | None = None,
             samples: int = 100, cost: float | None = None) -> dict[str, Any]:
    metrics = {"accuracy": accuracy, "log_loss": 0.3}
    if cost is not None:
        metrics["cost"] = cost
    return {"pipeline": "card-fraud", "model_name": "fraud", "model_version": version, "role": role,
            "window_start": window_end - 60_000, "window_end": window_end,
            "segment_field": segment[0] if segment else None, "segment_value": segment[1] if segment else None,
            "sample_count": samples, "metrics": metrics, "label_delay_ms": {}, "emitted_at": window_end + 10}


def drift(feature: str | None, detected_at: int, statistic: float = 0.4, kind: str = "DATA",
          detector: str = "psi") -> dict[str, Any]:
    return {"pipeline": "card-fraud", "kind": kind, "detector": detector, "feature": feature, "statistic": statistic,
            "p_value": 0.001, "effect_size": statistic, "severity": "WARNING", "window_start": detected_at - 60_000,
            "window_end": detected_at - 1, "model_name": "fraud", "model_version": "v1", "detected_at": detected_at}


def deployment(version: str, at: int, role: str = "CHAMPION", slot: str = "champion",
               previous: str | None = None) -> dict[str, Any]:
    return {"pipeline": "card-fraud", "model_name": "fraud", "slot": slot, "role": role, "version": version,
            "artifact": {"uri": "file:///a", "sha256": "0" * 64, "signature": "s", "key_id": "default",
                         "size_bytes": 1},
            "canary_weight": 0.0, "previous_version": previous, "decision_id": f"d-{version}", "deployed_at": at}


def decision(kind: str, at: int, to_version: str, from_version: str | None = None,
             decision_id: str | None = None) -> dict[str, Any]:
    return {"decision_id": decision_id or f"{kind}-{to_version}-{at}", "pipeline": "card-fraud", "model_name": "fraud",
            "kind": kind, "from_version": from_version, "to_version": to_version, "automatic": True,
            "reason": f"{kind.lower()} because", "evidence": {"sample_count": 500.0, "p_value": float("nan")},
            "decided_at": at}


def alert(name: str, state: str, at: int, version: str = "v1", labels: dict[str, str] | None = None,
          source: str = "model-publisher") -> dict[str, Any]:
    return {"pipeline": "card-fraud", "alert": name, "state": state, "model_name": "fraud", "model_version": version,
            "message": f"{name} {state.lower()}", "observed": 900.0, "threshold": 600.0, "source": source,
            "at": datetime.fromtimestamp(at / 1000, tz=UTC), "labels": labels or {}}


def prediction(event_id: str, at_ms: int, contributions: list[tuple[str, float]], *, version: str = "v1",
               probability: float = 0.81) -> dict:
    return {"event_id": event_id, "entity_key": "card-7", "event_time": datetime.fromtimestamp(at_ms / 1000, UTC),
            "pipeline": "card-fraud", "model_name": "fraud", "model_version": version, "role": "CHAMPION",
            "predicted_class": "true", "probabilities": {"true": probability, "false": 1 - probability},
            "value": None, "action": "block",
            "explanation": [{"feature": f, "value": 1.0, "contribution": c} for f, c in contributions],
            "explanation_method": "linear", "features_ref": None,
            "scored_at": datetime.fromtimestamp(at_ms / 1000, UTC), "feature_freshness_ms": 3}
