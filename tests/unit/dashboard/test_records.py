"""The figures from the monitoring topics: accuracy per version, drift, the timeline, alerts."""

from streamloop.dashboard.records import HIGHER_IS_BETTER, MODEL_VERSIONS_KEPT, RecordViews
from tests.unit.dashboard.conftest import T0, alert, decision, deployment, drift, snapshot


def test_accuracy_is_one_series_per_model_version_with_promotions_and_rollbacks_marked():
    views = RecordViews()
    views.add("metrics", "v1", snapshot("v1", T0, 0.90))
    views.add("metrics", "v1", snapshot("v1", T0 + 60_000, 0.80))
    views.add("metrics", "v2", snapshot("v2", T0 + 60_000, 0.88, role="SHADOW"))
    views.add("model_decisions", "fraud", decision("PROMOTE", T0 + 90_000, "v2", "v1"))
    views.add("model_decisions", "fraud", decision("ROLLBACK", T0 + 120_000, "v1", "v2"))
    views.add("model_decisions", "fraud", decision("REGISTER", T0 + 30_000, "v2"))
    accuracy = views.charts()["accuracy"]
    assert accuracy["x"] == [T0 / 1000, (T0 + 60_000) / 1000]
    assert {s["label"]: s["values"] for s in accuracy["series"]} == {
        "v1 (champion)": [0.90, 0.80], "v2 (shadow)": [None, 0.88]}
    assert [(m["kind"], m["label"]) for m in accuracy["marks"]] == [
        ("PROMOTE", "PROMOTE v2"), ("ROLLBACK", "ROLLBACK v1")]


def test_replayed_records_do_not_count_twice():
    views = RecordViews()
    for _ in range(2):  # at-least-once delivery
        views.add("metrics", "v1", snapshot("v1", T0, 0.9))
        views.add("drift_events", "p", drift("amount", T0))
        views.add("model_decisions", "fraud", decision("PROMOTE", T0, "v1", "v0", decision_id="d1"))
    assert views.charts()["accuracy"]["series"][0]["values"] == [0.9]
    assert len(views.detections()) == 1
    assert len(views.timeline()) == 1
    assert views.summary()["promotions"] == 1


def test_cost_is_charted_only_when_the_snapshots_carry_it():
    views = RecordViews()
    views.add("metrics", "v1", snapshot("v1", T0, 0.9))
    assert views.charts()["cost"]["series"] == []
    views.add("metrics", "v1", snapshot("v1", T0 + 60_000, 0.9, cost=12.5))
    assert views.charts()["cost"]["series"] == [{"label": "v1 (champion)", "values": [12.5]}]


def test_worst_segments_are_the_champions_latest_windows_ordered_by_accuracy():
    views = RecordViews()
    views.add("model_deployments", "card-fraud/fraud/champion", deployment("v2", T0))
    views.add("metrics", "v2", snapshot("v2", T0, 0.5, segment=("country", "NG"), cost=40.0))
    views.add("metrics", "v2", snapshot("v2", T0 + 60_000, 0.7, segment=("country", "NG")))  # newer window wins
    views.add("metrics", "v2", snapshot("v2", T0, 0.6, segment=("merchant_category", "jewelry")))
    views.add("metrics", "v2", snapshot("v2", T0, 0.95, segment=("country", "DE")))
    views.add("metrics", "v1", snapshot("v1", T0, 0.1, segment=("country", "NG")))  # not the champion
    worst = views.worst_segments(limit=2)
    assert [(w["segment"], w["accuracy"]) for w in worst] == [("merchant_category=jewelry", 0.6), ("country=NG", 0.7)]
    assert worst[1]["cost"] is None


def regression(version: str, segment: tuple | None, rmse: float, samples: int = 100) -> dict:
    value = snapshot(version, T0, 0.0, segment=segment, samples=samples)
    return {**value, "metrics": {"rmse": rmse, "mae": rmse / 2}}


def test_worst_segments_of_a_loss_are_those_with_the_highest_loss():
    views = RecordViews(metric="rmse")
    views.add("metrics", "v1", regression("v1", None, 5.0))
    for country, rmse in [("NL", 1.0), ("DE", 2.0), ("FR", 50.0), ("US", 3.0), ("IN", 40.0)]:
        views.add("metrics", "v1", regression("v1", ("country", country), rmse))
    views.add("metrics", "v1", regression("v1", ("tier", "gold"), 40.0, samples=900))  # ties: more samples first
    worst = views.worst_segments(limit=3)
    assert [(w["segment"], w["rmse"]) for w in worst] == [("country=FR", 50.0), ("tier=gold", 40.0),
                                                          ("country=IN", 40.0)]


