"""Figures from the services' /metrics endpoints (as ServiceMetrics writes them) and from lag readings."""

import pytest

from streamloop.dashboard.live import LagRow, LiveFigures
from streamloop.telemetry import ServiceMetrics
from tests.unit.dashboard.conftest import read


def test_throughput_is_the_rate_between_scrapes_summed_over_replicas(scorer):
    other = ServiceMetrics("online-scorer")
    try:
        live = LiveFigures()
        live.add_scrape(100.0, {"online-scorer-0": read(scorer), "online-scorer-1": read(other)})
        scorer.record_batch("features.feature-vector.v1", 1, 300, 0.01)
        other.record_batch("features.feature-vector.v1", 1, 100, 0.01)
        live.add_scrape(102.0, {"online-scorer-0": read(scorer), "online-scorer-1": read(other)})
    finally:
        other.shutdown()
    assert live.tables()["throughput"] == [
        {"service": "online-scorer", "topic": "features.feature-vector.v1", "rate": 200.0}]
    throughput = live.charts([])["throughput"]
    assert throughput["series"] == [{"label": "online-scorer ← features.feature-vector.v1", "values": [200.0]}]
    assert live.summary()["predictions_per_s"] == 200.0


def test_latency_quantiles_come_from_the_last_interval_only(scorer):
    live = LiveFigures()
    scorer.record_batch("features.feature-vector.v1", 1, 100, 0.01, latencies=[5.0] * 100)  # slow, long ago
    live.add_scrape(100.0, {"online-scorer-0": read(scorer)})
    assert live.tables()["latency"][0]["window"] == "since start"
    scorer.record_batch("features.feature-vector.v1", 1, 100, 0.01, latencies=[0.02] * 100)
    live.add_scrape(102.0, {"online-scorer-0": read(scorer)})
    row = live.tables()["latency"][0]
    assert row["service"] == "online-scorer" and row["window"] == "last scrape interval"
    assert 10 < row["p50"] <= 25 and row["observations"] == 200
    latency = live.charts([])["latency"]
    assert latency["service"] == "online-scorer"
    assert [s["label"] for s in latency["series"]] == ["p50 (ms)", "p95 (ms)", "p99 (ms)"]
    assert len(latency["x"]) == 1 and live.summary()["latency_p99_ms"] <= 25


def test_a_restarted_replica_does_not_make_rates_negative(scorer):
    live = LiveFigures()
    scorer.record_batch("t", 1, 1000, 0.01)
    live.add_scrape(100.0, {"online-scorer-0": read(scorer)})
    fresh = ServiceMetrics("online-scorer")  # the same replica after a restart: counters from zero
    try:
        fresh.record_batch("t", 1, 40, 0.01)
        live.add_scrape(102.0, {"online-scorer-0": read(fresh)})
    finally:
        fresh.shutdown()
    assert live.tables()["throughput"][0]["rate"] == 20.0


def test_dead_letters_and_drift_statistics_from_the_services():
    detector = ServiceMetrics("drift-detector")
    featurizer = ServiceMetrics("featurizer")
    try:
        detector.gauge("streamloop_drift_psi")(0.31, {"kind": "DATA", "feature": "amount"})
        detector.gauge("streamloop_drift_p_value")(0.002, {"kind": "DATA", "feature": "amount"})
        detector.gauge("streamloop_drift_statistic")(0.12, {"kind": "DATA", "feature": "amount", "test": "ks"})
        # How often the feature was present: its own test, which must not replace the values' statistic.
        detector.gauge("streamloop_drift_statistic")(54.0, {"kind": "DATA", "feature": "amount", "test": "presence"})
        featurizer.record_dead_letters("payments.transaction.v1", "ValidationError", 3)
        live = LiveFigures()
        live.add_scrape(100.0, {"drift-detector-0": read(detector), "featurizer-0": read(featurizer)})
    finally:
        detector.shutdown()
        featurizer.shutdown()
    tables = live.tables()
    assert tables["drift_statistics"] == [{"kind": "DATA", "feature": "amount", "psi": 0.31, "statistic": 0.12,
                                           "p_value": 0.002}]
    assert tables["dead_letter_errors"] == [{"service": "featurizer", "topic": "payments.transaction.v1",
                                             "error_class": "ValidationError", "records": 3}]
    mark = {"at": 100.5, "label": "DATA psi amount", "kind": "DATA", "feature": "amount", "statistic": 0.3}
    drift = live.charts([mark])["drift"]
    assert drift["series"] == [{"label": "amount", "values": [0.31]}]
    assert drift["marks"] == [{"x": 100.5, "label": "DATA psi amount", "kind": "DATA"}]


def test_drift_chart_falls_back_to_the_detections_own_statistics():
    live = LiveFigures()
    detections = [{"at": 1.0, "label": "DATA ks amount", "kind": "DATA", "feature": "amount", "statistic": 0.2},
                  {"at": 2.0, "label": "CONCEPT adwin", "kind": "CONCEPT", "feature": None, "statistic": 0.1}]
    drift = live.charts(detections)["drift"]
    assert {s["label"] for s in drift["series"]} == {"amount", "CONCEPT"}
    assert len(drift["marks"]) == 2


