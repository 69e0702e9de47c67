"""The drift processor without a broker: records in, DriftEvent records out.

Small windows (reference 500, window 250, events 100 ms apart) keep these fast; the statistics
themselves are tested in test_data_drift.py and test_concept_drift.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest

from services.drift_detector.events import Champion
from services.drift_detector.metrics import PrometheusDriftMetrics
from services.drift_detector.processor import DriftProcessor, DriftTopics
from services.drift_detector.settings import DriftSettings
from streamloop.contracts import PipelineSpec, SchemaRepository
from streamloop.contracts.learning_specs import DriftSpec
from streamloop.kafka import KafkaSettings
from streamloop.kafka.group_history import HistoryUnavailableError
from streamloop.kafka.records import ConsumedRecord, ProcessResult, TopicPartitionRef
from streamloop.kafka.runner import StageRunner
from streamloop.kafka.runner_settings import RunnerSettings, StageTopics
from streamloop.ml.evaluation import millis
from streamloop.ml.promotion import class_key
from streamloop.serde import SingleObjectSerde
from streamloop.serde.raw import RawSerde
from streamloop.telemetry import ServiceMetrics
from tests.kafka_fakes import FakeConsumer, FakeProducer

TOPICS = DriftTopics("features", "predictions", "labeled", "drift")
DEPLOYED_AT = 1_800_000_000_000
STEP_MS = 100
REFERENCE, WINDOW, COOLDOWN_MS = 500, 250, 120_000
CHAMPION = Champion("card-fraud", "fraud", "v1", DEPLOYED_AT)


class Champions:
    def __init__(self, champion: Champion | None = CHAMPION) -> None:
        self.current = champion

    def champion(self) -> Champion | None:
        return self.current


class History:
    """The topics as lists of records, all of them before the (pretend) committed offsets."""

    def __init__(self, topics: dict[str, list[ConsumedRecord]], drift_events: list[dict] | None = None) -> None:
        self.topics = topics
        self.drift_events = drift_events or []

    def since(self, topic: str, time_ms: int, limit: int, counts=lambda _record: True) -> list[ConsumedRecord]:
        return [r for r in self.topics.get(topic, []) if r.timestamp_ms >= time_ms and counts(r)][:limit]

    def tail(self, topic: str, limit: int) -> list[ConsumedRecord]:
        return self.topics.get(topic, [])[-limit:] if limit > 0 else []

    def latest(self, topic: str, limit: int) -> list[dict]:
        assert topic == TOPICS.drift_events
        return self.drift_events[-limit:]


@pytest.fixture
def spec(demo_pipeline: PipelineSpec) -> PipelineSpec:
    drift = DriftSpec(reference_size=REFERENCE, window_size=WINDOW, p_value=0.01, correction="holm",
                      cooldown=COOLDOWN_MS)
    return demo_pipeline.model_copy(update={"drift": drift})


def processor(spec: PipelineSpec, champions: Champions | None = None, history: History | None = None,
              **settings: Any) -> DriftProcessor:
    return DriftProcessor(spec, TOPICS, DriftSettings(**settings), champions or Champions(), history,
                          clock=lambda: 1_900_000_000_000)


def at(i: int, start: int = DEPLOYED_AT) -> int:
    return start + i * STEP_MS


def features(n: int, start_index: int = 0, shift: float = 0.0, seed: int = 0, partition: int | None = None,
             start: int = DEPLOYED_AT) -> list[ConsumedRecord]:
    """Feature vectors; ``shift`` moves ``amount`` by that many standard deviations."""
    rng = np.random.default_rng(seed)
    records = []
    for k in range(n):
        i = start_index + k
        numeric = {"amount": float(rng.normal(shift)), "distance": float(rng.exponential()),
                   f"merchant_category={rng.choice(['fuel', 'grocery', 'travel'])}": 1.0}
        value = {"event_id": f"e{i}", "entity_key": f"c{i % 7}", "pipeline": "card-fraud",
                 "event_time": datetime.fromtimestamp(at(i, start) / 1000, UTC), "numeric": numeric,
                 "categorical": {"country": str(rng.choice(["DE", "FR"]))}, "segments": {},
                 "computed_at": datetime.fromtimestamp(at(i, start) / 1000, UTC), "late": False}
        where = (i % 3, i) if partition is None else (partition, k)
        records.append(ConsumedRecord(TOPICS.features, *where, value["entity_key"], value, at(i, start)))
    return records


def predictions(n: int, start_index: int, shift: float = 0.0, version: str = "v1", role: str = "CHAMPION",
                seed: int = 1, partition: int = 0) -> list[ConsumedRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for k in range(n):
        i = start_index + k
        p = float(np.clip(rng.beta(2, 8) + shift, 0, 1))
        value = {"event_id": f"e{i}", "pipeline": "card-fraud", "model_name": "fraud", "model_version": version,
                 "role": role, "probabilities": {"True": p, "False": 1 - p},  # spec says "true"
                 "event_time": datetime.fromtimestamp(at(i) / 1000, UTC)}
        records.append(ConsumedRecord(TOPICS.predictions, partition, i, None, value, at(i)))
    return records


def labeled(n: int, start_index: int, error_rate: float, version: str = "v1", seed: int = 2,
            partition: int = 0) -> list[ConsumedRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for k in range(n):
        i = start_index + k
        label = bool(rng.random() < 0.5)
        predicted = (not label) if rng.random() < error_rate else label
        value = {"event_id": f"e{i}", "pipeline": "card-fraud", "label": label,
                 "event_time": datetime.fromtimestamp(at(i) / 1000, UTC),
                 "predictions": [{"model_name": "fraud", "model_version": version, "role": "CHAMPION",
                                  "predicted_class": str(predicted).lower(), "probabilities": {}}]}
        records.append(ConsumedRecord(TOPICS.labeled_examples, partition, i, None, value, at(i)))
    return records


def batches(records: list[ConsumedRecord], size: int = 100) -> Iterator[list[ConsumedRecord]]:
    for start in range(0, len(records), size):
        yield records[start:start + size]


def run(p: DriftProcessor, records: list[ConsumedRecord]) -> list[dict]:
    out: list[dict] = []
    for batch in batches(records):
        result = p.process(batch)
        assert isinstance(result, ProcessResult) and not result.rejections
        out.extend(o.value for o in result.outputs if o.value is not None)
    return out


def drift_serde() -> SingleObjectSerde:
    repository = SchemaRepository()
    return SingleObjectSerde(repository.load("monitoring/drift_event.avsc"), repository)


def test_without_a_champion_nothing_is_collected(spec: PipelineSpec) -> None:
    p = processor(spec, Champions(None))
    assert run(p, features(REFERENCE + 2 * WINDOW, shift=1.0)) == []
    assert p.stats.vectors == 0 and p.stats.skipped == REFERENCE + 2 * WINDOW


def test_shifted_feature_produces_one_schema_valid_drift_event(spec: PipelineSpec) -> None:
    p = processor(spec)
    before_deployment = features(300, start=DEPLOYED_AT - 300 * STEP_MS, shift=3.0, seed=9, partition=5)
    stable = features(REFERENCE + WINDOW)
    shifted = features(WINDOW, start_index=REFERENCE + WINDOW, shift=1.0, seed=5)
    events = run(p, before_deployment + stable + shifted)
    assert p.stats.skipped == 300, "vectors produced before the deployment belong to the previous champion"
    assert [(e["kind"], e["detector"], e["feature"]) for e in events] == [("DATA", "ks", "amount")]
    event = events[0]
    assert event["model_name"] == "fraud" and event["model_version"] == "v1" and event["pipeline"] == "card-fraud"
    assert event["p_value"] < 0.01 and event["effect_size"] >= 0.25 and event["severity"] == "CRITICAL"
    assert event["window_start"] == at(REFERENCE + WINDOW) and event["window_end"] == at(REFERENCE + 2 * WINDOW - 1)
    serde = drift_serde()
    decoded = serde.decode(serde.encode(event))
    assert decoded["feature"] == "amount" and decoded["kind"] == "DATA"


def test_a_feature_gone_missing_is_a_schema_valid_presence_event(spec: PipelineSpec) -> None:
    p = processor(spec)
    stable = features(REFERENCE + WINDOW)
    nulled = features(WINDOW, start_index=REFERENCE + WINDOW, seed=5)
    for record in nulled:  # the upstream field behind `distance` went null: the featurizer leaves it out
        del record.value["numeric"]["distance"]
    events = run(p, stable + nulled)
    assert [(e["kind"], e["detector"], e["feature"], e["severity"]) for e in events] == [
        ("DATA", "presence", "distance", "CRITICAL")]
    serde = drift_serde()
    assert serde.decode(serde.encode(events[0]))["detector"] == "presence"


def test_persistent_drift_is_reported_once_per_cooldown(spec: PipelineSpec) -> None:
    p = processor(spec)
    windows = 12  # 25 s of stream time each; the cooldown is 120 s
    events = run(p, features(REFERENCE) + features(windows * WINDOW, start_index=REFERENCE, shift=1.0))
    ends = [e["window_end"] for e in events if e["feature"] == "amount"]
    assert p.stats.detections >= windows, "every window detects the drift"
    assert len(ends) == 3, ends
    assert all(b - a >= COOLDOWN_MS for a, b in zip(ends, ends[1:], strict=False))


def test_an_escalation_within_the_cooldown_is_reported(spec: PipelineSpec) -> None:
    p = processor(spec)
    records = (features(REFERENCE) + features(WINDOW, start_index=REFERENCE, shift=0.45)
               + features(WINDOW, start_index=REFERENCE + WINDOW, shift=1.5, seed=3))
    events = [e for e in run(p, records) if e["feature"] == "amount"]
    assert [e["severity"] for e in events] == ["WARNING", "CRITICAL"]


def test_min_severity_holds_back_weaker_detections(spec: PipelineSpec) -> None:
    p = processor(spec, min_severity="CRITICAL")
    records = features(REFERENCE) + features(WINDOW, start_index=REFERENCE, shift=0.45)
    assert run(p, records) == []
    assert p.stats.detections == 1 and p.stats.emitted == 0


def test_a_replayed_batch_is_not_counted_twice(spec: PipelineSpec) -> None:
    p = processor(spec)
    records = features(300)
    p.process(records)
    p.process(records[100:])
    assert p.stats.vectors == 300 and p.data.pending == 300


def without_event_time(record: ConsumedRecord) -> ConsumedRecord:
    value = {k: v for k, v in record.value.items() if k != "event_time"}
    return ConsumedRecord(record.topic, record.partition, record.offset, record.key, value, record.timestamp_ms)


def test_a_record_that_fails_is_dead_lettered_by_the_runner_not_skipped(spec: PipelineSpec) -> None:
    p = processor(spec)
    records = features(10)
    records[5] = without_event_time(records[5])
    stage = StageRunner("drift-detector", "drift-group", KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                        StageTopics({TOPICS.features: RawSerde()}, {TOPICS.drift_events: RawSerde()}), p,
                        RunnerSettings(retry_backoff_s=0.001))
    stage.delivery.producer, stage.consumer = FakeProducer(), FakeConsumer()
    # The batch fails at record 5; the runner then gives the processor each record alone.
    result = stage._process(records)
    assert [(r.record.partition, r.record.offset) for r in result.rejections] == [(2, 5)]
    assert p.stats.vectors == 9 and p.data.pending == 9, "every other record counted once"


def test_a_new_champion_replaces_the_reference(spec: PipelineSpec) -> None:
    champions = Champions()
    p = processor(spec, champions)
    run(p, features(REFERENCE + WINDOW))
    assert p.data.reference_ready
    champions.current = Champion("card-fraud", "fraud", "v2", at(REFERENCE + WINDOW))
    p.tick(0)
    assert not p.data.reference_ready and p.stats.champions == ["v1", "v2"]
    # The same version published again (e.g. a new deployed_at) keeps the state.
    run(p, features(10, start_index=REFERENCE + WINDOW))
    champions.current = Champion("card-fraud", "fraud", "v2", at(REFERENCE + WINDOW + 1))
    p.tick(0)
    assert p.data.pending == 10


def test_prediction_drift_on_the_champions_score_only(spec: PipelineSpec) -> None:
    p = processor(spec)
    others = (predictions(REFERENCE, 0, shift=0.5, role="CANARY", partition=1)
              + predictions(REFERENCE, 0, shift=0.5, version="v0", partition=2))
    records = others + predictions(REFERENCE + WINDOW, 0) + predictions(WINDOW, REFERENCE + WINDOW, shift=0.2, seed=4)
    events = run(p, records)
    assert p.stats.predictions == REFERENCE + 2 * WINDOW
    assert [(e["kind"], e["detector"], e["feature"]) for e in events] == [("PREDICTION", "ks", "probability[true]")]


def test_concept_drift_from_the_errors_of_what_served(spec: PipelineSpec) -> None:
    p = processor(spec)
    earlier_champion = labeled(300, 0, 0.1, version="v0", partition=1)
    shadow_only = [ConsumedRecord(r.topic, 2, r.offset, r.key, {**r.value, "predictions": [
        {**r.value["predictions"][0], "role": "SHADOW"}]}, r.timestamp_ms) for r in labeled(50, 0, 0.9)]
    records = earlier_champion + shadow_only + labeled(4000, 0, 0.1) + labeled(3000, 4000, 0.35, seed=3)
    events = run(p, records)
    assert p.stats.labeled == 7300 and p.stats.skipped == 50, "served by v0 or v1 counts; a shadow's error does not"
    concept = [e for e in events if e["kind"] == "CONCEPT"]
    assert {e["detector"] for e in concept} == {"adwin", "page_hinkley", "ddm"}
    for event in concept:
        assert event["window_end"] >= at(4000) and event["severity"] == "CRITICAL"
        assert event["effect_size"] > 0 and event["p_value"] is None and event["feature"] is None
    serde = drift_serde()
    assert all(serde.decode(serde.encode(e)) for e in concept)


def test_warm_start_rebuilds_the_reference_and_tests_the_last_window(spec: PipelineSpec) -> None:
    consumed = features(REFERENCE + 3 * WINDOW) + features(WINDOW, start_index=REFERENCE + 3 * WINDOW, shift=1.0)
    p = processor(spec, history=History({TOPICS.features: consumed}))
    p.on_assigned([TopicPartitionRef(TOPICS.features, 0)])
    events = [o.value for o in p.tick(0).outputs]
    assert [(e["kind"], e["feature"]) for e in events] == [("DATA", "amount")]
    assert p.stats.replayed == REFERENCE + WINDOW, "the reference from deployed_at, then the last window only"


def test_warm_start_restores_cooldowns_from_the_drift_topic(spec: PipelineSpec) -> None:
    consumed = features(REFERENCE + 3 * WINDOW) + features(WINDOW, start_index=REFERENCE + 3 * WINDOW, shift=1.0)
    already = {"pipeline": "card-fraud", "kind": "DATA", "detector": "ks", "feature": "amount", "severity": "CRITICAL",
               "window_end": datetime.fromtimestamp(at(REFERENCE + 3 * WINDOW) / 1000, UTC),
               "model_name": "fraud", "model_version": "v1"}
    p = processor(spec, history=History({TOPICS.features: consumed}, [already]))
    p.on_assigned([TopicPartitionRef(TOPICS.features, 0)])
    assert p.tick(0).outputs == [], "emitted before the restart: not again within the cooldown"
    assert p.stats.detections == 1
    # Losing the partitions drops the state; the next assignment rebuilds it.
    p.on_revoked([TopicPartitionRef(TOPICS.features, 0)])
    assert not p.data.reference_ready and p.champion is None


def test_a_failed_warm_start_leaves_empty_windows_instead_of_crashing(spec: PipelineSpec) -> None:
    class Broken(History):
        def since(self, topic: str, time_ms: int, limit: int, counts=None) -> list[ConsumedRecord]:
            raise HistoryUnavailableError("replaying features timed out")

    p = processor(spec, history=Broken({TOPICS.features: features(REFERENCE)}))
    p.on_assigned([TopicPartitionRef(TOPICS.features, 0)])
    assert not p.data.reference_ready and p.data.pending == 0
    assert run(p, features(REFERENCE + WINDOW)) == [] and p.data.reference_ready


def test_a_record_that_fails_in_the_replay_is_skipped(spec: PipelineSpec) -> None:
    consumed = features(REFERENCE + 3 * WINDOW) + features(WINDOW, start_index=REFERENCE + 3 * WINDOW, shift=1.0)
    consumed[10] = without_event_time(consumed[10])
    consumed[-10] = without_event_time(consumed[-10])
    p = processor(spec, history=History({TOPICS.features: consumed}))
    p.on_assigned([TopicPartitionRef(TOPICS.features, 0)])
    assert p.data.reference_ready and p.stats.replayed == REFERENCE + WINDOW - 2
    # The reference, one vector short, took the first of the last window's, which is two short.
    assert p.data.pending == WINDOW - 2


def test_window_metrics_are_exported(spec: PipelineSpec) -> None:
    service_metrics = ServiceMetrics("drift-detector")
    p = DriftProcessor(spec, TOPICS, DriftSettings(), Champions(), metrics=PrometheusDriftMetrics(service_metrics))
    run(p, features(REFERENCE) + features(WINDOW, start_index=REFERENCE, shift=1.0))
    text = generate_latest(service_metrics.registry).decode()
    for line in ('streamloop_drift_psi{feature="amount",kind="DATA",service="drift-detector"}',
                 'streamloop_drift_p_value{feature="merchant_category",kind="DATA",service="drift-detector"}',
                 'streamloop_drift_statistic{feature="amount",kind="DATA",service="drift-detector",test="ks"}',
                 'streamloop_drift_windows_total{kind="DATA",service="drift-detector"} 1.0',
                 'streamloop_drift_detections_total{detector="ks",emitted="true",kind="DATA",'
                 'service="drift-detector",severity="CRITICAL"} 1.0'):
        assert line in text, line
    service_metrics.shutdown()


def labeled_errors(errors: list[float]) -> list[ConsumedRecord]:
    """A regression model's labels, each served a prediction ``error`` below it."""
    served = {"model_name": "fraud", "model_version": "v1", "role": "CHAMPION", "value": 1.0}
    return [ConsumedRecord(TOPICS.labeled_examples, 0, i, None,
                           {"event_id": f"e{i}", "pipeline": "card-fraud", "label": 1.0 + error,
                            "event_time": datetime.fromtimestamp(at(i) / 1000, UTC), "predictions": [served]}, at(i))
            for i, error in enumerate(errors)]


