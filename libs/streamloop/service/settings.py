"""Settings every service has; each service's own settings class embeds these.

Environment variables: ``STREAMLOOP_PIPELINE`` (path of the pipeline spec), ``KAFKA_*``
(streamloop.kafka.configuration), ``SCHEMA_REGISTRY_*``, ``REDIS_*``, ``OTEL_*``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamloop.kafka.configuration import KafkaSettings, _read_secret_file
from streamloop.kafka.runner import RunnerSettings


class SerdeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCHEMA_REGISTRY_", frozen=True, extra="ignore")

    url: str | None = Field(default=None, description="Set to use the Confluent wire format through this registry.")
    auto_register: bool = False
    basic_auth_user_info: SecretStr | None = None

    @field_validator("basic_auth_user_info", mode="before")
    @classmethod
    def _secret_from_file(cls, value: Any) -> Any:
        return _read_secret_file(value)

    def registry_config(self) -> dict[str, Any]:
        if self.basic_auth_user_info is None:
            return {}
        return {"basic.auth.user.info": self.basic_auth_user_info.get_secret_value()}


class RedisSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REDIS_", frozen=True, extra="ignore")

    url: str = "redis://127.0.0.1:6379/0"
    username: str | None = None
    password: SecretStr | None = None
    ssl_ca_certs: str | None = None
    key_prefix: str = "streamloop"

    @field_validator("password", mode="before")
    @classmethod
    def _secret_from_file(cls, value: Any) -> Any:
        return _read_secret_file(value)


class CommonSettings(BaseSettings):
    """The part of every service's settings that is the same everywhere."""

    model_config = SettingsConfigDict(env_prefix="STREAMLOOP_", frozen=True, extra="ignore")

    pipeline: Path = Field(default=Path("pipeline.yaml"), description="Path of the pipeline spec.")
    topic_prefix: str = Field(default="", description="Prepended to every topic name (namespaces a deployment).")
    log_level: str = "INFO"
    instance_id: str | None = Field(default=None, description="Distinguishes replicas in logs and client ids.")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    serde: SerdeSettings = Field(default_factory=SerdeSettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
