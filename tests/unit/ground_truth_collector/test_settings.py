"""The collector's stage runners take STREAMLOOP_RUNNER's knobs, as every service's do."""

from __future__ import annotations

import pytest

from services.ground_truth_collector.settings import CollectorSettings


@pytest.fixture(autouse=True)
def _no_collector_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COLLECTOR_BATCH_SIZE", "COLLECTOR_BATCH_WAIT", "COLLECTOR_TICK_INTERVAL", "STREAMLOOP_RUNNER"):
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
