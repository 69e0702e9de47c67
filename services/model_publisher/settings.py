"""The model publisher's settings (``PUBLISHER_*``); the policies themselves are the pipeline spec's
``promotion`` and ``staleness`` sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamloop.contracts.spec_base import DurationMs
from streamloop.ml.settings import ArtifactSettings
from streamloop.service.settings import CommonSettings
from streamloop.telemetry import TelemetrySettings


class PublisherSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PUBLISHER_", frozen=True, extra="ignore")

    common: CommonSettings = Field(default_factory=CommonSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)

    bootstrap: bool = Field(default=True, description="Publish an untrained champion when the registry has none.")
    paired_test: Literal["t", "wilcoxon"] = Field(default="t", description="Paired test on per-event losses.")
    max_shadows: int = Field(default=3, ge=1, description="Shadow challengers scored at once; to make room, the "
                                                          "one furthest from its look retires.")
    rollback_watch_samples: int = Field(default=5_000, ge=1,
                                        description="Post-promotion events after which the watch ends and the "
                                                    "predecessor retires; a champion never shown significantly "
                                                    "worse is kept.")
    ledger_events: int = Field(default=100_000, ge=100, description="Recent labeled events kept for comparisons.")
    staleness_interval: DurationMs = Field(default=5_000, description="How often staleness is checked.")
    min_metric_samples: int = Field(default=100, ge=1, description="Smallest live metric window for metric decay.")
    score_held_out: bool = Field(default=True, description=(
        "Score a deployed version on labeled examples of events from before its deployment that it never "
        "learned, so its evidence does not wait for its first live labels."))
    standby_lease: bool = Field(default=True, description="Active/standby through a one-partition lease group "
                                                          "(<group>.lease): replicas beyond the first wait as "
                                                          "standbys instead of judging a share of the labels.")
    lease_poll_s: float = Field(default=0.5, gt=0, description="How often a standby polls the lease group.")
    table_timeout_s: float = Field(default=60.0, gt=0, description="While the deployments table is not read yet "
                                                                   "(nothing is consumed before), an error is logged "
                                                                   "every this many seconds.")
