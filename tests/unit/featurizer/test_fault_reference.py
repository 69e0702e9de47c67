"""The fault tests' reference for feature vectors (tests/faults/verification.py) against the processor.

A broker restart mid-stream fails the featurizer's offset commit (ILLEGAL_GENERATION) and makes the
user's producer send its unacknowledged records again, so the input topic holds some events twice.
The featurizer must emit a clean run's vectors through the first, and for the second the reference
holds a vector per copy: the original's again, since a copy of a buffered event is not counted twice.
"""

from __future__ import annotations

from typing import Any

from streamloop.kafka import ProcessResult
from streamloop.kafka.records import ConsumedRecord, TopicPartitionRef
from tests.faults.verification import replay_vectors, vector_mismatches
from tests.unit.featurizer.support import TOPIC, ListHistory, processor, records
from tests.unit.featurizer.test_processor import SPEC, stream

REF = TopicPartitionRef(TOPIC, 0)
BATCH = 50


def by_offset(result: ProcessResult) -> list[tuple[int, dict[str, Any]]]:
    return [(o.source.offset, {k: v for k, v in o.value.items() if k != "computed_at"}) for o in result.outputs]


def run_with_a_failed_commit(recs: list[ConsumedRecord], failed_at: int, rebalance: bool) -> list[tuple[int, dict]]:
    """The runner's order (process, committing, commit) batch by batch; the commit of the batch at
    ``failed_at`` fails, and that batch is consumed again from the group's commit, with a revoke and
    an assignment between (``rebalance``) or with the partition kept."""
    history = ListHistory({0: recs}, committed={0: None})
    proc = processor(SPEC, history=history)
    proc.on_assigned([REF])
    emitted, start = [], 0
    while start < len(recs):
        emitted += by_offset(proc.process(recs[start:start + BATCH]))
        proc.committing({(TOPIC, 0): start + BATCH})
        if start == failed_at:
            failed_at = -1
            if rebalance:
                proc.on_revoked([REF])
                proc.on_assigned([REF])  # the group's commit is still the batch's first offset
                assert history.replays == [{REF: start}]
            continue  # consumed again from the commit
        history.committed_offsets[0] = start + BATCH
        start += BATCH
    return emitted


def test_a_failed_commit_and_the_batch_again_give_the_vectors_of_a_clean_run() -> None:
    recs = records(stream(5, count=300))
    clean = dict(by_offset(processor(SPEC).process(recs)))
    for rebalance in (True, False):
        emitted = run_with_a_failed_commit(recs, failed_at=100, rebalance=rebalance)
        assert len(emitted) == len(recs) + BATCH, "the batch's vectors are emitted twice"
        assert [offset for offset, v in emitted if v != clean[offset]] == [], rebalance


def test_every_vector_of_an_event_the_input_topic_holds_twice_matches_the_clean_reference() -> None:
    events = stream(5, count=300)
    # The user's producer, replaced after a fatal error, sent 150..169 again after 169.
    recs = records(events[:170] + events[150:170] + events[170:])
    emitted: dict[str, list[dict]] = {}
    for _offset, v in run_with_a_failed_commit(recs, failed_at=150, rebalance=True):
        emitted.setdefault(v["event_id"], []).append(
            {"numeric": v["numeric"], "categorical": v["categorical"], "late": v["late"]})
    clean = replay_vectors(processor(SPEC), {0: recs})
    twice = {f"e{i}" for i in range(150, 170)}
    assert {i for i, copies in clean.items() if len(copies) == 2} == twice
    assert all(clean[i][0] == clean[i][1] for i in twice), "the second copy re-emits the first's vector"
    assert vector_mismatches(emitted, clean) == 0
    # A vector of no copy (a window off by one event) is still one.
    wrong = {i: [dict(copies[0], late=not copies[0]["late"])] for i, copies in emitted.items() if i in twice}
    assert vector_mismatches(wrong, clean) == len(twice)
