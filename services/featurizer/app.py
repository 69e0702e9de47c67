"""The featurizer's composition root: the only module that wires Kafka, Redis and telemetry.

One stage runner consumes the pipeline's input topic (role ``input``) and produces the
``features`` topic; the processor writes each entity's latest row to Redis and, on assignment,
rebuilds its windows by replaying the input topic through :class:`KafkaPartitionHistory`.
"""

from __future__ import annotations

import logging
import signal
import threading

from services.featurizer.exceptions import RestoreCancelled, RestoreError
from services.featurizer.history import KafkaPartitionHistory
from services.featurizer.processor import FeaturizerProcessor
from services.featurizer.settings import FeaturizerSettings
from streamloop.kafka import StageRunner
from streamloop.service import ServiceContext
from streamloop.service.entrypoint import start_service
from streamloop.startup import Startup
from streamloop.store import RedisFeatureStore
from streamloop.telemetry import Telemetry, configure_telemetry

SERVICE = "featurizer"

log = logging.getLogger(__name__)


class FeaturizerApp:
    """The running featurizer; ``run`` blocks until ``stop`` (or a signal) and returns the exit code."""

    def __init__(self, ctx: ServiceContext, telemetry: Telemetry, processor: FeaturizerProcessor,
                 runner: StageRunner, store: RedisFeatureStore) -> None:
        self.ctx = ctx
        self.telemetry = telemetry
        self.processor = processor
        self.runner = runner
        self.store = store
        self.started = threading.Event()

    def stop(self, *_: object) -> None:
        """Finish the batch, deliver, commit and leave; safe from signal handlers and other threads."""
        self.runner.stop()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self) -> int:
        try:
            log.info("featurizing %s into %s (pipeline %s)", self.ctx.topic("input").name,
                     self.ctx.topic("features").name, self.ctx.pipeline.name)
            self.processor.writer.start()
            return self.runner.run(on_started=self.started.set)
        finally:
            # One last write of queued rows; any the store cannot take are rewritten after a restart.
            self.processor.writer.stop()
            self.store.close()
            self.telemetry.shutdown()


def build(settings: FeaturizerSettings, telemetry: Telemetry | None = None) -> FeaturizerApp:
    """Wire the featurizer; raises StreamloopError (or ValidationError) on a bad spec or setting."""
    ctx = ServiceContext.load(SERVICE, settings.common)
    input_topic = ctx.topic("input")
    schema = input_topic.schema
    assert schema is not None  # the catalog always resolves the input schema
    if telemetry is None:
        telemetry = configure_telemetry(settings.telemetry.for_service(SERVICE))
    redis = settings.redis
    store = RedisFeatureStore(redis.client(), ctx.pipeline.name, ttl_ms=ctx.pipeline.features.ttl,
                              key_prefix=redis.key_prefix, owns_client=True)
    history = KafkaPartitionHistory(settings.common.kafka, ctx.group_id, {input_topic.name: ctx.serde("input")},
                                    timeout_s=settings.restore_timeout_s)
    processor = FeaturizerProcessor(
        ctx.pipeline, schema, features_topic=ctx.topic("features").name, store=store, history=history,
        metrics=telemetry.metrics, group=settings.feature_group, disorder_ms=settings.disorder_ms,
        sweep_interval_s=settings.sweep_interval_s,
    )
    runner = ctx.runner(processor, inputs=["input"], outputs=["features"], metrics=telemetry.metrics)
    history.cancelled = lambda: runner.stopping
    return FeaturizerApp(ctx, telemetry, processor, runner, store)


def main(startup: Startup | None = None) -> int:
    app = start_service(SERVICE, FeaturizerSettings, build, startup)
    if isinstance(app, int):
        return app
    app.install_signal_handlers()
    try:
        return app.run()
    except RestoreCancelled:
        log.info("stopped while rebuilding state; the next owner rebuilds it")
        return 0
    except RestoreError as exc:
        log.error("%s; exiting so that a restart tries again", exc)
        return 1

