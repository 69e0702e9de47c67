"""The demo's summary, computed from an observation built by hand (no broker, no services)."""

from __future__ import annotations

import random

from streamloop.contracts.pipeline import PipelineSpec
from streamloop.stack.loop_observation import LoopObservation, event_outcomes, summarize

START_MS = 1_700_000_000_000
RATE = 100.0  # events per second of event time: event i's window ends at START_MS + 10 i


def observation(events: int, drift_at: int, served_right: callable) -> LoopObservation:
    """Labels follow ``amount > 250`` before the drift and the opposite after it."""
    rng = random.Random(5)
    obs = LoopObservation()
    for i in range(events):
        e = f"e{i}"
        amount = rng.uniform(0, 500)
        label = (amount > 250) != (i >= drift_at)
        obs.produced_at_ms[e], obs.index_of[e], obs.labels[e] = START_MS + 10 * i, i, label
        obs.predicted_at_ms[e] = START_MS + 10 * i + 40
        obs.predicted[e] = str(label if served_right(i) else not label).lower()
        obs.model_version[e] = "v1"
        obs.training_pairs[e] = ({"amount": amount}, label)
    return obs


def alarm(kind: str, severity: str, at_event: int) -> dict:
    return {"kind": kind, "severity": severity, "detector": "adwin", "window_end": START_MS + 10 * at_event}


def test_accuracies_around_the_drift_the_reference_and_recovery(demo_pipeline: PipelineSpec) -> None:
    # Right before the drift every answer is right, for the first 100 after it every one wrong,
    # then every one right again: the loop "recovered".
    obs = observation(1_000, 500, lambda i: not 500 <= i < 600)
    obs.drift_events += [alarm("CONCEPT", "CRITICAL", 530), alarm("CONCEPT", "WARNING", 200),
                         alarm("CONCEPT", "INFO", 700), alarm("DATA", "WARNING", 510)]
    summary = summarize(obs, demo_pipeline.model, drift_index=500, window=100, elapsed_s=10.0, start_ms=START_MS,
                        rate_per_s=RATE)
    assert (summary["accuracy_before_drift"], summary["accuracy_after_drift"], summary["accuracy_after_recovery"]) \
        == (1.0, 0.0, 1.0)
    # The spec's model, trained offline on the post-drift examples before the last window, learns the new rule.
    assert summary["accuracy_retrained_offline"] >= 0.95 and summary["recovered"] is True
    assert summary["drift_detected_at"] == 530, "the first concept alarm at or after the drift, not an INFO one"
    assert summary["concept_drift_alarms_before_drift"] == 1
    assert summary["drift_events"] == {"CONCEPT": 3, "DATA": 1}
    assert (summary["events_in"], summary["predictions_out"], summary["lost"]) == (1_000, 1_000, 0)
    assert (summary["latency_p50_ms"], summary["latency_p99_ms"]) == (40.0, 40.0)
    assert summary["throughput_eps"] == 100.0
    # 1,000 predictions from the first event (START_MS) to the last prediction (START_MS + 9,990 + 40 ms).
    assert summary["predictions_per_s"] == round(1_000 / 10.03, 1)


def test_an_event_with_neither_prediction_nor_dead_letter_is_lost_and_a_stuck_loop_is_not_recovered(
        demo_pipeline: PipelineSpec) -> None:
    obs = observation(1_000, 500, lambda i: i < 500)  # never right again after the drift
    for e in ("e10", "e11", "e12"):
        del obs.predicted_at_ms[e], obs.predicted[e]
    obs.dead_lettered_events.add("e12")
    summary = summarize(obs, demo_pipeline.model, drift_index=500, window=100, elapsed_s=10.0, start_ms=START_MS,
                        rate_per_s=RATE)
    assert summary["lost"] == 2 and summary["predictions_out"] == 997
    assert summary["accuracy_after_recovery"] == 0.0 and summary["recovered"] is False
    assert summary["drift_detected_at"] is None


def test_event_outcomes_give_every_event_in_index_order_with_what_the_summary_counts(
        demo_pipeline: PipelineSpec) -> None:
    obs = observation(1_000, 500, lambda i: i % 3 != 0 and not 500 <= i < 650)
    for e in ("e10", "e410", "e411"):
        del obs.predicted_at_ms[e], obs.predicted[e], obs.model_version[e]
    obs.dead_lettered_events.update({"e10", "e410"})  # and e411 is lost
    # Produced out of order (two producer threads would): the rows still come in index order.
    obs.produced_at_ms = dict(reversed(list(obs.produced_at_ms.items())))
    rows = event_outcomes(obs)
    assert [r["index"] for r in rows] == list(range(1_000))
    assert rows[10] == {"index": 10, "event_id": "e10", "label": obs.labels["e10"], "predicted": None,
                        "correct": None, "model_version": None, "dead_lettered": True}
    assert rows[411]["correct"] is None and rows[411]["dead_lettered"] is False
    assert rows[3]["correct"] is False and rows[4]["correct"] is True and rows[4]["model_version"] == "v1"
    summary = summarize(obs, demo_pipeline.model, drift_index=500, window=100, elapsed_s=10.0, start_ms=START_MS,
                        rate_per_s=RATE)

    def mean_correct(span: range) -> float:
        scored = [rows[i]["correct"] for i in span if rows[i]["correct"] is not None]
        return round(sum(scored) / len(scored), 4)

    # Events without a prediction (e410, e411) count in no accuracy, the summary's or the rows'.
    assert summary["accuracy_before_drift"] == mean_correct(range(400, 500)) != round(
        sum(bool(rows[i]["correct"]) for i in range(400, 500)) / 100, 4)
    assert summary["accuracy_after_drift"] == mean_correct(range(500, 600)) == 0.0
    assert summary["accuracy_after_recovery"] == mean_correct(range(900, 1_000))


