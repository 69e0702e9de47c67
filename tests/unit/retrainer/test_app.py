"""The retrainer's start-up: settings that cannot work with the spec are one clear line and exit code 2;
a replica beyond the first waits as a standby on the lease."""

from __future__ import annotations

import logging
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
        self.acquires = 0  # how often the replica waited for it: once more each time it went back to standby

    def acquire(self, stop: threading.Event) -> bool:
        self.acquires += 1
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

    @property
    def stopping(self) -> bool:
        return self.stopped.is_set()


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


class FakeTableReader:
    """A deployments table read to its end once ``caught_up`` is set."""

    def __init__(self, caught_up: bool = False) -> None:
        self.caught_up = threading.Event()
        if caught_up:
            self.caught_up.set()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def wait_until_caught_up(self, timeout: float) -> bool:
        return self.caught_up.wait(timeout)


def started(lease: FakeLease | None, reader: FakeTableReader | None = None,
            table_timeout_s: float = 60.0) -> tuple[RetrainerApp, FakeTerms, threading.Thread]:
    terms = FakeTerms()
    reader = reader or FakeTableReader(caught_up=True)
    app = RetrainerApp(terms, reader, SimpleNamespace(shutdown=lambda: None), table_timeout_s,  # type: ignore[arg-type]
                       lease)
    thread = threading.Thread(target=app.run, daemon=True)
    thread.start()
    return app, terms, thread


def second_term(terms: FakeTerms) -> RetrainerTerm:
    """The second term made, once its runner runs (up to 5 s)."""
    for _ in range(500):
        if len(terms.made) == 2 and terms.made[1].runner.running.is_set():
            break
        time.sleep(0.01)
    return terms.made[1]


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
    second = second_term(terms)
    assert second.runner.running.is_set() and second.processor.prepared == 1, \
        "a fresh challenger, its line resumed from the topics as after a restart"
    assert first.executor._shutdown, "the last term's rebuild is not waited for"  # type: ignore[attr-defined]
    app.stop()
    thread.join(5)
    assert not thread.is_alive()


def test_nothing_is_consumed_until_the_deployments_table_is_read(caplog: pytest.LogCaptureFixture) -> None:
    """Past RETRAINER_TABLE_TIMEOUT_S it started anyway: it consumed and committed labels it could not
    learn, and when the table was read, resumed the champion's line inside a batch, past the poll interval."""
    reader = FakeTableReader()
    with caplog.at_level(logging.WARNING, logger=app.__name__):
        retrainer, terms, thread = started(None, reader, table_timeout_s=0.2)
        time.sleep(0.9)
        term = terms.made[0]
        assert not term.runner.running.is_set() and term.processor.prepared == 0
        waits = [r.args[-1] for r in caplog.records if "deployments table not caught up" in r.getMessage()]
        assert len(waits) >= 2 and waits == sorted(waits) and waits[0] >= 0.2, \
            "a warning every RETRAINER_TABLE_TIMEOUT_S, with how long it has waited, not one and then silence"
        reader.caught_up.set()
        assert term.runner.running.wait(5) and term.processor.prepared == 1, "then the champion's line, then the group"
    retrainer.stop()
    thread.join(5)
    assert not thread.is_alive() and len(terms.made) == 1


def test_a_stop_while_the_table_is_not_read_ends_the_run_at_once_with_nothing_resumed() -> None:
    """The wait ran its whole RETRAINER_TABLE_TIMEOUT_S, then the resume, before a stop took: a rollout
    while Kafka was slow outlived the pod's grace period and ended in SIGKILL."""
    lease = FakeLease()
    lease.granted.set()
    retrainer, terms, thread = started(lease, FakeTableReader())
    time.sleep(0.3)
    stopped_at = time.monotonic()
    retrainer.stop()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - stopped_at < 2
    term = terms.made[0]
    assert term.processor.prepared == 0 and not term.runner.running.is_set() and lease.closed


def test_a_lease_lost_while_the_table_is_not_read_sends_the_replica_back_to_standby() -> None:
    lease = FakeLease()
    lease.granted.set()
    reader = FakeTableReader()
    retrainer, terms, thread = started(lease, reader)
    time.sleep(0.3)
    lease.take_away()  # another replica took over
    time.sleep(0.8)
    first = terms.made[0]
    assert first.processor.prepared == 0 and not first.runner.running.is_set() and len(terms.made) == 1, \
        "no resume and no join for a term already over"
    lease.granted.set()
    reader.caught_up.set()
    second = second_term(terms)
    assert second.runner.running.is_set() and second.processor.prepared == 1 and first.processor.prepared == 0
    retrainer.stop()
    thread.join(5)
    assert not thread.is_alive()
