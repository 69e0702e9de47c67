"""deploy/create_topics.py and deploy/healthcheck.py, without a broker (their plan and their checks)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, start_http_server

from services.online_scorer.settings import DEFAULT_TLS_HEALTH_PORT
from streamloop.contracts import load_catalog, load_pipeline
from tests.unit.deployment.conftest import DEPLOY, REPO, load_module

create_topics = load_module(DEPLOY / "create_topics.py")
healthcheck = load_module(DEPLOY / "healthcheck.py")
DEMO_SPEC = REPO / "examples" / "card_fraud" / "pipeline.yaml"


@pytest.fixture(scope="module")
def catalog(demo_pipeline):
    return load_catalog(demo_pipeline)


def test_plan_creates_every_catalog_and_dead_letter_topic(catalog):
    plan = create_topics.plan(catalog, replication_factor=3, min_insync_replicas=2)
    by_name = {t.topic: t for t in plan.topics}
    assert set(by_name) == set(catalog.all_topic_names())
    for spec in catalog:
        assert by_name[spec.name].num_partitions == spec.partitions
        assert by_name[spec.name].config["cleanup.policy"] == spec.cleanup_policy
    assert {t.replication_factor for t in plan.topics} == {3}
    assert {t.config["min.insync.replicas"] for t in plan.topics} == {"2"}


def test_plan_registers_every_catalog_topic_value_schema(catalog):
    plan = create_topics.plan(catalog)
    assert set(plan.subjects) == {f"{spec.name}-value" for spec in catalog}
    assert all("min.insync.replicas" not in t.config for t in plan.topics)


def test_min_insync_cannot_exceed_the_replicas(catalog):
    with pytest.raises(ValueError, match="min.insync.replicas"):
        create_topics.plan(catalog, replication_factor=1, min_insync_replicas=2)


def test_schemas_register_once_under_topic_value_subjects(catalog):
    subjects = create_topics.plan(catalog).subjects
    first = create_topics.register_schemas("mock://deploy-scripts", {}, subjects)
    again = create_topics.register_schemas("mock://deploy-scripts", {}, subjects)
    assert first == again  # registering the same schema is a no-op: same ids
    assert len(first) == len(subjects)


def test_waiting_for_the_schemas_ends_when_the_job_has_registered_each(catalog, monkeypatch):
    from confluent_kafka.schema_registry import Schema

    from streamloop.serde.confluent import ConfluentSerde

    registry = f"mock://{uuid.uuid4().hex}"
    subjects = create_topics.plan(catalog).subjects
    assert create_topics.wait_for_subjects(registry, {}, subjects, timeout_s=0) == sorted(subjects)
    first = sorted(subjects)[0]
    # An older schema under the subject is not the one the services write with: still waiting.
    ConfluentSerde.client(registry).register_schema(
        first, Schema(json.dumps({"type": "record", "name": "Old", "fields": []}), "AVRO"))
    assert first in create_topics.wait_for_subjects(registry, {}, subjects, timeout_s=0)
    sleeps: list[float] = []

    def the_job_runs_meanwhile(seconds: float) -> None:
        sleeps.append(seconds)
        create_topics.register_schemas(registry, {}, subjects)

    monkeypatch.setattr(create_topics.time, "sleep", the_job_runs_meanwhile)
    assert create_topics.wait_for_subjects(registry, {}, subjects, timeout_s=60) == []
    assert len(sleeps) == 1


def test_the_init_containers_wait_holds_a_service_until_its_schemas_are_registered(monkeypatch, capsys):
    registry = f"mock://{uuid.uuid4().hex}"
    monkeypatch.setenv("STREAMLOOP_PIPELINE", str(DEMO_SPEC))
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", registry)
    monkeypatch.setattr(create_topics, "AdminClient", lambda _config: None)
    monkeypatch.setattr(create_topics, "wait_for_broker", lambda _admin, timeout_s: None)
    monkeypatch.setattr(create_topics, "wait_for_topics", lambda _admin, _names, _timeout: [])
    assert create_topics.main(["--wait", "0"]) == 1
    assert "create_topics: schemas still not registered after 0s: " in capsys.readouterr().err
    assert create_topics.main(["--wait", "0", "--no-schemas"]) == 0
    create_topics.register_schemas(registry, {}, create_topics.plan(load_catalog(load_pipeline(DEMO_SPEC))).subjects)
    assert create_topics.main(["--wait", "0"]) == 0


def test_dry_run_prints_the_plan(monkeypatch, capsys):
    monkeypatch.setenv("STREAMLOOP_PIPELINE", str(DEMO_SPEC))
    monkeypatch.setenv("STREAMLOOP_TOPIC_PREFIX", "t1.")
    assert create_topics.main(["--dry-run", "--replication-factor", "3"]) == 0
    out = capsys.readouterr().out
    assert "topic t1.features.feature-vector.v1 partitions=6 replication=3" in out
    assert "schema t1.models.model-deployment.v1-value" in out


def test_the_replication_variables_reach_the_plan(monkeypatch, capsys):
    monkeypatch.setenv("STREAMLOOP_PIPELINE", str(DEMO_SPEC))
    monkeypatch.setenv("STREAMLOOP_TOPIC_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("STREAMLOOP_TOPIC_MIN_INSYNC_REPLICAS", "2")
    assert create_topics.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ('topic features.feature-vector.v1 partitions=6 replication=3 '
            'config={"cleanup.policy": "delete", "min.insync.replicas": "2",') in out
    monkeypatch.setenv("STREAMLOOP_TOPIC_REPLICATION_FACTOR", "")  # empty: unset, as in a ${VAR:-} compose entry
    monkeypatch.setenv("STREAMLOOP_TOPIC_MIN_INSYNC_REPLICAS", "")
    assert create_topics.main(["--dry-run"]) == 0
    assert "partitions=6 replication=1 " in capsys.readouterr().out
    monkeypatch.setenv("STREAMLOOP_TOPIC_REPLICATION_FACTOR", "1")
    monkeypatch.setenv("STREAMLOOP_TOPIC_MIN_INSYNC_REPLICAS", "2")
    assert create_topics.main(["--dry-run"]) == 2
    assert "STREAMLOOP_TOPIC_MIN_INSYNC_REPLICAS (2) exceeds STREAMLOOP_TOPIC_REPLICATION_FACTOR (1)" in \
        capsys.readouterr().err


def test_a_bad_spec_exits_2_with_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("STREAMLOOP_PIPELINE", str(tmp_path / "missing.yaml"))
    assert create_topics.main(["--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("create_topics: ")


def test_metrics_check_passes_only_when_the_endpoint_answers():
    server, thread = start_http_server(0, addr="127.0.0.1", registry=CollectorRegistry())
    try:
        port = server.server_port
        assert healthcheck.main(["metrics", "--port", str(port)]) == 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert healthcheck.main(["metrics", "--port", str(port), "--timeout", "1"]) == 1


@contextmanager
def health_service() -> Iterator[tuple[health.HealthServicer, int]]:
    """A gRPC server with the standard health service alone, on a free port: (its servicer, the port)."""
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(None)


def test_grpc_check_follows_the_health_service():
    with health_service() as (servicer, port):
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert healthcheck.main(["grpc", "--port", str(port)]) == 1
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert healthcheck.main(["grpc", "--port", str(port)]) == 0
    assert healthcheck.main(["grpc", "--port", str(port), "--timeout", "1"]) == 1


def test_checks_default_to_the_ports_the_container_s_settings_name():
    # The image sets 9464 and 50051, but a deployment may move them; the check must follow.
    assert healthcheck.default_port("metrics", {}) == 9464
    assert healthcheck.default_port("metrics", {"STREAMLOOP_METRICS_PORT": "9500"}) == 9500
    assert healthcheck.default_port("grpc", {}) == 50051
    assert healthcheck.default_port("grpc", {"SCORER_GRPC_PORT": "6000"}) == 6000
    # A TLS scorer is checked on its plaintext health port, never on the TLS one.
    tls = {"SCORER_GRPC_PORT": "6000", "SCORER_TLS_CERT_FILE": "/certs/tls.crt"}
    assert healthcheck.default_port("grpc", tls) == DEFAULT_TLS_HEALTH_PORT
    assert healthcheck.default_port("grpc", {**tls, "SCORER_HEALTH_PORT": "6001"}) == 6001


def test_the_metrics_check_finds_the_port_in_the_environment(monkeypatch):
    server, thread = start_http_server(0, addr="127.0.0.1", registry=CollectorRegistry())
    try:
        monkeypatch.setenv("STREAMLOOP_METRICS_PORT", str(server.server_port))
        assert healthcheck.main(["metrics"]) == 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    for off in ("0", "-1"):  # no endpoint, or one on a port nobody recorded: unhealthy, never a guess
        monkeypatch.setenv("STREAMLOOP_METRICS_PORT", off)
        assert healthcheck.main(["metrics"]) == 1


def test_the_grpc_check_finds_the_scorer_s_health_port_in_the_environment(monkeypatch):
    with health_service() as (servicer, port):
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        monkeypatch.setenv("SCORER_GRPC_PORT", str(port))
        assert healthcheck.main(["grpc"]) == 0
        monkeypatch.setenv("SCORER_HEALTH_PORT", str(port))
        monkeypatch.setenv("SCORER_GRPC_PORT", "1")
        assert healthcheck.main(["grpc"]) == 0
