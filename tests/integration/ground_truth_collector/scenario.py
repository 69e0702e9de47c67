"""A simulated stream for the collector: events, predictions and labels 0-30 s late, out of order.

Every record has an arrival time (its own time plus some jitter); the test produces records in
arrival order. Some events have no label, some two, some a label before their feature vector,
some no feature vector or no prediction, and some labels belong to no event at all. The outcome
each label must get follows from the join's rules (docs/ground-truth-collector.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

COUNTRIES = ["NL", "DE", "FR", "BE"]
TIERS = ["gold", "standard"]


@dataclass
class Planned:
    role: str  # features | predictions | shadow_predictions | labels
    key: str
    value: dict[str, Any]
    arrival: float


@dataclass
class Event:
    event_id: str
    event_time: int
    kind: str  # normal | ghost | predictions_only | features_only
    models: list[str] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)  # in arrival order
    features: dict[str, Any] | None = None


class Scenario:
    def __init__(self, t0: int, horizon_ms: int, events: int = 120, seed: int = 11) -> None:
        self.t0, self.horizon_ms = t0, horizon_ms
        rng = random.Random(seed)
        self.events: list[Event] = []
        self.records: list[Planned] = []
        for i in range(events):
            self._plan(i, rng)
        self.records.sort(key=lambda r: r.arrival)

    def _plan(self, i: int, rng: random.Random) -> None:
        event_time = self.t0 + 250 * i
        roll = rng.random()
        early = i < 30  # events whose waiting labels run out during the stream itself
        kind = "normal"
        if early and roll < 0.08:
            kind = "ghost"
        elif early and roll < 0.16:
            kind = "predictions_only"
        elif early and roll < 0.24:
            kind = "features_only"
        event = Event(f"evt-{i:04d}", event_time, kind)
        self.events.append(event)
        truth = rng.random() < 0.35
        entity = f"card-{rng.randint(0, 40)}"
        label_first = kind == "normal" and rng.random() < 0.1
        features_at = (event_time + 2_500 if label_first else event_time + rng.uniform(0, 1_000)) / 1000
        if kind in ("normal", "features_only"):
            segments = {"country": rng.choice(COUNTRIES), "customer_tier": rng.choice(TIERS)}
            event.features = {
                "event_id": event.event_id, "entity_key": entity, "event_time": event_time,
                "pipeline": "card-fraud", "numeric": {"amount": round(rng.uniform(1, 500), 2), "i": float(i)},
                "categorical": {"country": segments["country"]}, "segments": segments,
                "computed_at": event_time, "late": False}
            self.records.append(Planned("features", entity, event.features, features_at))
        if kind in ("normal", "predictions_only"):
            models = [("fraud-v1", "CHAMPION", "predictions")]
            if rng.random() < 0.5:
                models.append(("fraud-v2", "SHADOW", "shadow_predictions"))
            for n, (version, role, topic) in enumerate(models):
                p = min(0.99, max(0.01, (0.7 if truth else 0.3) + rng.uniform(-0.4, 0.4)))
                value = {"event_id": event.event_id, "entity_key": entity, "event_time": event_time,
                         "pipeline": "card-fraud", "model_name": "fraud", "model_version": version, "role": role,
                         "predicted_class": "true" if p >= 0.5 else "false",
                         "probabilities": {"true": p, "false": 1 - p}, "scored_at": event_time,
                         "feature_freshness_ms": 0}
                event.models.append(version)
                self.records.append(Planned(topic, entity, value, features_at + 0.1 + 0.3 * n))
        if rng.random() < 0.1:
            return  # never labeled
        delay = rng.randint(0, 500) if label_first else rng.randint(0, 20_000 if kind != "normal" else 30_000)
        labels = [(event_time + delay, truth)]
        if rng.random() < 0.15:
            labels.append((event_time + delay + rng.randint(100, 1_500), truth if rng.random() < 0.5 else not truth))
        planned = []
        for label_time, value in labels:
            label = {"event_id": event.event_id, "label": value, "label_time": label_time, "entity_key": entity}
            planned.append(Planned("labels", event.event_id, label, label_time / 1000 + rng.uniform(0, 1.0)))
        planned.sort(key=lambda r: r.arrival)  # one key, one partition: the first to arrive is the first read
        event.labels = [r.value for r in planned]
        self.records += planned

    def expected(self) -> dict[tuple[str, int], str]:
        """(event_id, label_time) -> JOINED, AFTER_HORIZON, NO_MATCHING_EVENT or DUPLICATE."""
        outcome = {}
        for event in self.events:
            for n, label in enumerate(event.labels):
                delay = label["label_time"] - event.event_time
                if n > 0:
                    result = "DUPLICATE"
                elif event.kind != "ghost" and delay > self.horizon_ms:
                    result = "AFTER_HORIZON"
                elif event.features is not None:
                    result = "JOINED"
                else:
                    result = "NO_MATCHING_EVENT"
                outcome[(event.event_id, label["label_time"])] = result
        return outcome
