"""Composition root of the collector's default runtime: three stage runners in one process.

The same pipeline as the faust app (app.py and its faust_*.py agents), with the same pure parts,
on streamloop's own confluent-kafka runner, which batches, commits after acknowledgement and
dead-letters. One module per stage: re-key (rekey_stage.py), join (join_stage.py) and metrics
(score_stage.py). Each stage is its own consumer group (``<group>``, ``<group>.join``,
``<group>.score``), so each scales and commits on its own, and the three run on threads of one
process: if any stops with an error, all stop and the process exits non-zero (the supervisor or
the orchestrator restarts it, and every stage resumes from its committed offsets).
docs/ground-truth-collector.md says why this is the default and the faust app an option.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from services.ground_truth_collector.internal_topics import (
    dead_letter_topic,
    grow_keyed_topics,
    internal_topics,
    joined_topic,
    keyed_topic,
)
from services.ground_truth_collector.join_interface import JoinConfig, JoinCounters
from services.ground_truth_collector.join_stage import JoinStage
from services.ground_truth_collector.redis_state import RedisPartitionStore, RedisValue
from services.ground_truth_collector.rekey_stage import RekeyStage
from services.ground_truth_collector.reporting import CollectorMetrics
from services.ground_truth_collector.routing import INPUT_ROLES
from services.ground_truth_collector.score_stage import ScoreStage
from services.ground_truth_collector.settings import SERVICE, CollectorSettings
from streamloop.errors import StreamloopError
from streamloop.kafka import StageRunner
from streamloop.kafka.admin import ensure_topics
from streamloop.kafka.runner_settings import StageTopics
from streamloop.ml.evaluation import EvaluationConfig
from streamloop.serde.raw import RawSerde
from streamloop.service.context import ServiceContext
from streamloop.telemetry import Telemetry

log = logging.getLogger(__name__)


class RunnerCollector:
    def __init__(self, ctx: ServiceContext, settings: CollectorSettings, telemetry: Telemetry) -> None:
        self.ctx, self.settings, self.telemetry = ctx, settings, telemetry
        spec, kafka = ctx.pipeline, settings.common.kafka
        group = ctx.group_id
        self.keyed_topic, self.joined_topic = keyed_topic(group), joined_topic(group)
        # A keyed record damaged further on than its event id goes to its source's dead-letter
        # topic; one this pipeline's re-key stage did not write (no origin) goes to this one.
        self.keyed_dead_letter_topic = dead_letter_topic(self.keyed_topic)
        # A joined example the metrics stage cannot read (it wrote it itself, so: a bug) goes here.
        self.joined_dead_letter_topic = dead_letter_topic(self.joined_topic)
        self.keyed_partitions = settings.keyed_partitions or ctx.topic("labels").partitions
        raw = RawSerde()
        inputs = {ctx.topic(role).name: role for role in INPUT_ROLES}
        sources = tuple(f"{name}:{p}" for name in inputs for p in range(ctx.topic(inputs[name]).partitions))
        horizon = spec.labels.join_horizon
        remember = horizon if settings.remember_expired is None else settings.remember_expired
        join_config = JoinConfig(
            pipeline=spec.name, horizon_ms=horizon, grace_ms=settings.join_grace, remember_ms=remember,
            max_entries=settings.max_entries_per_partition, idle_after_ms=settings.idle_after,
            future_tolerance_ms=settings.future_tolerance, sources=sources)
        self.counters = JoinCounters()
        self.report = CollectorMetrics(telemetry.metrics)
        source_serdes = {name: ctx.serde(role) for name, role in inputs.items()}
        redis = settings.redis.client()
        state_prefix = f"{settings.redis.key_prefix}:collector:{group}"
        runner_settings = settings.stage_runner()

        self.rekey = RekeyStage({name: INPUT_ROLES[role] for name, role in inputs.items()}, source_serdes,
                                self.keyed_topic, self.keyed_partitions, spec.model.task, settings.idle_after)
        self.join = JoinStage(
            join_config, lambda p: RedisPartitionStore(redis, f"{state_prefix}:join:{p}", p), source_serdes,
            ctx.serde("labeled_examples"), ctx.serde("unmatched_labels"), keyed_topic=self.keyed_topic,
            joined_topic=self.joined_topic, examples_topic=ctx.topic("labeled_examples").name,
            unmatched_topic=ctx.topic("unmatched_labels").name, idle_after_ms=settings.idle_after,
            counters=self.counters, take_back_after_ms=settings.take_back_after_ms)
        self.score = ScoreStage(
            EvaluationConfig.from_spec(spec, settings.metrics_window, settings.metrics_lateness),
            RedisValue(redis, f"{state_prefix}:closed_until"), ctx.serde("labeled_examples"), pipeline=spec.name,
            metrics_topic=ctx.topic("metrics").name, keyed_topic=self.keyed_topic,
            keyed_partitions=self.keyed_partitions, idle_after_ms=settings.idle_after,
            future_tolerance_ms=settings.future_tolerance, on_reports=self.report.windows,
            forget_reports=self.report.forget)
        dead = {name: ctx.topic(role).dead_letter_topic for name, role in inputs.items()}
        metrics = telemetry.metrics
        self.runners = [
            StageRunner(SERVICE, group, kafka, StageTopics({n: raw for n in inputs}, {self.keyed_topic: raw}, dead),
                        self.rekey, runner_settings, metrics),
            StageRunner(SERVICE, f"{group}.join", kafka, StageTopics(
                {self.keyed_topic: raw},
                {self.joined_topic: raw, ctx.topic("labeled_examples").name: raw,
                 ctx.topic("unmatched_labels").name: raw},
                {**dead, self.keyed_topic: self.keyed_dead_letter_topic}), self.join, runner_settings, metrics),
            StageRunner(SERVICE, f"{group}.score", kafka, StageTopics(
                {self.joined_topic: raw}, {ctx.topic("metrics").name: ctx.serde("metrics")},
                {self.joined_topic: self.joined_dead_letter_topic}),
                self.score, runner_settings, metrics),
        ]
        self._stop = threading.Event()
        self.exit_code = 0

    def ensure_internal_topics(self) -> None:
        # No wait for the broker here: start_service waited for it (STREAMLOOP_BROKER_WAIT_S).
        admin = AdminClient(self.settings.common.kafka.admin())
        ensure_topics(admin, internal_topics(self.ctx.group_id, self.keyed_partitions, self.settings.new_topics))

    def ensure_keyed_partitions(self) -> None:
        """Give ``<group>-by-event`` the partitions the re-key stage writes to: an existing topic
        keeps its count, so after the labels topic grew (docs/operations.md, "Adding partitions")
        the re-key stage would write to partitions that do not exist, its batches retried for ever."""
        grow_keyed_topics(AdminClient(self.settings.common.kafka.admin()), [self.keyed_topic], self.keyed_partitions)

    def stop(self, *_: object) -> None:
        self._stop.set()
        for runner in self.runners:
            runner.stop()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _run(self, runner: StageRunner) -> None:
        try:
            code = runner.run()
        except Exception:
            log.exception("%s: stage %s failed", SERVICE, runner.group_id)
            code = 1
        if code != 0:
            self.exit_code = code
            self.stop()

    def run(self) -> int:
        try:
            self.ensure_internal_topics()
            self.ensure_keyed_partitions()
        except (StreamloopError, KafkaException) as exc:
            # KafkaException: the broker did not answer the admin calls. StreamloopError: the keyed
            # topic could not be grown, or topics just created never became visible
            # (BrokerUnavailableError): a start-up condition to report in one line, not a traceback.
            log.error("%s: %s", SERVICE, exc)
            self.telemetry.shutdown()
            return 1
        threads = [threading.Thread(target=self._run, args=(r,), name=r.group_id, daemon=True) for r in self.runners]
        for thread in threads:
            thread.start()
        log.info("%s: joining labels on %s (%d partitions) with the stage runner", SERVICE, self.keyed_topic,
                 self.keyed_partitions)
        try:
            self._report_until_stopped(threads)
        except Exception:
            # Leaving here without stopping would strand the stage threads and skip the telemetry
            # shutdown: stop cleanly instead (each stage finishes its batch) and exit non-zero.
            log.exception("%s: reporting failed; stopping", SERVICE)
            self.exit_code = self.exit_code or 1
        finally:
            self.stop()
            self._wait_for_stages(threads)
            log.info("%s: stopped; counters %s", SERVICE, self.totals())
            self.telemetry.shutdown()
        return self.exit_code

    def _report_until_stopped(self, threads: list[threading.Thread]) -> None:
        next_report = time.monotonic()
        while any(t.is_alive() for t in threads) and not self._stop.is_set():
            self._stop.wait(0.5)
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + self.settings.metrics_report_interval / 1000
                self.report_state()

    def report_state(self) -> None:
        """Export the counters and the join's gauges, as they are now."""
        self.report.report(self.totals(), self.join.pending, self.join.entries, self.join.given_up)

    def totals(self) -> dict[str, int]:
        """What the join and the metrics stage did: streamloop_collector_events_total's events.

        The join's as of its last delivered batch (JoinStage.delivered_counts); the metrics
        stage's never go back, as it has no discard (it decodes a batch whole before it counts).
        """
        return {**self.join.delivered_counts, **self.score.counters.as_events()}

    def _wait_for_stages(self, threads: list[threading.Thread]) -> None:
        # A stage waiting for Redis or the broker (both stopped with it, say) would hold the
        # process for ever: it gets stop_timeout to finish its batch, then the process leaves
        # without it. What it had not committed is read again.
        deadline = time.monotonic() + self.settings.stop_timeout / 1000
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in threads if thread.is_alive()]
        if stuck:
            log.error("%s: %s did not stop within %d ms; leaving without committing their batch (it is read again)",
                      SERVICE, ", ".join(stuck), self.settings.stop_timeout)
            self.exit_code = self.exit_code or 1

