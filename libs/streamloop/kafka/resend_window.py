"""A fatal producer error, and the outputs it puts at risk: the re-send window.

A fatal producer error means the broker lost the idempotent producer's sequence state, as noida-db does
on a restart, and lost records it had acknowledged with it. The producer is replaced, and the outputs
and dead letters acknowledged in the ``resend_window_s`` before the broker went away are sent again,
since their inputs are committed and no replay would bring them back. The broker went away at the
first sign of it since the last acknowledgement: a connection lost or refused, or every broker down,
as the producer's error callback reports it (the runner serves the callbacks between batches, so an
idle stage times it within a turn), or the fatal error itself when nothing came before it. Not when
the error is met: a stage with no output for a minute after the restart meets it a minute later, and
what it wrote just before the restart is what the broker lost. Nor back from the last
acknowledgement: a stage idle for a day would send its day-old outputs again, undoing whatever was
written over them since (a rollback in a compacted table). Duplicates downstream are the price.

For the same reason a stop sends those not yet acknowledged once more before leaving, while the
batch's own outputs wait for its replay, and a runner that leaves for another reason after the error
was reported, before a batch met it, sends the window again on its way out. What is left: an output
at risk is sent again only when the stage next produces, so another writer's newer record of the
same key in a compacted table, written in between, ends up before it; and an acknowledgement after
the broker came back (another partition's) ends the sign, leaving the window back from the fatal error.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streamloop.kafka.delivery_records import Encoded
from streamloop.kafka.exceptions import DeliveryError, fatal_producer_error_of, kafka_exception_of
from streamloop.kafka.refused_records import _NotTaken
from streamloop.kafka.runner_metrics import RunnerStats
from streamloop.kafka.runner_settings import RunnerSettings

# The runner's logger: these lines report on the runner's batches, and every log line names its logger.
log = logging.getLogger("streamloop.kafka.runner")

# Client errors that say the broker went away: a connection lost or refused, every broker down, a
# name that no longer resolves. librdkafka reconnects on its own; the runner reports them, and the
# first the producer reports since its last acknowledgement anchors the re-send window.
BROKER_UNREACHABLE = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE})


class ResendWindow:
    """Delivery's producer replaced after a fatal error, and what was acknowledged in the window sent again."""

    _service: str
    _settings: RunnerSettings
    _stats: RunnerStats
    _report_client_error: Callable[[KafkaError], None]
    _producer_config: dict
    _new_producer: Callable[[], Producer]
    _producer_fatal: bool
    _acknowledged: deque[tuple[float, Encoded]]
    _gone_at: float | None
    _last_topic: str | None
    producer: Producer | None

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
        self.producer = self._new_producer()
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
