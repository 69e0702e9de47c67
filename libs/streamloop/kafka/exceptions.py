from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from streamloop.errors import StreamloopError


class KafkaRuntimeError(StreamloopError):
    """The Kafka runtime failed."""


class DeliveryError(KafkaRuntimeError):
    """Some outputs of a batch were not acknowledged by the broker; the batch will be retried."""


class RecordRefusedError(KafkaRuntimeError):
    """Kafka refused one output for good (too large, invalid): sending it again cannot succeed.

    Its input record goes to the dead-letter topic with this error instead; an output with none
    (a tick's) is dropped and counted under ``topic``, the output's, when the raiser knows it.
    """

    def __init__(self, message: str, *, topic: str | None = None) -> None:
        super().__init__(message)
        self.topic = topic


class BrokerUnavailableError(KafkaRuntimeError):
    """The broker could not be reached within the allowed time."""


class UnknownTopicError(KafkaRuntimeError):
    """The topic does not exist on the broker or in the catalog."""


class InvalidRecordError(KafkaRuntimeError):
    """A record is well-formed Avro but breaks a rule; it goes to the dead-letter topic.

    ``rule`` is the first rule broken; ``rules`` every one, when the check looked for more.
    """

    def __init__(self, message: str, rule: str | None = None, rules: list[str | None] | None = None) -> None:
        super().__init__(message)
        self.rule = rule
        self.rules = [r for r in rules if r] if rules else ([rule] if rule else [])


def kafka_error_of(exc: KafkaException) -> KafkaError | None:
    """The KafkaError a KafkaException carries (its code, fatal and retriable flags), if it carries one."""
    return exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None


def kafka_exception_of(exc: BaseException) -> KafkaException | None:
    """The KafkaException ``exc`` is, or was raised from; None if neither.

    confluent-kafka raises a client's fatal error (OUT_OF_ORDER_SEQUENCE_NUMBER after a broker
    restart, say) from the callback dispatch of ``poll()`` or ``flush()`` without setting it aside,
    so a delivery callback that runs later in the same call fails on its first builtin, and the call
    raises ``SystemError("<built-in function monotonic> returned a result with an exception set")``
    with the KafkaException as its cause (seen in a broker-restart fault run).
    """
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is short; a cycle must not loop for ever
        if seen is None:
            return None
        if isinstance(seen, KafkaException):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def fatal_error_of(exc: BaseException) -> KafkaError | None:
    """The fatal client error ``exc`` carries, itself or as the cause of a SystemError
    (``kafka_exception_of``): a client that raised it is of no further use, only a new one is."""
    kafka = kafka_exception_of(exc)
    error = kafka_error_of(kafka) if kafka is not None else None
    return error if error is not None and (error.fatal() or error.code() == KafkaError._FATAL) else None



def fatal_producer_error_of(exc: BaseException, producer: Producer | None, topic: str | None,
                            config: Mapping[str, Any]) -> KafkaError | None:
    """The fatal producer error ``exc`` carries (``fatal_error_of``) or, for a SystemError that carries
    no KafkaException, the one ``producer`` is in (``probed_fatal_error``, asked about ``topic``, a
    topic it produced to; None if there is none or no producer: one that never produced lost nothing).

    confluent-kafka raises a fatal error from the callback dispatch of poll() or flush() by setting
    it as the pending exception, not setting it aside as it does a callback's own exception, and
    the dispatch goes on: a Python callback that runs later in the same call (a log line through
    the ``logger``, an error callback, a delivery report) can clear it without a trace (a cold
    logging call does), and the call then fails with
    ``SystemError("<method 'flush' of 'cimpl.Producer' objects> returned NULL without setting an
    exception")`` (seen in a broker-restart fault run of the online scorer).
    """
    error = fatal_error_of(exc)
    if (error is None and isinstance(exc, SystemError) and kafka_exception_of(exc) is None
            and producer is not None and topic is not None):
        error = probed_fatal_error(producer, topic, config)
    return error


def probed_fatal_error(producer: Producer, topic: str, config: Mapping[str, Any]) -> KafkaError | None:
    """The fatal error (_FATAL) ``producer``, made with ``config``, is in; None if none, or if it cannot tell.

    confluent-kafka has no call for it, and poll() and flush() return as usual once the error was
    raised (or lost): produce() is asked instead, with a record to ``topic`` one byte over
    message.max.bytes, which librdkafka answers at once without queueing it: _FATAL if the producer
    is in a fatal error (checked first), MSG_SIZE_TOO_LARGE otherwise.
    """
    limit = int(config.get("message.max.bytes", 1_000_000))
    try:
        producer.produce(topic, value=bytes(limit + 1))
    except KafkaException as exc:
        return fatal_error_of(exc)
    except (BufferError, SystemError):
        return None
    return None


@contextmanager
def unwrapped_kafka_exceptions() -> Iterator[None]:
    """Raise the SystemError that carries a KafkaException (``kafka_exception_of``) as that KafkaException,
    so that code around a producer's produce, poll and flush catches and reports one kind of error.

    The SystemError is left out of the chain: it names only the builtin that happened to run next.
    """
    try:
        yield
    except SystemError as exc:
        kafka = kafka_exception_of(exc)
        if kafka is None:
            raise
        raise kafka from None
