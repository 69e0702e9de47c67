"""``streamloop service NAME`` (what containers run) writes the service's first line before the
command imports its own modules, which take about as long as the service's."""

from __future__ import annotations

import sys
import types

import pytest

from streamloop import startup
from streamloop.cli import entry


class CliStandIn(types.ModuleType):
    """Stands in for ``streamloop.cli.main``: records what stderr held when the entry took ``app``."""

    def __init__(self, stderr_then: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        super().__init__("streamloop.cli.main")
        self._stderr_then = stderr_then
        self._capsys = capsys

    def __getattr__(self, name: str) -> object:
        if name != "app":
            raise AttributeError(name)
        self._stderr_then.append(self._capsys.readouterr().err)
        return lambda: None


@pytest.fixture
def stderr_at_cli_import(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> list[str]:
    monkeypatch.setenv("STREAMLOOP_LOG_LEVEL", "INFO")
    monkeypatch.setattr(startup, "_announced", None)
    stderr_then: list[str] = []
    monkeypatch.setitem(sys.modules, "streamloop.cli.main", CliStandIn(stderr_then, capsys))
    return stderr_then


def test_a_service_says_it_is_starting_before_the_cli_is_imported(
        monkeypatch: pytest.MonkeyPatch, stderr_at_cli_import: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["streamloop", "service", "online-scorer"])
    entry.main()
    assert len(stderr_at_cli_import) == 1 and "online-scorer starting" in stderr_at_cli_import[0]
    assert startup.first_line("online-scorer") is startup._announced  # the service's __main__ finds it written


@pytest.mark.parametrize("argv", [["--help"], ["service", "nope"], ["service"], ["up"]])
def test_other_commands_say_nothing_first(monkeypatch: pytest.MonkeyPatch, stderr_at_cli_import: list[str],
                                          argv: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["streamloop", *argv])
    entry.main()
    assert stderr_at_cli_import == [""]
