"""docker-compose.yml: valid by the compose specification, and wired the way docs/operations.md says."""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

import jsonschema
import pytest
import yaml

from streamloop.service.settings import CommonSettings
from streamloop.stack.services import SERVICES
from streamloop.telemetry.settings import OTLP_PROTOCOL
from tests.unit.deployment.conftest import (
    ALL_INTERFACES,
    COMPOSE_IMAGE,
    DEPLOY,
    IMAGE_DEPLOY_DIR,
    REPO,
    cli_commands,
    load_module,
)

healthcheck = load_module(DEPLOY / "healthcheck.py")

INFRASTRUCTURE = {"kafka", "schema-registry", "redis"}
SECRET_ENV = {"STREAMLOOP_ARTIFACT_SIGNING_KEY", "KAFKA_SASL_PASSWORD", "REDIS_PASSWORD",
              "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "KAFKA_SSL_KEY_PASSWORD", "SCORER_AUTH_TOKEN"}


def compose_schema() -> dict[str, Any]:
    # check-jsonschema vendors the compose specification's schema (its "vendor.compose-spec").
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(schema_file.read_text())


def streamloop_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("image") == COMPOSE_IMAGE}


def test_the_compose_file_follows_the_compose_specification(compose):
    jsonschema.validate(compose, compose_schema(), cls=jsonschema.Draft7Validator)


def test_the_schema_check_would_catch_a_mistake(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["featurizer"]["depends_on"]["kafka"]["condition"] = "service_ready"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, compose_schema(), cls=jsonschema.Draft7Validator)


def test_every_service_runs_from_the_one_image_by_command(compose):
    services = compose["services"]
    for name in SERVICES:
        assert name in services, f"{name} is missing from docker-compose.yml"
        assert services[name]["image"] == COMPOSE_IMAGE
        assert services[name]["command"] == ["service", name]
    assert {"service"} <= cli_commands()


def test_commands_exist_in_the_cli_or_the_image(compose):
    commands = cli_commands()
    for name, svc in streamloop_services(compose).items():
        entrypoint = svc.get("entrypoint")
        if entrypoint is None:
            command = svc["command"]
            assert command[0] in commands, f"{name}: `streamloop {command[0]}` is not a CLI command"
            if command[0] == "service":
                assert command[1] in SERVICES
        else:
            assert entrypoint[0] == "python" and entrypoint[1].startswith(IMAGE_DEPLOY_DIR), name
            assert (DEPLOY / entrypoint[1].removeprefix(IMAGE_DEPLOY_DIR)).is_file()


def test_infrastructure_is_the_production_kind_and_has_healthchecks(compose):
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert services["schema-registry"]["image"].startswith("confluentinc/cp-schema-registry:")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["otel-collector"]["image"].startswith("otel/opentelemetry-collector-contrib:")
    for name in INFRASTRUCTURE | {"prometheus", "grafana"}:
        assert services[name]["healthcheck"]["test"], name


def test_every_service_waits_for_healthy_infrastructure_and_the_topics(compose):
    for name in SERVICES:
        depends_on = compose["services"][name]["depends_on"]
        for dependency in INFRASTRUCTURE:
            assert depends_on[dependency]["condition"] == "service_healthy", (name, dependency)
        assert depends_on["topics"]["condition"] == "service_completed_successfully", name


def test_every_healthy_condition_has_a_healthcheck_to_satisfy_it(compose):
    services = compose["services"]
    for name, svc in services.items():
        for dependency, condition in (svc.get("depends_on") or {}).items():
            if condition["condition"] == "service_healthy":
                check = services[dependency].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), f"{name} waits for {dependency}'s health"


def test_every_streamloop_service_has_its_own_healthcheck(compose):
    for name in SERVICES:
        test = compose["services"][name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "/app/deploy/healthcheck.py"], name
    scorer = compose["services"]["online-scorer"]
    assert scorer["healthcheck"]["test"][3] == "grpc"
    # healthcheck.py speaks no TLS: it checks the plaintext health-only port, never the scoring port.
    health_port = healthcheck_port(scorer)
    assert health_port == int(scorer["environment"]["SCORER_HEALTH_PORT"])
    assert health_port != int(scorer["environment"]["SCORER_GRPC_PORT"])
    for name in SERVICES:
        if name != "online-scorer":
            assert healthcheck_port(compose["services"][name]) == int(
                compose["services"][name]["environment"]["STREAMLOOP_METRICS_PORT"]), name


