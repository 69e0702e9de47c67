"""``python -m services.<service>`` logs that it is starting before it imports its modules, and
hands that first line to its ``main``, whose ``start_service`` logs how long the imports took.

Those imports take 1.3–2 s of CPU and, on the loaded fault-test machine, 8.6–12 s of wall time;
before this line the restarted scorer logged nothing for all of it (10–17 s after a SIGKILL).
"""

from __future__ import annotations

import importlib
import runpy
import sys
import types

import pytest

from streamloop import startup
from streamloop.stack.services import SERVICES
from streamloop.startup import Startup
from tests.faults.harness import LOG_LINE


class AppStandIn(types.ModuleType):
    """Stands in for a service's ``app`` module (whose import pulls in every module the service
    needs): records what stderr held when ``__main__`` took ``main`` from it, and what it was handed."""

    def __init__(self, name: str, stderr_then: list[str], handed: list[object],
                 capsys: pytest.CaptureFixture[str]) -> None:
        super().__init__(name)
        self._stderr_then = stderr_then
        self._handed = handed
        self._capsys = capsys

    def __getattr__(self, name: str) -> object:
        if name != "main":
            raise AttributeError(name)
        self._stderr_then.append(self._capsys.readouterr().err)
        return lambda startup=None: self._handed.append(startup) or 0


@pytest.mark.parametrize(("service", "module"), sorted(SERVICES.items()))
def test_the_first_line_comes_before_the_imports(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                 service: str, module: str) -> None:
    monkeypatch.setenv("STREAMLOOP_LOG_LEVEL", "INFO")
    monkeypatch.setattr(startup, "_announced", None)
    stderr_then: list[str] = []
    handed: list[object] = []
    monkeypatch.setitem(sys.modules, f"{module}.app", AppStandIn(f"{module}.app", stderr_then, handed, capsys))
    with pytest.raises(SystemExit) as exited:
        runpy.run_module(module, run_name="__main__")
    assert exited.value.code == 0
    assert len(stderr_then) == 1 and f"{service} starting" in stderr_then[0], stderr_then
    assert LOG_LINE.match(stderr_then[0]), stderr_then[0]
    assert len(handed) == 1 and isinstance(handed[0], Startup) and handed[0].service == service, handed


@pytest.mark.parametrize("module", sorted(SERVICES.values()))
def test_main_hands_the_first_line_to_start_service(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    app = importlib.import_module(f"{module}.app")
    given: list[object] = []

    def start_service(service: str, load_settings: object, build: object, startup: Startup | None = None) -> int:
        given.append(startup)
        return 2  # as when its settings are refused: main returns before running anything

    monkeypatch.setattr(app, "start_service", start_service)
    first = Startup("any")
    assert app.main(first) == 2
    assert given == [first]
