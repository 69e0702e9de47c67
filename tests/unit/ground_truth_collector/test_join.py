"""The join as pure logic: arrival orders, duplicates, missing events, the horizon, bounded state."""

from __future__ import annotations

import pytest

from services.ground_truth_collector.entries import Joined, Unmatched
from services.ground_truth_collector.join import JoinPartition
from services.ground_truth_collector.join_interface import META_PREFIX, JoinConfig, JoinCounters
from services.ground_truth_collector.state import DictStore
from tests.unit.ground_truth_collector.factory import FEATURES, PIPELINE, Inputs, clock_mover

H, G = 10_000, 2_000  # horizon and grace
T0 = 1_700_000_000_000


def partition(store: DictStore | None = None, **overrides) -> JoinPartition:
    """Records are stamped with their own time and sources go quiet after 1 ms, so the clock is
    simply the latest time seen; the watermark has tests of its own (test_clock.py)."""
    overrides = {"remember_ms": H, "idle_after_ms": 1, **overrides}
    config = JoinConfig(pipeline=PIPELINE, horizon_ms=H, grace_ms=G, **overrides)
    return JoinPartition(0, store if store is not None else DictStore(), config, JoinCounters())


def run(join: JoinPartition, *items) -> list:
    decisions = []
    for item in items:
        decisions += join.apply(item)
    return decisions


def assert_accounted(join: JoinPartition) -> None:
    c = join.counters
    assert c.labels_in == c.joined + c.after_horizon + c.no_matching_event + c.duplicate + join.pending


def test_event_first_then_label_joins_features_as_served_and_every_prediction():
    inputs, join = Inputs(), partition()
    features = inputs.features("e1", T0, amount=42.5)
    decisions = run(join, features, inputs.prediction("e1", T0, probability=0.9),
                    inputs.prediction("e1", T0, version="v2", role="SHADOW", probability=0.3),
                    inputs.label("e1", T0 + 4_000, label=True))
    assert len(decisions) == 1 and isinstance(decisions[0], Joined)
    example = decisions[0].example
    assert example["event_id"] == "e1" and example["entity_key"] == "card-e1" and example["pipeline"] == PIPELINE
    assert example["label"] is True and example["event_time"] == T0 and example["label_time"] == T0 + 4_000
    assert example["numeric"] == {"amount": 42.5} and example["categorical"] == {"country": "NL"}
    assert example["segments"] == {"country": "NL"}
    assert [(p["model_version"], p["role"]) for p in example["predictions"]] == [("v1", "CHAMPION"), ("v2", "SHADOW")]
    assert example["predictions"][0]["probabilities"] == {"true": 0.9, "false": pytest.approx(0.1)}
    assert example["features_offset"] == {"topic": FEATURES, "partition": 0, "offset": features.source.offset}
    assert decisions[0].decided_at == T0 + 4_000
    assert join.counters.joined == 1 and join.pending == 0
    assert_accounted(join)


def test_label_first_waits_for_features_and_prediction():
    inputs, join = Inputs(), partition()
    assert run(join, inputs.label("e1", T0 + 1_000)) == []
    assert join.pending == 1
    assert run(join, inputs.features("e1", T0)) == [], "still waiting for a prediction"
    decisions = run(join, inputs.prediction("e1", T0))
    assert [type(d) for d in decisions] == [Joined]
    assert decisions[0].example["predictions"][0]["model_version"] == "v1"
    assert join.pending == 0
    assert_accounted(join)


def test_a_prediction_after_the_join_is_scored_but_not_joined_again():
    inputs, join = Inputs(), partition()
    run(join, inputs.features("e1", T0), inputs.prediction("e1", T0), inputs.label("e1", T0 + 10))
    late = run(join, inputs.prediction("e1", T0, version="v9", role="SHADOW"))
    assert len(late) == 1 and isinstance(late[0], Joined) and late[0].late_prediction
    assert [p["model_version"] for p in late[0].example["predictions"]] == ["v9"]
    assert late[0].example["numeric"] == {} and late[0].example["features_offset"] is None
    assert run(join, inputs.prediction("e1", T0, version="v9", role="SHADOW")) == [], "a duplicate prediction"
    assert join.counters.late_predictions == 1 and join.counters.duplicate_predictions == 1


@pytest.mark.parametrize("same", [True, False])
def test_a_second_label_is_a_duplicate_and_the_first_one_wins(same):
    inputs, join = Inputs(), partition()
    run(join, inputs.features("e1", T0), inputs.prediction("e1", T0))
    first = run(join, inputs.label("e1", T0 + 100, label=True))
    second = run(join, inputs.label("e1", T0 + 200, label=same))
    assert isinstance(first[0], Joined)
    assert len(second) == 1 and isinstance(second[0], Unmatched)
    assert second[0].record["reason"] == "DUPLICATE"
    assert ("agrees" if same else "disagrees") in second[0].record["detail"]
    assert join.counters.duplicate == 1
    assert_accounted(join)


