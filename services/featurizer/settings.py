"""The featurizer's settings: ``FEATURIZER_*`` and the shared ``STREAMLOOP_*``, ``KAFKA_*``, ``REDIS_*``, ``OTEL_*``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamloop.service import CommonSettings
from streamloop.service.settings import RedisSettings
from streamloop.store.redis_store import NAME_PATTERN
from streamloop.telemetry import TelemetrySettings


class FeaturizerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEATURIZER_", frozen=True, extra="ignore")

    common: CommonSettings = Field(default_factory=CommonSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)

    feature_group: str = Field(default="features", pattern=NAME_PATTERN,
                               description="Feature store group the rows are written to (letters, digits, '_', "
                                           "'.', '-'; part of every key, so no ':').")
    disorder_ms: int = Field(
        default=3_600_000, ge=0,
        description="How far an event may trail the newest event of its partition (event time), and how far "
                    "Kafka timestamps may stray from event times; sizes forgetting and the restore replay.")
    restore_timeout_s: float = Field(
        default=600.0, gt=0,
        description="Longest a state rebuild may go without progress (no partition read further) before the "
                    "service exits (and is restarted); also each broker request's timeout during a rebuild. "
                    "Not a bound on the rebuild as a whole, which grows with the input rate and the partitions "
                    "assigned at once.")
    sweep_interval_s: float = Field(default=60.0, gt=0,
                                    description="How often forgotten entities are dropped from memory.")
