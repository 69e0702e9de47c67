"""Kafka and Redis security settings reach every client, from ``KAFKA_*`` / ``REDIS_*`` alone,
and secrets come from the environment or files and never show in a repr or a log line."""

# ruff: noqa: S105, S106 - made-up secrets, so the tests can prove they never leak

from __future__ import annotations

import ast
import logging
import ssl
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from streamloop.kafka import KafkaSettings
from streamloop.service.settings import RedisSettings, SerdeSettings, redact_url
from streamloop.store import InvalidFeatureStoreConfig, create_redis_client
from tests.unit.security.conftest import Pki

ROOT = Path(__file__).resolve().parents[3]
SASL_PASSWORD = "sasl-pw-5c1d-not-real"
KEY_PASSWORD = "key-pw-88aa-not-real"
REDIS_PASSWORD = "redis-pw-0b7e-not-real"
SECURITY_KEYS = ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password", "ssl.ca.location",
                 "ssl.certificate.location", "ssl.key.location")


@pytest.fixture
def sasl_ssl_env(monkeypatch, tmp_path, pki: Pki) -> dict[str, str]:
    secret = tmp_path / "sasl-password"
    secret.write_text(SASL_PASSWORD + "\n")
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "scorer",
        "KAFKA_SASL_PASSWORD": f"file:{secret}", "KAFKA_SSL_CA_LOCATION": str(pki.ca),
        "KAFKA_SSL_CERTIFICATE_LOCATION": str(pki.client_cert), "KAFKA_SSL_KEY_LOCATION": str(pki.client_key),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_every_librdkafka_config_carries_the_security_settings(sasl_ssl_env) -> None:
    kafka = KafkaSettings()
    expected = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "scorer",
                "sasl.password": SASL_PASSWORD, "ssl.ca.location": sasl_ssl_env["KAFKA_SSL_CA_LOCATION"],
                "ssl.certificate.location": sasl_ssl_env["KAFKA_SSL_CERTIFICATE_LOCATION"],
                "ssl.key.location": sasl_ssl_env["KAFKA_SSL_KEY_LOCATION"]}
    for config in (kafka.common(), kafka.producer(), kafka.consumer("g"), kafka.admin(),
                   kafka.producer(**{"linger.ms": 1}), kafka.consumer("g", **{"auto.offset.reset": "latest"})):
        assert {k: config.get(k) for k in SECURITY_KEYS} == expected


def test_librdkafka_accepts_the_configs(sasl_ssl_env) -> None:
    """Real client objects: librdkafka validates the properties (and loads the CA and key) here."""
    kafka = KafkaSettings()
    producer = Producer(kafka.producer())
    consumer = Consumer(kafka.consumer("security-test"))
    admin = AdminClient(kafka.admin())
    producer.flush(0)
    consumer.close()
    del admin


