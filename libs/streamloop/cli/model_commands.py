"""models, score and explain: the registry, a synchronous score, and one prediction's record."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.table import Column, Table

from services.online_scorer.client import score as score_entity
from services.online_scorer.errors import ScorerError
from streamloop.cli.connection import (
    BootstrapOption,
    Connection,
    DataDirOption,
    PipelineOption,
    connect,
    fail,
    json_default,
    reachable_admin,
)
from streamloop.ml.exceptions import ModelError, SigningKeyError
from streamloop.ml.registry_client import RegistryClient
from streamloop.ml.settings import ArtifactSettings
from streamloop.serde import SerdeError
from streamloop.stack.launcher import read_state

T = TypeVar("T")

app = typer.Typer()
models_app = typer.Typer(help="The model registry: versions, lineage, promotions and rollbacks.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def stack_artifact_settings(data_dir: Path) -> ArtifactSettings:
    """The store and signing key a local stack in ``data_dir`` gives its services (Stack.service_env):
    its own, whatever STREAMLOOP_ARTIFACT_STORE and STREAMLOOP_ARTIFACT_SIGNING_KEY the shell
    exports; the shell's other STREAMLOOP_ARTIFACT_* reach the services, and are read here too."""
    return ArtifactSettings(store=(data_dir / "artifacts").resolve().as_uri(),
                            signing_key=f"file:{(data_dir / 'signing.key').resolve()}")


def artifact_settings(data_dir: Path) -> ArtifactSettings:
    """The store and keys promotions are verified against when no local stack runs: STREAMLOOP_ARTIFACT_*
    if set, else the ones a local stack in ``data_dir`` left."""
    settings = ArtifactSettings()
    if settings.signing_key is None and (data_dir / "signing.key").exists():
        settings = stack_artifact_settings(data_dir)
    return settings


def _verifying_settings(conn: Connection, data_dir: Path) -> ArtifactSettings:
    state = read_state(data_dir)
    if state is not None and conn.bootstrap_servers == state.get("bootstrap_servers"):
        # The running local stack's models are signed with its key, in its store: a key exported
        # for a cluster would refuse them all.
        return stack_artifact_settings(data_dir)
    return artifact_settings(data_dir)


def _registry(pipeline: Path | None, data_dir: Path, bootstrap_servers: str | None,
              verify: bool = False) -> RegistryClient:
    conn = connect(pipeline, data_dir, bootstrap_servers)
    reachable_admin(conn.kafka_settings())
    settings = _verifying_settings(conn, data_dir)
    # A registry change names an artifact that scorers will load: it is verified here first, so a
    # tampered or unsigned artifact is refused before it is ever published as champion.
    store = settings.artifact_store() if verify else None
    try:
        # Deployment records are verified as the services verify them; listing without a key shows them unverified.
        # (With ``verify``, a missing key was raised by the store above.)
        verifier = settings.deployment_verifier()
    except SigningKeyError:
        verifier = None
    return RegistryClient(conn.pipeline, conn.catalog, conn.kafka_settings(),
                          serde_for=lambda role: conn.serde(conn.catalog[role]), store=store, verifier=verifier)


def _run(pipeline: Path | None, data_dir: Path, bootstrap_servers: str | None,
         action: Callable[[RegistryClient], T], verify: bool = False) -> T:
    """``action`` on the registry; a registry error is one line, and records it skipped are said first."""
    registry = None
    try:
        registry = _registry(pipeline, data_dir, bootstrap_servers, verify)
        result = action(registry)
    except ModelError as exc:
        _say_skipped(registry)
        raise fail(str(exc)) from None
    _say_skipped(registry)
    return result


def _say_skipped(registry: RegistryClient | None) -> None:
    """One line: how many registry records could not be decoded and were left out, and the first of them."""
    if registry is None or not registry.skipped:
        return
    skipped = registry.skipped
    topics = ", ".join(f"{topic}: {count}" for topic, count in Counter(r.topic for r in skipped).items())
    print(f"streamloop: {len(skipped)} registry record{'s' if len(skipped) != 1 else ''} cannot be decoded or "
          f"verified and {'were' if len(skipped) != 1 else 'was'} left out, as the services leave them ({topics}); "
          f"the first: {skipped[0]}", file=sys.stderr)


