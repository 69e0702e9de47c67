"""What a stage runner is given: its knobs (``STREAMLOOP_RUNNER``) and the topics of its stage."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from streamloop.serde import Serde


class RunnerSettings(BaseModel):
    # STREAMLOOP_RUNNER is JSON typed by hand: a misspelt knob must fail, not leave the default.
    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_size: int = Field(default=500, ge=1)
    poll_timeout_s: float = Field(default=0.05, gt=0)
    retry_backoff_s: float = Field(default=0.5, gt=0)
    retry_backoff_max_s: float = Field(default=30.0, gt=0)
    lag_report_interval_s: float = Field(default=5.0, gt=0)
    tick_interval_s: float = Field(default=0.5, gt=0)
    # Outputs acknowledged in this many seconds before the broker went away are sent again after a
    # fatal producer error: that error (OUT_OF_ORDER_SEQUENCE_NUMBER, say) means the broker lost
    # sequence state, and noida-db then also lost records it had acknowledged (docs/reliability.md).
    # The broker went away at the producer's first connection error since its last acknowledgement
    # (or at the fatal error, with none before it): not at the error, which a stage idle since a
    # restart meets late, nor at the last acknowledgement, which may be a day old. 0 turns it off.
    resend_window_s: float = Field(default=5.0, ge=0)
    resend_max_records: int = Field(default=50_000, ge=1)


@dataclass
class StageTopics:
    """What a stage reads (with the serde of each topic) and what it may write."""

    inputs: dict[str, Serde]
    outputs: dict[str, Serde]
    dead_letters: dict[str, str] = field(default_factory=dict)
