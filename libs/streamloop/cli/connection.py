"""Where the CLI finds the pipeline, the broker and Redis: options, environment, running stack."""

from __future__ import annotations

import base64
import os
import sys
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import typer
from confluent_kafka.admin import AdminClient
from pydantic import ValidationError

from streamloop.contracts import Catalog, PipelineSpec, TopicSpec, load_catalog, load_pipeline
from streamloop.errors import StreamloopError
from streamloop.kafka.admin import wait_for_broker
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.exceptions import BrokerUnavailableError
from streamloop.serde import Serde
from streamloop.service.settings import SerdeSettings
from streamloop.service.settings_errors import describe_validation_error
from streamloop.stack.launcher import kafka_settings_for, on_embedded_broker, read_state

DEMO_PIPELINE = Path(__file__).resolve().parents[3] / "examples" / "card_fraud" / "pipeline.yaml"

PipelineOption = typer.Option(
    None, "--pipeline", "-p", envvar="STREAMLOOP_PIPELINE",
    help="Pipeline spec; default ./pipeline.yaml, else the running stack's, else the bundled demo.",
)
DataDirOption = typer.Option(
    Path(".streamloop"), "--data-dir", envvar="STREAMLOOP_DATA_DIR", help="Where the local stack keeps its state.",
)
BootstrapOption = typer.Option(
    None, "--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS", help="Kafka brokers; default: the running stack's.",
)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one clear line to stderr; the caller raises the returned Exit."""
    print(f"streamloop: {message}", file=sys.stderr)
    return typer.Exit(code)


def resolve_pipeline_path(pipeline: Path | None, data_dir: Path) -> Path:
    if pipeline is not None:
        return pipeline
    if Path("pipeline.yaml").exists():
        return Path("pipeline.yaml")
    state = read_state(data_dir)
    if state:
        return Path(state["pipeline"])
    return DEMO_PIPELINE


@dataclass
class Connection:
    pipeline: PipelineSpec
    catalog: Catalog
    bootstrap_servers: str
    redis_url: str
    # SCHEMA_REGISTRY_*: with a registry the services write Confluent's format, so the CLI must read it.
    serde_settings: SerdeSettings = field(default_factory=SerdeSettings)
    # The running embedded stack: a plaintext broker, whatever KAFKA_SECURITY_PROTOCOL the shell exports.
    embedded: bool = False

    def kafka_settings(self) -> KafkaSettings:
        return kafka_settings_for(self.bootstrap_servers, embedded=self.embedded)

    def serde(self, topic: TopicSpec) -> Serde:
        return self.serde_settings.serde(topic, self.catalog.repository)


def load_runnable_pipeline(path: Path) -> PipelineSpec:
    """A spec the services can run, for the commands that start them: valid, its model builds, and
    its topic catalog resolves as every service resolves it.

    The spec's own validation does not import river (every CLI command reads the spec), so an
    estimator that does not exist or parameters it does not take would otherwise surface only as a
    service crash-looping on start. The catalog is resolved here too, before anything starts: a
    kept version of the input schema (``history/``) that the current one cannot read is refused
    now, as each service would refuse it, not after the broker has started.
    """
    from streamloop.ml.estimators import build_model
    from streamloop.ml.exceptions import EstimatorSpecError

    try:
        spec = load_pipeline(path)
        build_model(spec.model)
        load_catalog(spec)
    except EstimatorSpecError as exc:
        raise fail(f"invalid pipeline spec ({path}): model: {exc}", 2) from None
    except StreamloopError as exc:
        raise fail(str(exc), 2) from None
    return spec


def connect(pipeline: Path | None, data_dir: Path, bootstrap_servers: str | None) -> Connection:
    state = read_state(data_dir) or {}
    try:
        spec = load_pipeline(resolve_pipeline_path(pipeline, data_dir))
        prefix = os.environ.get("STREAMLOOP_TOPIC_PREFIX", state.get("topic_prefix", ""))
        catalog = load_catalog(spec, topic_prefix=prefix)
        # The running embedded stack has no Schema Registry and speaks single-object encoding
        # (Stack.serde_settings), whatever SCHEMA_REGISTRY_* the shell exports for another cluster.
        on_embedded_stack = bootstrap_servers is None and on_embedded_broker(state)
        serde_settings = SerdeSettings(url=None) if on_embedded_stack else SerdeSettings()
    except StreamloopError as exc:
        raise fail(str(exc), 2) from None
    except ValidationError as exc:
        raise fail(f"invalid settings: {describe_validation_error(exc, SerdeSettings)}", 2) from None
    return Connection(
        spec, catalog,
        bootstrap_servers or state.get("bootstrap_servers") or "127.0.0.1:9092",
        os.environ.get("REDIS_URL") or state.get("redis_url") or "redis://127.0.0.1:6379/0",
        serde_settings,
        on_embedded_stack,
    )


def reachable_admin(settings: KafkaSettings) -> AdminClient:
    """An admin client of a broker that answers; else one clear line and exit 1."""
    admin = AdminClient(settings.admin())
    try:
        wait_for_broker(admin, timeout_s=5)
    except BrokerUnavailableError:
        raise fail(f"cannot reach a Kafka broker at {settings.bootstrap_servers} (is `streamloop up` running?)") \
            from None
    return admin


def json_default(value: Any) -> Any:
    """How the CLI prints what JSON has no type for: times as ISO 8601, bytes as base64."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Decimal):
        return str(value)
    return str(value)
