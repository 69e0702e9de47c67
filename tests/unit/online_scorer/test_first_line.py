"""``python -m services.online_scorer`` logs that it is starting before it imports its modules.

Those imports take 1.3–2 s of CPU and, on the loaded fault-test machine, 8.6–12 s of wall time;
before this line the restarted scorer logged nothing for all of it (10–17 s after a SIGKILL).
"""

from __future__ import annotations

import runpy
import sys
import types

import pytest

from tests.faults.harness import LOG_LINE


class AppStandIn(types.ModuleType):
    """Stands in for ``services.online_scorer.app`` (whose import pulls in every module the
    scorer needs): records what stderr held when ``__main__`` took ``main`` from it."""

    def __init__(self, stderr_then: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        super().__init__("services.online_scorer.app")
        self._stderr_then = stderr_then
        self._capsys = capsys

    def __getattr__(self, name: str) -> object:
        if name != "main":
            raise AttributeError(name)
        self._stderr_then.append(self._capsys.readouterr().err)
        return lambda startup=None: 0


def test_the_first_line_comes_before_the_imports(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STREAMLOOP_LOG_LEVEL", "INFO")
    stderr_then: list[str] = []
    monkeypatch.setitem(sys.modules, "services.online_scorer.app", AppStandIn(stderr_then, capsys))
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("services.online_scorer", run_name="__main__")
    assert exited.value.code == 0
    assert len(stderr_then) == 1 and "online-scorer starting" in stderr_then[0], stderr_then
    assert LOG_LINE.match(stderr_then[0]), stderr_then[0]
