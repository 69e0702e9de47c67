"""What the deployment tests share: the files under test, parsed once, and the catalog they serve.

Everything here is offline: the compose file is checked against the compose specification's JSON
schema (vendored by check-jsonschema), the Kubernetes manifests against Kubernetes' own schemas
(kubernetes-validate), the KEDA resources against a schema of our own (schemas/keda.json).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer
import yaml

from streamloop.cli.main import app
from streamloop.contracts import Catalog, PipelineSpec, load_catalog, load_pipeline

REPO = Path(__file__).resolve().parents[3]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DEPLOY = REPO / "deploy"
K8S = REPO / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
OPERATIONS_DOC = REPO / "docs" / "operations.md"
KUBERNETES_VERSION = "1.30"

# The image every streamloop container runs, as the compose file and the manifests name it.
COMPOSE_IMAGE = "${STREAMLOOP_IMAGE:-streamloop:dev}"
K8S_IMAGE = "streamloop"
# Where the image keeps the scripts that are not (yet) CLI commands.
IMAGE_DEPLOY_DIR = "/app/deploy/"
# Containers must listen beyond loopback to be probed, scraped and called.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


@dataclass(frozen=True)
class Manifest:
    path: Path
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.doc["kind"]

    @property
    def name(self) -> str:
        return self.doc["metadata"]["name"]

    def __repr__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.kind}/{self.name}"


def load_module(path: Path) -> ModuleType:
    """Import a script that is not part of a package (deploy/*.py)."""
    name = f"deploy_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def cli_commands() -> set[str]:
    """Top-level command names of ``streamloop``, as click sees them."""
    return set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="session")
def kustomization() -> dict[str, Any]:
    return yaml.safe_load(KUSTOMIZATION.read_text())


def _manifest_paths() -> list[Path]:
    resources = yaml.safe_load(KUSTOMIZATION.read_text())["resources"]
    return [K8S / r for r in resources]


def load_manifests() -> list[Manifest]:
    return [Manifest(path, doc) for path in _manifest_paths()
            for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@pytest.fixture(scope="session")
def manifests() -> list[Manifest]:
    return load_manifests()


def of_kind(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {m.name: m for m in manifests if m.kind == kind}


@pytest.fixture(scope="session")
def k8s_env(manifests: list[Manifest]) -> dict[str, str]:
    """The shared environment ConfigMap (streamloop-env)."""
    return of_kind(manifests, "ConfigMap")["streamloop-env"].doc["data"]


@pytest.fixture(scope="session")
def k8s_pipeline() -> PipelineSpec:
    return load_pipeline(K8S / "pipeline" / "pipeline.yaml")


@pytest.fixture(scope="session")
def k8s_catalog(k8s_pipeline: PipelineSpec, k8s_env: dict[str, str]) -> Catalog:
    return load_catalog(k8s_pipeline, topic_prefix=k8s_env.get("STREAMLOOP_TOPIC_PREFIX", ""))


@pytest.fixture(scope="session")
def compose_catalog(compose: dict[str, Any]) -> Catalog:
    env = compose["services"]["featurizer"]["environment"]
    # The image's /app/examples is the repository's examples/.
    spec_path = REPO / env["STREAMLOOP_PIPELINE"].removeprefix("/app/")
    return load_catalog(load_pipeline(spec_path), topic_prefix=env.get("STREAMLOOP_TOPIC_PREFIX", ""))


def metric_names(expression: str) -> set[str]:
    """The streamloop metrics a PromQL expression reads (histogram series by their base name)."""
    names = re.findall(r"\b((?:streamloop|kafka|messaging)_[a-zA-Z0-9_]+)", expression)
    return {n.removesuffix("_bucket") for n in names}
