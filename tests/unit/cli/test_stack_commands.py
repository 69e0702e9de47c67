"""``up`` and ``demo`` stopped by SIGTERM, and ``lag``'s table, with the stack and the broker faked."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator

import pytest
from rich.console import Console
from typer.testing import CliRunner

from streamloop.cli import demo_command, topic_commands
from streamloop.cli.connection import Connection
from streamloop.cli.main import app
from streamloop.contracts import load_pipeline
from streamloop.errors import StreamloopError
from streamloop.kafka.lag import PartitionLag
from streamloop.stack.launcher import Stack
from tests.conftest import DEMO_SPEC


@pytest.fixture(autouse=True)
def _no_cluster_in_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite may run against an external Kafka; these commands start (fake) embedded stacks."""
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)


class SigtermNotHandled(Exception):
    """Raised by the test's own SIGTERM handler: the command left SIGTERM as it found it."""


@pytest.fixture
def sigterm_not_handled() -> Iterator[None]:
    # Without a handler of the command's, SIGTERM would end the test run itself.
    def not_handled(_signum, _frame):
        raise SigtermNotHandled

    previous = signal.signal(signal.SIGTERM, not_handled)
    yield
    signal.signal(signal.SIGTERM, previous)


class TerminatedStack:
    """A stack that receives SIGTERM while it starts, and records how it was stopped."""

    def __init__(self) -> None:
        self.processes: list = []
        self.stopped = 0
        self.stopping = False

    def start_infrastructure(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)  # the handler runs here and ends the sleep: unhandled, the test takes a minute

    def stop(self) -> None:
        self.stopped += 1


@pytest.mark.parametrize(("command", "exit_code"), [(["demo", "--headless"], 130), (["up"], 0)])
def test_sigterm_stops_the_stack_as_ctrl_c_does(monkeypatch, tmp_path, sigterm_not_handled, command, exit_code):
    stack = TerminatedStack()
    monkeypatch.setattr(Stack, "prepare", lambda *_args, **_kwargs: stack)
    started = time.monotonic()
    result = CliRunner().invoke(app, [*command, "-p", str(DEMO_SPEC), "--data-dir", str(tmp_path)])
    assert not isinstance(result.exception, SigtermNotHandled), "SIGTERM is not handled"
    assert result.exit_code == exit_code, result.output
    assert stack.stopped == 1, "the stack is stopped once: services first, then Redis and the broker"
    assert time.monotonic() - started < 30, "SIGTERM ended the start-up at once"


