"""wait_until_read: the publisher's and the retrainer's wait for their deployments table, without a broker.

Both consume nothing before the table is read to its end, however long that takes, say so every
so often, and give the wait up at once when stopped (or, for the retrainer, when its lease is lost).
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from streamloop.kafka import table_reader
from streamloop.kafka.table_reader import TABLE_POLL_S, wait_until_read


class SlowReader:
    """Caught up at its ``caught_up_at``-th look (never if None); each look is instant, the timeouts asked kept."""

    def __init__(self, caught_up_at: int | None) -> None:
        self.caught_up_at = caught_up_at
        self.asked: list[float | None] = []

    def wait_until_caught_up(self, timeout_s: float | None = None) -> bool:
        self.asked.append(timeout_s)
        return self.caught_up_at is not None and len(self.asked) >= self.caught_up_at


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if "not caught up" in r.getMessage()]


def test_the_wait_goes_on_past_log_every_s_until_the_table_is_read_with_a_line_each_time(caplog) -> None:
    """No timeout: both services used to start after theirs with whatever part of the table they had."""
    reader = SlowReader(caught_up_at=7)
    with caplog.at_level(logging.INFO):
        assert wait_until_read(reader, lambda: False, log_every_s=1.0, what="deployments table") is True
    assert reader.asked == [TABLE_POLL_S] * 7
    assert lines(caplog) == [(logging.WARNING, f"deployments table not caught up after {s}s; nothing is consumed "
                                               f"until it is") for s in (1, 2, 3)]


def test_the_line_s_level_is_the_caller_s_and_a_table_read_at_once_says_nothing(caplog) -> None:
    with caplog.at_level(logging.INFO):
        assert wait_until_read(SlowReader(caught_up_at=3), lambda: False, log_every_s=0.5, what="the table",
                               level=logging.ERROR)
        assert lines(caplog) == [(logging.ERROR, "the table not caught up after 0s; nothing is consumed until it is"),
                                 (logging.ERROR, "the table not caught up after 1s; nothing is consumed until it is")]
        caplog.clear()
        assert wait_until_read(SlowReader(caught_up_at=1), lambda: False, log_every_s=0.5, what="the table")
        assert lines(caplog) == []


def test_a_line_every_log_every_s_even_when_shorter_than_a_look() -> None:
    """One line every RETRAINER_TABLE_TIMEOUT_S, not one a look (0.5 s), nor one and then silence."""
    reader = SlowReader(caught_up_at=None)
    looks = iter(range(10))
    assert wait_until_read(reader, lambda: next(looks) == 9, log_every_s=0.2, what="t") is False
    assert reader.asked == [0.2] * 9


def test_a_stop_ends_the_wait_at_the_next_look_with_false(monkeypatch) -> None:
    monkeypatch.setattr(table_reader, "TABLE_POLL_S", 0.01)
    stopping = threading.Event()
    threading.Timer(0.2, stopping.set).start()
    asked = time.monotonic()
    assert wait_until_read(SlowReader(caught_up_at=None), stopping.is_set, log_every_s=60, what="t") is False
    assert time.monotonic() - asked < 1.0
    reader = SlowReader(caught_up_at=1)
    assert wait_until_read(reader, lambda: True, log_every_s=60, what="t") is False
    assert reader.asked == [], "stopped before it began: not even one look"


class RealReaderBehind:
    """wait_until_caught_up as CompactedTopicReader's: an Event waited on for the whole timeout."""

    def __init__(self) -> None:
        self.caught_up = threading.Event()

    def wait_until_caught_up(self, timeout_s: float | None = None) -> bool:
        return self.caught_up.wait(timeout_s)


def test_the_time_said_is_about_the_time_waited(caplog) -> None:
    reader = RealReaderBehind()
    threading.Timer(0.75, reader.caught_up.set).start()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert wait_until_read(reader, lambda: False, log_every_s=0.2, what="t")
    took = time.monotonic() - started
    assert 0.7 <= took < 1.0
    assert len(lines(caplog)) == 3, "at 0.2, 0.4 and 0.6 s"
