"""Getting a batch's outputs and dead letters acknowledged by the broker, whatever it takes.

The runner commits a batch's input offsets only once every output and dead letter of it is
acknowledged (acks=all, idempotent producer): at-least-once. So delivery never gives up while the
runner runs; a retry sends again only what the broker did not acknowledge, because re-sending a
whole batch after a broker restart wrote every acknowledged output of it twice.

Two failures need more than a retry: a fatal producer error, after which the outputs acknowledged
just before the broker went away are sent again (``streamloop.kafka.resend_window``), and a record
Kafka refuses for good, whose input record is dead-lettered instead (``streamloop.kafka.refused_records``).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streamloop.kafka import dead_letters
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.delivery_records import _DROPPED_AS, DeadLetter, Encoded
from streamloop.kafka.exceptions import DeliveryError, fatal_error_of, kafka_error_of, kafka_exception_of
from streamloop.kafka.records import Headers
from streamloop.kafka.refused_records import REFUSED_FOR_GOOD, RefusedRecords, _NotTaken, _Refused, _RefusedInBatch
from streamloop.kafka.resend_window import ResendWindow
from streamloop.kafka.runner_metrics import RunnerMetrics, RunnerStats
from streamloop.kafka.runner_settings import RunnerSettings

# The runner's logger: these lines report on the runner's batches, and every log line names its logger.
log = logging.getLogger("streamloop.kafka.runner")


class Delivery(ResendWindow, RefusedRecords):
    """A runner's producer: delivers outputs and dead letters until acknowledged, replacing the producer
    after a fatal error."""

    def __init__(
        self,
        service: str,
        kafka: KafkaSettings,
        producer_overrides: dict[str, Any],
        *,
        settings: RunnerSettings,
        dead_letter_topics: dict[str, str],
        stats: RunnerStats,
        metrics: RunnerMetrics,
        stopping: threading.Event,
        report_client_error: Callable[[KafkaError], None],
    ) -> None:
        self._service = service
        self._settings = settings
        self._dead_letter_topics = dead_letter_topics
        self._stats = stats
        self._metrics = metrics
        self._stopping = stopping
        self._report_client_error = report_client_error
        self._producer_config = kafka.producer(error_cb=self._on_client_error, **producer_overrides)
        self._producer_fatal = False
        # (monotonic time acknowledged, the record as produced), oldest first: the candidates for a
        # re-send, no older than the resend_window_s before the newest (_forget_acknowledged, resend_window.py).
        self._acknowledged: deque[tuple[float, Encoded]] = deque()
        # Monotonic time of the first sign since the last acknowledgement that the broker went away
        # (BROKER_UNREACHABLE, resend_window.py, or the fatal error itself): the re-send window ends there.
        self._gone_at: float | None = None
        # The topic last produced to: what fatal_producer_error_of asks the producer about.
        self._last_topic: str | None = None
        self.producer: Producer | None = None

    def open(self) -> None:
        self.producer = self._new_producer()

    def _new_producer(self) -> Producer:
        """A producer on the settings' configuration: the first, and each replacing a failed one."""
        return Producer(self._producer_config)

    def serve(self) -> None:
        """Serve the producer's callbacks while no batch is delivered, as the runner does at every turn.

        Its error callback then reports a broker that went away within a turn of it, not at the stage's
        next output, which may be a day later: that moment bounds the outputs sent again after a fatal
        error. A fatal error raised here marks the producer for replacement, which the next batch (or
        the exit) does.
        """
        if self.producer is None:
            return
        try:
            self.producer.poll(0)
        except (KafkaException, SystemError) as exc:
            self._fatal_producer_error(exc)

    def close(self) -> None:
        if self.producer is None:
            return
        try:
            self.producer.flush(30)
        except (KafkaException, SystemError) as exc:  # a fatal producer raises; the consumer must still leave
            fatal = self._fatal_error_of(exc)
            if fatal is None and kafka_exception_of(exc) is None:
                raise
            if fatal is not None:
                self._producer_fatal = True
                self._broker_gone()
            log.warning("%s: producer flush at shutdown: %s", self._service, exc)
        if self._producer_fatal:
            # The fatal error came after the last batch was delivered (to the error callback, or
            # with this flush), and the runner leaves for another reason before a batch meets it:
            # the window's inputs are committed, and a new process would not know to send it again.
            self._resend_before_leaving([])

    def drop(self, topic: str, reason: str, error: object) -> None:
        """An output to ``topic`` with no input record to dead-letter (a tick's) cannot be sent: counted as lost.

        ``reason`` is DROPPED_REFUSED or DROPPED_INVALID, ``error`` why, for the log.
        """
        self._stats.dropped += 1
        self._metrics.record_dropped_outputs(topic, reason)
        log.error("%s: %s: %s", self._service, _DROPPED_AS[reason], error)

    def deliver(self, outputs: list[Encoded], letters: list[DeadLetter],
                raw: dict[tuple[str, int, int], Message] | None = None) -> bool:
        """Produce outputs and dead letters until acknowledged; False if stopped before that.

        ``raw``, the batch's input messages by coordinates, is where an output Kafka refuses for good
        finds the input record to dead-letter.
        """
        backoff = self._settings.retry_backoff_s
        outputs, letters = list(outputs), list(letters)
        # outputs[:owed] are earlier batches' outputs, sent again after a fatal producer error: their
        # inputs are committed, so unlike this batch's outputs no replay brings them back.
        owed = 0
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
            # Outputs sent again were produced once already; stats.resent counts them.
            self._count_delivered(sum(1 for i in acked_outputs if i >= owed),
                                  [d for i, d in enumerate(letters) if i in acked_letters])
            # Refused for good: the output's input record is dead-lettered instead, a dead letter
            # goes again without the value Kafka would not take.
            replacements = self._dead_letters_for_refused(outputs, refused_outputs, raw)
            replacements += self._without_values(letters, refused_letters)
            kept = [i for i in range(len(outputs)) if i not in acked_outputs and i not in refused_outputs]
            owed = sum(1 for i in kept if i < owed)
            outputs = [outputs[i] for i in kept]
            letters = [d for i, d in enumerate(letters) if i not in acked_letters and i not in refused_letters]
            letters += replacements
            if failed is None:
                if not outputs and not letters:
                    return True
                continue  # only the replacements are left: send them at once
            self._stats.delivery_retries += 1
            if alone:
                log.warning("%s: %s; sending them again one at a time", self._service, failed)
                continue
            if self._stopping.is_set():
                # Leave without committing: the batch is consumed again after restart. Earlier
                # batches' outputs are not (their inputs are committed already): those sent again
                # and not yet acknowledged, and those a fatal producer error put at risk, go once more.
                self._resend_before_leaving(outputs[:owed])
                log.warning("%s: stopping with an undelivered batch; it will be replayed", self._service)
                return False
            log.warning("%s: %s; retrying in %.1fs", self._service, failed, backoff)
            if self._producer_fatal:
                resent = self._replace_producer(besides=outputs)
                outputs, owed = resent + outputs, owed + len(resent)
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, self._settings.retry_backoff_max_s)

    # -- one attempt -------------------------------------------------------------------------

    def _produce_all(self, encoded: list, dead: list[DeadLetter], acked_outputs: set[int], acked_letters: set[int],
                     refused_outputs: dict[int, KafkaError], refused_letters: dict[int, KafkaError], *,
                     alone: bool = False) -> None:
        """Produce and wait for every acknowledgement (``alone``: each before the next is sent).

        The indexes acknowledged go into the two sets; those refused for good (``REFUSED_FOR_GOOD``),
        with their error, into the two dicts. Any other failure, in a delivery report or raised by
        produce() for one record, raises DeliveryError at the end.
        """
        assert self.producer is not None
        failures: list[KafkaError] = []

        def on_delivery(acked: set[int], refused: dict[int, KafkaError], index: int,
                        record: Encoded) -> Callable[[KafkaError | None, Message], None]:
            def delivered(error: KafkaError | None, _message: Message) -> None:
                if error is None:
                    acked.add(index)
                    self._remember_acknowledged(record)
                elif error.code() in REFUSED_FOR_GOOD and alone:
                    refused[index] = error
                else:
                    failures.append(error)
            return delivered

        def send(record: Encoded, acked: set[int], refused: dict[int, KafkaError], index: int) -> None:
            topic, key, value, headers, partition, _identity = record
            try:
                self._produce(topic, key, value, headers, on_delivery(acked, refused, index, record), partition)
            except _Refused as refusal:
                refused[index] = refusal.error
            except _NotTaken as failure:
                # As if in its delivery report: the other records go on (raising here would have the
                # retry send again those still queued, twice), and this one waits with the batch.
                failures.append(failure.error)
            if alone:
                self._wait_for_deliveries()

        for index, record in enumerate(encoded):
            send(record, acked_outputs, refused_outputs, index)
        for index, dead_letter in enumerate(dead):
            message, source = dead_letter.message, dead_letter.source
            dlq = self._dead_letter_topics.get(source.topic, source.topic + ".dlq")
            headers = dead_letters.dead_letter_headers(
                message.headers(), topic=source.topic, partition=source.partition, offset=source.offset,
                stage=dead_letter.stage, error=dead_letter.error, service=self._service,
            )
            value = message.value()
            if dead_letter.value_dropped is not None:
                value = None
                headers.append((dead_letters.VALUE_DROPPED, dead_letter.value_dropped.encode()))
            send((dlq, message.key(), value, headers, None, None), acked_letters, refused_letters, index)
        self._wait_for_deliveries()
        if any(f.code() in REFUSED_FOR_GOOD for f in failures):
            raise _RefusedInBatch(f"{len(failures)} records refused in a batch: {failures[0].str()}")
        if failures:
            lasting = next((f for f in failures if not f.retriable()), None)
            if lasting is not None:
                # A missing topic or a refused authorization: nothing heals it but an operator.
                log.error("%s: Kafka refuses to take records (%s); the batch waits, uncommitted, until that is "
                          "fixed", self._service, lasting.str())
            raise DeliveryError(f"{len(failures)} records not acknowledged: {failures[0].str()}")

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers, callback,
                 partition: int | None = None) -> None:
        """Queue one record: _Refused if the producer refuses it for good, _NotTaken if produce() fails
        for it otherwise, DeliveryError on a fatal producer error."""
        assert self.producer is not None
        pinned = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._last_topic = topic
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=callback, **pinned)
                break
            except BufferError:
                # The local queue is full: let deliveries drain, then try again.
                self._poll(0.1)
            except (KafkaException, SystemError) as exc:
                raise self._not_taken(exc) from exc
        self._poll(0)

    def _not_taken(self, exc: KafkaException | SystemError) -> Exception:
        """What produce() raising ``exc`` means for its record (anything unexplained is raised again)."""
        kafka = kafka_exception_of(exc)
        error = kafka_error_of(kafka) if kafka is not None else None
        if error is not None and error.code() in REFUSED_FOR_GOOD:
            return _Refused(error)  # the producer's own check: about this record
        if error is None or fatal_error_of(exc) is not None:
            return self._fatal_producer_error(exc)
        return _NotTaken(error)

    def _poll(self, timeout_s: float) -> None:
        assert self.producer is not None
        try:
            self.producer.poll(timeout_s)
        except (KafkaException, SystemError) as exc:
            raise self._fatal_producer_error(exc) from exc

    def _wait_for_deliveries(self) -> None:
        assert self.producer is not None
        waited = 0.0
        while len(self.producer) > 0:
            try:
                self.producer.flush(1.0)
            except (KafkaException, SystemError) as exc:
                raise self._fatal_producer_error(exc) from exc
            waited += 1.0
            if self._stopping.is_set() and waited > 10:
                raise DeliveryError(f"{len(self.producer)} records still queued at shutdown")

    def _count_delivered(self, outputs: int, letters: list[DeadLetter]) -> None:
        self._stats.produced += outputs
        self._stats.dead_lettered += len(letters)
        for letter in letters:
            self._metrics.record_dead_letters(letter.source.topic, type(letter.error).__name__)
        if letters:
            first = letters[0].source
            log.warning("%s: %d records dead-lettered (first: %s at %s[%d]@%d)", self._service, len(letters),
                        letters[0].error, first.topic, first.partition, first.offset)
