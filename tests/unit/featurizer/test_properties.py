"""Property tests: for random streams with out-of-order and late arrivals, in random batches,

- every on-time vector equals a brute-force recomputation over the entity's events that had
  arrived by then, with event time <= its own and within the window;
- a late vector never holds more than that (nothing from a later event time, nothing that
  arrived later), whatever the policy;
- a featurizer rebuilt from the input topic at any offset emits exactly the vectors of an
  uninterrupted one;
- with events sent again (same event id, a later offset), each copy of a retained event is
  counted once and re-emits its original's vector, live and after a rebuild alike;
- after every batch, each entity's store row is its features over every event arrived, as of
  its newest event, versioned (that event's time, the greatest offset applied).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamloop.kafka.records import TopicPartitionRef
from tests.unit.featurizer.support import (
    Known,
    ListHistory,
    MemoryStore,
    all_aggregations_spec,
    assert_close,
    event,
    expected_numeric,
    processor,
    records,
    reference_outcomes,
    reference_run,
    run_batches,
    vectors,
)

SPECS = {policy: all_aggregations_spec(lateness=15_000, late_events=policy)
         for policy in ("emit_unwindowed", "dead_letter")}

steps = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        # Event-time steps and arrival delays that often land exactly on window edges.
        st.sampled_from([0, 1, 999, 1_000, 5_000, 10_000, 19_999, 20_000, 40_000]),
        st.one_of(st.just(0), st.sampled_from([1, 10_000, 15_000, 15_001, 20_000]), st.integers(0, 40_000)),
        st.one_of(st.none(), st.integers(-3, 3).map(float)),
        st.sampled_from("xyz"),
    ),
    min_size=1, max_size=80,
)
batch_sizes = st.lists(st.integers(1, 30), min_size=1, max_size=5)


def build_stream(items: list) -> list[dict]:
    clock = 1_700_000_000_000
    events = []
    for i, (entity, step, behind, x, cat) in enumerate(items):
        clock += step
        events.append(event(i, entity, clock - behind, x=x, cat=cat))
    return events


@settings(max_examples=150, deadline=None)
@given(items=steps, sizes=batch_sizes, policy=st.sampled_from(sorted(SPECS)))
def test_vectors_equal_brute_force_and_never_see_the_future(items: list, sizes: list[int], policy: str) -> None:
    spec = SPECS[policy]
    proc = processor(spec)
    recs = records(build_stream(items))
    result = run_batches(proc, recs, sizes)
    got = vectors(result)
    expected = reference_run(spec, recs, proc.horizon)
    rejected = {r.record.value["id"] for r in result.rejections}
    for event_id, (late, numeric) in expected.items():
        if late and policy == "dead_letter":
            assert event_id in rejected and event_id not in got
            continue
        vector = got[event_id]
        assert vector["late"] == late, event_id
        if not late:
            assert_close(vector["numeric"], numeric, event_id)
            continue
        for name, value in vector["numeric"].items():
            # A subset of the brute-force window: never more events, never a larger max or smaller min.
            if name.startswith(("count", "distinct_count", "cats", "max")):
                assert value <= numeric[name], (event_id, name)
            elif name.startswith("min"):
                assert value >= numeric[name], (event_id, name)


@settings(max_examples=60, deadline=None)
@given(items=steps, sizes=batch_sizes, cut_share=st.floats(0, 1), policy=st.sampled_from(sorted(SPECS)))
def test_a_rebuilt_featurizer_emits_the_uninterrupted_vectors(items: list, sizes: list[int], cut_share: float,
                                                              policy: str) -> None:
    spec = SPECS[policy]
    recs = records(build_stream(items))
    cut = int(len(recs) * cut_share)
    expected = vectors(run_batches(processor(spec), recs, sizes))
    rebuilt = processor(spec, history=ListHistory({0: recs}, committed={0: cut or None}))
    rebuilt.on_assigned([TopicPartitionRef("events", 0)])
    got = vectors(run_batches(rebuilt, recs[cut:], sizes[::-1]))
    assert got == {k: v for k, v in expected.items() if int(k[1:]) >= cut}


# Events sent again: (index of the original, how many records after it the copy arrives).
resends = st.lists(st.tuples(st.integers(0, 79), st.integers(0, 40)), max_size=12)


def with_copies(events: list[dict], copies: list[tuple[int, int]]) -> list[dict]:
    placed = [(float(i), e) for i, e in enumerate(events)]
    placed += [(i + after + 0.5, dict(events[i])) for i, after in copies if i < len(events)]
    return [e for _, e in sorted(placed, key=lambda item: item[0])]


def by_offset(result) -> dict[int, dict | None]:  # noqa: ANN001
    """Each record's vector without computed_at, None when it was dead-lettered."""
    found: dict[int, dict | None] = {r.record.offset: None for r in result.rejections}
    for output in result.outputs:
        found[output.source.offset] = {k: v for k, v in output.value.items() if k != "computed_at"}
    return found


