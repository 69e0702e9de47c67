"""Start-up of the scorer before a champion is live: what it tells the operator while it waits."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest

from services.online_scorer.app import ScorerApp
from services.online_scorer.models import DeploymentGate, ModelSet


class NoChampion:
    """A holder no champion ever reaches; ``stop_after_s`` after the app first waits (on the reader
    or on it), and a few more waits on, it calls ``on_timeout``.

    The clock starts at the first wait, as the app's own does, not when the holder is made: on a
    loaded machine building the app took longer than the margin between the two, and the app was
    stopped before its own clock reached the catch-up time. The waits past the deadline make sure
    the app looks at its clock several times after the warning is due: "once" is then checked.
    """

    WAITS_PAST_DEADLINE = 3
    current = ModelSet()

    def __init__(self, stop_after_s: float) -> None:
        self._stop_after_s = stop_after_s
        self._deadline: float | None = None
        self._waits_past_deadline = 0
        self.on_timeout = lambda: None

    def tick(self, timeout_s: float) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self._stop_after_s
        time.sleep(min(timeout_s, 0.01))
        if time.monotonic() >= self._deadline:
            self._waits_past_deadline += 1
            if self._waits_past_deadline >= self.WAITS_PAST_DEADLINE:
                self.on_timeout()

    def wait_for_champion(self, timeout_s: float) -> bool:
        self.tick(timeout_s)
        return False


class NeverCaughtUp:
    """A reader that has read nothing and never reads to the end; its waits run the holder's clock
    (the app waits on the reader until the catch-up time, and only then on the holder)."""

    caught_up = False
    topic = "models.model-deployment.v1"

    def __init__(self, holder: NoChampion) -> None:
        self._holder = holder

    def wait_until_caught_up(self, timeout_s: float) -> bool:
        self._holder.tick(timeout_s)
        return False

    def snapshot(self) -> dict:
        return {}


class ReadAtOnce(NeverCaughtUp):
    """A reader of an empty deployments topic: read to its end at once."""

    def wait_until_caught_up(self, timeout_s: float) -> bool:
        return True


def waiting_app(catch_up_s: float, stop_after_s: float, reader: type[NeverCaughtUp] = NeverCaughtUp) -> ScorerApp:
    holder = NoChampion(stop_after_s)
    stoppable = SimpleNamespace(begin_shutdown=lambda: None, stop=lambda: None)
    ctx = SimpleNamespace(topic=lambda role: SimpleNamespace(name=f"{role}.v1"))
    app = ScorerApp(SimpleNamespace(deployments_catch_up_s=catch_up_s), ctx=ctx, telemetry=None, holder=holder,
                    deployments=DeploymentGate(holder), reader=reader(holder), server=stoppable,
                    runner=stoppable, alerts=None, store=None)
    holder.on_timeout = app.stop
    return app


@pytest.mark.parametrize("catch_up_s", [0.05, 0.3])
def test_an_unread_deployments_topic_is_warned_about_once_even_below_a_second(
        catch_up_s: float, caplog: pytest.LogCaptureFixture) -> None:
    app = waiting_app(catch_up_s, stop_after_s=catch_up_s + 0.2)
    with caplog.at_level(logging.WARNING, logger="services.online_scorer.app"):
        assert app._wait_for_champion() is False
    warnings = [r.getMessage() for r in caplog.records if "deployments topic not read to its end" in r.getMessage()]
    assert len(warnings) == 1, warnings


def test_no_warning_before_the_catch_up_time(caplog: pytest.LogCaptureFixture) -> None:
    app = waiting_app(catch_up_s=5.0, stop_after_s=0.1)
    with caplog.at_level(logging.WARNING, logger="services.online_scorer.app"):
        assert app._wait_for_champion() is False
    assert not [r for r in caplog.records if "deployments topic not read to its end" in r.getMessage()]


def test_what_it_waits_for_is_logged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """A restarted scorer said nothing between its start and its first champion; with no champion
    deployed, nothing for its first 30 s. Now each wait is named as it begins."""
    app = waiting_app(catch_up_s=30.0, stop_after_s=0.1, reader=ReadAtOnce)
    with caplog.at_level(logging.INFO, logger="services.online_scorer.app"):
        assert app._wait_for_champion() is False
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == "reading models.model-deployment.v1 to its end before applying any deployment (at most 30 s)"
    waiting = [m for m in said if m.startswith("no champion live yet")]
    assert waiting == ["no champion live yet (none deployed, or it did not load); waiting for one before consuming "
                       "features.v1"], said


def test_the_deployments_read_is_named_while_it_has_not_ended(caplog: pytest.LogCaptureFixture) -> None:
    app = waiting_app(catch_up_s=5.0, stop_after_s=0.1)
    with caplog.at_level(logging.INFO, logger="services.online_scorer.app"):
        assert app._wait_for_champion() is False
    said = [r.getMessage() for r in caplog.records]
    assert said == ["reading models.model-deployment.v1 to its end before applying any deployment (at most 5 s)"]
