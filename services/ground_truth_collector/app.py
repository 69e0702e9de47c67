"""The ground-truth collector's composition root: a faust-streaming app, the only module that wires I/O.

Three agents (docs/ground-truth-collector.md has the picture and the reasons):

1. ``key_by_event``: features, predictions, shadow predictions and labels are decoded, checked
   and forwarded (original bytes) to ``<app>-by-event``, keyed by event_id by this app's producer.
   Undecodable or invalid records go to ``<topic>.dlq`` with Kafka Connect's error headers.
2. ``join``: the keyed stream, a batch at a time, through one :class:`JoinPartition` per
   partition over the ``join-state`` table (memory store, changelog topic). Outputs are awaited
   until acknowledged, then the batch's state is written, then its records are acknowledged.
3. ``score``: joined examples through the single-partition ``<app>-joined`` topic into the
   prequential metrics; MetricSnapshot records when a window closes.

A timer writes tick records into both internal topics so idle partitions' clocks can run on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import deque
from typing import Any

import faust
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, TopicPartition

from services.ground_truth_collector.entries import JoinInput, SourceRef
from services.ground_truth_collector.faust_options import faust_options
from services.ground_truth_collector.join import Decision, JoinConfig, JoinCounters, Joined, JoinPartition
from services.ground_truth_collector.pacing import OffsetOrder, Pacer
from services.ground_truth_collector.reporting import CollectorMetrics
from services.ground_truth_collector.revocation import Revocations
from services.ground_truth_collector.routing import (
    HEADER_DECIDED_AT,
    HEADER_JOIN_CLOCK,
    HEADER_LABEL_SOURCE,
    HEADER_ORIGIN,
    INPUT_ROLES,
    RESUME,
    TICK,
    WATERMARK,
    control_headers,
    control_of,
    event_id_of,
    forwarded_headers,
    header,
    header_list,
    keyed_headers,
    read_keyed,
    with_millis,
)
from services.ground_truth_collector.runner_app import RunnerCollector
from services.ground_truth_collector.scoring import MetricsStage
from services.ground_truth_collector.settings import SERVICE, CollectorSettings
from services.ground_truth_collector.state import TableStore
from streamloop.kafka import dead_letters
from streamloop.kafka.exceptions import InvalidRecordError
from streamloop.ml.evaluation import EvaluationConfig, WindowReport
from streamloop.serde import SerdeError
from streamloop.service.context import ServiceContext
from streamloop.service.entrypoint import start_service
from streamloop.telemetry import Telemetry, configure_telemetry

log = logging.getLogger(__name__)

OUTPUTS = ["labeled_examples", "unmatched_labels", "metrics"]
_RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
_CLOSED_UNTIL = "closed_until"


class Collector:
    """The faust app of the collector and the state its agents share; ``run`` blocks until stopped."""

    def __init__(self, ctx: ServiceContext, settings: CollectorSettings, telemetry: Telemetry) -> None:
        self.ctx = ctx
        self.settings = settings
        self.telemetry = telemetry
        self.exit_code = 0
        spec = ctx.pipeline
        horizon = spec.labels.join_horizon
        remember = horizon if settings.remember_expired is None else settings.remember_expired
        self.join_config = JoinConfig(
            pipeline=spec.name, horizon_ms=horizon, grace_ms=settings.join_grace, remember_ms=remember,
            max_entries=settings.max_entries_per_partition, idle_after_ms=settings.idle_after,
            future_tolerance_ms=settings.future_tolerance,
            sources=tuple(f"{t.name}:{p}" for t in map(ctx.topic, INPUT_ROLES) for p in range(t.partitions)))
        self.evaluation = EvaluationConfig.from_spec(spec, settings.metrics_window, settings.metrics_lateness)
        self.counters = JoinCounters()
        self.partitions: dict[int, JoinPartition] = {}
        self.scoring: MetricsStage | None = None
        self._held: deque[tuple[Any, int | None]] = deque()  # the metrics stage's unacked records and windows
        self.report = CollectorMetrics(telemetry.metrics)
        self.pacer = Pacer(settings.idle_after / 1000)
        self.order = OffsetOrder()
        self.revocations = Revocations()
        self._announced: dict[int, tuple[int, float]] = {}  # join partition -> (clock, when) last announced
        self._owned: set[int] = set()  # keyed partitions of the last assignment
        self._baseline_lock = asyncio.Lock()
        self._partitioner = DefaultPartitioner()
        self.inputs = {ctx.topic(role).name: role for role in INPUT_ROLES}
        self.serdes = {ctx.topic(role).name: ctx.serde(role) for role in [*INPUT_ROLES, *OUTPUTS]}
        self.app = self._make_app()
        self._wire()

    # -- the app -----------------------------------------------------------------------------

    def _make_app(self) -> faust.App:
        self.keyed_partitions = self.settings.keyed_partitions or self.ctx.topic("labels").partitions
        self._keyed_range = list(range(self.keyed_partitions))
        return faust.App(self.ctx.group_id, **faust_options(self.settings, self.keyed_partitions))

    def _wire(self) -> None:
        app, ctx, settings = self.app, self.ctx, self.settings
        group = ctx.group_id
        replicated = settings.new_topics.config()  # min.insync.replicas, as on the catalog's topics
        self.sources = app.topic(*self.inputs, **_RAW)
        self.keyed = app.topic(f"{group}-by-event", partitions=self.keyed_partitions, internal=True,
                               config=replicated, **_RAW)
        self.joined = app.topic(f"{group}-joined", partitions=1, internal=True, config=replicated, **_RAW)
        self.keyed_dead_letters = app.topic(f"{group}-by-event.dlq", partitions=1, internal=True, config=replicated,
                                            **_RAW)
        self.outputs = {role: app.topic(ctx.topic(role).name, **_RAW) for role in OUTPUTS}
        self.dead_letter_topics = {name: app.topic(ctx.topic(role).dead_letter_topic, **_RAW)
                                   for name, role in self.inputs.items()}
        # bytes key and value types make the changelog raw bytes (a faust.Schema would turn them into JSON).
        self.state = TableStore(app.Table("join-state", partitions=self.keyed_partitions, key_type=bytes,
                                          value_type=bytes, extra_topic_configs=replicated))
        self.scoring_state = TableStore(app.Table("scoring-state", partitions=1, key_type=bytes, value_type=bytes,
                                                  extra_topic_configs=replicated))
        app.agent(self.sources, name="key_by_event")(self._key_by_event)
        app.agent(self.keyed, name="join")(self._join)
        app.agent(self.joined, name="score")(self._score)
        app.timer(settings.tick_interval / 1000)(self._tick)
        app.timer(settings.metrics_report_interval / 1000)(self._report)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)

    async def _on_revoked(self, _sender: Any, revoked: set, **_: Any) -> None:
        # aiokafka's eager protocol revokes every partition, the ones this worker keeps too: only
        # what is rebuilt from the table is dropped here; the table's entries wait for _on_assigned.
        await self.revocations.revoke()
        self.pacer.reassigned()
        self.order.forget((tp.topic, tp.partition) for tp in revoked)
        keyed = {tp.partition for tp in revoked if tp.topic == self.keyed.get_topic_name()}
        for partition in keyed:
            self.partitions.pop(partition, None)
            self._announced.pop(partition, None)
        if any(tp.topic == self.joined.get_topic_name() for tp in revoked):
            self.scoring = None
            self._held.clear()  # read again from the committed offset by whoever owns the topic next

    def _on_assigned(self, _sender: Any, assigned: set, **_: Any) -> None:
        """Drop the join entries of the keyed partitions that went to another worker.

        faust restores a partition it considers kept (in the previous and the new assignment) only
        from where its last restore stopped, so that partition's entries must stay in the table.
        """
        keyed = {tp.partition for tp in assigned if tp.topic == self.keyed.get_topic_name()}
        self.state.forget(self._owned - keyed)
        self._owned = keyed
        self.revocations.assigned()

    # -- agent 1: key every input by event_id ------------------------------------------------

    async def _key_by_event(self, stream: Any) -> None:
        task = self.ctx.pipeline.model.task
        resumed = False
        # The stream is iterated at once: an agent that awaits anything before its first iteration
        # can be left without records by faust when a restart and table recovery coincide. Records
        # are acknowledged by hand, once forwarded, in order per partition (OffsetOrder).
        async for event in stream.noack().events():
            await self.app.tables.recovery.completed.wait()
            if not resumed:  # before forwarding any backlog: see StreamClock.resume
                await self._resume(self.keyed, self._keyed_range)
                resumed = True
            async with self.revocations.work():
                if self._current(event.message):
                    await self._forward(stream, event, task)

    async def _forward(self, stream: Any, event: Any, task: str) -> None:
        message = event.message
        if not await self._in_order(message):
            return
        self.report.consumed[message.topic] += 1
        kind = INPUT_ROLES[self.inputs[message.topic]]
        source = SourceRef(message.topic, message.partition, message.offset)
        headers = header_list(message.headers)
        try:
            event_id = event_id_of(kind, self.serdes[message.topic].decode(message.value), task)
        except (SerdeError, InvalidRecordError) as exc:
            stage = dead_letters.STAGE_DECODE if isinstance(exc, SerdeError) else dead_letters.STAGE_VALIDATION
            await self._dead_letter(message, stage, exc)
            await self._forwarded(stream, event)
            return
        # The partition is chosen here (the producer's default murmur2) to know which went quiet.
        key = event_id.encode()
        partition = self._partitioner(key, self._keyed_range, self._keyed_range)
        await self.keyed.send(key=key, value=message.value, partition=partition,
                              headers=keyed_headers(kind, source, headers))
        self.pacer.keyed(partition)
        await self._forwarded(stream, event)

    def _current(self, message: Any) -> bool:
        """False for a record fetched before a revocation: it is not processed nor acknowledged,
        and is read again from the committed offset if the partition is assigned here again."""
        return self.revocations.current(message, self.app.consumer_generation_id)

    async def _in_order(self, message: Any) -> bool:
        """True to process this record now (and it counts as processed); a record out of order is
        skipped, or the partition is read again from the expected offset (OffsetOrder)."""
        await self._ensure_baseline()
        tp = (message.topic, message.partition)
        baseline = (self.pacer.baseline or {}).get(tp)
        verdict = self.order.check(tp, message.offset, baseline)
        if verdict == OffsetOrder.RESEEK:
            expected = self.order.expected(tp, baseline)
            log.warning("%s[%d]: got offset %d, expected %s; reading the partition again from there",
                        message.topic, message.partition, message.offset, expected)
            await self._read_again(message.tp, expected)
        elif verdict == OffsetOrder.PROCESS:
            self.order.processed(tp, message.offset)
        return verdict == OffsetOrder.PROCESS

    async def _read_again(self, tp: Any, offset: int) -> None:
        """Seek a partition back to the first record its agent has not processed (pacing.py)."""
        consumer = self.app.consumer
        # Where faust skipped records it registered a "gap" (meant for compacted topics) and counts
        # those offsets as acknowledged: they would be committed before they are processed.
        gaps = getattr(consumer, "_gap", None)
        if gaps is not None:
            gaps.pop(tp, None)
        await consumer.seek(tp, offset)

    async def _forwarded(self, stream: Any, event: Any) -> None:
        message = event.message
        await stream.ack(event)
        self.pacer.done(message.topic, message.partition, message.offset)

    async def _resume(self, topic: Any, partitions: list[int]) -> None:
        for partition in partitions:
            await topic.send(key=None, value=b"", partition=partition, headers=control_headers(RESUME))
        log.info("%s: resume markers written to %s", SERVICE, topic.get_topic_name())

    async def _dead_letter(self, message: Any, stage: str, error: BaseException, topic: Any = None) -> None:
        headers = dead_letters.dead_letter_headers(
            header_list(message.headers), topic=message.topic, partition=message.partition,
            offset=message.offset, stage=stage, error=error, service=SERVICE)
        topic = topic if topic is not None else self.dead_letter_topics[message.topic]
        await topic.send(key=message.key, value=message.value, headers=headers)
        self.telemetry.metrics.record_dead_letters(message.topic, type(error).__name__)
        log.warning("dead-lettered %s[%d]@%d: %s", message.topic, message.partition, message.offset, error)

    async def _dead_letter_keyed(self, message: Any, error: BaseException) -> None:
        """A keyed record the join cannot apply goes to its source topic's dead-letter topic.

        One without a known origin (not written by this pipeline's re-key stage) goes to the
        keyed topic's own.
        """
        try:
            _, source = read_keyed(header_list(message.headers))
        except (InvalidRecordError, ValueError):
            source = None
        if source is None or source.topic not in self.dead_letter_topics:
            await self._dead_letter(message, dead_letters.STAGE_VALIDATION, error, self.keyed_dead_letters)
            return
        headers = dead_letters.dead_letter_headers(
            header_list(message.headers), topic=source.topic, partition=source.partition, offset=source.offset,
            stage=dead_letters.STAGE_PROCESS, error=error, service=SERVICE)
        await self.dead_letter_topics[source.topic].send(key=message.key, value=message.value, headers=headers)
        self.telemetry.metrics.record_dead_letters(source.topic, type(error).__name__)

    # -- agent 2: the join -------------------------------------------------------------------

    async def _join(self, stream: Any) -> None:
        wait = self.settings.batch_wait / 1000
        resumed = False
        async for events in stream.noack_take(self.settings.batch_size, within=wait):
            # Never before the table is restored (faust can deliver records during recovery);
            # what is delivered again after recovery's seek is recognised as a replay.
            await self.app.tables.recovery.completed.wait()
            if not resumed:
                await self._resume(self.joined, [0])
                resumed = True
            async with self.revocations.work():
                await self._join_batch(stream, [event for event in events if self._current(event.message)])

    async def _join_batch(self, stream: Any, events: list[Any]) -> None:
        pending: list[Any] = []
        applied = []
        touched: dict[int, int] = {}  # join partition -> offset of its last record in the batch
        for event in events:
            # A partition being read again (OffsetOrder) is busy too: it keeps holding the metrics clock.
            touched[event.message.partition] = event.message.offset
            if not await self._in_order(event.message):
                continue
            applied.append(event)
            try:
                decisions = self._apply(event)
            except Exception as exc:  # noqa: BLE001 - one poison record must not stop the join
                log.exception("join failed on %s[%d]@%d", event.message.topic, event.message.partition,
                              event.message.offset)
                await self._dead_letter_keyed(event.message, exc)
                continue
            for decision in decisions:
                pending += await self._send_decision(decision, event.message)
        pending += await self._announce_clocks(touched)
        await self._settle(pending)
        await self._settle(await self.state.flush())
        for event in applied:
            await stream.ack(event)
            self.pacer.done(event.message.topic, event.message.partition, event.message.offset)

    def _apply(self, event: Any) -> list[Decision]:
        message = event.message
        partition = self.partitions.get(message.partition)
        if partition is None:
            partition = JoinPartition(message.partition, self.state, self.join_config, self.counters)
            self.partitions[message.partition] = partition
        timestamp_ms = int(message.timestamp * 1000)
        headers = header_list(message.headers)
        control = control_of(headers)
        if control == RESUME:
            partition.resume(timestamp_ms)
            return []
        if control == TICK:
            return partition.tick(timestamp_ms)
        kind, source = read_keyed(headers)
        value = with_millis(kind, self.serdes[source.topic].decode(message.value))
        item = JoinInput(kind, message.key.decode(), value, source, timestamp_ms)
        return partition.apply(item)

    async def _send_decision(self, decision: Decision, trigger: Any) -> list[Any]:
        """Send a decision's records; returns their delivery futures. ``trigger`` is the keyed message."""
        trigger_headers = header_list(trigger.headers)
        if isinstance(decision, Joined):
            value = self.serdes[self.ctx.topic("labeled_examples").name].encode(decision.example)
            label = (HEADER_LABEL_SOURCE, decision.label_source.text().encode())
            decided_at = (HEADER_DECIDED_AT, str(decision.decided_at).encode())
            origin = (HEADER_ORIGIN, SourceRef(trigger.topic, trigger.partition, trigger.offset).text().encode())
            extra = [label, decided_at, origin]
            clock = self.partitions[trigger.partition].clock
            if clock is not None:  # the partition's clock: the metrics stage's watermark (scoring.py)
                extra.append((HEADER_JOIN_CLOCK, str(clock).encode()))
            futures = [await self.joined.send(
                key=decision.example["event_id"].encode(), value=value, partition=0,
                headers=forwarded_headers(trigger_headers, *extra))]
            self.pacer.joined()
            if not decision.late_prediction:
                futures.append(await self.outputs["labeled_examples"].send(
                    key=decision.example["entity_key"].encode(), value=value,
                    headers=forwarded_headers(trigger_headers, label)))
            return futures
        value = self.serdes[self.ctx.topic("unmatched_labels").name].encode(decision.record)
        return [await self.outputs["unmatched_labels"].send(
            key=decision.record["event_id"].encode(), value=value,
            headers=forwarded_headers(trigger_headers, (HEADER_LABEL_SOURCE, decision.label_source.text().encode())))]

    async def _announce_clocks(self, touched: dict[int, int]) -> list[Any]:
        """Tell the metrics stage the clocks of the join partitions a batch moved (or kept busy)."""
        futures = []
        now = time.monotonic()
        keep_alive = self.settings.idle_after / 2000
        for partition, offset in touched.items():
            join = self.partitions.get(partition)
            if join is None or join.time.high is None:
                continue  # no data record yet: nothing this partition could decide
            last = self._announced.get(partition)
            if last is not None and last[0] == join.clock and now - last[1] < keep_alive:
                continue
            self._announced[partition] = (join.clock, now)
            headers = [(HEADER_ORIGIN, SourceRef(self.keyed.get_topic_name(), partition, offset).text().encode())]
            if join.clock is not None:
                headers.append((HEADER_JOIN_CLOCK, str(join.clock).encode()))
            futures.append(await self.joined.send(key=None, value=b"", partition=0,
                                                  headers=control_headers(WATERMARK, *headers)))
        return futures

    async def _settle(self, futures: list[Any]) -> None:
        """Wait until every output is acknowledged; a failure stops the worker before state is written."""
        if not futures:
            return
        try:
            await asyncio.gather(*futures)
        except Exception as exc:
            self.state.discard()
            self._fail(f"outputs not acknowledged: {exc}")
            raise

    # -- agent 3: prequential metrics --------------------------------------------------------

    async def _score(self, stream: Any) -> None:
        wait = self.settings.batch_wait / 1000
        async for events in stream.noack_take(self.settings.batch_size, within=wait):
            await self.app.tables.recovery.completed.wait()
            async with self.revocations.work():
                await self._score_batch(stream, [event for event in events if self._current(event.message)])

    async def _score_batch(self, stream: Any, events: list[Any]) -> None:
        held = self._held
        scoring = self._scoring()
        for event in events:
            message = event.message
            if not await self._in_order(message):
                continue
            self.pacer.done(message.topic, message.partition, message.offset)
            timestamp_ms = int(message.timestamp * 1000)
            headers = header_list(message.headers)
            control = control_of(headers)
            decided_at = header(headers, HEADER_DECIDED_AT)
            origin = SourceRef.parse((header(headers, HEADER_ORIGIN) or b"?:0:0").decode())
            join_clock = header(headers, HEADER_JOIN_CLOCK)
            if control == WATERMARK:
                scoring.watermark(origin, None if join_clock is None else int(join_clock), timestamp_ms)
                held.append((event, None))
                continue
            if control is not None or decided_at is None:
                if control == RESUME:
                    scoring.clock.resume(timestamp_ms)
                else:
                    scoring.tick(timestamp_ms)
                held.append((event, None))
                continue
            example = self.serdes[self.ctx.topic("labeled_examples").name].decode(message.value)
            held.append((event, scoring.add(example, int(decided_at), origin, timestamp_ms,
                                            None if join_clock is None else int(join_clock))))
        reports = scoring.close()
        if reports:
            await self._publish(reports)
            self.scoring_state.put(_CLOSED_UNTIL, {"closed_until": scoring.closed_until}, 0)
            await self._settle(await self.scoring_state.flush())
        # Only ever a prefix, in offset order: faust commits past one unacknowledged record at the
        # head (it takes committed + 1 for contiguous, and checks nothing for a committed offset
        # of 0 or none), so a control record acknowledged behind a held example would commit the
        # example away.
        while held and scoring.is_reported(held[0][1]):
            await stream.ack(held.popleft()[0])

    def _scoring(self) -> MetricsStage:
        if self.scoring is None:
            stored = self.scoring_state.get(_CLOSED_UNTIL) or {}
            keyed = self.keyed.get_topic_name()
            self.scoring = MetricsStage(self.evaluation, self.settings.idle_after, stored.get("closed_until"),
                                        sources=tuple(f"{keyed}:{p}" for p in self._keyed_range),
                                        future_tolerance_ms=self.settings.future_tolerance)
        return self.scoring

    async def _publish(self, reports: list[WindowReport]) -> None:
        serde = self.serdes[self.ctx.topic("metrics").name]
        now = int(time.time() * 1000)
        futures = []
        for report in reports:
            snapshot = report.snapshot(self.ctx.pipeline.name, now)
            futures.append(await self.outputs["metrics"].send(
                key=snapshot["model_version"].encode(), value=serde.encode(snapshot)))
        await self._settle(futures)
        self.report.windows(reports)

    # -- timers ------------------------------------------------------------------------------

    async def _tick(self) -> None:
        """Tick the partitions that went quiet while caught up, so their clocks can run on."""
        now = self.pacer.warmed_up(self.app.tables.recovery.completed.is_set())
        consumer = self.app.consumer
        if now is not None:
            await self._ensure_baseline()
        if now is None or await self._unstick(now) or not await self.pacer.caught_up(consumer, set(self.inputs)):
            return
        for partition in self.pacer.quiet_keyed(now, self._keyed_range):
            await self.keyed.send(key=None, value=b"", partition=partition, headers=control_headers(TICK))
        if self.pacer.quiet_joined(now) and await self.pacer.caught_up(consumer, {self.keyed.get_topic_name()}):
            await self.joined.send(key=None, value=b"", partition=0, headers=control_headers(TICK))

    async def _unstick(self, now: float) -> bool:
        """Read a partition again from where its agent stands when it idles on a backlog (pacing.py)."""
        stall_after = self.settings.stall_after_ms / 1000
        topics = {*self.inputs, self.keyed.get_topic_name(), self.joined.get_topic_name()}
        stuck = await self.pacer.stalled(self.app.consumer, topics, now, stall_after)
        if not stuck:
            return False
        log.warning("no progress for %.0fs although %s have records to read; reading them again", stall_after,
                    ", ".join(f"{tp.topic}[{tp.partition}] from {done} (end {end})" for tp, done, end in stuck))
        self.pacer.last_reseek = now
        self.report.consumer_reseeks += 1
        for tp, done, _ in stuck:
            await self._read_again(tp, done)
        return True

    async def _ensure_baseline(self) -> None:
        """The committed offsets of this assignment, read once per assignment (Pacer.baseline)."""
        if self.pacer.baseline is not None:
            return
        async with self._baseline_lock:
            if self.pacer.baseline is None:
                await self._load_baseline()

    async def _load_baseline(self) -> None:
        tps = [(tp.topic, tp.partition) for tp in self.app.consumer.assignment()]
        self.pacer.baseline = await asyncio.get_running_loop().run_in_executor(None, self._committed, tps)

    def _committed(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The group's committed offsets (the low watermark where there is none), read with confluent-kafka."""
        consumer = Consumer(self.settings.common.kafka.consumer(self.ctx.group_id))
        try:
            found = consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=10)
            offsets = {}
            for tp in found:
                offset = tp.offset
                if offset < 0:
                    offset = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)[0]
                offsets[(tp.topic, tp.partition)] = offset
            return offsets
        finally:
            consumer.close()

    def _totals(self) -> dict[str, int]:
        totals = self.counters.as_dict()
        if self.scoring is not None:
            totals.update(self.scoring.counters.as_events())
        totals["consumer_reseeks"] = self.report.consumer_reseeks
        totals["holes_accepted"] = self.order.holes_accepted
        return totals

    async def _report(self) -> None:
        partitions = list(self.partitions.values())
        totals = self._totals()
        log.debug("consumed since the last report %s; counters %s", dict(self.report.consumed), totals)
        self.report.report(totals, sum(p.pending for p in partitions), sum(p.size for p in partitions))

    # -- running -----------------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        log.error("%s: %s; stopping (the unacknowledged batch is replayed on restart)", SERVICE, reason)
        self.exit_code = 1
        os.kill(os.getpid(), signal.SIGTERM)

    def run(self) -> int:
        worker = faust.Worker(self.app, loglevel=self.settings.common.log_level.lower(), quiet=True,
                              override_logging=False, redirect_stdouts=False)
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            if exc.code not in (None, 0):
                self.exit_code = self.exit_code or int(exc.code) if isinstance(exc.code, int) else 1
        finally:
            log.info("%s: stopped; counters %s", SERVICE, self._totals())
            self.telemetry.shutdown()
        if self.app.crash_reason is not None:
            self.exit_code = self.exit_code or 1
        return self.exit_code


def build(settings: CollectorSettings) -> Collector:
    ctx = ServiceContext.load(SERVICE, settings.common)
    return Collector(ctx, settings, configure_telemetry(settings.telemetry.for_service(SERVICE)))


def main() -> int:
    collector = start_service(
        SERVICE, CollectorSettings, lambda s: build(s) if s.runtime == "faust" else build_runner(s))
    if isinstance(collector, int):
        return collector
    return collector.run()


def build_runner(settings: CollectorSettings) -> RunnerCollector:
    ctx = ServiceContext.load(SERVICE, settings.common)
    collector = RunnerCollector(ctx, settings, configure_telemetry(settings.telemetry.for_service(SERVICE)))
    collector.install_signal_handlers()
    return collector
