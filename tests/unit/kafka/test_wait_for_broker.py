"""Waiting for the broker at start-up: said at once, not after the first five-second request."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamloop.kafka import admin
from streamloop.kafka.exceptions import BrokerUnavailableError


class LateBroker:
    """Answers its ``answer_at``-th metadata request; records each request's timeout."""

    def __init__(self, answer_at: int) -> None:
        self.answer_at = answer_at
        self.timeouts: list[float] = []

    def list_topics(self, timeout: float) -> object:
        self.timeouts.append(timeout)
        if len(self.timeouts) < self.answer_at:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "connection refused"))
        return object()


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin.time, "sleep", lambda _s: None)


def test_the_wait_is_logged_once_after_a_short_first_request(caplog: pytest.LogCaptureFixture) -> None:
    broker = LateBroker(answer_at=4)
    with caplog.at_level(logging.INFO, logger="streamloop.kafka.admin"):
        admin.wait_for_broker(broker, timeout_s=60)  # type: ignore[arg-type]
    assert broker.timeouts[0] <= 1.0 and broker.timeouts[1:] == [5.0, 5.0, 5.0]
    said = [r.getMessage() for r in caplog.records]
    assert said == ["no Kafka broker answered yet (connection refused); waiting for one, for at most 60 s in all"]


def test_a_broker_that_answers_at_once_is_not_mentioned(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="streamloop.kafka.admin"):
        admin.wait_for_broker(LateBroker(answer_at=1), timeout_s=60)  # type: ignore[arg-type]
    assert not caplog.records


def test_no_answer_within_the_timeout_still_raises() -> None:
    with pytest.raises(BrokerUnavailableError):
        admin.wait_for_broker(LateBroker(answer_at=10**9), timeout_s=0.01)  # type: ignore[arg-type]