def test_a_duplicate_of_a_waiting_label_is_reported_at_once():
    inputs, join = Inputs(), partition()
    run(join, inputs.label("e1", T0))
    decisions = run(join, inputs.label("e1", T0 + 5))
    assert [d.record["reason"] for d in decisions] == ["DUPLICATE"]
    assert join.pending == 1
    assert_accounted(join)


def test_a_label_without_event_is_unmatched_once_stream_time_passes_its_deadline():
    inputs, join = Inputs(), partition()
    label = inputs.label("lost", T0)
    run(join, label)
    assert run(join, clock_mover(inputs, T0 + H + G)) == [], "the deadline itself is not passed yet"
    decisions = run(join, clock_mover(inputs, T0 + H + G + 1))
    assert len(decisions) == 1 and isinstance(decisions[0], Unmatched)
    record = decisions[0].record
    assert record["reason"] == "NO_MATCHING_EVENT" and record["event_id"] == "lost"
    assert "horizon" in record["detail"] and record["decided_at"] == T0 + H + G + 1
    assert decisions[0].label_source == label.source
    assert join.counters.no_matching_event == 1
    assert_accounted(join)


def test_a_label_answered_no_matching_event_is_remembered_and_a_label_sent_again_is_a_duplicate():
    """The first label wins: its event arriving late must not join a second, disagreeing label."""
    inputs, join = Inputs(), partition()
    run(join, inputs.label("x", T0, label=True))
    decided = run(join, clock_mover(inputs, T0 + H + G + 1))
    assert [d.record["reason"] for d in decided] == ["NO_MATCHING_EVENT"]
    assert run(join, inputs.features("x", T0 + H + G + 2), inputs.prediction("x", T0 + H + G + 2)) == []
    again = run(join, inputs.label("x", T0 + H + G + 3, label=False))
    assert not [d for d in again if isinstance(d, Joined)], "no labeled example carries the second label"
    assert [d.record["reason"] for d in again] == ["DUPLICATE"] and "disagrees" in again[0].record["detail"]
    assert join.counters.no_matching_event == 1 and join.counters.ignored_after_decision == 2
    assert_accounted(join)


def test_predictions_without_features_are_no_match_with_their_own_detail():
    inputs, join = Inputs(), partition()
    run(join, inputs.prediction("e1", T0), inputs.label("e1", T0 + 1))
    decisions = run(join, clock_mover(inputs, T0 + 1 + H + G + 1))
    assert decisions[0].record["reason"] == "NO_MATCHING_EVENT"
    assert "feature vector did not" in decisions[0].record["detail"]


def test_a_label_past_the_horizon_is_unmatched_after_horizon():
    inputs, join = Inputs(), partition()
    run(join, inputs.features("e1", T0), inputs.prediction("e1", T0))
    decisions = run(join, inputs.label("e1", T0 + H + 1))
    assert [d.record["reason"] for d in decisions] == ["AFTER_HORIZON"]
    assert str(H + 1) in decisions[0].record["detail"]
    exactly = run(join, inputs.features("e2", T0), inputs.prediction("e2", T0), inputs.label("e2", T0 + H))
    assert [type(d) for d in exactly] == [Joined], "a delay equal to the horizon is still inside it"
    assert_accounted(join)


def test_a_label_first_whose_event_turns_out_older_than_the_horizon():
    inputs, join = Inputs(), partition()
    run(join, inputs.label("e1", T0 + H + 500))
    decisions = run(join, inputs.features("e1", T0))
    assert [d.record["reason"] for d in decisions] == ["AFTER_HORIZON"]
    assert run(join, inputs.prediction("e1", T0)) == []
    assert join.counters.ignored_after_decision == 1
    assert_accounted(join)


