"""Every port of a stack is its own: the OS offers a port again once its probe socket is closed,
and a service started on a port another one already has crash-loops on it for good."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamloop.contracts import load_pipeline
from streamloop.stack import process
from streamloop.stack.exceptions import StackError
from streamloop.stack.launcher import ServiceProcess, Stack
from streamloop.stack.process import PortAllocator

DEMO_SPEC = Path(__file__).resolve().parents[3] / "examples" / "card_fraud" / "pipeline.yaml"


def _offered_twice() -> Iterator[int]:
    """What the OS did in the measured collisions: each port offered again right after it was closed."""
    for port in itertools.count(41000):
        yield port
        yield port


@pytest.fixture
def os_offers_each_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    offers = _offered_twice()
    fake = lambda host="127.0.0.1": next(offers)  # noqa: E731
    monkeypatch.setattr(process, "free_port", fake)
    # The launcher once imported free_port itself; wherever it asks, it asks this.
    monkeypatch.setattr("streamloop.stack.launcher.free_port", fake, raising=False)


def test_the_allocator_never_hands_out_a_port_twice(os_offers_each_port_twice: None) -> None:
    ports = PortAllocator()
    assert [ports.take() for _ in range(4)] == [41000, 41001, 41002, 41003]


def test_the_allocator_gives_up_in_one_line_when_the_os_offers_nothing_new(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "free_port", lambda host="127.0.0.1": 41000)
    ports = PortAllocator()
    assert ports.take() == 41000
    with pytest.raises(StackError, match="no free port"):
        ports.take()


def test_every_service_and_scorer_replica_of_a_stack_gets_ports_of_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, os_offers_each_port_twice: None) -> None:
    monkeypatch.setattr(ServiceProcess, "start", lambda self: None)  # nothing is spawned
    monkeypatch.setenv("SCORER_TLS_CERT_FILE", str(tmp_path / "tls.crt"))  # TLS scorers open a health port
    stack = Stack.prepare(load_pipeline(DEMO_SPEC), DEMO_SPEC, tmp_path,
                          replicas={"online-scorer": 2, "ground-truth-collector": 2})
    stack.start_services()
    stack.stop()
    # Each TLS scorer replica also its own health port (the default, 50052, would be every replica's).
    ports = [s.metrics_port for s in stack.processes] + [
        int(s.env[setting]) for s in stack.processes if s.name == "online-scorer"
        for setting in ("SCORER_GRPC_PORT", "SCORER_HEALTH_PORT")]
    assert len(ports) == 8 + 2 * 2
    assert all(s.ports == [s.metrics_port, int(s.env["SCORER_GRPC_PORT"]), int(s.env["SCORER_HEALTH_PORT"])]
               for s in stack.processes if s.name == "online-scorer")
    assert len(set(ports)) == len(ports), sorted(ports)
    assert all(int(s.env["STREAMLOOP_METRICS_PORT"]) == s.metrics_port for s in stack.processes)


class _Exited:
    pid, returncode = 2 ** 22 + 1, 1

    def poll(self) -> int:
        return self.returncode


def test_a_service_that_exits_while_another_process_listens_on_its_port_is_reported_so(tmp_path: Path) -> None:
    stack = Stack.prepare(load_pipeline(DEMO_SPEC), DEMO_SPEC, tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        free = PortAllocator().take()
        scorer = ServiceProcess("online-scorer", "services.online_scorer", 0,
                                {"SCORER_GRPC_PORT": str(port)}, tmp_path / "scorer.log", free)
        publisher = ServiceProcess("model-publisher", "services.model_publisher", 0, {}, tmp_path / "p.log", free)
        for service in (scorer, publisher):
            service.process, service.state = _Exited(), "running"  # type: ignore[assignment]
        stack.processes = [scorer, publisher]
        events = stack.supervise_once()
    stack.stop()
    assert f"online-scorer-0 exited with code 1; port {port} is taken by another process" in events[0], events
    assert "taken" not in events[1], "a free port is not blamed"
