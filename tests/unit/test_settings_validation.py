"""Settings every service reads: what they refuse, and the one line that names the variable to fix."""

from __future__ import annotations

import importlib

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsError

from services.online_scorer.settings import ScorerSettings
from streamloop.contracts.feature_specs import MAX_KEY_BYTES
from streamloop.kafka.configuration import KafkaSettings
from streamloop.ml.settings import ArtifactSettings
from streamloop.service.settings import CommonSettings, RedisSettings
from streamloop.service.settings_errors import describe_settings_error, describe_validation_error
from streamloop.stack.services import SERVICES


@pytest.mark.parametrize("servers", ["127.0.0.1:9092", "kafka-0:9092,kafka-1:9092", "a:1, b:2", "[::1]:9092",
                                     "streamloop-kafka-bootstrap.kafka.svc:9093"])
def test_broker_lists_of_host_and_port_are_accepted(servers: str) -> None:
    assert KafkaSettings(bootstrap_servers=servers).common()["bootstrap.servers"] == servers


@pytest.mark.parametrize(("servers", "why"), [
    ("", "empty"), ("  ", "empty"), ("host:abc", "'host:abc' is not host:port"), ("host", "'host' is not host:port"),
    ("host:0", "'host:0'"), ("host:65536", "'host:65536'"), ("a:1,", "'' is not host:port"),
])
def test_an_empty_or_portless_broker_list_is_refused_naming_the_variable(servers: str, why: str) -> None:
    with pytest.raises(ValidationError) as caught:
        KafkaSettings(bootstrap_servers=servers)
    line = describe_validation_error(caught.value, KafkaSettings)
    assert line.startswith("bootstrap_servers (KAFKA_BOOTSTRAP_SERVERS): ") and why in line


def test_the_log_level_is_one_logging_knows_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLOOP_LOG_LEVEL", "debug")
    assert CommonSettings().log_level == "DEBUG"
    monkeypatch.setenv("STREAMLOOP_LOG_LEVEL", "LOUD")
    with pytest.raises(ValidationError) as caught:
        CommonSettings()
    assert describe_validation_error(caught.value, CommonSettings) == (
        "log_level (STREAMLOOP_LOG_LEVEL): Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'")


def test_a_misspelt_runner_key_is_refused_with_the_keys_there_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLOOP_RUNNER", '{"batchsize": 5}')
    with pytest.raises(ValidationError) as caught:
        ScorerSettings()
    line = describe_validation_error(caught.value, ScorerSettings)
    assert line.startswith("runner.batchsize (STREAMLOOP_RUNNER): unknown key; the keys are batch_size, ")


@pytest.mark.parametrize(("variable", "settings", "field"), [
    ("REDIS_PASSWORD", RedisSettings, "password"), ("KAFKA_SASL_PASSWORD", KafkaSettings, "sasl_password"),
    ("KAFKA_SSL_KEY_PASSWORD", KafkaSettings, "ssl_key_password"),
    ("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", ScorerSettings, "basic_auth_user_info"),
    ("STREAMLOOP_ARTIFACT_SIGNING_KEY", ScorerSettings, "signing_key"),
    ("SCORER_AUTH_TOKEN", ScorerSettings, "auth_token"),
])
def test_a_secret_file_that_cannot_be_read_names_the_variable_and_the_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path, variable: str, settings: type, field: str) -> None:
    missing = tmp_path / "missing-secret"
    monkeypatch.setenv(variable, f"file:{missing}")
    with pytest.raises(ValidationError) as caught:
        settings()
    assert describe_validation_error(caught.value, settings) == (
        f"{field} ({variable}): cannot read the secret file {missing}: No such file or directory")


