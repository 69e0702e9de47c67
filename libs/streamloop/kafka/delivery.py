"""Getting a batch's outputs and dead letters acknowledged by the broker, whatever it takes.

The runner commits a batch's input offsets only once every output and dead letter of it is
acknowledged (acks=all, idempotent producer): at-least-once. So delivery never gives up while the
runner runs; a retry sends again only what the broker did not acknowledge, because re-sending a
whole batch after a broker restart wrote every acknowledged output of it twice.

Two failures need more than a retry:

- A fatal producer error: the broker lost the idempotent producer's sequence state, as noida-db
  does on a restart, and lost records it had acknowledged with it. The producer is replaced, and
  the outputs and dead letters acknowledged in the ``resend_window_s`` before the broker went
  away are sent again, since their inputs are committed and no replay would bring them back. The
  broker went away at the first sign of it since the last acknowledgement: a connection lost or
  refused, or every broker down, as the producer's error callback reports it (the runner serves
  the callbacks between batches, so an idle stage times it within a turn), or the fatal error
  itself when nothing came before it. Not when the error is met: a stage with no output for a
  minute after the restart meets it a minute later, and what it wrote just before the restart is
  what the broker lost. Nor back from the last acknowledgement: a stage idle for a day would send
  its day-old outputs again, undoing whatever was written over them since (a rollback in a
  compacted table). Duplicates downstream are the price. For the same reason a stop sends
  those not yet acknowledged once more before leaving, while the batch's own outputs wait for its
  replay, and a runner that leaves for another reason after the error was reported, before a
  batch met it, sends the window again on its way out. What is left: an output at risk is sent
  again only when the stage next produces, so another writer's newer record of the same key in a
  compacted table, written in between, ends up before it; and an acknowledgement after the broker
  came back (another partition's) ends the sign, leaving the window back from the fatal error.
- A record Kafka refuses for good (too large, invalid): no retry can send it, and waiting for it
  would hold its partition forever. The output's input record is dead-lettered instead, and a dead
  letter Kafka refuses goes again without its value. An output with no input record (a tick's) is
  dropped, logged with Kafka's error and counted in ``RunnerStats.dropped`` and
  ``streamloop_outputs_dropped_total`` (reason ``refused``). The broker answers
  such errors for a whole produce batch, so the batch is first sent again one record at a time:
  only a record refused alone is refused for good.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streamloop.kafka import dead_letters
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.exceptions import (
    DeliveryError,
    RecordRefusedError,
    fatal_error_of,
    fatal_producer_error_of,
    kafka_error_of,
    kafka_exception_of,
)
from streamloop.kafka.records import Headers, RecordOrigin

if TYPE_CHECKING:  # the runner owns a Delivery: importing it at run time would be circular
    from streamloop.kafka.runner import RunnerMetrics, RunnerSettings, RunnerStats

# The runner's logger: these lines report on the runner's batches, and every log line names its logger.
log = logging.getLogger("streamloop.kafka.runner")

# Which output a record is, whichever time its input was read: the n-th output to a topic from one
# input record (its topic, partition and offset). A replayed input yields outputs of the same
# identities; outputs with no input record (ticks) and dead letters have none.
Identity = tuple[str, str, int, int, int] | None
Encoded = tuple[str, bytes | None, bytes | None, Headers, int | None, Identity]

# Errors that no retry cures when they are about one record: it is too large, or the broker finds
# it invalid. The broker answers them for a whole produce batch, though (a topic whose
# max.message.bytes is below the producer's batch), so a record counts as refused only when it
# was sent alone; the producer's own size check (at produce()) is about one record always.
# Anything else (a timeout, a missing topic, a refused authorization, a pinned partition the topic
# lacks), in a delivery report or raised by produce(), may pass once the broker or its configuration
# recovers, so the batch waits and retries.
REFUSED_FOR_GOOD = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD,
                              KafkaError.RECORD_LIST_TOO_LARGE})

# Client errors that say the broker went away: a connection lost or refused, every broker down, a
# name that no longer resolves. librdkafka reconnects on its own; the runner reports them, and the
# first the producer reports since its last acknowledgement anchors the re-send window.
BROKER_UNREACHABLE = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE})

# Why an output with no input record to dead-letter (a tick's) was dropped, as
# streamloop_outputs_dropped_total's reason: Kafka refused it for good, or it did not match its
# schema (the runner's encoding).
DROPPED_REFUSED = "refused"
DROPPED_INVALID = "invalid"
_DROPPED_AS = {DROPPED_REFUSED: "dropped an output with no input record",
               DROPPED_INVALID: "dropped an output that does not match its schema"}


class _NotTaken(Exception):  # noqa: N818 - a signal inside delivery, never raised to callers
    """produce() raised a non-fatal error for one record, which is not queued: its topic is missing or
    unauthorized, or its pinned partition does not exist (librdkafka reports such an error in the
    first delivery report, then at produce() once it knows the topic's state)."""

    def __init__(self, error: KafkaError) -> None:
        super().__init__(error.str())
        self.error = error


class _Refused(_NotTaken):
    """The producer refused one record at produce() for good (larger than its message.max.bytes)."""


class _RefusedInBatch(DeliveryError):
    """The broker refused records sent in a batch as too large or invalid: sent again one at a time,
    each refusal is then about its own record."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
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


class Delivery:
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
        # re-send, no older than the resend_window_s before the newest (_forget_acknowledged).
        self._acknowledged: deque[tuple[float, Encoded]] = deque()
        # Monotonic time of the first sign since the last acknowledgement that the broker went away
        # (BROKER_UNREACHABLE, or the fatal error itself): the re-send window ends there.
        self._gone_at: float | None = None
        # The topic last produced to: what fatal_producer_error_of asks the producer about.
        self._last_topic: str | None = None
        self.producer: Producer | None = None

    def open(self) -> None:
        self.producer = Producer(self._producer_config)

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

    # -- records Kafka refuses for good ------------------------------------------------------

    def _dead_letters_for_refused(self, outputs: list[Encoded], refused: dict[int, KafkaError],
                                  raw: dict[tuple[str, int, int], Message] | None) -> list[DeadLetter]:
        """The input records of outputs Kafka refused for good, as dead letters saying why."""
        letters: list[DeadLetter] = []
        inputs: set[tuple[str, int, int]] = set()
        for index, error in sorted(refused.items()):
            topic, _key, value, _headers, _partition, identity = outputs[index]
            size = 0 if value is None else len(value)
            reason = RecordRefusedError(f"output to {topic} ({size:,} bytes) refused by Kafka: {error.str()}")
            message = raw.get(identity[1:4]) if raw is not None and identity is not None else None
            if message is None:
                # A tick's output: no input record to keep it by, and the dead-letter topics are the
                # inputs' (its own topic may have none). No retry can send it, and waiting for one
                # would hold every partition: it is dropped, and counted as lost.
                self.drop(topic, DROPPED_REFUSED, reason)
                continue
            if identity[1:4] in inputs:
                continue  # another refused output of the same input: its dead letter is on its way
            inputs.add(identity[1:4])
            log.error("%s: %s; its input %s[%d]@%d goes to the dead letters", self._service, reason,
                      message.topic(), message.partition(), message.offset())
            letters.append(DeadLetter(message, dead_letters.STAGE_PRODUCE, reason))
        return letters

    def _without_values(self, letters: list[DeadLetter], refused: dict[int, KafkaError]) -> list[DeadLetter]:
        """Dead letters Kafka refused, to send again without their value; dropped if that was refused too."""
        again: list[DeadLetter] = []
        for index, error in sorted(refused.items()):
            letter = letters[index]
            source = letter.source
            if letter.value_dropped is not None:
                log.error("%s: a dead letter for %s[%d]@%d was refused even without its value (%s); the "
                          "record stays in its topic only", self._service, source.topic, source.partition,
                          source.offset, error.str())
                continue
            value = letter.message.value()
            reason = (f"{0 if value is None else len(value):,} bytes refused by Kafka as a dead letter "
                      f"({error.str()}); the original is {source.topic}[{source.partition}]@{source.offset}")
            log.error("%s: %s", self._service, reason)
            again.append(DeadLetter(letter.message, letter.stage, letter.error, letter.origin, reason))
        return again

    # -- a fatal producer error, and the outputs it puts at risk ------------------------------

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal():
            # Never from confluent-kafka (1.0 on): it raises a fatal error from the poll() or flush() that serves
            # the callback instead of calling error_cb (_fatal_producer_error takes it there), and passes
            # error_cb only errors with fatal() False. Kept for a client that does call it so: the next retry
            # still needs a new producer.
            self._producer_fatal = True
            self._broker_gone()
        elif error.code() in BROKER_UNREACHABLE:
            self._broker_gone()
        self._report_client_error(error)

    def _broker_gone(self) -> None:
        """A sign that the broker went away, and may lose what it acknowledged last: the first since the
        last acknowledgement is when the re-send window ends."""
        if self._gone_at is None:
            self._gone_at = time.monotonic()

    def _fatal_producer_error(self, exc: KafkaException | SystemError) -> DeliveryError:
        """A fatal producer error (e.g. OUT_OF_ORDER_SEQUENCE_NUMBER after a broker restart lost the
        idempotence state) raised by produce, poll or flush, itself, as the cause of a SystemError
        (``kafka_exception_of``) or lost from a SystemError (``_fatal_error_of``): the batch is retried
        on a new producer. Anything else is raised again."""
        error = self._fatal_error_of(exc)
        if error is None:
            raise exc
        self._producer_fatal = True
        self._broker_gone()
        return DeliveryError(f"producer fatal error: {error.str()}")

    def _fatal_error_of(self, exc: KafkaException | SystemError) -> KafkaError | None:
        """The fatal producer error ``exc`` carries or, for a bare SystemError, the one the producer is
        in (``fatal_producer_error_of``, asked about the topic last produced to)."""
        return fatal_producer_error_of(exc, self.producer, self._last_topic, self._producer_config)

    def _recreate_producer(self) -> None:
        log.warning("%s: producer hit a fatal error; creating a new one", self._service)
        assert self.producer is not None
        try:
            self.producer.flush(5)
        except (KafkaException, SystemError) as exc:  # a fatal producer raises again; what it holds goes anew
            if kafka_exception_of(exc) is None and self._fatal_error_of(exc) is None:
                raise
            log.warning("%s: discarding the failed producer: %s", self._service, exc)
        self.producer = Producer(self._producer_config)
        self._producer_fatal = False

    def _replace_producer(self, besides: Sequence[Encoded] = ()) -> list[Encoded]:
        """A new producer for a failed one, and the outputs its fatal error put at risk, to send again."""
        # Every fatal error leaves a sign (_broker_gone), which no acknowledgement ends while the producer
        # is failed (its last flush may acknowledge some): now only stands in, should one be missing.
        gone_at = self._gone_at if self._gone_at is not None else time.monotonic()
        self._recreate_producer()
        self._gone_at = None
        return self._recently_acknowledged(gone_at, besides=besides)

    def _remember_acknowledged(self, record: Encoded) -> None:
        if not self._producer_fatal:
            # The broker is there: a sign before this acknowledgement says nothing of what it lost since.
            self._gone_at = None
        if not self._settings.resend_window_s:
            return
        self._acknowledged.append((time.monotonic(), record))
        self._forget_acknowledged()

    def _forget_acknowledged(self) -> None:
        """Keep at most ``resend_max_records``, none acknowledged more than ``resend_window_s`` before the
        newest or, after a sign of the broker going away, before that sign: the window ends at the first
        sign since the newest acknowledgement (acknowledgements after it come only from a failed
        producer's last flush), and these are all it can hold. Not trimmed for the time since: a stage
        idle after a broker restart still has what it wrote just before."""
        if not self._acknowledged:
            return
        end = self._acknowledged[-1][0] if self._gone_at is None else min(self._gone_at, self._acknowledged[-1][0])
        horizon = end - self._settings.resend_window_s
        while self._acknowledged[0][0] < horizon or len(self._acknowledged) > self._settings.resend_max_records:
            self._acknowledged.popleft()

    def _recently_acknowledged(self, gone_at: float, besides: Sequence[Encoded] = ()) -> list[Encoded]:
        """The outputs acknowledged in the ``resend_window_s`` before ``gone_at`` (when the broker went away),
        to send again (taken: they are remembered anew when acknowledged again). Duplicates downstream are
        the price: at-least-once, nothing lost. Those acknowledged after it (by the failed producer's last
        flush) are at risk as well, and go too.

        ``besides``: records about to be sent anyway. The failed producer's last flush
        (``_recreate_producer``) can acknowledge outputs the retry still holds as unacknowledged: sent
        both as a re-send and as the retry, they went twice more for one fault.
        """
        horizon = gone_at - self._settings.resend_window_s
        sending = {id(record) for record in besides}
        # One copy per identity, the latest: an input read again within the window (its offset
        # commit was lost) left two acknowledged copies of each of its outputs, and sending both
        # again wrote four of a record read once (CI, a broker restart).
        latest: dict[object, Encoded] = {}
        for acknowledged_at, record in self._acknowledged:
            if acknowledged_at < horizon:
                continue
            identity = record[5]
            latest[identity if identity is not None else object()] = record
        records = [record for record in latest.values() if id(record) not in sending]
        self._acknowledged.clear()
        if records:
            self._stats.resent += len(records)
            log.warning("%s: sending again the %d outputs acknowledged in the %.0f s before the broker went away "
                        "(%.0f s ago): it may have lost them", self._service, len(records),
                        self._settings.resend_window_s, time.monotonic() - gone_at)
        return records

    def _resend_before_leaving(self, owed: list[Encoded], timeout_s: float = 10.0) -> None:
        """On a stop: send once more the earlier batches' outputs that may be lost, waiting at most ``timeout_s``.

        ``owed`` are those sent again after a fatal producer error and not acknowledged yet. During a
        fatal producer error, the outputs acknowledged in the window join them, on a new producer.
        """
        records = owed
        if self._producer_fatal:
            records = self._replace_producer(besides=owed) + owed
        if not records:
            return
        unacknowledged: list[str] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                unacknowledged.append(error.str())

        try:
            for topic, key, value, headers, partition, _identity in records:
                try:
                    self._produce(topic, key, value, headers, delivered, partition)
                except _NotTaken as failure:  # taken before; a new producer's limit may differ, a topic may go
                    unacknowledged.append(failure.error.str())
            left = self.producer.flush(timeout_s) if self.producer is not None else 0
        except (KafkaException, SystemError, DeliveryError) as exc:
            if isinstance(exc, SystemError) and kafka_exception_of(exc) is None and self._fatal_error_of(exc) is None:
                raise
            log.error("%s: stopping: could not send again the outputs a fatal producer error put at risk: %s",
                      self._service, exc)
            return
        if left or unacknowledged:
            log.error("%s: stopping: %d of the %d outputs sent again were not acknowledged (%s)", self._service,
                      left + len(unacknowledged), len(records), unacknowledged[0] if unacknowledged else "timeout")
