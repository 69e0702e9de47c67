"""What ``up`` and ``demo`` check before anything starts, with the stack faked."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest
from typer.testing import CliRunner

from streamloop.cli.main import app
from streamloop.contracts import load_pipeline
from streamloop.errors import StreamloopError
from streamloop.stack.launcher import Stack
from streamloop.stack.process import port_taken
from tests.conftest import DEMO_SPEC

COMMANDS = [["demo", "--headless"], ["up"]]
# Settings for a production cluster's SASL_SSL listener, left in the shell.
CLUSTER_SECURITY = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_PASSWORD": "file:/nonexistent/password"}


@pytest.fixture(autouse=True)
def _no_cluster_in_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)


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


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The real Stack.prepare; set once the command got past it to starting the broker (which then ends it)."""
    started: list[bool] = []

    def start_infrastructure(_self):
        started.append(True)
        raise StreamloopError("infrastructure started")

    monkeypatch.setattr(Stack, "start_infrastructure", start_infrastructure)
    return started


@pytest.mark.parametrize("command", [["demo", "--headless"], ["up"], ["up", "--service", "drift-detector"]])
def test_a_bad_service_setting_is_refused_in_one_line_before_anything_starts(command, tmp_path,
                                                                              nothing_starts) -> None:
    """A service exits 2 on it, after the broker, Redis and every other service had started."""
    result = run(command, tmp_path, {"STREAMLOOP_LOG_LEVEL": "LOUD"})
    assert result.exit_code == 2 and not nothing_starts, result.output
    assert result.output.startswith("streamloop: "), result.output
    assert "invalid settings: log_level (STREAMLOOP_LOG_LEVEL): Input should be 'DEBUG'" in result.output
    assert len(result.output.splitlines()) == 1
    assert not (tmp_path / "broker").exists() and not (tmp_path / "demo" / "broker").exists()


def test_the_refusal_names_the_service_and_only_the_launched_services_are_checked(tmp_path, nothing_starts) -> None:
    bad_scorer = {"SCORER_GRPC_WORKERS": "none"}
    result = run(["up"], tmp_path, bad_scorer)
    assert result.exit_code == 2 and not nothing_starts, result.output
    assert result.output.startswith("streamloop: online-scorer: invalid settings: "), result.output
    assert "SCORER_GRPC_WORKERS" in result.output
    result = run(["up", "--service", "drift-detector"], tmp_path, bad_scorer)
    assert nothing_starts, result.output


def test_a_fresh_start_refused_for_a_bad_setting_removes_nothing(tmp_path, nothing_starts) -> None:
    run(["up"], tmp_path, {})  # a stack's directory, its files made as a stack makes them
    (tmp_path / "broker").mkdir()
    (tmp_path / "broker" / "noida.log").write_text("kept")
    result = run(["up", "--fresh"], tmp_path, {"STREAMLOOP_LOG_LEVEL": "LOUD"})
    assert result.exit_code == 2 and (tmp_path / "broker" / "noida.log").read_text() == "kept", result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_the_service_settings_check_leaves_out_what_the_embedded_stack_leaves_out(command, tmp_path,
                                                                                  nothing_starts) -> None:
    """A shell set up for a production cluster and its registry: the embedded stack's services never see those."""
    result = run(command, tmp_path, {**CLUSTER_SECURITY, "SCHEMA_REGISTRY_URL": "not a url",
                                     "REDIS_PASSWORD": "file:/nonexistent/password"})
    assert nothing_starts, result.output
    assert "invalid settings" not in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_a_taken_dashboard_port_is_refused_in_one_line_before_anything_starts(command, tmp_path,
                                                                              nothing_starts) -> None:
    """It was found only once the broker, Redis and every service had started."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(command, tmp_path, {"STREAMLOOP_DASHBOARD_PORT": str(port)})
    assert result.exit_code == 2 and not nothing_starts, result.output
    assert result.output.startswith(f"streamloop: cannot serve the dashboard on 127.0.0.1:{port}: "), result.output
    assert len(result.output.splitlines()) == 1


def test_the_dashboard_is_served_on_the_port_bound_before_anything_started(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STREAMLOOP_DASHBOARD_PORT", "0")

    class Collector:
        def __init__(self, *_args) -> None:
            pass

        def start(self):
            return self

        def snapshot(self) -> dict:
            return {"pipeline": "card-fraud"}

        def stop(self) -> None:
            pass

    monkeypatch.setattr("streamloop.dashboard.DashboardCollector", Collector)
    stack = Stack.prepare(load_pipeline(DEMO_SPEC), DEMO_SPEC, tmp_path, check=True)
    assert stack.dashboard_server is not None
    port = int(stack.dashboard_server.url.rsplit(":", 1)[1].strip("/"))
    assert port_taken("127.0.0.1", port), "held from prepare on"
    stack.bootstrap_servers = "127.0.0.1:1"
    url = stack.start_dashboard()
    try:
        assert url == f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(f"{url}api/snapshot", timeout=5) as response:  # noqa: S310 - loopback
            assert json.loads(response.read()) == {"pipeline": "card-fraud"}
    finally:
        stack.stop()
    assert not port_taken("127.0.0.1", port)


def test_a_dashboard_port_bound_but_never_served_is_freed_by_the_stop(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STREAMLOOP_DASHBOARD_PORT", "0")
    stack = Stack.prepare(load_pipeline(DEMO_SPEC), DEMO_SPEC, tmp_path, check=True)
    port = int(stack.dashboard_server.url.rsplit(":", 1)[1].strip("/"))
    stack.stop()
    assert not port_taken("127.0.0.1", port)
