"""The one consume -> process -> produce loop every streamloop service runs.

Delivery guarantee: at-least-once, everywhere. A batch's input offsets are committed only after
every output of the batch (and every dead letter) is acknowledged by the broker (acks=all,
idempotent producer). A crash between produce and commit replays the batch, so processors must
tolerate seeing a record twice (stateful ones remember the highest offset applied per partition).

Nothing is lost: a record that cannot be decoded, breaks a rule or makes the processor raise goes
to ``<topic>.dlq`` with its original bytes and Kafka Connect's error headers, and the rest of the
batch flows on. A fatal producer error (the broker lost the idempotent producer's sequence state,
as noida-db does on a restart, losing acknowledged records with it) sends the outputs acknowledged
in the last ``resend_window_s`` again on a new producer: the committed input offsets cannot bring
them back.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from pydantic import BaseModel, ConfigDict, Field

from streamloop.errors import DependencyUnavailable
from streamloop.kafka import dead_letters
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.exceptions import DeliveryError, RecordRefusedError, kafka_error_of
from streamloop.kafka.lag import records_behind
from streamloop.kafka.pacing import FetchPacer
from streamloop.kafka.records import (
    ConsumedRecord,
    Headers,
    OutgoingRecord,
    Processor,
    ProcessResult,
    RecordOrigin,
    Rejection,
    TopicPartitionRef,
)
from streamloop.serde import Serde, SerdeError
from streamloop.telemetry.tracing import KafkaTracer, inject_headers, is_sampled

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"

# Which output a record is, whichever time its input was read: the n-th output to a topic from one
# input record (its topic, partition and offset). A replayed input yields outputs of the same
# identities; outputs with no input record (ticks) and dead letters have none.
_Identity = tuple[str, str, int, int, int] | None
_Encoded = tuple[str, bytes | None, bytes | None, Headers, int | None, _Identity]


class _Abandoned(Exception):  # noqa: N818 - a signal inside the runner, never raised to callers
    """The runner was stopped while a dependency was unavailable: the batch is left uncommitted."""


# Errors that no retry cures when they are about one record: it is too large, or the broker finds
# it invalid. The broker answers them for a whole produce batch, though (a topic whose
# max.message.bytes is below the producer's batch), so a record counts as refused only when it
# was sent alone; the producer's own size check (at produce()) is about one record always.
# Anything else (a timeout, a missing topic, a refused authorization) may pass once the broker or
# its configuration recovers, so the batch waits and retries.
REFUSED_FOR_GOOD = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD,
                              KafkaError.RECORD_LIST_TOO_LARGE})


class _Refused(Exception):  # noqa: N818 - a signal inside the runner, never raised to callers
    """The producer refused one record at produce() (larger than its message.max.bytes)."""

    def __init__(self, error: KafkaError) -> None:
        super().__init__(error.str())
        self.error = error


class _RefusedInBatch(DeliveryError):
    """The broker refused records sent in a batch as too large or invalid: sent again one at a time,
    each refusal is then about its own record."""


@dataclass(frozen=True, slots=True)
class _DeadLetter:
    message: Message
    stage: str
    error: BaseException
    origin: RecordOrigin | None = None
    # Why the original value is left out: Kafka refused the dead letter that carried it.
    value_dropped: str | None = None

    @property
    def source(self) -> RecordOrigin:
        """The record the user wrote: the message itself, or the one it was forwarded from."""
        message = self.message
        return self.origin or RecordOrigin(message.topic(), message.partition(), message.offset())


class RunnerSettings(BaseModel):
    # STREAMLOOP_RUNNER is JSON typed by hand: a misspelt knob must fail, not leave the default.
    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_size: int = Field(default=500, ge=1)
    poll_timeout_s: float = Field(default=0.05, gt=0)
    retry_backoff_s: float = Field(default=0.5, gt=0)
    retry_backoff_max_s: float = Field(default=30.0, gt=0)
    lag_report_interval_s: float = Field(default=5.0, gt=0)
    tick_interval_s: float = Field(default=0.5, gt=0)
    # Outputs acknowledged this recently are sent again after a fatal producer error: that error
    # (OUT_OF_ORDER_SEQUENCE_NUMBER, say) means the broker lost sequence state, and noida-db then
    # also lost records it had acknowledged (docs/reliability.md). 0 turns it off.
    resend_window_s: float = Field(default=5.0, ge=0)
    resend_max_records: int = Field(default=50_000, ge=1)


class RunnerMetrics(Protocol):
    """What the runner reports, once per batch (streamloop.telemetry.ServiceMetrics implements it)."""

    def record_batch(self, topic: str, partition_count: int, records: int, seconds: float,
                     errors: int = 0, latencies: Sequence[float] | None = None) -> None: ...

    def record_dead_letters(self, topic: str, error_class: str, count: int = 1) -> None: ...

    def record_broker_unreachable(self) -> None: ...

    def set_lag(self, group: str, lags: dict[tuple[str, int], float],
                behind_since: dict[tuple[str, int], float] | None = None) -> None: ...


class _NoMetrics:
    def record_batch(self, topic: str, partition_count: int, records: int, seconds: float,
                     errors: int = 0, latencies: Sequence[float] | None = None) -> None:
        pass

    def record_broker_unreachable(self) -> None:
        pass

    def record_dead_letters(self, topic: str, error_class: str, count: int = 1) -> None:
        pass

    def set_lag(self, group: str, lags: dict[tuple[str, int], float],
                behind_since: dict[tuple[str, int], float] | None = None) -> None:
        pass


@dataclass
class StageTopics:
    """What a stage reads (with the serde of each topic) and what it may write."""

    inputs: dict[str, Serde]
    outputs: dict[str, Serde]
    dead_letters: dict[str, str] = field(default_factory=dict)


@dataclass
class RunnerStats:
    consumed: int = 0
    produced: int = 0
    dead_lettered: int = 0
    batches: int = 0
    commits_failed: int = 0
    delivery_retries: int = 0
    resent: int = 0  # acknowledged outputs sent again after a fatal producer error
    dependency_waits: int = 0  # retries while a Schema Registry or Redis was unavailable


class StageRunner:
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
        self._producer_config = kafka.producer(error_cb=self._on_producer_client_error,
                                               **(producer_overrides or {}))
        self._stopping = threading.Event()
        self._producer_fatal = False
        # (monotonic time acknowledged, the record as produced): the candidates for a re-send.
        self._acknowledged: deque[tuple[float, _Encoded]] = deque()
        self._consumer_fatal: KafkaError | None = None
        self._last_unreachable_log = 0.0
        self._assigned: set[tuple[str, int]] = set()
        # For kafka_consumergroup_group_lag_seconds, per partition: the Kafka timestamp (ms) of the
        # last record consumed, and when (epoch s) it was last seen caught up or was assigned.
        self._last_consumed_ms: dict[tuple[str, int], int] = {}
        self._caught_up_at: dict[tuple[str, int], float] = {}
        self._assigned_at: dict[tuple[str, int], float] = {}
        self.consumer: Consumer | None = None
        self.pacer: FetchPacer | None = None
        self._next_tick = 0.0
        self.producer: Producer | None = None

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
        self.producer = Producer(self._producer_config)
        self.consumer = Consumer(self._consumer_config)
        self.pacer = FetchPacer(self.consumer, self.kafka.idle_fetch_pause_ms / 1000,
                                self.kafka.idle_fetch_listen_ms / 1000)
        self.consumer.subscribe(
            list(self.topics.inputs), on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        log.info("%s: consuming %s as group %s", self.service, ", ".join(self.topics.inputs), self.group_id)
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
        """One batch, if any came, then the processor's tick when it is due."""
        messages = self.pacer.consume(self.settings.batch_size, self.settings.poll_timeout_s)
        if messages:
            self._run_batch(messages)
        now = time.monotonic()
        if now >= self._next_tick and hasattr(self.processor, "tick"):
            self._next_tick = now + self.settings.tick_interval_s
            # A lambda: each attempt ticks at its own time.
            ticked = self._patiently("ticking", lambda: self.processor.tick(int(time.time() * 1000)))
            if self._deliver_with_retry(ticked, []) and hasattr(self.processor, "delivered"):
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
                self._sleep(backoff)
                backoff = min(backoff * 2, self.settings.retry_backoff_max_s)

    def _shutdown(self) -> None:
        if self.producer is not None:
            try:
                self.producer.flush(30)
            except KafkaException as exc:  # a fatal producer raises; the consumer must still leave cleanly
                log.warning("%s: producer flush at shutdown: %s", self.service, exc)
        if self.consumer is not None:
            try:
                self.consumer.close()
            except KafkaException as exc:
                log.warning("%s: consumer close: %s", self.service, exc)
        log.info("%s: stopped (%s)", self.service, self.stats)

    # -- one batch ---------------------------------------------------------------------------

    def _run_batch(self, messages: list[Message]) -> None:
        started = time.perf_counter()
        records: list[ConsumedRecord] = []
        raw: dict[tuple[str, int, int], Message] = {}
        dead: list[_DeadLetter] = []
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
                dead.append(_DeadLetter(message, dead_letters.STAGE_DECODE, exc))
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
            dead.append(_DeadLetter(raw[(source.topic, source.partition, source.offset)], rejection.stage,
                                    rejection.error, rejection.origin))
        if self._deliver_with_retry(result, dead, raw):
            if hasattr(self.processor, "delivered"):
                self.processor.delivered()
            self._commit(self._limited(next_offsets))
        self.stats.batches += 1
        self.stats.consumed += len(messages)
        self._record_batch(messages, dead, time.perf_counter() - started)

    def _limited(self, next_offsets: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        if not hasattr(self.processor, "commit_limit"):
            return next_offsets
        limited = {}
        for (topic, partition), offset in next_offsets.items():
            limit = self.processor.commit_limit(topic, partition)
            limited[(topic, partition)] = offset if limit is None else min(offset, limit)
        return limited

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

    def _attempt(self, records: list[ConsumedRecord]) -> Callable[[], ProcessResult]:
        """Processing the batch, as often as a dependency's outage makes it fail: each retry starts
        from the state before the batch (``discard``), which the failed attempt may have changed."""
        attempts = 0

        def attempt() -> ProcessResult:
            nonlocal attempts
            if attempts and hasattr(self.processor, "discard"):
                self.processor.discard()
            attempts += 1
            return self._process(records)

        return attempt

    def _process(self, records: list[ConsumedRecord]) -> ProcessResult:
        if not records:
            return ProcessResult()
        try:
            return self.processor.process(records)
        except DependencyUnavailable:
            raise  # not a poison record: the whole batch waits and is processed again
        except Exception:  # noqa: BLE001 - isolate the poison record instead of crash-looping
            log.exception("%s: batch of %d failed; retrying record by record", self.service, len(records))
        if hasattr(self.processor, "discard"):
            return self._process_again(records)
        result = ProcessResult()
        for record in records:
            try:
                result.extend(self.processor.process([record]))
            except DependencyUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001
                result.rejections.append(Rejection(record, exc, dead_letters.STAGE_PROCESS))
        return result

    def _process_again(self, records: list[ConsumedRecord]) -> ProcessResult:
        """Record by record from the state before the batch, which a stateful stage discards.

        The failed attempt changed the state (the records it got through would look like
        replays, and their outputs were never sent), and so may a failing record part-way: after
        each failure everything is discarded and the records that passed are processed again.
        """
        poison: dict[int, Exception] = {}
        while True:
            self.processor.discard()
            result, at = ProcessResult(), 0
            try:
                for at, record in enumerate(records):
                    if at not in poison:
                        result.extend(self.processor.process([record]))
                break
            except DependencyUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001
                poison[at] = exc
        result.rejections += [Rejection(records[at], exc, dead_letters.STAGE_PROCESS) for at, exc in poison.items()]
        return result

    # -- produce and commit ------------------------------------------------------------------

    def _deliver_with_retry(
        self,
        result: ProcessResult,
        dead: list[_DeadLetter],
        raw: dict[tuple[str, int, int], Message] | None = None,
    ) -> bool:
        """Produce outputs and dead letters until acknowledged; False if stopped before that."""
        encoded, encode_failures = self._patiently("encoding", self._encode, result.outputs, raw)
        for source, exc in encode_failures:
            if raw is not None and source is not None:
                dead.append(_DeadLetter(raw[(source.topic, source.partition, source.offset)],
                                        dead_letters.STAGE_ENCODE, exc))
            else:
                log.error("%s: dropped an output that does not match its schema: %s", self.service, exc)
        backoff = self.settings.retry_backoff_s
        outputs, letters = list(encoded), list(dead)
        alone = False
        while True:
            # A retry sends again only what the broker did not acknowledge: re-sending the whole
            # batch after a broker restart wrote every acknowledged output of it twice.
            acked_outputs: set[int] = set()
            acked_letters: set[int] = set()
            refused_outputs: dict[int, KafkaError] = {}
            refused_letters: dict[int, KafkaError] = {}
            failed: DeliveryError | None = None
            try:
                self._produce_all(outputs, letters, acked_outputs, acked_letters, refused_outputs, refused_letters,
                                  alone=alone)
            except DeliveryError as exc:
                failed = exc
            alone = isinstance(failed, _RefusedInBatch)
            self._count_delivered(len(acked_outputs), [d for i, d in enumerate(letters) if i in acked_letters])
            # Refused for good: the output's input record is dead-lettered instead, a dead letter
            # goes again without the value Kafka would not take.
            replacements = self._dead_letters_for_refused(outputs, refused_outputs, raw)
            replacements += self._without_values(letters, refused_letters)
            outputs = [o for i, o in enumerate(outputs) if i not in acked_outputs and i not in refused_outputs]
            letters = [d for i, d in enumerate(letters) if i not in acked_letters and i not in refused_letters]
            letters += replacements
            if failed is None:
                if not outputs and not letters:
                    return True
                continue  # only the replacements are left: send them at once
            self.stats.delivery_retries += 1
            if alone:
                log.warning("%s: %s; sending them again one at a time", self.service, failed)
                continue
            if self.stopping:
                # Leave without committing: the batch is consumed again after restart. The outputs
                # a fatal producer error put at risk are not: their inputs are committed already.
                if self._producer_fatal:
                    self._resend_before_leaving()
                log.warning("%s: stopping with an undelivered batch; it will be replayed", self.service)
                return False
            log.warning("%s: %s; retrying in %.1fs", self.service, failed, backoff)
            if self._producer_fatal:
                self._recreate_producer()
                outputs = self._recently_acknowledged() + outputs
            self._sleep(backoff)
            backoff = min(backoff * 2, self.settings.retry_backoff_max_s)

    def _dead_letters_for_refused(self, outputs: list[_Encoded], refused: dict[int, KafkaError],
                                  raw: dict[tuple[str, int, int], Message] | None) -> list[_DeadLetter]:
        """The input records of outputs Kafka refused for good, as dead letters saying why."""
        letters: list[_DeadLetter] = []
        inputs: set[tuple[str, int, int]] = set()
        for index, error in sorted(refused.items()):
            topic, _key, value, _headers, _partition, identity = outputs[index]
            size = 0 if value is None else len(value)
            reason = RecordRefusedError(f"output to {topic} ({size:,} bytes) refused by Kafka: {error.str()}")
            message = raw.get(identity[1:4]) if raw is not None and identity is not None else None
            if message is None:  # a tick's output: no input record to keep it by
                log.error("%s: dropped an output with no input record: %s", self.service, reason)
                continue
            if identity[1:4] in inputs:
                continue  # another refused output of the same input: its dead letter is on its way
            inputs.add(identity[1:4])
            log.error("%s: %s; its input %s[%d]@%d goes to the dead letters", self.service, reason,
                      message.topic(), message.partition(), message.offset())
            letters.append(_DeadLetter(message, dead_letters.STAGE_PRODUCE, reason))
        return letters

    def _without_values(self, letters: list[_DeadLetter], refused: dict[int, KafkaError]) -> list[_DeadLetter]:
        """Dead letters Kafka refused, to send again without their value; dropped if that was refused too."""
        again: list[_DeadLetter] = []
        for index, error in sorted(refused.items()):
            letter = letters[index]
            source = letter.source
            if letter.value_dropped is not None:
                log.error("%s: a dead letter for %s[%d]@%d was refused even without its value (%s); the "
                          "record stays in its topic only", self.service, source.topic, source.partition,
                          source.offset, error.str())
                continue
            value = letter.message.value()
            reason = (f"{0 if value is None else len(value):,} bytes refused by Kafka as a dead letter "
                      f"({error.str()}); the original is {source.topic}[{source.partition}]@{source.offset}")
            log.error("%s: %s", self.service, reason)
            again.append(_DeadLetter(letter.message, letter.stage, letter.error, letter.origin, reason))
        return again

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

    def _encode(self, outputs: Sequence[OutgoingRecord], raw=None) -> tuple[list[_Encoded], list]:
        encoded = []
        failures = []
        ordinals: dict[tuple[str, str, int, int], int] = {}
        for out in outputs:
            identity: _Identity = None
            if out.source is not None:
                slot = (out.topic, out.source.topic, out.source.partition, out.source.offset)
                identity = (*slot, ordinals.get(slot, 0))
                ordinals[slot] = identity[4] + 1
            try:
                value = None if out.value is None else self.topics.outputs[out.topic].encode(out.value)
            except SerdeError as exc:
                failures.append((out.source, exc))
                continue
            headers = self._trace_headers(out, raw)
            encoded.append((out.topic, out.key.encode() if out.key is not None else None, value, headers,
                            out.partition, identity))
        return encoded, failures

    def _produce_all(self, encoded: list, dead: list[_DeadLetter], acked_outputs: set[int], acked_letters: set[int],
                     refused_outputs: dict[int, KafkaError], refused_letters: dict[int, KafkaError], *,
                     alone: bool = False) -> None:
        """Produce and wait for every acknowledgement (``alone``: each before the next is sent).

        The indexes acknowledged go into the two sets; those refused for good (``REFUSED_FOR_GOOD``),
        with their error, into the two dicts. Any other failure raises DeliveryError at the end.
        """
        assert self.producer is not None
        failures: list[KafkaError] = []

        def on_delivery(acked: set[int], refused: dict[int, KafkaError], index: int,
                        record: _Encoded) -> Callable[[KafkaError | None, Message], None]:
            def delivered(error: KafkaError | None, _message: Message) -> None:
                if error is None:
                    acked.add(index)
                    self._remember_acknowledged(record)
                elif error.code() in REFUSED_FOR_GOOD and alone:
                    refused[index] = error
                else:
                    failures.append(error)
            return delivered

        for index, record in enumerate(encoded):
            topic, key, value, headers, partition, _identity = record
            try:
                self._produce(topic, key, value, headers, on_delivery(acked_outputs, refused_outputs, index, record),
                              partition)
            except _Refused as refusal:
                refused_outputs[index] = refusal.error
            if alone:
                self._wait_for_deliveries()
        for index, dead_letter in enumerate(dead):
            message, source = dead_letter.message, dead_letter.source
            dlq = self.topics.dead_letters.get(source.topic, source.topic + ".dlq")
            headers = dead_letters.dead_letter_headers(
                message.headers(), topic=source.topic, partition=source.partition, offset=source.offset,
                stage=dead_letter.stage, error=dead_letter.error, service=self.service,
            )
            value = message.value()
            if dead_letter.value_dropped is not None:
                value = None
                headers.append((dead_letters.VALUE_DROPPED, dead_letter.value_dropped.encode()))
            letter = (dlq, message.key(), value, headers, None, None)
            try:
                self._produce(dlq, message.key(), value, headers,
                              on_delivery(acked_letters, refused_letters, index, letter))
            except _Refused as refusal:
                refused_letters[index] = refusal.error
            if alone:
                self._wait_for_deliveries()
        self._wait_for_deliveries()
        if any(f.code() in REFUSED_FOR_GOOD for f in failures):
            raise _RefusedInBatch(f"{len(failures)} records refused in a batch: {failures[0].str()}")
        if failures:
            lasting = next((f for f in failures if not f.retriable()), None)
            if lasting is not None:
                # A missing topic or a refused authorization: nothing heals it but an operator.
                log.error("%s: Kafka refuses to take records (%s); the batch waits, uncommitted, until that is "
                          "fixed", self.service, lasting.str())
            raise DeliveryError(f"{len(failures)} records not acknowledged: {failures[0].str()}")

    def _wait_for_deliveries(self) -> None:
        assert self.producer is not None
        waited = 0.0
        while len(self.producer) > 0:
            try:
                self.producer.flush(1.0)
            except KafkaException as exc:
                raise self._fatal_producer_error(exc) from exc
            waited += 1.0
            if self.stopping and waited > 10:
                raise DeliveryError(f"{len(self.producer)} records still queued at shutdown")

    def _count_delivered(self, outputs: int, letters: list[_DeadLetter]) -> None:
        self.stats.produced += outputs
        self.stats.dead_lettered += len(letters)
        for letter in letters:
            self.metrics.record_dead_letters(letter.source.topic, type(letter.error).__name__)
        if letters:
            first = letters[0].source
            log.warning("%s: %d records dead-lettered (first: %s at %s[%d]@%d)", self.service, len(letters),
                        letters[0].error, first.topic, first.partition, first.offset)

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers, callback,
                 partition: int | None = None) -> None:
        assert self.producer is not None
        pinned = {} if partition is None else {"partition": partition}
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=callback, **pinned)
                self.producer.poll(0)
                return
            except BufferError:
                # The local queue is full: let deliveries drain, then try again.
                self.producer.poll(0.1)
            except KafkaException as exc:
                error = kafka_error_of(exc)
                if error is not None and error.code() in REFUSED_FOR_GOOD:
                    raise _Refused(error) from exc  # the producer's own check: about this record
                raise self._fatal_producer_error(exc) from exc

    def _fatal_producer_error(self, exc: KafkaException) -> DeliveryError:
        """A fatal producer error (e.g. OUT_OF_ORDER_SEQUENCE_NUMBER after a broker restart lost the
        idempotence state) raised by produce or flush: the batch is retried on a new producer."""
        error = kafka_error_of(exc)
        if error is None or not (error.fatal() or error.code() == KafkaError._FATAL):
            raise exc
        self._producer_fatal = True
        return DeliveryError(f"producer fatal error: {error.str()}")

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

    def _remember_acknowledged(self, record: _Encoded) -> None:
        if not self.settings.resend_window_s:
            return
        now = time.monotonic()
        self._acknowledged.append((now, record))
        self._forget_acknowledged(now)

    def _forget_acknowledged(self, now: float) -> None:
        horizon = now - self.settings.resend_window_s
        while self._acknowledged and (self._acknowledged[0][0] < horizon
                                      or len(self._acknowledged) > self.settings.resend_max_records):
            self._acknowledged.popleft()

    def _recently_acknowledged(self) -> list[_Encoded]:
        """The outputs acknowledged within ``resend_window_s``, to send again (taken: they are remembered anew
        when acknowledged again). Duplicates downstream are the price: at-least-once, nothing lost."""
        self._forget_acknowledged(time.monotonic())
        # One copy per identity, the latest: an input read again within the window (its offset
        # commit was lost) left two acknowledged copies of each of its outputs, and sending both
        # again wrote four of a record read once (CI, a broker restart).
        latest: dict[object, _Encoded] = {}
        for _, record in self._acknowledged:
            identity = record[5]
            latest[identity if identity is not None else object()] = record
        records = list(latest.values())
        self._acknowledged.clear()
        if records:
            self.stats.resent += len(records)
            log.warning("%s: sending again the %d outputs acknowledged in the last %.0f s: the broker may have "
                        "lost them", self.service, len(records), self.settings.resend_window_s)
        return records

    def _resend_before_leaving(self, timeout_s: float = 10.0) -> None:
        """On a stop during a fatal producer error: send the recently acknowledged outputs again, once."""
        self._recreate_producer()
        records = self._recently_acknowledged()
        unacknowledged: list[str] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                unacknowledged.append(error.str())

        try:
            for topic, key, value, headers, partition, _identity in records:
                try:
                    self._produce(topic, key, value, headers, delivered, partition)
                except _Refused as refusal:  # it was taken before; a new producer's limit may differ
                    unacknowledged.append(refusal.error.str())
            left = self.producer.flush(timeout_s) if self.producer is not None else 0
        except (KafkaException, DeliveryError) as exc:
            log.error("%s: stopping: could not send again the outputs a fatal producer error put at risk: %s",
                      self.service, exc)
            return
        if left or unacknowledged:
            log.error("%s: stopping: %d of the %d outputs sent again were not acknowledged (%s)", self.service,
                      left + len(unacknowledged), len(records), unacknowledged[0] if unacknowledged else "timeout")

    def _recreate_producer(self) -> None:
        log.warning("%s: producer hit a fatal error; creating a new one", self.service)
        assert self.producer is not None
        try:
            self.producer.flush(5)
        except KafkaException as exc:  # a fatal producer raises again; what it holds is produced anew
            log.warning("%s: discarding the failed producer: %s", self.service, exc)
        self.producer = Producer(self._producer_config)
        self._producer_fatal = False

    # -- callbacks ---------------------------------------------------------------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.update((tp.topic, tp.partition) for tp in partitions)
        now = time.time()
        for tp in partitions:
            self._assigned_at.setdefault((tp.topic, tp.partition), now)
        if self.pacer is not None:
            self.pacer.rebalanced(partitions)
        if hasattr(self.processor, "on_assigned"):
            self.processor.on_assigned([TopicPartitionRef(tp.topic, tp.partition) for tp in partitions])

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Batches are processed, delivered and committed before consume() returns to the
        # rebalance, so nothing is in flight here: the processor only drops its state.
        self._assigned.difference_update((tp.topic, tp.partition) for tp in partitions)
        for tp in partitions:
            for known in (self._last_consumed_ms, self._caught_up_at, self._assigned_at):
                known.pop((tp.topic, tp.partition), None)
        if self.pacer is not None:
            self.pacer.rebalanced()
        if hasattr(self.processor, "on_revoked"):
            self.processor.on_revoked([TopicPartitionRef(tp.topic, tp.partition) for tp in partitions])

    def _on_producer_client_error(self, error: KafkaError) -> None:
        self._on_client_error(error, producer=True)

    def _on_consumer_client_error(self, error: KafkaError) -> None:
        # A consumer's fatal error (FENCED_INSTANCE_ID) also reaches consume() as a message error,
        # which stops the runner; it says nothing about the producer, which needs no re-creation.
        self._on_client_error(error, producer=False)

    def _on_client_error(self, error: KafkaError, producer: bool) -> None:
        if error.fatal():
            if producer:
                self._producer_fatal = True
            log.error("%s: fatal %s error: %s", self.service, "producer" if producer else "consumer", error.str())
            return
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE):
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

    def _report_lag(self) -> None:
        if self.consumer is None:
            return
        if not self._assigned:
            # A replica left without partitions (scaled past the partition count) exports none,
            # rather than the last figures of partitions it no longer has.
            self.metrics.set_lag(self.group_id, {}, {})
            return
        partitions = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        now = time.time()
        try:
            positions = self.consumer.position(partitions)
            lag, behind_since = {}, {}
            for tp in positions:
                # While the pacer holds the partitions back, librdkafka does not know the position.
                known = self.pacer.position(tp.topic, tp.partition) if self.pacer is not None else None
                if known is not None:
                    tp.offset = known
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high is None or high < 0:
                    continue
                key = (tp.topic, tp.partition)
                lag[key] = records_behind(tp.offset, low, high)
                if lag[key]:
                    behind_since[key] = self._behind_since(key)
                else:
                    self._caught_up_at[key] = now
            # The metrics compute the age at each scrape, so it keeps growing while this thread is
            # stuck (a delivery retried, a slow dependency) and cannot report again.
            self.metrics.set_lag(self.group_id, lag, behind_since)
        except KafkaException as exc:
            log.debug("%s: lag report skipped: %s", self.service, exc)

    def _behind_since(self, key: tuple[str, int]) -> float:
        """The earliest time (epoch s) the oldest record still waiting in a partition with lag can date from.

        That record is no older than the last one consumed (by Kafka timestamp), nor than the last
        time the partition was seen caught up, so the age computed from this is an upper bound.
        With neither known, the assignment time stands in, and the age is then a floor: a record
        may have waited since before the assignment.
        """
        bounds = [self._caught_up_at.get(key)]
        if key in self._last_consumed_ms:
            bounds.append(self._last_consumed_ms[key] / 1000)
        known = [b for b in bounds if b is not None]
        return max(known) if known else self._assigned_at.get(key, time.time())

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)
