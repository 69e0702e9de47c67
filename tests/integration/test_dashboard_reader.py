"""The dashboard's monitoring-topic reader against the embedded broker: topics that appear late are added."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from streamloop.contracts import load_catalog
from streamloop.dashboard.records import ROLES
from streamloop.dashboard.sources import TopicRecordReader
from streamloop.kafka.configuration import KafkaSettings
from streamloop.service.settings import SerdeSettings
from tests.topic_io import create_topics, produce
from tests.unit.dashboard.conftest import T0, alert, decision

pytestmark = pytest.mark.integration


def eventually(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.05)


def test_a_topic_created_after_the_others_are_read_is_added_to_the_reading(demo_pipeline, bootstrap_servers,
                                                                              unique_name):
    catalog = load_catalog(demo_pipeline, topic_prefix=f"{unique_name}.")
    alerts_topic, decisions_topic = catalog["alerts"].name, catalog["model_decisions"].name
    create_topics(bootstrap_servers, [catalog[role].name for role in ROLES if role != "alerts"])

    def encoded(role: str, record: dict[str, Any]) -> bytes:
        return SerdeSettings().serde(catalog[role], catalog.repository).encode(record)

    produce(bootstrap_servers, decisions_topic, [(b"fraud", encoded("model_decisions", decision("PROMOTE", T0, "v2")))])
    records: list[tuple[str, Any]] = []
    errors: list[str | None] = [None]
    reader = TopicRecordReader(KafkaSettings(bootstrap_servers=bootstrap_servers), catalog,
                               lambda role, _key, value: records.append((role, value)), on_error=errors.append,
                               poll_timeout_s=0.1, idle_pause_s=0.05, topic_look_s=0.5).start()
    try:
        eventually(lambda: [role for role, _value in records] == ["model_decisions"])
        eventually(lambda: errors[-1] is not None and alerts_topic in errors[-1])
        create_topics(bootstrap_servers, [alerts_topic])
        produce(bootstrap_servers, alerts_topic,
                [(b"stale_model", encoded("alerts", alert("stale_model", "RAISED", T0)))])
        eventually(lambda: [role for role, _value in records] == ["model_decisions", "alerts"])
        eventually(lambda: errors[-1] is None)
        produce(bootstrap_servers, decisions_topic, [(b"fraud", encoded("model_decisions",
                                                                        decision("ROLLBACK", T0 + 1, "v1", "v2")))])
        eventually(lambda: len(records) == 3)
        assert reader.restarts == 0
    finally:
        reader.stop()