def test_mtls_without_sasl(monkeypatch, pki: Pki) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KAFKA_SSL_CA_LOCATION", str(pki.ca))
    monkeypatch.setenv("KAFKA_SSL_CERTIFICATE_LOCATION", str(pki.client_cert))
    monkeypatch.setenv("KAFKA_SSL_KEY_LOCATION", str(pki.client_key))
    monkeypatch.setenv("KAFKA_SSL_KEY_PASSWORD", KEY_PASSWORD)
    kafka = KafkaSettings()
    config = kafka.consumer("g")
    assert config["security.protocol"] == "SSL" and config["ssl.key.password"] == KEY_PASSWORD
    assert "sasl.mechanism" not in config
    options = kafka.faust_broker_options()
    context = options["broker_credentials"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode is ssl.CERT_REQUIRED


def test_faust_gets_the_same_sasl_and_tls(sasl_ssl_env) -> None:
    import faust

    options = KafkaSettings().faust_broker_options()
    credentials = options["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password, credentials.mechanism.value) == (
        "scorer", SASL_PASSWORD, "SCRAM-SHA-512")
    assert credentials.ssl_context.verify_mode is ssl.CERT_REQUIRED and credentials.ssl_context.check_hostname


def test_the_collector_passes_faust_the_broker_options() -> None:
    """The one faust app (ground-truth collector) starts from ``faust_broker_options``."""
    source = (ROOT / "services" / "ground_truth_collector" / "faust_options.py").read_text()
    assert "**kafka.faust_broker_options()" in source


_KAFKA_CLIENTS = {"Producer", "Consumer", "AdminClient"}
_SETTINGS_METHODS = {"producer", "consumer", "admin", "common"}


def _from_settings(node: ast.AST, assigned: dict[str, list[ast.AST]], depth: int = 0) -> bool:
    """Whether a client config expression is built by KafkaSettings (directly or through a variable)."""
    if depth > 4:
        return False
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _SETTINGS_METHODS:
        return True
    if isinstance(node, ast.Dict):
        return any(k is None and _from_settings(v, assigned, depth + 1) for k, v in zip(node.keys, node.values,
                                                                                           strict=True))
    name = ast.unparse(node) if isinstance(node, ast.Name | ast.Attribute) else None
    if name is not None:
        return any(_from_settings(v, assigned, depth + 1) for v in assigned.get(name, []))
    return False


def test_every_kafka_client_in_the_code_is_built_from_kafka_settings() -> None:
    """A static check of libs/ and services/: no client is configured by hand, so none misses SASL/TLS."""
    checked, offenders = 0, []
    for path in sorted([*ROOT.glob("libs/streamloop/**/*.py"), *ROOT.glob("services/**/*.py")]):
        if "generated" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        assigned: dict[str, list[ast.AST]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                    assigned.setdefault(ast.unparse(target), []).append(node.value)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _KAFKA_CLIENTS:
                checked += 1
                if not node.args or not _from_settings(node.args[0], assigned):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert checked >= 15
    assert offenders == []


def test_kafka_secrets_never_show(sasl_ssl_env, monkeypatch, caplog) -> None:
    monkeypatch.setenv("KAFKA_SSL_KEY_PASSWORD", KEY_PASSWORD)
    kafka = KafkaSettings()
    for shown in (repr(kafka), str(kafka), kafka.model_dump_json()):
        assert SASL_PASSWORD not in shown and KEY_PASSWORD not in shown
    caplog.set_level(logging.DEBUG)
    producer = Producer(kafka.producer())
    producer.flush(0.5)
    assert SASL_PASSWORD not in caplog.text and KEY_PASSWORD not in caplog.text


# Redis -----------------------------------------------------------------------------------------


def test_redis_acl_and_tls_from_the_environment_reach_the_client(monkeypatch, tmp_path, pki: Pki) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text(REDIS_PASSWORD)
    monkeypatch.setenv("REDIS_URL", "rediss://redis.internal:6380/2")
    monkeypatch.setenv("REDIS_USERNAME", "featurizer")
    monkeypatch.setenv("REDIS_PASSWORD", f"file:{secret}")
    monkeypatch.setenv("REDIS_SSL_CA_CERTS", str(pki.ca))
    monkeypatch.setenv("REDIS_SSL_CERTFILE", str(pki.client_cert))
    monkeypatch.setenv("REDIS_SSL_KEYFILE", str(pki.client_key))
    settings = RedisSettings()
    client = settings.client()
    kwargs = client.get_connection_kwargs()
    assert client.connection_pool.connection_class is redis.SSLConnection
    assert {k: kwargs[k] for k in ("username", "password", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile",
                                   "ssl_cert_reqs", "ssl_check_hostname", "host", "port", "db")} == {
        "username": "featurizer", "password": REDIS_PASSWORD, "ssl_ca_certs": str(pki.ca),
        "ssl_certfile": str(pki.client_cert), "ssl_keyfile": str(pki.client_key), "ssl_cert_reqs": "required",
        "ssl_check_hostname": True, "host": "redis.internal", "port": 6380, "db": 2}
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert REDIS_PASSWORD not in shown


def test_the_services_make_their_redis_client_through_the_settings() -> None:
    for service in ("featurizer", "online_scorer"):
        source = (ROOT / "services" / service / "app.py").read_text()
        assert "redis.client()" in source and "create_redis_client(" not in source, service


def test_a_password_in_the_url_is_redacted_in_reprs() -> None:
    settings = RedisSettings(url="rediss://app:hunter2-url-secret@cache:6380/0")
    assert "hunter2-url-secret" not in repr(settings) and "app:***@cache:6380" in repr(settings)
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    registry = SerdeSettings(url="https://user:pw-in-url@registry:8081", basic_auth_user_info="u:basic-secret")
    assert "pw-in-url" not in repr(registry) and "basic-secret" not in repr(registry)


@pytest.mark.parametrize("kwargs", [{"ssl_ca_certs": "/ca.pem"}, {"ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem"}])
def test_tls_files_need_a_rediss_url(kwargs) -> None:
    with pytest.raises(InvalidFeatureStoreConfig, match="rediss://"):
        create_redis_client("redis://127.0.0.1:6379/0", **kwargs)


def test_a_client_certificate_needs_its_key() -> None:
    with pytest.raises(InvalidFeatureStoreConfig, match="together"):
        create_redis_client("rediss://127.0.0.1:6379/0", ssl_certfile="/c.pem")


@pytest.mark.integration
def test_redis_acl_user_is_enforced_on_a_real_server(redis_url: str, unique_name: str) -> None:
    """An ACL user limited to its key prefix: the right password works, a wrong one is access denied."""
    from streamloop.store import FeatureStoreAccessDenied, FeatureWrite, RedisFeatureStore

    admin = redis.Redis.from_url(redis_url)
    user, prefix = f"acl-{unique_name}"[:60], f"sec{abs(hash(unique_name)) % 10**8}"
    admin.execute_command("ACL", "SETUSER", user, "on", f">{REDIS_PASSWORD}", f"~{prefix}:*", "+@all")
    try:
        good = RedisSettings(url=redis_url, username=user, password=REDIS_PASSWORD, key_prefix=prefix)
        store = RedisFeatureStore(good.client(), "demo", ttl_ms=60_000, key_prefix=prefix)
        store.write_many("features", [FeatureWrite("e1", 1_000, 1, {"x": 1.0}, {})], now_ms=1_000)
        assert store.read_many("features", ["e1"], now_ms=1_000)[0].numeric == {"x": 1.0}
        outside = RedisFeatureStore(good.client(), "demo", ttl_ms=60_000, key_prefix="elsewhere")
        with pytest.raises(FeatureStoreAccessDenied):
            outside.read_many("features", ["e1"], now_ms=1_000)
        bad = RedisSettings(url=redis_url, username=user, password="wrong-password")
        with pytest.raises(FeatureStoreAccessDenied):
            RedisFeatureStore(bad.client(), "demo", ttl_ms=60_000, key_prefix=prefix).read_many("features", ["e1"])
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()
