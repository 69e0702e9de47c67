"""Records for the registry's tests: labeled examples with chosen predictions, candidates, stores.

Used by the unit and integration tests of the retrainer and the model publisher.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from streamloop.contracts.pipeline import PipelineSpec
from streamloop.kafka.records import ConsumedRecord
from streamloop.ml import ArtifactIdentity, ArtifactSigner, ArtifactStore, build_model
from streamloop.ml.registry import code_version, new_version

SIGNING_KEY = b"test-signing-key-0123456789abcdef"
T0 = 1_700_000_000_000


def signed_by_streamloop_0_1(digest: str, key: bytes = SIGNING_KEY) -> str:
    """The signature streamloop 0.1 wrote: an HMAC over the artifact's digest alone, no identity."""
    return hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()


def artifact_store(root: Path, key: bytes = SIGNING_KEY) -> ArtifactStore:
    return ArtifactStore(root, ArtifactSigner({"default": key}, "default"))


def with_policy(spec: PipelineSpec, **sections: dict[str, Any]) -> PipelineSpec:
    """The spec with some fields of its retrain/promotion/staleness sections replaced."""
    update = {name: getattr(spec, name).model_copy(update=fields) for name, fields in sections.items()}
    return spec.model_copy(update=update)


def prediction(version: str, p_true: float, role: str = "CHAMPION", model_name: str = "fraud") -> dict[str, Any]:
    return {"model_name": model_name, "model_version": version, "role": role,
            "predicted_class": "true" if p_true >= 0.5 else "false",
            "probabilities": {"true": p_true, "false": 1.0 - p_true}, "value": None}


def labeled_example(i: int, label: bool, predictions: Iterable[dict[str, Any]] = (), *, pipeline: str = "card-fraud",
                    segments: dict[str, str] | None = None, amount: float | None = None,
                    event_id: str | None = None) -> dict[str, Any]:
    amount = amount if amount is not None else (900.0 if label else 20.0) + (i % 7)
    return {
        "event_id": event_id or f"evt-{i}", "entity_key": f"card-{i % 13}", "pipeline": pipeline,
        "event_time": T0 + i * 1000, "label_time": T0 + i * 1000 + 500, "label": label,
        "numeric": {"amount": amount, "distance_from_home_km": 3.0 if not label else 800.0},
        "categorical": {"merchant_category": "jewelry" if label else "grocery"},
        "segments": segments or {"country": "US"}, "predictions": list(predictions), "features_offset": None,
    }


def consumed(topic: str, value: dict[str, Any], offset: int, partition: int = 0, key: str | None = None,
             timestamp_ms: int = T0) -> ConsumedRecord:
    return ConsumedRecord(topic, partition, offset, key, value, timestamp_ms)


def examples(count: int, *, start: int = 0, seed: int = 7, fraud_share: float = 0.3,
             models: dict[str, tuple[float, str]] | None = None,
             segments: Iterator[dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """``count`` labeled examples; ``models`` maps version -> (skill, role): the probability a model
    gives the true class is ``skill`` (1.0 perfect, 0.5 coin), jittered per event."""
    rng = random.Random(seed)
    out = []
    for i in range(start, start + count):
        label = rng.random() < fraud_share
        preds = []
        for version, (skill, role) in (models or {}).items():
            p_right = min(max(skill + rng.uniform(-0.05, 0.05), 0.01), 0.99)
            preds.append(prediction(version, p_right if label else 1.0 - p_right, role))
        out.append(labeled_example(i, label, preds, segments=next(segments) if segments else None))
    return out


def candidate(spec: PipelineSpec, store: ArtifactStore, *, model: Any = None, trigger: str = "ONLINE",
              parent: str | None = None, created_ms: int = T0) -> dict[str, Any]:
    stored = store.store_model(model if model is not None else build_model(spec.model))
    version = new_version(spec.model.name, stored.sha256, created_ms)
    ref = store.sign(stored, ArtifactIdentity(spec.name, spec.model.name, version))
    return {
        "pipeline": spec.name, "model_name": spec.model.name,
        "version": version, "parent_version": parent,
        "trigger": trigger, "estimator": spec.model.estimator, "params_json": "{}",
        "artifact": ref.to_record(), "source_offsets": [], "sample_count": 10,
        "heldout_metrics": {"log_loss": 0.3, "accuracy": 0.9}, "code_version": code_version(),
        "created_at": created_ms,
    }


def drift_event(severity: str = "WARNING", kind: str = "CONCEPT", pipeline: str = "card-fraud", *,
                detector: str = "adwin", model_version: str = "fraud-bootstrap-00000000") -> dict[str, Any]:
    """A DriftEvent detected at T0 (its window ends there), as the retrainer reads it."""
    return {"pipeline": pipeline, "kind": kind, "detector": detector, "feature": None, "statistic": 1.0,
            "p_value": None, "effect_size": None, "severity": severity, "window_start": T0, "window_end": T0,
            "model_name": "fraud", "model_version": model_version, "detected_at": T0}