def test_the_dashboard_knows_which_metrics_are_better_higher_as_the_promotion_does():
    from streamloop.ml.promotion import HIGHER_IS_BETTER as PROMOTION_HIGHER_IS_BETTER

    assert HIGHER_IS_BETTER == PROMOTION_HIGHER_IS_BETTER


def test_deployments_are_a_table_that_tombstones_retire_and_a_timeline():
    views = RecordViews()
    views.add("model_deployments", "card-fraud/fraud/champion", deployment("v1", T0))
    views.add("model_deployments", "card-fraud/fraud/shadow/v2", deployment("v2", T0 + 1, "SHADOW", "shadow/v2"))
    views.add("model_deployments", "card-fraud/fraud/champion", deployment("v2", T0 + 2, previous="v1"))
    views.add("model_deployments", "card-fraud/fraud/shadow/v2", None)
    tables = views.tables()
    assert [(d["slot"], d["version"]) for d in tables["deployments"]] == [("champion", "v2")]
    assert [(e["kind"], e["to_version"]) for e in tables["timeline"]] == [
        ("DEPLOY CHAMPION", "v2"), ("DEPLOY SHADOW", "v2"), ("DEPLOY CHAMPION", "v1")]
    assert views.current_version() == "v2"


def test_alerts_raised_then_cleared_leave_the_active_list_and_datetimes_are_read():
    views = RecordViews()
    views.add("alerts", "stale_model", alert("stale_model", "RAISED", T0))
    views.add("alerts", "no_labels", alert("no_labels", "RAISED", T0 + 5))
    assert [a["alert"] for a in views.tables()["alerts_active"]] == ["stale_model", "no_labels"]
    views.add("alerts", "stale_model", alert("stale_model", "CLEARED", T0 + 10))
    # A late copy of the older RAISED record does not raise it again.
    views.add("alerts", "stale_model", alert("stale_model", "RAISED", T0))
    tables = views.tables()
    assert [a["alert"] for a in tables["alerts_active"]] == ["no_labels"]
    assert tables["alerts_recent"][0] == {
        "at": (T0 + 10) / 1000, "alert": "stale_model", "state": "CLEARED", "source": "model-publisher",
        "model_version": "v1", "message": "stale_model cleared", "observed": 900.0, "threshold": 600.0, "labels": {}}


def test_a_load_failure_is_cleared_only_by_its_own_slot_and_replica():
    views = RecordViews()

    def load_failed(state: str, at: int, version: str, slot: str, instance: str) -> None:
        views.add("alerts", "model_load_failed", alert("model_load_failed", state, at, version,
                                                       {"slot": slot, "instance": instance}, "online-scorer"))

    load_failed("RAISED", T0, "v2", "champion", "online-scorer-0")  # v1 keeps serving there
    load_failed("RAISED", T0 + 1, "v2", "champion", "online-scorer-1")
    load_failed("RAISED", T0 + 2, "v3", "canary", "online-scorer-0")
    load_failed("CLEARED", T0 + 3, "v3", "canary", "online-scorer-0")  # the canary slot loaded v4
    load_failed("CLEARED", T0 + 4, "v2", "champion", "online-scorer-1")  # replica 1 loaded v2 after all
    active = views.tables()["alerts_active"]
    assert [(a["model_version"], a["labels"]) for a in active] == [
        ("v2", {"slot": "champion", "instance": "online-scorer-0"})]
    assert views.summary()["active_alerts"] == 1


def test_alerts_written_before_labels_are_one_per_alert_and_model_as_before():
    views = RecordViews()
    for state, at, version in [("RAISED", T0, "v2"), ("CLEARED", T0 + 1, "v3")]:
        record = alert("model_load_failed", state, at, version, source="online-scorer")
        del record["labels"]
        views.add("alerts", "model_load_failed", record)
    assert views.tables()["alerts_active"] == []


