"""CompactedTopicReader's table logic without a broker: coalescing, tombstones, bad records."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

from confluent_kafka import Message, TopicPartition
from prometheus_client import generate_latest

from streamloop.kafka import KafkaSettings
from streamloop.kafka.table_reader import CompactedTopicReader
from streamloop.serde import make_serde
from streamloop.telemetry import ServiceMetrics
from tests.unit.test_telemetry import sample_value


def test_apply_coalesces_deletes_and_skips_bad_records(catalog) -> None:
    serde = make_serde(catalog["alerts"].schema, catalog.repository, "alerts")

    def alert(version: str) -> bytes:
        return serde.encode({"pipeline": "p", "alert": "a", "state": "RAISED", "model_version": version,
                             "message": "m", "source": "s", "at": 1})

    changes: list[tuple[str, str | None]] = []

    def on_change(key: str, value: dict | None) -> None:
        changes.append((key, value["model_version"] if value else None))
        if key == "boom":
            raise RuntimeError("a failing callback does not stop the table")

    reader = CompactedTopicReader(KafkaSettings(), "t", serde, on_change)
    messages = [
        Message(topic="t", partition=0, offset=0, key=b"a", value=alert("1")),
        Message(topic="t", partition=0, offset=1, key=b"b", value=alert("1")),
        Message(topic="t", partition=0, offset=2, key=b"a", value=alert("2")),
        Message(topic="t", partition=0, offset=3, key=b"gone", value=None),  # tombstone of an unknown key
        Message(topic="t", partition=0, offset=4, key=None, value=alert("x")),
        Message(topic="t", partition=0, offset=5, key=b"c", value=b"not avro"),
        Message(topic="t", partition=0, offset=6, key=b"boom", value=alert("3")),
    ]
    reader._apply(messages)
    assert changes == [("b", "1"), ("a", "2"), ("boom", "3")]
    assert {k: v["model_version"] for k, v in reader.snapshot().items()} == {"a": "2", "b": "1", "boom": "3"}
    assert (reader.stats.undecodable, reader.stats.tombstones, reader.stats.callback_errors) == (2, 1, 1)
    assert reader.stats.superseded == 1

    reader._apply([Message(topic="t", partition=0, offset=7, key=b"a", value=None)])
    assert changes[-1] == ("a", None) and reader.get("a") is None


def test_skipped_records_are_counted_for_prometheus_from_zero(catalog) -> None:
    # An undecodable champion record left every scorer on the old champion with only a log line.
    serde = make_serde(catalog["alerts"].schema, catalog.repository, "alerts")
    metrics = ServiceMetrics("online-scorer")
    try:
        reader = CompactedTopicReader(KafkaSettings(), "t", serde, metrics=metrics)

        def skipped() -> float | None:
            text = generate_latest(metrics.registry).decode()
            return sample_value(text, "streamloop_table_undecodable_records_total", service="online-scorer", topic="t")

        assert skipped() == 0, "the series exists before the first, so increase() sees it"
        reader._apply([Message(topic="t", partition=0, offset=0, key=b"c", value=b"not avro"),
                       Message(topic="t", partition=0, offset=1, key=None, value=b"x"),
                       Message(topic="t", partition=0, offset=2, key=b"gone", value=None)])
        assert skipped() == 2 == reader.stats.undecodable
    finally:
        metrics.shutdown()


def test_a_registry_that_does_not_answer_is_waited_out_not_a_skipped_deployment(catalog, monkeypatch) -> None:
    from streamloop.serde import RegistryUnavailableError

    serde = make_serde(catalog["alerts"].schema, catalog.repository, "alerts")
    outages = [2]

    class RegistryDownAtFirst:
        def decode(self, data: bytes) -> dict:
            if outages[0]:
                outages[0] -= 1
                raise RegistryUnavailableError("registry lookup failed: connection refused")
            return serde.decode(data)

    reader = CompactedTopicReader(KafkaSettings(), "t", RegistryDownAtFirst())
    monkeypatch.setattr(reader._stopping, "wait", lambda _s: False)  # no real backoff in a unit test
    value = serde.encode({"pipeline": "p", "alert": "a", "state": "RAISED", "model_version": "7", "message": "m",
                          "source": "s", "at": 1})
    reader._apply([Message(topic="t", partition=0, offset=0, key=b"champion", value=value)])
    assert reader.get("champion")["model_version"] == "7" and reader.stats.undecodable == 0


def test_a_live_change_superseded_within_one_read_is_logged(catalog, caplog) -> None:
    # A promotion and its rollback read in one batch: the scorer never serves the first, and
    # the log must still say the key changed, not hide it (only once the table is up to date).
    serde = make_serde(catalog["alerts"].schema, catalog.repository, "alerts")

    def alert(version: str) -> bytes:
        return serde.encode({"pipeline": "p", "alert": "a", "state": "RAISED", "model_version": version,
                             "message": "m", "source": "s", "at": 1})

    reader = CompactedTopicReader(KafkaSettings(), "t", serde, name="scorer-deployments")
    catching_up = [Message(topic="t", partition=0, offset=i, key=b"champion", value=alert(str(i))) for i in range(3)]
    with caplog.at_level("INFO", logger="streamloop.kafka.table_reader"):
        reader._apply(catching_up)
        assert "changed again" not in caplog.text
        reader._caught_up.set()
        reader._apply([Message(topic="t", partition=0, offset=3, key=b"champion", value=alert("promoted")),
                       Message(topic="t", partition=0, offset=4, key=b"champion", value=alert("rolled-back"))])
    assert reader.get("champion")["model_version"] == "rolled-back" and reader.stats.superseded == 3
    assert "scorer-deployments: t key 'champion' changed again within one read; only its latest value (t[0]@4)" \
        in caplog.text


class SlowTopic:
    """A one-partition topic of ``values`` whose records after the first arrive only once ``arrived`` is set."""

    def __init__(self, values: list[bytes]) -> None:
        self.values = values
        self.arrived = threading.Event()
        self.next = 0

    def list_topics(self, topic: str, timeout: float) -> SimpleNamespace:
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None})})

    def get_watermark_offsets(self, _tp: TopicPartition, timeout: float) -> tuple[int, int]:
        return 0, len(self.values)

    def assign(self, _partitions: list[TopicPartition]) -> None:
        pass

    def consume(self, _count: int, timeout: float) -> list[Message]:
        if self.next >= len(self.values) or (self.next and not self.arrived.is_set()):
            time.sleep(timeout)
            return []
        offset, self.next = self.next, self.next + 1
        return [Message(topic="t", partition=0, offset=offset, key=b"champion", value=self.values[offset])]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.next) for tp in partitions]

    def close(self) -> None:
        pass


def test_a_table_read_after_its_waiter_timed_out_still_says_so(monkeypatch) -> None:
    """The retrainer marks its deployments table ready through ``on_caught_up``: it used to do so only
    when the start-up wait succeeded, and a table read late was never trusted."""
    from streamloop.kafka import table_reader

    topic = SlowTopic([b'{"version": "old"}', b'{"version": "current"}'])
    monkeypatch.setattr(table_reader, "Consumer", lambda _config: topic)
    seen_when_caught_up: list[dict | None] = []

    def caught_up() -> None:
        seen_when_caught_up.append(reader.get("champion"))

    reader = CompactedTopicReader(KafkaSettings(), "t", SimpleNamespace(decode=json.loads), idle_pause_s=0,
                                  poll_timeout_s=0.01, on_caught_up=caught_up)
    reader.start()
    try:
        assert not reader.wait_until_caught_up(0.2) and seen_when_caught_up == []
        assert reader.get("champion") == {"version": "old"}, "what a table read in part shows"
        topic.arrived.set()
        assert reader.wait_until_caught_up(5)
        assert seen_when_caught_up == [{"version": "current"}], "once, and with the table read to its end"
    finally:
        reader.stop()
