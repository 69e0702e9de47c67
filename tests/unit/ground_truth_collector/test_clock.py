"""The keyed partition's clock: a watermark over its source partitions, from the log alone."""

from __future__ import annotations

import pytest

from services.ground_truth_collector.clock import StreamClock
from services.ground_truth_collector.entries import SourceRef, Unmatched
from services.ground_truth_collector.join import JoinPartition
from services.ground_truth_collector.join_interface import JoinConfig
from services.ground_truth_collector.state import DictStore
from tests.unit.ground_truth_collector.factory import PIPELINE, Inputs

T0 = 1_700_000_000_000
WALL = 1_800_000_000_000  # the re-keying producer's clock: Kafka timestamps of the keyed records


def source(topic: str, offset: int, partition: int = 0) -> SourceRef:
    return SourceRef(topic, partition, offset)


def test_a_source_that_is_behind_holds_the_clock_back():
    clock = StreamClock(idle_after_ms=5_000, future_tolerance_ms=10**12)
    clock.observe(source("features", 0), T0, WALL)
    for i in range(5):  # the labels partition was fetched first and runs a minute ahead
        clock.observe(source("labels", i), T0 + 60_000 + i, WALL + 10 * i)
    assert clock.clock == T0, "the features source is active and has only reached T0"
    assert clock.high == T0 + 60_004
    clock.observe(source("features", 1), T0 + 30_000, WALL + 100)
    assert clock.clock == T0 + 30_000


def test_a_quiet_source_stops_holding_the_clock_back():
    clock = StreamClock(idle_after_ms=5_000, future_tolerance_ms=10**12)
    clock.observe(source("shadow", 0), T0, WALL)
    clock.observe(source("labels", 0), T0 + 20_000, WALL + 4_999)
    assert clock.clock == T0
    clock.observe(source("labels", 1), T0 + 21_000, WALL + 5_000)
    assert clock.clock == T0 + 21_000


def test_an_expected_source_is_waited_for_at_the_start():
    expected = ("features:0", "labels:0")
    clock = StreamClock(idle_after_ms=5_000, future_tolerance_ms=10**12, sources=expected)
    clock.observe(source("labels", 0), T0 + 60_000, WALL)
    assert clock.clock is None, "features:0 has not delivered yet"
    clock.observe(source("features", 0), T0, WALL + 100)
    assert clock.clock == T0
    lone = StreamClock(idle_after_ms=5_000, future_tolerance_ms=10**12, sources=expected)
    lone.observe(source("labels", 0), T0, WALL)
    lone.observe(source("labels", 1), T0 + 1, WALL + 5_000)
    assert lone.clock == T0 + 1, "but not for longer than idle_after"


def test_when_every_source_is_quiet_ticks_move_the_clock_at_wall_speed():
    clock = StreamClock(idle_after_ms=5_000, future_tolerance_ms=10**12)
    clock.observe(source("labels", 0), T0, WALL)
    assert not clock.tick(WALL + 4_999)
    assert clock.tick(WALL + 8_000) and clock.clock == T0 + 8_000


def test_the_state_round_trips():
    clock = StreamClock(idle_after_ms=5_000, future_tolerance_ms=10**12)
    clock.observe(source("labels", 7), T0, WALL)
    clock.observe(source("features", 2), T0 - 5, WALL + 1)
    again = StreamClock(5_000, 10**12, state=clock.to_state())
    assert (again.clock, again.high) == (clock.clock, clock.high) == (T0, T0)
    again.observe(source("features", 2), T0 + 10, WALL + 2)
    again.observe(source("labels", 8), T0 + 20, WALL + 3)
    assert again.clock == T0 + 10, "the clock goes on from the restored state"


def test_after_a_resume_every_known_source_must_deliver_again_before_the_clock_moves():
    clock = StreamClock(idle_after_ms=5_000, future_tolerance_ms=10**12)
    clock.observe(source("features", 0), T0, WALL)
    clock.observe(source("labels", 0), T0 + 1_000, WALL)
    assert clock.clock == T0
    restart = WALL + 60_000
    clock.resume(restart)
    clock.observe(source("labels", 1), T0 + 50_000, restart + 10)  # the labels backlog comes first
    assert clock.clock == T0, "features:0 has not delivered since the restart"
    clock.observe(source("features", 1), T0 + 20_000, restart + 20)
    assert clock.clock == T0 + 20_000
    quiet = StreamClock(idle_after_ms=5_000, future_tolerance_ms=10**12)
    quiet.observe(source("features", 0), T0, WALL)
    quiet.resume(restart)
    quiet.observe(source("labels", 0), T0 + 9_000, restart + 5_000)
    assert quiet.clock == T0 + 9_000, "a source silent for idle_after after the restart is quiet"


