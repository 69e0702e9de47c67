"""The scorer's own alert producer, past a fatal error."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from services.online_scorer import app
from streamloop.contracts.samples import sample_record
from streamloop.kafka import KafkaSettings
from streamloop.kafka.exceptions import kafka_error_of
from streamloop.serde import make_serde
from tests.kafka_fakes import (
    FakeProducer,
    InFatalStateAfterFailing,
    fatal_error_as_system_error,
    fatal_error_lost_as_system_error,
)


class FatalProducer(FakeProducer):
    """poll and flush raise a fatal error in the SystemError form confluent-kafka can give it."""

    logged = ("OUT_OF_ORDER_SEQUENCE_NUMBER", "sequence desynchronization")  # one of them in the warning

    def poll(self, _timeout: float = 0) -> int:
        raise fatal_error_as_system_error()

    def flush(self, _timeout: float = 0) -> int:
        raise fatal_error_as_system_error()


class FatalLostProducer(InFatalStateAfterFailing, FakeProducer):
    """poll and flush raise the fatal error lost, a bare SystemError (a later callback in the same call
    cleared it), and produce() raises the fatal state from then on. ``fatal=False``: the same SystemError
    from a producer in no fatal error (produce() refuses only a record over message.max.bytes)."""

    logged = ("returned NULL without setting an exception",)

    def __init__(self, fatal: bool = True) -> None:
        super().__init__()
        self.fatal = fatal

    def poll(self, _timeout: float = 0) -> int:
        self.failed = True
        raise fatal_error_lost_as_system_error()

    def flush(self, _timeout: float = 0) -> int:
        return self.poll()


def publisher_with(monkeypatch, catalog, *producers: FakeProducer) -> app.KafkaAlertPublisher:
    """A publisher whose producers are ``producers``, one for each Producer() it creates."""
    made = iter(producers)
    monkeypatch.setattr(app, "Producer", lambda _config: next(made))
    topic = catalog["alerts"]
    return app.KafkaAlertPublisher(KafkaSettings(bootstrap_servers="127.0.0.1:1"), topic,
                                   make_serde(topic.schema, catalog.repository, topic.name))


# Both forms of a fatal error confluent-kafka raises out of poll() and flush(): a SystemError caused by the
# KafkaException, and the error lost, a bare SystemError that carries no KafkaException while produce()
# says the producer is past a fatal error.
fatal_forms = pytest.mark.parametrize("failing", [FatalProducer, FatalLostProducer], ids=["caused", "lost"])


@fatal_forms
def test_after_a_fatal_producer_error_the_alert_goes_on_a_new_producer(monkeypatch, catalog, caplog, failing) -> None:
    # Kept (or the lost form raised), the failed producer refused every later alert until the scorer restarted.
    healthy = FakeProducer()
    publisher = publisher_with(monkeypatch, catalog, failing(), healthy)
    alert = sample_record(catalog["alerts"].schema)
    publisher(alert)
    publisher(alert)
    assert len(healthy.produced) == 2, "the alert in hand and the next went on the new producer"
    assert any(text in caplog.text for text in failing.logged)


def test_a_second_fatal_error_comes_out_as_its_kafka_exception(monkeypatch, catalog) -> None:
    # The model holder logs why an alert was not sent: the broker's error, not a builtin's SystemError.
    publisher = publisher_with(monkeypatch, catalog, FatalProducer(), FatalProducer())
    with pytest.raises(KafkaException) as sent:
        publisher(sample_record(catalog["alerts"].schema))
    assert kafka_error_of(sent.value).code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER


@fatal_forms
def test_a_fatal_error_at_close_is_logged_not_raised(monkeypatch, catalog, caplog, failing) -> None:
    # Raised, it skipped closing the store and telemetry, and the scorer left with a traceback.
    publisher = publisher_with(monkeypatch, catalog, failing())
    publisher.close(0)
    assert "alert producer flush at shutdown" in caplog.text


def test_a_bare_system_error_from_a_producer_in_no_fatal_error_is_raised_again(monkeypatch, catalog) -> None:
    publisher = publisher_with(monkeypatch, catalog, FatalLostProducer(fatal=False), FakeProducer())
    with pytest.raises(SystemError, match="returned NULL without setting an exception"):
        publisher(sample_record(catalog["alerts"].schema))
