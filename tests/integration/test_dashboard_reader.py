"""The dashboard's monitoring-topic reader against the embedded broker: topics that appear late are added,
and it says when it has read the topics up to where they ended when it began."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from streamloop.contracts import load_catalog
from streamloop.dashboard.records import ROLES
from streamloop.dashboard.sources import TopicRecordReader
from streamloop.kafka.configuration import KafkaSettings
from streamloop.service.settings import SerdeSettings
from tests.conftest import DEMO_SPEC
from tests.topic_io import create_topics, produce
from tests.unit.dashboard.conftest import T0, alert, decision, deployment

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


def test_caught_up_once_the_records_there_at_the_start_are_handed_over(demo_pipeline, bootstrap_servers, unique_name):
    catalog = load_catalog(demo_pipeline, topic_prefix=f"{unique_name}.")
    create_topics(bootstrap_servers, [catalog[role].name for role in ROLES])
    serde = SerdeSettings().serde(catalog["alerts"], catalog.repository)
    produce(bootstrap_servers, catalog["alerts"].name,
            [(b"a", serde.encode(alert(f"alert_{n}", "RAISED", T0 + n))) for n in range(50)])
    records: list[Any] = []
    reader = TopicRecordReader(KafkaSettings(bootstrap_servers=bootstrap_servers), catalog,
                               lambda _role, _key, value: records.append(value), poll_timeout_s=0.1)
    assert not reader.caught_up
    reader.start()
    try:
        assert reader.wait_until_caught_up(30)
        assert len(records) == 50
    finally:
        reader.stop()


def test_top_once_shows_what_the_topics_held_when_it_started(demo_pipeline, bootstrap_servers, unique_name, tmp_path):
    catalog = load_catalog(demo_pipeline, topic_prefix=f"{unique_name}.")
    create_topics(bootstrap_servers, [catalog[role].name for role in ROLES])

    def encoded(role: str, record: dict[str, Any]) -> bytes:
        return SerdeSettings().serde(catalog[role], catalog.repository).encode(record)

    name = demo_pipeline.model.name
    champion = {**deployment("v7", T0), "pipeline": demo_pipeline.name, "model_name": name}
    produce(bootstrap_servers, catalog["model_deployments"].name,
            [(f"{demo_pipeline.name}/{name}/champion".encode(), encoded("model_deployments", champion))])
    promotions = [{**decision("PROMOTE", T0 + n, f"v{n + 1}", f"v{n}"), "pipeline": demo_pipeline.name,
                   "model_name": name} for n in range(1, 7)]
    produce(bootstrap_servers, catalog["model_decisions"].name,
            [(name.encode(), encoded("model_decisions", p)) for p in promotions])
    result = subprocess.run(
        [sys.executable, "-m", "streamloop.cli.main", "top", "--once", "--interval", "0.5"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers, "STREAMLOOP_TOPIC_PREFIX": f"{unique_name}.",
             "STREAMLOOP_DATA_DIR": str(tmp_path / "no-stack"), "STREAMLOOP_PIPELINE": str(DEMO_SPEC),
             "COLUMNS": "400"},
    )
    assert result.returncode == 0, result.stderr
    assert "champion v7" in result.stdout and "promotions 6" in result.stdout, result.stdout
    assert "monitoring topics:" not in result.stdout and "not read to their end" not in result.stderr