@settings(max_examples=120, deadline=None)
@given(items=steps, copies=resends, sizes=batch_sizes, cut_share=st.floats(0, 1),
       policy=st.sampled_from(sorted(SPECS)))
def test_a_copy_of_a_retained_event_is_counted_once_and_re_emits_the_original_vector(
        items: list, copies: list, sizes: list[int], cut_share: float, policy: str) -> None:
    spec = SPECS[policy]
    proc = processor(spec)
    recs = records(with_copies(build_stream(items), copies))
    got = by_offset(run_batches(proc, recs, sizes))
    expected = reference_outcomes(spec, recs, proc.horizon)
    first: dict[str, int] = {}
    newest: dict[str, int] = {}
    for record in recs:
        late, numeric = expected[record.offset]
        vector = got[record.offset]
        if late and policy == "dead_letter":
            assert vector is None, record.offset
            continue
        assert vector is not None and vector["late"] == late, record.offset
        original = first.setdefault(record.value["id"], record.offset)
        if original == record.offset or expected[original] is not expected[record.offset]:
            newest[record.key] = max(newest.get(record.key, vector["event_time"]), vector["event_time"])
            if not late:
                assert_close(vector["numeric"], numeric, f"{record.value['id']}@{record.offset}")
            continue
        # A copy: the original's vector again, exactly while the original would still be on time
        # (older, the events its windows read may have been evicted, as for a replay).
        if got[original]["event_time"] >= newest[record.key] - spec.features.allowed_lateness:
            assert vector == got[original], f"copy {record.offset} of {original}"
        else:
            assert {k: vector[k] for k in ("event_id", "event_time", "late")} == \
                {k: got[original][k] for k in ("event_id", "event_time", "late")}

    cut = int(len(recs) * cut_share)
    rebuilt = processor(spec, history=ListHistory({0: recs}, committed={0: cut or None}))
    rebuilt.on_assigned([TopicPartitionRef("events", 0)])
    assert by_offset(run_batches(rebuilt, recs[cut:], sizes[::-1])) == {o: v for o, v in got.items() if o >= cut}


@settings(max_examples=100, deadline=None)
@given(items=steps, sizes=batch_sizes, policy=st.sampled_from(sorted(SPECS)))
def test_each_row_is_the_entity_features_over_every_event_arrived_as_of_its_newest(
        items: list, sizes: list[int], policy: str) -> None:
    spec = SPECS[policy]
    store = MemoryStore()
    proc = processor(spec, store=store)
    recs = records(build_stream(items))
    outcomes = reference_outcomes(spec, recs, proc.horizon)
    start, i = 0, 0
    while start < len(recs):
        end = start + sizes[i % len(sizes)]
        proc.process(recs[start:end])
        start, i = end, i + 1
        arrived: dict[str, list[Known]] = {}
        for record in recs[:end]:
            if outcomes[record.offset] != (True, {}):
                arrived.setdefault(record.key, []).append(Known(record.value["ts"], record.offset, record.value))
        assert {entity for _group, entity in store.rows} == set(arrived)
        for entity, known in arrived.items():
            row = store.rows[("features", entity)]
            newest = max(known, key=lambda k: (k.time, k.offset))
            assert (row.event_time_ms, row.sequence) == (newest.time, max(k.offset for k in known))
            expected = expected_numeric(spec, known, newest, proc.horizon)
            assert set(row.numeric) == set(expected), entity
            assert_close(row.numeric, expected, f"row of {entity} after offset {end - 1}")