def _print_json(value: Any) -> None:
    print(json.dumps(value, default=json_default, indent=2), flush=True)


@models_app.command("list")
def models_list(
    json_output: bool = typer.Option(False, "--json", help="One JSON array instead of a table."),
    pipeline: Path | None = PipelineOption,
    data_dir: Path = DataDirOption,
    bootstrap_servers: str | None = BootstrapOption,
) -> None:
    """Every known version, oldest first: where it serves, what made it, the last decision about it."""
    rows = _run(pipeline, data_dir, bootstrap_servers, RegistryClient.models)
    if json_output:
        _print_json(rows)
        return
    # Versions are copied into `models promote`: their column never wraps or shortens them, at 80
    # columns or piped alike; the other columns shrink instead.
    version_width = max((len(row["version"]) for row in rows), default=0)
    table = Table(Column("version", no_wrap=True, min_width=version_width),
                  "slots", "trigger", "parent", "samples", "last decision")
    for row in rows:
        table.add_row(row["version"], ",".join(row["slots"]) or "-", str(row["trigger"] or "-"),
                      str(row["parent_version"] or "-"), str(row["sample_count"] or "-"),
                      str(row["last_decision"] or "-"))
    Console().print(table)


@models_app.command("show")
def models_show(
    version: str = typer.Argument(..., help="A model version, as `streamloop models list` prints it."),
    pipeline: Path | None = PipelineOption,
    data_dir: Path = DataDirOption,
    bootstrap_servers: str | None = BootstrapOption,
) -> None:
    """One version's lineage, held-out metrics, slots and decisions, as JSON."""
    _print_json(_run(pipeline, data_dir, bootstrap_servers, lambda registry: registry.show(version)))


@models_app.command("promote")
def models_promote(
    version: str = typer.Argument(..., help="The version to make champion now."),
    reason: str = typer.Option("manual promotion", "--reason", help="Recorded in the decision event."),
    pipeline: Path | None = PipelineOption,
    data_dir: Path = DataDirOption,
    bootstrap_servers: str | None = BootstrapOption,
) -> None:
    """Make VERSION the champion (a manual decision; the scorers swap to it live)."""
    decision = _run(pipeline, data_dir, bootstrap_servers, lambda registry: registry.promote(version, reason),
                    verify=True)
    print(f"promoted {decision['to_version']} (was {decision['from_version'] or 'none'})", file=sys.stderr)


@models_app.command("re-sign")
def models_re_sign(
    pipeline: Path | None = PipelineOption,
    data_dir: Path = DataDirOption,
    bootstrap_servers: str | None = BootstrapOption,
) -> None:
    """After an upgrade from streamloop 0.1: sign the deployed models again, bound to their versions.

    0.1 signed an artifact's content alone, which the services now refuse. Only signatures made with
    the configured keys over bytes that still match, in records that name their own slot, are
    signed again; nothing else changes. Exits 1 when a slot was left as it was.
    """
    report = _run(pipeline, data_dir, bootstrap_servers, RegistryClient.sign_again, verify=True)
    for outcome in report:
        print(outcome, file=sys.stderr)
    signed = sum(outcome.signed for outcome in report)
    print(f"{signed} deployment{'s' if signed != 1 else ''} signed again", file=sys.stderr)
    if signed < len(report):
        raise typer.Exit(1)


@models_app.command("rollback")
def models_rollback(
    reason: str = typer.Option("manual rollback", "--reason", help="Recorded in the decision event."),
    pipeline: Path | None = PipelineOption,
    data_dir: Path = DataDirOption,
    bootstrap_servers: str | None = BootstrapOption,
) -> None:
    """Serve the champion's predecessor again.

    Run again, it goes one champion further back, never to the version it rolled back from.
    With none further back, it fails and changes nothing.
    """
    decision = _run(pipeline, data_dir, bootstrap_servers, lambda registry: registry.rollback(reason), verify=True)
    print(f"rolled back to {decision['to_version']} (from {decision['from_version']})", file=sys.stderr)


def _scorer_address(address: str | None, data_dir: Path) -> str:
    if address:
        return address
    state = read_state(data_dir) or {}
    ports = [s["grpc_port"] for s in state.get("services", []) if s.get("grpc_port")]
    port = ports[0] if ports else os.environ.get("SCORER_GRPC_PORT", "50051")
    return f"127.0.0.1:{port}"


