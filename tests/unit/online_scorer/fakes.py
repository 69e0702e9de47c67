"""Test doubles for the scorer: picklable models with known outputs and an in-memory feature store."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from typing import Any

from river import base

from streamloop.contracts import PipelineSpec
from streamloop.ml import ArtifactIdentity, ArtifactRef, ArtifactStore, build_model
from streamloop.ml.deployment_signing import sign_deployment
from streamloop.store import FeatureRead, FeatureStore, FeatureWrite

NUMERIC = ("amount", "amount_mean_1h", "amount_max_1h", "txn_count_10m", "distance_from_home_km")
CATEGORIES = ("grocery", "fuel", "travel", "online", "jewelry")


class ConstantClassifier(base.Classifier):
    """Always the same probability of True; tells which model scored an event."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def learn_one(self, x: dict, y: Any) -> None:
        pass

    def predict_proba_one(self, x: dict) -> dict[bool, float]:
        return {False: 1.0 - self.p, True: self.p}


class BrokenClassifier(base.Classifier):
    """Loads fine, fails its warm-up prediction."""

    def learn_one(self, x: dict, y: Any) -> None:
        pass

    def predict_proba_one(self, x: dict) -> dict[bool, float]:
        raise ValueError("this model cannot predict")


def numeric_features(rng: random.Random) -> dict[str, float]:
    return {name: round(rng.uniform(0, 500), 2) for name in NUMERIC}


def categorical_features(rng: random.Random) -> dict[str, str]:
    return {"merchant_category": rng.choice(CATEGORIES), "country": rng.choice(("DE", "FR", "US"))}


def trained_model(spec: PipelineSpec, seed: int = 7, n: int = 500) -> Any:
    """The spec's model trained on synthetic events where big, far purchases are fraud."""
    from streamloop.ml import assemble_features

    rng = random.Random(seed)
    model = build_model(spec.model)
    for _ in range(n):
        numeric, categorical = numeric_features(rng), categorical_features(rng)
        far_and_big = numeric["amount"] + numeric["distance_from_home_km"] > 600
        fraud = far_and_big or categorical["merchant_category"] == "jewelry"
        model.learn_one(assemble_features(numeric, categorical), fraud)
    return model


def deployment(spec: PipelineSpec, ref: ArtifactRef, version: str, *, slot: str = "champion",
               role: str = "CHAMPION", canary_weight: float = 0.0, deployed_at: int = 1_700_000_000_000) -> dict:
    return {"pipeline": spec.name, "model_name": spec.model.name, "slot": slot, "role": role, "version": version,
            "artifact": ref.to_record(), "canary_weight": canary_weight, "previous_version": None,
            "decision_id": None, "deployed_at": deployed_at}


def publish(store: ArtifactStore, spec: PipelineSpec, model: Any, version: str, **kwargs: Any) -> dict:
    """A deployment record of ``model``, its artifact and the record signed as the publisher signs them."""
    return sign_deployment(store.signer, deployment(
        spec, store.put_model(model, ArtifactIdentity(spec.name, spec.model.name, version)), version, **kwargs))


def slot_key(record: dict) -> str:
    return f"{record['pipeline']}/{record['model_name']}/{record['slot']}"


class MemoryFeatureStore(FeatureStore):
    """The FeatureStore contract in a dict; ``delay_s`` makes reads slow (deadline tests)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.rows: dict[tuple[str, str], FeatureRead] = {}
        self.delay_s = delay_s
        self.reads = 0
        self._lock = threading.Lock()

    def write_many(self, group: str, writes: Sequence[FeatureWrite], now_ms: int | None = None) -> list[bool]:
        with self._lock:
            for w in writes:
                self.rows[(group, w.entity_key)] = FeatureRead(w.entity_key, dict(w.numeric), dict(w.categorical),
                                                               w.event_time_ms, now_ms or w.event_time_ms)
        return [True] * len(writes)

    def read_many(self, group: str, entity_keys: Sequence[str], now_ms: int | None = None) -> list[FeatureRead | None]:
        self.reads += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            return [self.rows.get((group, key)) for key in entity_keys]

    def delete_entities(self, group: str, entity_keys: Sequence[str]) -> int:
        return sum(self.rows.pop((group, key), None) is not None for key in entity_keys)

    def close(self) -> None:
        pass
