"""The processor: point-in-time correct windows, lateness, replays, restores, the store, metrics."""

from __future__ import annotations

import random
import threading
import time

import pytest

from services.featurizer.exceptions import LateEventError
from services.featurizer.windows import OFFSET_MASK
from streamloop.kafka import OutgoingRecord, Rejection
from streamloop.kafka.records import ConsumedRecord, TopicPartitionRef
from tests.unit.featurizer.support import (
    TOPIC,
    ListHistory,
    MemoryStore,
    RecordingMetrics,
    all_aggregations_spec,
    assert_close,
    event,
    make_spec,
    processor,
    records,
    reference_run,
    run_batches,
    vectors,
)

SPEC = all_aggregations_spec()
COUNT_1M = {"aggregations": [{"name": "count", "field": "x", "agg": "count",
                              "window": {"kind": "sliding", "size": 60_000}}], "allowed_lateness": "10s"}


def stream(seed: int, count: int = 400, entities: int = 4, jitter_ms: int = 25_000) -> list[dict]:
    """Events a few seconds apart, some arriving up to ``jitter_ms`` out of order, some nulls and repeats."""
    rng = random.Random(seed)
    clock = 1_700_000_000_000
    events = []
    for i in range(count):
        clock += rng.choice([0, 500, 1_000, 3_000, 7_000, 20_000])
        late_by = rng.randint(0, jitter_ms) if rng.random() < 0.2 else 0
        events.append(event(i, f"k{rng.randrange(entities)}", clock - late_by,
                            x=None if rng.random() < 0.1 else float(rng.randint(-5, 50)), cat=rng.choice("abc")))
    return events


@pytest.mark.parametrize("seed", range(5))
def test_every_aggregation_and_window_matches_brute_force(seed: int) -> None:
    proc = processor(SPEC)
    recs = records(stream(seed))
    got = vectors(run_batches(proc, recs, sizes=[7, 50, 1, 200]))
    for event_id, (late, expected) in reference_run(SPEC, recs, proc.horizon).items():
        assert got[event_id]["late"] == late
        if not late:
            assert_close(got[event_id]["numeric"], expected, event_id)


def test_an_out_of_order_event_sees_only_events_up_to_its_own_time() -> None:
    proc = processor(make_spec(COUNT_1M))
    got = vectors(proc.process(records([event(0, "a", 10_000), event(1, "a", 30_000), event(2, "a", 20_000),
                                        event(3, "a", 40_000)])))
    assert [got[f"e{i}"]["numeric"]["count"] for i in range(4)] == [1.0, 2.0, 2.0, 4.0]
    assert [got[f"e{i}"]["late"] for i in range(4)] == [False] * 4


@pytest.mark.parametrize("policy", ["emit_unwindowed", "dead_letter"])
def test_late_events_follow_the_policy_and_are_counted(policy: str) -> None:
    metrics = RecordingMetrics()
    proc = processor(make_spec(COUNT_1M | {"late_events": policy}), metrics=metrics)
    # 100 s is the newest; 90 s is exactly at the lateness boundary (on time); 89.999 s is late.
    result = proc.process(records([event(0, "a", 50_000), event(1, "a", 100_000), event(2, "a", 90_000),
                                   event(3, "a", 89_999), event(4, "a", 101_000)]))
    got = vectors(result)
    assert got["e2"]["late"] is False and got["e2"]["numeric"]["count"] == 2.0
    assert metrics.count("streamloop_late_events", policy=policy) == 1
    if policy == "dead_letter":
        (rejection,) = result.rejections
        assert isinstance(rejection.error, LateEventError) and rejection.stage == "VALIDATION"
        assert rejection.error.rule == "ts.allowed_lateness" and rejection.record.offset == 3
        assert "e3" not in got and got["e4"]["numeric"]["count"] == 4.0
    else:
        assert not result.rejections
        # Scored with what is buffered up to its own time (50 s, itself), marked late; later events include it.
        assert got["e3"]["late"] is True and got["e3"]["numeric"]["count"] == 2.0
        assert got["e4"]["numeric"]["count"] == 5.0


