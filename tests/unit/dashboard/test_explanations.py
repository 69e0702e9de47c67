"""Explained predictions on the dashboard: the latest first, replays counted once, influence per feature."""

import pytest

from streamloop.dashboard import DashboardModel
from streamloop.dashboard.explanations import ExplainedPredictions
from tests.unit.dashboard.conftest import T0, prediction


def test_rows_are_the_latest_explained_predictions_newest_first():
    view = ExplainedPredictions()
    view.add(prediction("e1", T0, [("amount", 1.5), ("country", -0.25)]))
    view.add(prediction("e2", T0 + 1000, [("amount", 0.5)]))
    view.add(prediction("e3", T0 + 2000, []))  # not sampled for an explanation
    view.add(None)
    rows = view.rows()
    assert [r["event_id"] for r in rows] == ["e2", "e1"]
    assert rows[1] == {"at": T0 / 1000, "event_id": "e1", "entity": "card-7", "model_version": "v1",
                       "output": "true (0.81)", "action": "block", "method": "linear",
                       "top_contributions": "amount +1.500, country -0.250"}
    assert view.seen == 3


def test_a_replayed_record_is_held_once_and_the_oldest_are_forgotten():
    view = ExplainedPredictions(keep=2)
    for index in range(3):
        view.add(prediction(f"e{index}", T0 + index, [("amount", 1.0)]))
    view.add(prediction("e2", T0 + 2, [("amount", 1.0)]))
    assert [r["event_id"] for r in view.rows()] == ["e2", "e1"]
    # The same event scored by another version is another prediction.
    view.add(prediction("e2", T0 + 3, [("amount", 1.0)], version="v2"))
    assert [(r["event_id"], r["model_version"]) for r in view.rows()] == [("e2", "v2"), ("e2", "v1")]


def test_influence_is_computed_over_the_held_predictions():
    view = ExplainedPredictions()
    view.add(prediction("e1", T0, [("amount", 2.0), ("country", -1.0)]))
    view.add(prediction("e2", T0 + 1, [("amount", -1.0)]))
    influence = {r["feature"]: r for r in view.influence()}
    assert influence["amount"] == {"feature": "amount", "in_top_k": 1.0, "mean_abs_contribution": 1.5,
                                   "mean_contribution": 0.5}
    assert influence["country"]["in_top_k"] == 0.5 and influence["country"]["mean_contribution"] == -1.0
    assert [r["feature"] for r in view.influence()] == ["amount", "country"]


def test_a_regression_output_is_its_value():
    view = ExplainedPredictions()
    record = {**prediction("e1", T0, [("x", 0.1)]), "predicted_class": None, "probabilities": None, "value": 12.345}
    view.add(record)
    assert view.rows()[0]["output"] == "12.35"


def test_the_snapshot_carries_both_tables():
    model = DashboardModel("card-fraud")
    model.add_prediction(prediction("e1", T0, [("amount", 0.75)]))
    snap = model.snapshot(now_s=1.0)
    assert snap["tables"]["explanations"][0]["top_contributions"] == "amount +0.750"
    assert snap["tables"]["feature_influence"][0]["mean_abs_contribution"] == pytest.approx(0.75)
    assert snap["sources"]["predictions"] == {"read": 1, "error": None}
