"""The model holder: verified loads, warm-up, atomic swaps, refused artifacts and their alerts."""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.online_scorer.models import ALERT_LOAD_FAILED, ModelHolder
from services.online_scorer.processor import ScoringProcessor
from streamloop.dashboard.records import RecordViews
from streamloop.kafka import ConsumedRecord
from streamloop.ml.prediction import choose_action, typical_vector
from streamloop.service.settings import SerdeSettings
from tests.unit.online_scorer.fakes import (
    BrokenClassifier,
    ConstantClassifier,
    publish,
    slot_key,
    trained_model,
)


def holder_for(spec, artifacts, metrics=None, instance=None) -> tuple[ModelHolder, list[dict]]:
    alerts: list[dict] = []
    return ModelHolder(spec, artifacts, alerts=alerts.append, metrics=metrics, instance=instance,
                       clock=lambda: 1_700_000_100_000), alerts


def deploy(holder: ModelHolder, record: dict) -> None:
    holder.on_deployment(slot_key(record), record)


def test_a_champion_deployment_is_loaded_and_signals_ready(spec, artifacts) -> None:
    holder, alerts = holder_for(spec, artifacts)
    assert holder.current.champion is None
    assert not holder.wait_for_champion(0)
    deploy(holder, publish(artifacts, spec, trained_model(spec), "v1"))
    champion = holder.current.champion
    assert champion.version == "v1" and champion.role == "CHAMPION" and champion.slot == "champion"
    assert holder.wait_for_champion(0)
    assert champion.model.predict_proba_one({"amount": 10.0})
    assert alerts == []


def test_tampered_artifact_is_refused_and_the_old_model_keeps_serving(spec, artifacts, metrics) -> None:
    holder, alerts = holder_for(spec, artifacts, metrics)
    deploy(holder, publish(artifacts, spec, ConstantClassifier(0.1), "v1"))
    before = holder.current
    record = publish(artifacts, spec, ConstantClassifier(0.9), "v2")
    path = Path(record["artifact"]["uri"].removeprefix("file://"))
    original = path.read_bytes()
    tampered = original.replace(struct.pack(">d", 0.9), struct.pack(">d", 0.0))  # a valid pickle of p=0.0
    assert tampered != original
    path.write_bytes(tampered)
    deploy(holder, record)
    assert holder.current is before, "nothing was swapped"
    assert holder.current.champion.version == "v1"
    assert holder.current.champion.model.p == 0.1
    assert holder.load_failures == 1
    [alert] = alerts
    assert alert["alert"] == "model_load_failed" and alert["state"] == "RAISED"
    assert alert["model_version"] == "v2" and alert["source"] == "online-scorer"
    assert "content hash does not match" in alert["message"] and "v1 keeps serving" in alert["message"]
    exposition = generate_latest(metrics.registry).decode()
    assert 'streamloop_model_load_failures_total{' in exposition
    assert 'reason="ArtifactIntegrityError"' in exposition


def test_a_forged_signature_is_refused(spec, artifacts) -> None:
    holder, alerts = holder_for(spec, artifacts)
    record = publish(artifacts, spec, ConstantClassifier(0.2), "v1")
    record["artifact"]["signature"] = "0" * 64
    deploy(holder, record)
    assert holder.current.champion is None
    assert "signature does not verify" in alerts[0]["message"]


def test_a_missing_artifact_or_a_failed_warm_up_keeps_the_current_model(spec, artifacts) -> None:
    holder, alerts = holder_for(spec, artifacts)
    deploy(holder, publish(artifacts, spec, ConstantClassifier(0.1), "v1"))
    missing = publish(artifacts, spec, ConstantClassifier(0.3), "v2")
    Path(missing["artifact"]["uri"].removeprefix("file://")).unlink()
    deploy(holder, missing)
    deploy(holder, publish(artifacts, spec, BrokenClassifier(), "v3"))
    assert holder.current.champion.version == "v1"
    assert [a["model_version"] for a in alerts] == ["v2", "v3"]
    assert "warm-up" in alerts[1]["message"]