def test_a_replayed_batch_re_emits_identical_vectors_and_leaves_state_alone() -> None:
    store = MemoryStore()
    proc = processor(SPEC, store=store)
    recs = records(stream(1, count=120))
    first = proc.process(recs)
    state = _snapshot(proc)
    writes = list(store.calls)
    again = proc.process(recs)
    assert again.outputs == first.outputs and again.rejections == first.rejections
    # The runner's fallback: the same batch record by record.
    one_by_one = [out for r in recs for out in proc.process([r]).outputs]
    assert one_by_one == first.outputs
    assert _snapshot(proc) == state and store.calls == writes, "a replay must not touch state or the store"


def test_replays_older_than_the_last_batch_are_recomputed_as_they_were() -> None:
    # All within one horizon, so nothing a replayed event needs has been evicted (docs/featurizer.md).
    rng = random.Random(2)
    recs = records([event(i, f"k{rng.randrange(3)}", 1_700_000_000_000 + rng.randrange(25_000),
                          x=float(rng.randint(0, 9)), cat=rng.choice("ab")) for i in range(150)])
    proc = processor(SPEC)
    first = vectors(proc.process(recs[:100]))
    proc.process(recs[100:])
    state = _snapshot(proc)
    assert vectors(proc.process(recs[:100])) == first
    assert _snapshot(proc) == state


SUM_1M = {**COUNT_1M, "aggregations": COUNT_1M["aggregations"] + [
    {"name": "sum", "field": "x", "agg": "sum", "window": {"kind": "sliding", "size": 60_000}}]}


@pytest.mark.parametrize("batches", [[1, 2], [3], [1, 1, 1]], ids=["later-batch", "same-batch", "one-by-one"])
def test_an_event_sent_again_is_counted_once_and_its_copy_re_emits_the_original_vector(batches) -> None:
    """An at-least-once producer's re-send (same event id, a new offset): not a second event."""
    store = MemoryStore()
    metrics = RecordingMetrics()
    proc = processor(make_spec(SUM_1M), store=store, metrics=metrics)
    e1 = event(1, "card", 100_000, x=10.0)
    recs = records([e1, dict(e1), event(2, "card", 110_000, x=1.0)])
    result = run_batches(proc, recs, sizes=batches)
    got = [{k: v for k, v in out.value.items() if k != "computed_at"} for out in result.outputs]
    assert [v["event_id"] for v in got] == ["e1", "e1", "e2"] and not result.rejections
    assert got[1] == got[0], "downstream sees one vector per event id"
    assert got[2]["numeric"] | {"time_since_previous_s": 0} == {"count": 2.0, "sum": 11.0, "time_since_previous_s": 0}
    assert store.rows[("features", "card")].numeric == got[2]["numeric"]
    assert metrics.count("streamloop_featurizer_duplicate_events") == 1
    assert [k & OFFSET_MASK for k in proc._partitions[("events", 0)].entities["card"].keys] == [0, 2]

    live = _snapshot(proc)
    rebuilt = processor(make_spec(SUM_1M), store=MemoryStore(), history=ListHistory({0: recs}, committed={0: 3}))
    rebuilt.on_assigned([TopicPartitionRef("events", 0)])
    assert _snapshot(rebuilt) == live, "a restore skips the copy as live processing did"
    assert rebuilt.writer.store.rows == store.rows
    # A replay of the copy's offset, from an older batch than the latest, re-emits the original's vector too.
    proc.process(records([event(3, "card", 111_000)], first_offset=3))
    assert vectors(proc.process(recs[1:2]))["e1"] == got[0]
    assert metrics.count("streamloop_featurizer_duplicate_events") == 1, "a replay is no new copy"


