"""OffsetOrder: an agent never processes a record past a hole that faust left in a partition."""

from __future__ import annotations

from services.ground_truth_collector.pacing import OffsetOrder

TP = ("labels", 0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed(order: OffsetOrder, offsets: list[int], baseline: int | None = 0) -> list[str]:
    verdicts = []
    for offset in offsets:
        verdict = order.check(TP, offset, baseline)
        if verdict == OffsetOrder.PROCESS:
            order.processed(TP, offset)
        verdicts.append(verdict)
    return verdicts


def test_in_order_records_are_processed_from_the_baseline():
    order = OffsetOrder()
    assert feed(order, [5, 6, 7], baseline=5) == ["process"] * 3
    assert order.expected(TP, 5) == 8


def test_without_a_baseline_the_first_record_starts_the_partition():
    assert feed(OffsetOrder(), [12, 13], baseline=None) == ["process", "process"]


def test_records_delivered_again_are_skipped():
    order = OffsetOrder()
    assert feed(order, [0, 1, 2, 0, 1, 2, 3]) == ["process"] * 3 + ["skip"] * 3 + ["process"]


def test_a_hole_is_read_again_and_the_buffered_records_behind_it_are_not_processed():
    order = OffsetOrder(clock=FakeClock())
    # 0 and 1 processed, then faust drops 2..4: 5, 6, 7 were already buffered when the agent seeks back.
    verdicts = feed(order, [0, 1, 5, 6, 7, 2, 3, 4, 5, 6, 7, 8])
    assert verdicts == ["process", "process", "reseek", "skip", "skip",
                        "process", "process", "process", "process", "process", "process", "process"]
    assert order.holes_accepted == 0


def test_the_seek_is_repeated_when_the_re_read_was_dropped_as_well():
    clock = FakeClock()
    order = OffsetOrder(retry_after_s=2.0, clock=clock)
    assert feed(order, [0, 5]) == ["process", "reseek"]
    clock.now = 1.0
    assert feed(order, [6]) == ["skip"]
    clock.now = 3.5
    assert feed(order, [7]) == ["reseek"]
    assert feed(order, [1, 2]) == ["process", "process"]


def test_a_hole_that_survives_every_seek_is_real_and_accepted():
    clock = FakeClock()
    order = OffsetOrder(retry_after_s=1.0, max_seeks=3, accept_after_s=4.0, clock=clock)
    verdicts = [feed(order, [0])[0]]
    for _ in range(5):
        verdicts += feed(order, [10])
        clock.now += 1.5
    # Seeks at 0, 1.5 and 3 s; at 4.5 s three seeks and 4 s are enough: the hole is real. 10 again: a replay.
    assert verdicts == ["process", "reseek", "reseek", "reseek", "process", "skip"]
    assert order.holes_accepted == 1
    assert feed(order, [11]) == ["process"]


def test_many_quick_seeks_do_not_make_a_hole_real_before_accept_after():
    clock = FakeClock()
    order = OffsetOrder(retry_after_s=0.5, max_seeks=3, accept_after_s=10.0, clock=clock)
    feed(order, [0])
    verdicts = []
    for _ in range(8):
        verdicts += feed(order, [10])
        clock.now += 1.0
    assert "process" not in verdicts and order.holes_accepted == 0


def test_forget_drops_a_revoked_partition():
    order = OffsetOrder()
    feed(order, [0, 1])
    order.forget([TP])
    assert order.expected(TP, 7) == 7
