"""The model publisher against the embedded broker: bootstrap, shadow, promotion, rollback, refusal."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.model_publisher.app import build
from services.model_publisher.settings import PublisherSettings
from streamloop.ml import ArtifactStore, build_model
from streamloop.ml.deployment_signing import DeploymentVerifier, sign_retirement
from streamloop.ml.registry import CHAMPION, bootstrap_version, millis, shadow_slot, slot_key
from streamloop.ml.registry_client import RegistryClient
from tests.integration.model_publisher.harness import ServiceThread, Topics, apply_env, values, wait_for
from tests.topic_io import produce
from tests.unit.model_publisher.factories import artifact_store, candidate, examples

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(loop_catalog, bootstrap_servers) -> Topics:
    return Topics(loop_catalog, bootstrap_servers)


@pytest.fixture
def publisher(service_env, monkeypatch):
    apply_env(monkeypatch, {**service_env, "PUBLISHER_STALENESS_INTERVAL": "1s"})

    def start() -> ServiceThread:
        return ServiceThread(build(PublisherSettings(), install_global_telemetry=False))

    return start


def champion_key(spec) -> str:
    return slot_key(spec.name, spec.model.name, CHAMPION)


def slots(topics: Topics) -> dict[str, dict]:
    """The registry as the compacted topic says: the last record per key, tombstones removing it."""
    table: dict[str, dict] = {}
    for key, value in topics.read("model_deployments", timeout_s=5):
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table


def decisions(topics: Topics, until=None, timeout_s: float = 60.0) -> list[dict]:
    return values(topics.read("model_decisions", until=(lambda rs: until(values(rs))) if until else None,
                              timeout_s=timeout_s))


def service_store(service_env) -> ArtifactStore:  # noqa: ANN001
    """The artifact store the service under test verifies against."""
    return artifact_store(Path(service_env["STREAMLOOP_ARTIFACT_STORE"].removeprefix("file://")),
                          key=service_env["STREAMLOOP_ARTIFACT_SIGNING_KEY"].encode())


def bootstrap_challenger(spec, service_env, amount: float) -> tuple[str, dict]:  # noqa: ANN001
    """The bootstrap champion's version, and a signed candidate continuing it (an artifact of its own)."""
    old = bootstrap_version(spec.model)
    model = build_model(spec.model)
    model.learn_one({"amount": amount}, True)
    return old, candidate(spec, service_store(service_env), model=model, parent=old)


def test_the_publisher_bootstraps_a_champion_once_even_when_started_twice(publisher, topics, demo_pipeline):
    version = bootstrap_version(demo_pipeline.model)
    for _ in range(2):
        with publisher() as service:
            wait_for(lambda s=service: s.app.processor._bootstrapped, what="the registry to be read")
            wait_for(lambda s=service: s.app.processor.table.champion("card-fraud", "fraud") is not None,
                     what="a champion")
        # Leaving the block stops the runner, which flushes everything the publisher produced.
    records = topics.read("model_deployments", timeout_s=10)
    assert [(k, v["version"]) for k, v in records] == [(champion_key(demo_pipeline), version)]
    made = decisions(topics, timeout_s=5)
    assert [(d["kind"], d["to_version"]) for d in made] == [("REGISTER", version), ("PROMOTE", version)]


def test_a_second_replica_waits_as_a_standby_and_takes_over_when_the_first_stops(publisher, topics, demo_pipeline):
    version = bootstrap_version(demo_pipeline.model)
    with publisher() as first, publisher() as second:
        wait_for(lambda: first.app.processor._bootstrapped or second.app.processor._bootstrapped,
                 what="one replica to hold the lease and read the registry")
        active, standby = (first, second) if first.app.processor._bootstrapped else (second, first)
        wait_for(lambda: active.app.processor.table.champion("card-fraud", "fraud") is not None, what="a champion")
        assert not standby.app.processor.table.ready, "the standby neither reads the registry nor consumes"
        active.stop()  # a clean stop: the active replica leaves the lease group
        wait_for(lambda: standby.app.processor._bootstrapped, what="the standby to take over")
        assert standby.app.processor.table.champion("card-fraud", "fraud")["version"] == version
    made = decisions(topics, timeout_s=5)
    assert [(d["kind"], d["to_version"]) for d in made] == [("REGISTER", version), ("PROMOTE", version)], \
        "one bootstrap: the replica that took over found the champion"


