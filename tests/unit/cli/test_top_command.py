"""``streamloop top``'s options, checked before it connects to anything."""

from __future__ import annotations

import pytest
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
