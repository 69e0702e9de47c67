"""The retrainer's composition root: the only module that wires its I/O.

Reads ``labeled_examples`` and ``drift_events`` through the stage runner, the deployments table
through a ``CompactedTopicReader``, replays rebuild windows with a ``KafkaWindowReader``, reads back
after a restart what the online challenger had learned (``KafkaResume``) and writes
``model_candidates``; artifacts go to the signed artifact store.

One online challenger must see every label: with ``RETRAINER_STANDBY_LEASE`` (default) every
replica first waits for the lease (``streamloop.kafka.lease``), so a second replica is a standby
that takes over when the active one goes away, not a second challenger learning half the labels
and rebuilding on every drift beside the first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from services.retrainer.processor import RetrainerProcessor, RetrainerTopics
from services.retrainer.rebuild_policy import InlineExecutor, RebuildPolicy
from services.retrainer.resume import KafkaResume, ResumeCancelled
from services.retrainer.settings import RetrainerSettings, check_against_spec
from services.retrainer.window import KafkaWindowReader
from streamloop.kafka.group_history import GroupHistory
from streamloop.kafka.lease import LeaderLease, lease_group
from streamloop.kafka.runner import StageRunner
from streamloop.kafka.table_reader import CompactedTopicReader, wait_until_read
from streamloop.ml.registry import DeploymentTable
from streamloop.service.context import ServiceContext
from streamloop.service.entrypoint import start_service
from streamloop.service.leased import LeasedService
from streamloop.startup import Startup
from streamloop.telemetry import Telemetry, configure_telemetry

SERVICE = "retrainer"
log = logging.getLogger(__name__)


@dataclass
class RetrainerTerm:
    """What one term as the active replica learns with, built anew for each: the replica that held
    the lease meanwhile learned and published on, so the challenger starts as after a restart, its
    line resumed from the topics, and a rebuild of the last term is not waited for."""

    processor: RetrainerProcessor
    runner: StageRunner
    executor: Executor

    def __post_init__(self) -> None:
        # The term is over once its runner stops: a stop, or the lease lost (LeasedService stops
        # the runner for both). Its resume, in prepare() or at a first champion's batch, is then
        # given up between two slices, not read and learned to its end (up to
        # RETRAINER_RESUME_MAX_LABELS) before the stop takes or while another replica learns on.
        self.processor.cancelled = lambda: self.runner.stopping


class RetrainerApp(LeasedService[RetrainerTerm]):
    """Waits for the lease, then learns until stopped or the lease is lost (then waits again).

    The deployments table is read from the start, standby included: it is only read, so a
    takeover finds it up to date. Nothing is consumed until it is read to its end (``_wait_for_table``).
    """

    def __init__(self, new_term: Callable[[], RetrainerTerm], table_reader: CompactedTopicReader,
                 telemetry: Telemetry, table_timeout_s: float, lease: LeaderLease | None = None) -> None:
        super().__init__(new_term, lease)
        self.table_reader = table_reader
        self.telemetry = telemetry
        self.table_timeout_s = table_timeout_s

    @property
    def processor(self) -> RetrainerProcessor:
        return self.term.processor

    def run(self) -> int:
        self.table_reader.start()  # standby included (the class's docstring says why)
        return super().run()

    def _shut_down(self) -> None:
        self.table_reader.stop()
        self.term.executor.shutdown(wait=False, cancel_futures=True)
        self.telemetry.shutdown()

    def _replace_term(self) -> None:
        self.term.executor.shutdown(wait=False, cancel_futures=True)  # the last term's rebuild is not waited for
        super()._replace_term()

    def _run_term(self) -> int | None:
        """One term: the runner's exit code, or None when the lease was lost and the replica waits again."""
        if self._wait_for_table() and self._prepare():
            code = self.runner.run()
            if code != 0:
                return code
        return None if self._lease_lost() else 0

    def _prepare(self) -> bool:
        """Resume the champion's line (``prepare``); False when a stop or a lost lease came during it.

        The resume is given up between two slices of its read and of its learning (the term's
        ``cancelled``), and nothing of it kept: nothing is consumed, committed or published after
        it, and the next term (a fresh processor) resumes the line from the start.
        """
        try:
            self.processor.prepare()
        except ResumeCancelled as exc:
            log.info("resume %s: the term is over (a stop, or the lease lost); nothing of it is kept", exc)
            return False
        # Stopped at the resume's end: joining the group only to leave it would rebalance it twice for nothing.
        return not self._interrupted()

    def _wait_for_table(self) -> bool:
        """Wait until the deployments table is read to its end; False when stopped or the lease is lost first.

        Nothing is consumed before, and the champion's line is not resumed: a table read in part
        may show a champion since replaced, whose line would be resumed in place of the real one's
        (which, once read, restarts the learner with nothing). Starting anyway and loading the
        champion at a later batch ran the resume (up to RETRAINER_RESUME_MAX_LABELS labels read
        and learned) inside that batch, past the group's poll interval, and consumed labels it
        could not learn while the reader lagged. They wait in their topic; a warning every
        ``table_timeout_s`` says how long it has waited (``wait_until_read``).
        """
        return wait_until_read(self.table_reader, self._interrupted, log_every_s=self.table_timeout_s,
                               what="deployments table")

    def _interrupted(self) -> bool:
        return self._stopping.is_set() or (self.lease is not None and self.lease.lost)


