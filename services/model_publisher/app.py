"""The model publisher's composition root: the only module that wires its I/O.

Reads ``model_candidates``, ``labeled_examples`` and ``metrics`` through the stage runner and its
own registry (the compacted deployments topic) through a ``CompactedTopicReader``; at start-up it
reads the candidates topic back for the lineage of the versions in the registry. Writes
``model_deployments``, ``model_decisions`` and ``alerts``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from services.model_publisher.judging import JudgingPolicy
from services.model_publisher.publisher import PublisherPolicy, PublisherProcessor, PublisherTopics
from services.model_publisher.settings import PublisherSettings
from streamloop.errors import StreamloopError
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.runner import StageRunner
from streamloop.kafka.table_reader import CompactedTopicReader
from streamloop.ml.registry import DeploymentTable
from streamloop.ml.registry_client import read_topic
from streamloop.serde import Serde
from streamloop.service.context import ServiceContext
from streamloop.service.entrypoint import start_service
from streamloop.telemetry import Telemetry, configure_telemetry

SERVICE = "model-publisher"
log = logging.getLogger(__name__)


@dataclass
class PublisherApp:
    runner: StageRunner
    processor: PublisherProcessor
    table_reader: CompactedTopicReader
    telemetry: Telemetry
    kafka: KafkaSettings
    candidates_topic: str
    candidates_serde: Serde
    table_timeout_s: float

    def run(self) -> int:
        self.table_reader.start()
        try:
            self._recall_lineage()
            wait_for_table(self.table_reader, self.processor.table, self.table_timeout_s)
            return self.runner.run()
        finally:
            self.table_reader.stop()
            self.telemetry.shutdown()

    def _recall_lineage(self) -> None:
        pipeline = self.processor.pipeline
        try:
            records = read_topic(self.kafka, self.candidates_topic, self.candidates_serde.decode)
        except StreamloopError as exc:
            log.warning("cannot read back candidate lineage (%s); staleness uses deployment times", exc)
            return
        for _key, candidate in records:
            if candidate and candidate.get("pipeline") == pipeline.name and \
                    candidate.get("model_name") == pipeline.model.name:
                self.processor.remember_candidate(candidate)

    def stop(self) -> None:
        self.runner.stop()


def wait_for_table(reader: CompactedTopicReader, table: DeploymentTable, timeout_s: float) -> None:
    """Mark the table ready once the reader caught up: an empty table then means "no champion".

    Waits up to ``timeout_s``; after that the runner starts anyway and a watcher thread marks the
    table ready later (until then nothing is bootstrapped).
    """
    if reader.wait_until_caught_up(timeout_s):
        table.ready = True
        return
    log.error("deployments table not caught up after %.0fs; no bootstrap until it is", timeout_s)

    def mark_when_caught_up() -> None:
        if reader.wait_until_caught_up(None):
            table.ready = True

    threading.Thread(target=mark_when_caught_up, name="table-ready", daemon=True).start()


def build(settings: PublisherSettings, install_global_telemetry: bool = True) -> PublisherApp:
    ctx = ServiceContext.load(SERVICE, settings.common)
    store = settings.artifacts.artifact_store()
    telemetry = configure_telemetry(settings.telemetry.for_service(SERVICE), install_global=install_global_telemetry)
    table = DeploymentTable()
    reader = CompactedTopicReader(settings.common.kafka, ctx.topic("model_deployments").name,
                                  ctx.serde("model_deployments"), on_change=table.apply, name=f"{SERVICE}-deployments")
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
    processor = PublisherProcessor(ctx.pipeline, topics, table, store, policy=policy, metrics=telemetry.metrics)
    runner = ctx.runner(processor, inputs=["model_candidates", "labeled_examples", "metrics"],
                        outputs=["model_deployments", "model_decisions", "alerts"], metrics=telemetry.metrics)
    return PublisherApp(runner, processor, reader, telemetry, settings.common.kafka,
                        topics.model_candidates, ctx.serde("model_candidates"), settings.table_timeout_s)



def main() -> int:
    app = start_service(SERVICE, PublisherSettings, build)
    if isinstance(app, int):
        return app
    app.runner.install_signal_handlers()
    return app.run()