@pytest.mark.parametrize("policy", ["emit_unwindowed", "dead_letter"])
def test_a_copy_arriving_after_its_original_left_the_buffer_is_a_late_event_and_no_window_counts_it(policy) -> None:
    """Retained: events within horizon + lateness (80 s here) of the entity's newest. Older ones
    are evicted with their ids; a copy of one is later than the lateness, so the policy applies,
    and a copy applied under emit_unwindowed is evicted at once."""
    store = MemoryStore()
    proc = processor(make_spec(SUM_1M | {"late_events": policy}), store=store)
    e1 = event(1, "card", 100_000, x=10.0)
    proc.process(records([e1, event(2, "card", 200_000, x=1.0)]))
    result = proc.process(records([dict(e1), event(3, "card", 201_000, x=2.0)], first_offset=2))
    if policy == "dead_letter":
        assert [r.record.offset for r in result.rejections] == [2]
        assert isinstance(result.rejections[0].error, LateEventError)
    else:
        copy = result.outputs[0].value
        assert copy["late"] is True and copy["numeric"]["count"] == 1.0
    assert result.outputs[-1].value["numeric"] | {"time_since_previous_s": 0} == \
        {"count": 2.0, "sum": 3.0, "time_since_previous_s": 0}
    assert [k & OFFSET_MASK for k in proc._partitions[("events", 0)].entities["card"].keys] == [1, 3]
    assert store.rows[("features", "card")].numeric["count"] == 2.0


@pytest.mark.parametrize("first_batches", [[5], [3, 1, 1]], ids=["in-the-latest-batch", "older"])
def test_new_events_at_offsets_the_broker_lost_are_applied_and_the_lost_ones_forgotten(first_batches) -> None:
    """noida-db can lose the tail of a log on restart: new events then take the lost offsets, and
    the consumer, reset to the earliest offset, reads them after the survivors it had applied."""
    store = MemoryStore()
    proc = processor(make_spec(COUNT_1M), store=store)
    run_batches(proc, records([event(i, "a", 1_000 * (i + 1)) for i in range(5)]), sizes=first_batches)
    survivors = records([event(i, "a", 1_000 * (i + 1)) for i in range(3)])
    reused = records([event(90, "b", 9_000), event(91, "b", 9_500)], first_offset=3)
    got = vectors(proc.process(survivors + reused))
    assert set(got) == {"e0", "e1", "e2", "e90", "e91"}
    assert got["e91"]["numeric"]["count"] == 2.0
    part = proc._partitions[("events", 0)]
    assert set(part.entities) == {"a", "b"}
    assert [key & OFFSET_MASK for key in part.entities["a"].keys] == [0, 1, 2], "the lost events left the window"
    assert store.rows[("features", "b")].sequence == 4
    assert ("features", "a") not in store.rows, "a's row was its lost event's"
    state = _snapshot(proc)
    assert vectors(proc.process(survivors + reused)) == got and _snapshot(proc) == state, "replayed, not rewound"
    after = vectors(proc.process(records([event(5, "a", 6_000)], first_offset=5)))
    assert after["e5"]["numeric"]["count"] == 4.0


@pytest.mark.parametrize("first_batches", [[7], [4, 3]], ids=["in-the-latest-batch", "older"])
def test_rows_of_events_the_broker_lost_leave_the_store(first_batches) -> None:
    """A lost event's row outranks the rows of the events left: it is deleted, not left to serve."""
    store = MemoryStore()
    proc = processor(make_spec(COUNT_1M), store=store)
    kept = [event(0, "a", 1_000), event(1, "b", 1_500), event(2, "d", 1_800), event(3, "a", 2_000)]
    lost = [event(4, "a", 5_000), event(5, "b", 5_500), event(6, "c", 6_000)]
    run_batches(proc, records(kept + lost), sizes=first_batches)
    assert {entity for _group, entity in store.rows} == {"a", "b", "c", "d"}
    reused = records([event(90, "a", 3_000), event(91, "e", 7_000)], first_offset=4)
    proc.process(records(kept) + reused)
    rows = {entity: (row.event_time_ms, row.sequence, row.numeric["count"])
            for (_group, entity), row in store.rows.items()}
    assert rows == {"a": (3_000, 4, 3.0), "d": (1_800, 2, 1.0), "e": (7_000, 5, 1.0)}, \
        "a: the new event's row, though older; b: its newest event lost; c: all its events lost"
    proc.process(records([event(92, "b", 3_000)], first_offset=6))
    assert (store.rows[("features", "b")].event_time_ms, store.rows[("features", "b")].sequence) == (3_000, 6)


