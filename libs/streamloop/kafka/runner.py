"""The one consume -> process -> produce loop every streamloop service runs.

Delivery guarantee: at-least-once, everywhere. A batch's input offsets are committed only after
every output of the batch (and every dead letter) is acknowledged by the broker (acks=all,
idempotent producer). A crash between produce and commit replays the batch, so processors must
tolerate seeing a record twice (stateful ones remember the highest offset applied per partition).

Nothing is lost: a record that cannot be decoded, breaks a rule or makes the processor raise goes
to ``<topic>.dlq`` with its original bytes and Kafka Connect's error headers, and the rest of the
batch flows on (``streamloop.kafka.poison_records``). Getting outputs and dead letters acknowledged,
through a fatal producer error or a record Kafka refuses, is ``streamloop.kafka.delivery``'s part.

Beside the loop: its knobs and topics (``runner_settings``), what it reports (``runner_metrics``),
and its side of a rebalance with the lag of the partitions it holds (``partition_assignment``).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streamloop.errors import DependencyUnavailable
from streamloop.kafka import dead_letters
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.delivery import Delivery
from streamloop.kafka.delivery_records import DROPPED_INVALID, DeadLetter, Encoded, Identity
from streamloop.kafka.pacing import FetchPacer
from streamloop.kafka.partition_assignment import PartitionAssignment
from streamloop.kafka.poison_records import PoisonRecordIsolation
from streamloop.kafka.records import ConsumedRecord, Headers, OutgoingRecord, Processor, ProcessResult
from streamloop.kafka.resend_window import BROKER_UNREACHABLE
from streamloop.kafka.runner_metrics import RunnerMetrics, RunnerStats, _NoMetrics
from streamloop.kafka.runner_settings import RunnerSettings, StageTopics
from streamloop.serde import SerdeError
from streamloop.telemetry.tracing import KafkaTracer, inject_headers, is_sampled

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"


class _Abandoned(Exception):  # noqa: N818 - a signal inside the runner, never raised to callers
    """The runner was stopped while a dependency was unavailable: the batch is left uncommitted."""


class StageRunner(PartitionAssignment, PoisonRecordIsolation):
    """Runs one processor as a member of a consumer group until stopped."""

    def __init__(
        self,
        service: str,
        group_id: str,
        kafka: KafkaSettings,
        topics: StageTopics,
        processor: Processor,
        settings: RunnerSettings | None = None,
        metrics: RunnerMetrics | None = None,
        tracer: KafkaTracer | None = None,
        consumer_overrides: dict[str, Any] | None = None,
        producer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.service = service
        self.group_id = group_id
        self.kafka = kafka
        self.topics = topics
        self.processor = processor
        self.settings = settings or RunnerSettings()
        self.metrics: RunnerMetrics = metrics or _NoMetrics()
        self.tracer = tracer
        self.stats = RunnerStats()
        self._consumer_config = kafka.consumer(group_id, error_cb=self._on_consumer_client_error,
                                               **(consumer_overrides or {}))
        self._stopping = threading.Event()
        self.delivery = Delivery(service, kafka, producer_overrides or {}, settings=self.settings,
                                 dead_letter_topics=topics.dead_letters, stats=self.stats, metrics=self.metrics,
                                 stopping=self._stopping, report_client_error=self._on_producer_client_error)
        self._consumer_fatal: KafkaError | None = None
        self._last_unreachable_log = 0.0
        self._assigned: set[tuple[str, int]] = set()
        # For kafka_consumergroup_group_lag_seconds, per partition: the Kafka timestamp (ms) of the
        # last record consumed, and when (epoch s) it was last seen caught up or was assigned.
        self._last_consumed_ms: dict[tuple[str, int], int] = {}
        self._caught_up_at: dict[tuple[str, int], float] = {}
        self._assigned_at: dict[tuple[str, int], float] = {}
        # When run() subscribed, until the first assignment: how long the group join took is logged.
        self._joining_since: float | None = None
        self.consumer: Consumer | None = None
        self.pacer: FetchPacer | None = None
        self._next_tick = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        """Finish the current batch, commit, and leave; safe from signal handlers and threads."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self, on_started: Callable[[], None] | None = None) -> int:
        self.delivery.open()
        self.consumer = Consumer(self._consumer_config)
        self.pacer = FetchPacer(self.consumer, self.kafka.idle_fetch_pause_ms / 1000,
                                self.kafka.idle_fetch_listen_ms / 1000)
        self.consumer.subscribe(
            list(self.topics.inputs), on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        self._joining_since = time.monotonic()
        log.info("%s: consuming %s as group %s; waiting for the group to assign partitions", self.service,
                 ", ".join(self.topics.inputs), self.group_id)
        if on_started:
            on_started()
        next_lag_report = self._next_tick = time.monotonic()
        try:
            while not self.stopping:
                try:
                    self._turn()
                except _Abandoned as exc:
                    # Nothing of the batch was committed: its owner reads it again.
                    log.warning("%s: stopped while %s; the batch will be replayed", self.service, exc)
                    break
                now = time.monotonic()
                if now >= next_lag_report:
                    next_lag_report = now + self.settings.lag_report_interval_s
                    self._report_lag()
        finally:
            self._shutdown()
        # A consumer that hit a fatal error never consumes again: exit non-zero so that the
        # supervisor (or the orchestrator) restarts the service, which rejoins the group.
        return 1 if self._consumer_fatal is not None else 0

    def _turn(self) -> None:
        """One batch, if any came, then the processor's tick when it is due (none after a batch left undelivered)."""
        # The producer's callbacks, served at every turn (a poll(0): no wait): its error callback then
        # reports a broker that went away while the stage has nothing to send, which is where the
        # re-send window after a fatal producer error ends (resend_window.py).
        self.delivery.serve()
        messages = self.pacer.consume(self.settings.batch_size, self.settings.poll_timeout_s)
        if messages and not self._run_batch(messages):
            # Stopped before the batch was delivered, and so before its state was saved: a tick's
            # delivered() would save it now, and the batch's replay would take its records for
            # replays (a join's labels decided with nothing sent, a window closed unscored).
            return
        now = time.monotonic()
        if now >= self._next_tick and hasattr(self.processor, "tick"):
            self._next_tick = now + self.settings.tick_interval_s
            # A lambda: each attempt ticks at its own time.
            ticked = self._patiently("ticking", lambda: self.processor.tick(int(time.time() * 1000)))
            if self._deliver(ticked, []) and hasattr(self.processor, "delivered"):
                self.processor.delivered()

    def _patiently(self, what: str, attempt: Callable[..., Any], *args: Any) -> Any:
        """``attempt(*args)`` until no dependency is unavailable, with backoff; _Abandoned if stopped meanwhile.

        A Schema Registry or Redis outage is not the records' fault: dead-lettering them (and
        committing past them) would take good records out of the pipeline for as long as it lasts.
        """
        backoff = self.settings.retry_backoff_s
        while True:
            try:
                return attempt(*args)
            except DependencyUnavailable as exc:
                if self.stopping:
                    raise _Abandoned(f"{what} waited for an unavailable dependency ({exc})") from exc
                self.stats.dependency_waits += 1
                log.warning("%s: %s: %s; retrying in %.1fs", self.service, what, exc, backoff)
                self.delivery.serve()  # as at every turn: these waits reach 30 s
                self._sleep(backoff)
                backoff = min(backoff * 2, self.settings.retry_backoff_max_s)

    def _shutdown(self) -> None:
        self.delivery.close()
        if self.consumer is not None:
            try:
                self.consumer.close()
            except KafkaException as exc:
                log.warning("%s: consumer close: %s", self.service, exc)
        # Last: a shutdown stuck on a dead broker goes on showing a growing report age.
        self.metrics.forget_lag(self.group_id)
        log.info("%s: stopped (%s)", self.service, self.stats)

    # -- one batch ---------------------------------------------------------------------------

    def _run_batch(self, messages: list[Message]) -> bool:
        """Process, deliver and commit one batch; False if stopped before it was delivered (nothing committed)."""
        started = time.perf_counter()
        records: list[ConsumedRecord] = []
        raw: dict[tuple[str, int, int], Message] = {}
        dead: list[DeadLetter] = []
        next_offsets: dict[tuple[str, int], int] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_consume_error(error)
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            next_offsets[(topic, partition)] = offset + 1
            raw[(topic, partition, offset)] = message
            timestamp = message.timestamp()[1]
            if timestamp > 0:
                self._last_consumed_ms[(topic, partition)] = timestamp
            try:
                value = self._patiently("decoding", self.topics.inputs[topic].decode, message.value())
            except SerdeError as exc:
                dead.append(DeadLetter(message, dead_letters.STAGE_DECODE, exc))
                continue
            key = message.key()
            records.append(ConsumedRecord(
                topic, partition, offset,
                key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
                value, message.timestamp()[1], list(message.headers() or []),
            ))
        if self.tracer is None:
            result = self._patiently("processing", self._attempt(records))
        else:
            with self.tracer.process_batch([m for m in messages if m.error() is None], group=self.group_id):
                result = self._patiently("processing", self._attempt(records))
        for rejection in result.rejections:
            source = rejection.record
            dead.append(DeadLetter(raw[(source.topic, source.partition, source.offset)], rejection.stage,
                                   rejection.error, rejection.origin))
        delivered = self._deliver(result, dead, raw)
        if delivered:
            if hasattr(self.processor, "delivered"):
                self.processor.delivered()
            rewinds = self.processor.rewinds() if hasattr(self.processor, "rewinds") else {}
            offsets = self._limited(next_offsets, rewinds)
            if hasattr(self.processor, "committing"):
                self.processor.committing(offsets)
            self._commit(offsets)
            self._rewind(rewinds)
        self.stats.batches += 1
        self.stats.consumed += len(messages)
        self._record_batch(messages, dead, time.perf_counter() - started)
        return delivered

    def _limited(self, next_offsets: dict[tuple[str, int], int],
                 rewinds: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        limited = {}
        # A partition to read again is committed at its rewind even without records in the batch.
        for (topic, partition), offset in {**rewinds, **next_offsets}.items():
            limits = [offset, rewinds.get((topic, partition))]
            if hasattr(self.processor, "commit_limit"):
                limits.append(self.processor.commit_limit(topic, partition))
            limited[(topic, partition)] = min(limit for limit in limits if limit is not None)
        return limited

    def _rewind(self, rewinds: Mapping[tuple[str, int], int]) -> None:
        """Seek the partitions the processor asked to read again (``Rewinding``) back to their offsets.

        A seek that fails raises out of run(): the process exits, and the restart reads from the
        commit, which _limited held at the rewind's offset.
        """
        for (topic, partition), offset in rewinds.items():
            if (topic, partition) not in self._assigned:
                continue  # revoked meanwhile: its next owner reads from the commit
            log.warning("%s: reading %s[%d] again from offset %d, as the processor asked", self.service, topic,
                        partition, offset)
            position = TopicPartition(topic, partition, offset)
            if self.pacer is not None:
                self.pacer.seek(position)
            else:
                self.consumer.seek(position)

    def _record_batch(self, messages: list[Message], dead: list, seconds: float) -> None:
        """Per-batch metrics; latency is record timestamp (event produced) to batch delivered."""
        now_s = time.time()
        per_topic: dict[str, list[Message]] = {}
        for message in messages:
            if message.error() is None:
                per_topic.setdefault(message.topic(), []).append(message)
        for topic, topic_messages in per_topic.items():
            latencies = [max(0.0, now_s - m.timestamp()[1] / 1000) for m in topic_messages if m.timestamp()[1] > 0]
            self.metrics.record_batch(
                topic, len({m.partition() for m in topic_messages}), len(topic_messages), seconds,
                errors=sum(1 for d in dead if d.message.topic() == topic), latencies=latencies,
            )

    # -- deliver and commit ------------------------------------------------------------------

    def _deliver(self, result: ProcessResult, dead: list[DeadLetter],
                 raw: dict[tuple[str, int, int], Message] | None = None) -> bool:
        """Encode the outputs and deliver them with the dead letters; False if stopped before all were acknowledged.

        An output that does not match its schema dead-letters its input record, in ``dead``: the
        batch's metrics count it among the batch's errors. One with no input record (a tick's) is
        dropped, and counted as lost as one Kafka refused for good is.
        """
        encoded, encode_failures = self._patiently("encoding", self._encode, result.outputs, raw)
        for out, exc in encode_failures:
            source = out.source
            if raw is not None and source is not None:
                dead.append(DeadLetter(raw[(source.topic, source.partition, source.offset)],
                                       dead_letters.STAGE_ENCODE, exc))
            else:
                self.delivery.drop(out.topic, DROPPED_INVALID, exc)
        return self.delivery.deliver(encoded, dead, raw)

    def _trace_headers(self, out: OutgoingRecord, raw: dict[tuple[str, int, int], Message] | None) -> Headers:
        """Carry the source's trace onward; sampled records get a span of their own as the parent."""
        headers = list(out.headers)
        if out.source is None or any(k == TRACEPARENT for k, _ in headers):
            return headers
        parent = out.source.header(TRACEPARENT)
        message = raw.get((out.source.topic, out.source.partition, out.source.offset)) if raw else None
        if self.tracer is None or message is None or (parent is not None and not is_sampled(parent)):
            # Unsampled: copying the header is all it takes, and costs next to nothing.
            if parent is not None:
                headers.append((TRACEPARENT, parent))
            return headers
        with self.tracer.process_record(message, group=self.group_id):
            return inject_headers(headers)

    def _encode(self, outputs: Sequence[OutgoingRecord], raw=None) -> tuple[list[Encoded], list]:
        encoded = []
        failures = []
        ordinals: dict[tuple[str, str, int, int], int] = {}
        for out in outputs:
            identity: Identity = None
            if out.source is not None:
                slot = (out.topic, out.source.topic, out.source.partition, out.source.offset)
                identity = (*slot, ordinals.get(slot, 0))
                ordinals[slot] = identity[4] + 1
            try:
                value = None if out.value is None else self.topics.outputs[out.topic].encode(out.value)
            except SerdeError as exc:
                failures.append((out, exc))
                continue
            headers = self._trace_headers(out, raw)
            encoded.append((out.topic, out.key.encode() if out.key is not None else None, value, headers,
                            out.partition, identity))
        return encoded, failures

    def _commit(self, next_offsets: dict[tuple[str, int], int]) -> None:
        assert self.consumer is not None
        if not next_offsets:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items() if (t, p) in self._assigned]
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # A rebalance took the partitions; the new owner replays from the last commit (duplicates, no loss).
            self.stats.commits_failed += 1
            log.warning("%s: commit failed, batch will be replayed by the partition's owner: %s", self.service, exc)

    # -- callbacks ---------------------------------------------------------------------------

    def _on_producer_client_error(self, error: KafkaError) -> None:
        self._on_client_error(error, "producer")

    def _on_consumer_client_error(self, error: KafkaError) -> None:
        # A consumer's fatal error (FENCED_INSTANCE_ID) also reaches consume() as a message error,
        # which stops the runner; it says nothing about the producer, which needs no re-creation.
        self._on_client_error(error, "consumer")

    def _on_client_error(self, error: KafkaError, client: str) -> None:
        if error.fatal():
            log.error("%s: fatal %s error: %s", self.service, client, error.str())
            return
        if error.code() in BROKER_UNREACHABLE:
            self.metrics.record_broker_unreachable()  # every one counted; only the log is rate-limited
            now = time.monotonic()
            if now - self._last_unreachable_log > 10:
                self._last_unreachable_log = now
                log.warning("%s: broker %s unreachable (%s); librdkafka keeps retrying with backoff",
                            self.service, self.kafka.bootstrap_servers, error.str())
            return
        log.warning("%s: client error: %s", self.service, error.str())

    def _on_consume_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal() or error.code() == KafkaError._FATAL:
            # E.g. FENCED_INSTANCE_ID for a static member that was paused past its session timeout.
            # The batch in hand is finished (its commit fails; it is replayed after the restart).
            self._consumer_fatal = error
            log.error("%s: fatal consumer error, exiting so that a restart rejoins the group: %s",
                      self.service, error.str())
            self._stopping.set()
            return
        log.warning("%s: consume error: %s", self.service, error.str())

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)
