"""The demo's producing thread: a failure reaches the command instead of ending in a summary of nothing."""

from __future__ import annotations

from streamloop.cli.demo_command import _producing


class FailingDriver:
    def run(self, stream, rate: float) -> None:
        next(stream)
        raise ZeroDivisionError("float division by zero")


class Driver:
    def __init__(self) -> None:
        self.sent: list[int] = []

    def run(self, stream, rate: float) -> None:
        self.sent.extend(stream)


def test_a_failure_while_producing_is_kept_for_the_command() -> None:
    failures: list[BaseException] = []
    _producing(FailingDriver(), iter([1, 2]), 10.0, failures)  # type: ignore[arg-type]
    assert [type(f) for f in failures] == [ZeroDivisionError]


def test_a_stream_produced_to_the_end_leaves_no_failure() -> None:
    failures: list[BaseException] = []
    driver = Driver()
    _producing(driver, iter([1, 2, 3]), 10.0, failures)  # type: ignore[arg-type]
    assert driver.sent == [1, 2, 3] and failures == []
