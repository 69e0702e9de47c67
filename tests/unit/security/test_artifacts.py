"""A tampered, unsigned, foreign-signed or hostile artifact is never unpickled, on any path.

The paths that turn an ``ArtifactRef`` from a topic into a model: the scorer's ModelHolder
(deployments), the retrainer (its champion), the model publisher (candidates) and the registry
client (manual promote/rollback). Each is fed a reference to a pickle whose ``__reduce__`` would
create a marker file: the marker must never appear.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import os
import pickle
from dataclasses import replace
from pathlib import Path

import pytest

from streamloop.ml import ArtifactIdentity, ArtifactIntegrityError, ArtifactRef, ArtifactSigner, ArtifactStore
from streamloop.ml.exceptions import ArtifactNotFoundError, ModelError

ROOT = Path(__file__).resolve().parents[3]
KEY = b"unit-test-signing-key-0123456789"
OTHER_KEY = b"an-attacker-signing-key-987654321"


class Exploit:
    """Unpickling this creates ``marker``: proof that untrusted bytes reached ``pickle.loads``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def hostile_refs(root: Path, store: ArtifactStore, marker: Path, identity: ArtifactIdentity) -> dict[str, ArtifactRef]:
    """Every way a reference to be loaded as ``identity`` can lie; none of them may execute the payload."""
    payload = pickle.dumps(Exploit(marker))
    digest = hashlib.sha256(payload).hexdigest()
    path = root / f"{digest}.pkl"
    path.write_bytes(payload)
    uri = path.resolve().as_uri()
    good = store.put_model({"a": "model"}, identity)
    good_path = Path(good.uri.removeprefix("file://"))
    swapped = root / "swapped.pkl"
    swapped.write_bytes(payload)
    attacker = ArtifactSigner({"default": OTHER_KEY}, "default")
    stored = store.store_bytes(payload)
    return {
        "unsigned": ArtifactRef(uri, digest, "", "default", len(payload)),
        "forged signature": ArtifactRef(uri, digest, "0" * 64, "default", len(payload)),
        "non-ASCII signature": ArtifactRef(uri, digest, "\u00e9" * 64, "default", len(payload)),
        "non-ASCII digest": ArtifactRef(uri, "\u00e9" * 64, "\u00e9" * 64, "default", len(payload)),
        "signed with another key": ArtifactRef(uri, digest, attacker.sign(digest, identity), "default", len(payload)),
        "unknown key id": ArtifactRef(uri, digest, attacker.sign(digest, identity), "attacker", len(payload)),
        # Signed with the real key, but as something else: relabelled, it must not load.
        "signed as another version": store.sign(stored, replace(identity, version=identity.version + "-other")),
        "signed as another pipeline's model": store.sign(stored, replace(identity, pipeline="another-pipeline")),
        "signed as another model": store.sign(stored, replace(identity, model_name="another-model")),
        "signed over the digest alone (streamloop 0.1)": ArtifactRef(
            uri, digest, hmac.new(KEY, digest.encode(), hashlib.sha256).hexdigest(), "default", len(payload)),
        "bytes swapped under a signed ref": ArtifactRef(swapped.resolve().as_uri(), good.sha256, good.signature,
                                                        good.key_id, len(payload)),
        "signed ref, tampered file": _tampered(good, good_path, payload),
        "device instead of a file": ArtifactRef("file:///dev/zero", digest, "", "default", len(payload)),
        "a path no file can have": ArtifactRef(uri + "%00", digest, "", "default", len(payload)),
        "size beyond the limit": ArtifactRef(uri, digest, "", "default", 2**62),
        "not a file URI": ArtifactRef("https://evil.example/model.pkl", digest, "", "default", len(payload)),
    }


def _tampered(good: ArtifactRef, path: Path, payload: bytes) -> ArtifactRef:
    path.write_bytes(payload)
    return ArtifactRef(good.uri, good.sha256, good.signature, good.key_id, len(payload))


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts", ArtifactSigner({"default": KEY}, "default"))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


IDENTITY = ArtifactIdentity("card-fraud", "fraud", "fraud-20261206120000000-0badcafe")


def test_the_store_refuses_every_hostile_reference(store, marker, tmp_path) -> None:
    refs = hostile_refs(store.root, store, marker, IDENTITY)
    for name, ref in refs.items():
        with pytest.raises((ArtifactIntegrityError, ArtifactNotFoundError)):
            store.load_model(ref, IDENTITY)
        assert not marker.exists(), name
    # The payload really is live: a store that trusts the attacker's key would run it.
    gullible = ArtifactStore(store.root, ArtifactSigner({"default": OTHER_KEY}, "default"))
    gullible.load_model(refs["signed with another key"], IDENTITY)
    assert marker.exists()


def test_a_relabelled_artifact_loads_only_as_what_it_was_signed_as(store, marker) -> None:
    refs = hostile_refs(store.root, store, marker, IDENTITY)
    with pytest.raises(ArtifactIntegrityError, match="does not verify for card-fraud/fraud fraud-2026"):
        store.load_model(refs["signed as another version"], IDENTITY)
    assert not marker.exists()
    store.load_model(refs["signed as another version"], replace(IDENTITY, version=IDENTITY.version + "-other"))
    assert marker.exists()


