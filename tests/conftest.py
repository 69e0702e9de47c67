"""Test machinery shared by every tier (see tests/README.md).

The embedded broker and Redis start once per test session on free loopback ports, unless
KAFKA_BOOTSTRAP_SERVERS / REDIS_URL name running ones (then the suite runs against those, e.g.
Apache Kafka). STREAMLOOP_TEST_BROKER picks the embedded broker kind (noida or tansu).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from streamloop.contracts import Catalog, PipelineSpec, load_catalog, load_pipeline
from streamloop.kafka.admin import ensure_topics, topic_specs
from streamloop.stack.broker import (
    ANSWERS_EMPTY_FETCH_AT_ONCE,
    DEFAULT_BROKER,
    EmbeddedBroker,
    client_fetch_environment,
)
from streamloop.stack.redis_server import EmbeddedRedis

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_SPEC = REPO_ROOT / "examples" / "card_fraud" / "pipeline.yaml"


@pytest.fixture(scope="session")
def demo_pipeline() -> PipelineSpec:
    return load_pipeline(DEMO_SPEC)


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def embedded_broker(stack_dir: Path) -> Iterator[EmbeddedBroker | None]:
    """The session's broker process; None when KAFKA_BOOTSTRAP_SERVERS names an external one."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield None
        return
    kind = os.environ.get("STREAMLOOP_TEST_BROKER", DEFAULT_BROKER)
    broker = EmbeddedBroker(kind, stack_dir / f"broker-{kind}").start()  # type: ignore[arg-type]
    if ANSWERS_EMPTY_FETCH_AT_ONCE[broker.kind]:
        # Every client of the session paces its idle fetches (kafka/pacing.py), as the launcher
        # makes the stack's services do; otherwise the suite's idle consumers fill both cores.
        os.environ.setdefault("KAFKA_IDLE_FETCH_PAUSE_MS", "10")
        os.environ.update(client_fetch_environment(broker.kind, os.environ))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def bootstrap_servers(embedded_broker: EmbeddedBroker | None) -> str:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or embedded_broker.bootstrap_servers  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def embedded_redis(stack_dir: Path) -> Iterator[EmbeddedRedis | None]:
    if os.environ.get("REDIS_URL"):
        yield None
        return
    server = EmbeddedRedis(stack_dir / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(embedded_redis: EmbeddedRedis | None) -> str:
    return os.environ.get("REDIS_URL") or embedded_redis.url  # type: ignore[union-attr]


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A name no other test uses: topics, groups and key prefixes never collide between tests."""
    base = request.node.name.lower().replace("[", "-").replace("]", "").replace("_", "-")[:40]
    return f"t-{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def loop_catalog(demo_pipeline: PipelineSpec, unique_name: str, bootstrap_servers: str) -> Catalog:
    """The demo pipeline's catalog under a topic prefix of this test's own, with every topic created."""
    catalog = load_catalog(demo_pipeline, topic_prefix=f"{unique_name}.")
    ensure_topics(AdminClient({"bootstrap.servers": bootstrap_servers}), topic_specs(catalog))
    return catalog


@pytest.fixture
def service_env(loop_catalog: Catalog, bootstrap_servers: str, redis_url: str, unique_name: str,
                tmp_path: Path) -> dict[str, str]:
    """Environment for running any service against this test's topics, Redis keys and artifacts."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": unique_name,
        "STREAMLOOP_PIPELINE": str(DEMO_SPEC),
        "STREAMLOOP_TOPIC_PREFIX": f"{unique_name}.",
        "STREAMLOOP_ARTIFACT_STORE": (tmp_path / "artifacts").as_uri(),
        "STREAMLOOP_ARTIFACT_SIGNING_KEY": "test-signing-key-0123456789abcdef",
    }
