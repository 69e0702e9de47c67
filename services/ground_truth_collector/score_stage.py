"""The collector's third stage (stage-runner runtime): joined examples into the prequential metrics.

:class:`ScoreStage` reads ``<group>-joined`` into the prequential metrics (scoring.py) and emits a
MetricSnapshot per model version, window and segment when a window closes; it commits no further
than the first record of a window not yet reported, so a restart rebuilds open windows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from services.ground_truth_collector.entries import SourceRef
from services.ground_truth_collector.redis_state import RedisValue
from services.ground_truth_collector.routing import (
    HEADER_DECIDED_AT,
    HEADER_JOIN_CLOCK,
    HEADER_ORIGIN,
    RESUME,
    WATERMARK,
    carries_example,
    control_of,
)
from services.ground_truth_collector.scoring import MetricsStage, ScoringCounters
from streamloop.kafka import dead_letters
from streamloop.kafka.records import (
    ConsumedRecord,
    OutgoingRecord,
    ProcessResult,
    Rejection,
    TopicPartitionRef,
    header,
)
from streamloop.ml.evaluation import EvaluationConfig, WindowReport
from streamloop.serde import Serde, SerdeError

log = logging.getLogger(__name__)


class ScoreStage:
    def __init__(self, config: EvaluationConfig, closed_until: RedisValue, example_serde: Serde, *,
                 pipeline: str, metrics_topic: str, keyed_topic: str, keyed_partitions: int, idle_after_ms: int,
                 future_tolerance_ms: int, on_reports: Callable[[list[WindowReport]], None] | None = None,
                 forget_reports: Callable[[], None] | None = None) -> None:
        self.config = config
        self.closed_until = closed_until
        self.example_serde = example_serde
        self.pipeline, self.metrics_topic = pipeline, metrics_topic
        self.sources = tuple(f"{keyed_topic}:{p}" for p in range(keyed_partitions))
        self.idle_after_ms, self.future_tolerance_ms = idle_after_ms, future_tolerance_ms
        self.on_reports = on_reports
        self.forget_reports = forget_reports  # what on_reports exported is not this replica's once revoked
        self.counters = ScoringCounters()  # of every MetricsStage this stage builds
        self.scoring: MetricsStage | None = None
        self.held: list[tuple[str, int, int, int | None]] = []  # topic, partition, offset, window start
        self._closed_to_save: int | None = None

    def on_assigned(self, partitions: Sequence[TopicPartitionRef]) -> None:
        self.scoring = None  # rebuilt from Redis and the replay from the committed offset
        self.held.clear()

    def on_revoked(self, partitions: Sequence[TopicPartitionRef]) -> None:
        self.scoring = None
        self.held.clear()
        if self.forget_reports is not None:
            self.forget_reports()

    def _stage(self) -> MetricsStage:
        if self.scoring is None:
            stored = self.closed_until.get()
            self.scoring = MetricsStage(self.config, self.idle_after_ms, stored, sources=self.sources,
                                        future_tolerance_ms=self.future_tolerance_ms, counters=self.counters)
        return self.scoring

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        scoring = self._stage()
        result = ProcessResult()
        # Decoded before anything changes: this stage has no discard(), and an attempt that a
        # Schema Registry outage (DependencyUnavailable, let through) stops part-way is made again
        # whole (it would count twice).
        decoded: list[tuple[ConsumedRecord, dict | None]] = []
        for record in batch:
            try:
                decoded.append((record, self._example(record)))
            except SerdeError as exc:
                # Raised out of process(), it failed the whole batch: the runner logged a traceback
                # and dead-lettered the record as a processing failure, after the batch's others.
                result.rejections.append(Rejection(record, exc, dead_letters.STAGE_DECODE))
        for record, example in decoded:
            try:
                window = self._apply(scoring, record, example)
            except Exception as exc:  # noqa: BLE001 - the runner's isolation would count the batch's others twice
                # Without discard() the runner would process the batch again record by record, from
                # the state the records before this one already changed: the poison record is
                # dead-lettered here instead, and the others are counted once.
                log.exception("metrics stage failed on %s[%d]@%d", record.topic, record.partition, record.offset)
                result.rejections.append(Rejection(record, exc, dead_letters.STAGE_PROCESS))
                continue
            self.held.append((record.topic, record.partition, record.offset, window))
        result.extend(self._close(scoring))
        return result

    def _example(self, record: ConsumedRecord) -> dict | None:
        """The labeled example a joined record carries; None for a control record."""
        return self.example_serde.decode(record.value["bytes"]) if carries_example(record.headers) else None

    @staticmethod
    def _apply(scoring: MetricsStage, record: ConsumedRecord, example: dict | None) -> int | None:
        """One joined record into the metrics; the window it was counted in, if an example."""
        control = control_of(record.headers)
        origin = SourceRef.parse((header(record.headers, HEADER_ORIGIN) or b"?:0:0").decode())
        clock = header(record.headers, HEADER_JOIN_CLOCK)
        join_clock = None if clock is None else int(clock)
        decided_at = header(record.headers, HEADER_DECIDED_AT)
        if control == WATERMARK:
            scoring.watermark(origin, join_clock, record.timestamp_ms)
        elif control == RESUME:
            scoring.clock.resume(record.timestamp_ms)
        elif control is not None or decided_at is None:
            scoring.tick(record.timestamp_ms)
        else:
            return scoring.add(example, int(decided_at), origin, record.timestamp_ms, join_clock)
        return None

    def tick(self, now_ms: int) -> ProcessResult:
        return ProcessResult() if self.scoring is None else self._close(self.scoring)

    def _close(self, scoring: MetricsStage) -> ProcessResult:
        result = ProcessResult()
        reports = scoring.close()
        if reports:
            now = int(time.time() * 1000)
            result.outputs += [OutgoingRecord(self.metrics_topic, snapshot["model_version"], snapshot)
                               for snapshot in (report.snapshot(self.pipeline, now) for report in reports)]
            self._closed_to_save = scoring.closed_until
            if self.on_reports is not None:
                self.on_reports(reports)
        self.held = [h for h in self.held if not scoring.is_reported(h[3])]
        return result

    def delivered(self) -> None:
        if self._closed_to_save is not None:
            self.closed_until.set(self._closed_to_save)
            self._closed_to_save = None

    def commit_limit(self, topic: str, partition: int) -> int | None:
        """Records of windows not yet reported stay replayable (the faust app holds their acks)."""
        offsets = [offset for t, p, offset, _ in self.held if (t, p) == (topic, partition)]
        return min(offsets) if offsets else None
