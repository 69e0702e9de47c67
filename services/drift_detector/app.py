"""The drift detector's composition root: the only module that wires I/O.

One active replica per pipeline (its windows are global, not per entity): with
``DRIFT_STANDBY_LEASE`` (default) every replica first waits for the lease, so a second replica is
a hot standby, not a second consumer splitting the partitions.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

from services.drift_detector.history import KafkaHistory, TableChampions
from services.drift_detector.metrics import PrometheusDriftMetrics
from services.drift_detector.processor import DriftProcessor, DriftTopics
from services.drift_detector.settings import SERVICE, DriftSettings
from streamloop.kafka.lease import LeaderLease, lease_group
from streamloop.kafka.runner import StageRunner
from streamloop.kafka.table_reader import CompactedTopicReader
from streamloop.service.context import ServiceContext
from streamloop.service.entrypoint import start_service
from streamloop.startup import Startup
from streamloop.telemetry import Telemetry, configure_telemetry

log = logging.getLogger(__name__)

INPUTS = ["features", "predictions", "labeled_examples"]
OUTPUTS = ["drift_events"]
DEPLOYMENTS_POLL_S = 0.5  # how soon a stop ends the wait for the deployments table


class DriftService:
    """Waits for the lease, then runs the stage runner until stopped or the lease is lost."""

    def __init__(self, ctx: ServiceContext, settings: DriftSettings, telemetry: Telemetry,
                 deployments: CompactedTopicReader, champions: TableChampions, history: KafkaHistory | None,
                 lease: LeaderLease | None) -> None:
        self.ctx = ctx
        self.settings = settings
        self.telemetry = telemetry
        self.deployments = deployments
        self.champions = champions
        self.history = history
        self.lease = lease
        self.metrics = PrometheusDriftMetrics(telemetry.metrics)
        self.topics = DriftTopics(*(ctx.topic(role).name for role in INPUTS + OUTPUTS))
        self.runner: StageRunner | None = None
        self.processor: DriftProcessor | None = None
        self._stopping = threading.Event()

    def stop(self, *_: object) -> None:
        self._stopping.set()
        if self.runner is not None:
            self.runner.stop()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self, on_started: Callable[[], None] | None = None) -> int:
        try:
            self._read_deployments()
            return self._serve(on_started)
        finally:
            if self.lease is not None:
                self.lease.close()  # a dynamic member leaves the group: a standby takes over at once

    def _read_deployments(self) -> None:
        # Here, not in build: start_service checks the broker once build returns, and this wait
        # (DRIFT_HISTORY_TIMEOUT_S) told of an unreachable broker only after it, as a warning that
        # the deployments were not read. In slices: the signal handlers are installed by now, so a
        # SIGTERM no longer ends the process at once, and must not wait for the whole timeout.
        self.deployments.start()
        deadline = time.monotonic() + self.settings.history_timeout_s
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if self.deployments.wait_until_caught_up(max(min(remaining, DEPLOYMENTS_POLL_S), 0.0)):
                return
            if remaining <= DEPLOYMENTS_POLL_S:
                log.warning("deployments not read to the end within %gs; the champion may come later",
                            self.settings.history_timeout_s)
                return

    def _serve(self, on_started: Callable[[], None] | None) -> int:
        """The runner's exit code (non-zero after a fatal consumer error); 0 when stopped before it ran."""
        code = 0
        while not self._stopping.is_set():
            if self.lease is not None and not self.lease.acquire(self._stopping):
                break
            # A fresh processor per term: its state is rebuilt by replay when partitions arrive.
            self.processor = DriftProcessor(self.ctx.pipeline, self.topics, self.settings, self.champions,
                                            self.history, self.metrics)
            self.runner = self.ctx.runner(self.processor, inputs=INPUTS, outputs=OUTPUTS,
                                          metrics=self.telemetry.metrics)
            if self._stopping.is_set():
                break
            if self.lease is not None:
                self.lease.watch(on_lost=self.runner.stop)
            code = self.runner.run(on_started)
            on_started = None
            if code != 0 or self.lease is None or not self.lease.lost:
                break
            self.lease.unwatch()
        return code

    def close(self) -> None:
        if self.lease is not None:
            self.lease.close()
        self.deployments.stop()
        self.telemetry.shutdown()


def build(settings: DriftSettings) -> DriftService:
    ctx = ServiceContext.load(SERVICE, settings.common)
    telemetry = configure_telemetry(settings.telemetry.for_service(SERVICE))
    kafka = settings.common.kafka
    spec = ctx.pipeline

    topic = ctx.topic("model_deployments")
    deployments = CompactedTopicReader(kafka, topic.name, ctx.serde("model_deployments"),
                                       name=f"{SERVICE}-deployments", metrics=telemetry.metrics)
    champions = TableChampions(
        deployments, topic.key_of({"pipeline": spec.name, "model_name": spec.model.name, "slot": "champion"}))

    history = None
    if settings.replay_on_start:
        serdes = {ctx.topic(role).name: ctx.serde(role) for role in INPUTS + OUTPUTS}
        history = KafkaHistory.of_group(kafka, ctx.group_id, serdes, settings.history_timeout_s)
    lease = None
    if settings.standby_lease:
        lease = LeaderLease(kafka, lease_group(ctx.group_id), ctx.topic("drift_events").name, settings.lease_poll_s)
    return DriftService(ctx, settings, telemetry, deployments, champions, history, lease)


def main(startup: Startup | None = None) -> int:
    service = start_service(SERVICE, DriftSettings, build, startup)
    if isinstance(service, int):
        return service
    service.install_signal_handlers()
    try:
        return service.run()
    finally:
        service.close()
