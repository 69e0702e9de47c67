"""Reading a registry topic back when no broker answers: the caller's error, not librdkafka's."""

from __future__ import annotations

import logging

import pytest

from streamloop.kafka.configuration import KafkaSettings
from streamloop.ml.exceptions import RegistryError
from streamloop.ml.registry_client import read_topic


def test_a_broker_gone_is_a_registry_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="streamloop.librdkafka")
    with pytest.raises(RegistryError, match="cannot read models.model-candidate.v1: Failed to get metadata"):
        read_topic(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "models.model-candidate.v1", dict, timeout_s=1)