def test_an_expired_event_is_remembered_so_a_late_label_is_still_classified():
    inputs, join = Inputs(), partition()
    run(join, inputs.features("e1", T0), inputs.prediction("e1", T0))
    run(join, inputs.features("e2", T0), inputs.prediction("e2", T0))
    run(join, clock_mover(inputs, T0 + H + G + 10))  # both events expire, unlabeled
    assert join.counters.expired_events == 2
    entry = join.store.get("e1")
    assert entry is not None and entry["remembered"] and entry["features"], "kept with its features"
    decisions = run(join, inputs.label("e1", T0 + H + G + 20))
    assert [d.record["reason"] for d in decisions] == ["AFTER_HORIZON"]
    assert [d.record["reason"] for d in run(join, inputs.label("e1", T0 + H + G + 30))] == ["DUPLICATE"]
    late = run(join, inputs.label("e2", T0 + H - 1))  # inside the horizon, only late to arrive
    assert [type(d) for d in late] == [Joined] and late[0].example["predictions"]
    run(join, clock_mover(inputs, T0 + 3 * H + 3 * G))
    assert join.store.get("e1") is None and join.store.get("e2") is None, "forgotten after the remember period"
    assert_accounted(join)


def test_features_without_prediction_are_joined_with_no_prediction_at_the_deadline():
    inputs, join = Inputs(), partition()
    run(join, inputs.features("e1", T0), inputs.label("e1", T0 + 100))
    decisions = run(join, clock_mover(inputs, T0 + 100 + H + G + 1))
    assert len(decisions) == 1 and isinstance(decisions[0], Joined)
    assert decisions[0].example["predictions"] == []
    assert join.counters.joined_without_prediction == 1


def test_a_deadline_moved_later_by_the_label_is_not_cut_short_by_the_first_one():
    """The heap keeps the entry's first deadline too; popped, it is stale (the stored one is later) and passed over."""
    inputs, join = Inputs(), partition()
    # Features at T0: deadline T0 + H + G. The label at T0 + 8 s moves it to T0 + 8 s + H + G.
    assert run(join, inputs.features("e1", T0), inputs.label("e1", T0 + 8_000)) == []
    assert join.store.get("e1")["deadline"] == T0 + 8_000 + H + G
    # Stream time passes the first deadline, not the second: still waiting for a prediction.
    assert run(join, inputs.features("other", T0 + H + G + 1_000)) == []
    assert join.pending == 1
    decisions = run(join, inputs.prediction("e1", T0 + H + G + 2_000))
    assert [type(d) for d in decisions] == [Joined]
    assert [p["model_version"] for p in decisions[0].example["predictions"]] == ["v1"]
    assert join.counters.joined_without_prediction == 0
    assert_accounted(join)


def test_state_is_bounded_by_the_cap_and_evicts_the_entry_nearest_its_deadline():
    inputs, join = Inputs(), partition(max_entries=3)
    run(join, inputs.label("first", T0))  # nearest deadline: it waits for an event
    decisions = run(join, *(inputs.features(f"e{i}", T0 + 10 * i) for i in range(1, 6)))
    assert join.size == 3
    assert [(d.record["event_id"], d.record["reason"]) for d in decisions] == [("first", "NO_MATCHING_EVENT")]
    assert "full" in decisions[0].record["detail"]
    assert join.counters.evicted == 3
    assert_accounted(join)


def test_a_label_with_an_implausible_time_is_decided_like_any_other_and_leaves_the_state():
    """A label_time in microseconds set a deadline no clock reaches: the label never decided, its
    entry (and its event's, stamped alike) kept until the cap evicted legitimate entries instead."""
    inputs, join = Inputs(), partition(max_entries=3, future_tolerance_ms=3_600_000)
    day = 86_400_000

    def at(record, timestamp_ms: int):
        return type(record)(record.kind, record.event_id, record.value, record.source, timestamp_ms)

    assert run(join, at(inputs.label("micro-label", T0 * 1_000), T0)) == []
    assert run(join, at(inputs.features("micro-event", T0 * 1_000), T0)) == []
    assert join.counters.implausible_times == 2 and join.size == 2
    decisions = []
    for days in range(1, 4):
        ts = T0 + days * day
        decisions += run(join, at(inputs.features(f"ok{days}", ts), ts))
        decisions += join.tick(ts + 10_000)
    assert [(d.record["event_id"], d.record["reason"]) for d in decisions] == [("micro-label", "NO_MATCHING_EVENT")]
    assert decisions[0].record["label_time"] == T0 * 1_000, "the label as it was sent"
    assert join.pending == 0 and join.counters.evicted == 0
    assert sorted(k for k, _ in join.store.entries(0) if not k.startswith(META_PREFIX)) == ["ok3"]
    assert join.size == 1
    assert_accounted(join)


def test_a_time_within_the_future_tolerance_keeps_its_deadline():
    """A label source ahead of the others by less than the tolerance is plausible: its label waits as long as ever."""
    inputs, join = Inputs(), partition(future_tolerance_ms=60_000)
    ahead = inputs.label("e1", T0 + 50_000)
    run(join, type(ahead)(ahead.kind, ahead.event_id, ahead.value, ahead.source, T0))
    assert join.store.get("e1")["deadline"] == T0 + 50_000 + H + G