def _parse_features(pairs: list[str], categorical_pairs: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    """``-f`` values that read as numbers are numeric features, the rest categorical; ``-c`` is always categorical."""
    numeric: dict[str, float] = {}
    categorical: dict[str, str] = {}
    for option, pair in [("--feature", p) for p in pairs] + [("--categorical", p) for p in categorical_pairs]:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise fail(f"{option} takes NAME=VALUE, got {pair!r}", 2)
        if option == "--categorical":
            categorical[name] = value
            continue
        try:
            numeric[name] = float(value)
        except ValueError:
            categorical[name] = value
    return numeric, categorical


@app.command()
def score(
    entity_id: str = typer.Argument(..., help="The entity whose online features are scored."),
    feature: list[str] = typer.Option(None, "--feature", "-f",
                                      help="Request-time feature NAME=VALUE (repeat); a number is numeric, "
                                           "anything else categorical."),
    categorical_feature: list[str] = typer.Option(None, "--categorical", "-c",
                                                  help="Request-time categorical feature NAME=VALUE, even when "
                                                       "VALUE reads as a number (repeat)."),
    explain: bool = typer.Option(False, "--explain", help="Include the top feature contributions."),
    address: str | None = typer.Option(None, "--address", envvar="STREAMLOOP_SCORER_ADDRESS",
                                       help="host:port of the scorer's gRPC API; default: the running stack's."),
    data_dir: Path = DataDirOption,
) -> None:
    """Score ENTITY_ID synchronously over gRPC, with the champion and its online features."""
    numeric, categorical = _parse_features(feature or [], categorical_feature or [])
    try:
        result = score_entity(_scorer_address(address, data_dir), entity_id, numeric=numeric,
                              categorical=categorical, explain=explain)
    except ScorerError as exc:
        raise fail(str(exc)) from None
    _print_json(result.__dict__)


@app.command()
def explain(
    event_id: str = typer.Argument(..., help="The event whose prediction to show."),
    pipeline: Path | None = PipelineOption,
    data_dir: Path = DataDirOption,
    bootstrap_servers: str | None = BootstrapOption,
) -> None:
    """Show the logged prediction(s) of EVENT_ID: model version, output, action and explanation."""
    conn = connect(pipeline, data_dir, bootstrap_servers)
    reachable_admin(conn.kafka_settings())
    found = [
        {"topic": role, **record}
        for role in ("predictions", "shadow_predictions")
        for record in _find_event(conn, role, event_id)
    ]
    if not found:
        raise fail(f"no prediction of event {event_id!r} on {conn.catalog['predictions'].name}")
    _print_json(found[0] if len(found) == 1 else found)
    for record in found:
        contributions = record.get("explanation") or []
        if contributions:
            table = Table("feature", "value", "contribution", title=f"{record['model_version']} ({record['topic']})")
            for c in contributions:
                table.add_row(str(c["feature"]), str(c.get("value")), f"{c['contribution']:+.4f}")
            Console(stderr=True).print(table)


def _find_event(conn: Connection, role: str, event_id: str) -> list[dict[str, Any]]:
    """Scan a topic from its oldest record to its current end; records of the event, decoded."""
    topic = conn.catalog[role]
    serde = conn.serde(topic)
    consumer = Consumer(conn.kafka_settings().consumer("streamloop-cli-explain"))
    needle = event_id.encode()
    found: list[dict[str, Any]] = []
    try:
        metadata = consumer.list_topics(topic.name, timeout=10).topics.get(topic.name)
        if metadata is None or metadata.error is not None:
            return []
        ends = {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic.name, partition), timeout=10)
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic.name, p, -2) for p in ends])
        while ends:
            for message in consumer.consume(1000, 1.0):
                if message.error() is not None:
                    continue
                partition = message.partition()
                # The event id is in the record's bytes; decode only the candidates.
                if needle in (message.value() or b""):
                    try:
                        record = serde.decode(message.value())
                    except SerdeError:
                        record = None
                    if record is not None and record.get("event_id") == event_id:
                        found.append(record)
                if partition in ends and message.offset() + 1 >= ends[partition]:
                    del ends[partition]
    finally:
        consumer.close()
    return found