def test_a_failure_while_featurizing_one_event_dead_letters_it_and_keeps_state(monkeypatch) -> None:
    proc = processor(make_spec(COUNT_1M))
    build = proc.builder.build

    def failing(entity, key, value):  # noqa: ANN001, ANN202
        if value["id"] == "e1":
            raise ZeroDivisionError("boom")
        return build(entity, key, value)

    monkeypatch.setattr(proc.builder, "build", failing)
    result = proc.process(records([event(0, "a", 1_000), event(1, "a", 2_000), event(2, "a", 3_000)]))
    (rejection,) = result.rejections
    assert rejection.stage == "TASK_PUT" and isinstance(rejection.error, ZeroDivisionError)
    assert vectors(result)["e2"]["numeric"]["count"] == 2.0, "the failed event never entered the window"


@pytest.mark.parametrize("cut", [1, 37, 150, 299])
def test_a_restore_from_the_input_topic_gives_the_uninterrupted_vectors(cut: int) -> None:
    parts = {p: records(stream(10 + p, count=300), partition=p) for p in (0, 1)}
    uninterrupted = processor(SPEC)
    expected = {}
    for recs in parts.values():
        expected |= vectors(run_batches(uninterrupted, recs, sizes=[64]))

    before = processor(SPEC)
    for recs in parts.values():
        run_batches(before, recs[:cut], sizes=[10])
    history = ListHistory(parts, committed={0: cut, 1: cut})  # the crash lost everything in memory
    after = processor(SPEC, history=history)
    after.on_assigned([TopicPartitionRef("events", 0), TopicPartitionRef("events", 1)])
    got = {}
    for recs in parts.values():
        got |= vectors(run_batches(after, recs[cut:], sizes=[33, 5]))
    assert got == {k: v for k, v in expected.items() if int(k[1:]) >= cut}
    assert len(history.replays) == 1


def test_a_restore_gives_the_uninterrupted_vectors_after_sums_beyond_a_double() -> None:
    spec = make_spec({"allowed_lateness": 0, "aggregations": [
        {"name": "x_sum", "field": "x", "agg": "sum", "window": {"kind": "sliding", "size": 60_000}}]})
    recs = records([event(1, "a", 1_000, x=1e308), event(2, "a", 1_001, x=1e308), event(3, "a", 1_002, x=-1e308)])
    uninterrupted = processor(spec)
    expected = vectors(uninterrupted.process(recs))
    assert "x_sum" not in expected["e2"]["numeric"], "beyond a double: undefined, and the event is kept"
    restored = processor(spec, history=ListHistory({0: recs}, committed={0: 2}))
    restored.on_assigned([TopicPartitionRef("events", 0)])
    assert vectors(restored.process(recs[2:]))["e3"] == expected["e3"]


def test_a_restore_reads_back_an_event_dated_ahead_of_its_kafka_timestamp_by_up_to_the_disorder() -> None:
    """The rebuild starts by Kafka timestamp, anchored at the last record's: it goes back the
    retention for the state, once the disorder because the anchor's event may trail its timestamp
    by that much, and once more because a needed event may be dated ahead of its own by that much."""
    spec, disorder, skew = make_spec(COUNT_1M), 1_000_000, 999_000  # skew: within the disorder
    assert processor(spec, disorder_ms=disorder).retention == 80_000
    t0 = 1_700_000_000_000
    e0, e1, e2 = event(0, "a", t0), event(1, "b", t0 + 80_000), event(2, "a", t0 + 55_000)
    # (event, Kafka timestamp): e0's producer clock runs behind (event time ahead of its timestamp),
    # e1's ahead (event time behind it); e2, needing e0 in its 60 s window, comes after the commit.
    recs = [ConsumedRecord(TOPIC, 0, offset, e["entity"], e, e["ts"] + shift)
            for offset, (e, shift) in enumerate([(e0, -skew), (e1, skew), (e2, 0)])]
    straight = vectors(processor(spec, disorder_ms=disorder).process(recs))
    assert straight["e2"]["numeric"]["count"] == 2.0
    history = ListHistory({0: recs}, committed={0: 2})
    restored = processor(spec, history=history, disorder_ms=disorder)
    restored.on_assigned([TopicPartitionRef(TOPIC, 0)])
    assert history.replays == [{TopicPartitionRef(TOPIC, 0): 2}]
    assert vectors(restored.process(recs[2:]))["e2"] == straight["e2"]


