"""The row writer: a store failing in a way nobody foresaw neither loses rows nor stops the writing."""

from __future__ import annotations

import time

from services.featurizer.store_writer import FeatureRowWriter
from streamloop.store import FeatureWrite
from tests.unit.featurizer.support import MemoryStore


class FailingOnce(MemoryStore):
    """A store whose first write raises what no FeatureStore should (a bug in a backend, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def write_many(self, group, writes, now_ms=None):  # noqa: ANN001, ANN201 - the store's signature
        if self.failures:
            self.failures -= 1
            raise RuntimeError("unexpected")
        return super().write_many(group, writes, now_ms)


def written(store: MemoryStore, *entities: str, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(("features", e) in store.rows for e in entities):
            return True
        time.sleep(0.01)
    return False


def test_an_unexpected_store_error_keeps_the_rows_and_the_background_writer_running() -> None:
    store = FailingOnce()
    writer = FeatureRowWriter(store, "features", backoff_s=0.01).start()
    try:
        writer.submit([FeatureWrite("a", 1, 1)])
        assert written(store, "a"), "the rows of the failed write are written by the retry"
        writer.submit([FeatureWrite("b", 2, 2)])
        assert written(store, "b"), "and the writer goes on"
        assert writer.background and writer.failures == 1 and writer.pending == 0
    finally:
        writer.stop()
    assert not writer.background


def test_an_unexpected_store_error_in_a_flush_keeps_the_rows_pending() -> None:
    store = FailingOnce()
    clock = [0.0]
    writer = FeatureRowWriter(store, "features", monotonic=lambda: clock[0])
    writer.submit([FeatureWrite("a", 1, 1)])
    assert writer.flush() is False and writer.pending == 1
    clock[0] += 1
    assert writer.flush() is True and store.rows[("features", "a")].sequence == 1
