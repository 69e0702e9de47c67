"""Settings of the ground-truth collector (``COLLECTOR_*``); docs/ground-truth-collector.md has the table."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamloop.contracts.spec_base import DurationMs, PositiveDurationMs
from streamloop.kafka.configuration import NewTopicSettings
from streamloop.kafka.runner_settings import RunnerSettings
from streamloop.service.settings import CommonSettings, RedisSettings
from streamloop.telemetry.settings import TelemetrySettings

SERVICE = "ground-truth-collector"
_STALL_AFTER_DEFAULT_MS = 30_000
_TAKE_BACK_AFTER_DEFAULT_MS = 120_000


class CollectorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COLLECTOR_", frozen=True, extra="ignore")

    common: CommonSettings = Field(default_factory=CommonSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    # STREAMLOOP_TOPIC_REPLICATION_FACTOR and _MIN_INSYNC_REPLICAS: its internal topics and changelogs.
    new_topics: NewTopicSettings = Field(default_factory=NewTopicSettings)

    runtime: Literal["runner", "faust"] = Field(
        default="runner", description="runner: three confluent-kafka stage runners, join state in Redis; "
                                      "faust: the faust-streaming app, join state in a changelog-backed table.")

    # The join (the horizon itself is the spec's labels.join_horizon).
    join_grace: DurationMs = Field(
        default=30_000, description="Kept beyond the horizon for records that arrive a little out of order.")
    remember_expired: DurationMs | None = Field(
        default=None, description="How long an expired entry is remembered to classify a late label "
                                  "(AFTER_HORIZON, DUPLICATE); unset: the join horizon; 0: not at all.")
    max_entries_per_partition: int = Field(default=200_000, ge=1)
    idle_after: PositiveDurationMs = Field(
        default=30_000, description="Wall time without records after which a source stops holding the clock back.")
    future_tolerance: DurationMs = Field(
        default=3_600_000, description="A time further than this beyond its record's Kafka timestamp is left out "
                                       "of the clock (it neither moves it nor keeps its source active).")
    tick_interval: PositiveDurationMs = 1_000
    stall_after: PositiveDurationMs | None = Field(
        default=None, description="A partition its agent processed nothing of for this long although the consumer "
                                  "sees records beyond: read them again (faust stall); at most idle_after. "
                                  "Unset: 30 s, or idle_after if that is less (stall_after_ms).")
    keyed_partitions: int | None = Field(
        default=None, ge=1, description="Partitions of the keyed stream; unset: as many as the labels topic.")
    take_back_after: PositiveDurationMs | None = Field(
        default=None, description="runner: a keyed partition whose join-state write another take-over refused, its "
                                  "hash then written by no replica for this long, is taken back from its held commit "
                                  "(given_up.py); at least twice the longer of KAFKA_SESSION_TIMEOUT_MS and "
                                  "KAFKA_MAX_POLL_INTERVAL_MS. Unset: 2 min, or that if longer (take_back_after_ms).")

    # Prequential metrics.
    metrics_window: PositiveDurationMs = 10_000
    metrics_lateness: DurationMs = 5_000

    # Batching and faust.
    batch_size: int = Field(default=500, ge=1)
    batch_wait: PositiveDurationMs = 50
    commit_interval: PositiveDurationMs = 1_000
    data_dir: Path | None = Field(
        default=None, description="faust's data directory; unset: a temporary one, removed at exit (the memory "
                                  "store keeps nothing).")
    metrics_report_interval: PositiveDurationMs = 5_000
    stop_timeout: PositiveDurationMs = Field(
        default=30_000, description="How long a stop waits for the stages to finish their batch (one may wait for "
                                    "Redis or the broker) before the process exits without them; their batch is "
                                    "not committed and is read again.")

    @model_validator(mode="after")
    def _stall_within_idle(self) -> CollectorSettings:
        # A faust agent stuck longer than idle_after stops holding the metrics stage's clock, which
        # then closes windows the stuck partition still has examples for.
        if self.stall_after is not None and self.stall_after > self.idle_after:
            raise ValueError(f"COLLECTOR_STALL_AFTER ({self.stall_after} ms) must be at most COLLECTOR_IDLE_AFTER "
                             f"({self.idle_after} ms): lower COLLECTOR_STALL_AFTER or raise COLLECTOR_IDLE_AFTER")
        return self

    @model_validator(mode="after")
    def _take_back_after_the_group_would_have_moved_it(self) -> CollectorSettings:
        # Sooner, a replica could take a partition back from the group's owner of it before its
        # consumer learned it had lost it (given_up.py).
        kafka = self.common.kafka
        floor = self._take_back_floor_ms
        if self.take_back_after is not None and self.take_back_after < floor:
            raise ValueError(f"COLLECTOR_TAKE_BACK_AFTER ({self.take_back_after} ms) must be at least twice the longer "
                             f"of KAFKA_SESSION_TIMEOUT_MS ({kafka.session_timeout_ms} ms) and "
                             f"KAFKA_MAX_POLL_INTERVAL_MS ({kafka.max_poll_interval_ms} ms): {floor} ms")
        return self

    @property
    def _take_back_floor_ms(self) -> int:
        kafka = self.common.kafka
        return 2 * max(kafka.session_timeout_ms, kafka.max_poll_interval_ms)

    @property
    def take_back_after_ms(self) -> int:
        """COLLECTOR_TAKE_BACK_AFTER, or when unset 2 min, raised to twice the longer of the consumer's
        session timeout and poll interval if that is more."""
        if self.take_back_after is not None:
            return self.take_back_after
        return max(_TAKE_BACK_AFTER_DEFAULT_MS, self._take_back_floor_ms)

    @property
    def stall_after_ms(self) -> int:
        """COLLECTOR_STALL_AFTER, or when unset 30 s, lowered to COLLECTOR_IDLE_AFTER if that is less."""
        return self.stall_after if self.stall_after is not None else min(_STALL_AFTER_DEFAULT_MS, self.idle_after)

    def stage_runner(self) -> RunnerSettings:
        """``STREAMLOOP_RUNNER``'s knobs for the runner runtime's three stages.

        Three have collector settings of their own, which the faust runtime reads too: batch_size
        (COLLECTOR_BATCH_SIZE), poll_timeout_s (COLLECTOR_BATCH_WAIT) and tick_interval_s
        (COLLECTOR_TICK_INTERVAL). A collector setting that is set wins; one left at its default
        yields to the same knob set in STREAMLOOP_RUNNER.
        """
        runner = self.common.runner
        own = {"batch_size": ("batch_size", self.batch_size),
               "poll_timeout_s": ("batch_wait", self.batch_wait / 1000),
               "tick_interval_s": ("tick_interval", self.tick_interval / 1000)}
        return runner.model_copy(update={
            knob: value for knob, (field, value) in own.items()
            if field in self.model_fields_set or knob not in runner.model_fields_set})