def test_regression_errors_left_out_or_clipped_are_exported_once(spec: PipelineSpec) -> None:
    """An absurd error is left out and one far above the rest clipped (test_concept_drift.py); both are
    exported by reason, once: a restart replays the labels into the detectors, not into the counter."""
    regression = spec.model_copy(update={"model": spec.model.model_copy(update={"task": "regression"})})
    errors = [float(e) for e in np.abs(np.random.default_rng(0).normal(0.5, 0.1, 300))]
    errors[5], errors[10], errors[200] = 1e200, 1e6, 1e6  # the 10th is held until the cut-off is known
    service_metrics = ServiceMetrics("drift-detector")

    def exported(reason: str) -> float | None:
        return service_metrics.registry.get_sample_value(
            "streamloop_drift_errors_adjusted_total", {"service": "drift-detector", "model": "fraud", "reason": reason})

    metrics = PrometheusDriftMetrics(service_metrics)
    p = DriftProcessor(regression, TOPICS, DriftSettings(), Champions(), metrics=metrics)
    run(p, labeled_errors(errors))
    assert (p.concept.unusable_errors, p.concept.clipped_errors) == (1, 2)
    assert (exported("unusable"), exported("clipped")) == (1.0, 2.0)
    history = History({TOPICS.labeled_examples: labeled_errors(errors)})
    restarted = DriftProcessor(regression, TOPICS, DriftSettings(), Champions(), history, metrics)
    restarted.on_assigned([TopicPartitionRef(TOPICS.labeled_examples, 0)])
    restarted.tick(0)
    assert restarted.stats.replayed == 300 and restarted.concept.clipped_errors == 2
    assert (exported("unusable"), exported("clipped")) == (1.0, 2.0)
    run(restarted, labeled_errors(errors + [1e200])[-1:])
    assert (exported("unusable"), exported("clipped")) == (2.0, 2.0)
    service_metrics.shutdown()


