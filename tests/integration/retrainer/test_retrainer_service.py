"""The retrainer against the embedded broker: online candidates with lineage, drift rebuilds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from services.retrainer.app import build
from services.retrainer.settings import RetrainerSettings
from streamloop.ml import ArtifactIdentity, build_model
from streamloop.ml.deployment_signing import sign_deployment
from streamloop.ml.registry import CHAMPION, deployment_record
from tests.conftest import DEMO_SPEC
from tests.integration.model_publisher.harness import ServiceThread, Topics, apply_env, values, wait_for
from tests.unit.model_publisher.factories import artifact_store, drift_event, labeled_example

pytestmark = pytest.mark.integration

CHAMPION_VERSION = "fraud-20240101000000000-00c0ffee"


def spec_file(tmp_path: Path, **retrain: object) -> Path:
    data = yaml.safe_load(DEMO_SPEC.read_text())
    data["input"]["schema"] = str(DEMO_SPEC.parent / data["input"]["schema"])
    data["retrain"].update(retrain)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def topics(loop_catalog, bootstrap_servers) -> Topics:
    return Topics(loop_catalog, bootstrap_servers)


@pytest.fixture
def store(service_env):
    return artifact_store(Path(service_env["STREAMLOOP_ARTIFACT_STORE"].removeprefix("file://")),
                          key=service_env["STREAMLOOP_ARTIFACT_SIGNING_KEY"].encode())


@pytest.fixture
def retrainer(service_env, monkeypatch, tmp_path, topics, store, demo_pipeline):
    """Start the retrainer with a champion in the registry and the given ``retrain`` overrides."""
    ref = store.put_model(build_model(demo_pipeline.model), ArtifactIdentity("card-fraud", "fraud", CHAMPION_VERSION))
    # Deployed now: a restarted retrainer counts online publishing's period from the champion's
    # deployment, and the tests' "10m" must not come due while they run.
    topics.produce("model_deployments", [sign_deployment(store.signer, deployment_record(
        "card-fraud", "fraud", CHAMPION, CHAMPION_VERSION, ref.to_record(), deployed_at=int(time.time() * 1000)))])

    def start(**retrain: object) -> ServiceThread:
        apply_env(monkeypatch, {**service_env, "STREAMLOOP_PIPELINE": str(spec_file(tmp_path, **retrain)),
                                "RETRAINER_REBUILD_MIN_EXAMPLES": "50"})
        return ServiceThread(build(RetrainerSettings(), install_global_telemetry=False))

    return start


def labeled(count: int, start: int = 0) -> list[dict]:
    return [labeled_example(i, label=(i % 3 == 0)) for i in range(start, start + count)]


def candidates(topics: Topics, trigger: str, parent: str | None = None) -> list[dict]:
    """The candidates of ``trigger`` (of ``parent``, if given) once there is one."""
    def wanted(candidate: dict | None) -> bool:
        return bool(candidate) and candidate["trigger"] == trigger and parent in (None, candidate["parent_version"])

    found = topics.read("model_candidates", timeout_s=90, until=lambda rs: any(wanted(v) for _, v in rs))
    return [c for c in values(found) if wanted(c)]


def test_an_online_candidate_after_n_labels_with_lineage_offsets(retrainer, topics, store, loop_catalog):
    with retrainer(online_publish_every_labels=200, online_publish_every="10m", schedule=None):
        topics.produce("labeled_examples", labeled(250))
        online = candidates(topics, "ONLINE")
    first = online[0]
    assert first["parent_version"] == CHAMPION_VERSION
    assert first["sample_count"] == 200
    ranges = first["source_offsets"]
    assert {r["topic"] for r in ranges} == {loop_catalog["labeled_examples"].name}
    assert sum(r["end"] - r["start"] for r in ranges) == 200
    assert len({r["partition"] for r in ranges}) > 1, "the labels are spread over partitions"
    assert first["heldout_metrics"]["sample_count"] == 200 and "log_loss" in first["heldout_metrics"]
    model = store.load_published(first)
    assert callable(model.learn_one)


def test_a_drift_event_publishes_a_rebuilt_candidate_with_heldout_metrics(retrainer, topics):
    with retrainer(online_publish_every_labels=100_000, online_publish_every="10m", rebuild_window=500,
                   holdout_share=0.2, schedule=None) as service:
        topics.produce("labeled_examples", labeled(300, start=-300))  # events before the detection
        topics.produce("drift_events", [drift_event("WARNING", detector="adwin", model_version=CHAMPION_VERSION)])
        wait_for(lambda: service.app.processor.awaiting_drift_rebuild, timeout_s=60, what="the drift to be accepted")
        # The rebuild waits for 500 examples of events after the detection (event time > T0).
        topics.produce("labeled_examples", labeled(500, start=1))
        rebuilt = candidates(topics, "DRIFT")
    assert len(rebuilt) == 1
    candidate = rebuilt[0]
    assert candidate["parent_version"] == CHAMPION_VERSION
    assert candidate["sample_count"] == 400
    assert candidate["heldout_metrics"]["sample_count"] == 100
    assert candidate["heldout_metrics"]["accuracy"] > 0.9
    assert sum(r["end"] - r["start"] for r in candidate["source_offsets"]) == 500


def test_a_concept_drift_in_catch_up_publishes_a_candidate_with_its_prequential_losses(retrainer, topics):
    with retrainer(online_publish_every_labels=100_000, online_publish_every="10m", rebuild_on_drift=False,
                   schedule=None, catch_up={"labels": 500, "repeats": 2}) as service:
        topics.produce("labeled_examples", labeled(300))
        wait_for(lambda: service.app.processor.learner.learned_total == 300, timeout_s=60, what="300 labels learned")
        topics.produce("drift_events", [drift_event("CRITICAL", detector="ddm", model_version=CHAMPION_VERSION)])
        online = candidates(topics, "ONLINE")
    assert len(online) == 1 and online[0]["sample_count"] == 300
    losses = online[0]["prequential_losses"]
    assert sorted(p["event_id"] for p in losses) == sorted(f"evt-{i}" for i in range(300))
    assert all(p["loss"] >= 0 for p in losses)


def test_a_restarted_retrainer_learns_again_what_its_line_learned_since_the_champion(retrainer, topics, store):
    """Killed with labels learned but not published, the learner would lose them: their offsets are committed."""
    settings = {"online_publish_every_labels": 200, "online_publish_every": "10m", "schedule": None}
    with retrainer(**settings) as service:
        topics.produce("labeled_examples", labeled(250))
        first = candidates(topics, "ONLINE")[0]
        # The publisher promotes it; the line goes on from it (50 labels learned since, unpublished).
        # Signed, and deployed after the bootstrap champion's record: readers refuse an older one as a replay.
        topics.produce("model_deployments", [sign_deployment(store.signer, deployment_record(
            "card-fraud", "fraud", CHAMPION, first["version"], first["artifact"], deployed_at=int(time.time() * 1000),
            previous_version=CHAMPION_VERSION, decision_id=f"{first['version']}:promote"))])
        wait_for(lambda: service.app.processor.learner.learned_total == 250
                 and service.app.processor.learner.continues(first["version"]), timeout_s=60,
                 what="250 labels learned and the candidate promoted")
    assert first["sample_count"] == 200 and first["parent_version"] == CHAMPION_VERSION
    with retrainer(**settings) as service:
        wait_for(lambda: service.app.processor.learner.learned_total == 50, timeout_s=60,
                 what="the 50 unpublished labels learned again")
        topics.produce("labeled_examples", labeled(150, start=250))
        # Waited for by parent: the first candidate is on the topic already.
        online = candidates(topics, "ONLINE", parent=first["version"])
    assert len(online) == 1 and online[0]["sample_count"] == 200, "50 learned again + 150 new"
    # Where the promoted candidate's learner had read to: a partition it learned nothing in since
    # its parent is there too (its labels may have been produced before the snapshot, read after).
    after = {e["partition"]: e["offset"] + 1 for e in first["read_through"]}
    starts = {r["partition"]: r["start"] for r in online[0]["source_offsets"]}
    assert starts and starts == {p: after[p] for p in starts}, \
        "the line goes on where the promoted candidate stopped, in every partition"
    assert sum(r["end"] - r["start"] for r in online[0]["source_offsets"]) == 200
