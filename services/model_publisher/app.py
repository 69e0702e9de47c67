"""The model publisher's composition root: the only module that wires its I/O.

Reads ``model_candidates``, ``labeled_examples`` and ``metrics`` through the stage runner and its
own registry (the compacted deployments topic) through a ``CompactedTopicReader``; at start-up it
reads the candidates topic back for the lineage of the versions in the registry, the alerts
topic for the staleness alerts it left raised, and the end of the decisions topic for the
decisions a stop cut short (recovery.py). Writes
``model_deployments``, ``model_decisions`` and ``alerts``.

The publisher is the registry's single writer: with ``PUBLISHER_STANDBY_LEASE`` (default) every
replica first waits for the lease (``streamloop.kafka.lease``), so a second replica is a hot
standby that takes over when the active one goes away, not a second judge of half the labels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from services.model_publisher.judging import JudgingPolicy
from services.model_publisher.publisher import PublisherPolicy, PublisherProcessor, PublisherTopics
from services.model_publisher.recovery import DECISIONS_TAIL, LoggedDecisions
from services.model_publisher.settings import PublisherSettings
from streamloop.errors import StreamloopError
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.lease import LeaderLease, lease_group
from streamloop.kafka.runner import StageRunner
from streamloop.kafka.table_reader import CompactedTopicReader, wait_until_read
from streamloop.ml.registry import DeploymentTable
from streamloop.ml.registry_client import SkippedRecord, read_topic
from streamloop.serde import Serde
from streamloop.service.context import ServiceContext
from streamloop.service.entrypoint import start_service
from streamloop.service.leased import LeasedService
from streamloop.startup import Startup
from streamloop.telemetry import Telemetry, configure_telemetry

SERVICE = "model-publisher"
log = logging.getLogger(__name__)


@dataclass
class PublisherTerm:
    """What one term as the active replica judges with, built anew for each: what a publisher knows
    besides its topics (the ledger, the lineage, the table it wrote through to) is rebuilt as after
    a restart, and the table read again, since a batch abandoned when the lease was lost may have
    written through records that never reached the topic."""

    processor: PublisherProcessor
    runner: StageRunner
    table_reader: CompactedTopicReader


class PublisherApp(LeasedService[PublisherTerm]):
    """Waits for the lease, then judges until stopped or the lease is lost (then waits again)."""

    def __init__(self, new_term: Callable[[], PublisherTerm], telemetry: Telemetry, kafka: KafkaSettings, *,
                 candidates: tuple[str, Serde], alerts: tuple[str, Serde], decisions: tuple[str, Serde],
                 table_timeout_s: float, lease: LeaderLease | None = None) -> None:
        super().__init__(new_term, lease)
        self.telemetry = telemetry
        self.kafka = kafka
        self.candidates_topic, self.candidates_serde = candidates
        self.alerts_topic, self.alerts_serde = alerts
        self.decisions_topic, self.decisions_serde = decisions
        self.table_timeout_s = table_timeout_s

    @property
    def processor(self) -> PublisherProcessor:
        return self.term.processor

    def _shut_down(self) -> None:
        self.telemetry.shutdown()

    def _run_term(self) -> int | None:
        if self._stopping.is_set():
            return 0
        self.term.table_reader.start()
        try:
            return self._judge()
        finally:
            self.processor.forget_gauges()  # however the term ended: a standby's would read as current
            self.term.table_reader.stop()

    def _judge(self) -> int | None:
        """One term: the runner's exit code, or None when the lease was lost and the replica waits again."""
        self._recall_lineage()
        self._recall_alerts()
        self._recall_decisions()
        if not wait_for_table(self.term.table_reader, self.processor.table, self.table_timeout_s,
                              lambda: self.runner.stopping or self._stopping.is_set()):
            return None if self._lease_lost() else 0  # stopped while waiting: nothing was consumed
        code = self.runner.run()
        if code != 0 or not self._lease_lost():
            return code
        return None

    def _recall_lineage(self) -> None:
        pipeline = self.processor.pipeline
        for candidate in self._read_back(self.candidates_topic, self.candidates_serde,
                                         "candidate lineage", "staleness uses deployment times") or []:
            if candidate.get("pipeline") == pipeline.name and candidate.get("model_name") == pipeline.model.name:
                self.processor.remember_candidate(candidate)

    def _recall_alerts(self) -> None:
        self.processor.staleness.recall(self._read_back(self.alerts_topic, self.alerts_serde, "the alerts raised "
                                                        "before", "a standing one may be raised again") or [])

    def _recall_decisions(self) -> None:
        """The end of the decisions topic: what a stop cut short is completed from it (recovery.py)."""
        pipeline = self.processor.pipeline
        unreadable: list[SkippedRecord] = []
        decisions = self._read_back(self.decisions_topic, self.decisions_serde, "the last decisions",
                                    "a decision a stop cut short is not completed", tail=DECISIONS_TAIL,
                                    skipped=unreadable)
        if decisions is None:
            return
        self.processor.recall_decisions(
            LoggedDecisions.of_tail(decisions, len(unreadable), pipeline.name, pipeline.model.name))

    def _read_back(self, topic: str, serde: Serde, what: str, without_it: str, *,
                   tail: int | None = None, skipped: list[SkippedRecord] | None = None) -> list[dict] | None:
        """Every value of ``topic`` (tombstones left out); None, with a warning, if it cannot be read."""
        try:
            records = read_topic(self.kafka, topic, serde.decode, tail=tail, skipped=skipped)
        except StreamloopError as exc:
            log.warning("cannot read back %s (%s); %s", what, exc, without_it)
            return None
        return [value for _key, value in records if value]