def test_revoked_partitions_given_back_at_their_committed_offset_keep_their_state() -> None:
    recs = records(stream(3, count=50))
    history = ListHistory({0: recs}, committed={0: None})
    proc = processor(SPEC, history=history)
    ref = TopicPartitionRef("events", 0)
    proc.on_assigned([ref])
    assert history.replays == [], "nothing committed: consumption starts at the beginning, nothing to rebuild"
    proc.process(recs)
    history.committed_offsets[0] = 50  # the runner committed the batch
    proc.on_revoked([ref])
    proc.on_assigned([ref])
    assert history.replays == [], "same offset: state kept, no replay"
    proc.on_revoked([ref])
    history.committed_offsets[0] = 40  # someone else's commit failed: our state is ahead of it
    proc.on_assigned([ref])
    assert history.replays == [{ref: 40}]
    assert proc._partitions[("events", 0)].applied == 39


def test_a_partition_given_back_past_undecodable_records_it_never_saw_keeps_its_state() -> None:
    recs = records(stream(3, count=50))
    history = ListHistory({0: recs}, committed={0: None})
    proc = processor(SPEC, history=history)
    ref = TopicPartitionRef("events", 0)
    proc.on_assigned([ref])
    proc.process(recs)
    # Offsets 50 and 51 did not decode: the runner dead-lettered them and commits past them.
    proc.committing({("events", 0): 52})
    history.committed_offsets[0] = 52
    proc.on_revoked([ref])
    proc.on_assigned([ref])
    assert history.replays == [], "the runner's offset: state kept, no rebuild"
    proc.on_revoked([ref])
    history.committed_offsets[0] = 51  # not where the runner committed: rebuilt
    proc.on_assigned([ref])
    assert history.replays == [{ref: 51}]


# 95 s is on time whether or not "a" (newest 100 s) is remembered; 85 s would be late (lateness 10 s) if it were.
@pytest.mark.parametrize("returns_at", [95_000, 85_000])
def test_entities_silent_longer_than_horizon_plus_disorder_are_forgotten_the_same_with_or_without_sweeps(
        returns_at: int) -> None:
    # horizon 70 s, kept 10 s more (the lateness); disorder 1 s below: forgotten when 81 s behind the partition
    spec = make_spec(COUNT_1M)
    events = [event(0, "a", 100_000), event(1, "b", 100_000), event(2, "b", 181_500), event(3, "a", returns_at)]
    swept = processor(spec, disorder_ms=1_000, sweep_interval_s=0.0)
    lazy = processor(spec, disorder_ms=1_000, sweep_interval_s=1e9)
    got = {}
    for proc in (swept, lazy):
        out = {}
        for rec in records(events):
            out |= vectors(proc.process([rec]))
            proc.tick(0)
        got[proc is swept] = out
    assert got[True] == got[False]
    # "a" was forgotten: e3 is not late against a newest event nobody remembers, and it has no previous.
    assert got[True]["e3"]["late"] is False and got[True]["e3"]["numeric"]["count"] == 1.0
    assert got[True]["e3"]["numeric"]["time_since_previous_s"] == 70.0
    assert got[False]["e3"]["late"] is False, "forgotten when e3 came, with no sweep run since"
    assert set(swept._partitions[("events", 0)].entities) == {"b"}, "e3 is itself too far behind: swept"