def test_shadow_then_promotion_then_automatic_rollback(publisher, topics, demo_pipeline, service_env):
    old, challenger = bootstrap_challenger(demo_pipeline, service_env, amount=1.0)
    new = challenger["version"]
    with publisher() as service:
        wait_for(lambda: service.app.processor._bootstrapped, what="bootstrap")
        topics.produce("model_candidates", [challenger])
        topics.read("model_deployments", until=lambda rs: any(k and k.endswith(shadow_slot(new)) for k, _ in rs))
        assert slots(topics)[slot_key("card-fraud", "fraud", shadow_slot(new))]["role"] == "SHADOW"

        topics.produce("labeled_examples", examples(600, models={old: (0.5, "CHAMPION"), new: (0.8, "SHADOW")}))
        made = decisions(topics, until=lambda ds: any(d["kind"] == "PROMOTE" and d["to_version"] == new for d in ds))
        promotion = next(d for d in made if d["kind"] == "PROMOTE" and d["to_version"] == new)
        assert promotion["from_version"] == old and promotion["automatic"] is True
        assert promotion["evidence"]["sample_count"] >= 500 and promotion["evidence"]["p_value"] < 0.05
        wait_for(lambda: slots(topics).get(champion_key(demo_pipeline), {}).get("version") == new,
                 what="the champion slot to name the promoted version")
        registry = slots(topics)
        assert registry[champion_key(demo_pipeline)]["previous_version"] == old
        assert registry[slot_key("card-fraud", "fraud", shadow_slot(old))]["role"] == "SHADOW"

        # Enough for a later look of the watch (at 600 pairs): its first, at 300, may also hold events
        # of the promotion's batch labeled after the promotion, where the new version was still better.
        topics.produce("labeled_examples", examples(700, start=10_000, models={new: (0.6, "CHAMPION"),
                                                                                old: (0.8, "SHADOW")}))
        made = decisions(topics, until=lambda ds: any(d["kind"] == "ROLLBACK" for d in ds))
        rollback = next(d for d in made if d["kind"] == "ROLLBACK")
        assert (rollback["from_version"], rollback["to_version"], rollback["automatic"]) == (new, old, True)
        assert rollback["evidence"]["relative_regression"] > demo_pipeline.promotion.rollback_margin
        wait_for(lambda: slots(topics).get(champion_key(demo_pipeline), {}).get("version") == old,
                 what="the predecessor to be champion again")
    assert [d["kind"] for d in made] == ["REGISTER", "PROMOTE", "REGISTER", "SHADOW", "PROMOTE", "ROLLBACK"]


def test_a_slot_retired_by_another_writer_ahead_of_the_publishers_clock_is_deployed_again(
        publisher, topics, demo_pipeline, service_env):
    """Readers refuse a record of a slot stamped no later than its retirement (a replay): the publisher
    stamps its next record of the slot after a retirement its reader read, not only after its own
    (here another writer's, an hour ahead, kept from a tombstone whose record compaction removed)."""
    _old, challenger = bootstrap_challenger(demo_pipeline, service_env, amount=1.0)
    key = slot_key("card-fraud", "fraud", shadow_slot(challenger["version"]))
    signer = service_store(service_env).signer
    ahead = int(time.time() * 1000) + 3_600_000
    produce(topics.bootstrap, topics.catalog["model_deployments"].name, [(key.encode(), None)],
            headers=sign_retirement(signer, key, ahead))
    with publisher() as service:
        wait_for(lambda: service.app.processor._bootstrapped, what="bootstrap")
        topics.produce("model_candidates", [challenger])
        topics.read("model_deployments", until=lambda rs: any(k == key and v is not None for k, v in rs))
        assert millis(slots(topics)[key]["deployed_at"]) == ahead + 1
        client = RegistryClient(demo_pipeline, topics.catalog, service.app.kafka, verifier=DeploymentVerifier(signer))
        assert client.state().table.record(key)["version"] == challenger["version"] and client.skipped == []
        wait_for(lambda: service.app.processor.table.record(key) is not None, what="the publisher to keep its shadow")
        assert service.app.term.table_reader.stats.unverified == 0


