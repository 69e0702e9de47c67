"""Staleness alerts: raised once when a condition starts to hold, cleared once when it stops."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.model_publisher import app as publisher_app
from services.model_publisher.app import PublisherApp, PublisherTerm
from services.model_publisher.staleness import Champion, StalenessMonitor, decay_metric, metric_decay
from streamloop.kafka.configuration import KafkaSettings
from streamloop.ml.evaluation import MetricSet, Outcome
from streamloop.ml.promotion import holdout_metrics
from streamloop.ml.registry import CHAMPION, shadow_slot
from streamloop.telemetry import ServiceMetrics
from tests.unit.model_publisher.factories import T0, consumed, with_policy
from tests.unit.model_publisher.test_publisher import Harness

HOUR = 3_600_000


def snapshot(version: str, log_loss: float, samples: int = 500, end: int = T0, segment: str | None = None) -> dict:
    return {"pipeline": "card-fraud", "model_name": "fraud", "model_version": version, "role": "CHAMPION",
            "window_start": end - 60_000, "window_end": end, "segment_field": segment,
            "segment_value": "US" if segment else None, "sample_count": samples,
            "metrics": {"log_loss": log_loss, "accuracy": 0.9}, "label_delay_ms": {}, "emitted_at": end}


def states(alerts: list[dict]) -> list[tuple[str, str]]:
    return [(a["alert"], a["state"]) for a in alerts]


def test_a_stale_model_is_raised_once_and_cleared_by_a_fresh_champion(demo_pipeline):
    monitor = StalenessMonitor(demo_pipeline)
    old = Champion("fraud-a", T0, {})
    monitor.observe_label(T0 + 25 * HOUR)
    assert states(monitor.check(T0 + 23 * HOUR, old)) == []
    raised = monitor.check(T0 + 25 * HOUR, old)
    assert states(raised) == [("stale_model", "RAISED")]
    assert raised[0]["observed"] == 25 * 3600 and raised[0]["threshold"] == 24 * 3600
    assert raised[0]["model_version"] == "fraud-a" and raised[0]["source"] == "model-publisher"
    monitor.observe_label(T0 + 26 * HOUR)
    assert monitor.check(T0 + 26 * HOUR, old) == [], "raised once, not on every check"
    fresh = Champion("fraud-b", T0 + 25 * HOUR, {})
    assert states(monitor.check(T0 + 26 * HOUR, fresh)) == [("stale_model", "CLEARED")]
    assert monitor.gauges["model_age_seconds"] == 3600


def test_label_silence_raises_and_a_new_label_clears(demo_pipeline):
    monitor = StalenessMonitor(demo_pipeline)
    champion = Champion("fraud-a", T0, {})
    monitor.observe_label(T0)
    assert monitor.check(T0 + 9 * 60_000, champion) == []
    assert states(monitor.check(T0 + 11 * 60_000, champion)) == [("no_labels", "RAISED")]
    monitor.observe_label(T0 + 11 * 60_000)
    assert states(monitor.check(T0 + 12 * 60_000, champion)) == [("no_labels", "CLEARED")]
    assert monitor.gauges["label_silence_seconds"] == 60


def test_silence_counts_from_start_when_no_label_ever_came(demo_pipeline):
    monitor = StalenessMonitor(demo_pipeline)
    champion = Champion("fraud-a", T0, {})
    assert monitor.check(T0, champion) == []
    assert states(monitor.check(T0 + 11 * 60_000, champion)) == [("no_labels", "RAISED")]


def test_metric_decay_against_the_validation_metric(demo_pipeline):
    monitor = StalenessMonitor(demo_pipeline)
    champion = Champion("fraud-a", T0, {"log_loss": 0.30})
    monitor.observe_label(T0)
    monitor.observe_snapshot(snapshot("fraud-a", 0.31))
    assert monitor.check(T0 + 1000, champion) == []
    monitor.observe_snapshot(snapshot("fraud-a", 0.9, segment="country"))  # a segment is not the population
    monitor.observe_snapshot(snapshot("fraud-a", 0.9, samples=10, end=T0 + 1))  # too few events to judge
    assert monitor.check(T0 + 2000, champion) == []
    monitor.observe_snapshot(snapshot("fraud-a", 0.36, end=T0 + 2))
    raised = monitor.check(T0 + 3000, champion)
    assert states(raised) == [("metric_decay", "RAISED")]
    assert raised[0]["observed"] > 0.05 and "log_loss" in raised[0]["message"]
    monitor.observe_snapshot(snapshot("fraud-a", 0.30, end=T0 + 3))
    assert states(monitor.check(T0 + 4000, champion)) == [("metric_decay", "CLEARED")]


@pytest.mark.parametrize("metric", ["squared_error", "absolute_error"])
def test_metric_decay_is_watched_for_a_classifier_promoted_on_a_squared_or_absolute_error(demo_pipeline, metric):
    """The decay metric is then rmse or mae, which neither the held-out metrics nor the collector's
    snapshots of a classifier used to carry: metric_decay was never evaluated."""
    pipeline = with_policy(demo_pipeline, promotion={"metric": metric})
    labels = [i % 3 == 0 for i in range(300)]

    def predictions(p_right: float) -> list[dict]:
        return [{"predicted_class": str(y).lower(), "probabilities": {"true": p, "false": 1 - p}}
                for y, p in ((y, p_right if y else 1 - p_right) for y in labels)]

    validated = holdout_metrics(pipeline.model, labels, predictions(0.9))
    live = MetricSet("classification", positive_class=pipeline.model.positive_class)
    for label, prediction in zip(labels, predictions(0.7), strict=True):
        live.update(Outcome("fraud", "fraud-a", "CHAMPION", label, **prediction))
    monitor = StalenessMonitor(pipeline)
    monitor.observe_label(T0)
    monitor.observe_snapshot({**snapshot("fraud-a", 0.3), "metrics": live.metrics()})
    raised = monitor.check(T0 + 1000, Champion("fraud-a", T0, validated))
    assert states(raised) == [("metric_decay", "RAISED")]
    assert raised[0]["observed"] == pytest.approx(2.0), "1 − p(true class) went from 0.1 to 0.3"
    assert decay_metric(pipeline) in raised[0]["message"]


def test_decay_direction_and_metric_choice(demo_pipeline):
    assert metric_decay("accuracy", 0.9, 0.8) > 0 and metric_decay("log_loss", 0.3, 0.2) < 0
    assert decay_metric(demo_pipeline) == "log_loss"
    assert decay_metric(with_policy(demo_pipeline, promotion={"metric": "cost"})) == "mean_cost"
    assert decay_metric(with_policy(demo_pipeline, promotion={"metric": "zero_one"})) == "accuracy"


@pytest.fixture
def metrics() -> Iterator[ServiceMetrics]:
    metrics = ServiceMetrics("model-publisher")
    yield metrics
    metrics.shutdown()


def exported(metrics: ServiceMetrics) -> dict[str, dict[str, float]]:
    """Every series the publisher exports, by name, then by version (or "" for a series without one)."""
    series: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            if sample.labels.get("pipeline") == "card-fraud":
                series.setdefault(sample.name, {})[sample.labels.get("version", "")] = sample.value
    return series


def test_the_publisher_emits_alert_records_and_gauges(demo_pipeline, tmp_path, metrics):
    harness = Harness(demo_pipeline, tmp_path)
    harness.processor._metrics = metrics
    harness.bootstrap()
    harness.processor.process([consumed("lab", {"pipeline": "card-fraud", "event_id": "x", "predictions": []}, 0,
                                        timestamp_ms=T0)])
    result = harness.processor.tick(T0 + 11 * 60_000)
    alerts = [o for o in result.outputs if o.topic == "alerts"]
    assert [(o.key, o.value["state"]) for o in alerts] == [("no_labels", "RAISED")]
    assert exported(metrics)["streamloop_label_silence_seconds"] == {"": 660}
    assert "streamloop_model_age_seconds" in exported(metrics)


def test_the_publisher_exports_the_registry_s_champion_beside_what_scorers_serve(demo_pipeline, tmp_path, metrics):
    """StreamloopChampionNotServed compares it with the scorers' streamloop_model_info."""
    harness = Harness(demo_pipeline, tmp_path)
    harness.processor._metrics = metrics
    first = harness.bootstrap()
    harness.processor.tick(T0)
    assert exported(metrics)["streamloop_registry_champion_info"] == {first: 1}
    second = harness.shadow(parent=first)
    harness.processor.writer.deploy(CHAMPION, second, harness.slot(shadow_slot(second))["artifact"],
                                    decision_id=f"{second}:promote")
    harness.processor.tick(T0 + 10 * 60_000)
    # An earlier champion is no longer exported (it was, at 0, one more series per promotion).
    assert exported(metrics)["streamloop_registry_champion_info"] == {second: 1}


