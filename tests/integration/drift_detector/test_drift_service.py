"""The drift detector against the embedded broker: a champion deployment, feature vectors with a
shift in one feature, DriftEvent records on the drift topic; and a restart that rebuilds its
reference by replay instead of learning it again from drifted data.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from confluent_kafka import Consumer, ConsumerGroupState, TopicPartition
from confluent_kafka.admin import AdminClient

from services.drift_detector.app import DriftService, build
from services.drift_detector.settings import DriftSettings
from streamloop.contracts import Catalog
from streamloop.serde import SingleObjectSerde
from tests.topic_io import drain, produce

pytestmark = pytest.mark.integration

REFERENCE, WINDOW = 2000, 1000  # the demo spec's drift section
DEPLOYED_AT = int(time.time() * 1000) - 60_000


def serde(catalog: Catalog, role: str) -> SingleObjectSerde:
    return SingleObjectSerde(catalog[role].schema, catalog.repository)


def deploy_champion(bootstrap: str, catalog: Catalog, version: str = "v7") -> None:
    record = {
        "pipeline": "card-fraud", "model_name": "fraud", "slot": "champion", "role": "CHAMPION", "version": version,
        "artifact": {"uri": "file:///tmp/none.pkl", "sha256": "0" * 64, "signature": "0" * 64,
                     "key_id": "default", "size_bytes": 1},
        "canary_weight": 0.0, "previous_version": None, "decision_id": None, "deployed_at": DEPLOYED_AT,
    }
    topic = catalog["model_deployments"]
    produce(bootstrap, topic.name, [(topic.key_of(record), serde(catalog, "model_deployments").encode(record))])


def feature_vectors(catalog: Catalog, start: int, n: int, shift: float = 0.0, seed: int = 0,
                    pipeline: str = "card-fraud"):
    rng = np.random.default_rng(seed)
    encoder = serde(catalog, "features")
    for i in range(start, start + n):
        value = {
            "event_id": f"{pipeline}-t{i}", "entity_key": f"card-{i % 97}", "pipeline": pipeline,
            "event_time": DEPLOYED_AT + 1_000 + i, "computed_at": DEPLOYED_AT + 1_000 + i, "late": False,
            "numeric": {"amount": float(rng.normal(50 + 15 * shift, 15)),
                        "distance_from_home_km": float(rng.exponential(20)),
                        f"merchant_category={rng.choice(['grocery', 'fuel', 'travel'])}": 1.0},
            "categorical": {"country": str(rng.choice(["DE", "FR", "NL"]))},
            "segments": {},
        }
        yield value["entity_key"], encoder.encode(value)


def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(max(tp.offset, 0) for tp in offsets)
    finally:
        consumer.close()


def wait_committed(bootstrap: str, service: DriftService, total: int, timeout_s: float = 60.0) -> None:
    topic = service.ctx.topic("features")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if committed_total(bootstrap, service.ctx.group_id, topic.name, topic.partitions) >= total:
            return
        time.sleep(0.2)
    raise AssertionError(f"the detector did not consume {total} feature vectors in {timeout_s}s")


@contextmanager
def running(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[DriftService]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    service = build(DriftSettings())
    worker = threading.Thread(target=service.run, name="drift-detector")
    worker.start()
    try:
        yield service
    finally:
        service.stop()
        worker.join(60)
        service.close()
    assert not worker.is_alive(), "the detector did not stop on request"


def wait_for_members(bootstrap: str, group: str, members: int, timeout_s: float = 30.0) -> bool:
    """True once ``group`` is stable with ``members`` members."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        description = admin.describe_consumer_groups([group])[group].result(10)
        if description.state == ConsumerGroupState.STABLE and len(description.members) == members:
            return True
        time.sleep(0.2)
    return False


def drift_events(bootstrap: str, catalog: Catalog, feature: str, timeout_s: float = 60.0) -> list[dict]:
    decoder = serde(catalog, "drift_events")

    def found(records) -> bool:
        return any(decoder.decode(r.value)["feature"] == feature for r in records)

    return [decoder.decode(r.value) for r in drain(bootstrap, catalog["drift_events"].name, timeout_s=timeout_s,
                                                   until=found)]


