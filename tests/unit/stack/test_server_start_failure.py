"""A broker or Redis that does not start is stopped by ``start`` itself: its caller never got it,
so nothing else could stop it (the stack assigned the server only once ``start`` returned)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from streamloop.stack import broker, redis_server
from streamloop.stack.broker import EmbeddedBroker
from streamloop.stack.exceptions import StartTimeoutError
from streamloop.stack.process import spawn, stop
from streamloop.stack.redis_server import EmbeddedRedis


@pytest.fixture
def never_listens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen]:
    """Both binaries replaced by a stand-in that only sleeps; returns the children it spawns."""
    binary = tmp_path / "never-listens"
    binary.write_text("#!/bin/sh\nexec sleep 60\n")
    binary.chmod(0o755)
    monkeypatch.setenv("STREAMLOOP_REDIS_SERVER", str(binary))  # how redis_binary() is told
    monkeypatch.setattr(broker, "broker_binary", lambda _kind: binary)
    spawned: list[subprocess.Popen] = []

    def recording_spawn(*args, **kwargs) -> subprocess.Popen:
        spawned.append(spawn(*args, **kwargs))
        return spawned[-1]

    monkeypatch.setattr(broker, "spawn", recording_spawn)
    monkeypatch.setattr(redis_server, "spawn", recording_spawn)
    yield spawned
    for child in spawned:  # without the fix, the test must not leave them behind either
        stop(child, timeout_s=5)


def _server(kind: str, tmp_path: Path) -> EmbeddedBroker | EmbeddedRedis:
    return EmbeddedRedis(tmp_path / "redis") if kind == "redis" else EmbeddedBroker("noida", tmp_path / "broker")


@pytest.mark.parametrize("kind", ["redis", "broker"])
def test_a_server_that_does_not_listen_in_time_is_stopped(kind: str, tmp_path: Path,
                                                          never_listens: list[subprocess.Popen]) -> None:
    server = _server(kind, tmp_path)
    with pytest.raises(StartTimeoutError, match="did not listen"):
        server.start(timeout_s=0.3)
    assert len(never_listens) == 1
    assert never_listens[0].poll() is not None, "the stand-in still runs"
    assert server.process is None


@pytest.mark.parametrize("kind", ["redis", "broker"])
def test_a_server_interrupted_while_it_starts_is_stopped(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         never_listens: list[subprocess.Popen]) -> None:
    def ctrl_c(*_args, **_kwargs) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(redis_server if kind == "redis" else broker, "wait_for_port", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        _server(kind, tmp_path).start()
    assert len(never_listens) == 1 and never_listens[0].poll() is not None, "the stand-in still runs"