def test_state_empties_once_stream_time_has_passed_every_deadline():
    inputs, join = Inputs(), partition()
    for i in range(20):
        run(join, inputs.features(f"e{i}", T0 + i), inputs.prediction(f"e{i}", T0 + i))
        if i % 2:
            run(join, inputs.label(f"e{i}", T0 + i + 50))
    run(join, clock_mover(inputs, T0 + 10 * (H + G)))
    run(join, clock_mover(inputs, T0 + 20 * (H + G)))
    keys = [k for k in join.store.data if not k.startswith(META_PREFIX)]
    assert keys == [f"clock-{T0 + 20 * (H + G)}"], "only the last clock mover is left"


def test_a_replayed_record_changes_nothing_and_emits_nothing():
    inputs, store = Inputs(), DictStore()
    join = partition(store)
    records = [inputs.features("e1", T0), inputs.label("e1", T0 + 5), inputs.prediction("e1", T0)]
    assert len(run(join, *records)) == 1
    before = dict(store.data)
    assert run(join, *records) == []
    assert store.data == before and join.counters.replayed == 3


def test_records_delivered_again_out_of_order_are_recognised_by_their_entry():
    """After a restart faust may deliver a gap later than what follows it; nothing is lost or doubled."""
    inputs, join = Inputs(), partition()
    features, prediction = inputs.features("e1", T0), inputs.prediction("e1", T0)
    label, duplicate = inputs.label("e1", T0 + 5), inputs.label("e1", T0 + 6)
    first = run(join, prediction, label, features, duplicate)
    assert [type(d).__name__ for d in first] == ["Joined", "Unmatched"]
    assert run(join, features, label, prediction) == [], "replays in another order change nothing"
    assert join.counters.replayed == 3 and join.counters.labels_in == 2
    assert_accounted(join)


def test_a_replayed_duplicate_label_is_answered_once():
    """A batch replayed after a failed commit (ILLEGAL_GENERATION) delivers a duplicate label again:
    its DUPLICATE was already emitted, so the replay emits nothing, also after a restart."""
    inputs, store = Inputs(), DictStore()
    join = partition(store)
    duplicate = inputs.label("e1", T0 + 6)
    run(join, inputs.features("e1", T0), inputs.prediction("e1", T0), inputs.label("e1", T0 + 5))
    assert [d.record["reason"] for d in run(join, duplicate)] == ["DUPLICATE"]
    assert run(join, duplicate) == []
    assert run(partition(store), duplicate) == [], "the answered duplicate is in the stored entry"
    assert join.counters.duplicate == 1 and join.counters.labels_in == 2 and join.counters.replayed == 1
    assert_accounted(join)


def test_a_restarted_partition_continues_from_the_stored_state():
    inputs, store = Inputs(), DictStore()
    first = partition(store)
    run(first, inputs.features("e1", T0), inputs.label("e1", T0 + 5), inputs.label("e2", T0 + 6))
    again = partition(store)  # a new process: everything comes from the store
    assert again.clock == T0 + 6 and again.pending == 2 and again.size == 2
    decisions = run(again, inputs.prediction("e1", T0))
    assert [type(d) for d in decisions] == [Joined]
    decisions = run(again, clock_mover(inputs, T0 + 6 + H + G + 1))
    assert [d.record["event_id"] for d in decisions] == ["e2"], "deadlines survive the restart"


def test_idle_ticks_let_the_clock_run_at_wall_speed():
    inputs = Inputs()
    join = JoinPartition(0, DictStore(), JoinConfig(PIPELINE, H, grace_ms=G, idle_after_ms=5_000))
    run(join, inputs.label("lost", T0))  # timestamp T0, clock T0
    assert join.tick(T0 + 4_999) == [] and join.clock == T0
    assert join.tick(T0 + 5_000) == [] and join.clock == T0 + 5_000
    decisions = join.tick(T0 + H + G + 1)
    assert [d.record["reason"] for d in decisions] == ["NO_MATCHING_EVENT"]


def test_a_time_far_beyond_its_kafka_timestamp_does_not_move_the_clock():
    inputs, join = Inputs(), partition(future_tolerance_ms=60_000)
    run(join, inputs.features("e1", T0), inputs.label("e2", T0 + 1))
    bogus = inputs.label("e3", T0 + 10 * 365 * 86_400_000)
    object.__setattr__(bogus, "timestamp_ms", T0 + 2)
    assert run(join, bogus) == []
    assert join.clock == T0 + 1 and join.pending == 2, "nothing expired because of one bogus label"
