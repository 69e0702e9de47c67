"""The online scorer's composition root: the only module that wires Kafka, Redis, gRPC and artifacts.

One process runs three things around one :class:`ModelHolder`:

- a :class:`CompactedTopicReader` of the deployments topic, which loads and swaps models once
  it has read the topic (through a :class:`DeploymentGate`);
- the gRPC server (health NOT_SERVING until a champion is live);
- the stage runner scoring the features topic, started only once a champion is live.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from services.online_scorer.grpc_server import ScoringServer
from services.online_scorer.grpc_service import RequestLimits, ScoringServicer
from services.online_scorer.models import DeploymentGate, ModelHolder
from services.online_scorer.processor import ScoringProcessor
from services.online_scorer.settings import ScorerSettings
from streamloop.contracts import TopicSpec
from streamloop.kafka import KafkaSettings, StageRunner
from streamloop.kafka.exceptions import fatal_producer_error_of, unwrapped_kafka_exceptions
from streamloop.kafka.table_reader import CompactedTopicReader
from streamloop.serde import Serde
from streamloop.service import ServiceContext
from streamloop.service.entrypoint import start_service
from streamloop.startup import Startup
from streamloop.store import RedisFeatureStore
from streamloop.telemetry import ServiceMetrics, Telemetry, configure_telemetry

SERVICE = "online-scorer"

log = logging.getLogger(__name__)


class KafkaAlertPublisher:
    """Sends Alert records on the alerts topic with its own producer (alerts can precede the runner)."""

    def __init__(self, kafka: KafkaSettings, topic: TopicSpec, serde: Serde) -> None:
        self._config = kafka.producer()
        self._producer = Producer(self._config)
        self._topic = topic
        self._serde = serde

    def __call__(self, alert: dict[str, Any]) -> None:
        try:
            self._send(alert)
        except (KafkaException, SystemError) as exc:
            if self._fatal_error_of(exc) is None:
                raise
            # A producer past a fatal error (its idempotence state lost in a broker restart, say)
            # refuses every later alert: the alert in hand goes again on a new one. A bare SystemError
            # from poll() is the error lost in confluent-kafka's callback dispatch when produce() says so.
            log.warning("alert producer: %s; sending the alert again on a new producer", exc)
            self._producer = Producer(self._config)
            self._send(alert)

    def _fatal_error_of(self, exc: BaseException) -> KafkaError | None:
        return fatal_producer_error_of(exc, self._producer, self._topic.name, self._config)

    def _send(self, alert: dict[str, Any]) -> None:
        with unwrapped_kafka_exceptions():  # the model holder reports why an alert was not sent
            self._producer.produce(self._topic.name, key=self._topic.key_of(alert).encode(),
                                   value=self._serde.encode(alert), on_delivery=_report_delivery)
            self._producer.poll(0)

    def close(self, timeout_s: float = 10.0) -> None:
        try:
            with unwrapped_kafka_exceptions():
                undelivered = self._producer.flush(timeout_s)
        except (KafkaException, SystemError) as exc:  # the scorer must still close its store and telemetry
            if isinstance(exc, SystemError) and self._fatal_error_of(exc) is None:
                raise
            log.warning("alert producer flush at shutdown: %s", exc)
            return
        if undelivered:
            log.warning("some alerts were not delivered before shutdown")


def _report_delivery(error: KafkaError | None, message: Message) -> None:
    if error is not None:
        log.error("alert not delivered to %s: %s", message.topic(), error.str())


class ScorerApp:
    """The running scorer; ``run`` blocks until ``stop`` (or a signal) and returns the exit code."""

    def __init__(self, settings: ScorerSettings, ctx: ServiceContext, telemetry: Telemetry, holder: ModelHolder,
                 deployments: DeploymentGate, reader: CompactedTopicReader, server: ScoringServer,
                 runner: StageRunner, alerts: KafkaAlertPublisher, store: RedisFeatureStore) -> None:
        self.settings = settings
        self.ctx = ctx
        self.telemetry = telemetry
        self.holder = holder
        self.deployments = deployments
        self.reader = reader
        self.server = server
        self.runner = runner
        self.alerts = alerts
        self.store = store
        self._stopping = threading.Event()
        self.started = threading.Event()

    @property
    def grpc_address(self) -> str:
        return self.server.address

    def stop(self, *_: object) -> None:
        """Health NOT_SERVING at once; the runner finishes its batch; then the server drains. Signal-safe."""
        self._stopping.set()
        self.server.begin_shutdown()
        self.runner.stop()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self) -> int:
        code = 0
        try:
            self.reader.start()
            self.server.start()
            if self._wait_for_champion():
                self.server.set_serving(True)
                code = self.runner.run(on_started=self.started.set)
        finally:
            self._shutdown()
        return code

    def _wait_for_champion(self) -> bool:
        """Block until the deployments are applied and a champion is live (True) or a stop is
        requested (False), logging progress."""
        started = time.monotonic()
        catch_up_deadline = started + self.settings.deployments_catch_up_s
        next_progress_s = 30.0
        log.info("reading %s to its end before applying any deployment (at most %.0f s)", self.reader.topic,
                 self.settings.deployments_catch_up_s)
        told_no_champion = False
        while not self._stopping.is_set():
            if not self.deployments.is_open:
                self._open_deployments_once_read(catch_up_deadline)
                continue
            if not told_no_champion and self.holder.current.champion is None:
                told_no_champion = True  # at once, not 30 s on: the operator sees what it waits for
                log.info("no champion live yet (none deployed, or it did not load); waiting for one before "
                         "consuming %s", self.ctx.topic("features").name)
            if self.holder.wait_for_champion(1.0):
                champion = self.holder.current.champion
                if champion is None:  # retired between the wait and this read: wait again
                    continue
                log.info("champion %s version %s is live; scoring %s", champion.name, champion.version,
                         self.ctx.topic("features").name)
                return not self._stopping.is_set()
            waited_s = time.monotonic() - started
            if waited_s >= next_progress_s:
                next_progress_s += 30.0
                log.info("no champion deployed yet after %ds (the model publisher deploys the first one)",
                         int(waited_s))
        return False

    def _open_deployments_once_read(self, deadline: float) -> None:
        """Apply the deployments once the reader has read the topic to its end, or at the deadline.

        Until then a batch read may hold a champion since replaced and shadows since retired. Past
        the deadline, serving the champion read so far beats not serving at all: a reader that
        cannot get to the end may never get there, and each record read later still swaps its
        model in as it arrives.
        """
        caught_up = self.reader.wait_until_caught_up(min(1.0, max(0.0, deadline - time.monotonic())))
        if self._stopping.is_set():
            return
        if caught_up:
            log.info("deployments read: %d slots", len(self.reader.snapshot()))
        elif time.monotonic() >= deadline:
            log.warning("deployments topic not read to its end after %.1fs; applying the %d slots read so far, "
                        "and later ones as they are read (the champion served first may be one since replaced)",
                        self.settings.deployments_catch_up_s, len(self.reader.snapshot()))
        else:
            return
        self.deployments.open(self.reader.snapshot)

    def _shutdown(self) -> None:
        self.server.stop(self.settings.grpc_grace_s)
        self.reader.stop()
        self.alerts.close()
        self.store.close()
        self.telemetry.shutdown()
        log.info("stopped")


def grpc_server(settings: ScorerSettings, servicer: ScoringServicer, metrics: ServiceMetrics | None) -> ScoringServer:
    """The gRPC server the settings describe (bound, not started)."""
    token = settings.auth_token.get_secret_value() if settings.auth_token else None
    server = ScoringServer(servicer, host=settings.grpc_host, port=settings.grpc_port, workers=settings.grpc_workers,
                           max_concurrent_rpcs=settings.grpc_max_concurrent_rpcs, metrics=metrics,
                           tls=settings.server_tls(), auth_token=token, reflection_open=settings.reflection_open,
                           health_port=settings.plaintext_health_port())
    if token is None and settings.grpc_host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("gRPC listens on %s with no bearer token (set SCORER_AUTH_TOKEN)", settings.grpc_host)
    return server


def build(settings: ScorerSettings, telemetry: Telemetry | None = None) -> ScorerApp:
    """Wire the scorer; raises StreamloopError (or ValidationError) on a bad spec or setting."""
    ctx = ServiceContext.load(SERVICE, settings.common)
    artifacts = settings.artifacts.artifact_store()  # fails on a missing signing key before anything starts
    if telemetry is None:
        telemetry = configure_telemetry(settings.telemetry.for_service(SERVICE))
    metrics = telemetry.metrics
    kafka = settings.common.kafka
    alerts = KafkaAlertPublisher(kafka, ctx.topic("alerts"), ctx.serde("alerts"))
    holder = ModelHolder(ctx.pipeline, artifacts, alerts=alerts, metrics=metrics,
                         service=SERVICE, instance=settings.common.instance_id)
    deployments = DeploymentGate(holder)
    reader = CompactedTopicReader(kafka, ctx.topic("model_deployments").name, ctx.serde("model_deployments"),
                                  on_change=deployments.on_deployment, name=f"{SERVICE}-deployments",
                                  metrics=metrics, verify=settings.artifacts.deployment_verifier())
    redis = settings.redis
    store = RedisFeatureStore(redis.client(), ctx.pipeline.name, ttl_ms=ctx.pipeline.features.ttl,
                              key_prefix=redis.key_prefix, owns_client=True)
    limits = RequestLimits(settings.max_request_features, settings.max_batch_entities, settings.max_entity_id_length)
    servicer = ScoringServicer(ctx.pipeline, holder, store, group=settings.feature_group, limits=limits,
                               metrics=metrics)
    server = grpc_server(settings, servicer, metrics)
    processor = ScoringProcessor(ctx.pipeline, holder, features=ctx.topic("features"),
                                 predictions=ctx.topic("predictions"),
                                 shadow_predictions=ctx.topic("shadow_predictions"), metrics=metrics)
    runner = ctx.runner(processor, inputs=["features"], outputs=["predictions", "shadow_predictions"],
                        metrics=metrics)
    return ScorerApp(settings, ctx, telemetry, holder, deployments, reader, server, runner, alerts, store)


def main(startup: Startup | None = None) -> int:
    app = start_service(SERVICE, ScorerSettings, build, startup)
    if isinstance(app, int):
        return app
    app.install_signal_handlers()
    return app.run()