def test_an_event_dated_far_past_its_kafka_timestamp_is_dead_lettered_and_changes_nothing() -> None:
    """Featurized, one event years ahead became its entity's newest for years: every later event of
    the entity late, the entity never forgotten, and its stored row ahead of every later one. Nor
    may it move the partition's clock, which would make every other entity look forgotten."""
    t0, ten_years = 1_700_000_000_000, 10 * 365 * 86_400_000
    events = [event(1, "a", t0), event(2, "a", t0 + 1_000), event(3, "a", t0 + ten_years), event(4, "a", t0 + 2_000)]
    stamped = [ConsumedRecord(r.topic, r.partition, r.offset, r.key, r.value, t0 + 500 * r.offset)
               for r in records(events)]
    metrics = RecordingMetrics()
    proc = processor(SPEC, metrics=metrics, disorder_ms=3_600_000)
    result = proc.process(stamped)
    [rejected] = result.rejections
    assert rejected.record.value["id"] == "e3" and rejected.error.rule == "ts.future"
    assert "more than FEATURIZER_DISORDER_MS (3600000)" in str(rejected.error)
    after = vectors(result)["e4"]
    assert after["late"] is False, "the entity's later events are on time"
    assert (after["numeric"]["count_sliding"], after["numeric"]["time_since_previous_s"]) == (3.0, 1.0)
    assert metrics.counts[("streamloop_validation_failures", (("rule", "ts.future"),))] == 1
    assert proc._partitions[("events", 0)].watermark == t0 + 2_000
    restored = processor(SPEC, history=ListHistory({0: stamped}, committed={0: 4}), disorder_ms=3_600_000)
    restored.on_assigned([TopicPartitionRef("events", 0)])
    assert restored._partitions[("events", 0)].watermark == t0 + 2_000
    assert restored._partitions[("events", 0)].entities["a"].max_time == t0 + 2_000, "a restore skips it too"


@pytest.mark.parametrize("policy", ["emit_unwindowed", "dead_letter"])
def test_a_replay_older_than_the_latest_batch_rejects_what_the_first_pass_rejected(policy: str) -> None:
    t0, ten_years = 1_700_000_000_000, 10 * 365 * 86_400_000
    events = [event(1, "a", t0 + 20_000), event(2, "a", t0 + ten_years), event(3, "a", t0 + 5_000),
              event(4, "a", t0 + 21_000)]
    stamped = [ConsumedRecord(r.topic, r.partition, r.offset, r.key, r.value, t0 + 500 * r.offset)
               for r in records(events)]
    proc = processor(make_spec(COUNT_1M | {"late_events": policy}))
    first = proc.process(stamped[:3])
    proc.process(stamped[3:])
    again = proc.process(stamped[:3])
    assert [(r.record.offset, r.error.rule, str(r.error)) for r in again.rejections] == \
        [(r.record.offset, r.error.rule, str(r.error)) for r in first.rejections]
    assert [type(r.error) for r in again.rejections] == [type(r.error) for r in first.rejections]
    assert vectors(again) == vectors(first)
    assert [r.error.rule for r in first.rejections] == \
        ["ts.future"] + (["ts.allowed_lateness"] if policy == "dead_letter" else [])


def test_an_event_whose_kafka_key_is_not_its_entity_key_is_dead_lettered_and_changes_nothing() -> None:
    """State is per partition: an event keyed otherwise (by its id, or not at all) lands in a
    partition that may not hold its entity's other events, and its windows would be silently wrong."""
    recs = [ConsumedRecord(r.topic, r.partition, r.offset, key, r.value, 0)
            for r, key in zip(records([event(i, "a", 1_000 * i) for i in range(4)]), ["a", "e1", None, "a"],
                              strict=True)]
    metrics = RecordingMetrics()
    proc = processor(make_spec(COUNT_1M), metrics=metrics)
    result = proc.process(recs)
    assert [(r.record.offset, r.error.rule, r.stage) for r in result.rejections] == \
        [(1, "entity.kafka_key", "VALIDATION"), (2, "entity.kafka_key", "VALIDATION")]
    assert "Kafka key 'e1' is not the event's entity 'a'" in str(result.rejections[0].error)
    assert "has no Kafka key: events must be keyed by entity" in str(result.rejections[1].error)
    assert vectors(result)["e3"]["numeric"]["count"] == 2.0
    assert metrics.count("streamloop_validation_failures", rule="entity.kafka_key") == 2
    restored = processor(make_spec(COUNT_1M), history=ListHistory({0: recs}, committed={0: 3}))
    restored.on_assigned([TopicPartitionRef("events", 0)])
    assert restored._partitions[("events", 0)].entities["a"].size == 1, "a restore skips them too"


def test_buffers_hold_only_the_horizon_and_the_lateness() -> None:
    # An on-time event may be 10 s (the lateness) behind the newest and looks back 70 s (the horizon).
    proc = processor(make_spec(COUNT_1M))
    proc.process(records([event(i, "a", i * 1_000) for i in range(1_000)]))
    assert proc._partitions[("events", 0)].entities["a"].size == 80  # (999 s - 80 s, 999 s]


