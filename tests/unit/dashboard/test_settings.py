"""The dashboard's settings: what the collector thread can wait for is refused up front otherwise."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from streamloop.cli.main import app
from streamloop.dashboard import DashboardSettings
from streamloop.errors import StreamloopError
from streamloop.stack.launcher import Stack
from tests.conftest import DEMO_SPEC

INTERVALS = ["STREAMLOOP_DASHBOARD_SCRAPE_INTERVAL_S", "STREAMLOOP_DASHBOARD_LAG_INTERVAL_S"]


@pytest.mark.parametrize("variable", INTERVALS)
@pytest.mark.parametrize("value", ["1e300", "86400.5", "inf", "nan", "0"])
def test_an_interval_the_collector_cannot_wait_is_refused(monkeypatch, variable, value) -> None:
    # 1e300 s overflows threading.Event.wait: the collector thread died and the page froze.
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        DashboardSettings()


@pytest.mark.parametrize("variable", INTERVALS)
def test_an_interval_of_a_day_is_taken(monkeypatch, variable) -> None:
    monkeypatch.setenv(variable, "86400")
    settings = DashboardSettings()
    assert 86400 in (settings.scrape_interval_s, settings.lag_interval_s)


@pytest.mark.parametrize("command", [["demo", "--headless"], ["up"]])
def test_up_and_demo_refuse_it_in_one_line_before_anything_starts(monkeypatch, tmp_path, command) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    prepared: list[bool] = []

    def prepare(*_args, **_kwargs):
        prepared.append(True)
        raise StreamloopError("stack prepared")

    monkeypatch.setattr(Stack, "prepare", prepare)
    result = CliRunner().invoke(app, [*command, "-p", str(DEMO_SPEC), "--data-dir", str(tmp_path)],
                                env={"STREAMLOOP_DASHBOARD_SCRAPE_INTERVAL_S": "1e300"})
    assert result.exit_code == 2 and not prepared, result.output
    assert result.output.startswith("streamloop: invalid settings: scrape_interval_s "
                                    "(STREAMLOOP_DASHBOARD_SCRAPE_INTERVAL_S): "), result.output
    assert len(result.output.splitlines()) == 1
