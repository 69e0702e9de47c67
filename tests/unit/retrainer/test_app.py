"""The retrainer's start-up: settings that cannot work with the spec are one clear line and exit code 2."""

from __future__ import annotations

import pytest

from services.retrainer import app
from services.retrainer.settings import RetrainerSettings, RetrainerSettingsError, check_against_spec
from tests.conftest import DEMO_SPEC


def test_a_rebuild_window_smaller_than_the_examples_a_rebuild_needs_exits_2_with_one_line(
        monkeypatch: pytest.MonkeyPatch, demo_pipeline, capsys: pytest.CaptureFixture) -> None:
    """Every rebuild was skipped for too few examples, and nothing said so before the first was."""
    monkeypatch.setenv("STREAMLOOP_PIPELINE", str(DEMO_SPEC))
    monkeypatch.setenv("RETRAINER_REBUILD_MIN_EXAMPLES", str(demo_pipeline.retrain.rebuild_window + 1))
    assert app.main() == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"retrainer: invalid settings: rebuild_min_examples (RETRAINER_REBUILD_MIN_EXAMPLES) is "
                   f"{demo_pipeline.retrain.rebuild_window + 1}, more than the spec's retrain.rebuild_window "
                   f"({demo_pipeline.retrain.rebuild_window}): every rebuild would be skipped for too few examples")


def test_a_rebuild_window_that_holds_just_enough_examples_is_accepted(demo_pipeline) -> None:
    window = demo_pipeline.retrain.rebuild_window
    check_against_spec(RetrainerSettings(rebuild_min_examples=window), demo_pipeline.retrain)
    with pytest.raises(RetrainerSettingsError):
        check_against_spec(RetrainerSettings(rebuild_min_examples=window + 1), demo_pipeline.retrain)