def test_lag_is_summed_per_group_and_topic_and_dead_letter_topics_are_counted():
    live = LiveFigures()
    live.add_lag(100.0, [LagRow("t-1.streamloop.card-fraud.featurizer", "in", 0, 5),
                         LagRow("t-1.streamloop.card-fraud.featurizer", "in", 1, 7),
                         LagRow("online-scorer", "features", 0, 0)])
    live.add_dead_letter_counts(100.0, {"in.dlq": 2, "features.dlq": 0})
    assert live.tables()["lag"] == [{"group": "online-scorer", "topic": "features", "lag": 0},
                                    {"group": "t-1.streamloop.card-fraud.featurizer", "topic": "in", "lag": 12}]
    charts = live.charts([])
    # A service's group is named by its service alone.
    assert charts["lag"]["series"][1] == {"label": "featurizer ← in", "values": [12]}
    assert charts["dead_letters"]["series"][0]["values"] == [2]
    assert live.summary()["total_lag"] == 12 and live.summary()["dead_letters"] == 2


def test_a_service_that_stops_answering_is_no_longer_shown_live_and_leaves_a_gap(scorer):
    live = LiveFigures()
    live.add_scrape(100.0, {"online-scorer-0": read(scorer)})
    scorer.record_batch("features.feature-vector.v1", 1, 400, 0.01, latencies=[0.02] * 400)
    live.add_scrape(102.0, {"online-scorer-0": read(scorer)})
    assert live.summary()["predictions_per_s"] == 200.0 and live.summary()["latency_p99_ms"] <= 25
    for at in (104.0, 106.0):  # the scorer crashed: it answers no scrape
        live.add_scrape(at, {})
    assert live.tables()["throughput"] == [] and live.tables()["latency"] == []
    assert live.summary()["predictions_per_s"] is None and live.summary()["latency_p99_ms"] is None
    charts = live.charts([])
    assert charts["throughput"]["gaps"] and charts["latency"]["gaps"], "the page draws its Nones as gaps"
    assert charts["throughput"]["x"] == [102.0, 104.0, 106.0]
    assert charts["throughput"]["series"][0]["values"] == [200.0, None, None]
    assert [s["values"][1:] for s in charts["latency"]["series"]] == [[None, None]] * 3
    scorer.record_batch("features.feature-vector.v1", 1, 100, 0.01, latencies=[0.02] * 100)
    live.add_scrape(108.0, {"online-scorer-0": read(scorer)})  # back (the same process: 100 more in 6 s)
    assert live.tables()["throughput"][0]["rate"] == pytest.approx(100 / 6, abs=0.01)


def test_lag_not_read_for_a_while_is_unknown_and_a_failed_reading_is_a_gap():
    live = LiveFigures(lag_stale_after_s=15.0)
    live.add_lag(100.0, [LagRow("featurizer", "in", 0, 12)])
    live.add_dead_letter_counts(100.0, {"in.dlq": 2})
    live.lag_unread(105.0)  # the broker does not answer
    assert live.summary(now_s=115.0)["total_lag"] == 12 and live.summary(now_s=115.0)["dead_letters"] == 2
    assert not live.lag_stale(115.0) and live.lag_stale(115.1)
    assert live.summary(now_s=3700.0)["total_lag"] is None and live.summary(now_s=3700.0)["dead_letters"] is None
    tables = live.tables(now_s=3700.0)
    assert tables["lag"] == [{"group": "featurizer", "topic": "in", "lag": None}]
    assert tables["dead_letter_topics"] == [{"topic": "in.dlq", "records": None}]
    charts = live.charts([])
    assert charts["lag"]["gaps"] and charts["lag"]["series"][0]["values"] == [12, None]
    assert charts["dead_letters"]["series"][0]["values"] == [2, None]
    live.add_lag(3700.0, [LagRow("featurizer", "in", 0, 3)])
    assert live.summary(now_s=3702.0)["total_lag"] == 3


def test_dead_letters_by_error_never_drop_when_a_replica_is_down_or_restarts():
    replicas = [ServiceMetrics("featurizer"), ServiceMetrics("featurizer")]
    restarted = ServiceMetrics("featurizer")
    try:
        replicas[0].record_dead_letters("in", "RuleViolation", 40)
        replicas[1].record_dead_letters("in", "RuleViolation", 10)
        live = LiveFigures()

        def records() -> int:
            return sum(row["records"] for row in live.tables()["dead_letter_errors"])

        live.add_scrape(100.0, {"featurizer-0": read(replicas[0]), "featurizer-1": read(replicas[1])})
        assert records() == 50
        live.add_scrape(102.0, {"featurizer-1": read(replicas[1])})  # featurizer-0 is down
        assert records() == 50
        restarted.record_dead_letters("in", "RuleViolation", 2)  # featurizer-0 again: from zero, 2 more
        replicas[1].record_dead_letters("in", "RuleViolation", 3)
        live.add_scrape(104.0, {"featurizer-0": read(restarted), "featurizer-1": read(replicas[1])})
        assert records() == 55
    finally:
        for metrics in (*replicas, restarted):
            metrics.shutdown()
