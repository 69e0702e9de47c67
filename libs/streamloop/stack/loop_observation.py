"""What the loop driver read back from a running loop, and the demo's summary of it.

:class:`LoopObservation` is filled by :class:`~streamloop.stack.loop_driver.LoopDriver`'s readers;
:func:`summarize` turns it into the summary ``streamloop demo --json`` prints (the README lists
its fields): counts, accuracies around the drift, the offline reference, detection, decisions,
latency and the timeline.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from streamloop.contracts.learning_specs import ModelSpec
from streamloop.ml import build_model
from streamloop.ml.prediction import predict
from streamloop.ml.registry import champion_changes

# Recovered: the served accuracy over the last window within this of the offline reference model.
RECOVERY_MARGIN = 0.02
# Events after the drift counted as "right after": at the demo's rate the loop needs more than
# this many events to detect the drift and serve a new model.
REACTION_WINDOW = 2000


@dataclass
class LoopObservation:
    """Everything read back from the loop, keyed by event id where it matters."""

    produced_at_ms: dict[str, int] = field(default_factory=dict)
    index_of: dict[str, int] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    predicted_at_ms: dict[str, int] = field(default_factory=dict)
    predicted: dict[str, str | None] = field(default_factory=dict)
    model_version: dict[str, str] = field(default_factory=dict)
    decisions: list[dict] = field(default_factory=list)
    drift_events: list[dict] = field(default_factory=list)
    # What identifies each decision and drift event kept: the publisher and the detector are
    # at-least-once, and a record read again must not count again (add_decision, add_drift_event).
    decisions_seen: set[tuple] = field(default_factory=set)
    drift_events_seen: set[tuple] = field(default_factory=set)
    labeled_examples: int = 0
    # Answers (labeled examples and unmatched labels) beyond the labels sent for their event: the
    # collector is at-least-once, and a batch replayed after a failed offset commit (noida-db:
    # ILLEGAL_GENERATION while its two replicas join the group) can emit a decision again.
    label_answers_repeated: int = 0
    answers_per_event: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    labels_sent: int = 0
    bad_promotion: dict | None = None
    unmatched_labels: dict[str, int] = field(default_factory=dict)  # per reason
    dead_lettered_events: set[str] = field(default_factory=set)  # input events sent to the DLQ
    labels_sent_per_event: dict[str, int] = field(default_factory=dict)
    # Time the driver waited for the loop to catch up (backpressure), by what was behind
    # ("events": unscored, "labels": unjoined): which stage limits the rate.
    throttled_by: dict[str, float] = field(default_factory=dict)
    # The first labeled example of each event, as the retrainer learns it: the reference model's data.
    training_pairs: dict[str, tuple[dict[str, float], Any]] = field(default_factory=dict)
    # The two sums over the dead-lettered events in events_unanswered and labels_awaiting_horizon,
    # kept by the add_ and count_ methods below as the sets change, for backlog().
    _dead_lettered_unpredicted: int = field(default=0, init=False, repr=False)
    _dead_lettered_labels_unanswered: int = field(default=0, init=False, repr=False)

    def add_decision(self, decision: dict) -> None:
        """Keep a decision read from the topic, unless it was read before."""
        # The id and the time, as the dashboard keys them (dashboard/records.py): one id may be
        # decided twice (a canary's <v>:rollback, then <v> rolled back as champion after a manual
        # promotion), and a record read again has both the same.
        identity = (decision.get("decision_id"), _millis(decision["decided_at"]))
        if identity not in self.decisions_seen:
            self.decisions_seen.add(identity)
            self.decisions.append(decision)

    def add_drift_event(self, event: dict) -> None:
        """Keep a drift event read from the topic, unless it was read before (it has no id of its own)."""
        identity = (event["kind"], event["detector"], event.get("feature"), _millis(event["window_end"]),
                    event.get("severity"))
        if identity not in self.drift_events_seen:
            self.drift_events_seen.add(identity)
            self.drift_events.append(event)

    def add_prediction(self, event_id: str, timestamp_ms: int, predicted: str | None, model_version: str) -> None:
        """Keep an event's first prediction (a prediction read again changes nothing)."""
        if event_id in self.predicted_at_ms:
            return
        self.predicted_at_ms[event_id] = timestamp_ms
        self.predicted[event_id] = predicted
        self.model_version[event_id] = model_version
        if event_id in self.dead_lettered_events:
            self._dead_lettered_unpredicted -= 1

    def add_dead_lettered_event(self, event_id: str) -> None:
        """Keep an input event the loop sent to its dead-letter topic."""
        if event_id in self.dead_lettered_events:
            return
        self.dead_lettered_events.add(event_id)
        if event_id not in self.predicted_at_ms:
            self._dead_lettered_unpredicted += 1
        self._dead_lettered_labels_unanswered += \
            self.labels_sent_per_event.get(event_id, 0) - self.answers_per_event.get(event_id, 0)

    def count_label_sent(self, event_id: str) -> None:
        """Count a label the driver sends for the event (each copy of it)."""
        self.labels_sent += 1
        self.labels_sent_per_event[event_id] = self.labels_sent_per_event.get(event_id, 0) + 1
        if event_id in self.dead_lettered_events:
            self._dead_lettered_labels_unanswered += 1

    def count_answer(self, event_id: str) -> bool:
        """Count a label's answer (a labeled example or an unmatched label); False for an answer
        beyond the labels sent for the event: a repeat, counted apart."""
        answered = self.answers_per_event.get(event_id, 0)
        if answered >= self.labels_sent_per_event.get(event_id, 0):
            self.label_answers_repeated += 1
            return False
        self.answers_per_event[event_id] = answered + 1
        if event_id in self.dead_lettered_events:
            self._dead_lettered_labels_unanswered -= 1
        return True

    def backlog(self) -> tuple[int, int]:
        """``events_unanswered()`` and ``labels_unanswered()``, in a time that does not grow with the
        dead letters: the driver asks before every event it sends, under the lock the readers take.

        Those walk the dead-lettered events (with 5,000 of 50,000 dead-lettered, 1 to 2 ms of the
        2.5 ms each event has at 400 events/s); this reads the counters the add_ and count_ methods
        keep, so it equals them only when the observation changed through those.
        """
        unscored = len(self.produced_at_ms) - len(self.predicted_at_ms) - self._dead_lettered_unpredicted
        unjoined = self.labels_sent - self.labeled_examples - sum(self.unmatched_labels.values()) \
            - self._dead_lettered_labels_unanswered
        return unscored, unjoined

    @property
    def throttled_s(self) -> float:
        """All the time the driver waited for the loop to catch up."""
        return sum(self.throttled_by.values())

    def labels_awaiting_horizon(self) -> int:
        """Labels of dead-lettered events not answered yet: no event to join, NO_MATCHING_EVENT once
        the horizon passed.

        Those answered already are counted joined or unmatched, not here too: labels joined, unmatched
        and awaiting the horizon then add up to the labels sent once none is unanswered.
        """
        return sum(self.labels_sent_per_event.get(e, 0) - self.answers_per_event.get(e, 0)
                   for e in self.dead_lettered_events)

    def events_unanswered(self) -> int:
        """Events produced that have neither a prediction nor a dead letter yet (``backlog()`` without
        walking the dead letters)."""
        # It must not walk the predictions: `set - dict.keys()` did (it iterates the keys), and
        # took 57 % of the driver's CPU when it was asked before every event sent.
        return len(self.produced_at_ms) - len(self.predicted_at_ms) \
            - sum(1 for e in self.dead_lettered_events if e not in self.predicted_at_ms)

    def labels_unanswered(self) -> int:
        """Labels sent that are not yet joined, unmatched, or waiting for the horizon of a dead-lettered event."""
        return self.labels_sent - self.labeled_examples - sum(self.unmatched_labels.values()) \
            - self.labels_awaiting_horizon()