class ErrorRates:
    """DriftMetrics that keep what the error-rate gauge is set to, in order."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def window(self, *_args: object) -> None:
        pass

    def detection(self, *_args: object) -> None:
        pass

    def error_rate(self, _model: str, value: float) -> None:
        self.rates.append(value)

    def errors_adjusted(self, *_args: object) -> None:
        pass


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_the_error_rate_gauge_is_set_once_per_window_of_errors_taken_in(spec: PipelineSpec, task: str) -> None:
    """A regression's first 100 errors are held until the clipping cut-off is known: the detectors had taken in
    none, and the gauge was set to 0.0 at each of them (99 times, the true rate ~2.0); then the held errors went
    in at once, past the multiple of the window, and the gauge stayed at 0.0 a window longer."""
    rates = ErrorRates()
    if task == "regression":
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"task": "regression"})})
        records = labeled_errors([float(e) for e in np.abs(np.random.default_rng(0).normal(2.0, 0.1, 2 * WINDOW))])
    else:
        records = labeled(2 * WINDOW, 0, 0.2)
    p = DriftProcessor(spec, TOPICS, DriftSettings(), Champions(), metrics=rates)
    run(p, records[:100])
    assert rates.rates == []
    run(p, records[100:])

    assert p.concept.examples == 2 * WINDOW
    assert len(rates.rates) == 2, rates.rates
    assert all(rate == pytest.approx(2.0 if task == "regression" else 0.2, abs=0.1) for rate in rates.rates), \
        rates.rates


@pytest.mark.parametrize(("value", "expected"), [(True, "true"), ("True", "true"), (1.0, "1"), (2, "2"), ("x", "x")])
def test_labels_and_classes_compare_as_one_spelling(value: object, expected: str) -> None:
    """The detector, the metrics, the promotion losses and training spell a class the same way (one function)."""
    assert class_key(value) == expected


def test_a_promotion_right_at_the_drift_does_not_hide_it(spec: PipelineSpec) -> None:
    """The detectors go on across champions: the new one's errors are compared with the old one's."""
    champions = Champions()
    p = processor(spec, champions)
    run(p, labeled(4000, 0, 0.1))
    champions.current = Champion("card-fraud", "fraud", "v2", at(4000))
    events = run(p, labeled(3000, 4000, 0.35, version="v2", seed=3))
    concept = [e for e in events if e["kind"] == "CONCEPT"]
    assert concept and all(e["severity"] == "CRITICAL" and e["model_version"] == "v2" for e in concept)
    assert p.stats.champions == ["v1", "v2"]


def test_a_promotion_that_lowers_the_error_is_no_alarm(spec: PipelineSpec) -> None:
    champions = Champions()
    p = processor(spec, champions)
    run(p, labeled(4000, 0, 0.35))
    champions.current = Champion("card-fraud", "fraud", "v2", at(4000))
    events = run(p, labeled(4000, 4000, 0.1, version="v2", seed=3))
    assert all(e["severity"] == "INFO" for e in events if e["kind"] == "CONCEPT")


def test_promotions_keep_the_concept_cooldown(spec: PipelineSpec) -> None:
    """A catch-up promotes every few hundred labels; each promotion made one drift an event again."""
    ten_minutes = 600_000
    champions = Champions()
    p = processor(spec.model_copy(update={"drift": spec.drift.model_copy(update={"cooldown": ten_minutes})}),
                  champions)
    events = run(p, labeled(3000, 0, 0.1))
    for step, first in enumerate(range(3000, 9000, 300)):  # the error rises gradually: detectors fire again
        champions.current = Champion("card-fraud", "fraud", f"v{step + 2}", at(first))
        events += run(p, labeled(300, first, 0.1 + 0.025 * step, version=f"v{step + 2}", seed=step))
    ends: dict[str, list[int]] = {}
    for event in events:
        if event["kind"] == "CONCEPT":
            ends.setdefault(event["detector"], []).append(millis(event["window_end"]))
    gaps = {detector: [b - a for a, b in zip(times, times[1:], strict=False)] for detector, times in ends.items()}
    assert ends and all(gap >= ten_minutes for times in gaps.values() for gap in times), gaps


def test_a_restart_does_not_report_an_old_concept_drift_again(spec: PipelineSpec) -> None:
    """The concept detectors are warmed with the last labels only: the first labels after the
    deployment, put before them, made a jump of their own."""
    consumed = labeled(6000, 0, 0.10) + labeled(20000, 6000, 0.35, seed=3)
    live = [e for e in run(processor(spec), consumed) if e["kind"] == "CONCEPT"]
    assert live, "the change at label 6,000 is reported live"
    p = processor(spec, history=History({TOPICS.labeled_examples: consumed}, live))
    p.on_assigned([TopicPartitionRef(TOPICS.labeled_examples, 0)])
    assert p.tick(0).outputs == [] and p.stats.replayed == p.settings.concept_replay


def test_a_concept_alarm_of_the_previous_champion_is_not_raised_again_after_a_restart(spec: PipelineSpec) -> None:
    """A concept event's cooldown outlives its champion, as its detectors do: restored across a
    restart even when the alarm named the champion before (the loop promoted a new one after it)."""
    consumed = labeled(6000, 0, 0.10) + labeled(1000, 6000, 0.35, seed=3)
    live = [e for e in run(processor(spec), consumed) if e["kind"] == "CONCEPT"]
    assert live and all(e["model_version"] == "v1" for e in live)
    # v2 was promoted after the alarm; the detector restarts and replays the last labels, which
    # still hold the jump.
    champions = Champions(Champion("card-fraud", "fraud", "v2", at(6900)))
    p = processor(spec, champions, History({TOPICS.labeled_examples: consumed}, live))
    p.on_assigned([TopicPartitionRef(TOPICS.labeled_examples, 0)])
    assert p.champion is not None and p.champion.version == "v2"
    assert p.stats.detections >= 1, "the replay finds the jump again"
    assert p.tick(0).outputs == [], "within the cooldown of the alarm raised before the restart"


def test_the_warm_start_waits_for_the_champion(spec: PipelineSpec) -> None:
    consumed = features(REFERENCE + 3 * WINDOW)
    champions = Champions(None)
    p = processor(spec, champions, History({TOPICS.features: consumed}))
    p.on_assigned([TopicPartitionRef(TOPICS.features, 0)])
    assert p.stats.replayed == 0, "no champion yet: nothing to compare with"
    champions.current = CHAMPION  # the deployments reader caught up
    events = run(p, features(WINDOW, start_index=REFERENCE + 3 * WINDOW, shift=1.0, seed=5))
    assert p.stats.replayed == REFERENCE + WINDOW
    assert [(e["kind"], e["feature"]) for e in events] == [("DATA", "amount")], "a drift right after the restart"


def test_a_regression_error_that_is_not_a_number_is_left_out(spec: PipelineSpec) -> None:
    """The label schema allows a NaN double; one in the detectors' running sums stayed there for good."""
    regression = spec.model_copy(update={"model": spec.model.model_copy(update={"task": "regression"})})
    p = processor(regression)
    served = {"role": "CHAMPION", "model_name": CHAMPION.model_name, "model_version": "v1", "value": 2.0}
    assert p._error(CHAMPION, {"label": 5.0, "predictions": [served]}) == 3.0
    assert p._error(CHAMPION, {"label": float("nan"), "predictions": [served]}) is None
    assert p._error(CHAMPION, {"label": 5.0, "predictions": [{**served, "value": float("inf")}]}) is None


