"""DeliveredEventIds: what a stage remembers so that a replayed record is not processed twice."""

from __future__ import annotations

from streamloop.kafka.dedupe import DeliveredEventIds

P0, P1 = ("t", 0), ("t", 1)


def test_only_delivered_ids_are_remembered() -> None:
    ids = DeliveredEventIds(capacity=10)
    ids.begin_batch()
    assert ids.fresh(P0, "a")
    ids.begin_batch()  # the batch holding "a" was never confirmed delivered
    assert ids.fresh(P0, "a")
    ids.delivered()
    ids.begin_batch()
    assert not ids.fresh(P0, "a")
    assert ids.skipped == 1


def test_the_oldest_ids_are_forgotten_beyond_the_capacity() -> None:
    ids = DeliveredEventIds(capacity=3)
    for event_id in "abcde":
        ids.begin_batch()
        assert ids.fresh(P0, event_id)
        ids.delivered()
    ids.begin_batch()
    assert [ids.fresh(P0, e) for e in "abcde"] == [True, True, False, False, False]


def test_ids_are_per_partition_and_a_forgotten_partition_starts_afresh() -> None:
    ids = DeliveredEventIds(capacity=10)
    ids.begin_batch()
    ids.fresh(P0, "a")
    ids.fresh(P1, "b")
    ids.delivered()
    ids.forget([P0])
    ids.begin_batch()
    assert ids.fresh(P0, "a") and not ids.fresh(P1, "b")


def test_capacity_zero_remembers_nothing() -> None:
    ids = DeliveredEventIds(capacity=0)
    ids.begin_batch()
    assert ids.fresh(P0, "a") and ids.fresh(P0, "a")
    ids.delivered()
    assert ids.fresh(P0, "a")
