"""What ``up`` and ``demo`` check before anything starts, with the stack faked."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from streamloop.cli.main import app
from streamloop.errors import StreamloopError
from streamloop.stack.launcher import Stack
from tests.conftest import DEMO_SPEC

COMMANDS = [["demo", "--headless"], ["up"]]
# Settings for a production cluster's SASL_SSL listener, left in the shell.
CLUSTER_SECURITY = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_PASSWORD": "file:/nonexistent/password"}


@pytest.fixture(autouse=True)
def _no_cluster_in_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def prepared(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Set once the command got past its checks to preparing the stack (which then ends it, exit 2)."""
    calls: list[bool] = []

    def prepare(*_args, **_kwargs):
        calls.append(True)
        raise StreamloopError("stack prepared")

    monkeypatch.setattr(Stack, "prepare", prepare)
    return calls


def run(command: list[str], tmp_path, env: dict[str, str]):
    return CliRunner().invoke(app, [*command, "-p", str(DEMO_SPEC), "--data-dir", str(tmp_path)], env=env)


@pytest.mark.parametrize("command", COMMANDS)
def test_the_embedded_stack_ignores_the_shells_kafka_security_settings(command, tmp_path, prepared) -> None:
    result = run(command, tmp_path, CLUSTER_SECURITY)
    assert prepared, result.output
    assert "invalid settings" not in result.output


def test_up_on_a_cluster_still_checks_its_security_settings(tmp_path, prepared) -> None:
    result = run(["up"], tmp_path, {**CLUSTER_SECURITY, "KAFKA_BOOTSTRAP_SERVERS": "kafka.prod:9093"})
    assert result.exit_code == 2 and not prepared
    assert "invalid settings" in result.output and "KAFKA_SASL_PASSWORD" in result.output, result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_dashboard_setting_is_refused_in_one_line_before_anything_starts(command, tmp_path, prepared) -> None:
    result = run(command, tmp_path, {"STREAMLOOP_DASHBOARD_PORT": "eighty"})
    assert result.exit_code == 2 and not prepared, result.output
    assert result.output.startswith("streamloop: invalid settings: port (STREAMLOOP_DASHBOARD_PORT): "), result.output
    assert len(result.output.splitlines()) == 1