def test_an_untrained_tree_loads_and_serves_with_no_opinion(spec, catalog, artifacts) -> None:
    # The publisher's bootstrap champion is untrained. A Hoeffding tree then answers {} until it
    # learns: refused at warm-up, it left a tree pipeline with no champion, so no predictions, no
    # joined labels and no model, ever (found by benchmarks/learning_quality_kafka.py on Agrawal).
    from river import tree

    holder, alerts = holder_for(spec, artifacts)
    deploy(holder, publish(artifacts, spec, tree.HoeffdingTreeClassifier(), "bootstrap"))
    assert holder.current.champion is not None and holder.current.champion.version == "bootstrap", alerts
    assert alerts == []
    processor = ScoringProcessor(spec, holder, features=catalog["features"], predictions=catalog["predictions"],
                                 shadow_predictions=catalog["shadow_predictions"])
    vector = {"pipeline": spec.name, "event_id": "e1", "entity_key": "card-1", "event_time": 1_700_000_000_000,
              "numeric": {"amount": 10.0}, "categorical": {}}
    [prediction] = [o.value for o in processor.process([ConsumedRecord("f", 0, 0, "card-1", vector, 0)]).outputs]
    assert prediction["model_version"] == "bootstrap"
    assert prediction["predicted_class"] is None and prediction["probabilities"] == {}
    assert prediction["action"] == choose_action(spec.model.actions)


def test_a_good_load_after_a_failure_clears_the_alert_of_the_version_that_failed(spec, artifacts) -> None:
    holder, alerts = holder_for(spec, artifacts)
    deploy(holder, publish(artifacts, spec, BrokenClassifier(), "v1"))
    deploy(holder, publish(artifacts, spec, ConstantClassifier(0.1), "v2"))
    assert [(a["state"], a["model_version"], a["labels"]) for a in alerts] == [
        ("RAISED", "v1", {"slot": "champion"}), ("CLEARED", "v1", {"slot": "champion"})]
    assert alerts[1]["message"] == "slot champion loaded version v2"


def test_a_failed_slot_deployed_again_with_the_version_it_serves_is_cleared(spec, artifacts) -> None:
    holder, alerts = holder_for(spec, artifacts)
    champion = publish(artifacts, spec, ConstantClassifier(0.1), "v1")
    deploy(holder, champion)
    deploy(holder, publish(artifacts, spec, BrokenClassifier(), "v2"))
    deploy(holder, champion)  # v2 rolled back: the slot holds what it serves again
    assert [(a["state"], a["model_version"]) for a in alerts] == [("RAISED", "v2"), ("CLEARED", "v2")]
    assert alerts[1]["message"] == "slot champion is back to version v1"


def test_a_slot_loading_fine_clears_its_own_failure_only(spec, catalog, artifacts) -> None:
    # The scorer clears per slot: a canary loading fine must not hide the champion slot's failure,
    # nor one replica's CLEARED another replica's failure, on the dashboard that reads these alerts.
    replica_0, alerts_0 = holder_for(spec, artifacts, instance="online-scorer-0")
    replica_1, alerts_1 = holder_for(spec, artifacts, instance="online-scorer-1")
    champion = publish(artifacts, spec, ConstantClassifier(0.1), "v1")
    broken_champion = publish(artifacts, spec, BrokenClassifier(), "v2")
    broken_canary = publish(artifacts, spec, BrokenClassifier(), "v3", slot="canary", role="CANARY", canary_weight=0.1)
    canary = publish(artifacts, spec, ConstantClassifier(0.3), "v4", slot="canary", role="CANARY", canary_weight=0.1)
    for holder in (replica_0, replica_1):
        for record in (champion, broken_champion, broken_canary):
            deploy(holder, record)
    deploy(replica_1, canary)
    deploy(replica_1, publish(artifacts, spec, ConstantClassifier(0.2), "v5"))  # replica 0 has not read it yet
    assert [(a["state"], a["model_version"], a["labels"]["slot"]) for a in alerts_1] == [
        ("RAISED", "v2", "champion"), ("RAISED", "v3", "canary"), ("CLEARED", "v3", "canary"),
        ("CLEARED", "v2", "champion")]
    assert {a["labels"]["instance"] for a in alerts_0} == {"online-scorer-0"}

    serde = SerdeSettings().serde(catalog["alerts"], catalog.repository)  # as the topic carries them
    views = RecordViews()
    for alert in alerts_0 + alerts_1:
        views.add("alerts", ALERT_LOAD_FAILED, serde.decode(serde.encode(alert)))
    assert sorted((a["model_version"], a["labels"]["slot"], a["labels"]["instance"])
                  for a in views.tables()["alerts_active"]) == [
        ("v2", "champion", "online-scorer-0"), ("v3", "canary", "online-scorer-0")]


