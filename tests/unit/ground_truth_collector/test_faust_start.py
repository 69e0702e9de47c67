"""The faust runtime's start, before its worker runs: its topics and its options."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from services.ground_truth_collector import app as faust_app
from services.ground_truth_collector import runner_app
from services.ground_truth_collector.faust_options import faust_options
from services.ground_truth_collector.settings import SERVICE, CollectorSettings
from streamloop.service.context import ServiceContext
from streamloop.telemetry import configure_telemetry
from tests.conftest import DEMO_SPEC


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> CollectorSettings:
    monkeypatch.setenv("STREAMLOOP_PIPELINE", str(DEMO_SPEC))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # nothing is contacted
    monkeypatch.setenv("STREAMLOOP_TOPIC_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("STREAMLOOP_TOPIC_MIN_INSYNC_REPLICAS", "2")
    return CollectorSettings()


def built(settings: CollectorSettings, runtime: Any) -> Any:
    telemetry = configure_telemetry(settings.telemetry.for_service(SERVICE), install_global=False)
    return runtime(ServiceContext.load(SERVICE, settings.common), settings, telemetry)


class RecordedShutdown:
    def __init__(self) -> None:
        self.shut_down = False

    def shutdown(self) -> None:
        self.shut_down = True


def test_the_faust_runtime_creates_the_internal_topics_the_runner_creates(settings, monkeypatch) -> None:
    """faust declares only the topics its agents read: the two dead-letter topics were never created,
    and on a broker without auto-create the first dead letter stopped the worker, at every restart."""
    created: dict[str, list] = {"faust": [], "runner": []}
    monkeypatch.setattr(faust_app, "AdminClient", lambda _config: None)
    monkeypatch.setattr(faust_app, "ensure_topics", lambda _admin, topics: created["faust"].extend(topics))
    monkeypatch.setattr(runner_app, "ensure_topics", lambda _admin, topics: created["runner"].extend(topics))
    collector = built(settings, faust_app.Collector)
    collector.prepare_topics()
    built(settings, runner_app.RunnerCollector).ensure_internal_topics()
    names = {t.topic for t in created["faust"]}
    assert {collector.keyed_dead_letters.get_topic_name(), collector.joined_dead_letters.get_topic_name()} <= names
    assert [(t.topic, t.num_partitions, t.replication_factor, t.config) for t in created["faust"]] == [
        (t.topic, t.num_partitions, t.replication_factor, t.config) for t in created["runner"]]


def test_topics_the_faust_runtime_cannot_create_stop_its_start_with_one_line(settings, monkeypatch, caplog) -> None:
    def refused(_admin, _topics) -> None:
        raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "not authorized to create"))

    monkeypatch.setattr(faust_app, "AdminClient", lambda _config: None)
    monkeypatch.setattr(faust_app, "ensure_topics", refused)
    monkeypatch.setattr(faust_app.faust, "Worker", lambda *a, **k: pytest.fail("the worker was started"))
    collector = built(settings, faust_app.Collector)
    collector.telemetry = RecordedShutdown()
    assert collector.run() == 1
    [error] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "not authorized to create" in error.getMessage() and error.exc_info is None
    assert collector.telemetry.shut_down


def test_a_send_the_broker_cannot_take_fails_within_kafka_s_producer_timeout(settings) -> None:
    """faust's default (1,200 s) held a send to a missing topic for 20 minutes before the worker stopped."""
    assert faust_options(settings, 3)["producer_request_timeout"] == 30
