"""The drift detector's settings (``DRIFT_*``); the thresholds themselves live in the pipeline spec.

``spec.drift`` says *what* counts as drift (reference and window sizes, p-value, correction,
PSI thresholds, detectors, cooldown); these settings say *how* the statistics are computed and
how the service runs. Every field is in the README's table.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamloop.service.settings import CommonSettings
from streamloop.telemetry.settings import TelemetrySettings

SERVICE = "drift-detector"


class DriftSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFT_", frozen=True, extra="ignore")

    common: CommonSettings = Field(default_factory=CommonSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)

    # -- statistics -------------------------------------------------------------------------
    psi_bins: int = Field(default=10, ge=2, le=100, description="Quantile bins of the reference for PSI.")
    psi_epsilon: float = Field(default=1e-4, gt=0, lt=0.01, description="Share given to an empty PSI bin.")
    discrete_max_values: int = Field(
        default=2, ge=0, description="Numeric features with at most this many distinct reference values use chi2."
    )
    min_samples: int = Field(default=50, ge=10, description="Fewer values of a feature in a window: not tested.")
    min_expected: float = Field(default=5.0, gt=0, description="Chi2 columns are pooled until expected >= this.")
    adwin_delta: float = Field(default=0.002, gt=0, lt=1)
    page_hinkley_threshold: float = Field(default=100.0, gt=0, description="river's 50: ~3 false alarms per 100k.")
    page_hinkley_delta: float = Field(default=0.005, ge=0)
    ddm_drift_threshold: float = Field(default=3.0, gt=0)
    ddm_warm_start: int = Field(default=1000, ge=1, description="river default 30: false alarms right after a reset.")
    min_severity: Literal["INFO", "WARNING", "CRITICAL"] = Field(
        default="INFO", description="Detections below this severity are counted but not emitted."
    )

    # -- running ----------------------------------------------------------------------------
    replay_on_start: bool = Field(default=True, description="Rebuild windows from Kafka on partition assignment.")
    concept_replay: int = Field(default=2000, ge=0, description="Labeled examples replayed to warm concept detectors.")
    events_replay: int = Field(default=1000, ge=0, description="Drift events read back to restore cooldowns.")
    history_timeout_s: float = Field(default=30.0, gt=0)
    standby_lease: bool = Field(default=True, description="Active/standby through a one-partition lease group.")
    lease_poll_s: float = Field(default=0.5, gt=0)