def test_the_same_deployment_again_is_not_reloaded(spec, artifacts) -> None:
    holder, _ = holder_for(spec, artifacts)
    record = publish(artifacts, spec, ConstantClassifier(0.1), "v1")
    deploy(holder, record)
    first = holder.current.champion
    deploy(holder, dict(record))
    assert holder.current.champion is first


def test_shadow_and_canary_slots_and_their_retirement(spec, artifacts) -> None:
    holder, _ = holder_for(spec, artifacts)
    deploy(holder, publish(artifacts, spec, ConstantClassifier(0.1), "v1"))
    shadow = publish(artifacts, spec, ConstantClassifier(0.2), "v2", slot="shadow/v2", role="SHADOW")
    canary = publish(artifacts, spec, ConstantClassifier(0.3), "v3", slot="canary", role="CANARY", canary_weight=0.2)
    deploy(holder, shadow)
    deploy(holder, canary)
    models = holder.current
    assert [s.version for s in models.shadows] == ["v2"]
    assert models.canary.version == "v3" and models.canary.canary_weight == 0.2
    holder.on_deployment(slot_key(shadow), None)
    assert holder.current.shadows == ()
    assert holder.current.canary.version == "v3"
    holder.on_deployment(f"{spec.name}/{spec.model.name}/champion", None)
    assert holder.current.champion.version == "v1", "a retired champion slot keeps the champion serving"


def test_deployments_of_other_pipelines_or_models_are_ignored(spec, artifacts) -> None:
    holder, _ = holder_for(spec, artifacts)
    other = publish(artifacts, spec, ConstantClassifier(0.1), "v1")
    deploy(holder, {**other, "pipeline": "another-pipeline"})
    deploy(holder, {**other, "model_name": "another-model"})
    assert holder.current.champion is None


def test_typical_vector_uses_the_scaler_means(spec) -> None:
    model = trained_model(spec)
    assert set(typical_vector(model)) == set(model["StandardScaler"].means)
    assert typical_vector(ConstantClassifier()) == {}


def test_swaps_are_atomic_under_concurrent_scoring(spec, catalog, artifacts) -> None:
    """Scoring threads never see a half-swapped model: every prediction names the version that made it."""
    holder, _ = holder_for(spec, artifacts)
    versions = {f"v{i}": i / 10 for i in range(1, 9)}
    records = {v: publish(artifacts, spec, ConstantClassifier(p), v) for v, p in versions.items()}
    deploy(holder, records["v1"])
    processor = ScoringProcessor(spec, holder, features=catalog["features"], predictions=catalog["predictions"],
                                 shadow_predictions=catalog["shadow_predictions"])
    batch = [ConsumedRecord("features", 0, i, f"card-{i}", {
        "event_id": f"e{i}", "entity_key": f"card-{i}", "event_time": 1_700_000_000_000, "pipeline": spec.name,
        "numeric": {"amount": float(i)}, "categorical": {}}, 0) for i in range(20)]
    stop = threading.Event()
    seen: list[tuple[str, float]] = []
    errors: list[BaseException] = []

    def score() -> None:
        try:
            while not stop.is_set():
                result = processor.process(batch)
                batch_versions = {out.value["model_version"] for out in result.outputs}
                assert len(batch_versions) == 1, "one batch, one model version"
                seen.extend((out.value["model_version"], out.value["probabilities"]["true"]) for out in result.outputs)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=score) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(30):
        for version in versions:
            deploy(holder, records[version])
    stop.set()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads), "a scoring thread is stuck (the holder's lock?)"
    assert not errors, errors[:1]
    assert len({v for v, _ in seen}) > 1, "swaps happened while scoring"
    assert all(p == pytest.approx(versions[v]) for v, p in seen)


def test_metrics_name_the_served_version(spec, artifacts, metrics) -> None:
    holder, _ = holder_for(spec, artifacts, metrics)
    deploy(holder, publish(artifacts, spec, ConstantClassifier(0.1), "v1", deployed_at=1_700_000_000_000))
    deploy(holder, publish(artifacts, spec, ConstantClassifier(0.2), "v2", deployed_at=1_700_000_000_000))
    holder.report_age(1_700_000_060_000)
    exposition = generate_latest(metrics.registry).decode()
    assert 'streamloop_model_info{model_name="fraud",pipeline="card-fraud",role="CHAMPION",service="online-scorer",' \
           'slot="champion",version="v2"} 1.0' in exposition
    assert 'version="v1"' not in exposition, "a replaced version is no longer exported (it was, at 0)"
    assert 'streamloop_model_age_seconds{model_name="fraud",pipeline="card-fraud",service="online-scorer",' \
           'slot="champion"} 60.0' \
        in exposition


