"""``streamloop top``'s options, checked before it connects to anything."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from streamloop.cli import top_command
from streamloop.cli.main import app


@pytest.mark.parametrize("interval", ["inf", "nan", "0", "-1"])
def test_an_interval_that_is_not_a_finite_positive_number_is_refused_before_connecting(monkeypatch, interval):
    monkeypatch.setattr(top_command, "connect", lambda *_args: pytest.fail("nothing may connect"))
    result = CliRunner().invoke(app, ["top", "--interval", interval])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("streamloop: --interval must be a finite number of seconds more than 0"), \
        result.output


@pytest.mark.parametrize("interval", ["1e300", "86400.5"])
def test_an_interval_longer_than_a_day_is_refused_before_connecting(monkeypatch, interval):
    # 1e300 is finite, but overflows time.sleep: a traceback after the first screen.
    monkeypatch.setattr(top_command, "connect", lambda *_args: pytest.fail("nothing may connect"))
    result = CliRunner().invoke(app, ["top", "--interval", interval])
    assert result.exit_code == 2, result.output
    assert result.output == "streamloop: --interval must be a finite number of seconds more than 0 and at most " \
                            f"86400 (a day), not {float(interval)}\n"


def test_an_interval_of_a_day_is_taken(monkeypatch):
    connected: list[bool] = []

    def connect(*_args):
        connected.append(True)
        raise typer.Exit(3)

    monkeypatch.setattr(top_command, "connect", connect)
    result = CliRunner().invoke(app, ["top", "--interval", "86400"])
    assert connected and result.exit_code == 3, result.output
