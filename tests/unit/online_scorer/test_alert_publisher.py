"""The scorer's own alert producer, past a fatal error."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from services.online_scorer import app
from streamloop.contracts.samples import sample_record
from streamloop.kafka import KafkaSettings
from streamloop.kafka.exceptions import kafka_error_of
from streamloop.serde import make_serde
from tests.kafka_fakes import FakeProducer, fatal_error_as_system_error


class FatalProducer(FakeProducer):
    """poll and flush raise a fatal error in the SystemError form confluent-kafka can give it."""

    def poll(self, _timeout: float = 0) -> int:
        raise fatal_error_as_system_error()

    def flush(self, _timeout: float = 0) -> int:
        raise fatal_error_as_system_error()


def test_a_fatal_producer_error_comes_out_as_its_kafka_exception(monkeypatch, catalog) -> None:
    # The model holder logs why an alert was not sent: the broker's error, not a builtin's SystemError.
    monkeypatch.setattr(app, "Producer", lambda _config: FatalProducer())
    topic = catalog["alerts"]
    publisher = app.KafkaAlertPublisher(KafkaSettings(bootstrap_servers="127.0.0.1:1"), topic,
                                        make_serde(topic.schema, catalog.repository, topic.name))
    with pytest.raises(KafkaException) as sent:
        publisher(sample_record(topic.schema))
    with pytest.raises(KafkaException) as closed:
        publisher.close(0)
    for info in (sent, closed):
        assert kafka_error_of(info.value).code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER
