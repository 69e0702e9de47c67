"""The collector's metrics stage: joined examples in, MetricSnapshot records out, once per closed window.

Every joined example reaches this stage through one single-partition internal topic, so one
worker sees all of them in one order and a window's metrics are complete, not per-partition
parts. Windows are tumbling over ``decided_at``: the label's time, or the join's clock if that is
later (when a label had to wait for its event), i.e. when the truth became usable (prequential
order). The stage's clock is a watermark over the join partitions that feed it (the same
:class:`StreamClock` as the join's), so a join partition that runs ahead cannot close a window
that a slower one still has examples for. Each join partition's time there is its own *clock*,
carried by every example and by watermark records the join writes after each batch, never the
examples' ``decided_at``: a join partition decides at ``max(label time, its clock)``, so its
``decided_at`` values are not ordered (a label stamped later can be decided before one stamped
earlier), but none is ever below its clock. A window closes once the stage's clock passes its end
by the allowed lateness; tick records let the clock run on when every join partition is quiet.

The stage holds the Kafka acknowledgements of a window's records until the window is reported:
after a crash the open windows are rebuilt by replaying their records, and ``closed_until``
(kept in a changelog-backed table) makes records of already reported windows count as late
instead of being reported twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from services.ground_truth_collector.clock import StreamClock
from services.ground_truth_collector.entries import SourceRef
from streamloop.ml.evaluation import (
    Added,
    EvaluationConfig,
    PrequentialEvaluator,
    WindowReport,
    outcomes_from_example,
)


@dataclass
class ScoringCounters:
    counted: int = 0
    duplicate: int = 0
    late: int = 0
    snapshots: int = 0

    def as_events(self) -> dict[str, int]:
        """As exported beside the join's counters (streamloop_collector_events_total{event=outcomes_...})."""
        return {f"outcomes_{name}": value for name, value in asdict(self).items()}


class MetricsStage:
    def __init__(self, config: EvaluationConfig, idle_after_ms: int = 30_000, closed_until: int | None = None,
                 sources: tuple[str, ...] = (), future_tolerance_ms: int = 3_600_000,
                 counters: ScoringCounters | None = None) -> None:
        self.config = config
        self.clock = StreamClock(idle_after_ms, future_tolerance_ms, sources)
        self.evaluator = PrequentialEvaluator(config, closed_until=closed_until, auto_advance=False)
        # Passed in to outlive the stage, which is rebuilt on every assignment: exported totals only grow.
        self.counters = counters if counters is not None else ScoringCounters()

    @property
    def closed_until(self) -> int | None:
        return self.evaluator.closed_until

    def add(self, example: Mapping[str, Any], decided_at: int, origin: SourceRef, timestamp_ms: int = 0,
            join_clock: int | None = None) -> int | None:
        """File one joined example from the join partition ``origin`` whose clock was ``join_clock``
        when it decided; its window's start, or None when nothing of it was counted (late, repeated,
        or no prediction to score). Without a clock (the partition's first moments) the partition
        holds the stage's clock while it is active."""
        counted = False
        for outcome in outcomes_from_example(example):
            added = self.evaluator.add(outcome, decided_at)
            if added is Added.COUNTED:
                counted = True
                self.counters.counted += 1
            elif added is Added.DUPLICATE:
                self.counters.duplicate += 1
            else:
                self.counters.late += 1
        self.watermark(origin, join_clock, timestamp_ms)
        return self.evaluator.window_start(decided_at) if counted else None

    def watermark(self, origin: SourceRef, join_clock: int | None, timestamp_ms: int = 0) -> None:
        """The join partition ``origin`` will decide nothing earlier than ``join_clock``; None: it
        has no clock yet, and may decide anything (it holds the stage's clock while active)."""
        if join_clock is None:
            self.clock.hold(origin, timestamp_ms)
        else:
            self.clock.observe(origin, join_clock, timestamp_ms)
        self._advance()

    def tick(self, timestamp_ms: int) -> None:
        self.clock.tick(timestamp_ms)
        self._advance()

    def _advance(self) -> None:
        if self.clock.clock is not None:
            self.evaluator.advance(self.clock.clock)

    def close(self) -> list[WindowReport]:
        reports = self.evaluator.close()
        self.counters.snapshots += len(reports)
        return reports

    def is_reported(self, window_start: int | None) -> bool:
        """True when the records of this window no longer need to be replayable."""
        closed = self.evaluator.closed_until
        return window_start is None or (closed is not None and window_start < closed)
