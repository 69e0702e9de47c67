"""``demo --rate``: the rates the demo can show, checked before anything starts."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from streamloop.cli.main import app
from tests.conftest import DEMO_SPEC


def demo(tmp_path, *arguments: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["demo", "--headless", "-p", str(DEMO_SPEC), "--data-dir", str(tmp_path),
                                    *arguments], env=env)


# 1e-300 left the second event due at +inf: the demo hung with nothing said. 1e6 shared each
# millisecond of event time among 1,000 events and never held one back.
@pytest.mark.parametrize("rate", ["1e-300", "0.09", "0", "-1", "nan", "inf", "10000.5", "1e6"])
def test_a_rate_outside_what_the_demo_can_show_is_refused_in_one_line(tmp_path, prepared, rate) -> None:
    result = demo(tmp_path, "--rate", rate)
    assert result.exit_code == 2 and not prepared, result.output
    assert result.output == (f"streamloop: Invalid value for '--rate' (env var: 'STREAMLOOP_DEMO_RATE'): "
                             f"{float(rate)} is not a number of events per second from 0.1 to 10,000\n")


def test_the_rate_from_the_environment_is_checked_the_same(tmp_path, prepared) -> None:
    result = demo(tmp_path, env={"STREAMLOOP_DEMO_RATE": "1e-300"})
    assert result.exit_code == 2 and not prepared
    assert "1e-300 is not a number of events per second from 0.1 to 10,000" in result.output


@pytest.mark.parametrize("rate", ["0.1", "400", "10000"])
def test_a_rate_within_the_bounds_is_taken(tmp_path, prepared, rate) -> None:
    result = demo(tmp_path, "--rate", rate)
    assert prepared, result.output