def wait_for_table(reader: CompactedTopicReader, table: DeploymentTable, timeout_s: float,
                   stopped: Callable[[], bool]) -> bool:
    """Mark the table ready once the reader caught up: an empty table then means "no champion".

    Nothing is consumed before: a candidate registered, or a challenger judged, against a table
    read only in part would be judged against a champion that is no longer one, or without the
    predecessor a rollback watch needs. The records wait in their topics. An error is logged
    every ``timeout_s``; False if the service is stopped while it waits (``wait_until_read``).
    """
    if not wait_until_read(reader, stopped, log_every_s=timeout_s, what="deployments table", level=logging.ERROR):
        return False
    table.ready = True
    return True


def build(settings: PublisherSettings, install_global_telemetry: bool = True) -> PublisherApp:
    ctx = ServiceContext.load(SERVICE, settings.common)
    store = settings.artifacts.artifact_store()
    verifier = settings.artifacts.deployment_verifier()
    telemetry = configure_telemetry(settings.telemetry.for_service(SERVICE), install_global=install_global_telemetry)
    topics = PublisherTopics(
        model_candidates=ctx.topic("model_candidates").name, labeled_examples=ctx.topic("labeled_examples").name,
        metrics=ctx.topic("metrics").name, model_deployments=ctx.topic("model_deployments").name,
        model_decisions=ctx.topic("model_decisions").name, alerts=ctx.topic("alerts").name,
    )
    policy = PublisherPolicy(
        judging=JudgingPolicy(paired_test=settings.paired_test, max_shadows=settings.max_shadows,
                              rollback_watch_samples=settings.rollback_watch_samples),
        bootstrap=settings.bootstrap, ledger_events=settings.ledger_events,
        staleness_interval_ms=settings.staleness_interval, min_metric_samples=settings.min_metric_samples,
        score_held_out=settings.score_held_out,
    )

    def new_term() -> PublisherTerm:
        table = DeploymentTable()
        reader = CompactedTopicReader(settings.common.kafka, topics.model_deployments, ctx.serde("model_deployments"),
                                      on_change=table.apply, name=f"{SERVICE}-deployments", metrics=telemetry.metrics,
                                      verify=verifier, on_refused=table.refuse)
        processor = PublisherProcessor(ctx.pipeline, topics, table, store, policy=policy, metrics=telemetry.metrics,
                                       read_retirement=reader.retirement)
        runner = ctx.runner(processor, inputs=["model_candidates", "labeled_examples", "metrics"],
                            outputs=["model_deployments", "model_decisions", "alerts"], metrics=telemetry.metrics)
        return PublisherTerm(processor, runner, reader)

    lease = None
    if settings.standby_lease:
        # The decisions topic has one partition, and only the active replica writes it.
        lease = LeaderLease(settings.common.kafka, lease_group(ctx.group_id), topics.model_decisions,
                            settings.lease_poll_s)
    return PublisherApp(new_term, telemetry, settings.common.kafka,
                        candidates=(topics.model_candidates, ctx.serde("model_candidates")),
                        alerts=(topics.alerts, ctx.serde("alerts")),
                        decisions=(topics.model_decisions, ctx.serde("model_decisions")),
                        table_timeout_s=settings.table_timeout_s,
                        lease=lease)


def main(startup: Startup | None = None) -> int:
    app = start_service(SERVICE, PublisherSettings, build, startup)
    if isinstance(app, int):
        return app
    app.install_signal_handlers()
    return app.run()
