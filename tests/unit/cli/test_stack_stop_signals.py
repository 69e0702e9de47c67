"""A second Ctrl-C or SIGTERM while ``up`` stops its stack waits for the stop; a third kills it.

The stop used to be cut short by the second signal: exit 130, stack.json left behind, and the
broker and Redis signalled while services still drained. Here a real ``up --no-services`` on
loopback runs in a subprocess whose Redis takes ``SLOW_STOP_S`` to stop, the window a draining
service leaves in a real stop.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DEMO_SPEC, REPO_ROOT

SLOW_STOP_S = 4.0
# `up`, with the stack's Redis slow to stop; "redis stopping" says the stop has begun.
UP = f"""
import sys, time
from streamloop.stack import redis_server
stop = redis_server.EmbeddedRedis.stop
def slow_stop(self):
    if self.process is not None:
        print("redis stopping", file=sys.stderr, flush=True)
        time.sleep({SLOW_STOP_S})
    stop(self)
redis_server.EmbeddedRedis.stop = slow_stop
from streamloop.cli.main import app
app(sys.argv[1:], prog_name="streamloop")
"""


def _wait_for(predicate, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:.0f}s"
        time.sleep(0.05)


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("signals", [2, 3])
def test_a_signal_during_the_stop_waits_for_it_and_a_third_kills_every_process(tmp_path: Path, signals: int) -> None:
    data_dir, stderr = tmp_path / "stack", tmp_path / "up.err"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "PYTEST"))}
    env.update({"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "libs")]),
                "STREAMLOOP_DASHBOARD_PORT": "-1", "COLUMNS": "200"})
    with stderr.open("w") as err:
        up = subprocess.Popen([sys.executable, "-c", UP, "up", "--no-services", "-p", str(DEMO_SPEC),
                               "--data-dir", str(data_dir)], stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        _wait_for(lambda: "Ctrl-C stops everything." in stderr.read_text(), "started stack")
        state = json.loads((data_dir / "stack.json").read_text())
        redis_address = state["redis_url"].removeprefix("redis://").removesuffix("/0")
        assert _listening(state["bootstrap_servers"]) and _listening(redis_address)
        up.send_signal(signal.SIGTERM)
        _wait_for(lambda: "redis stopping" in stderr.read_text(), "stop", 20)
        stop_began = time.monotonic()
        up.send_signal(signal.SIGTERM)
        _wait_for(lambda: "already stopping; press Ctrl-C again to kill" in stderr.read_text(), "hint", 5)
        assert up.poll() is None, "the second signal does not end the command"
        if signals == 3:
            up.send_signal(signal.SIGINT)  # Ctrl-C, as the hint says
            _wait_for(lambda: not _listening(redis_address) and not _listening(state["bootstrap_servers"]),
                      "killed broker and Redis", 5)
            assert time.monotonic() - stop_began < SLOW_STOP_S, "killed while the stop still waited"
            assert "killed every process of the stack" in stderr.read_text()
        assert up.wait(30) == 0, stderr.read_text()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
    text = stderr.read_text()
    assert text.count("already stopping") == 1 and "Traceback" not in text, text
    assert text.rstrip().endswith("stopped; no process left behind."), text
    assert not (data_dir / "stack.json").exists()
    assert not _listening(redis_address) and not _listening(state["bootstrap_servers"])
