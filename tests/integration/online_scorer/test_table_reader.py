"""CompactedTopicReader against the embedded broker: catch-up, changes, tombstones, late joiners."""

from __future__ import annotations

import threading
import time

import pytest

from streamloop.kafka import KafkaSettings
from streamloop.kafka.table_reader import CompactedTopicReader
from streamloop.ml.artifacts import ArtifactSigner
from streamloop.ml.deployment_signing import DeploymentVerifier, sign_deployment, sign_retirement
from streamloop.ml.registry_client import RegistryClient
from tests.integration.online_scorer.harness import publish_deployment, serde
from tests.topic_io import produce
from tests.unit.online_scorer.fakes import deployment, slot_key

pytestmark = pytest.mark.integration


def record(spec, slot: str, version: str) -> dict:
    from streamloop.ml import ArtifactRef

    ref = ArtifactRef(f"file:///artifacts/{version}.pkl", "a" * 64, "b" * 64, "default", 10)
    role = "CHAMPION" if slot == "champion" else "SHADOW"
    return deployment(spec, ref, version, slot=slot, role=role)


def eventually(predicate, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_reader_materializes_the_topic_and_follows_changes(demo_pipeline, loop_catalog, bootstrap_servers) -> None:
    spec = demo_pipeline
    for version in ("v1", "v2", "v3"):
        publish_deployment(bootstrap_servers, loop_catalog, record(spec, "champion", version))
    shadow = record(spec, "shadow/v9", "v9")
    publish_deployment(bootstrap_servers, loop_catalog, shadow)

    changes: list[tuple[str, str | None]] = []
    lock = threading.Lock()

    def on_change(key: str, value: dict | None) -> None:
        with lock:
            changes.append((key, value["version"] if value else None))

    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    topic = loop_catalog["model_deployments"].name
    reader = CompactedTopicReader(kafka, topic, serde(loop_catalog, "model_deployments"), on_change).start()
    try:
        assert reader.wait_until_caught_up(30)
        champion_key = f"{spec.name}/{spec.model.name}/champion"
        assert reader.get(champion_key)["version"] == "v3"
        assert set(reader.snapshot()) == {champion_key, slot_key(shadow)}
        assert changes[-1][1] in ("v3", "v9") and (champion_key, "v3") in changes
        assert (champion_key, "v1") not in changes, "superseded values of one batch are not replayed"

        publish_deployment(bootstrap_servers, loop_catalog, record(spec, "champion", "v4"))
        publish_deployment(bootstrap_servers, loop_catalog, None, key=slot_key(shadow))
        assert eventually(lambda: reader.get(champion_key)["version"] == "v4" and slot_key(shadow) not in
                          reader.snapshot())
        with lock:
            assert changes[-2:] == [(champion_key, "v4"), (slot_key(shadow), None)]
    finally:
        reader.stop()


def test_an_empty_topic_is_caught_up_at_once_and_a_missing_one_is_waited_for(
        demo_pipeline, loop_catalog, bootstrap_servers, unique_name) -> None:
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    reader = CompactedTopicReader(kafka, loop_catalog["model_deployments"].name,
                                  serde(loop_catalog, "model_deployments")).start()
    try:
        assert reader.wait_until_caught_up(30)
        assert reader.snapshot() == {}
    finally:
        reader.stop()
    missing = CompactedTopicReader(kafka, f"{unique_name}.does-not-exist", serde(loop_catalog, "model_deployments"),
                                   metadata_timeout_s=1.0).start()
    try:
        assert not missing.wait_until_caught_up(1.5)
    finally:
        missing.stop()


def test_a_verifying_reader_refuses_a_record_replayed_after_its_slot_was_retired(
        demo_pipeline, loop_catalog, bootstrap_servers) -> None:
    """A signed shadow record re-produced after its signed retirement served again at every reader:
    after the tombstone a reader held nothing of the slot to compare it with."""
    signer = ArtifactSigner({"default": b"test-signing-key-0123456789abcdef"}, "default")
    spec, topic = demo_pipeline, loop_catalog["model_deployments"].name
    old = sign_deployment(signer, {**record(demo_pipeline, "shadow/v9", "v9"), "deployed_at": 1_700_000_000_000})
    key = slot_key(old)
    publish_deployment(bootstrap_servers, loop_catalog, old)
    produce(bootstrap_servers, topic, [(key.encode(), None)], headers=sign_retirement(signer, key, 1_700_000_000_005))
    publish_deployment(bootstrap_servers, loop_catalog, old)  # the old record, re-produced by a writer of the topic

    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    reader = CompactedTopicReader(kafka, topic, serde(loop_catalog, "model_deployments"),
                                  verify=DeploymentVerifier(signer)).start()
    try:
        assert reader.wait_until_caught_up(30)
        assert reader.get(key) is None and reader.stats.unverified == 1, "the retired slot stays empty"
        assert reader.retirement(key) == 1_700_000_000_005
        client = RegistryClient(spec, loop_catalog, kafka, verifier=DeploymentVerifier(signer))
        state = client.state()
        assert state.table.record(key) is None and state.retired == {key: 1_700_000_000_005}
        assert [skipped.offset for skipped in client.skipped] == [2], "`streamloop models` leaves it out too"
        # The slot used again: a record stamped after the retirement serves, and the reader forgets it.
        again = sign_deployment(signer, {**old, "deployed_at": 1_700_000_000_006})
        publish_deployment(bootstrap_servers, loop_catalog, again)
        assert eventually(lambda: reader.get(key) is not None)
        assert reader.retirement(key) is None and reader.stats.unverified == 1
        assert client.state().table.record(key)["version"] == "v9"
    finally:
        reader.stop()