def test_a_shift_in_one_feature_produces_drift_events_for_it(service_env, loop_catalog, bootstrap_servers,
                                                              monkeypatch):
    deploy_champion(bootstrap_servers, loop_catalog)
    with running(service_env, monkeypatch) as service:
        features = loop_catalog["features"].name
        produce(bootstrap_servers, features, feature_vectors(loop_catalog, 0, REFERENCE))
        wait_committed(bootstrap_servers, service, REFERENCE)  # the reference is in before the shift
        produce(bootstrap_servers, features, feature_vectors(loop_catalog, REFERENCE, 2 * WINDOW, shift=1.5))
        events = drift_events(bootstrap_servers, loop_catalog, "amount")
        # Both drifted windows processed (committed only after their outputs were acknowledged).
        wait_committed(bootstrap_servers, service, REFERENCE + 2 * WINDOW)
        decoder = serde(loop_catalog, "drift_events")
        events = [decoder.decode(r.value) for r in drain(bootstrap_servers, loop_catalog["drift_events"].name)]
        assert service.processor is not None and service.processor.stats.windows == 2

    amount = [e for e in events if e["feature"] == "amount"]
    assert amount, events
    event = amount[0]
    assert (event["kind"], event["detector"], event["pipeline"]) == ("DATA", "ks", "card-fraud")
    assert (event["model_name"], event["model_version"]) == ("fraud", "v7")
    assert event["p_value"] < 0.01 and event["effect_size"] >= 0.25 and event["severity"] == "CRITICAL"
    assert len(amount) == 1, "the second drifted window falls within the cooldown"
    assert {e["feature"] for e in events} == {"amount"}, "unshifted features are not flagged"


def test_a_restarted_detector_rebuilds_its_reference_by_replay(service_env, loop_catalog, bootstrap_servers,
                                                               monkeypatch):
    deploy_champion(bootstrap_servers, loop_catalog)
    features = loop_catalog["features"].name
    with running(service_env, monkeypatch) as service:
        produce(bootstrap_servers, features, feature_vectors(loop_catalog, 0, REFERENCE + WINDOW // 2))
        wait_committed(bootstrap_servers, service, REFERENCE + WINDOW // 2)
        assert service.processor is not None and service.processor.data.reference_ready

    # A new process: without replay it would take the shifted vectors as its reference.
    with running(service_env, monkeypatch) as service:
        produce(bootstrap_servers, features,
                feature_vectors(loop_catalog, REFERENCE + WINDOW // 2, 2 * WINDOW, shift=1.5, seed=1))
        events = drift_events(bootstrap_servers, loop_catalog, "amount")
        assert service.processor is not None
        assert service.processor.stats.replayed >= REFERENCE, "the reference came back from Kafka"
    assert any(e["feature"] == "amount" and e["kind"] == "DATA" for e in events), events


def test_a_restart_rebuilds_the_whole_reference_though_most_of_the_topic_is_another_pipeline_s(
        service_env, loop_catalog, bootstrap_servers, monkeypatch):
    """Nine of ten vectors are another pipeline's: replaying only the first reference_size records of
    each partition since the deployment left the reference short, to be filled with live data."""
    deploy_champion(bootstrap_servers, loop_catalog)
    features = loop_catalog["features"].name
    ours = list(feature_vectors(loop_catalog, 0, REFERENCE + WINDOW // 2))
    others = list(feature_vectors(loop_catalog, 0, 9 * len(ours), seed=3, pipeline="other-pipeline"))
    mixed = [record for i, own in enumerate(ours) for record in [own, *others[9 * i:9 * i + 9]]]
    with running(service_env, monkeypatch) as service:
        produce(bootstrap_servers, features, mixed)
        wait_committed(bootstrap_servers, service, len(mixed), timeout_s=180)
        assert service.processor is not None and service.processor.data.reference_ready

    with running(service_env, monkeypatch) as service:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (service.processor is None or service.processor.stats.replayed == 0):
            time.sleep(0.2)
        assert service.processor is not None and service.processor.stats.replayed > 0, "no warm start"
        assert service.processor.data.reference_ready, "the reference came back whole from Kafka"


def test_a_standby_takes_over_and_detects_what_the_active_replica_left(service_env, loop_catalog,
                                                                        bootstrap_servers, monkeypatch):
    deploy_champion(bootstrap_servers, loop_catalog)
    features = loop_catalog["features"].name
    with running(service_env, monkeypatch) as active:
        produce(bootstrap_servers, features, feature_vectors(loop_catalog, 0, REFERENCE))
        wait_committed(bootstrap_servers, active, REFERENCE)
        with running(service_env, monkeypatch) as standby:
            assert active.lease is not None and standby.lease is not None
            # The standby has joined the lease's group and the group settled with the active replica
            # still holding the lease: only then does "not running" mean waiting, not starting.
            assert wait_for_members(bootstrap_servers, standby.lease.group_id, 2), "the standby never joined"
            assert active.lease.held and not standby.lease.held
            assert standby.runner is None, "the standby waits for the lease instead of sharing partitions"
            active.stop()  # the active replica goes away; its lease is released
            produce(bootstrap_servers, features,
                    feature_vectors(loop_catalog, REFERENCE, 2 * WINDOW, shift=1.5, seed=2))
            events = drift_events(bootstrap_servers, loop_catalog, "amount")
            assert standby.processor is not None and standby.processor.stats.replayed >= REFERENCE
    assert any(e["feature"] == "amount" for e in events), events
