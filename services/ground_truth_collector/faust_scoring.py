"""Agent 3 of the faust runtime: the joined examples into the prequential metrics (scoring.py).

MetricSnapshot records are published when a window closes; a window's records are acknowledged
only once it is reported.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from services.ground_truth_collector.entries import SourceRef
from services.ground_truth_collector.routing import (
    HEADER_DECIDED_AT,
    HEADER_JOIN_CLOCK,
    HEADER_ORIGIN,
    RESUME,
    WATERMARK,
    carries_example,
    control_of,
    header_list,
)
from services.ground_truth_collector.scoring import MetricsStage
from streamloop.errors import DependencyUnavailable
from streamloop.kafka import dead_letters
from streamloop.kafka.records import Headers, header
from streamloop.ml.evaluation import WindowReport
from streamloop.serde import SerdeError

log = logging.getLogger(__name__)

_CLOSED_UNTIL = "closed_until"


class ScoringAgent:
    """``score``, a part of :class:`app.Collector` (whose state it uses)."""

    async def _score(self, stream: Any) -> None:
        wait = self.settings.batch_wait / 1000
        async for events in stream.noack_take(self.settings.batch_size, within=wait):
            await self.app.tables.recovery.completed.wait()
            async with self.revocations.work():
                await self._score_batch(stream, [event for event in events if self._current(event.message)])

    async def _score_batch(self, stream: Any, events: list[Any]) -> None:
        held = self._held
        scoring = self._scoring()
        dead: list[Any] = []
        for event in events:
            message = event.message
            if not await self._in_order(message):
                continue
            self.pacer.done(message.topic, message.partition, message.offset)
            headers = header_list(message.headers)
            try:
                window = self._apply_scored(scoring, message, headers, self._example(message, headers))
            except DependencyUnavailable:
                # A Schema Registry outage says nothing about the record: dead-lettered, it would be
                # lost to the metrics. The worker stops instead and reads it again on restart.
                raise
            except Exception as exc:  # noqa: BLE001 - one poison record must not stop the metrics
                # Raised out of the agent, it stopped the worker (CrashingSupervisor), and every
                # restart replayed the record and stopped again. It is acknowledged in its turn.
                log.exception("metrics stage failed on %s[%d]@%d", message.topic, message.partition, message.offset)
                stage = dead_letters.STAGE_DECODE if isinstance(exc, SerdeError) else dead_letters.STAGE_PROCESS
                dead.append(await self._dead_letter(message, stage, exc, self.joined_dead_letters))
                window = None
            held.append((event, window))
        reports = scoring.close()
        if reports:
            await self._publish(reports)
            self.scoring_state.put(_CLOSED_UNTIL, {"closed_until": scoring.closed_until}, 0)
            await self._settle(await self.scoring_state.flush(self._send_state))
        # A dead letter acknowledged before its record is: a crash in between would commit past a
        # record whose dead letter was never written.
        await self._settle(dead)
        # Only ever a prefix, in offset order: faust commits past one unacknowledged record at the
        # head (it takes committed + 1 for contiguous, and checks nothing for a committed offset
        # of 0 or none), so a control record acknowledged behind a held example would commit the
        # example away.
        while held and scoring.is_reported(held[0][1]):
            await stream.ack(held.popleft()[0])

    def _example(self, message: Any, headers: Headers) -> dict | None:
        """The labeled example a joined record carries; None for one without a decision (a marker)."""
        if not carries_example(headers):
            return None
        return self.serdes[self.ctx.topic("labeled_examples").name].decode(message.value)

    @staticmethod
    def _apply_scored(scoring: MetricsStage, message: Any, headers: Headers, example: dict | None) -> int | None:
        """One joined record into the metrics; the window it was counted in, if an example."""
        timestamp_ms = int(message.timestamp * 1000)
        control = control_of(headers)
        decided_at = header(headers, HEADER_DECIDED_AT)
        origin = SourceRef.parse((header(headers, HEADER_ORIGIN) or b"?:0:0").decode())
        join_clock = header(headers, HEADER_JOIN_CLOCK)
        if control == WATERMARK:
            scoring.watermark(origin, None if join_clock is None else int(join_clock), timestamp_ms)
        elif control == RESUME:
            scoring.clock.resume(timestamp_ms)
        elif control is not None or decided_at is None:
            scoring.tick(timestamp_ms)
        else:
            return scoring.add(example, int(decided_at), origin, timestamp_ms,
                               None if join_clock is None else int(join_clock))
        return None

    def _scoring(self) -> MetricsStage:
        if self.scoring is None:
            stored = self.scoring_state.get(_CLOSED_UNTIL) or {}
            keyed = self.keyed.get_topic_name()
            self.scoring = MetricsStage(self.evaluation, self.settings.idle_after, stored.get("closed_until"),
                                        sources=tuple(f"{keyed}:{p}" for p in self._keyed_range),
                                        future_tolerance_ms=self.settings.future_tolerance,
                                        counters=self.scoring_counters)
        return self.scoring

    async def _publish(self, reports: list[WindowReport]) -> None:
        serde = self.serdes[self.ctx.topic("metrics").name]
        now = int(time.time() * 1000)
        futures = []
        for report in reports:
            snapshot = report.snapshot(self.ctx.pipeline.name, now)
            # Refused with its batch by the broker, sent again alone (Outputs._send); refused for itself,
            # at the send or alone, it stops the worker, as before.
            futures += await self._send(self.outputs["metrics"], None, key=snapshot["model_version"].encode(),
                                        value=serde.encode(snapshot))
        await self._settle(futures)
        self.report.windows(reports)