def test_a_signature_over_the_digest_alone_is_refused_with_what_to_do(store, marker) -> None:
    ref = hostile_refs(store.root, store, marker, IDENTITY)["signed over the digest alone (streamloop 0.1)"]
    with pytest.raises(ArtifactIntegrityError, match="signed by streamloop 0.1.*run `streamloop models re-sign`"):
        store.load_model(ref, IDENTITY)
    assert not marker.exists()


def test_the_scorer_never_loads_a_hostile_deployment(spec, store, marker) -> None:
    from services.online_scorer.models import ModelHolder
    from tests.unit.online_scorer.fakes import deployment, slot_key

    holder = ModelHolder(spec, store)
    identity = ArtifactIdentity(spec.name, spec.model.name, "fraud-hostile")
    for name, ref in hostile_refs(store.root, store, marker, identity).items():
        record = deployment(spec, ref, identity.version)
        holder.on_deployment(slot_key(record), record)
        assert holder.current.champion is None, name
    assert not marker.exists()


def test_the_retrainer_never_continues_from_a_hostile_champion(demo_pipeline, store, marker, tmp_path) -> None:
    from streamloop.ml.registry import CHAMPION, deployment_record, slot_key
    from tests.unit.retrainer.test_retrainer import Harness

    harness = Harness(demo_pipeline, tmp_path / "h")
    for i in range(len(hostile_refs(harness.store.root, harness.store, marker, IDENTITY))):
        # A version of its own each time, so that every one is a new champion to load.
        identity = ArtifactIdentity(demo_pipeline.name, demo_pipeline.model.name, f"fraud-x-{i}")
        ref = list(hostile_refs(harness.store.root, harness.store, marker, identity).values())[i]
        key = slot_key(demo_pipeline.name, demo_pipeline.model.name, CHAMPION)
        record = deployment_record(demo_pipeline.name, demo_pipeline.model.name, CHAMPION, identity.version,
                                   ref.to_record(), deployed_at=harness.now)
        harness.table.apply(key, record)
        harness.processor._sync_champion()  # what every batch does first
        assert harness.processor.learner.model is None, "no online learning from an unverified champion"
    assert not marker.exists()


def test_the_publisher_refuses_hostile_candidates(demo_pipeline, marker, tmp_path) -> None:
    from tests.unit.model_publisher.factories import candidate
    from tests.unit.model_publisher.test_publisher import Harness, decisions

    harness = Harness(demo_pipeline, tmp_path)
    harness.bootstrap()
    records = []
    for i in range(len(hostile_refs(harness.store.root, harness.store, marker, IDENTITY))):
        record = candidate(harness.spec, harness.store, created_ms=1_700_000_000_000 + i)
        ref = list(hostile_refs(harness.store.root, harness.store, marker, ArtifactIdentity.of(record)).values())[i]
        record["artifact"] = ref.to_record()
        records.append(record)
    refused = decisions(harness.feed("cand", records))
    assert [d["kind"] for d in refused] == ["REFUSE"] * len(records)
    assert not marker.exists()


def test_the_registry_client_verifies_before_a_manual_promotion(demo_pipeline, store, marker) -> None:
    from streamloop.contracts import load_catalog
    from streamloop.kafka import KafkaSettings
    from streamloop.ml.registry import DeploymentTable
    from streamloop.ml.registry_client import RegistryClient, RegistryState

    client = RegistryClient(demo_pipeline, load_catalog(demo_pipeline), KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                            store=store)
    produced: list = []
    client._produce = produced.append  # type: ignore[method-assign]
    identity = ArtifactIdentity(demo_pipeline.name, demo_pipeline.model.name, "fraud-evil")
    for ref in hostile_refs(store.root, store, marker, identity).values():
        with pytest.raises(ModelError):
            client._change("PROMOTE", identity.version, ref.to_record(), None, "test",
                           RegistryState(DeploymentTable(), [], [], {}), previous_version=None)
    assert produced == [] and not marker.exists()


def test_pickle_is_only_loaded_by_the_verifying_store() -> None:
    """Static: no module but streamloop/ml/artifacts.py unpickles, and it verifies first."""
    loaders = {"loads", "load", "Unpickler"}
    found = []
    for path in [*ROOT.glob("libs/streamloop/**/*.py"), *ROOT.glob("services/**/*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in loaders and isinstance(node.value, ast.Name) \
                    and node.value.id in ("pickle", "cloudpickle", "dill", "joblib"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "dill", "joblib") \
                    and any(a.name in loaders for a in node.names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert [f.split(":")[0] for f in found] == ["libs/streamloop/ml/artifacts.py"]
    source = (ROOT / "libs/streamloop/ml/artifacts.py").read_text()
    body = source[source.index("def load_model"):]
    assert body.index("get_verified_bytes") < body.index("pickle.loads")
