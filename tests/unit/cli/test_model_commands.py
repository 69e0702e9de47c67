"""``streamloop models`` as a user runs it, on registry topics held in memory (no broker)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from streamloop.cli import model_commands
from streamloop.cli.main import app
from tests.unit.model_publisher.memory_registry import InMemoryRegistry, bootstrapped, new_candidates
from tests.unit.model_publisher.test_publisher import Harness


@pytest.fixture
def harness(demo_pipeline, tmp_path) -> Harness:
    return Harness(demo_pipeline, tmp_path)


def use(registry: InMemoryRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_commands, "_registry", lambda *_args, **_kwargs: registry)


def test_rolling_back_again_goes_further_back_then_fails_in_one_line(harness, monkeypatch):
    registry, first = bootstrapped(harness)
    a, b = new_candidates(harness, registry, 2)
    registry.promote(a)
    registry.promote(b)
    use(registry, monkeypatch)
    runner = CliRunner()

    assert runner.invoke(app, ["models", "rollback"]).stderr == f"rolled back to {a} (from {b})\n"
    assert runner.invoke(app, ["models", "rollback"]).stderr == f"rolled back to {first} (from {a})\n"
    last = runner.invoke(app, ["models", "rollback"])
    assert last.exit_code == 1
    assert last.stderr == f"streamloop: nothing to roll back to: champion {first} has no predecessor\n"
    assert registry.champion()["version"] == first
