"""The faust runtime's start, before its worker runs: its topics and its options."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from services.ground_truth_collector import app as faust_app
from services.ground_truth_collector import runner_app
from services.ground_truth_collector.faust_options import faust_options
from services.ground_truth_collector.settings import CollectorSettings
from tests.kafka_fakes import FakeAdmin
from tests.unit.ground_truth_collector.factory import REPLICATED, built, collector_settings


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> CollectorSettings:
    return collector_settings(monkeypatch, **REPLICATED)


class RecordedShutdown:
    def __init__(self) -> None:
        self.shut_down = False

    def shutdown(self) -> None:
        self.shut_down = True


def test_the_faust_runtime_creates_the_internal_topics_the_runner_creates(settings, monkeypatch) -> None:
    """faust declares only the topics its agents read: the two dead-letter topics were never created,
    and on a broker without auto-create the first dead letter stopped the worker, at every restart."""
    created: dict[str, list] = {"faust": [], "runner": []}
    monkeypatch.setattr(faust_app, "AdminClient", lambda _config: FakeAdmin())
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

    monkeypatch.setattr(faust_app, "AdminClient", lambda _config: FakeAdmin())
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


def keyed_and_changelog(collector: Any) -> tuple[str, str]:
    return collector.keyed.get_topic_name(), collector.state.table.changelog_topic.get_topic_name()


@pytest.fixture
def grown_to_6(settings, monkeypatch) -> Any:
    """A collector whose keyed partitions (the labels topic's, or COLLECTOR_KEYED_PARTITIONS) went from 3 to 6."""
    monkeypatch.setenv("COLLECTOR_KEYED_PARTITIONS", "6")
    monkeypatch.setattr(faust_app, "ensure_topics", lambda _admin, _topics: None)  # they all exist
    return built(CollectorSettings(), faust_app.Collector)


def test_the_keyed_topic_and_the_join_changelog_grow_with_the_labels_topic(grown_to_6, monkeypatch) -> None:
    """faust leaves an existing topic as it is: the keying agent's and the join's sends to partitions
    3 to 5 failed ("Unrecognized partition") and the worker stopped, at every restart."""
    keyed, changelog = keyed_and_changelog(grown_to_6)
    broker = FakeAdmin({keyed: 3, changelog: 3})
    monkeypatch.setattr(faust_app, "AdminClient", lambda _config: broker)
    grown_to_6.prepare_topics()
    assert sorted(broker.grown) == sorted([(keyed, 6), (changelog, 6)])
    grown_to_6.prepare_topics()
    assert len(broker.grown) == 2, "grown once"


def test_a_keyed_topic_grown_by_hand_takes_the_join_changelog_with_it(grown_to_6, monkeypatch) -> None:
    """faust's assignor keeps a keyed partition and its changelog partition on one worker only while
    both topics have one count."""
    keyed, changelog = keyed_and_changelog(grown_to_6)
    broker = FakeAdmin({keyed: 8, changelog: 3})
    monkeypatch.setattr(faust_app, "AdminClient", lambda _config: broker)
    grown_to_6.prepare_topics()
    assert broker.grown == [(changelog, 8)], "the keyed topic cannot shrink: the changelog follows it"


def test_a_changelog_not_created_yet_is_left_to_faust(grown_to_6, monkeypatch) -> None:
    keyed, changelog = keyed_and_changelog(grown_to_6)
    broker = FakeAdmin({keyed: 6})
    monkeypatch.setattr(faust_app, "AdminClient", lambda _config: broker)
    grown_to_6.prepare_topics()
    assert broker.grown == [] and changelog not in broker.topics


def test_a_changelog_that_cannot_grow_stops_the_start_with_one_line_saying_what_to_do(
        grown_to_6, monkeypatch, caplog) -> None:
    keyed, changelog = keyed_and_changelog(grown_to_6)
    broker = FakeAdmin({keyed: 6, changelog: 3}, refuse=KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    monkeypatch.setattr(faust_app, "AdminClient", lambda _config: broker)
    monkeypatch.setattr(faust_app.faust, "Worker", lambda *a, **k: pytest.fail("the worker was started"))
    grown_to_6.telemetry = RecordedShutdown()
    assert grown_to_6.run() == 1
    [error] = [r for r in caplog.records if r.levelname == "ERROR"]
    message = error.getMessage()
    assert f"kafka-topics.sh --alter --topic {changelog} --partitions 6" in message and "\n" not in message
    assert error.exc_info is None


def member(instance: str | None, client: str = "streamloop-collector") -> SimpleNamespace:
    return SimpleNamespace(client_id=client, host="/10.0.0.7", group_instance_id=instance)


@pytest.fixture
def worker_1(settings, monkeypatch) -> Any:
    """A faust worker of instance collector-1 whose topics all exist, its sleeps counted instead of slept."""
    monkeypatch.setenv("KAFKA_GROUP_INSTANCE_ID", "collector-1")
    monkeypatch.setattr(faust_app, "ensure_topics", lambda _admin, _topics: None)
    monkeypatch.setattr(faust_app.faust, "Worker", lambda *a, **k: pytest.fail("the worker was started"))
    collector = built(CollectorSettings(), faust_app.Collector)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    from services.ground_truth_collector import faust_membership

    monkeypatch.setattr(faust_membership, "time", SimpleNamespace(monotonic=lambda: now[0], sleep=sleep))
    collector.waited = now
    return collector


def test_a_second_faust_worker_in_the_group_is_refused_at_start_in_one_line(worker_1, monkeypatch, caplog) -> None:
    """Its changelog writes are not fenced: a worker that stalled past its session timeout wrote its
    batch's state into partitions the other had taken over (the runner fences with a compare-and-set)."""
    broker = FakeAdmin(members=[[member("collector-0", "streamloop-ground-truth-collector-0")]])
    monkeypatch.setattr(faust_app, "AdminClient", lambda _config: broker)
    worker_1.telemetry = RecordedShutdown()
    assert worker_1.run() == 1
    [error] = [r for r in caplog.records if r.levelname == "ERROR"]
    message = error.getMessage()
    assert "one worker per consumer group" in message and "instance collector-0" in message
    assert "\n" not in message and error.exc_info is None
    session_timeout = worker_1.settings.common.kafka.session_timeout_ms / 1000
    assert session_timeout < worker_1.waited[0] <= session_timeout + 10, "a member gone without leaving expires"


def test_a_worker_waits_out_a_member_gone_without_leaving(worker_1, monkeypatch) -> None:
    keyed, changelog = keyed_and_changelog(worker_1)
    gone = [member(None)]  # dynamic: stays until its session times out
    broker = FakeAdmin({keyed: 6, changelog: 6}, members=[gone, gone, gone, []])
    monkeypatch.setattr(faust_app, "AdminClient", lambda _config: broker)
    worker_1.refuse_a_second_worker()
    assert broker.described == 4 and worker_1.waited[0] == 3


def test_a_restarted_worker_finds_its_own_membership_and_starts(worker_1, monkeypatch) -> None:
    """A static member stays in the group after a restart (it never leaves on close)."""
    broker = FakeAdmin(members=[[member("collector-1")]])
    monkeypatch.setattr(faust_app, "AdminClient", lambda _config: broker)
    worker_1.refuse_a_second_worker()
    assert worker_1.waited[0] == 0
