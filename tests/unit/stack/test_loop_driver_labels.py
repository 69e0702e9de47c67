"""The demo's label accounting: an event joined twice (the collector is at-least-once) is one label joined."""

from __future__ import annotations

from pathlib import Path

from streamloop.contracts import load_catalog, load_pipeline
from streamloop.kafka.configuration import KafkaSettings
from streamloop.stack.loop_driver import LoopDriver
from tests.unit.model_publisher.factories import labeled_example

PIPELINE = Path(__file__).parents[3] / "examples" / "card_fraud" / "pipeline.yaml"


def test_a_repeated_labeled_example_counts_once_and_is_reported_apart() -> None:
    spec = load_pipeline(PIPELINE)
    driver = LoopDriver(spec, load_catalog(spec), KafkaSettings(bootstrap_servers="127.0.0.1:1"))
    observed = driver.observed
    observed.labels_sent = 3
    first, second = labeled_example(1, label=True), labeled_example(2, label=False)
    for value in (first, second, first):  # the replay of a batch whose offset commit failed
        driver._on_labeled_example(value, 0)

    assert observed.labeled_examples == 2
    assert observed.labeled_example_repeats == 1
    assert sorted(observed.training_pairs) == sorted([str(first["event_id"]), str(second["event_id"])])
    assert observed.labels_unanswered() == 1, "the third label sent is still to come"
