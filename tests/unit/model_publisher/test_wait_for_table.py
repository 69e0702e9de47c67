"""Nothing is consumed before the deployments table is read: judging a partly read registry errs."""

from __future__ import annotations

import threading

from services.model_publisher.app import wait_for_table
from streamloop.kafka import table_reader
from streamloop.ml.registry import DeploymentTable


class SlowReader:
    """Catches up on its ``caught_up_at``-th look; each look is instant."""

    def __init__(self, caught_up_at: int | None) -> None:
        self.caught_up_at = caught_up_at
        self.looks = 0

    def wait_until_caught_up(self, _timeout_s: float | None = None) -> bool:
        self.looks += 1
        return self.caught_up_at is not None and self.looks >= self.caught_up_at


def test_the_wait_goes_on_past_the_timeout_until_the_table_is_read(caplog) -> None:
    """It used to start consuming after PUBLISHER_TABLE_TIMEOUT_S with whatever part of the table it had."""
    table, reader = DeploymentTable(), SlowReader(caught_up_at=7)
    assert wait_for_table(reader, table, timeout_s=1.0, stopped=lambda: False) is True  # type: ignore[arg-type]
    assert table.ready and reader.looks == 7
    assert [r.message for r in caplog.records if "not caught up" in r.message] == [
        "deployments table not caught up after 1s; nothing is consumed until it is",
        "deployments table not caught up after 2s; nothing is consumed until it is",
        "deployments table not caught up after 3s; nothing is consumed until it is"]
    assert {r.levelname for r in caplog.records if "not caught up" in r.message} == {"ERROR"}, \
        "no champion can be judged meanwhile: an error, where the retrainer's is a warning"


def test_a_stop_ends_the_wait_with_nothing_consumed(monkeypatch) -> None:
    monkeypatch.setattr(table_reader, "TABLE_POLL_S", 0.01)
    table, stopping = DeploymentTable(), threading.Event()
    threading.Timer(0.2, stopping.set).start()
    assert wait_for_table(SlowReader(caught_up_at=None), table, timeout_s=60, stopped=stopping.is_set) is False  # type: ignore[arg-type]
    assert not table.ready
