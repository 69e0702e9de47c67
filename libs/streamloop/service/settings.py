"""Settings every service has; each service's own settings class embeds these.

Environment variables: ``STREAMLOOP_PIPELINE`` (path of the pipeline spec), ``KAFKA_*``
(streamloop.kafka.configuration), ``SCHEMA_REGISTRY_*``, ``REDIS_*``, ``OTEL_*``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamloop.kafka.configuration import KafkaSettings, _read_secret_file
from streamloop.kafka.runner_settings import RunnerSettings

if TYPE_CHECKING:
    import redis

    from streamloop.contracts import TopicSpec
    from streamloop.contracts.schemas import SchemaRepository
    from streamloop.serde import Serde

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def redact_url(url: str | None) -> str | None:
    """The URL with any password replaced by ``***``, for logs and reprs."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***" if parts.username else ":***"
    host = parts.hostname or ""
    netloc = f"{user}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class _RedactedUrl:
    """``url`` may carry a password (``rediss://user:pw@host``): reprs show it redacted."""

    def __repr_args__(self):  # pydantic's repr hook
        for name, value in super().__repr_args__():  # type: ignore[misc]
            yield name, redact_url(value) if name == "url" else value


class SerdeSettings(_RedactedUrl, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCHEMA_REGISTRY_", frozen=True, extra="ignore")

    url: str | None = Field(default=None, description="Set to use the Confluent wire format through this registry.")
    auto_register: bool = False
    basic_auth_user_info: SecretStr | None = None

    @field_validator("basic_auth_user_info", mode="before")
    @classmethod
    def _secret_from_file(cls, value: Any) -> Any:
        return _read_secret_file(value)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        # The registry client's own message ("Invalid url not a url") names no variable. It takes a
        # comma-separated list, and mock:// is its in-process registry (tests, the CLI's own).
        if value is None or not value.strip():
            return None  # empty: no registry (compose's way to turn it off)
        urls = [url.strip() for url in value.split(",")]
        for url in urls:
            if not re.fullmatch(r"(https?|mock)://[^\s/,]+(/\S*)?", url):
                raise ValueError(f"{redact_url(url)!r} is not an http(s):// URL, e.g. http://schema-registry:8081")
        return ",".join(urls)

    def registry_config(self) -> dict[str, Any]:
        if self.basic_auth_user_info is None:
            return {}
        return {"basic.auth.user.info": self.basic_auth_user_info.get_secret_value()}

    def serde(self, topic: TopicSpec, repository: SchemaRepository) -> Serde:
        """The topic's serde: Confluent's wire format through the registry when one is set, else single-object.

        Every reader and writer of a deployment builds it here (services, CLI, dashboard), so they
        all agree on the format.
        """
        from streamloop.serde import make_serde

        return make_serde(topic.schema, repository, topic.name, registry_url=self.url,
                          auto_register=self.auto_register, registry_config=self.registry_config())


class RedisSettings(_RedactedUrl, BaseSettings):
    """``REDIS_URL`` (``rediss://`` for TLS), ACL ``REDIS_USERNAME``/``REDIS_PASSWORD`` and TLS files."""

    model_config = SettingsConfigDict(env_prefix="REDIS_", frozen=True, extra="ignore")

    url: str = "redis://127.0.0.1:6379/0"
    username: str | None = Field(default=None, description="ACL user (Redis 6+).")
    password: SecretStr | None = Field(default=None, description="ACL password; 'file:/path' reads it.")
    ssl_ca_certs: str | None = Field(default=None, description="PEM CA that signed the server's certificate.")
    ssl_certfile: str | None = Field(default=None, description="PEM client certificate (mutual TLS).")
    ssl_keyfile: str | None = Field(default=None, description="PEM key of ssl_certfile.")
    ssl_check_hostname: bool = True
    key_prefix: str = "streamloop"
    socket_timeout_s: float = Field(default=5.0, gt=0, description=(
        "How long one Redis call waits for a connection or an answer; a lost connection is tried 3 more "
        "times, so a stalled server holds a call up to four times this."))

    @field_validator("password", mode="before")
    @classmethod
    def _secret_from_file(cls, value: Any) -> Any:
        return _read_secret_file(value)

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of ``create_redis_client`` besides the URL; holds the password in clear."""
        return {
            "username": self.username,
            "password": self.password.get_secret_value() if self.password else None,
            "ssl_ca_certs": self.ssl_ca_certs, "ssl_certfile": self.ssl_certfile, "ssl_keyfile": self.ssl_keyfile,
            "ssl_check_hostname": self.ssl_check_hostname, "socket_timeout_s": self.socket_timeout_s,
        }

    def client(self) -> redis.Redis:
        """The one way services make their Redis client: credentials and TLS always applied."""
        from streamloop.store import create_redis_client

        return create_redis_client(self.url, **self.client_options())


class CommonSettings(BaseSettings):
    """The part of every service's settings that is the same everywhere."""

    model_config = SettingsConfigDict(env_prefix="STREAMLOOP_", frozen=True, extra="ignore")

    pipeline: Path = Field(default=Path("pipeline.yaml"), description="Path of the pipeline spec.")
    topic_prefix: str = Field(default="", description="Prepended to every topic name (namespaces a deployment).")
    log_level: LogLevel = "INFO"
    instance_id: str | None = Field(default=None, description="Distinguishes replicas in logs and client ids.")
    broker_wait_s: float = Field(default=60.0, gt=0,
                                 description="How long start-up waits for a Kafka broker to answer before exiting 1.")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    serde: SerdeSettings = Field(default_factory=SerdeSettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    _instance_applied: bool = PrivateAttr(default=False)

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _instance_in_client_id(self) -> CommonSettings:
        # Every replica of every service otherwise connects as "streamloop": broker logs, quotas
        # and client metrics could not tell them apart.
        # Once per object: pydantic runs this again on an instance it already built (each service's
        # settings validate their CommonSettings() default, and a nested dict goes through __init__
        # inside the outer validation), which would append the id a second time.
        if self.instance_id and not self._instance_applied:
            kafka = self.kafka.model_copy(update={"client_id": f"{self.kafka.client_id}-{self.instance_id}"})
            object.__setattr__(self, "kafka", kafka)  # frozen: set once, while validating
            self._instance_applied = True
        return self