def build(settings: RetrainerSettings, install_global_telemetry: bool = True) -> RetrainerApp:
    ctx = ServiceContext.load(SERVICE, settings.common)
    check_against_spec(settings, ctx.pipeline.retrain)
    store = settings.artifacts.artifact_store()
    telemetry = configure_telemetry(settings.telemetry.for_service(SERVICE), install_global=install_global_telemetry)
    table = DeploymentTable()

    def table_read() -> None:
        # Set by the reader as it catches up, before the start-up wait sees it has: the processor
        # loads no champion from a table read in part (its own guard, besides the wait).
        table.ready = True

    deployments = ctx.topic("model_deployments").name
    reader = CompactedTopicReader(settings.common.kafka, deployments, ctx.serde("model_deployments"),
                                  on_change=table.apply, name=f"{SERVICE}-deployments", on_caught_up=table_read,
                                  metrics=telemetry.metrics, verify=settings.artifacts.deployment_verifier())
    window = KafkaWindowReader(settings.common.kafka, ctx.topic("labeled_examples").name,
                               ctx.serde("labeled_examples"), timeout_s=settings.window_read_timeout_s)
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

    def new_term() -> RetrainerTerm:
        executor: Executor = ThreadPoolExecutor(1, thread_name_prefix="rebuild") if settings.rebuild_in_background \
            else InlineExecutor()
        processor = RetrainerProcessor(ctx.pipeline, topics, table, store, window, policy=policy, executor=executor,
                                       metrics=telemetry.metrics, remember_events=settings.remember_events,
                                       resume=resume, timer_starts=resume.timer_starts,
                                       max_candidate_bytes=settings.common.kafka.message_max_bytes)
        runner = ctx.runner(processor, inputs=["labeled_examples", "drift_events"], outputs=["model_candidates"],
                            metrics=telemetry.metrics)
        return RetrainerTerm(processor, runner, executor)

    lease = None
    if settings.standby_lease:
        # The candidates topic has one partition, and only the active replica writes it.
        lease = LeaderLease(settings.common.kafka, lease_group(ctx.group_id), topics.model_candidates,
                            settings.lease_poll_s)
    return RetrainerApp(new_term, reader, telemetry, settings.table_timeout_s, lease)


def main(startup: Startup | None = None) -> int:
    app = start_service(SERVICE, RetrainerSettings, build, startup)
    if isinstance(app, int):
        return app
    app.install_signal_handlers()
    return app.run()
