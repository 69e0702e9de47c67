"""The backlog the driver paces by: what events_unanswered and labels_unanswered say, in a time that
does not grow with the dead letters (the driver asks before every event it sends)."""

from __future__ import annotations

import random

import pytest

from streamloop.stack.loop_driver import LoopDriver
from tests.unit.model_publisher.factories import labeled_example

TRANSACTION = {"transaction_id": "t0", "card_id": "c", "timestamp": 1_700_000_000_000, "amount": 1.0,
               "merchant_category": "fuel", "country": "DE", "customer_tier": "gold", "card_present": True,
               "distance_from_home_km": 1.0}


class Producer:
    def produce(self, topic, value=None, key=None) -> None:
        pass

    def poll(self, _timeout=0) -> int:
        return 0


class NotWalked(set):
    """The dead-lettered events, refusing to be walked (membership tests are what the counters use)."""

    def __iter__(self):
        raise AssertionError("the dead-lettered events were walked")


class NotWalkedDict(dict):
    def __iter__(self):
        raise AssertionError("a per-event count was walked")

    def keys(self):
        raise AssertionError("a per-event count was walked")

    values = items = keys


class Loop:
    """The driver's own handlers, fed what its reader and its producing thread would see."""

    def __init__(self, driver: LoopDriver) -> None:
        self.driver, self.observed = driver, driver.observed
        self.input_dlq, self.input_serde = driver.catalog["input"].dead_letter_topic, driver.serde("input")
        self.label_topic, self.label_serde = driver.catalog["labels"].name, driver.serde("labels")
        self.producer = Producer()

    def produce(self, event_id: str) -> None:
        self.observed.produced_at_ms.setdefault(event_id, 0)  # as LoopDriver.run keeps it

    def predict(self, event_id: str) -> None:
        self.driver._on_prediction({"event_id": event_id, "predicted_class": "true", "model_version": "v1"}, 1)

    def dead_letter(self, event_id: str) -> None:
        value = self.input_serde.encode({**TRANSACTION, "transaction_id": event_id})
        self.driver._on_dead_letter(self.input_dlq, value, self.input_dlq, self.input_serde)

    def dead_letter_of_another_stage(self, _event_id: str) -> None:
        self.driver._on_dead_letter("features.vector.v1.dlq", b"\x00", self.input_dlq, self.input_serde)

    def send_label(self, event_id: str) -> None:
        label = {"event_id": event_id, "label": True, "label_time": 1_700_000_000_000, "entity_key": "c"}
        self.driver._send_due_labels(self.producer, self.label_topic, self.label_serde, [(0.0, 0, label)], 1.0)

    def join(self, event_id: str) -> None:
        self.driver._on_labeled_example(labeled_example(1, label=True, event_id=event_id), 0)

    def unmatched(self, event_id: str) -> None:
        reason = random.Random(event_id).choice(["NO_MATCHING_EVENT", "DUPLICATE"])
        self.driver._on_unmatched_label({"event_id": event_id, "reason": reason}, 0)


@pytest.mark.parametrize("seed", range(20))
def test_the_backlog_is_what_walking_the_observation_says_after_every_change(card_driver, seed) -> None:
    rng = random.Random(seed)
    loop = Loop(card_driver)
    steps = [loop.produce, loop.predict, loop.dead_letter, loop.dead_letter_of_another_stage, loop.send_label,
             loop.join, loop.unmatched]
    ids = [f"t{i}" for i in range(rng.randint(3, 40))]  # few ids: repeats, and every order of the changes
    for _ in range(600):
        rng.choice(steps)(rng.choice(ids))
        observed = loop.observed
        assert observed.backlog() == (observed.events_unanswered(), observed.labels_unanswered())
    assert observed.dead_lettered_events and observed.label_answers_repeated, "the sequence reached both"


def test_pacing_does_not_walk_the_dead_letters(card_driver) -> None:
    # With 5,000 of 50,000 events dead-lettered, walking them took 1.15 ms of the 2.5 ms each event
    # has at 400 events/s: the pacing asks before every event sent.
    loop = Loop(card_driver)
    observed = loop.observed
    labels = []
    for i in range(50_000):
        event_id = f"t{i}"
        loop.produce(event_id)
        labels.append((0.0, i, {"event_id": event_id, "label": True, "label_time": 0, "entity_key": "c"}))
        if i % 10 == 0:
            loop.dead_letter(event_id)
        elif i < 49_000:
            loop.predict(event_id)
    card_driver._send_due_labels(loop.producer, loop.label_topic, loop.label_serde, labels, 1.0)
    # The labels of the 5,000 dead-lettered events await the horizon.
    assert (observed.events_unanswered(), observed.labels_unanswered()) == (900, 45_000)
    observed.dead_lettered_events = NotWalked(observed.dead_lettered_events)
    observed.labels_sent_per_event = NotWalkedDict(observed.labels_sent_per_event)
    observed.answers_per_event = NotWalkedDict(observed.answers_per_event)
    assert card_driver._loop_behind(400.0) == "events"  # 900 unscored > 2 s of 400 events/s