def test_a_tampered_candidate_is_refused_and_never_deployed(publisher, topics, demo_pipeline, service_env):
    model = build_model(demo_pipeline.model)
    model.learn_one({"amount": 2.0}, False)
    tampered = candidate(demo_pipeline, service_store(service_env), model=model)
    path = Path(tampered["artifact"]["uri"].removeprefix("file://"))
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with publisher() as service:
        wait_for(lambda: service.app.processor._bootstrapped, what="bootstrap")
        topics.produce("model_candidates", [tampered])
        made = decisions(topics, until=lambda ds: any(d["kind"] == "REFUSE" for d in ds))
    refusal = next(d for d in made if d["kind"] == "REFUSE")
    assert refusal["to_version"] == tampered["version"] and "does not verify" in refusal["reason"]
    assert all(v["version"] != tampered["version"] for v in slots(topics).values())


def test_a_candidate_bringing_prequential_losses_is_judged_at_once(publisher, topics, demo_pipeline, service_env):
    old, challenger = bootstrap_challenger(demo_pipeline, service_env, amount=2.0)
    new = challenger["version"]
    with publisher() as service:
        wait_for(lambda: service.app.processor._bootstrapped, what="bootstrap")
        topics.produce("labeled_examples", examples(600, models={old: (0.6, "CHAMPION")}))
        ledger = service.app.processor.ledger
        wait_for(lambda: ledger.count(old) == 600, what="the champion's 600 live losses")
        live = ledger.losses(old, "CHAMPION").tolist()
        # Through the topic's Avro schema: the losses of the candidate's learner on the same events.
        challenger["prequential_losses"] = [{"event_id": f"evt-{i}", "loss": 0.6 * loss} for i, loss in enumerate(live)]
        topics.produce("model_candidates", [challenger])
        made = decisions(topics, until=lambda ds: any(d["kind"] == "PROMOTE" and d["to_version"] == new for d in ds))
    promotion = next(d for d in made if d["kind"] == "PROMOTE" and d["to_version"] == new)
    assert promotion["evidence"]["sample_count"] == 600, "no shadow label was needed"
    assert [d["kind"] for d in made if d["to_version"] == new] == ["REGISTER", "SHADOW", "PROMOTE"]


def test_a_restarted_publisher_scores_a_shadow_on_examples_its_lineage_never_learned(publisher, topics, demo_pipeline,
                                                                                     service_env):
    old, challenger = bootstrap_challenger(demo_pipeline, service_env, amount=3.0)
    challenger["learned_through"] = []  # learned nothing from the labeled-examples topic
    new = challenger["version"]
    with publisher() as service:
        wait_for(lambda: service.app.processor._bootstrapped, what="bootstrap")
        topics.produce("model_candidates", [challenger])
        topics.read("model_deployments", until=lambda rs: any(k and k.endswith(shadow_slot(new)) for k, _ in rs))
    # Restarted, it knows the shadow's lineage only from the candidates topic, through its Avro schema.
    with publisher() as service:
        wait_for(lambda: service.app.processor._bootstrapped, what="the registry to be read")
        # Events the champion served before the shadow was deployed, labeled now.
        topics.produce("labeled_examples", examples(50, models={old: (0.6, "CHAMPION")}))
        ledger = service.app.processor.ledger
        wait_for(lambda: ledger.count(old) == 50, what="the champion's 50 live losses")
        assert ledger.losses(new, "REPLAYED").size == 50
        assert len(ledger.paired(old, new)) == 50, "the shadow's held-out losses pair with the champion's live ones"