def test_a_secret_file_is_read_and_stripped(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("REDIS_PASSWORD", f"file:{secret}")
    password = RedisSettings().password
    assert password is not None and password.get_secret_value() == "from-a-file"


def test_a_retired_signing_key_may_be_read_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    retired = tmp_path / "retired-key"
    retired.write_text("a-retired-key-of-16-bytes\n")
    monkeypatch.setenv("STREAMLOOP_ARTIFACT_SIGNING_KEY", "the-current-key-of-16-bytes")
    keys_json = f'{{"2025": "file:{retired}", "2024": "inline-key-16-bytes"}}'
    monkeypatch.setenv("STREAMLOOP_ARTIFACT_PREVIOUS_KEYS", keys_json)
    keys = {key_id: key.get_secret_value() for key_id, key in ArtifactSettings().previous_keys.items()}
    assert keys == {"2025": "a-retired-key-of-16-bytes", "2024": "inline-key-16-bytes"}
    monkeypatch.setenv("STREAMLOOP_ARTIFACT_PREVIOUS_KEYS", f'{{"2025": "file:{tmp_path / "gone"}"}}')
    with pytest.raises(ValidationError) as caught:
        ArtifactSettings()
    assert "cannot read the secret file" in describe_validation_error(caught.value, ArtifactSettings)


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("STREAMLOOP_RUNNER", "{bad", 'runner (STREAMLOOP_RUNNER): not JSON (Expecting property name enclosed in '
                                   'double quotes: line 1 column 2 (char 1)); expected a JSON object'),
    ("STREAMLOOP_ARTIFACT_PREVIOUS_KEYS", "notjson", "previous_keys (STREAMLOOP_ARTIFACT_PREVIOUS_KEYS): not JSON"),
])
def test_a_json_variable_that_is_not_json_is_named(monkeypatch: pytest.MonkeyPatch, variable: str, value: str,
                                                   expected: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        ScorerSettings()
    assert describe_settings_error(caught.value, ScorerSettings).startswith(expected)


def test_a_check_of_several_variables_is_its_own_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCORER_TLS_CERT_FILE", "/etc/hostname")
    with pytest.raises(ValidationError) as caught:
        ScorerSettings()
    assert describe_validation_error(caught.value, ScorerSettings) == (
        "SCORER_TLS_CERT_FILE and SCORER_TLS_KEY_FILE are set together")


def test_only_the_topic_creators_read_the_replication_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mistake in them stops the topics job and the collector, not every service."""
    from services.ground_truth_collector.settings import CollectorSettings

    monkeypatch.setenv("STREAMLOOP_TOPIC_REPLICATION_FACTOR", "1")
    monkeypatch.setenv("STREAMLOOP_TOPIC_MIN_INSYNC_REPLICAS", "2")
    CommonSettings()  # every other service still starts: this raises nothing
    with pytest.raises(ValidationError, match="STREAMLOOP_TOPIC_MIN_INSYNC_REPLICAS \\(2\\) exceeds"):
        CollectorSettings()


@pytest.mark.parametrize(("variable", "settings"), [("FEATURIZER_FEATURE_GROUP", "featurizer"),
                                                    ("SCORER_FEATURE_GROUP", "scorer")])
@pytest.mark.parametrize("group", ["fraud:v2", "", "-features"])
def test_a_feature_group_that_cannot_be_part_of_a_key_is_refused_at_start(monkeypatch, variable, settings, group):
    """It was checked only at the first write, which took it for Redis being down and retried forever."""
    from services.featurizer.settings import FeaturizerSettings

    cls = {"featurizer": FeaturizerSettings, "scorer": ScorerSettings}[settings]
    monkeypatch.setenv(variable, group)
    with pytest.raises(ValidationError) as caught:
        cls()
    assert describe_validation_error(caught.value, cls).startswith(f"feature_group ({variable}): ")
    monkeypatch.setenv(variable, "fraud.v2")
    assert cls().feature_group == "fraud.v2"


def test_sasl_without_a_mechanism_is_refused_naming_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(ValidationError) as caught:
        ScorerSettings()
    assert describe_validation_error(caught.value, ScorerSettings) == (
        "KAFKA_SASL_MECHANISM is required with KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT")


def test_the_scorer_takes_no_longer_entity_id_than_the_featurizer_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ScorerSettings().max_entity_id_length == MAX_KEY_BYTES
    monkeypatch.setenv("SCORER_MAX_ENTITY_ID_LENGTH", str(MAX_KEY_BYTES + 1))
    with pytest.raises(ValidationError) as caught:
        ScorerSettings()
    line = describe_validation_error(caught.value, ScorerSettings)
    assert line.startswith("max_entity_id_length (SCORER_MAX_ENTITY_ID_LENGTH): ") and str(MAX_KEY_BYTES) in line, line


@pytest.mark.parametrize("url", ["http://registry:8081", "https://a:8081,https://b:8081", "mock://tests"])
def test_a_schema_registry_url_the_client_takes_is_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", url)
    assert ScorerSettings().common.serde.url == url
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "")
    assert ScorerSettings().common.serde.url is None, "empty turns the registry off (docker-compose's .env)"


@pytest.mark.parametrize("url", ["not a url", "schema-registry:8081", "ftp://registry", "http://a:1,b:2"])
def test_a_schema_registry_url_that_is_not_http_is_named(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", url)
    with pytest.raises(ValidationError) as caught:
        ScorerSettings()
    line = describe_validation_error(caught.value, ScorerSettings)
    assert line.startswith("url (SCHEMA_REGISTRY_URL): ") and "is not an http(s):// URL" in line, line


def test_a_kafka_client_configuration_librdkafka_refuses_is_one_line_and_exit_2(capsys, tmp_path) -> None:
    from types import SimpleNamespace

    from streamloop.service.entrypoint import EXIT_BAD_CONFIGURATION, start_service

    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1", security_protocol="SSL",
                          ssl_ca_location=str(tmp_path / "missing-ca.pem"))
    settings = SimpleNamespace(common=SimpleNamespace(kafka=kafka, broker_wait_s=1.0, log_level="INFO",
                                                      instance_id=None))
    assert start_service("featurizer", lambda: settings, lambda _settings: object()) == EXIT_BAD_CONFIGURATION
    err = capsys.readouterr().err.strip()
    assert err.startswith("featurizer: invalid Kafka client settings (KAFKA_SECURITY_PROTOCOL") and "\n" not in err
    assert "missing-ca.pem" in err or "ssl.ca.location" in err, err


def test_the_instance_id_names_the_replica_in_its_kafka_client_id(monkeypatch: pytest.MonkeyPatch) -> None:
    assert CommonSettings().kafka.common()["client.id"] == "streamloop"
    monkeypatch.setenv("STREAMLOOP_INSTANCE_ID", "featurizer-1")
    assert CommonSettings().kafka.common()["client.id"] == "streamloop-featurizer-1"
    monkeypatch.setenv("KAFKA_CLIENT_ID", "fraud")
    assert CommonSettings().kafka.common()["client.id"] == "fraud-featurizer-1"


def _service_settings() -> dict[str, type[BaseSettings]]:
    """Each service's settings class: the one in its settings module that embeds CommonSettings."""
    found = {}
    for service, package in SERVICES.items():
        module = importlib.import_module(f"{package}.settings")
        classes = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, BaseSettings)
                   and c.__module__ == module.__name__ and "common" in c.model_fields]
        assert len(classes) == 1, (service, classes)
        found[service] = classes[0]
    return found


@pytest.mark.parametrize(("service", "settings"), list(_service_settings().items()))
def test_every_service_names_the_replica_in_its_client_id_once(
        monkeypatch: pytest.MonkeyPatch, service: str, settings: type[BaseSettings]) -> None:
    # Each service validates its CommonSettings() default again; the id must not be appended twice.
    monkeypatch.setenv("STREAMLOOP_INSTANCE_ID", f"{service}-0")
    assert settings().common.kafka.common()["client.id"] == f"streamloop-{service}-0"
    monkeypatch.setenv("KAFKA_CLIENT_ID", "fraud")
    assert settings().common.kafka.client_id == f"fraud-{service}-0"
    assert settings(common={"instance_id": "r9"}).common.kafka.client_id == "fraud-r9"
    assert settings(common=CommonSettings()).common.kafka.client_id == f"fraud-{service}-0"
    monkeypatch.delenv("STREAMLOOP_INSTANCE_ID")
    assert settings().common.kafka.client_id == "fraud"