def exported(metrics, name: str) -> dict[str, float]:
    """``name``'s series in the exposition, by slot (and version where it has one)."""
    return {",".join(filter(None, (s.labels["slot"], s.labels.get("version")))): s.value
            for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
            for s in family.samples if s.name == name}


def test_a_retired_shadow_s_series_are_no_longer_exported(spec, artifacts, metrics) -> None:
    """A shadow slot is named by its version: each retired one left an info series at 0 and an age
    series frozen at its last value, one more per retrained version."""
    holder, _ = holder_for(spec, artifacts, metrics)
    deploy(holder, publish(artifacts, spec, ConstantClassifier(0.1), "v1", deployed_at=1_700_000_000_000))
    shadow = publish(artifacts, spec, ConstantClassifier(0.2), "v2", slot="shadow/v2", role="SHADOW",
                     deployed_at=1_700_000_030_000)
    deploy(holder, shadow)
    assert exported(metrics, "streamloop_model_info") == {"champion,v1": 1, "shadow/v2,v2": 1}
    # At the swap, from the holder's clock (1_700_000_100_000).
    assert exported(metrics, "streamloop_model_age_seconds") == {"champion": 100, "shadow/v2": 70}

    holder.on_deployment(slot_key(shadow), None)
    assert exported(metrics, "streamloop_model_info") == {"champion,v1": 1}
    assert exported(metrics, "streamloop_model_age_seconds") == {"champion": 100}
    holder.report_age(1_700_000_160_000)
    assert exported(metrics, "streamloop_model_age_seconds") == {"champion": 160}


def test_a_failed_shadow_slot_that_is_retired_clears_its_alert(spec, artifacts) -> None:
    """A shadow slot is named by its version and never loads again: without this the alert stayed RAISED."""
    holder, alerts = holder_for(spec, artifacts)
    deploy(holder, publish(artifacts, spec, ConstantClassifier(0.1), "v1"))
    shadow = publish(artifacts, spec, BrokenClassifier(), "v9", slot="shadow/v9", role="SHADOW")
    deploy(holder, shadow)
    holder.on_deployment(slot_key(shadow), None)
    assert [(a["state"], a["model_version"]) for a in alerts] == [("RAISED", "v9"), ("CLEARED", "v9")]
    assert "retired" in alerts[-1]["message"]


class AnnouncedLock:
    """A lock that says when a thread has to wait for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waited = threading.Event()

    def __enter__(self) -> AnnouncedLock:
        if not self._lock.acquire(blocking=False):
            self.waited.set()
            self._lock.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._lock.release()


def test_an_age_report_that_read_the_slots_before_a_retirement_does_not_bring_the_slot_back(
        spec, artifacts, metrics, monkeypatch) -> None:
    """The runner thread's report (between batches) read the served slots, the table reader's thread
    retired a shadow and replaced the gauge, then the report replaced it with what it had read: the
    retired slot's age was exported again until the next report."""
    holder, _ = holder_for(spec, artifacts, metrics)
    deploy(holder, publish(artifacts, spec, ConstantClassifier(0.1), "v1", deployed_at=1_700_000_000_000))
    shadow = publish(artifacts, spec, ConstantClassifier(0.2), "v2", slot="shadow/v2", role="SHADOW",
                     deployed_at=1_700_000_030_000)
    deploy(holder, shadow)
    lock = AnnouncedLock()
    monkeypatch.setattr(holder, "_age_lock", lock, raising=False)
    replace, runner = holder._age, threading.current_thread()
    retiring = threading.Thread(target=holder.on_deployment, args=(slot_key(shadow), None), daemon=True)

    def report_racing_a_retirement(series) -> None:  # noqa: ANN001
        if threading.current_thread() is not runner:
            replace(series)  # the retirement's own report
            return
        series = list(series)  # read: the champion and the shadow
        retiring.start()
        # The retirement runs until it has replaced the gauge itself, or until it waits for this report.
        for _ in range(500):
            if not retiring.is_alive() or lock.waited.wait(0.01):
                break
        replace(series)

    monkeypatch.setattr(holder, "_age", report_racing_a_retirement)
    holder.report_age(1_700_000_160_000)
    retiring.join(5)
    assert not retiring.is_alive()
    assert exported(metrics, "streamloop_model_info") == {"champion,v1": 1}
    assert set(exported(metrics, "streamloop_model_age_seconds")) == {"champion"}