def test_when_nothing_ever_moved_the_clock_quiet_ticks_still_start_it():
    clock = StreamClock(idle_after_ms=5_000, future_tolerance_ms=10**12, sources=("features:0",))
    clock.observe(source("labels", 0), T0, WALL)
    assert clock.clock is None
    assert clock.tick(WALL + 6_000) and clock.clock == T0 + 6_000


def test_a_source_whose_times_are_all_implausible_does_not_hold_the_clock():
    """Shadow predictions stamped in microseconds: active, with no plausible time, they froze every deadline."""
    clock = StreamClock(idle_after_ms=5_000, future_tolerance_ms=60_000)
    clock.observe(source("features", 0), T0, T0)
    assert not clock.observe(source("shadow", 0), T0 * 1_000, T0 + 1)
    assert clock.observe(source("features", 1), T0 + 10_000, T0 + 2)
    assert clock.clock == T0 + 10_000


def test_a_source_whose_times_turn_implausible_stops_holding_the_clock_once_idle():
    """A producer host whose clock jumped hours ahead: its last plausible time must not hold the clock for ever."""
    clock = StreamClock(idle_after_ms=5_000, future_tolerance_ms=60_000)
    clock.observe(source("labels", 0), T0, T0)
    clock.observe(source("features", 0), T0 + 1_000, T0)
    for i in range(1, 10):  # labels keep coming, two hours ahead of their Kafka timestamps
        clock.observe(source("labels", i), T0 + 7_200_000 + 1_000 * i, T0 + 1_000 * i)
        clock.observe(source("features", i), T0 + 1_000 * (i + 1), T0 + 1_000 * i)
    assert clock.clock == T0 + 10_000 and clock.high == T0 + 10_000


def test_idle_after_must_be_positive():
    with pytest.raises(ValueError):
        StreamClock(0, 0)


def test_implausible_times_are_counted_and_do_not_freeze_the_deadlines():
    inputs = Inputs()
    join = JoinPartition(0, DictStore(), JoinConfig(PIPELINE, horizon_ms=10_000, grace_ms=1_000,
                                                    idle_after_ms=5_000, future_tolerance_ms=60_000))
    records = [inputs.label("lost", T0)]
    for i in range(1, 13):  # a shadow model's predictions, stamped in microseconds, keep coming
        records += [inputs.features(f"e{i}", T0 + 1_000 * i), inputs.prediction(f"e{i}", T0 * 1_000, role="SHADOW")]
    stamped = [type(r)(r.kind, r.event_id, r.value, r.source, T0 + 500 * i) for i, r in enumerate(records)]
    decisions = [d for record in stamped for d in join.apply(record) if isinstance(d, Unmatched)]
    assert [(d.record["event_id"], d.record["reason"]) for d in decisions] == [("lost", "NO_MATCHING_EVENT")]
    assert join.counters.implausible_times == 12


def test_an_event_behind_a_fast_label_source_is_not_expired_by_it():
    """The failure this clock prevents: labels read a whole fetch ahead of their features."""
    inputs = Inputs()
    config = JoinConfig(PIPELINE, horizon_ms=10_000, grace_ms=1_000, idle_after_ms=5_000)
    join = JoinPartition(0, DictStore(), config)
    stamped = []
    for record in [inputs.features("e1", T0), *(inputs.label(f"x{i}", T0 + 5_000 * i) for i in range(1, 8)),
                   inputs.prediction("e1", T0), inputs.label("e1", T0 + 3_000)]:
        stamped.append(type(record)(record.kind, record.event_id, record.value, record.source, WALL))
    decisions = [d for record in stamped for d in join.apply(record)]
    assert [d.example["event_id"] for d in decisions if hasattr(d, "example")] == ["e1"]
    assert join.pending == 7, "the labels without events still wait: the features source holds the clock"
