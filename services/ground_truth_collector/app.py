"""The ground-truth collector's composition root: both runtimes' entry point and the faust app's wiring.

``COLLECTOR_RUNTIME=runner`` builds runner_app.py's collector; ``faust`` builds :class:`Collector`,
a faust-streaming app with three agents (docs/ground-truth-collector.md has the picture and the
reasons), each in a module of its own:

1. ``key_by_event`` (faust_keying.py): features, predictions, shadow predictions and labels are
   decoded, checked and forwarded (original bytes) to ``<app>-by-event``, keyed by event_id by this
   app's producer. Undecodable or invalid records go to ``<topic>.dlq`` with Kafka Connect's error
   headers.
2. ``join`` (faust_join.py): the keyed stream, a batch at a time, through one :class:`JoinPartition`
   per partition over the ``join-state`` table (memory store, changelog topic). Outputs are awaited
   until acknowledged, then the batch's state is written, then its records are acknowledged.
3. ``score`` (faust_scoring.py): joined examples through the single-partition ``<app>-joined`` topic
   into the prequential metrics; MetricSnapshot records when a window closes. A record the metrics
   fail on goes to ``<app>-joined.dlq``.

What they share: offset order, resume and tick markers (faust_pacing.py: a timer writes tick
records into both internal topics so idle partitions' clocks can run on), dead letters and
waiting for acknowledgements (faust_outputs.py), and the rebalance handlers (revocation.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections import deque
from typing import Any

import faust
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from services.ground_truth_collector.faust_join import JoinAgent
from services.ground_truth_collector.faust_keying import KeyingAgent
from services.ground_truth_collector.faust_membership import refuse_a_second_worker
from services.ground_truth_collector.faust_options import faust_options, group_instance_id
from services.ground_truth_collector.faust_outputs import Outputs
from services.ground_truth_collector.faust_pacing import Pacing
from services.ground_truth_collector.faust_scoring import ScoringAgent
from services.ground_truth_collector.internal_topics import (
    dead_letter_topic,
    grow_keyed_topics,
    internal_topics,
    joined_topic,
    keyed_topic,
)
from services.ground_truth_collector.join import JoinPartition
from services.ground_truth_collector.join_interface import JoinConfig, JoinCounters
from services.ground_truth_collector.pacing import OffsetOrder, Pacer
from services.ground_truth_collector.reporting import CollectorMetrics
from services.ground_truth_collector.revocation import Rebalancing, Revocations
from services.ground_truth_collector.routing import INPUT_ROLES
from services.ground_truth_collector.runner_app import RunnerCollector
from services.ground_truth_collector.scoring import MetricsStage, ScoringCounters
from services.ground_truth_collector.settings import SERVICE, CollectorSettings
from services.ground_truth_collector.state import TableStore
from streamloop.errors import StreamloopError
from streamloop.kafka.admin import ensure_topics
from streamloop.ml.evaluation import EvaluationConfig
from streamloop.service.context import ServiceContext
from streamloop.service.entrypoint import start_service
from streamloop.startup import Startup
from streamloop.telemetry import Telemetry, configure_telemetry

log = logging.getLogger(__name__)

OUTPUTS = ["labeled_examples", "unmatched_labels", "metrics"]
_RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


class Collector(KeyingAgent, JoinAgent, ScoringAgent, Pacing, Outputs, Rebalancing):
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
        # One for every MetricsStage this worker builds (a rebalance rebuilds it): exported counters
        # only ever go up, so a stage's own, starting again at 0, would go unexported until it
        # passed the last one's total.
        self.scoring_counters = ScoringCounters()
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
        self._alone = asyncio.Lock()  # records sent again alone go one at a time (faust_outputs.py)
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
        keyed, joined = keyed_topic(group), joined_topic(group)
        self.keyed = app.topic(keyed, partitions=self.keyed_partitions, internal=True, config=replicated, **_RAW)
        self.joined = app.topic(joined, partitions=1, internal=True, config=replicated, **_RAW)
        # Never iterated by an agent, so faust never declares them: prepare_topics creates them.
        self.keyed_dead_letters = app.topic(dead_letter_topic(keyed), partitions=1, internal=True, config=replicated,
                                            **_RAW)
        self.joined_dead_letters = app.topic(dead_letter_topic(joined), partitions=1, internal=True,
                                             config=replicated, **_RAW)
        self.outputs = {role: app.topic(ctx.topic(role).name, **_RAW) for role in OUTPUTS}
        self.dead_letter_topics = {name: app.topic(ctx.topic(role).dead_letter_topic, **_RAW)
                                   for name, role in self.inputs.items()}
        # bytes key and value types make the changelog raw bytes (a faust.Schema would turn them into JSON).
        # An entry larger than the producer takes is refused when it is put, while its record can
        # still be dead-lettered (state.py).
        limit = settings.common.kafka.message_max_bytes
        self.state = TableStore(app.Table("join-state", partitions=self.keyed_partitions, key_type=bytes,
                                          value_type=bytes, extra_topic_configs=replicated), max_bytes=limit)
        self.scoring_state = TableStore(app.Table("scoring-state", partitions=1, key_type=bytes, value_type=bytes,
                                                  extra_topic_configs=replicated), max_bytes=limit)
        app.agent(self.sources, name="key_by_event")(self._key_by_event)
        app.agent(self.keyed, name="join")(self._join)
        app.agent(self.joined, name="score")(self._score)
        app.timer(settings.tick_interval / 1000)(self._tick)
        app.timer(settings.metrics_report_interval / 1000)(self._report)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)

    # -- counters ----------------------------------------------------------------------------

    def _totals(self) -> dict[str, int]:
        totals = {**self.counters.as_dict(), **self.scoring_counters.as_events()}
        totals["consumer_reseeks"] = self.report.consumer_reseeks
        totals["outputs_refused_in_batch"] = self.report.refused_in_batch
        totals["outputs_refused_alone"] = self.report.refused_alone
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

    def prepare_topics(self) -> None:
        """Create the collector's internal topics and grow the keyed ones before the worker starts,
        as the runner does.

        faust declares only the topics its agents read and its tables' changelogs: the two
        dead-letter topics, only ever written to, were never created, and on a broker that does not
        create topics on first use the first dead letter waited for its topic until the producer's
        request timeout, then stopped the worker, again at every restart. And faust leaves an
        existing topic as it is: after the labels topic grew, the keying agent and the join's
        changelog writes went to partitions the keyed topic and the changelog lacked (aiokafka's
        "Unrecognized partition"), and the worker stopped at every restart. The changelog is grown
        with the keyed topic: each entry is written to the changelog partition of the keyed
        partition it was made in, named explicitly (TableStore.flush), even when a record keyed to
        a new partition changes it (join.py), so the entries already there stay where their
        partition's worker restores them, and the new partitions start empty, as the keyed topic's do.
        """
        # No wait for the broker here: start_service waited for it (STREAMLOOP_BROKER_WAIT_S).
        admin = AdminClient(self.settings.common.kafka.admin())
        ensure_topics(admin, internal_topics(self.ctx.group_id, self.keyed_partitions, self.settings.new_topics))
        grow_keyed_topics(admin, [self.keyed.get_topic_name(), self.state.table.changelog_topic.get_topic_name()],
                          self.keyed_partitions)

    def refuse_a_second_worker(self) -> None:
        """Stop the start if another worker is in the group: the faust runtime runs one (faust_membership.py)."""
        kafka = self.settings.common.kafka
        refuse_a_second_worker(AdminClient(kafka.admin()), self.ctx.group_id, group_instance_id(self.settings),
                               wait_s=kafka.session_timeout_ms / 1000 + 5)

    def run(self) -> int:
        try:
            self.refuse_a_second_worker()
            self.prepare_topics()
        except (StreamloopError, KafkaException) as exc:
            # KafkaException: the broker did not answer the admin calls. StreamloopError: another
            # worker is in the group, a keyed topic could not be grown, or topics just created never
            # became visible: a start-up condition to report in one line, not a traceback.
            log.error("%s: %s", SERVICE, exc)
            self.telemetry.shutdown()
            return 1
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


def main(startup: Startup | None = None) -> int:
    collector = start_service(
        SERVICE, CollectorSettings, lambda s: build(s) if s.runtime == "faust" else build_runner(s), startup)
    if isinstance(collector, int):
        return collector
    return collector.run()


def build_runner(settings: CollectorSettings) -> RunnerCollector:
    ctx = ServiceContext.load(SERVICE, settings.common)
    collector = RunnerCollector(ctx, settings, configure_telemetry(settings.telemetry.for_service(SERVICE)))
    collector.install_signal_handlers()
    return collector
