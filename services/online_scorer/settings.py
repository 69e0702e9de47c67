"""The online scorer's settings: ``SCORER_*`` plus the shared ``STREAMLOOP_*``, ``KAFKA_*``, ``REDIS_*``, ``OTEL_*``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamloop.ml.settings import ArtifactSettings
from streamloop.service import CommonSettings
from streamloop.service.settings import RedisSettings
from streamloop.telemetry import TelemetrySettings


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
    max_entity_id_length: int = Field(default=1024, ge=1)
    feature_group: str = Field(default="features", description="Feature store group the featurizer writes.")
    deployments_catch_up_s: float = Field(default=30.0, gt=0,
                                          description="How long start-up waits to read the deployments topic.")