def test_one_store_write_per_batch_with_each_entity_latest_row() -> None:
    store = MemoryStore()
    metrics = RecordingMetrics()
    proc = processor(make_spec(COUNT_1M), store=store, metrics=metrics)
    proc.process(records([event(0, "a", 5_000), event(1, "b", 1_000), event(2, "a", 9_000), event(3, "a", 7_000)]))
    assert store.calls == [2]
    row = store.rows[("features", "a")]
    assert (row.event_time_ms, row.sequence, row.numeric["count"]) == (9_000, 3, 3.0), "7 s arrived after 9 s"
    proc.process(records([event(4, "a", 8_000)], first_offset=4))
    row = store.rows[("features", "a")]
    assert (row.event_time_ms, row.sequence, row.numeric["count"]) == (9_000, 4, 4.0)
    assert metrics.count("streamloop_feature_store_writes", result="applied") == 3


@pytest.mark.parametrize("late_events", ["emit_unwindowed", "dead_letter"])
def test_an_event_arriving_out_of_order_is_in_the_entity_row_at_once(late_events: str) -> None:
    """The row is the entity's features over every event arrived, as of its newest event; the
    revision (the greatest offset applied) lets it replace the row of the same event time."""
    store = MemoryStore()
    spec = make_spec(SUM_1M | {"late_events": late_events})
    proc = processor(spec, store=store)
    recs = records([event(1, "card", 100_000, x=10.0), event(2, "card", 90_000, x=5.0),   # 10 s behind: on time
                    event(3, "card", 85_000, x=2.0),    # 15 s behind: late
                    event(4, "card", 100_000, x=1.0)])  # the same millisecond as the newest, after it
    rows = []
    for record in recs:
        proc.process([record])
        row = store.rows[("features", "card")]
        rows.append((row.event_time_ms, row.sequence, row.numeric["count"], row.numeric["sum"],
                     row.numeric["time_since_previous_s"]))
    late_row = (100_000, 2, 3.0, 17.0, 10.0) if late_events == "emit_unwindowed" else (100_000, 1, 2.0, 15.0, 10.0)
    assert rows == [(100_000, 0, 1.0, 10.0, 70.0), (100_000, 1, 2.0, 15.0, 10.0), late_row,
                    (100_000, 3, late_row[2] + 1, late_row[3] + 1, 0.0)]
    last = proc.process(records([event(5, "card", 95_000, x=4.0)], first_offset=4)).outputs[0].value
    assert last["numeric"]["count"] == late_row[2], "its own vector: only what is at or before its time"
    assert store.rows[("features", "card")].numeric["count"] == late_row[2] + 2

    recs += records([event(5, "card", 95_000, x=4.0)], first_offset=4)
    rebuilt = processor(spec, store=MemoryStore(), history=ListHistory({0: recs}, committed={0: 5}))
    rebuilt.on_assigned([TopicPartitionRef("events", 0)])
    assert rebuilt.writer.store.rows == store.rows, "a restore writes the same row"


def test_a_row_holding_an_out_of_order_event_the_broker_lost_is_computed_again_without_it() -> None:
    store = MemoryStore()
    proc = processor(make_spec(SUM_1M), store=store)
    kept = [event(0, "a", 10_000, x=1.0), event(1, "a", 20_000, x=2.0)]
    proc.process(records(kept + [event(2, "a", 15_000, x=4.0)]))
    assert (store.rows[("features", "a")].sequence, store.rows[("features", "a")].numeric["sum"]) == (2, 7.0)
    proc.process(records(kept + [event(90, "b", 30_000)]))  # offset 2 lost; b's event took it
    assert (store.rows[("features", "a")].sequence, store.rows[("features", "a")].numeric["sum"]) == (1, 3.0)
    assert store.rows[("features", "b")].sequence == 2


