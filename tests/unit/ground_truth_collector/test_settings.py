"""The collector's stage runners take STREAMLOOP_RUNNER's knobs, as every service's do."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.ground_truth_collector.settings import SERVICE, CollectorSettings
from streamloop.service.context import ServiceContext
from streamloop.service.settings_errors import describe_validation_error
from streamloop.telemetry import Telemetry
from tests.unit.ground_truth_collector.factory import REPLICATED, collector_settings, runtime_parts


@pytest.fixture(autouse=True)
def _no_collector_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COLLECTOR_BATCH_SIZE", "COLLECTOR_BATCH_WAIT", "COLLECTOR_TICK_INTERVAL", "STREAMLOOP_RUNNER",
                 "COLLECTOR_IDLE_AFTER", "COLLECTOR_STALL_AFTER", "COLLECTOR_TAKE_BACK_AFTER",
                 "KAFKA_SESSION_TIMEOUT_MS", "KAFKA_MAX_POLL_INTERVAL_MS"):
        monkeypatch.delenv(name, raising=False)


def test_streamloop_runner_reaches_the_collector_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLOOP_RUNNER", '{"retry_backoff_max_s": 3, "resend_window_s": 0, "batch_size": 80}')
    runner = CollectorSettings().stage_runner()
    assert (runner.retry_backoff_max_s, runner.resend_window_s) == (3.0, 0.0)
    assert runner.batch_size == 80, "a knob set only in STREAMLOOP_RUNNER is not overridden by a collector default"
    assert (runner.poll_timeout_s, runner.tick_interval_s) == (0.05, 1.0), "the collector's own defaults"


def test_a_collector_setting_that_is_set_wins_over_streamloop_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLOOP_RUNNER", '{"batch_size": 80, "tick_interval_s": 0.2}')
    monkeypatch.setenv("COLLECTOR_BATCH_SIZE", "40")
    monkeypatch.setenv("COLLECTOR_BATCH_WAIT", "20ms")
    runner = CollectorSettings().stage_runner()
    assert (runner.batch_size, runner.poll_timeout_s, runner.tick_interval_s) == (40, 0.02, 0.2)


def test_a_stall_after_longer_than_idle_after_is_refused_naming_both(monkeypatch: pytest.MonkeyPatch) -> None:
    """A faust partition stuck past idle_after stops holding the metrics clock: windows close without it."""
    monkeypatch.setenv("COLLECTOR_IDLE_AFTER", "1s")
    monkeypatch.setenv("COLLECTOR_STALL_AFTER", "10m")
    with pytest.raises(ValidationError) as refused:
        CollectorSettings()
    message = describe_validation_error(refused.value, CollectorSettings)
    assert "COLLECTOR_STALL_AFTER" in message and "COLLECTOR_IDLE_AFTER" in message
    monkeypatch.setenv("COLLECTOR_STALL_AFTER", "1s")
    assert CollectorSettings().stall_after_ms == 1_000, "equal is allowed"


def test_an_unset_stall_after_stays_within_idle_after(monkeypatch: pytest.MonkeyPatch) -> None:
    assert CollectorSettings().stall_after_ms == 30_000
    monkeypatch.setenv("COLLECTOR_IDLE_AFTER", "3s")
    assert CollectorSettings().stall_after_ms == 3_000, "a lower idle_after is not refused for a default"


def test_a_take_back_sooner_than_the_group_would_have_moved_the_partition_is_refused_naming_each(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Sooner, a replica could take a partition back from the group's owner of it before its consumer
    learned that it had lost it (given_up.py)."""
    monkeypatch.setenv("KAFKA_MAX_POLL_INTERVAL_MS", "90000")
    monkeypatch.setenv("COLLECTOR_TAKE_BACK_AFTER", "2m")
    with pytest.raises(ValidationError) as refused:
        CollectorSettings()
    message = describe_validation_error(refused.value, CollectorSettings)
    assert "COLLECTOR_TAKE_BACK_AFTER" in message and "KAFKA_MAX_POLL_INTERVAL_MS" in message
    monkeypatch.setenv("COLLECTOR_TAKE_BACK_AFTER", "3m")
    assert CollectorSettings().take_back_after_ms == 180_000, "twice the poll interval is allowed"


def test_an_unset_take_back_after_is_two_minutes_or_longer_as_the_consumer_s_timeouts_need(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert CollectorSettings().take_back_after_ms == 120_000
    monkeypatch.setenv("KAFKA_SESSION_TIMEOUT_MS", "75000")
    assert CollectorSettings().take_back_after_ms == 150_000, "a longer session timeout is not refused for a default"


@pytest.fixture
def replicated(monkeypatch: pytest.MonkeyPatch) -> tuple[ServiceContext, CollectorSettings, Telemetry]:
    return runtime_parts(collector_settings(monkeypatch, **REPLICATED))


def test_the_runner_runtime_replicates_its_internal_topics_as_configured(replicated, monkeypatch) -> None:
    """On a cluster whose min.insync.replicas is 2, a topic of one replica refuses every acks=all write."""
    from services.ground_truth_collector import runner_app

    created: list = []
    monkeypatch.setattr(runner_app, "ensure_topics", lambda _admin, topics: created.extend(topics))
    runner_app.RunnerCollector(*replicated).ensure_internal_topics()
    group = replicated[0].group_id
    assert [t.topic for t in created] == [f"{group}-by-event", f"{group}-joined", f"{group}-by-event.dlq",
                                          f"{group}-joined.dlq"]
    assert {(t.replication_factor, tuple(t.config.items())) for t in created} == {(3, (("min.insync.replicas", "2"),))}


def test_the_faust_runtime_replicates_its_topics_and_changelogs_as_configured(replicated) -> None:
    from services.ground_truth_collector.app import Collector

    collector = Collector(*replicated)
    assert collector.app.conf.topic_replication_factor == 3  # faust's default for a topic that names none
    internal = [collector.keyed, collector.joined, collector.keyed_dead_letters, collector.joined_dead_letters,
                collector.state.table.changelog_topic, collector.scoring_state.table.changelog_topic]
    assert [(t.replicas, t.config) for t in internal] == [(None, {"min.insync.replicas": "2"})] * 6


def test_a_set_data_dir_is_used_and_created_with_its_parents(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """faust creates only the last level of its datadir; the launcher passes stack/collector/<replica>."""
    from services.ground_truth_collector.faust_options import data_dir

    monkeypatch.setenv("COLLECTOR_DATA_DIR", str(tmp_path / "collector" / "0"))
    assert data_dir(CollectorSettings()) == tmp_path / "collector" / "0"
    assert (tmp_path / "collector" / "0").is_dir()


def test_an_unset_data_dir_is_a_temporary_one_gone_when_the_process_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every start used to leave one behind in /tmp."""
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.delenv("COLLECTOR_DATA_DIR", raising=False)
    program = ("from pathlib import Path\n"
               "from services.ground_truth_collector.faust_options import data_dir\n"
               "from services.ground_truth_collector.settings import CollectorSettings\n"
               "path = data_dir(CollectorSettings())\n"
               "assert path.is_dir()\n"
               "print(path)\n")
    finished = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60)
    path = Path(finished.stdout.strip())
    assert path.name.startswith(f"{SERVICE}-") and not path.exists()
