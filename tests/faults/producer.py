"""The user's side of a fault test: an idempotent producer that checks every delivery."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from confluent_kafka import KafkaException, Producer

from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.exceptions import kafka_exception_of


class UserProducer:
    """The user's side: an idempotent producer that checks every delivery.

    After a fatal error (noida-db answers OUT_OF_ORDER_SEQUENCE_NUMBER to an idempotent producer
    whose batch straddled a broker restart) it is replaced by a new one, which sends again every
    record not yet acknowledged: a record may then be in the topic twice, none is dropped.
    """

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.pending: dict[int, tuple[str, str, bytes]] = {}
        self.recreated = 0
        # Each record handed to a producer, by the id it was sent under: a copy the broker took and
        # then lost in a restart may still have been read (the topic no longer shows it).
        self.copies_sent: Counter[str] = Counter()
        self._ids: dict[int, str] = {}
        self._next = 0
        self._fatal = False
        self._producer = self._new()

    def _new(self) -> Producer:
        return Producer(self.kafka.producer(**{"linger.ms": 2}))

    def send(self, topic: str, key: str, value: bytes, record_id: str | None = None) -> None:
        self._next += 1
        self.pending[self._next] = (topic, key, value)
        if record_id is not None:
            self._ids[self._next] = record_id
        self._produce(self._next)

    def _produce(self, token: int) -> None:
        topic, key, value = self.pending[token]
        while True:
            if self._fatal:
                self._recreate()
                return  # _recreate sent every pending record, this one included
            try:
                self._producer.produce(topic, value=value, key=key.encode(),
                                       on_delivery=lambda error, _m, t=token: self._delivered(t, error))
                self._producer.poll(0)
                if token in self._ids:
                    self.copies_sent[self._ids[token]] += 1
                return
            except BufferError:
                self._producer.poll(0.05)
            except (KafkaException, SystemError) as exc:  # SystemError: see kafka_exception_of
                if kafka_exception_of(exc) is None:
                    raise
                self._fatal = True

    def _delivered(self, token: int, error: Any) -> None:
        if error is None:
            self.pending.pop(token, None)
            self._ids.pop(token, None)
        elif error.fatal():
            self._fatal = True
        # Any other error: librdkafka already retried until the message timed out; flush() resends it.

    def _recreate(self) -> None:
        self._fatal = False
        self.recreated += 1
        self._producer = self._new()
        for token in sorted(self.pending):
            self._produce(token)

    def flush(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            try:
                self._producer.flush(1.0)
            except (KafkaException, SystemError) as exc:
                if kafka_exception_of(exc) is None:
                    raise
                self._fatal = True
            if self._fatal:
                self._recreate()
            elif self.pending and len(self._producer) == 0:
                for token in sorted(self.pending):  # failed without being fatal: send again
                    self._produce(token)
        assert not self.pending, f"{len(self.pending)} records never acknowledged"