def test_a_restarted_monitor_takes_back_its_standing_alerts_from_the_topic(demo_pipeline):
    """It forgot them: a raised alert was never cleared, and one still holding was raised twice."""
    before = StalenessMonitor(demo_pipeline)
    champion = Champion("fraud-a", T0, {})
    before.observe_label(T0 + 20 * HOUR)
    stale, silent = before.check(T0 + 25 * HOUR, champion)
    assert states([stale, silent]) == [("stale_model", "RAISED"), ("no_labels", "RAISED")]
    scorer_alert = {**silent, "alert": "model_load_failed", "source": "online-scorer"}
    topic = [stale, silent, scorer_alert, {**stale, "state": "CLEARED"}]  # stale_model cleared since
    restarted = StalenessMonitor(demo_pipeline)
    restarted.recall(topic)
    restarted.observe_label(T0 + 26 * HOUR)
    assert states(restarted.check(T0 + 26 * HOUR, champion)) == [("stale_model", "RAISED"),
                                                                 ("no_labels", "CLEARED")]
    still_silent = StalenessMonitor(demo_pipeline)
    still_silent.recall(topic)
    # The silence goes on: neither cleared at the start (counted from the last label, not from the
    # restart) nor raised a second time.
    assert states(still_silent.check(T0 + 27 * HOUR, champion)) == [("stale_model", "RAISED")]


