"""The demo summary's timeline: which version served from which event, and each concept alarm."""

from __future__ import annotations

from streamloop.stack.loop_observation import LoopObservation, timeline


def test_the_first_champion_each_decision_and_each_concept_alarm_in_event_order() -> None:
    obs = LoopObservation()
    by_index = [(i, f"e{i}") for i in range(8)]
    obs.produced_at_ms.update({f"e{i}": 1000 + 10 * i for i in range(8)})  # event i produced at 1000 + 10 i
    obs.model_version.update({f"e{i}": "v1" for i in range(8)})
    obs.decisions += [
        {"kind": "PROMOTE", "from_version": None, "to_version": "v1", "automatic": True, "decided_at": 990},
        {"kind": "PROMOTE", "from_version": "v1", "to_version": "v2", "automatic": True, "decided_at": 1025,
         "evidence": {"relative_improvement": 0.04123}},
        {"kind": "REFUSE", "from_version": "v2", "to_version": "v3", "automatic": True, "decided_at": 1040},
        {"kind": "ROLLBACK", "from_version": "v2", "to_version": "v1", "automatic": True, "decided_at": 1060,
         "evidence": {}},
    ]
    obs.drift_events.append({"kind": "CONCEPT", "detector": "adwin", "severity": "CRITICAL", "window_end": 5})
    obs.drift_events.append({"kind": "DATA", "detector": "ks", "severity": "WARNING", "window_end": 1})

    assert timeline(obs, by_index, lambda event: event["window_end"]) == [
        {"event": 0, "serving": "v1"},
        {"event": 3, "decision": "PROMOTE", "serving": "v2", "automatic": True, "improvement": 0.0412},
        {"event": 5, "concept_alarm": "adwin", "severity": "CRITICAL"},
        {"event": 7, "decision": "ROLLBACK", "serving": "v1", "automatic": True, "improvement": None},
    ]
