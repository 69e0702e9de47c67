"""``streamloop top``'s options, checked before it connects to anything, and what ``--once`` waits for."""

from __future__ import annotations

import time
from types import SimpleNamespace

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


class SettlingCollector:
    """Scraped twice and lag read from the start, without an error; the topics read to their end later."""

    def __init__(self, caught_up_after_s: float) -> None:
        self.model = SimpleNamespace(scrapes=2)
        self._caught_up_at = time.monotonic() + caught_up_after_s

    def snapshot(self) -> dict:
        return {"sources": {"kafka": {"records": 0, "error": None}, "lag": {"at": 1.0, "error": None}}}

    @property
    def topics_caught_up(self) -> bool:
        return time.monotonic() >= self._caught_up_at


def test_once_waits_until_the_monitoring_topics_are_read_to_their_end():
    # With no error from the reader yet, the screen came before the topics were read: an old
    # champion and no promotions.
    collector = SettlingCollector(caught_up_after_s=0.5)
    top_command._settle(collector, timeout_s=10)
    assert collector.topics_caught_up


def test_once_gives_up_waiting_after_its_timeout():
    started = time.monotonic()
    top_command._settle(SettlingCollector(caught_up_after_s=60), timeout_s=0.3)
    assert time.monotonic() - started < 5
