"""GroupHistory's reading consumer, without a broker."""

from __future__ import annotations

import pytest

from streamloop.kafka import KafkaSettings
from streamloop.kafka.group_history import GroupHistory, HistoryReadCancelled, HistoryUnavailableError
from streamloop.serde.raw import RawSerde


def test_a_range_below_the_log_start_is_read_from_the_first_record_left_not_skipped() -> None:
    config = GroupHistory(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "g", {}).reading_options()
    assert config["auto.offset.reset"] == "earliest"
    assert config["enable.auto.commit"] is False, "reading history never moves the group's offsets"


class PastTheRange:
    """A consumer reset past the range: retention deleted it whole, and the log starts beyond it."""

    def __init__(self) -> None:
        self.consumed = 0

    def assign(self, _partitions) -> None:
        pass

    def consume(self, _n: int, _timeout: float):
        from tests.kafka_fakes import FakeMessage

        self.consumed += 1
        return [FakeMessage(b"x", 500 + self.consumed, topic="t")]


def test_a_range_retention_deleted_whole_is_done_not_read_until_the_timeout() -> None:
    history = GroupHistory(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "g", {"t": None}, timeout_s=5.0)
    consumer = PastTheRange()
    assert history._read(consumer, "t", {0: (100, 200)}) == []
    assert consumer.consumed == 1, "the first record past the range ends it"


class ALongRange:
    """A consumer that hands over READ_SLICE records of a long range at every consume()."""

    def __init__(self) -> None:
        self.consumed = 0
        self.closed = False

    def assign(self, _partitions) -> None:
        pass

    def consume(self, n: int, _timeout: float):
        from tests.kafka_fakes import FakeMessage

        first = self.consumed * n
        self.consumed += 1
        return [FakeMessage(b"x", offset, topic="t") for offset in range(first, first + n)]

    def close(self) -> None:
        self.closed = True


def test_a_long_read_is_given_up_between_two_slices_once_cancelled() -> None:
    """A retrainer's resume read up to 20,000 labels back to its end before a stop (or a lost lease) took."""
    history = GroupHistory(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "g", {"t": RawSerde()}, timeout_s=60.0)
    consumer = ALongRange()
    history._consumer = lambda: consumer  # type: ignore[method-assign]
    with pytest.raises(HistoryReadCancelled, match="given up"):
        history.read("t", {0: (0, 1_000_000)}, cancelled=lambda: consumer.consumed >= 3)
    assert consumer.consumed == 3 and consumer.closed, "at the next slice, and the consumer closed"
    assert not issubclass(HistoryReadCancelled, HistoryUnavailableError), \
        "a caller that goes on without its history when it cannot be read must not go on when stopped"
    consumer = ALongRange()
    assert len(history.read("t", {0: (0, 2_500)}, cancelled=lambda: False)) == 2_500
