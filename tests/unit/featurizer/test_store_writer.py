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


def test_a_discarded_row_is_deleted_after_the_rows_queued_before_and_before_those_queued_after() -> None:
    store = MemoryStore()
    clock = [0.0]
    writer = FeatureRowWriter(store, "features", monotonic=lambda: clock[0])
    writer.submit([FeatureWrite("a", 5, 5), FeatureWrite("b", 6, 6)])
    writer.flush()
    writer.submit([FeatureWrite("a", 7, 7)])
    writer.discard(["a", "b"])
    writer.submit([FeatureWrite("b", 3, 3)])
    store.down = True
    assert writer.flush() is False and writer.pending == 3, "the deletes and b's row wait for the store"
    store.down = False
    clock[0] += 1
    assert writer.flush() is True and writer.pending == 0
    assert store.rows == {("features", "b"): FeatureWrite("b", 3, 3)}, "a deleted, b written though older"


class DiscardingWhileWriting(MemoryStore):
    """A store whose write fails after the processor discarded a row it was writing (the writer's thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.writer: FeatureRowWriter | None = None

    def write_many(self, group, writes, now_ms=None):  # noqa: ANN001, ANN201 - the store's signature
        if self.writer is not None:
            self.writer.discard(["a"])
            self.writer = None
            raise RuntimeError("connection lost")
        return super().write_many(group, writes, now_ms)


def test_a_row_discarded_while_its_write_failed_is_not_written_again() -> None:
    store = DiscardingWhileWriting()
    clock = [0.0]
    writer = FeatureRowWriter(store, "features", monotonic=lambda: clock[0])
    store.writer = writer
    writer.submit([FeatureWrite("a", 5, 5), FeatureWrite("b", 6, 6)])
    assert writer.flush() is False
    clock[0] += 1
    assert writer.flush() is True
    assert set(store.rows) == {("features", "b")}
