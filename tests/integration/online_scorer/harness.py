"""Driving the online scorer in tests: deployments, feature vectors, stored features, the app itself."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from services.online_scorer.app import ScorerApp, build
from services.online_scorer.settings import ScorerSettings
from streamloop.contracts import Catalog, PipelineSpec
from streamloop.ml import ArtifactStore
from streamloop.ml.settings import ArtifactSettings
from streamloop.serde import make_serde
from streamloop.store import FeatureWrite, RedisFeatureStore
from streamloop.telemetry import TelemetrySettings, configure_telemetry
from tests.redis_clients import watch_redis_clients
from tests.topic_io import drain, produce
from tests.unit.online_scorer.fakes import categorical_features, numeric_features, slot_key

EVENT_TIME = 1_700_000_000_000


def artifact_store(env: dict[str, str]) -> ArtifactStore:
    return ArtifactSettings(store=env["STREAMLOOP_ARTIFACT_STORE"],
                            signing_key=env["STREAMLOOP_ARTIFACT_SIGNING_KEY"]).artifact_store()


def serde(catalog: Catalog, role: str):
    return make_serde(catalog[role].schema, catalog.repository, catalog[role].name)


def publish_deployment(bootstrap: str, catalog: Catalog, record: dict[str, Any] | None, key: str | None = None) -> None:
    value = None if record is None else serde(catalog, "model_deployments").encode(record)
    produce(bootstrap, catalog["model_deployments"].name, [((key or slot_key(record)).encode(), value)])


def feature_vector(spec: PipelineSpec, event_id: str, entity: str, numeric: dict, categorical: dict,
                   event_time: int = EVENT_TIME) -> dict[str, Any]:
    return {"event_id": event_id, "entity_key": entity, "event_time": event_time, "pipeline": spec.name,
            "numeric": numeric, "categorical": categorical, "segments": {}, "computed_at": event_time + 3,
            "late": False}


def random_vectors(spec: PipelineSpec, count: int, prefix: str, entities: int = 50, seed: int = 0,
                   event_time: int | None = None) -> list[dict[str, Any]]:
    """``count`` vectors over ``entities`` cards, one ms apart, ending a minute ago by default (inside the TTL)."""
    rng = random.Random(seed)
    if event_time is None:
        event_time = int(time.time() * 1000) - 60_000 - count
    return [feature_vector(spec, f"{prefix}-{i}", f"card-{i % entities}", numeric_features(rng),
                           categorical_features(rng), event_time + i) for i in range(count)]


def produce_vectors(bootstrap: str, catalog: Catalog, vectors: Iterable[dict[str, Any]]) -> int:
    encode = serde(catalog, "features").encode
    return produce(bootstrap, catalog["features"].name, ((v["entity_key"].encode(), encode(v)) for v in vectors))


def drain_decoded(bootstrap: str, catalog: Catalog, role: str, *, expected: int | None = None,
                  timeout_s: float = 60.0, until=None) -> list[dict[str, Any]]:
    decode = serde(catalog, role).decode
    wrapped = None if until is None else (lambda records: until([decode(r.value) for r in records]))
    return [decode(r.value) for r in drain(bootstrap, catalog[role].name, expected=expected, timeout_s=timeout_s,
                                          until=wrapped)]


def feature_store(env: dict[str, str], spec: PipelineSpec) -> RedisFeatureStore:
    return RedisFeatureStore(env["REDIS_URL"], spec.name, ttl_ms=spec.features.ttl, key_prefix=env["REDIS_KEY_PREFIX"])


def write_features(store: RedisFeatureStore, vectors: Iterable[dict[str, Any]], now_ms: int) -> None:
    """What the featurizer does for each vector: the entity's latest features, versioned by event time."""
    store.write_many("features", [FeatureWrite(v["entity_key"], v["event_time"], i, v["numeric"], v["categorical"])
                                  for i, v in enumerate(vectors)], now_ms=now_ms)


@contextlib.contextmanager
def running_scorer(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, **settings: str) -> Iterator[ScorerApp]:
    """The scorer app in this process (on a thread), on a free gRPC port; stopped on exit, its Redis client closed."""
    for name, value in {**env, "SCORER_GRPC_PORT": "0", **settings}.items():
        monkeypatch.setenv(name, value)
    scorer_settings = ScorerSettings()
    redis_clients = watch_redis_clients(monkeypatch)
    telemetry = configure_telemetry(TelemetrySettings(service_name="online-scorer"), install_global=False)
    app = build(scorer_settings, telemetry=telemetry)
    thread = threading.Thread(target=app.run, name="scorer-app")
    thread.start()
    try:
        yield app
    finally:
        app.stop()
        thread.join(60)
        assert not thread.is_alive(), "the scorer did not stop"
        assert redis_clients.all_closed, f"the scorer stopped with Redis clients open: {redis_clients}"
