"""confluent-kafka stand-ins (message, producer, consumer, admin client) for tests that run without a broker."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

from confluent_kafka import KafkaError, KafkaException

TOPIC = "features.feature-vector.v1"


def fatal_kafka_exception() -> KafkaException:
    """A producer's fatal error: the broker lost its idempotence state."""
    return KafkaException(KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
                                     "sequence desynchronization with broker 1", fatal=True))


def fatal_error_as_system_error() -> SystemError:
    """A producer's fatal error as confluent-kafka can raise it out of poll() or flush(): a SystemError
    caused by the KafkaException (a delivery callback ran with the error still set)."""
    error = SystemError("<built-in function monotonic> returned a result with an exception set")
    error.__cause__ = fatal_kafka_exception()
    return error


def fatal_error_lost_as_system_error() -> SystemError:
    """A producer's fatal error as confluent-kafka can also raise it out of poll() or flush(): lost, a bare
    SystemError (a later callback in the same call cleared the exception, which the call still fails with)."""
    return SystemError("<method 'flush' of 'cimpl.Producer' objects> returned NULL without setting an exception")


def fatal_state_exception() -> KafkaException:
    """What produce() raises on a producer past a fatal error, whatever the error was."""
    return KafkaException(KafkaError(KafkaError._FATAL, "Unable to produce message: Local: Fatal error"))


class FakeMessage:
    def __init__(self, value: bytes | None, offset: int, key: bytes | None = b"k", topic: str = TOPIC,
                 partition: int = 0, headers=None, timestamp_ms: int = 1_700_000_000_000) -> None:
        self._value, self._offset, self._key, self._topic = value, offset, key, topic
        self._partition, self._headers, self._timestamp_ms = partition, headers, timestamp_ms

    def error(self):
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self):
        return self._key

    def value(self):
        return self._value

    def headers(self):
        return self._headers

    def timestamp(self):
        return (1, self._timestamp_ms)


class InFatalStateAfterFailing:
    """Mixed in before a fake producer: once ``failed`` (and ``fatal``), produce() raises the fatal state,
    and it refuses a value over message.max.bytes as librdkafka does, the probe a bare SystemError is
    checked with (streamloop.kafka.exceptions.fatal_producer_error_of). ``fatal=False``: a producer in
    no fatal error."""

    fatal = True
    failed = False

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None, **pinned) -> None:  # noqa: ANN001
        if self.failed and self.fatal:
            raise fatal_state_exception()
        if value is not None and len(value) > 1_000_000:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large"))
        super().produce(topic, value, key, headers, on_delivery, **pinned)


class FakeProducer:
    """Records what is produced and acknowledges it at once; ``deliver`` decides the outcome."""

    def __init__(self) -> None:
        self.produced: list[tuple[str, bytes | None, bytes | None, list]] = []

    def deliver(self, value: bytes | None):
        """The delivery error for this record, or None (acknowledged)."""
        return None

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None, **_pinned) -> None:
        error = self.deliver(value)
        self.produced.append((topic, key, value, headers or []))
        if on_delivery is not None:
            on_delivery(error, None)

    def poll(self, _timeout: float = 0) -> int:
        return 0

    def flush(self, _timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:
        return 0


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list = []
        self.seeks: list = []
        self.closed = False

    def commit(self, offsets=None, asynchronous=True) -> None:
        self.commits.append(offsets)

    def seek(self, partition) -> None:
        self.seeks.append(partition)

    def close(self) -> None:
        self.closed = True


class FakeAdmin:
    """The AdminClient calls streamloop makes, on a broker with these topics (name -> partitions).

    ``refuse``: growing a topic fails with that error; ``members``: a consumer group's members at each
    description (the last one stays). ``grown`` holds each (topic, new count) asked for and granted.
    """

    def __init__(self, topics: dict[str, int] | None = None, refuse: KafkaError | None = None,
                 members: list[list[SimpleNamespace]] | None = None) -> None:
        self.topics = dict(topics or {})
        self.refuse = refuse
        self.grown: list[tuple[str, int]] = []
        self.members = members or [[]]
        self.described = 0

    def list_topics(self, topic: str | None = None, timeout: float = 0) -> SimpleNamespace:
        assert topic is None, "a metadata request naming a topic may create it (auto-create)"
        return SimpleNamespace(topics={
            name: SimpleNamespace(partitions={p: SimpleNamespace(id=p) for p in range(count)}, error=None)
            for name, count in self.topics.items()})

    def create_topics(self, new: list, operation_timeout: float = 0) -> dict[str, Future]:
        created: dict[str, Future] = {}
        for request in new:
            self.topics[request.topic] = request.num_partitions
            created[request.topic] = future = Future()
            future.set_result(None)
        return created

    def create_partitions(self, new: list, operation_timeout: float = 0) -> dict[str, Future]:
        (request,) = new
        future: Future = Future()
        if self.refuse is not None:
            future.set_exception(KafkaException(self.refuse))
        else:
            self.grown.append((request.topic, request.new_total_count))
            self.topics[request.topic] = request.new_total_count
            future.set_result(None)
        return {request.topic: future}

    def describe_consumer_groups(self, groups: list[str], request_timeout: float = 0) -> dict[str, Future]:
        (group,) = groups
        future: Future = Future()
        future.set_result(SimpleNamespace(members=self.members[min(self.described, len(self.members) - 1)]))
        self.described += 1
        return {group: future}