def test_warm_start_fills_the_reference_with_the_champion_s_own_predictions_only(spec: PipelineSpec) -> None:
    """A canary's predictions share the topic; counted towards the reference, they left it short,
    and the next live (maybe drifted) predictions filled it up."""
    champion = predictions(REFERENCE, 0)
    canary = predictions(REFERENCE, 0, version="v2", role="CANARY", shift=0.5, partition=1)
    mixed = sorted(champion + canary, key=lambda r: (r.timestamp_ms, r.partition))
    p = processor(spec, history=History({TOPICS.predictions: mixed}))
    p.on_assigned([TopicPartitionRef(TOPICS.predictions, 0)])
    assert p.prediction.reference_ready, "the reference is the champion's first predictions since its deployment"


def test_a_classifier_s_error_is_positive_versus_rest_as_it_learned(spec: PipelineSpec) -> None:
    named = spec.model_copy(update={"model": spec.model.model_copy(update={"positive_class": "fraud",
                                                                           "negative_class": "legit"})})
    p = processor(named)

    def error(label: str, predicted: str) -> float | None:
        value = {"label": label, "predictions": [{"model_name": "fraud", "model_version": "v1", "role": "CHAMPION",
                                                  "predicted_class": predicted, "probabilities": {}}]}
        return p._error(CHAMPION, value)

    assert error("review", "legit") == 0.0, "not fraud, as the model said: no error"
    assert (error("fraud", "legit"), error("legit", "fraud"), error("fraud", "fraud")) == (1.0, 1.0, 0.0)
