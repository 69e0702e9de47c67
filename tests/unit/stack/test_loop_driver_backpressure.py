"""The demo driver holds events back while the loop is behind, and says for how long."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from streamloop.stack import loop_driver
from streamloop.stack.exceptions import LoopStalledError
from streamloop.stack.loop_driver import LoopDriver


@dataclass
class Event:
    index: int
    event: dict
    label: bool = False
    label_delay_ms: int = 0
    label_copies: int = 0


class Producer:
    def __init__(self, *_args, **_kwargs) -> None:
        self.values: list[bytes] = []

    def produce(self, topic, value=None, key=None) -> None:
        self.values.append(value)

    def poll(self, _timeout=0) -> int:
        return 0

    def flush(self, _timeout=0) -> int:
        return 0


def events(count: int) -> list[Event]:
    return [Event(i, {"transaction_id": f"t{i}", "card_id": "c", "timestamp": 1_700_000_000_000 + i, "amount": 1.0,
                      "merchant_category": "fuel", "country": "DE", "customer_tier": "gold", "card_present": True,
                      "distance_from_home_km": 1.0}) for i in range(count)]


def test_the_driver_waits_while_events_are_unscored_and_goes_on_when_they_are(monkeypatch,
                                                                             card_driver: LoopDriver) -> None:
    monkeypatch.setattr(loop_driver, "Producer", Producer)
    driver = card_driver
    rate = 1000.0  # the backlog limit is then 2,000 unscored events
    sending = threading.Thread(target=driver.run, args=(events(2_100), rate))
    sending.start()
    deadline = time.monotonic() + 10
    while len(driver.observed.produced_at_ms) < 2_001 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    assert len(driver.observed.produced_at_ms) == 2_001, "held back at the limit while nothing is scored"
    with driver._lock:  # the scorer catches up
        driver.observed.predicted_at_ms.update({e: 0 for e in driver.observed.produced_at_ms})
    sending.join(10)
    assert len(driver.observed.produced_at_ms) == 2_100
    assert driver.observed.throttled_s >= 0.3
    assert driver.observed.throttled_by.keys() == {"events"}, "the labels were never behind"
    assert driver.observed.throttled_by["events"] == driver.observed.throttled_s


def test_an_event_is_unanswered_until_it_is_predicted_or_dead_lettered() -> None:
    observed = loop_driver.LoopObservation()
    observed.produced_at_ms = {e: 0 for e in ("a", "b", "c", "d")}
    observed.predicted_at_ms = {"a": 1, "b": 1}
    observed.dead_lettered_events = {"b", "c"}  # "b" was dead-lettered by one stage and predicted anyway
    assert observed.events_unanswered() == 1  # "d"


def test_a_loop_that_answers_nothing_while_the_driver_waits_is_reported_stalled(monkeypatch,
                                                                              card_driver: LoopDriver) -> None:
    monkeypatch.setattr(loop_driver, "Producer", Producer)
    driver = card_driver
    driver.stall_timeout_s = 0.5
    failures: list[BaseException] = []

    def run() -> None:
        try:
            driver.run(events(2_100), 1000.0)
        except LoopStalledError as exc:
            failures.append(exc)

    sending = threading.Thread(target=run)
    sending.start()
    sending.join(10)
    assert not sending.is_alive() and len(failures) == 1, "held back with nothing answered: stalled, not waiting"
    # The driver's own stall clock, not the test's: the 2 s of producing 2,001 events before the
    # backlog limit are not on it, and a slow machine's scheduling is not counted against it.
    stalled_s = failures[0].waited_s
    assert driver.stall_timeout_s <= stalled_s < 5, stalled_s
    assert 0 < driver.observed.throttled_s <= stalled_s, "it held back, and only while its stall clock ran"
    assert "answered no event and no label" in str(failures[0]) and "2001 events unscored" in str(failures[0])


def test_a_loop_that_keeps_answering_is_waited_for_however_long(monkeypatch, card_driver: LoopDriver) -> None:
    monkeypatch.setattr(loop_driver, "Producer", Producer)
    driver = card_driver
    driver.stall_timeout_s = 0.3
    sending = threading.Thread(target=driver.run, args=(events(2_100), 1000.0))
    sending.start()
    deadline = time.monotonic() + 1.5  # five stall timeouts, one event answered every 0.1 s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        with driver._lock:
            unanswered = next(e for e in driver.observed.produced_at_ms if e not in driver.observed.predicted_at_ms)
            driver.observed.predicted_at_ms[unanswered] = 0
    assert sending.is_alive(), "slow, not stuck"
    with driver._lock:
        driver.observed.predicted_at_ms.update({e: 0 for e in driver.observed.produced_at_ms})
    sending.join(10)
    assert len(driver.observed.produced_at_ms) == 2_100


def test_a_reader_that_dies_ends_the_driver_s_waits_with_its_error(monkeypatch, card_driver: LoopDriver) -> None:
    """Without it, the demo said 'no champion deployed' or waited for the stall clock, the cause unseen."""
    import pytest

    from streamloop.stack.exceptions import LoopReaderError

    def unreachable(*_args) -> None:
        raise RuntimeError("the broker refused the consumer")

    monkeypatch.setattr(card_driver, "_read_until_stopped", unreachable)
    monkeypatch.setattr(loop_driver, "Producer", Producer)
    card_driver.start_readers()
    card_driver.stop()  # joins the reader: it has ended
    with pytest.raises(LoopReaderError, match="RuntimeError: the broker refused the consumer"):
        card_driver.wait_for_predictions(timeout_s=5)
    with pytest.raises(LoopReaderError):
        card_driver.run(iter(events(1)), 1000.0)


def test_the_drain_runs_the_callers_supervision_between_looks(card_driver: LoopDriver) -> None:
    card_driver.observed.produced_at_ms["t0"] = 1  # one event never answered
    looks: list[float] = []
    assert card_driver.wait_for_predictions(timeout_s=0.5, on_wait=lambda: looks.append(time.monotonic())) is False
    assert len(looks) >= 2