def summarize(obs: LoopObservation, model: ModelSpec, drift_index: int, window: int, elapsed_s: float, start_ms: int,
              rate_per_s: float) -> dict:
    """The demo's summary of what the driver observed (docs: README, "The demo takes ...")."""
    by_index = sorted((obs.index_of[e], e) for e in obs.produced_at_ms)
    latencies = [obs.predicted_at_ms[e] - obs.produced_at_ms[e] for e in obs.produced_at_ms
                 if e in obs.predicted_at_ms]

    def accuracy(ids: list[str]) -> float | None:
        scored = [e for e in ids if e in obs.predicted]
        if not scored:
            return None
        return round(sum(_served_right(obs, e) for e in scored) / len(scored), 4)

    before = [e for i, e in by_index if drift_index - window <= i < drift_index]
    # Right after the drift: the first events, before a detection and a promotion can act.
    reacted_from = drift_index + min(window, REACTION_WINDOW)
    just_after = [e for i, e in by_index if drift_index <= i < reacted_from]
    # The last window, but only what came after the loop could react: with a late drift the last
    # window would hold pre-drift events, served right by the old champion, and make a loop that
    # never recovered look half recovered.
    last = by_index[-window:]
    measured_from = max(reacted_from, last[0][0]) if last else reacted_from
    after = [e for i, e in last if i >= measured_from]
    if len(after) < max(1, len(last) // 2):
        # Fewer than half the window's events say too little against the reference's 2-point
        # margin: no recovery is reported (the drift came too late in the run to see one).
        after = []
    trained_on = [e for i, e in by_index if drift_index <= i < measured_from]
    reference = _retrained_offline(obs, model, trained_on, after)
    recovered_after = accuracy(after)
    # The demo's drift is a concept drift: it is detected on the error stream. Data-drift
    # events are reported beside it (windowed features warming up shift early on).
    def index_of(event: dict) -> int:
        return event_index(_millis(event["window_end"]), start_ms, rate_per_s)

    # A concept detection with the error going down (a better model took over) is INFO, not drift.
    detected_at = sorted(index_of(d) for d in obs.drift_events
                         if d["kind"] == "CONCEPT" and d.get("severity") != "INFO")
    after_drift = [i for i in detected_at if i >= drift_index]
    by_kind: dict[str, int] = {}
    for event in obs.drift_events:
        by_kind[event["kind"]] = by_kind.get(event["kind"], 0) + 1
    changes = [change for decision, change in decision_changes(obs)
               # A promotion by hand (the demo's bad promotion) is the user's, not the loop's.
               if change != "promotion" or decision.get("automatic", True)]
    return {
        "events_in": len(obs.produced_at_ms),
        "predictions_out": len(obs.predicted_at_ms),
        "dlq": obs.dead_letters,
        "dlq_events": len(obs.dead_lettered_events),
        "labels_sent": obs.labels_sent,
        "labels_joined": obs.labeled_examples,
        "label_answers_repeated": obs.label_answers_repeated,
        "labels_unmatched": dict(obs.unmatched_labels),
        # Labels of dead-lettered events not answered yet: no event to join, NO_MATCHING_EVENT
        # once the join horizon has passed (the demo usually ends before that).
        "labels_awaiting_horizon": obs.labels_awaiting_horizon(),
        # Lost: an event with neither a prediction nor a dead letter.
        "lost": sum(1 for e in obs.produced_at_ms
                    if e not in obs.predicted_at_ms and e not in obs.dead_lettered_events),
        "accuracy_before_drift": accuracy(before),
        # What the champion of the day scored right after the drift, before the loop reacted.
        "accuracy_after_drift": accuracy(just_after),
        "accuracy_after_recovery": recovered_after,
        # The same estimator trained offline, in one pass in event order, on every labeled
        # post-drift example before the last window, scored on the last window: what the
        # model class reaches on the new concept. "recovered" is measured against this, so that
        # it asks the loop for what the model can learn, however hard the new concept is.
        "accuracy_retrained_offline": reference,
        "recovered": None if reference is None or recovered_after is None
        else recovered_after >= reference - RECOVERY_MARGIN,
        "drift_at": drift_index,
        "drift_detected_at": after_drift[0] if after_drift else None,
        "drift_events": by_kind,
        "concept_drift_alarms_before_drift": len(detected_at) - len(after_drift),
        # A challenger sent to the canary slot replaces no champion, nor does a canary failing
        # its trial: counted apart, as the dashboard counts them, so that a model promoted through
        # a canary is one promotion.
        "promotions": changes.count("promotion"),
        "rollbacks": changes.count("rollback"),
        "canaries": changes.count("canary"),
        "canary_rollbacks": changes.count("canary_rollback"),
        "bad_promotion_rolled_back": None if obs.bad_promotion is None else any(
            d["kind"] == "ROLLBACK" and d.get("from_version") == obs.bad_promotion["to_version"]
            for d in obs.decisions),
        "model_versions": len(set(obs.model_version.values())),
        "elapsed_s": round(elapsed_s, 1),
        # Seconds the driver held events back because the loop was behind (0: the
        # machine sustained the offered rate).
        "throttled_s": round(obs.throttled_s, 1),
        "throttled_by": {k: round(v, 1) for k, v in sorted(obs.throttled_by.items())},
        "throughput_eps": round(len(obs.predicted_at_ms) / elapsed_s, 1) if elapsed_s else None,
        # The rate predictions came out while events flowed: from the first event produced to
        # the last prediction. throughput_eps also counts the wait for the last labels.
        "predictions_per_s": _rate(len(obs.predicted_at_ms), min(obs.produced_at_ms.values(), default=None),
                                   max(obs.predicted_at_ms.values(), default=None)),
        "latency_p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
        "latency_p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
        "timeline": timeline(obs, by_index, index_of),
    }


def event_outcomes(obs: LoopObservation) -> list[dict]:
    """Every event produced, in index order: its label, what was served for it and by which model.

    ``correct`` is None for an event without a prediction (dead-lettered, or lost); the summary's
    accuracies are means of it over their windows. ``streamloop demo --outcomes`` writes these
    rows, for measures the summary does not give (benchmarks/learning_quality_kafka.py computes
    the learning-quality benchmark's recovery from them).
    """
    rows = []
    for index, event_id in sorted((obs.index_of[e], e) for e in obs.produced_at_ms):
        predicted = event_id in obs.predicted
        rows.append({"index": index, "event_id": event_id, "label": obs.labels[event_id],
                     "predicted": obs.predicted.get(event_id),
                     "correct": _served_right(obs, event_id) if predicted else None,
                     "model_version": obs.model_version.get(event_id),
                     "dead_lettered": event_id in obs.dead_lettered_events})
    return rows


def _served_right(obs: LoopObservation, event_id: str) -> bool:
    # Labels and predicted classes compare as text: the label may be a bool, the class is "true".
    return str(obs.predicted[event_id]).lower() == str(obs.labels[event_id]).lower()


def event_index(event_time_ms: int, start_ms: int, rate_per_s: float) -> int:
    """The index of the event stamped ``event_time_ms``: the generators stamp event i at
    ``start_ms + int(i * 1000 / rate_per_s)``, rounded down, so the inverse rounds up.

    Above 1,000 events/s several events share a millisecond; the first of them is named.
    """
    # Rounded first: 2.0000000000000004 is event 2, not 3.
    return math.ceil(round((event_time_ms - start_ms) * rate_per_s / 1000, 6))


def timeline(obs: LoopObservation, by_index: list[tuple[int, str]], index_of: Callable[[dict], int]) -> list[dict]:
    """What happened at which event: the first champion, each promotion and rollback, each concept alarm.

    A decision is placed at the number of events produced before the publisher made it (the
    scorer swaps within about a second); an alarm at the newest event its window saw.
    """
    produced = sorted(obs.produced_at_ms.values())
    entries: list[dict] = []
    first = next((obs.model_version[e] for _, e in by_index if e in obs.model_version), None)
    if first is not None:
        entries.append({"event": by_index[0][0], "serving": first})
    for decision, change in decision_changes(obs):
        if change == "bootstrap" or not decision.get("from_version"):
            continue  # not a change: the bootstrap champion is the first one served
        entry = {"event": bisect.bisect_right(produced, _millis(decision["decided_at"])),
                 "decision": decision["kind"], "serving": decision["to_version"],
                 "automatic": decision.get("automatic", True), "improvement": _improvement(decision)}
        if change.startswith("canary"):
            # A canary serves a share of the events; the champion serves the rest, before and after.
            entry["canary"] = decision["to_version"] if change == "canary" else decision["from_version"]
        entries.append(entry)
    entries += [{"event": index_of(d), "concept_alarm": d["detector"], "severity": d.get("severity")}
                for d in obs.drift_events if d["kind"] == "CONCEPT"]
    return sorted(entries, key=lambda e: e["event"])


def decision_changes(obs: LoopObservation) -> list[tuple[dict, str]]:
    """The PROMOTE and ROLLBACK decisions in the order they were made, with what each did to the
    champion (``streamloop.ml.registry.champion_changes``: the dashboard's rule)."""
    # In decision time, not reading order: a canary's trial is told by the PROMOTE before its ROLLBACK.
    return champion_changes(sorted(obs.decisions, key=lambda d: _millis(d["decided_at"])))


def describe(entry: dict) -> str:
    """One timeline entry in words: what the demo's timeline table and the benchmarks print."""
    if "concept_alarm" in entry:
        return f"concept alarm: {entry['concept_alarm']} ({entry['severity']})"
    if "decision" not in entry:
        return f"serving {entry['serving']}"
    if "canary" in entry:
        if entry["decision"] == "ROLLBACK":
            return f"canary {entry['canary']} failed its trial; {entry['serving']} stays champion"
        return f"canary {entry['canary']} on trial" + (
            "" if entry.get("improvement") is None else f", loss {-entry['improvement']:+.1%}")
    text = f"{entry['decision'].lower()} to {entry['serving']}" + ("" if entry["automatic"] else " (by hand)")
    if entry.get("improvement") is not None:
        text += f", loss {-entry['improvement']:+.1%}"
    return text


def _retrained_offline(obs: LoopObservation, model_spec: ModelSpec, train_ids: list[str],
                       test_ids: list[str]) -> float | None:
    """Accuracy on ``test_ids`` of a fresh estimator trained on ``train_ids``' labeled examples."""
    pairs = obs.training_pairs
    train = [pairs[e] for e in train_ids if e in pairs]
    test = [(pairs[e], obs.labels[e]) for e in test_ids if e in pairs]
    if len(train) < 100 or not test:
        return None
    model = build_model(model_spec)
    for x, y in train:
        model.learn_one(x, y)
    hits = sum(str(predict(model, x, model_spec).predicted_class).lower() == str(label).lower()
               for (x, _y), label in test)
    return round(hits / len(test), 4)


def _rate(count: int, first_ms: int | None, last_ms: int | None) -> float | None:
    if first_ms is None or last_ms is None or last_ms <= first_ms:
        return None
    return round(count / ((last_ms - first_ms) / 1000), 1)


def _millis(value: Any) -> int:
    """An Avro timestamp-millis as fastavro decodes it (an aware datetime) or as raw milliseconds."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def _improvement(decision: dict) -> float | None:
    """The promotion's relative loss improvement (its evidence), rounded for reading."""
    value = (decision.get("evidence") or {}).get("relative_improvement")
    return None if value is None else round(float(value), 4)