def test_detections_carry_their_statistics_and_a_label_for_the_chart():
    views = RecordViews()
    views.add("drift_events", "p", drift(None, T0 + 5, kind="CONCEPT", detector="adwin"))
    views.add("drift_events", "p", drift("amount", T0))
    rows = views.detections()
    assert [r["label"] for r in rows] == ["DATA psi amount", "CONCEPT adwin"]
    assert rows[0]["at"] == T0 / 1000 and rows[0]["p_value"] == 0.001


def test_decision_evidence_is_json_safe():
    views = RecordViews()
    views.add("model_decisions", "fraud", decision("REFUSE", T0, "v3"))
    assert views.timeline()[0]["evidence"] == {"sample_count": 500.0, "p_value": None}


def test_only_the_most_recently_seen_model_versions_are_kept():
    views = RecordViews()
    versions = [f"v{n}" for n in range(MODEL_VERSIONS_KEPT + 5)]
    for n, version in enumerate(versions):  # a loop retraining for months: one version after another
        views.add("metrics", version, snapshot(version, T0 + n * 60_000, 0.9, role="SHADOW"))
        views.add("metrics", version, snapshot(version, T0 + n * 60_000, 0.9, segment=("country", "NG")))
    # A late copy of a forgotten version's record does not push out a recent one.
    views.add("metrics", "v0", snapshot("v0", T0, 0.9, role="SHADOW"))
    kept = versions[5:]
    assert {row["model_version"] for row in views.tables()["models"]} == set(kept)
    assert {s["label"].split()[0] for s in views.charts()["accuracy"]["series"]} == set(kept)
    assert views.current_version() == kept[-1]
    assert views.worst_segments()[0]["model_version"] == kept[-1], "segments are kept with their version"


def test_the_deployed_champion_is_kept_however_long_ago_it_was_seen():
    views = RecordViews(versions_kept=2)
    views.add("model_deployments", "card-fraud/fraud/champion", deployment("v1", T0))
    views.add("metrics", "v1", snapshot("v1", T0, 0.8))
    views.add("metrics", "v1", snapshot("v1", T0, 0.4, segment=("country", "NG")))
    for n, version in enumerate(["v2", "v3", "v4"], start=1):
        views.add("metrics", version, snapshot(version, T0 + n * 60_000, 0.9, role="SHADOW"))
    assert [row["model_version"] for row in views.tables()["models"]] == ["v4", "v1"]
    assert views.summary()["accuracy"] == 0.8
    assert [w["segment"] for w in views.worst_segments()] == ["country=NG"]


def test_a_canary_promotion_counts_once_and_a_canary_failing_its_trial_is_no_champion_rollback():
    views = RecordViews()
    for kind, at, to_version, from_version, decision_id in [
        ("PROMOTE", T0, "v1", None, "v1:promote"),  # the bootstrap champion replaces nothing
        ("PROMOTE", T0 + 10_000, "v2", "v1", "v2:canary"),  # v2 serves a share of events on trial
        ("PROMOTE", T0 + 20_000, "v2", "v1", "v2:promote"),  # it passed: the champion is replaced
        ("PROMOTE", T0 + 30_000, "v3", "v2", "v3:canary"),
        ("ROLLBACK", T0 + 40_000, "v2", "v3", "v3:rollback"),  # v3 failed its trial; v2 stayed champion
        ("ROLLBACK", T0 + 50_000, "v1", "v2", "v2:rollback"),  # the champion rolled back to v1
    ]:
        views.add("model_decisions", "fraud", decision(kind, at, to_version, from_version, decision_id=decision_id))
    summary = views.summary()
    assert (summary["promotions"], summary["rollbacks"], summary["canary_rollbacks"]) == (1, 1, 1)
    assert [(m["kind"], m["label"]) for m in views.charts()["accuracy"]["marks"]] == [
        ("PROMOTE", "PROMOTE v1"), ("CANARY", "CANARY v2"), ("PROMOTE", "PROMOTE v2"), ("CANARY", "CANARY v3"),
        ("ROLLBACK", "ROLLBACK canary v3"), ("ROLLBACK", "ROLLBACK v1")]


def test_one_decision_id_decided_twice_is_two_timeline_entries_and_a_replay_is_one():
    views = RecordViews()
    canary_rollback = decision("ROLLBACK", T0, "v1", "v2", decision_id="v2:rollback")
    for _ in range(2):  # the record read again
        views.add("model_decisions", "fraud", canary_rollback)
    views.add("model_decisions", "fraud", decision("ROLLBACK", T0 + 60_000, "v1", "v2", decision_id="v2:rollback"))
    assert [e["at"] for e in views.timeline() if e["decision_id"] == "v2:rollback"] == [T0 / 1000, T0 / 1000 + 60]


