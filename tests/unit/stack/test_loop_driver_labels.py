"""The demo's label accounting: the collector is at-least-once, so an answer may come twice."""

from __future__ import annotations

from streamloop.stack.loop_driver import LoopDriver
from tests.unit.model_publisher.factories import labeled_example


def test_answers_beyond_the_labels_sent_for_an_event_are_repeats_counted_apart(card_driver: LoopDriver) -> None:
    first, second = labeled_example(1, label=True), labeled_example(2, label=False)
    once, twice = str(first["event_id"]), str(second["event_id"])
    driver = card_driver
    observed = driver.observed
    observed.labels_sent, observed.labels_sent_per_event = 3, {once: 1, twice: 2}
    duplicate = {"event_id": twice, "reason": "DUPLICATE"}
    # The replay of a batch whose offset commit failed emits its decisions again.
    for answer in (first, second, first):
        driver._on_labeled_example(answer, 0)
    assert observed.labels_unanswered() == 1, "the second copy of the second label is still to come"
    for answer in (duplicate, duplicate):
        driver._on_unmatched_label(answer, 0)

    assert observed.labeled_examples == 2
    assert observed.unmatched_labels == {"DUPLICATE": 1}
    assert observed.label_answers_repeated == 2
    assert observed.labels_unanswered() == 0
    assert sorted(observed.training_pairs) == sorted([once, twice])


def test_a_dead_lettered_events_label_answered_unmatched_is_neither_awaited_nor_counted_twice(
        card_driver: LoopDriver) -> None:
    dead_lettered, scored = str(labeled_example(1, label=False)["event_id"]), labeled_example(2, label=True)
    driver = card_driver
    observed = driver.observed
    observed.labels_sent, observed.labels_sent_per_event = 2, {dead_lettered: 1, str(scored["event_id"]): 1}
    observed.dead_lettered_events.add(dead_lettered)
    assert (observed.labels_awaiting_horizon(), observed.labels_unanswered()) == (1, 1)
    # The join horizon passed for the dead-lettered event: its label comes back unmatched.
    driver._on_unmatched_label({"event_id": dead_lettered, "reason": "NO_MATCHING_EVENT"}, 0)
    assert observed.labels_awaiting_horizon() == 0
    assert observed.labels_unanswered() == 1, "the scored event's label is still to come"
    assert driver.wait_for_labels(timeout_s=0.3) is False
    driver._on_labeled_example(scored, 0)
    assert driver.wait_for_labels(timeout_s=0.3) is True
    # What the end-to-end test checks of the summary: every label sent is joined, unmatched or awaited.
    assert observed.labeled_examples + sum(observed.unmatched_labels.values()) + observed.labels_awaiting_horizon() \
        == observed.labels_sent
