"""GroupHistory's reading consumer, without a broker."""

from __future__ import annotations

from streamloop.kafka import KafkaSettings
from streamloop.kafka.group_history import GroupHistory


def test_a_range_below_the_log_start_is_read_from_the_first_record_left_not_skipped() -> None:
    config = GroupHistory(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "g", {}).reading_options()
    assert config["auto.offset.reset"] == "earliest"
    assert config["enable.auto.commit"] is False, "reading history never moves the group's offsets"
