"""The online scorer's settings: ``SCORER_*`` plus the shared ``STREAMLOOP_*``, ``KAFKA_*``, ``REDIS_*``, ``OTEL_*``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.online_scorer.grpc_server import ServerTLS
from streamloop.contracts.feature_specs import MAX_KEY_BYTES
from streamloop.kafka.configuration import _read_secret_file
from streamloop.ml.settings import ArtifactSettings
from streamloop.service import CommonSettings
from streamloop.service.settings import RedisSettings
from streamloop.store.redis_store import NAME_PATTERN
from streamloop.telemetry import TelemetrySettings

DEFAULT_TLS_HEALTH_PORT = 50052


class ScorerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCORER_", frozen=True, extra="ignore")

    common: CommonSettings = Field(default_factory=CommonSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)

    grpc_host: str = Field(default="127.0.0.1", description="Interface the gRPC server binds (0.0.0.0 in a pod).")
    grpc_port: int = Field(default=50051, ge=0, le=65535, description="gRPC port; 0 lets the OS pick one.")
    grpc_workers: int = Field(default=8, ge=1, description="Threads serving gRPC calls (more contend for the GIL).")
    grpc_max_concurrent_rpcs: int = Field(default=256, ge=1,
                                          description="Calls in progress beyond this get RESOURCE_EXHAUSTED.")
    grpc_grace_s: float = Field(default=5.0, ge=0, description="How long a graceful stop waits for in-flight calls.")
    max_request_features: int = Field(default=256, ge=0, description="Request-time features allowed per entity.")
    max_batch_entities: int = Field(default=1000, ge=1, description="Entities allowed in one ScoreBatch call.")
    max_entity_id_length: int = Field(
        default=MAX_KEY_BYTES, ge=1, le=MAX_KEY_BYTES,
        description="Longest entity id accepted, in UTF-8 bytes; the featurizer stores no longer key.")
    feature_group: str = Field(default="features", pattern=NAME_PATTERN,
                               description="Feature store group the featurizer writes.")
    deployments_catch_up_s: float = Field(
        default=30.0, gt=0, description="How long start-up waits to read the deployments topic to its end before it "
                                        "applies (and serves the champion of) what it has read so far.")
    auth_token: SecretStr | None = Field(
        default=None, description="Bearer token every gRPC call must carry (health excepted); 'file:/path' reads it.")
    reflection_open: bool = Field(default=False, description="Serve gRPC reflection without the token.")
    tls_cert_file: Path | None = Field(default=None, description="PEM certificate chain: serve gRPC over TLS.")
    tls_key_file: Path | None = Field(default=None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(default=None,
                                            description="PEM CA of client certificates: require mutual TLS.")
    health_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="Plaintext port serving only grpc.health.v1, on grpc_host; unset: 50052 with TLS, else none. "
                    "Not 0: probes need a fixed port.")

    @field_validator("auth_token", mode="before")
    @classmethod
    def _secret_from_file(cls, value: Any) -> Any:
        return _read_secret_file(value)

    @field_validator("health_port")
    @classmethod
    def _health_port_fixed(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("must be a fixed port, not 0: the probes (kubelet's, deploy/healthcheck.py) take it "
                             "from the environment")
        return value

    @model_validator(mode="after")
    def _tls_files_together(self) -> ScorerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("SCORER_TLS_CERT_FILE and SCORER_TLS_KEY_FILE are set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("SCORER_TLS_CLIENT_CA_FILE (mutual TLS) needs SCORER_TLS_CERT_FILE and _KEY_FILE")
        return self

    @model_validator(mode="after")
    def _health_port_apart(self) -> ScorerSettings:
        # gRPC binds with SO_REUSEPORT: both servers would bind the one port without an error, and
        # the kernel would then split connections between scoring and the health-only server at random.
        if self.plaintext_health_port() == self.grpc_port:
            raise ValueError(f"SCORER_HEALTH_PORT ({self.grpc_port}) must differ from SCORER_GRPC_PORT: "
                             "the health-only server has a port of its own")
        return self

    def plaintext_health_port(self) -> int | None:
        """The port of the plaintext health-only server, or None when health is on the gRPC port.

        Kubelet's gRPC probe and deploy/healthcheck.py speak no TLS, so a TLS scorer without this
        port could never be seen ready.
        """
        if self.health_port is not None:
            return self.health_port
        return DEFAULT_TLS_HEALTH_PORT if self.tls_cert_file is not None else None

    def server_tls(self) -> ServerTLS | None:
        """The TLS material read from its files, or None for plaintext."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return ServerTLS(self.tls_cert_file.read_bytes(), self.tls_key_file.read_bytes(),
                         self.tls_client_ca_file.read_bytes() if self.tls_client_ca_file else None)


class ScorerClientSettings(BaseSettings):
    """What ``streamloop score`` (services/online_scorer/client.py) uses to reach a secured scorer."""

    model_config = SettingsConfigDict(env_prefix="SCORER_", frozen=True, extra="ignore")

    auth_token: SecretStr | None = Field(default=None, description="Bearer token; 'file:/path' reads it.")
    tls_ca_file: Path | None = Field(default=None, description="PEM CA that signed the scorer's certificate: use TLS.")
    tls_client_cert_file: Path | None = Field(default=None, description="PEM client certificate for mutual TLS.")
    tls_client_key_file: Path | None = Field(default=None, description="PEM key of tls_client_cert_file.")
    tls_server_name: str | None = Field(default=None, description="Name to verify in the server's certificate.")

    @field_validator("auth_token", mode="before")
    @classmethod
    def _secret_from_file(cls, value: Any) -> Any:
        return _read_secret_file(value)
