"""How the embedded stack runs its services: replicas, and stopping them all at once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from streamloop.stack.process import spawn, stop, terminate
from streamloop.stack.services import embedded_replicas


def test_the_collector_runs_two_replicas_except_under_faust() -> None:
    assert embedded_replicas({}) == {"ground-truth-collector": 2}
    assert embedded_replicas({"COLLECTOR_RUNTIME": "runner"}) == {"ground-truth-collector": 2}
    # aiokafka group rebalances misbehave on noida-db (N1): one faust worker per group.
    assert embedded_replicas({"COLLECTOR_RUNTIME": "faust"}) == {}


def test_services_asked_to_stop_together_stop_in_the_time_of_one(tmp_path: Path) -> None:
    # Each child takes 2 s to shut down after SIGTERM, as a service draining its last batch does.
    slow_exit = ("import signal, sys, time\n"
                 "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(2), sys.exit(0)))\n"
                 "print('ready', flush=True)\n"
                 "time.sleep(60)\n")
    children = [spawn([sys.executable, "-c", slow_exit], tmp_path / f"child-{i}.log") for i in range(3)]
    deadline = time.monotonic() + 20
    while not all("ready" in (tmp_path / f"child-{i}.log").read_text() for i in range(3)):
        assert time.monotonic() < deadline, "children did not start"
        time.sleep(0.05)
    started = time.monotonic()
    for child in children:
        terminate(child)
    codes = [stop(child, timeout_s=10, terminated=True) for child in children]
    took = time.monotonic() - started
    assert codes == [0, 0, 0]
    assert took < 4.5, f"stopping three 2 s shutdowns took {took:.1f}s: one after another takes 6 s"
    assert all(isinstance(child, subprocess.Popen) and child.poll() == 0 for child in children)
