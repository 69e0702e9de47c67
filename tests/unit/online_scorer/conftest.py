from __future__ import annotations

from pathlib import Path

import pytest

from streamloop.contracts import Catalog, PipelineSpec, load_catalog
from streamloop.ml import ArtifactSigner, ArtifactStore
from streamloop.telemetry import ServiceMetrics

SIGNING_KEY = b"unit-test-signing-key-0123456789"


@pytest.fixture
def spec(demo_pipeline: PipelineSpec) -> PipelineSpec:
    return demo_pipeline


@pytest.fixture
def catalog(demo_pipeline: PipelineSpec) -> Catalog:
    return load_catalog(demo_pipeline)


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts", ArtifactSigner({"default": SIGNING_KEY}, "default"))


@pytest.fixture
def metrics() -> ServiceMetrics:
    metrics = ServiceMetrics("online-scorer")
    yield metrics
    metrics.shutdown()