def test_metric_decay_is_not_exported_once_the_decayed_champion_is_rolled_back(demo_pipeline, tmp_path, metrics):
    """The gauge kept the decayed champion's last value while decay went unmeasured for the next one:
    StreamloopMetricDecay fired until the new champion had a live window of 100 samples, and for good
    when it had no validation metric (the bootstrap version)."""
    harness = Harness(demo_pipeline, tmp_path)
    harness.processor._metrics = metrics
    first = harness.bootstrap()
    first_artifact = harness.slot(CHAMPION)["artifact"]
    second = harness.shadow(parent=first)  # validated at log_loss 0.3
    harness.processor.writer.deploy(CHAMPION, second, harness.slot(shadow_slot(second))["artifact"],
                                    decision_id=f"{second}:promote")
    harness.feed("met", [snapshot(second, 0.9, end=harness.now)])
    harness.processor.tick(harness.now + 10_000)
    assert exported(metrics)["streamloop_metric_decay"] == {"": pytest.approx(2.0)}

    # Rolled back to a champion validated too, with no live window yet: decay is not measured.
    third = harness.shadow(parent=first)
    harness.processor.writer.deploy(CHAMPION, third, harness.slot(shadow_slot(third))["artifact"],
                                    decision_id=f"{third}:promote")
    harness.processor.tick(harness.now + 20_000)
    assert "streamloop_metric_decay" not in exported(metrics)
    assert exported(metrics)["streamloop_registry_champion_info"] == {third: 1}
    harness.feed("met", [snapshot(third, 0.3, end=harness.now + 1)])
    harness.processor.tick(harness.now + 30_000)
    assert exported(metrics)["streamloop_metric_decay"] == {"": pytest.approx(0.0)}

    # And to the bootstrap version, which has no validation metric: never measured.
    harness.processor.writer.deploy(CHAMPION, first, first_artifact, decision_id=f"{first}:rollback")
    harness.processor.tick(harness.now + 40_000)
    assert "streamloop_metric_decay" not in exported(metrics)
    assert set(exported(metrics)) >= {"streamloop_model_age_seconds", "streamloop_label_silence_seconds"}


