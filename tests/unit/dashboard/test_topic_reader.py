"""The monitoring-topic reader against a broker stood in for: it outlives a registry hiccup and its own
failures, reads the topics that exist while it waits for the others, and says when it has read them
up to where they ended when it began."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from streamloop.contracts import Catalog, load_catalog, load_pipeline
from streamloop.dashboard import sources
from streamloop.dashboard.records import ROLES
from streamloop.dashboard.sources import TopicRecordReader
from streamloop.kafka.configuration import KafkaSettings
from streamloop.serde.exceptions import RegistryUnavailableError
from streamloop.service.settings import SerdeSettings
from tests.kafka_fakes import FakeMessage
from tests.unit.dashboard.conftest import T0, alert, decision

DEMO_SPEC = Path(__file__).resolve().parents[3] / "examples" / "card_fraud" / "pipeline.yaml"


class FakeBroker:
    """One partition per topic, its records' values; the consumers the reader makes read from it."""

    def __init__(self, topics: dict[str, list[bytes]]) -> None:
        self.logs = topics
        self.lock = threading.Lock()
        self.consumers: list[FakeConsumer] = []
        self.fail_consume: list[Exception] = []  # raised by the next consume calls, one each

    def consumer(self, _config: dict[str, Any]) -> FakeConsumer:
        made = FakeConsumer(self)
        self.consumers.append(made)
        return made


class FakeConsumer:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.positions: dict[str, int] = {}
        self.assignments: list[dict[str, int]] = []  # every assignment, with its start offsets
        self.closed = False

    def list_topics(self, topic: str | None = None, timeout: float | None = None):
        with self.broker.lock:
            return SimpleNamespace(topics={name: SimpleNamespace(partitions={0: None}, error=None)
                                           for name in self.broker.logs})

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float | None = None, cached: bool = False):
        with self.broker.lock:
            return 0, len(self.broker.logs[tp.topic])

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.positions = {}
        self.incremental_assign(partitions)

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.positions[tp.topic] = 0 if tp.offset == OFFSET_BEGINNING else tp.offset
        self.assignments.append({tp.topic: self.positions[tp.topic] for tp in partitions})

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(topic, 0) for topic in self.positions]

    def unassign(self) -> None:
        self.positions = {}

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, 0, self.positions.get(tp.topic, -1001)) for tp in partitions]

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        if self.broker.fail_consume:
            raise self.broker.fail_consume.pop(0)
        out = []
        with self.broker.lock:
            for topic, position in self.positions.items():
                log = self.broker.logs[topic]
                while position < len(log) and len(out) < num_messages:
                    out.append(FakeMessage(log[position], position, key=b"k", topic=topic))
                    position += 1
                self.positions[topic] = position
        if not out:
            time.sleep(timeout)
        return out

    def close(self) -> None:
        self.closed = True


class FlakyRegistry:
    """A serde whose schema lookups fail ``failures`` times before it answers."""

    def __init__(self, serde: Any, failures: int) -> None:
        self.serde = serde
        self.failures = failures
        self.lookups = 0

    def decode(self, raw: bytes) -> dict[str, Any] | None:
        self.lookups += 1
        if self.failures:
            self.failures -= 1
            raise RegistryUnavailableError("schema id 7: registry lookup failed: timed out")
        return self.serde.decode(raw)


def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.01)


@pytest.fixture
def catalog() -> Catalog:
    return load_catalog(load_pipeline(DEMO_SPEC))


@pytest.fixture
def alerts(catalog: Catalog) -> list[bytes]:
    serde = SerdeSettings().serde(catalog["alerts"], catalog.repository)
    return [serde.encode(alert(f"alert_{n}", "RAISED", T0 + n)) for n in range(4)]


def broker_with(catalog: Catalog, alerts: list[bytes], monkeypatch: pytest.MonkeyPatch) -> FakeBroker:
    logs: dict[str, list[bytes]] = {catalog[role].name: [] for role in ROLES}
    logs[catalog["alerts"].name] = alerts
    broker = FakeBroker(logs)
    monkeypatch.setattr(sources, "Consumer", broker.consumer)
    return broker


