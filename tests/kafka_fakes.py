"""A confluent-kafka Message stand-in for tests that drive consumers and runners without a broker."""

from __future__ import annotations

TOPIC = "features.feature-vector.v1"


class FakeMessage:
    def __init__(self, value: bytes | None, offset: int, key: bytes | None = b"k", topic: str = TOPIC,
                 partition: int = 0, headers=None) -> None:
        self._value, self._offset, self._key, self._topic = value, offset, key, topic
        self._partition, self._headers = partition, headers

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
        return (1, 1_700_000_000_000)