def healthcheck_port(service: dict[str, Any]) -> int:
    """The port deploy/healthcheck.py checks in this container: --port, else its own default."""
    test = service["healthcheck"]["test"]
    if "--port" in test:
        return int(test[test.index("--port") + 1])
    return healthcheck.default_port(test[3], service["environment"])


def test_prometheus_scrapes_the_port_the_services_serve_metrics_on(compose):
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for group in job.get("static_configs", [])
               for t in group["targets"]}
    for name in SERVICES:
        port = compose["services"][name]["environment"]["STREAMLOOP_METRICS_PORT"]
        assert f"{name}:{port}" in targets, name


def test_the_topics_job_creates_the_catalog_before_the_services(compose):
    topics = compose["services"]["topics"]
    assert topics["entrypoint"] == ["python", "/app/deploy/create_topics.py"]
    assert topics["restart"] == "no"
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_containers_run_as_the_image_user_on_a_read_only_filesystem(compose):
    for name, svc in streamloop_services(compose).items():
        assert svc["user"] == "10001:10001", name
        assert svc["read_only"] is True, name
        assert "/tmp" in svc["tmpfs"], name
        assert svc["cap_drop"] == ["ALL"], name


def test_containers_listen_on_every_interface(compose):
    for name in SERVICES:
        env = compose["services"][name]["environment"]
        assert env["STREAMLOOP_METRICS_HOST"] == ALL_INTERFACES
        assert env["STREAMLOOP_METRICS_PORT"] == "9464"
    assert compose["services"]["online-scorer"]["environment"]["SCORER_GRPC_HOST"] == ALL_INTERFACES


def test_static_member_ids_are_unique(compose):
    ids = [compose["services"][name]["environment"]["KAFKA_GROUP_INSTANCE_ID"] for name in SERVICES]
    assert len(ids) == len(set(ids))


def test_each_replica_names_itself_once_in_its_kafka_client_id(compose, monkeypatch):
    # README: the client id is <KAFKA_CLIENT_ID>-<instance id>; a KAFKA_CLIENT_ID that already holds
    # the instance id would name it twice.
    for name in SERVICES:
        env = compose["services"][name]["environment"]
        for key in ("KAFKA_CLIENT_ID", "STREAMLOOP_INSTANCE_ID"):
            monkeypatch.delenv(key, raising=False)
            if key in env:
                monkeypatch.setenv(key, env[key])
        assert CommonSettings().kafka.client_id == f"streamloop-{name}-0", name


def test_secrets_are_files_never_values(compose):
    for name, secret in compose["secrets"].items():
        assert set(secret) == {"file"}, f"secret {name} must come from a file"
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        for key in SECRET_ENV & set(env):
            assert env[key].startswith("file:/run/secrets/"), f"{name}: {key} is inline"
            secret = env[key].removeprefix("file:/run/secrets/")
            assert secret in [s if isinstance(s, str) else s["source"] for s in svc.get("secrets", [])], name
        assert "GF_SECURITY_ADMIN_PASSWORD" not in env


def test_the_scorer_takes_calls_only_with_its_token_which_make_secrets_writes(compose):
    scorer = compose["services"]["online-scorer"]
    assert scorer["environment"]["SCORER_AUTH_TOKEN"] == "file:/run/secrets/scorer_auth_token"  # noqa: S105 - a path
    assert compose["secrets"]["scorer_auth_token"]["file"].endswith("./deploy/secrets/scorer-auth-token}")
    assert "write scorer-auth-token 10001 random_hex" in (DEPLOY / "make-secrets.sh").read_text()


def test_the_secret_files_stay_out_of_git():
    ignore = (DEPLOY / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignore


def test_the_artifact_store_is_shared_and_only_writers_can_write(compose):
    services = compose["services"]
    assert "artifacts" in compose["volumes"]
    for name, mode in {"retrainer": "", "model-publisher": "", "online-scorer": ":ro"}.items():
        assert f"artifacts:/var/lib/streamloop/artifacts{mode}" in services[name]["volumes"], name
        assert services[name]["environment"]["STREAMLOOP_ARTIFACT_STORE"] == "file:///var/lib/streamloop/artifacts"


def test_bind_mounted_files_exist(compose):
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"


def test_traces_go_to_the_collector(compose):
    for name in SERVICES:
        env = compose["services"][name]["environment"]
        assert env["OTEL_TRACES_EXPORTER"] == "otlp"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == OTLP_PROTOCOL  # what the services export; else they exit
        assert env["OTEL_SERVICE_NAME"] == name