def test_rows_wait_while_the_store_is_down_and_a_restore_rewrites_lost_ones() -> None:
    store = MemoryStore()
    clock = [0.0]
    proc = processor(make_spec(COUNT_1M), store=store, monotonic=lambda: clock[0])
    store.down = True
    recs = records([event(0, "a", 1_000), event(1, "b", 2_000), event(2, "a", 3_000)])
    assert len(proc.process(recs).outputs) == 3, "vectors flow while the store is down"
    assert proc.writer.pending == 2 and not store.rows
    store.down = False
    proc.tick(0)
    assert proc.writer.pending == 2, "backing off"
    clock[0] += 1
    proc.tick(0)
    assert proc.writer.pending == 0 and store.rows[("features", "a")].sequence == 2

    lost = MemoryStore()  # the rows never made it before a crash
    rebuilt = processor(make_spec(COUNT_1M), store=lost, history=ListHistory({0: recs}, committed={0: 3}))
    rebuilt.on_assigned([TopicPartitionRef("events", 0)])
    assert lost.rows == store.rows


def test_validation_failures_are_counted_per_rule_once_per_batch() -> None:
    metrics = RecordingMetrics()
    proc = processor(make_spec(COUNT_1M, validation={"x": {"min": 0}}), metrics=metrics)
    result = proc.process(records([event(0, "a", 1, x=-1.0), event(1, "a", 2, x=-2.0), event(2, "", 3)]))
    assert len(result.rejections) == 3 and not result.outputs
    assert metrics.count("streamloop_validation_failures", rule="x.min") == 2
    assert metrics.count("streamloop_validation_failures", rule="entity.required") == 1
    assert all(isinstance(r, Rejection) for r in result.rejections)
    assert all(isinstance(o, OutgoingRecord) for o in proc.process(records([event(3, "a", 4)], first_offset=3)).outputs)


def _snapshot(proc) -> dict:  # noqa: ANN001
    return {tp: (part.applied, part.watermark, {k: (list(e.keys), [(list(s.keys), list(s.values)) for s in e.series],
                                                  e.max_time, e.latest_key) for k, e in part.entities.items()})
            for tp, part in proc._partitions.items()}


def test_metrics_reach_prometheus_under_their_documented_names() -> None:
    from prometheus_client import generate_latest

    from streamloop.telemetry import ServiceMetrics

    metrics = ServiceMetrics("featurizer")
    try:
        proc = processor(make_spec(COUNT_1M | {"late_events": "dead_letter"}, validation={"x": {"min": 0}}),
                         metrics=metrics, store=MemoryStore())
        proc.process(records([event(0, "a", 100_000), event(1, "a", 1_000), event(2, "a", 100_001, x=-1.0),
                              event(0, "a", 100_000)]))
        proc.tick(0)
        text = generate_latest(metrics.registry).decode()
    finally:
        metrics.shutdown()
    assert 'streamloop_validation_failures_total{rule="x.min",service="featurizer"} 1.0' in text
    assert 'streamloop_late_events_total{policy="dead_letter",service="featurizer"} 1.0' in text
    assert 'streamloop_feature_store_writes_total{result="applied",service="featurizer"} 1.0' in text
    assert 'streamloop_feature_store_pending_writes{service="featurizer"} 0.0' in text
    assert 'streamloop_featurizer_duplicate_events_total{service="featurizer"} 1.0' in text


def test_the_background_writer_coalesces_and_writes_everything_by_stop() -> None:
    """While a write is in flight, rows of one entity queue up as one: the newest."""
    store = GatedStore()
    proc = processor(make_spec(COUNT_1M), store=store)
    proc.writer.start()
    try:
        proc.process(records([event(0, "k0", 1_000)], first_offset=0))
        assert store.entered.wait(5), "the first write reached the store"
        for i in range(1, 50):  # the writer is held inside that first write meanwhile
            proc.process(records([event(i, f"k{i % 5}", 1_000 + i)], first_offset=i))
        store.gate.set()
        deadline = time.monotonic() + 5
        while proc.writer.pending and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        store.gate.set()
        proc.writer.stop()
    assert {k: w.sequence for (_, k), w in store.rows.items()} == {f"k{i}": 45 + i for i in range(5)}
    assert sum(store.calls) <= 1 + 5, f"49 rows of 5 entities held back coalesce to 5 writes, not {store.calls}"
    assert proc.writer.pending == 0


class GatedStore(MemoryStore):
    """Holds the first write until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.gate = threading.Event(), threading.Event()

    def write_many(self, group, writes, now_ms=None):
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        return super().write_many(group, writes, now_ms)
