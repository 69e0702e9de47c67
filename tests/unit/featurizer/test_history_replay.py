"""The featurizer's state replay, without a broker: what a dependency's outage turns into."""

from __future__ import annotations

import pytest

from services.featurizer.exceptions import RestoreError
from services.featurizer.history import KafkaPartitionHistory
from streamloop.kafka import KafkaSettings
from streamloop.kafka.records import TopicPartitionRef
from streamloop.serde import RegistryUnavailableError
from tests.kafka_fakes import FakeMessage


class RegistryDown:
    def decode(self, _data: bytes) -> dict:
        raise RegistryUnavailableError("registry lookup failed: connection refused")


def test_a_schema_registry_outage_during_the_replay_is_a_restore_error_not_a_traceback(monkeypatch) -> None:
    history = KafkaPartitionHistory(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "g", {"in": RegistryDown()})
    monkeypatch.setattr(history, "_ranges", lambda *_args: {("in", 0): (0, 1)})
    monkeypatch.setattr(history, "_messages", lambda *_args: iter([FakeMessage(b"x", 0, topic="in")]))
    with pytest.raises(RestoreError, match="registry lookup failed"):
        list(history.replay({TopicPartitionRef("in", 0): 1}, lookback_ms=60_000))
