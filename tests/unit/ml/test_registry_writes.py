"""Writing a registry change when the producer fails: the caller's error, not librdkafka's."""

from __future__ import annotations

import pytest

from streamloop.contracts import load_catalog
from streamloop.kafka.configuration import KafkaSettings
from streamloop.ml import registry_client
from streamloop.ml.exceptions import RegistryError
from streamloop.ml.registry_client import RegistryClient
from tests.kafka_fakes import FakeProducer, fatal_error_as_system_error, fatal_kafka_exception


@pytest.mark.parametrize("raised", [fatal_error_as_system_error, fatal_kafka_exception],
                         ids=["as a SystemError", "as a KafkaException"])
def test_a_fatal_producer_error_is_a_registry_error(monkeypatch, demo_pipeline, raised) -> None:
    # The model commands report a RegistryError in one line; anything else ended them in a traceback.
    class FatalInFlush(FakeProducer):
        def flush(self, _timeout: float = 0) -> int:
            raise raised()

    monkeypatch.setattr(registry_client, "Producer", lambda _config: FatalInFlush())
    client = RegistryClient(demo_pipeline, load_catalog(demo_pipeline), KafkaSettings(bootstrap_servers="127.0.0.1:1"))
    with pytest.raises(RegistryError, match="^registry change not acknowledged: sequence desynchronization with "
                                            "broker 1$"):
        client._produce([("model_deployments", "fraud/champion", None)])