class Page:
    """What the reader tells the dashboard model: the records and every error it showed."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str | None, dict[str, Any] | None]] = []
        self.errors: list[str | None] = [None]

    def reader(self, catalog: Catalog) -> TopicRecordReader:
        return TopicRecordReader(KafkaSettings(bootstrap_servers="127.0.0.1:1"), catalog,
                                 lambda *record: self.records.append(record), on_error=self.errors.append,
                                 poll_timeout_s=0.01, idle_pause_s=0)

    def alerts(self) -> list[str]:
        return [value["alert"] for role, _key, value in self.records if role == "alerts"]


def test_a_registry_hiccup_is_waited_out_shown_meanwhile_and_no_record_is_skipped(catalog, alerts, monkeypatch):
    broker_with(catalog, alerts, monkeypatch)
    page = Page()
    reader = page.reader(catalog)
    flaky = reader._serdes[catalog["alerts"].name] = FlakyRegistry(reader._serdes[catalog["alerts"].name], 2)
    reader.start()
    try:
        eventually(lambda: len(page.alerts()) == 4)
        assert page.alerts() == ["alert_0", "alert_1", "alert_2", "alert_3"]
        assert flaky.lookups == 6, "the first record was decoded again until the registry answered"
        waiting = [e for e in page.errors if e is not None]
        assert waiting and all(e.startswith("RegistryUnavailableError: schema id 7: registry lookup failed")
                               for e in waiting), page.errors
        assert page.errors[-1] is None, "the error goes once the registry answers"
        assert reader._thread.is_alive() and reader.undecodable == 0
    finally:
        reader.stop()
    assert not reader._thread.is_alive()


def test_a_reader_that_fails_reads_again_from_the_record_after_the_last_it_handed_over(catalog, alerts,
                                                                                        monkeypatch):
    broker = broker_with(catalog, alerts[:2], monkeypatch)
    page = Page()
    reader = page.reader(catalog).start()
    try:
        eventually(lambda: len(page.alerts()) == 2)
        fatal = KafkaException(KafkaError(KafkaError._FATAL, "Fatal error"))
        broker.fail_consume.append(fatal)
        eventually(lambda: len(broker.consumers) == 2)
        with broker.lock:
            broker.logs[catalog["alerts"].name] += alerts[2:]
        eventually(lambda: len(page.alerts()) == 4)
        time.sleep(0.1)
        assert page.alerts() == ["alert_0", "alert_1", "alert_2", "alert_3"], "none lost, none twice"
        assert reader.restarts == 1 and broker.consumers[0].closed
        started = {topic: start for assignment in broker.consumers[1].assignments
                   for topic, start in assignment.items()}
        assert started[catalog["alerts"].name] == 2
        assert any(e is not None and e.startswith("KafkaException:") for e in page.errors), page.errors
        assert page.errors[-1] is None, "the error goes once the topics are read again"
    finally:
        reader.stop()


def test_a_record_the_page_cannot_take_is_counted_and_the_next_ones_still_come(catalog, alerts, monkeypatch):
    broker_with(catalog, alerts, monkeypatch)
    page = Page()
    taken = page.records.append

    def on_record(role: str, key: str | None, value: dict[str, Any] | None) -> None:
        if value is not None and value["alert"] == "alert_1":
            raise KeyError("slot")
        taken((role, key, value))

    reader = page.reader(catalog)
    reader._on_record = on_record
    reader.start()
    try:
        eventually(lambda: len(page.alerts()) == 3)
        assert page.alerts() == ["alert_0", "alert_2", "alert_3"]
        assert reader.unapplied == 1 and reader.restarts == 0
    finally:
        reader.stop()


def test_the_topics_that_exist_are_read_while_a_missing_one_is_waited_for_and_named(catalog, alerts, monkeypatch):
    broker = broker_with(catalog, alerts, monkeypatch)
    alerts_topic = catalog["alerts"].name
    with broker.lock:
        del broker.logs[alerts_topic]  # not created yet, or hidden from the dashboard by an ACL
        broker.logs[catalog["model_decisions"].name] = [
            SerdeSettings().serde(catalog["model_decisions"], catalog.repository).encode(decision("PROMOTE", T0, "v2"))]
    page = Page()
    reader = page.reader(catalog).start()
    try:
        eventually(lambda: [role for role, _key, _value in page.records] == ["model_decisions"])
        eventually(lambda: page.errors[-1] is not None)
        assert page.errors[-1].startswith(f"waiting for topics {alerts_topic} ("), page.errors
        assert alerts_topic not in page.errors[-1].partition(" (")[2]
        with broker.lock:
            broker.logs[alerts_topic] = alerts
        eventually(lambda: len(page.alerts()) == 4)
        eventually(lambda: page.errors[-1] is None)
        assert len(broker.consumers) == 1 and reader.restarts == 0, "added to the reading, not read again"
        assert [role for role, _key, _value in page.records].count("model_decisions") == 1
    finally:
        reader.stop()


def test_caught_up_once_every_record_there_at_assignment_is_handed_over(catalog, alerts, monkeypatch):
    broker = broker_with(catalog, alerts, monkeypatch)
    page = Page()
    reader = page.reader(catalog)
    # A registry slow to answer holds the first record back: caught up must wait for it.
    reader._serdes[catalog["alerts"].name] = FlakyRegistry(reader._serdes[catalog["alerts"].name], 1)
    assert not reader.caught_up
    reader.start()
    try:
        assert reader.wait_until_caught_up(10)
        assert len(page.alerts()) == 4, "every record there at assignment is handed over first"
        with broker.lock:
            broker.logs[catalog["alerts"].name] += [alerts[0]]  # a live record, not a backlog
        eventually(lambda: len(page.alerts()) == 5)
        assert reader.caught_up
    finally:
        reader.stop()


def test_a_topic_that_appears_later_is_read_to_its_end_before_the_reader_is_caught_up_again(catalog, alerts,
                                                                                          monkeypatch):
    broker = broker_with(catalog, alerts, monkeypatch)
    alerts_topic = catalog["alerts"].name
    with broker.lock:
        del broker.logs[alerts_topic]
    page = Page()
    reader = page.reader(catalog)
    reader.start()
    try:
        assert reader.wait_until_caught_up(10), "the topics found hold nothing: caught up, the missing one named"
        assert page.errors[-1].startswith(f"waiting for topics {alerts_topic}")
        flaky = reader._serdes[alerts_topic] = FlakyRegistry(reader._serdes[alerts_topic], 10_000)
        with broker.lock:
            broker.logs[alerts_topic] = alerts
        eventually(lambda: flaky.lookups > 0)
        assert not reader.caught_up, "its records are a backlog until they are read"
        flaky.failures = 0
        assert reader.wait_until_caught_up(10) and len(page.alerts()) == 4
    finally:
        reader.stop()
