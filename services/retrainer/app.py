"""The retrainer's composition root: the only module that wires its I/O.

Reads ``labeled_examples`` and ``drift_events`` through the stage runner, the deployments table
through a ``CompactedTopicReader``, replays rebuild windows with a ``KafkaWindowReader``, reads back
after a restart what the online challenger had learned (``KafkaResume``) and writes
``model_candidates``; artifacts go to the signed artifact store.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from services.retrainer.processor import RetrainerProcessor, RetrainerTopics
from services.retrainer.rebuild_policy import InlineExecutor, RebuildPolicy
from services.retrainer.resume import KafkaResume
from services.retrainer.settings import RetrainerSettings, check_against_spec
from services.retrainer.window import KafkaWindowReader
from streamloop.kafka.group_history import GroupHistory
from streamloop.kafka.runner import StageRunner
from streamloop.kafka.table_reader import CompactedTopicReader
from streamloop.ml.registry import DeploymentTable
from streamloop.service.context import ServiceContext
from streamloop.service.entrypoint import start_service
from streamloop.telemetry import Telemetry, configure_telemetry

SERVICE = "retrainer"
log = logging.getLogger(__name__)


@dataclass
class RetrainerApp:
    runner: StageRunner
    processor: RetrainerProcessor
    table_reader: CompactedTopicReader
    executor: Executor
    telemetry: Telemetry
    table_timeout_s: float

    def run(self) -> int:
        self.table_reader.start()
        try:
            if not self.table_reader.wait_until_caught_up(self.table_timeout_s):
                log.warning("deployments table not caught up after %.0fs; starting anyway, with no champion loaded "
                            "until it is", self.table_timeout_s)
            self.processor.prepare()
            return self.runner.run()
        finally:
            self.table_reader.stop()
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.telemetry.shutdown()

    def stop(self) -> None:
        self.runner.stop()


def build(settings: RetrainerSettings, install_global_telemetry: bool = True) -> RetrainerApp:
    ctx = ServiceContext.load(SERVICE, settings.common)
    check_against_spec(settings, ctx.pipeline.retrain)
    store = settings.artifacts.artifact_store()
    telemetry = configure_telemetry(settings.telemetry.for_service(SERVICE), install_global=install_global_telemetry)
    table = DeploymentTable()

    def table_read() -> None:
        # Set by the reader, not after the wait above: a table read later than RETRAINER_TABLE_TIMEOUT_S
        # must still become ready, or no champion would ever load.
        table.ready = True

    deployments = ctx.topic("model_deployments").name
    reader = CompactedTopicReader(settings.common.kafka, deployments, ctx.serde("model_deployments"),
                                  on_change=table.apply, name=f"{SERVICE}-deployments", on_caught_up=table_read)
    window = KafkaWindowReader(settings.common.kafka, ctx.topic("labeled_examples").name,
                               ctx.serde("labeled_examples"), timeout_s=settings.window_read_timeout_s)
    executor: Executor = ThreadPoolExecutor(1, thread_name_prefix="rebuild") if settings.rebuild_in_background \
        else InlineExecutor()
    policy = RebuildPolicy(
        min_severity=settings.rebuild_min_severity, drift_kinds=tuple(settings.rebuild_drift_kinds),
        min_interval_ms=settings.rebuild_min_interval, min_examples=settings.rebuild_min_examples,
        online_min_labels=settings.online_min_labels,
    )
    topics = RetrainerTopics(ctx.topic("labeled_examples").name, ctx.topic("drift_events").name,
                             ctx.topic("model_candidates").name)
    history = GroupHistory(settings.common.kafka, ctx.group_id, {
        topics.labeled_examples: ctx.serde("labeled_examples"), topics.model_candidates: ctx.serde("model_candidates"),
    }, timeout_s=settings.resume_timeout_s)
    resume = KafkaResume(history, labeled_topic=topics.labeled_examples, candidates_topic=topics.model_candidates,
                         pipeline=ctx.pipeline.name, limit=settings.resume_max_labels)
    processor = RetrainerProcessor(ctx.pipeline, topics, table, store, window, policy=policy, executor=executor,
                                   metrics=telemetry.metrics, remember_events=settings.remember_events, resume=resume,
                                   timer_starts=resume.timer_starts,
                                   max_candidate_bytes=settings.common.kafka.message_max_bytes)
    runner = ctx.runner(processor, inputs=["labeled_examples", "drift_events"], outputs=["model_candidates"],
                        metrics=telemetry.metrics)
    return RetrainerApp(runner, processor, reader, executor, telemetry, settings.table_timeout_s)


def main() -> int:
    app = start_service(SERVICE, RetrainerSettings, build)
    if isinstance(app, int):
        return app
    app.runner.install_signal_handlers()
    return app.run()