def test_lag_shows_a_partition_without_a_committed_offset_as_a_dash(monkeypatch, demo_pipeline):
    rows = [PartitionLag("g", "t", 0, 7, 10), PartitionLag("g", "t", 1, None, 4)]
    monkeypatch.setattr(topic_commands, "connect", lambda *_args: Connection(demo_pipeline, None, "b:1", "redis://r"))
    monkeypatch.setattr(topic_commands, "reachable_admin", lambda _bootstrap: None)
    monkeypatch.setattr(topic_commands, "group_lag", lambda *_args: rows)
    result = CliRunner().invoke(app, ["lag"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    lines = [line.split("│")[1:-1] for line in result.stdout.splitlines() if line.count("│") == 7]
    assert [[cell.strip() for cell in line] for line in lines] == [  # group, topic, partition, committed, end, lag
        ["g", "t", "0", "7", "10", "3"],
        ["g", "t", "1", "-", "4", "4"],
    ]
    assert "None" not in result.stdout


class ChampionlessStack(TerminatedStack):
    """A stack that starts, but whose publisher never deploys a champion."""

    def __init__(self, data_dir) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.bootstrap_servers, self.redis_url = "127.0.0.1:1", "redis://127.0.0.1:1"

    def start_infrastructure(self) -> None:
        pass

    start_services = start_infrastructure

    def start_dashboard(self) -> None:
        return None

    def supervise_once(self) -> list[str]:
        return []

    def client_settings(self) -> dict:
        return {}

    def serde_settings(self) -> None:
        return None

    def catalog(self) -> None:
        return None


class SilentDriver:
    def __init__(self, *_args) -> None:
        self.observed = type("Observed", (), {"decisions": []})()

    def start_readers(self) -> None:
        pass

    def check_readers(self) -> None:
        pass


def test_a_demo_without_a_champion_stops_its_stack(monkeypatch, tmp_path):
    stack = ChampionlessStack(tmp_path)
    monkeypatch.setattr(Stack, "prepare", lambda *_args, **_kwargs: stack)
    monkeypatch.setattr(demo_command, "LoopDriver", SilentDriver)
    wait = demo_command._wait_for_champion
    monkeypatch.setattr(demo_command, "_wait_for_champion", lambda *args: wait(*args, timeout_s=0.2))
    result = CliRunner().invoke(app, ["demo", "--headless", "-p", str(DEMO_SPEC), "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "no champion was deployed within 0s" in result.output
    assert stack.stopped == 1, "the stack is not left running"


def test_a_second_demo_from_the_same_data_directory_is_refused_not_run_over_the_first(tmp_path) -> None:
    """The demo starts afresh in <data dir>/demo: it must not delete a running demo's broker and registry."""
    import json

    running = tmp_path / "demo"
    (running / "broker").mkdir(parents=True)
    (running / "stack.json").write_text(json.dumps({"launcher_pid": os.getpid()}))
    result = CliRunner().invoke(app, ["demo", "--headless", "-p", str(DEMO_SPEC), "--data-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "a stack is running from" in result.output and "Traceback" not in result.output
    assert (running / "broker").is_dir()


@pytest.mark.parametrize(("command", "stack_dir"), [(["demo", "--headless"], "demo"), (["up"], ".")])
def test_a_launch_while_another_stack_starts_there_is_refused_in_one_line(monkeypatch, tmp_path, command,
                                                                          stack_dir) -> None:
    """Before its services run, a starting stack has no stack.json, but its broker already uses the directory."""
    monkeypatch.setattr(Stack, "start_infrastructure", lambda _self: pytest.fail("nothing may start"))
    starting = Stack.prepare(load_pipeline(DEMO_SPEC), DEMO_SPEC, tmp_path / stack_dir)
    (tmp_path / stack_dir / "broker").mkdir()
    try:
        result = CliRunner().invoke(app, [*command, "-p", str(DEMO_SPEC), "--data-dir", str(tmp_path)])
    finally:
        starting.stop()
    assert result.exit_code == 2, result.output
    assert "in use by another streamloop launcher" in result.output and f"pid {os.getpid()}" in result.output
    assert "Traceback" not in result.output
    assert (tmp_path / stack_dir / "broker").is_dir()


class BrokenStack(ChampionlessStack):
    """A stack whose start fails with an error no part of streamloop raises on purpose."""

    def start_services(self) -> None:
        raise RuntimeError("something nobody expected")


@pytest.mark.parametrize("command", [["demo", "--headless"], ["up"]])
def test_an_unexpected_error_stops_the_stack_in_order_and_is_one_line(monkeypatch, tmp_path, command) -> None:
    stack = BrokenStack(tmp_path)
    monkeypatch.setattr(Stack, "prepare", lambda *_args, **_kwargs: stack)
    result = CliRunner().invoke(app, [*command, "-p", str(DEMO_SPEC), "--data-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "failed: RuntimeError: something nobody expected" in result.output and "Traceback" not in result.output
    assert stack.stopped == 1, "services first, then Redis and the broker: not left to PDEATHSIG"
    assert "something nobody expected" in (tmp_path / "logs" / "command-traceback.log").read_text()


@pytest.mark.parametrize(("events", "window"), [(1, 1), (4, 1), (5, 1), (1_000, 200), (50_000, 5_000)])
def test_the_summary_compares_windows_of_a_fifth_of_the_run_never_empty(events, window) -> None:
    assert demo_command.summary_window(events) == window


def test_the_demo_refuses_a_cluster_named_by_the_shell_whose_topics_hold_earlier_runs(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.prod:9092")
    monkeypatch.setattr(Stack, "prepare", lambda *_args, **_kwargs: pytest.fail("nothing may start"))
    result = CliRunner().invoke(app, ["demo", "--headless", "-p", str(DEMO_SPEC), "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "unset KAFKA_BOOTSTRAP_SERVERS" in result.output


def test_the_demo_waits_for_the_first_champion_not_the_bootstraps_registration(tmp_path) -> None:
    driver, stack = SilentDriver(), ChampionlessStack(tmp_path)
    driver.observed.decisions = [{"kind": "REGISTER", "to_version": "v1", "from_version": None}]
    with pytest.raises(StreamloopError, match="no champion was deployed"):
        demo_command._wait_for_champion(driver, stack, Console(quiet=True), timeout_s=0.3)
    driver.observed.decisions.append({"kind": "PROMOTE", "to_version": "v1", "from_version": None})
    demo_command._wait_for_champion(driver, stack, Console(quiet=True), timeout_s=0.3)


@pytest.mark.timeout(60)  # before the fix, `up` restarted the service until stopped
def test_up_stops_the_stack_in_one_line_when_a_service_exits_on_its_settings(monkeypatch, tmp_path) -> None:
    """Not restarted every 2 s to 30 s for as long as `up` runs: the stack is stopped and the cause named."""
    cause = "drift-detector: invalid settings: pipeline: the retrainer's window is shorter than its batch"

    def start_services(self: Stack) -> None:
        from streamloop.stack.launcher import ServiceProcess
        from streamloop.stack.process import spawn

        log = self.data_dir / "logs" / "drift-detector-0.log"
        service = ServiceProcess("drift-detector", "services.drift_detector", 0, {}, log, 0)
        service.process = spawn([sys.executable, "-c", f"import sys; print({cause!r}); sys.exit(2)"], log)
        service.state = "running"
        self.processes.append(service)
        self.write_state()

    stopped: list[bool] = []
    stop = Stack.stop
    monkeypatch.setattr(Stack, "start_infrastructure", lambda _self: None)
    monkeypatch.setattr(Stack, "start_services", start_services)
    monkeypatch.setattr(Stack, "stop", lambda self: (stopped.append(True), stop(self))[1])
    started = time.monotonic()
    result = CliRunner().invoke(app, ["up", "-p", str(DEMO_SPEC), "--data-dir", str(tmp_path)],
                                env={"STREAMLOOP_DASHBOARD_PORT": "-1"})
    assert result.exit_code == 1, result.output
    assert f"streamloop: drift-detector-0 exited with code 2 ({cause}); not restarted" in result.output
    assert "restarting" not in result.output
    assert stopped == [True] and not (tmp_path / "stack.json").exists()
    assert time.monotonic() - started < 20


class DashboardStack(ChampionlessStack):
    def start_dashboard(self) -> str:
        return "http://127.0.0.1:8765/"


def test_the_demo_says_how_to_watch_it_on_stderr_and_keeps_stdout_for_the_summary(monkeypatch, tmp_path) -> None:
    """The demo's stack is in <data dir>/demo, where `top` and `models` do not look unless told."""
    data_dir = tmp_path / ("a-long-directory-name-" * 4)  # a command wrapped over two lines cannot be pasted
    stack = DashboardStack(data_dir / "demo")
    monkeypatch.setattr(Stack, "prepare", lambda *_args, **_kwargs: stack)
    monkeypatch.setattr(demo_command, "LoopDriver", SilentDriver)
    wait = demo_command._wait_for_champion
    monkeypatch.setattr(demo_command, "_wait_for_champion", lambda *args: wait(*args, timeout_s=0.2))
    result = CliRunner().invoke(app, ["demo", "--headless", "--json", "-p", str(DEMO_SPEC),
                                      "--data-dir", str(data_dir)])
    assert result.exit_code == 1, result.output  # no champion: the run ends after its start lines
    lines = result.stderr.splitlines()
    assert "dashboard http://127.0.0.1:8765/" in lines
    assert f"watch it: streamloop top --data-dir {data_dir / 'demo'}" in lines, result.stderr
    assert result.stdout == "", "stdout carries the summary's JSON only"


def test_status_says_a_broker_that_does_not_list_its_topics_is_unreachable_and_a_service_without_metrics_port_has_none(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``list_topics`` timing out after the broker answered escaped as a KafkaException traceback, and a
    service started without a metrics port was shown as http://127.0.0.1:None/metrics."""
    from confluent_kafka import KafkaError, KafkaException

    from streamloop.cli import stack_commands

    class Admin:
        def __init__(self, _config) -> None:
            pass

        def list_topics(self, timeout: float):
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "Failed to get metadata: Local: Timed out"))

    state = {"pipeline": "card-fraud", "bootstrap_servers": "127.0.0.1:9", "broker": "noida",
             "redis_url": "redis://127.0.0.1:1/0",
             "services": [{"name": "featurizer", "replica": 0, "pid": 42, "state": "running", "restarts": 0,
                           "metrics_port": None}]}
    monkeypatch.setattr(stack_commands, "read_state", lambda _data_dir: state)
    monkeypatch.setattr(stack_commands, "AdminClient", Admin)
    monkeypatch.setattr(stack_commands, "wait_for_broker", lambda admin, timeout_s: None)
    result = CliRunner().invoke(app, ["status", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())  # the console wraps long lines
    assert "Kafka 127.0.0.1:9 (noida): UNREACHABLE (Failed to get metadata: Local: Timed out)" in shown
    assert "None" not in shown
    assert "featurizer-0" in shown and "Redis redis://127.0.0.1:1/0: UNREACHABLE" in shown
