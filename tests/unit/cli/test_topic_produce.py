"""``streamloop produce`` from standard input, with the broker faked."""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from streamloop.cli import topic_commands
from streamloop.cli.connection import Connection
from streamloop.cli.main import app
from streamloop.contracts import load_catalog
from streamloop.service.settings import SerdeSettings
from tests.kafka_fakes import fatal_error_as_system_error, fatal_kafka_exception

TRANSACTION = {"transaction_id": "t1", "card_id": "c", "timestamp": 1_700_000_000_000, "amount": 1.0,
               "merchant_category": "fuel", "country": "DE", "customer_tier": "gold", "card_present": True,
               "distance_from_home_km": 1.0}


class Producer:
    def __init__(self, _config) -> None:
        self.produced: list[bytes] = []

    def produce(self, topic, value=None, key=None, on_delivery=None) -> None:
        self.produced.append(value)

    def poll(self, _timeout=0) -> int:
        return 0

    def flush(self, _timeout=0) -> int:
        return 0


@pytest.fixture
def serde_settings() -> SerdeSettings:
    return SerdeSettings(url=None)


@pytest.fixture
def producers(monkeypatch, demo_pipeline, serde_settings) -> list[Producer]:
    made: list[Producer] = []

    def producer(config) -> Producer:
        made.append(Producer(config))
        return made[-1]

    connection = Connection(demo_pipeline, load_catalog(demo_pipeline), "127.0.0.1:1", "redis://r", serde_settings)
    monkeypatch.setattr(topic_commands, "connect", lambda *_args: connection)
    monkeypatch.setattr(topic_commands, "reachable_admin", lambda _settings: None)
    monkeypatch.setattr(topic_commands, "Producer", producer)
    return made


def test_standard_input_that_is_not_utf8_ends_in_one_line_naming_the_line(producers) -> None:
    stdin = json.dumps(TRANSACTION).encode() + b"\n" + b'{"transaction_id": "caf\xe9"}\n'
    result = CliRunner().invoke(app, ["produce", "payments.transaction.v1"], input=stdin)
    assert result.exit_code == 1, result.output
    assert result.output == "streamloop: line 2: not UTF-8 text (byte 23 of the line); 1 record produced before it\n"
    assert len(producers[0].produced) == 1


def test_utf8_standard_input_is_produced(producers) -> None:
    stdin = "\n".join(json.dumps({**TRANSACTION, "transaction_id": f"t{i}", "card_id": "café"}) for i in range(3))
    result = CliRunner().invoke(app, ["produce", "payments.transaction.v1"], input=stdin.encode())
    assert result.exit_code == 0, result.output
    assert result.output == "produced 3 records to payments.transaction.v1\n"
    assert len(producers[0].produced) == 3 and all("café".encode() in v for v in producers[0].produced)


@pytest.mark.parametrize("failing", ["poll", "flush"])
@pytest.mark.parametrize("raised", [fatal_error_as_system_error, fatal_kafka_exception],
                         ids=["as a SystemError", "as a KafkaException"])
def test_a_fatal_producer_error_ends_in_one_line_naming_it(producers, monkeypatch, failing, raised) -> None:
    def fail(*_args) -> int:
        raise raised()

    monkeypatch.setattr(Producer, failing, fail)
    stdin = "\n".join(json.dumps({**TRANSACTION, "transaction_id": f"t{i}"}) for i in range(2))
    result = CliRunner().invoke(app, ["produce", "payments.transaction.v1"], input=stdin.encode())
    assert result.exit_code == 1, result.output
    produced = "1 record" if failing == "poll" else "2 records"
    assert result.output == (f"streamloop: the Kafka producer failed (sequence desynchronization with broker 1) "
                             f"after {produced}; some may not have been written\n")


@pytest.mark.parametrize("serde_settings", [SerdeSettings(url=f"mock://{uuid.uuid4().hex}")])
def test_a_schema_the_registry_does_not_have_ends_in_one_line_naming_the_subject(producers) -> None:
    stdin = json.dumps(TRANSACTION) + "\n"
    result = CliRunner().invoke(app, ["produce", "payments.transaction.v1"], input=stdin.encode())
    assert result.exit_code == 1, result.output
    assert result.output.startswith("streamloop: line 1: examples.payments.Transaction is not registered under "
                                    "payments.transaction.v1-value; deploy/create_topics.py registers it ")
    assert result.output.endswith("; 0 records produced before it\n") and result.output.count("\n") == 1
    assert producers[0].produced == []