def test_the_monitor_s_gauges_leave_metric_decay_out_while_it_is_not_measured(demo_pipeline):
    monitor = StalenessMonitor(demo_pipeline)
    monitor.observe_label(T0)
    monitor.observe_snapshot(snapshot("fraud-a", 2.0))
    assert states(monitor.check(T0, Champion("fraud-a", T0, {"log_loss": 0.3}))) == [("metric_decay", "RAISED")]
    assert monitor.gauges["metric_decay"] > 0.05
    assert states(monitor.check(T0 + 60_000, Champion("fraud-b", T0, {"log_loss": 0.3}))) == [
        ("metric_decay", "CLEARED")]
    assert set(monitor.gauges) == {"model_age_seconds", "label_silence_seconds"}


class TermRunner:
    """The term's stage runner: ``judge`` is its batches; then it ends as ``ending`` says."""

    def __init__(self, judge: Callable[[], None], ending: str) -> None:
        self.judge, self.ending = judge, ending
        self.stopping = False

    def run(self) -> int:
        self.judge()
        if self.ending == "failed":
            raise RuntimeError("the runner failed")
        return 0  # stopped, or the lease lost (LeaderLease.watch stopped it)

    def stop(self) -> None:
        self.stopping = True


class ReadTable:
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def wait_until_caught_up(self, _timeout_s: float | None = None) -> bool:
        return True


STATE_GAUGES = {"streamloop_model_age_seconds", "streamloop_label_silence_seconds", "streamloop_metric_decay",
                "streamloop_registry_champion_info"}


@pytest.mark.parametrize("ending", ["lease lost", "stopped", "failed"])
def test_a_term_that_ends_exports_no_staleness_gauge_nor_champion(demo_pipeline, tmp_path, metrics, monkeypatch,
                                                                   ending):
    """A replica that lost the lease went on exporting its last readings as a standby: with two
    replicas, StreamloopMetricDecay kept firing after the new leader rolled back, and the frozen
    champion info hid a scorer not serving the registry's champion (StreamloopChampionNotServed)."""
    harness = Harness(demo_pipeline, tmp_path)
    harness.processor._metrics = metrics

    def judge() -> None:
        first = harness.bootstrap()
        second = harness.shadow(parent=first)
        harness.processor.writer.deploy(CHAMPION, second, harness.slot(shadow_slot(second))["artifact"],
                                        decision_id=f"{second}:promote")
        harness.feed("met", [snapshot(second, 0.9, end=harness.now)])
        harness.processor.tick(harness.now + 10_000)
        assert set(exported(metrics)) >= STATE_GAUGES
        assert exported(metrics)["streamloop_metric_decay"] == {"": pytest.approx(2.0)}
        assert exported(metrics)["streamloop_registry_champion_info"] == {second: 1}

    monkeypatch.setattr(publisher_app, "read_topic", lambda *_args, **_kwargs: [])
    term = PublisherTerm(harness.processor, TermRunner(judge, ending), ReadTable())  # type: ignore[arg-type]
    lease = SimpleNamespace(lost=ending == "lease lost")
    serde: Any = SimpleNamespace(decode=lambda data: data)  # nothing is read: read_topic is faked
    app = PublisherApp(lambda: term, SimpleNamespace(), KafkaSettings(), candidates=("cand", serde),  # type: ignore[arg-type]
                       alerts=("alerts", serde), decisions=("dec", serde), table_timeout_s=1.0,
                       lease=lease)  # type: ignore[arg-type]
    if ending == "failed":
        with pytest.raises(RuntimeError):
            app._run_term()
    else:
        assert app._run_term() == (None if ending == "lease lost" else 0)
    assert not set(exported(metrics)) & STATE_GAUGES
