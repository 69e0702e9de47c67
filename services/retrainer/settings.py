"""The retrainer's settings (``RETRAINER_*``); the policies themselves are the pipeline spec's ``retrain`` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamloop.contracts.learning_specs import RetrainSpec
from streamloop.contracts.spec_base import DurationMs
from streamloop.errors import StreamloopError
from streamloop.ml.settings import ArtifactSettings
from streamloop.service.settings import CommonSettings
from streamloop.telemetry import TelemetrySettings

DriftKind = Literal["DATA", "PREDICTION", "CONCEPT"]


class RetrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RETRAINER_", frozen=True, extra="ignore")

    common: CommonSettings = Field(default_factory=CommonSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)

    online_min_labels: int = Field(default=1, ge=1, description="New labels needed before a time-based publish.")
    rebuild_min_severity: Literal["INFO", "WARNING", "CRITICAL"] = "WARNING"
    # Concept drift (the champion's errors changed) is what a rebuild answers. Data and prediction
    # drift are alerts: the inputs moved, which a model often survives; add them here to rebuild on them too.
    rebuild_drift_kinds: list[DriftKind] = Field(
        default_factory=lambda: ["CONCEPT"],
        description="Drift kinds that start a rebuild (DATA, PREDICTION, CONCEPT).")
    rebuild_min_interval: DurationMs = Field(default=10_000, description="Drift rebuilds at most this often.")
    rebuild_min_examples: int = Field(default=100, ge=2, description="Fewer labeled examples: no rebuild.")
    rebuild_in_background: bool = Field(default=True, description="Rebuild on a worker thread, off the consume loop.")
    window_read_timeout_s: float = Field(
        default=60.0, gt=0,
        description="A rebuild window's read that has not reached every partition's end by then fails (tried again).")
    table_timeout_s: float = Field(
        default=60.0, gt=0,
        description="Nothing is consumed until the deployments table is read; a warning every this many seconds "
                    "until it is.")
    remember_events: int = Field(default=100_000, ge=0, description="Recent event ids kept to skip duplicates.")
    resume_max_labels: int = Field(
        default=20_000, ge=0,
        description="After a restart, at most this many of the labels learned since the champion are learned "
                    "again (the most recent); 0 turns the resume off. They are held decoded while read: "
                    "about 5 KB each for the demo's examples.")
    resume_timeout_s: float = Field(default=60.0, gt=0,
                                    description="How long each broker call of reading those labels again may wait.")
    standby_lease: bool = Field(default=True, description="Active/standby through a one-partition lease group "
                                                          "(<group>.lease): replicas beyond the first wait as "
                                                          "standbys instead of learning a share of the labels.")
    lease_poll_s: float = Field(default=0.5, gt=0, description="How often a standby polls the lease group.")


class RetrainerSettingsError(StreamloopError):
    """The settings cannot work with the pipeline spec's ``retrain`` policies."""


def check_against_spec(settings: RetrainerSettings, retrain: RetrainSpec) -> None:
    """Refuse settings that would make the spec's policies do nothing, with nothing said at run time."""
    if retrain.rebuild_window < settings.rebuild_min_examples:
        # A window never holds more examples than rebuild_window: every rebuild would be skipped.
        raise RetrainerSettingsError(
            f"invalid settings: rebuild_min_examples (RETRAINER_REBUILD_MIN_EXAMPLES) is "
            f"{settings.rebuild_min_examples}, more than the spec's retrain.rebuild_window ({retrain.rebuild_window}): "
            "every rebuild would be skipped for too few examples")
