"""The demo driver checks that the broker took its own events and labels."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamloop.stack import loop_driver
from streamloop.stack.exceptions import DeliveryError
from streamloop.stack.loop_driver import LoopDriver
from tests.kafka_fakes import fatal_error_as_system_error
from tests.unit.stack.test_loop_driver_backpressure import events


class Producer:
    """Refuses the ``refuse``-th record (reported at the next poll, as librdkafka does); ``flush`` leaves ``left``."""

    refuse: int | None = None
    left = 0

    def __init__(self, config: dict) -> None:
        self.config = config
        self.values: list[bytes] = []

    def produce(self, topic, value=None, key=None) -> None:
        self.values.append(value)

    def poll(self, _timeout=0) -> int:
        if self.refuse is not None and len(self.values) >= self.refuse:
            self.refuse = None
            self.config["on_delivery"](KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)
        return 0

    def flush(self, _timeout=0) -> int:
        return self.left


@pytest.fixture
def producers(monkeypatch) -> list[Producer]:
    made: list[Producer] = []

    def producer(config: dict) -> Producer:
        made.append(Producer(config))
        return made[-1]

    monkeypatch.setattr(loop_driver, "Producer", producer)
    return made


def test_an_event_the_broker_refuses_ends_the_run_naming_the_error(producers, card_driver: LoopDriver,
                                                                   monkeypatch) -> None:
    monkeypatch.setattr(Producer, "refuse", 3)
    with pytest.raises(DeliveryError, match="did not take 1 of the demo's events and labels: Broker: Message size too"):
        card_driver.run(iter(events(100)), 10_000.0)
    assert len(card_driver.observed.produced_at_ms) < 100, "stopped at the refusal, not at the end of the stream"
    # Failures only: a report per record delivered would cost the producing thread for nothing.
    assert producers[0].config["delivery.report.only.error"] is True


def test_records_still_queued_after_the_flush_end_the_run(producers, card_driver: LoopDriver, monkeypatch) -> None:
    monkeypatch.setattr(Producer, "left", 4)
    with pytest.raises(DeliveryError, match="4 of the demo's events and labels were still not delivered"):
        card_driver.run(iter(events(10)), 10_000.0)
    assert len(card_driver.observed.produced_at_ms) == 10


@pytest.mark.parametrize("failing", ["poll", "flush"])
def test_a_fatal_producer_error_ends_the_run_as_its_kafka_exception(producers, card_driver: LoopDriver, monkeypatch,
                                                                    failing) -> None:
    # The demo reports the producing thread's error by its type and message: the broker's, not a
    # builtin's SystemError (confluent-kafka raises a fatal error in that form from poll and flush).
    def fail(*_args) -> int:
        raise fatal_error_as_system_error()

    monkeypatch.setattr(Producer, failing, fail)
    with pytest.raises(KafkaException, match="sequence desynchronization with broker 1"):
        card_driver.run(iter(events(10)), 10_000.0)
