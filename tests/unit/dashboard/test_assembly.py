"""The whole snapshot: every panel present, JSON-safe, the same for the page and for `streamloop top`."""

import json

from streamloop.dashboard import DashboardModel
from streamloop.dashboard.live import LagRow
from streamloop.dashboard.prometheus import Sample
from streamloop.dashboard.series import MAX_CHART_X, chart_points
from tests.unit.dashboard.conftest import T0, alert, decision, deployment, drift, prediction, snapshot

CHARTS = {"lag", "throughput", "latency", "accuracy", "cost", "drift", "dead_letters"}
TABLES = {"lag", "throughput", "latency", "models", "worst_segments", "deployments", "timeline", "detections",
          "drift_statistics", "dead_letter_topics", "dead_letter_errors", "alerts_active", "alerts_recent",
          "explanations", "feature_influence"}


def loaded_model() -> DashboardModel:
    model = DashboardModel("card-fraud")
    model.add_record("model_deployments", "card-fraud/fraud/champion", deployment("v1", T0))
    model.add_record("metrics", "v1", snapshot("v1", T0 + 60_000, 0.91, cost=3.0))
    model.add_record("metrics", "v1", snapshot("v1", T0 + 60_000, 0.42, segment=("country", "NG")))
    model.add_record("drift_events", "card-fraud", drift("amount", T0 + 70_000))
    model.add_record("model_decisions", "fraud", decision("PROMOTE", T0 + 80_000, "v1", "v0"))
    model.add_record("alerts", "stale_model", alert("stale_model", "RAISED", T0 + 90_000))
    for at, count in [(100.0, 0.0), (102.0, 400.0)]:
        model.add_scrape(at, {"online-scorer-0": [
            Sample("messaging_process_messages_total", {"service": "online-scorer", "topic": "f"}, count),
            Sample("streamloop_event_latency_seconds_bucket", {"service": "online-scorer", "topic": "f", "le": "0.05"},
                   count),
            Sample("streamloop_event_latency_seconds_bucket", {"service": "online-scorer", "topic": "f", "le": "+Inf"},
                   count),
        ]}, targets=2)
    model.add_lag(102.0, [LagRow("featurizer", "in", 0, 9)], {"in.dlq": 1})
    model.add_prediction(prediction("e-1", T0 + 95_000, [("amount", 1.25), ("country", -0.5)]))
    return model


def test_the_snapshot_has_every_panel_and_is_strict_json():
    snap = loaded_model().snapshot(now_s=104.0)  # 2 s after the last readings
    assert set(snap["charts"]) == CHARTS and set(snap["tables"]) >= TABLES
    text = json.dumps(snap, allow_nan=False)  # NaN evidence and the like never reach the page
    assert json.loads(text)["generated_at"] == 104.0
    assert snap["summary"] == {
        "total_lag": 9, "predictions_per_s": 200.0, "latency_p99_ms": 49.5, "dead_letters": 1, "scrapes": 2,
        "champion": "v1", "accuracy": 0.91, "drift_detections": 1, "promotions": 1, "rollbacks": 0,
        "canary_rollbacks": 0, "active_alerts": 1}
    assert snap["sources"]["prometheus"] == {"targets": 2, "answered": 1, "at": 102.0}
    assert snap["sources"]["kafka"]["by_topic"]["metrics"] == 2
    for name in CHARTS - {"cost"} - {"throughput"}:
        chart = snap["charts"][name]
        assert all(len(s["values"]) == len(chart["x"]) for s in chart["series"]), name
        assert chart["series"], name


def test_lag_not_read_for_three_readings_is_unknown_not_the_last_figure():
    model = DashboardModel("p")
    model.add_lag(100.0, [LagRow("streamloop.p.featurizer", "in", 0, 4200)], {"in.dlq": 3})
    assert model.snapshot(now_s=115.0)["summary"]["total_lag"] == 4200
    model.lag_failed(120.0, "KafkaException: broker down")  # and every reading after it
    snap = model.snapshot(now_s=100.0 + 3600)
    assert snap["summary"]["total_lag"] is None and snap["summary"]["dead_letters"] is None
    assert snap["tables"]["lag"] == [{"group": "streamloop.p.featurizer", "topic": "in", "lag": None}]
    assert snap["sources"]["lag"] == {"at": 100.0, "error": "KafkaException: broker down", "stale": True}
    assert snap["charts"]["lag"]["series"][0]["values"] == [4200, None]


def test_an_empty_model_answers_empty_panels():
    snap = DashboardModel("p").snapshot()
    assert all(chart_points(chart) == 0 for chart in snap["charts"].values())
    assert snap["summary"]["champion"] is None and snap["summary"]["total_lag"] is None
    json.dumps(snap, allow_nan=False)



def test_the_snapshot_stays_small_however_long_the_history():
    # 30 versions (all the dashboard keeps) of 2,000 windows (all it keeps of each), one after the
    # other as months of retraining leave them: no two share a window end. Drawn on the union of
    # their x values, that was a chart of 60,000 x values and a 19 MB snapshot at every poll.
    model = DashboardModel("card-fraud")
    for version in range(30):
        for window in range(2000):
            model.add_record("metrics", None, snapshot(f"v{version}", T0 + (version * 2000 + window) * 10_000,
                                                       0.9, role="SHADOW", cost=1.0))
    snap = model.snapshot()
    size = len(json.dumps(snap, allow_nan=False, separators=(",", ":")))
    assert size < 300_000, f"{size:,} bytes"
    for name in ("accuracy", "cost"):
        chart = snap["charts"][name]
        assert len(chart["series"]) == 30 and len(chart["x"]) <= MAX_CHART_X, name
    # The newest windows are drawn as they are.
    accuracy = snap["charts"]["accuracy"]
    latest = next(s["values"] for s in accuracy["series"] if s["label"] == "v29 (shadow)")
    assert accuracy["x"][-1] == (T0 + 59_999 * 10_000) / 1000 and latest[-1] == 0.9
