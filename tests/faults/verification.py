"""The verdict of a fault scenario: wait for everything to come back, count it, compare it.

:func:`verify` waits for every event and label of a scenario, counts them by event id into a
:class:`ScenarioResult`, compares Redis and the feature vectors with a clean replay and the served
champion with the registry's; :func:`assert_sound` holds the assertions every scenario shares.
What is checked, and why, is in ``harness.py``'s docstring.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamloop.store import RedisFeatureStore, create_redis_client
from tests.faults.harness import FEATURE_GROUP, ScorerProcess

if TYPE_CHECKING:
    from tests.faults.harness import FaultLoop
    from tests.faults.outputs import Observed

# A batch is scored with the shadows its scorer held when the batch began: a shadow is certainly
# held for a prediction scored this long after the log line that swapped it in (a batch takes far
# less), and until the line that swapped it out (logged right after the swap; less a margin for
# the log's millisecond stamps).
SHADOW_SETTLED_MS = 1_000
SHADOW_RETIRED_MARGIN_MS = 50


@dataclass
class ScenarioResult:
    """One scenario's counts, printed as one JSON line (docs/reliability.md quotes them)."""

    scenario: str
    events_in: int = 0
    invalid_in: int = 0
    predictions_out: int = 0
    dlq: int = 0
    # Events whose fate was the wrong one: a valid event dead-lettered, or an invalid one not.
    dlq_mismatched: int = 0
    lost: int = 0
    duplicates: int = 0
    # The duplicates the loop wrote beyond the copies of each event the user's producer sent.
    loop_duplicates: int = 0
    max_copies: int = 0
    # The most copies one stage wrote per record it read, rounded up (see ``verify``).
    max_copies_per_stage: int = 0
    # Shadow predictions of predicted events, and those missing: (event, shadow) pairs where the
    # scorer certainly held the shadow when it scored the event (``shadow_gaps``), with no shadow prediction.
    shadow_predictions: int = 0
    shadow_missing: int = 0
    # Label copies: an event's label may be sent more than once (``label_copies``); each copy comes
    # back as a labeled example (the first) or an unmatched label (a later one, DUPLICATE).
    labels_sent: int = 0
    labels_back: int = 0
    labels_lost: int = 0
    # Labels of predicted events that came back only as unmatched: a join that lost its state.
    labels_unjoined: int = 0
    labeled_events: int = 0
    # Labeled examples beyond one per event, and the most of one event (as duplicates and max_copies
    # count predictions).
    label_duplicates: int = 0
    max_label_copies: int = 0
    redis_entities: int = 0
    redis_mismatches: int = 0
    vector_mismatches: int = 0
    champion: str | None = None
    registry_champion: str | None = None
    unknown_versions: int = 0
    other_dead_letters: int = 0
    recover_s: float | None = None
    elapsed_s: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def report(self) -> None:
        line = json.dumps({"fault_scenario": self.__dict__}, default=str)
        print("\n" + line, flush=True)
        log_dir = os.environ.get("STREAMLOOP_FAULTS_REPORT")
        if log_dir:
            with open(log_dir, "a") as out:
                out.write(line + "\n")