def test_an_alarm_names_the_event_whose_time_its_window_ends_at_whatever_the_rate(
        demo_pipeline: PipelineSpec) -> None:
    """The generators round each event's time down to the millisecond; at 400/s event 1 is at +2 ms."""
    from streamloop.stack.loop_observation import event_index

    for rate in (100.0, 300.0, 400.0, 250.0, 1000.0, 7.0):
        stamped = [START_MS + int(i * 1000 / rate) for i in range(3000)]
        assert [event_index(t, START_MS, rate) for t in stamped] == list(range(3000)), rate
    obs = observation(1_000, 500, lambda i: True)
    obs.drift_events.append({"kind": "CONCEPT", "severity": "CRITICAL", "detector": "adwin",
                             "window_end": START_MS + int(501 * 1000 / 400.0)})
    summary = summarize(obs, demo_pipeline.model, drift_index=500, window=100, elapsed_s=10.0, start_ms=START_MS,
                        rate_per_s=400.0)
    assert summary["drift_detected_at"] == 501
    assert [e["event"] for e in summary["timeline"] if "concept_alarm" in e] == [501]


def test_a_model_promoted_through_a_canary_is_one_promotion_and_a_record_read_twice_counts_once(
        card_driver, demo_pipeline: PipelineSpec) -> None:
    from streamloop.stack.loop_observation import describe

    driver = card_driver
    driver.observed = observation(1_000, 500, lambda i: True)
    for kind, at_event, to_version, from_version, decision_id in [
        ("PROMOTE", 0, "v1", None, "v1:promote"),  # the bootstrap champion replaces nothing
        ("PROMOTE", 100, "v2", "v1", "v2:canary"),  # v2 serves a share of the events on trial
        ("PROMOTE", 200, "v2", "v1", "v2:promote"),  # it passed: the champion is replaced, once
        ("PROMOTE", 300, "v3", "v2", "v3:canary"),
        ("ROLLBACK", 400, "v2", "v3", "v3:rollback"),  # v3 failed its trial; v2 stayed champion
        ("PROMOTE", 600, "v4", "v2", "v4:promote"),  # without a canary
        ("ROLLBACK", 700, "v2", "v4", "v4:rollback"),  # a champion rolled back
    ]:
        decision = {"kind": kind, "decision_id": decision_id, "from_version": from_version, "to_version": to_version,
                    "automatic": True, "decided_at": START_MS + 10 * at_event + 5, "evidence": {}}
        for _ in range(2):  # the publisher is at-least-once: a record may be read twice
            driver._on_decision(dict(decision), 0)
    for _ in range(2):
        driver._on_drift(alarm("CONCEPT", "CRITICAL", 530), 0)
    summary = driver.summary(drift_index=500, window=100, elapsed_s=10.0, start_ms=START_MS, rate_per_s=RATE)

    assert (summary["promotions"], summary["rollbacks"]) == (2, 1), json_of(summary)
    assert (summary["canaries"], summary["canary_rollbacks"]) == (2, 1), json_of(summary)
    assert summary["drift_events"] == {"CONCEPT": 1} and summary["drift_detected_at"] == 530
    assert [(e["event"], describe(e)) for e in summary["timeline"] if "decision" in e] == [
        (101, "canary v2 on trial"), (201, "promote to v2"), (301, "canary v3 on trial"),
        (401, "canary v3 failed its trial; v2 stays champion"), (601, "promote to v4"), (701, "rollback to v2")]


def json_of(summary: dict) -> str:
    return str({k: v for k, v in summary.items() if k != "timeline"})


def test_recovery_is_measured_only_on_events_after_the_loop_could_react_and_not_at_all_when_too_few(
        demo_pipeline: PipelineSpec, monkeypatch) -> None:
    from streamloop.stack import loop_observation

    def summary_of(drift_at: int) -> dict:
        obs = observation(1_000, drift_at, lambda i: i < drift_at)  # every answer wrong from the drift on
        return summarize(obs, demo_pipeline.model, drift_index=drift_at, window=100, elapsed_s=10.0,
                         start_ms=START_MS, rate_per_s=RATE)

    assert summary_of(500)["accuracy_after_recovery"] == 0.0, "an early drift: the whole last window, as before"
    # The last window is events 900-999. With a drift at 950 (--drift-at 0.95) half of it came before the
    # drift, served right by the old champion: it said 0.5. No event of it is after the reaction (the 100
    # events from the drift), nor enough of it with a drift at 880 (20, fewer than half the window).
    for drift_at in (950, 880):
        too_late = summary_of(drift_at)
        assert (too_late["accuracy_after_recovery"], too_late["accuracy_retrained_offline"], too_late["recovered"]) \
            == (None, None, None), json_of(too_late)
    # With a reaction of 20 events, from event 950: 50 events, half the window, all wrong (the window said 0.3).
    monkeypatch.setattr(loop_observation, "REACTION_WINDOW", 20)
    assert summary_of(930)["accuracy_after_recovery"] == 0.0
