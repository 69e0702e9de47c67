"""Properties of the join over random arrival orders: every label decided exactly once, counts add up."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from services.ground_truth_collector.entries import Joined, Kind, SourceRef, Unmatched
from services.ground_truth_collector.join import JoinPartition
from services.ground_truth_collector.join_interface import JoinConfig, JoinCounters
from services.ground_truth_collector.state import DictStore
from tests.unit.ground_truth_collector.factory import PIPELINE, Inputs, clock_mover

H = 10_000
T0 = 1_700_000_000_000

# One event: has it features, how many models scored it, and the delays of its labels (0-30 s).
event_plans = st.tuples(st.booleans(), st.integers(0, 2), st.lists(st.integers(0, 30_000), max_size=3))


def build_stream(plans, inputs: Inputs):
    """The records of every event, each event at its own time; the caller shuffles them."""
    records = []
    for i, (has_features, models, delays) in enumerate(plans):
        event_id, event_time = f"e{i}", T0 + 1_000 * i
        if has_features:
            records.append(inputs.features(event_id, event_time))
        for m in range(models):
            records.append(inputs.prediction(event_id, event_time, version=f"v{m}",
                                             role="CHAMPION" if m == 0 else "SHADOW"))
        for j, delay in enumerate(delays):
            records.append(inputs.label(event_id, event_time + delay, label=j % 2 == 0))
    return records


def arrive(records, order):
    """The records in arrival order. One source partition is one ordered log: whatever the order
    across sources, a source's own records keep their offset order, so offsets are given on arrival."""
    offsets: Counter = Counter()
    arrived = []
    for index in order:
        record = records[index]
        stream = (record.source.topic, record.source.partition)
        source = SourceRef(*stream, offsets[stream])
        offsets[stream] += 1
        arrived.append(replace(record, source=source))
    return arrived


def play(records, config: JoinConfig):
    join = JoinPartition(0, DictStore(), config, JoinCounters())
    decisions = []
    for record in records:
        decisions += join.apply(record)
    return join, decisions


def finish(join: JoinPartition, inputs: Inputs) -> list:
    """Move stream time past every deadline and every remember period."""
    far = (join.clock or T0) + 10 * (join.config.horizon_ms + join.config.grace_ms + join.config.remember_ms)
    return join.apply(clock_mover(inputs, far))


def check_every_label_decided_once(records, decisions, join: JoinPartition) -> None:
    labels = {r.source for r in records if r.kind is Kind.LABEL}
    decided = Counter(d.label_source for d in decisions if not (isinstance(d, Joined) and d.late_prediction))
    assert set(decided) == labels, "every label gets a decision"
    assert all(count == 1 for count in decided.values()), "and only one"
    c = join.counters
    assert join.pending == 0
    assert c.labels_in == len(labels) == c.joined + c.after_horizon + c.no_matching_event + c.duplicate
    by_reason = Counter(d.record["reason"] for d in decisions if isinstance(d, Unmatched))
    assert by_reason["AFTER_HORIZON"] == c.after_horizon
    assert by_reason["NO_MATCHING_EVENT"] == c.no_matching_event
    assert by_reason["DUPLICATE"] == c.duplicate
    assert sum(isinstance(d, Joined) and not d.late_prediction for d in decisions) == c.joined


@settings(max_examples=200, deadline=None)
@given(plans=st.lists(event_plans, min_size=1, max_size=12), data=st.data(),
       grace=st.sampled_from([0, 2_000, 30_000]), remember=st.sampled_from([0, H]),
       cap=st.sampled_from([4, 1_000]))
def test_any_arrival_order_decides_each_label_exactly_once(plans, data, grace, remember, cap):
    inputs = Inputs()
    records = build_stream(plans, inputs)
    records = arrive(records, data.draw(st.permutations(range(len(records)))))
    config = JoinConfig(PIPELINE, H, grace_ms=grace, remember_ms=remember, max_entries=cap, idle_after_ms=1)
    join, decisions = play(records, config)
    assert join.size <= cap, "the state never holds more than the cap"
    decisions += finish(join, inputs)
    check_every_label_decided_once(records, decisions, join)
    for decision in decisions:
        if isinstance(decision, Joined) and not decision.late_prediction:
            example = decision.example
            assert example["label_time"] - example["event_time"] <= H, "nothing is joined past the horizon"
            assert example["features_offset"] is not None and example["numeric"], "features as served"
        elif isinstance(decision, Unmatched) and decision.record["reason"] == "AFTER_HORIZON":
            event_time = T0 + 1_000 * int(decision.record["event_id"][1:])
            assert decision.record["label_time"] - event_time > H


@settings(max_examples=200, deadline=None)
@given(plans=st.lists(event_plans, min_size=1, max_size=12), data=st.data())
def test_without_expiry_during_the_run_the_outcome_of_each_label_is_determined(plans, data):
    """With a grace longer than the run, only the arrival order of an event's own labels matters."""
    inputs = Inputs()
    records = build_stream(plans, inputs)
    records = arrive(records, data.draw(st.permutations(range(len(records)))))
    config = JoinConfig(PIPELINE, H, grace_ms=10**9, remember_ms=0, idle_after_ms=1)
    join, decisions = play(records, config)
    decisions += finish(join, inputs)
    check_every_label_decided_once(records, decisions, join)

    first_label: dict[str, object] = {}
    for record in records:
        if record.kind is Kind.LABEL:
            first_label.setdefault(record.event_id, record.source)
    outcome = {d.label_source: ("JOINED" if isinstance(d, Joined) else d.record["reason"])
               for d in decisions if not (isinstance(d, Joined) and d.late_prediction)}
    models_of: dict[str, list] = defaultdict(list)
    for decision in decisions:
        if isinstance(decision, Joined):
            models_of[decision.example["event_id"]] += [p["model_version"] for p in decision.example["predictions"]]
    for i, (has_features, models, _delays) in enumerate(plans):
        event_id = f"e{i}"
        labels = [r for r in records if r.kind is Kind.LABEL and r.event_id == event_id]
        for label in labels:
            delay = label.value["label_time"] - (T0 + 1_000 * i)
            if label.source != first_label[event_id]:
                expected = "DUPLICATE"
            elif (has_features or models) and delay > H:
                expected = "AFTER_HORIZON"
            elif has_features:
                expected = "JOINED"
            else:
                expected = "NO_MATCHING_EVENT"
            assert outcome[label.source] == expected, (event_id, delay, has_features, models)
        if any(outcome[label.source] == "JOINED" for label in labels):
            assert sorted(models_of[event_id]) == [f"v{m}" for m in range(models)], \
                "every model's prediction is joined or scored late, exactly once"
