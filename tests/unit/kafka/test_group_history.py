"""GroupHistory's reading consumer, without a broker."""

from __future__ import annotations

from streamloop.kafka import KafkaSettings
from streamloop.kafka.group_history import GroupHistory


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