def test_deployments_never_push_a_promotion_out_of_the_counts():
    views = RecordViews(history=10)
    views.add("model_decisions", "fraud", decision("PROMOTE", T0, "v2", "v1", decision_id="v2:promote"))
    for n in range(30):  # a canary's weight steps and redeploys: each one a timeline entry
        views.add("model_deployments", "card-fraud/fraud/canary",
                  deployment(f"v{n + 3}", T0 + 1 + n, "CANARY", "canary"))
    assert views.summary()["promotions"] == 1
    assert ("PROMOTE", "PROMOTE v2") in [(m["kind"], m["label"]) for m in views.charts()["accuracy"]["marks"]]
    assert len(views.timeline()) == 11, "each history is bounded on its own"


def test_counts_go_on_past_the_kept_history_and_still_tell_a_canary_s_failed_trial():
    views = RecordViews(history=2)
    decisions = [("PROMOTE", "v1", None, "v1:promote"), ("PROMOTE", "v2", "v1", "v2:canary"),
                 ("PROMOTE", "v2", "v1", "v2:promote"), ("PROMOTE", "v3", "v2", "v3:canary"),
                 ("ROLLBACK", "v2", "v3", "v3:rollback"), ("PROMOTE", "v4", "v2", "v4:canary"),
                 ("PROMOTE", "v4", "v2", "v4:promote"), ("ROLLBACK", "v2", "v4", "v4:rollback")]
    for n, (kind, to_version, from_version, decision_id) in enumerate(decisions):
        views.add("model_decisions", "fraud", decision(kind, T0 + n * 10_000, to_version, from_version,
                                                       decision_id=decision_id))
    # A copy of a decision that has left the kept history (delivery is at least once) is not counted again.
    views.add("model_decisions", "fraud", decision("ROLLBACK", T0 + 40_000, "v2", "v3", decision_id="v3:rollback"))
    for n in range(5):  # each detection once, read twice
        for _ in range(2):
            views.add("drift_events", "p", drift("amount", T0 + n * 60_000))
    summary = views.summary()
    assert (summary["promotions"], summary["rollbacks"], summary["canary_rollbacks"]) == (2, 1, 1)
    assert summary["drift_detections"] == 5 and len(views.detections()) == 2
    assert [m["label"] for m in views.charts()["accuracy"]["marks"]] == ["PROMOTE v4", "ROLLBACK v2"]


def test_a_copy_of_a_folded_decision_is_not_counted_again_however_late():
    views = RecordViews(history=2)
    decisions = [decision("PROMOTE", T0, "v1", None, decision_id="v1:promote")]
    decisions += [decision("PROMOTE", T0 + n * 10_000, f"v{n}", f"v{n - 1}", decision_id=f"v{n}:promote")
                  for n in range(2, 12)]
    for record in decisions:
        views.add("model_decisions", "fraud", record)
    counted = views.summary()
    assert (counted["promotions"], counted["rollbacks"]) == (10, 0)
    for record in decisions:  # the whole topic read again (a consumer reset to its start)
        views.add("model_decisions", "fraud", record)
    assert views.summary() == counted
    views.add("model_decisions", "fraud", decision("ROLLBACK", T0 + 200_000, "v10", "v11", decision_id="v11:rollback"))
    assert views.summary()["rollbacks"] == 1, "a new decision still counts"


def test_the_charts_are_built_again_only_when_a_snapshot_or_a_decision_comes():
    views = RecordViews()
    views.add("metrics", "v1", snapshot("v1", T0, 0.9))
    drawn = views.charts()
    views.add("drift_events", "p", drift("amount", T0))
    views.add("alerts", "stale_model", alert("stale_model", "RAISED", T0))
    assert views.charts() is drawn, "nothing the charts draw changed"
    views.add("model_decisions", "fraud", decision("PROMOTE", T0 + 30_000, "v2", "v1"))
    assert [m["label"] for m in views.charts()["accuracy"]["marks"]] == ["PROMOTE v2"]
    views.add("metrics", "v1", snapshot("v1", T0 + 60_000, 0.8))
    assert views.charts()["accuracy"]["series"][0]["values"] == [0.9, 0.8]
