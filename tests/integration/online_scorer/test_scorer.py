"""The online scorer against the embedded broker and Redis: both paths, versions, refused artifacts."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from services.online_scorer.client import score
from streamloop.contracts.generated.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from tests.integration.online_scorer.harness import (
    artifact_store,
    drain_decoded,
    feature_store,
    produce_vectors,
    publish_deployment,
    random_vectors,
    running_scorer,
    write_features,
)
from tests.unit.online_scorer.fakes import ConstantClassifier, publish, trained_model

pytestmark = pytest.mark.integration


def test_feature_vectors_in_predictions_out_and_both_paths_agree(
        demo_pipeline, loop_catalog, bootstrap_servers, service_env, monkeypatch) -> None:
    spec = demo_pipeline
    artifacts = artifact_store(service_env)
    publish_deployment(bootstrap_servers, loop_catalog, publish(artifacts, spec, trained_model(spec), "v1"))
    # Each entity's last vector is also its state in Redis, as the featurizer leaves it.
    vectors = random_vectors(spec, 300, "e", entities=30)
    latest = {v["entity_key"]: v for v in vectors}
    now_ms = int(time.time() * 1000)
    with feature_store(service_env, spec) as store:
        write_features(store, latest.values(), now_ms=now_ms)
    with running_scorer(service_env, monkeypatch) as app:
        assert app.started.wait(60), "the runner starts once the champion is live"
        produce_vectors(bootstrap_servers, loop_catalog, vectors)
        predictions = drain_decoded(bootstrap_servers, loop_catalog, "predictions", expected=300)
        by_event = {p["event_id"]: p for p in predictions}
        assert set(by_event) == {v["event_id"] for v in vectors}
        for p in predictions:
            assert (p["model_name"], p["model_version"], p["role"]) == ("fraud", "v1", "CHAMPION")
            assert p["features_ref"]["topic"] == loop_catalog["features"].name
            assert p["feature_freshness_ms"] > 0
            assert p["explanation_method"] == "linear_contribution" and len(p["explanation"]) == 3

        channel = grpc.insecure_channel(app.grpc_address)
        stub = scoring_pb2_grpc.ScoringServiceStub(channel)
        for entity, vector in latest.items():
            response = stub.Score(scoring_pb2.ScoreRequest(entity_id=entity, explain=True), timeout=5)
            streamed = by_event[vector["event_id"]]
            assert dict(response.prediction.probabilities) == streamed["probabilities"], entity
            assert response.prediction.action == streamed["action"]
            assert response.model_version == "v1"
            assert [(c.feature, c.contribution) for c in response.explanation.contributions] == [
                (c["feature"], c["contribution"]) for c in streamed["explanation"]]
        channel.close()


def test_a_tampered_artifact_is_refused_and_the_old_model_keeps_serving(
        demo_pipeline, loop_catalog, bootstrap_servers, service_env, monkeypatch) -> None:
    spec = demo_pipeline
    artifacts = artifact_store(service_env)
    publish_deployment(bootstrap_servers, loop_catalog, publish(artifacts, spec, ConstantClassifier(0.1), "v1"))
    vectors = random_vectors(spec, 20, "t", entities=5)
    with feature_store(service_env, spec) as store:
        write_features(store, vectors, now_ms=int(time.time() * 1000))
    with running_scorer(service_env, monkeypatch, STREAMLOOP_INSTANCE_ID="online-scorer-3") as app:
        assert app.started.wait(60)
        tampered = publish(artifacts, spec, ConstantClassifier(0.95), "v2")
        path = Path(tampered["artifact"]["uri"].removeprefix("file://"))
        path.write_bytes(path.read_bytes() + b"\x00")
        publish_deployment(bootstrap_servers, loop_catalog, tampered)

        alerts = drain_decoded(bootstrap_servers, loop_catalog, "alerts", expected=1, timeout_s=30)
        assert [(a["alert"], a["state"], a["model_version"]) for a in alerts] == [("model_load_failed", "RAISED", "v2")]
        assert "content hash does not match" in alerts[0]["message"]
        assert alerts[0]["labels"] == {"slot": "champion", "instance": "online-scorer-3"}
        produce_vectors(bootstrap_servers, loop_catalog, vectors)
        predictions = drain_decoded(bootstrap_servers, loop_catalog, "predictions", expected=20)
        assert {p["model_version"] for p in predictions} == {"v1"}
        assert score(app.grpc_address, "card-0").model_version == "v1"
        assert app.holder.load_failures == 1


def test_nothing_is_consumed_or_served_until_a_champion_is_deployed(
        demo_pipeline, loop_catalog, bootstrap_servers, service_env, monkeypatch) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    spec = demo_pipeline
    vectors = random_vectors(spec, 50, "early", entities=5)
    with feature_store(service_env, spec) as store:
        write_features(store, vectors, now_ms=int(time.time() * 1000))
    produce_vectors(bootstrap_servers, loop_catalog, vectors)
    with running_scorer(service_env, monkeypatch) as app:
        channel = grpc.insecure_channel(app.grpc_address)
        health = health_pb2_grpc.HealthStub(channel)
        stub = scoring_pb2_grpc.ScoringServiceStub(channel)
        time.sleep(2)
        assert not app.started.is_set(), "the runner waits for a champion"
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(scoring_pb2.ScoreRequest(entity_id="card-0"), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE

        publish_deployment(bootstrap_servers, loop_catalog,
                           publish(artifact_store(service_env), spec, ConstantClassifier(0.2), "v1"))
        assert app.started.wait(60)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        predictions = drain_decoded(bootstrap_servers, loop_catalog, "predictions", expected=50)
        assert {p["model_version"] for p in predictions} == {"v1"} and len(predictions) == 50
        assert stub.Score(scoring_pb2.ScoreRequest(entity_id="card-0"), timeout=5).model_version == "v1"
        channel.close()