def verify(loop: FaultLoop, result: ScenarioResult, demo_events: list[Any], *, timeout_s: float = 120.0,
           labels: bool = True, broker_may_lose: bool = False,
           labels_deadline: Callable[[], float] | None = None) -> ScenarioResult:
    """Wait for every event and label to come back, then count and compare (see the module docstring).

    ``broker_may_lose``: the fault is a broker restart, and noida-db may drop records it had
    acknowledged (docs/reliability.md). Events and labels that are not in their topics
    afterwards are counted as lost by the broker, and the checks cover those that are.
    ``labels_deadline``: when the labels' wait ends (a monotonic time, asked again as it waits),
    instead of ``timeout_s`` after the outputs are in.
    """
    ids = [str(d.event["transaction_id"]) for d in demo_events]
    label_copies = {str(d.event["transaction_id"]): d.label_copies for d in demo_events if d.label_copies}
    input_copies = loop.id_counts("input", loop.spec.input.event_id)
    in_input = set(input_copies)
    # Events the producing side never got into the input topic are not the loop's to lose; counted apart.
    result.notes["not_in_input_topic"] = sum(1 for i in ids if i not in in_input)
    if loop.producers:
        result.notes["user_producer_recreated"] = loop.producers[-1].recreated
    if broker_may_lose:
        in_labels = loop.id_counts("labels", "event_id")
        result.notes["labels_not_in_label_topic"] = sum(1 for i in label_copies if i not in in_labels)
        result.notes["label_copies_not_in_label_topic"] = sum(max(0, copies - in_labels[i])
                                                              for i, copies in label_copies.items())
        ids = [i for i in ids if i in in_input]
        # A label whose event the broker dropped waits for the join horizon (2 minutes) to come back
        # unmatched; a copy the broker dropped is not the loop's to answer.
        label_copies = {i: min(copies, in_labels[i]) for i, copies in label_copies.items()
                        if i in in_labels and i in in_input}
    phase = time.monotonic()
    complete = loop.wait_accounted(ids, timeout_s)
    result.notes["wait_outputs_s"] = round(time.monotonic() - phase, 1)
    phase = time.monotonic()
    # Every scenario counts its labels: a fault anywhere upstream (a replayed prediction, Redis, where
    # the collector keeps its join state) can cost one. ``labels=False`` only for a test that says why.
    if not labels:
        label_copies = {}
    labels_complete = loop.wait_labels(label_copies, timeout_s, labels_deadline)
    result.notes["wait_labels_s"] = round(time.monotonic() - phase, 1)
    phase = time.monotonic()
    with loop.reader.lock:
        obs = loop.reader.observed
        result.events_in = len(ids)
        counted = set(ids)
        invalid = {str(d.event["transaction_id"]) for d in demo_events if d.event["amount"] < 0} & counted
        result.invalid_in = len(invalid)
        result.predictions_out = sum(1 for i in ids if obs.predictions[i])
        result.dlq = sum(1 for i in ids if obs.dead_letters[i])
        result.dlq_mismatched = sum(1 for i in ids if bool(obs.dead_letters[i]) != (i in invalid))
        result.lost = sum(1 for i in ids if not obs.predictions[i] and not obs.dead_letters[i])
        result.duplicates = sum(max(0, obs.predictions[i] - 1) for i in ids)
        result.max_copies = max((obs.predictions[i] for i in ids), default=0)
        answered = {i: obs.labeled[i] + obs.unmatched[i] for i in label_copies}
        result.labels_sent = sum(label_copies.values())
        result.labels_back = sum(min(answered[i], copies) for i, copies in label_copies.items())
        result.labels_lost = result.labels_sent - result.labels_back
        if result.labels_lost:
            missing = sorted(f"{i} ({answered[i]} of {copies})" for i, copies in label_copies.items()
                             if answered[i] < copies)
            result.notes["labels_missing"] = missing[:10]
        result.labels_unjoined = sum(1 for i in label_copies if obs.predictions[i] and not obs.labeled[i])
        result.labeled_events = len(label_copies)
        result.label_duplicates = sum(max(0, obs.labeled[i] - 1) for i in label_copies)
        result.max_label_copies = max((obs.labeled[i] for i in label_copies), default=0)
        result.shadow_predictions = sum(sum(obs.shadow_predictions[i].values()) for i in ids)
        checked, gaps = shadow_gaps(loop.scorer_processes(), obs, ids)
        result.shadow_missing = len(gaps)
        result.notes["shadow_pairs_checked"] = checked
        if gaps:
            result.notes["shadow_missing"] = gaps[:10]
        result.other_dead_letters = obs.other_dead_letters - loop.dead_letters_before
        versions = set().union(*(obs.versions[i] for i in ids if obs.versions[i]))
        emitted = {i: list(obs.vectors[i]) for i in ids}
        result.notes["records_read_again"] = obs.rereads
        # Where copies multiply when they do: each stage that replays writes its outputs again.
        result.notes["max_copies_by_stage"] = {
            "input": max((input_copies[i] for i in ids), default=0),
            "features": max((len(emitted[i]) for i in ids), default=0),
            "predictions": result.max_copies,
        }
        # Copies compound: a featurizer replay doubles what the input topic holds, and a scorer
        # replay doubles that again. What one stage may do is bounded per record it read: per copy
        # the user's producer sent, where that is more than the topic holds now (a copy the broker
        # lost in a restart after the featurizer had read it, sent again by the recreated producer).
        sent = sum((p.copies_sent for p in loop.producers), Counter())
        read = {i: max(input_copies[i], sent[i]) for i in ids}
        featurizer = max((-(-len(emitted[i]) // max(1, read[i])) for i in ids), default=0)
        scorer = max((-(-obs.predictions[i] // max(1, len(emitted[i]))) for i in ids), default=0)
        result.notes["max_copies_per_record_read"] = {"featurizer": featurizer, "scorer": scorer}
        result.loop_duplicates = sum(max(0, obs.predictions[i] - read[i]) for i in ids)
        result.max_copies_per_stage = max(featurizer, scorer)
    assert complete, f"events not accounted for: {result}\n{loop.log_tails()}"
    assert labels_complete, f"labels not accounted for: {result}\n{loop.log_tails()}"

    # The store converges after the last batch: the featurizer writes rows from a thread.
    replay_prefix, clean_vectors = clean_replay(loop)
    expected = loop.redis_state(replay_prefix)
    deadline = time.monotonic() + 30
    while True:
        actual = loop.redis_state(loop.key_prefix)
        mismatched = {k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k)}
        if not mismatched or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    result.notes["redis_s"] = round(time.monotonic() - phase, 1)
    result.redis_entities = len(expected)
    result.redis_mismatches = len(mismatched)
    result.vector_mismatches = vector_mismatches(emitted, clean_vectors)

    deadline = time.monotonic() + 60
    while True:
        result.registry_champion = loop.registry_champion()
        result.champion = loop.served_champion()
        if result.champion == result.registry_champion or time.monotonic() > deadline:
            break
        time.sleep(1)
    result.unknown_versions = len(versions - loop.deployed_versions())
    result.notes["compare_s"] = round(time.monotonic() - phase, 1)
    return result


def held_shadows(replicas: list[list[ScorerProcess]], scored_at: int) -> set[str]:
    """The shadows every scorer process running at ``scored_at`` certainly held then (whichever of them scored)."""
    held: list[set[str]] = []
    for processes in replicas:
        running = next((p for p in processes if p.started_ms <= scored_at < p.ended_ms), None)
        if running is not None:
            held.append({version for version, since, retired in running.shadows
                         if since + SHADOW_SETTLED_MS <= scored_at < retired - SHADOW_RETIRED_MARGIN_MS})
    return set.intersection(*held) if held else set()


def cut_short(replicas: list[list[ScorerProcess]], scored_at: int, later: list[int]) -> bool:
    """Whether the copy scored at ``scored_at`` may have lost its shadow predictions to a restart:
    a scorer process running then was replaced (killed and restarted, its log says), and the event
    was scored again at or after the replacement's first line (``later``: its other copies' times).

    A batch's outputs are all sent before its offsets are committed, but a SIGKILL between the
    prediction's delivery and a shadow prediction's leaves that batch uncommitted with part of its
    outputs out: the next process scores it again, with the shadows deployed then. A shadow retired
    (or promoted) in between never scores that event again, and need not have: the copy that
    stands is the re-score. The copy cut short is not held to its shadows; the re-score is.
    """
    for processes in replicas:
        running = next((p for p in processes if p.started_ms <= scored_at < p.ended_ms), None)
        if running is not None and running.ended_ms != math.inf and any(t >= running.ended_ms for t in later):
            return True
    return False


def shadow_gaps(replicas: list[list[ScorerProcess]], obs: Observed, ids: list[str]) -> tuple[int, list[str]]:
    """(event, shadow) pairs checked, and those without a shadow prediction: for each prediction of
    an event, every shadow its scorer certainly held, but the version that served it (scored once,
    in the role that served: services/online_scorer/processor.py). A prediction the scorer's
    restart may have cut short, and that was scored again after it, is held to nothing (``cut_short``)."""
    checked, gaps = 0, []
    for i in ids:
        required: set[str] = set()
        times = [scored_at for scored_at, _ in obs.scorings[i]]
        for scored_at, served in obs.scorings[i]:
            if cut_short(replicas, scored_at, [t for t in times if t > scored_at]):
                continue
            required |= held_shadows(replicas, scored_at) - {served}
        checked += len(required)
        gaps += [f"{i}: {version}" for version in sorted(required) if not obs.shadow_predictions[i][version]]
    return checked, gaps


def clean_replay(loop: FaultLoop) -> tuple[str, dict[str, list[dict]]]:
    """Apply the featurizer's processor to the whole input topic in offset order.

    Returns the key prefix it wrote its rows under and its vectors per event id (:func:`replay_vectors`).
    """
    from services.featurizer.processor import FeaturizerProcessor

    replay_prefix = f"{loop.key_prefix}-replay-{uuid.uuid4().hex[:6]}"
    client = create_redis_client(loop.stack.redis_url)
    store = RedisFeatureStore(client, loop.spec.name, ttl_ms=loop.spec.features.ttl, key_prefix=replay_prefix)
    topic = loop.catalog["input"]
    processor = FeaturizerProcessor(loop.spec, topic.schema, features_topic=loop.catalog["features"].name,
                                    store=store, group=FEATURE_GROUP)
    try:
        vectors = replay_vectors(processor, loop.read_topic("input"))
    finally:
        store.close()
    return replay_prefix, vectors


def replay_vectors(processor: Any, partitions: dict[int, list[Any]]) -> dict[str, list[dict]]:
    """The vectors ``processor`` emits over each partition's records in offset order, per event id.

    One per copy of the event in the input topic: the user's producer, replaced after a fatal
    error, sends its unacknowledged records again. A copy of an event still in its entity's
    buffer is not counted again and re-emits the first copy's vector (docs/featurizer.md); a copy
    of one already evicted is a late event of its own, with a vector of its own.
    """
    vectors: dict[str, list[dict]] = {}
    for _partition, records in sorted(partitions.items()):
        for start in range(0, len(records), 500):
            for output in processor.process(records[start:start + 500]).outputs:
                v = output.value
                vectors.setdefault(v["event_id"], []).append(
                    {"numeric": v["numeric"], "categorical": v["categorical"], "late": v["late"]})
    return vectors


def vector_mismatches(emitted: dict[str, list[dict]], clean: dict[str, list[dict]]) -> int:
    """The emitted vectors equal to none of the clean replay's vectors of their event.

    A vector does not say which copy of its event it was computed for (no input offset), so each
    one must be the clean vector of one of the event's copies; replays of either copy are the same.
    """
    return sum(1 for i, copies in emitted.items() for v in copies if v not in clean.get(i, ()))


def assert_sound(result: ScenarioResult, max_copies: int | None = 2, *, same_input: bool = True,
                 max_copies_per_stage: int = 2, labels_joined: bool = True,
                 max_loop_duplicates: int | None = None, max_label_duplicates: int | None = None) -> None:
    """The assertions every scenario shares (after :func:`verify`).

    ``max_copies``: the most predictions of one event, end to end; ``None`` when the fault hits
    every stage at once (a broker restart), where copies compound and only the per-stage bound holds.
    ``max_copies_per_stage``: the most copies one stage may write of a record it read.
    ``same_input=False`` when the broker dropped input records it had acknowledged (and the loop
    had already consumed): a replay of what is left is then no reference for Redis or the vectors.
    ``max_loop_duplicates``: the most duplicates the loop may write beyond the user's own copies;
    one per event unless the scenario derives another bound (a broker restart's re-sent windows).
    ``max_label_duplicates``: the same for labeled examples, beyond one per labeled event; one per
    labeled event unless the scenario derives another bound. The labeled examples of one event are
    bounded as its predictions are: by ``max_copies``, or the per-stage bound where that is ``None``
    (only the collector's join writes them, so they do not compound across stages).
    ``labels_joined=False`` when the broker may have dropped feature vectors or predictions, so a
    label may rightly come back unmatched; otherwise every label of a predicted event is joined
    (each arrives seconds after its event, well inside the join horizon).
    """
    assert result.lost == 0, result
    assert result.dlq == result.invalid_in, f"exactly the invalid events are dead-lettered: {result}"
    assert result.dlq_mismatched == 0, f"exactly the invalid events are dead-lettered: {result}"
    assert result.predictions_out + result.dlq == result.events_in, result
    # At-least-once: a fault replays the batches in flight once, so each stage writes a record it
    # read at most twice (one fault + 1), whatever the stages before it did.
    assert result.max_copies_per_stage <= max_copies_per_stage, result
    if max_copies is not None:
        assert result.max_copies <= max_copies, result
    # A user's producer that replaced itself after a fatal error sends its last seconds again: the
    # copies it put in the input topic are each processed, and are not the loop's duplicates.
    assert result.loop_duplicates <= (result.events_in if max_loop_duplicates is None else max_loop_duplicates), result
    # Every shadow the scorer held scored every event it scored (the shadows' predictions are the
    # judge's evidence): a lost one would go unnoticed by the counts above.
    assert result.shadow_missing == 0, f"shadow predictions missing: {result}"
    assert result.labels_lost == 0, f"label copies not answered: {result}"
    # Repeated labeled examples are the collector's duplicates: bounded as the predictions' are.
    assert result.max_label_copies <= (max_copies if max_copies is not None else max_copies_per_stage), result
    assert result.label_duplicates <= (result.labeled_events if max_label_duplicates is None
                                       else max_label_duplicates), result
    if labels_joined:
        assert result.labels_unjoined == 0, f"labels of predicted events came back unmatched: {result}"
    if same_input:
        assert result.redis_mismatches == 0, f"feature store differs from a clean replay: {result}"
        assert result.vector_mismatches == 0, f"feature vectors differ from a clean replay: {result}"
    assert result.champion is not None and result.champion == result.registry_champion, result
    assert result.unknown_versions == 0, result
    # Nothing else in the loop dead-letters anything (labels, candidates, metrics, deployments...).
    assert result.other_dead_letters == 0, result
