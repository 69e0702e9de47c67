"""The retrainer's start-up: settings that cannot work with the spec are one clear line and exit code 2;
a replica beyond the first waits as a standby on the lease."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from services.retrainer import app
from services.retrainer.app import RetrainerApp, RetrainerTerm
from services.retrainer.settings import RetrainerSettings, RetrainerSettingsError, check_against_spec
from tests.conftest import DEMO_SPEC


def test_a_rebuild_window_smaller_than_the_examples_a_rebuild_needs_exits_2_with_one_line(
        monkeypatch: pytest.MonkeyPatch, demo_pipeline, capsys: pytest.CaptureFixture) -> None:
    """Every rebuild was skipped for too few examples, and nothing said so before the first was."""
    monkeypatch.setenv("STREAMLOOP_PIPELINE", str(DEMO_SPEC))
    monkeypatch.setenv("RETRAINER_REBUILD_MIN_EXAMPLES", str(demo_pipeline.retrain.rebuild_window + 1))
    assert app.main() == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"retrainer: invalid settings: rebuild_min_examples (RETRAINER_REBUILD_MIN_EXAMPLES) is "
                   f"{demo_pipeline.retrain.rebuild_window + 1}, more than the spec's retrain.rebuild_window "
                   f"({demo_pipeline.retrain.rebuild_window}): every rebuild would be skipped for too few examples")


def test_a_rebuild_window_that_holds_just_enough_examples_is_accepted(demo_pipeline) -> None:
    window = demo_pipeline.retrain.rebuild_window
    check_against_spec(RetrainerSettings(rebuild_min_examples=window), demo_pipeline.retrain)
    with pytest.raises(RetrainerSettingsError):
        check_against_spec(RetrainerSettings(rebuild_min_examples=window + 1), demo_pipeline.retrain)


class FakeLease:
    """Held once ``grant``ed, until ``take_away`` (a rebalance handing it to another replica)."""

    def __init__(self) -> None:
        self.granted = threading.Event()
        self.lost = False
        self.on_lost = None
        self.closed = False

    def acquire(self, stop: threading.Event) -> bool:
        while not stop.is_set() and not self.granted.is_set():
            time.sleep(0.01)
        self.lost = False
        return self.granted.is_set()

    def watch(self, on_lost) -> None:
        self.on_lost = on_lost

    def unwatch(self) -> None:
        self.on_lost = None

    def take_away(self) -> None:
        self.granted.clear()
        self.lost = True
        self.on_lost()

    def close(self) -> None:
        self.closed = True


class FakeRunner:
    def __init__(self) -> None:
        self.running = threading.Event()
        self.stopped = threading.Event()

    def run(self) -> int:
        self.running.set()
        self.stopped.wait(10)
        return 0

    def stop(self) -> None:
        self.stopped.set()


class FakeProcessor:
    def __init__(self) -> None:
        self.prepared = 0

    def prepare(self) -> None:
        self.prepared += 1


class FakeTerms:
    """Every term the app made, as ``build``'s ``new_term`` makes them."""

    def __init__(self) -> None:
        self.made: list[RetrainerTerm] = []

    def __call__(self) -> RetrainerTerm:
        term = RetrainerTerm(FakeProcessor(), FakeRunner(), ThreadPoolExecutor(1))  # type: ignore[arg-type]
        self.made.append(term)
        return term


def started(lease: FakeLease) -> tuple[RetrainerApp, FakeTerms, threading.Thread]:
    terms = FakeTerms()
    reader = SimpleNamespace(start=lambda: None, stop=lambda: None, wait_until_caught_up=lambda _timeout: True)
    app = RetrainerApp(terms, reader, SimpleNamespace(shutdown=lambda: None), 60.0, lease)  # type: ignore[arg-type]
    thread = threading.Thread(target=app.run, daemon=True)
    thread.start()
    return app, terms, thread


def test_a_second_replica_waits_as_a_standby_and_takes_over_when_given_the_lease() -> None:
    """Two replicas each trained a challenger on their share of the labels, and both rebuilt on every drift."""
    lease = FakeLease()
    app, terms, thread = started(lease)
    time.sleep(0.2)
    standby = terms.made[0]
    assert standby.processor.prepared == 0 and not standby.runner.running.is_set(), \
        "a standby neither resumes the challenger's line nor joins the group"
    lease.granted.set()  # the active replica went away
    assert standby.runner.running.wait(5) and standby.processor.prepared == 1
    app.stop()
    thread.join(5)
    assert not thread.is_alive() and lease.closed and len(terms.made) == 1


def test_a_replica_that_lost_the_lease_stops_and_starts_afresh_when_it_takes_it_back() -> None:
    lease = FakeLease()
    lease.granted.set()
    app, terms, thread = started(lease)
    first = terms.made[0]
    assert first.runner.running.wait(5)
    lease.take_away()  # a stall: another replica took over and learned on
    assert first.runner.stopped.wait(5)
    time.sleep(0.2)
    assert len(terms.made) == 1, "it waits as a standby"
    lease.granted.set()
    for _ in range(500):
        if len(terms.made) == 2 and terms.made[1].runner.running.is_set():
            break
        time.sleep(0.01)
    second = terms.made[1]
    assert second.runner.running.is_set() and second.processor.prepared == 1, \
        "a fresh challenger, its line resumed from the topics as after a restart"
    assert first.executor._shutdown, "the last term's rebuild is not waited for"  # type: ignore[attr-defined]
    app.stop()
    thread.join(5)
    assert not thread.is_alive()
