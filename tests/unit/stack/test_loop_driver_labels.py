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
