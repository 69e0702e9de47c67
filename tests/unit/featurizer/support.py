"""Test machinery for the featurizer: a small spec and schema, records, and a brute-force reference.

The reference (:func:`expected_numeric`) recomputes every feature from scratch, straight from the
definitions in docs/featurizer.md, over the events of the entity that had arrived by then; it
shares no code with the service.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.featurizer.processor import FeaturizerProcessor
from streamloop.contracts import PipelineSpec
from streamloop.contracts.pipeline import parse_pipeline
from streamloop.contracts.schemas import AvroSchema
from streamloop.kafka import ConsumedRecord, OutgoingRecord, ProcessResult
from streamloop.kafka.records import TopicPartitionRef
from streamloop.store import FeatureRead, FeatureStore, FeatureStoreUnavailable, FeatureWrite

TOPIC = "events"
SCHEMA = AvroSchema.from_dict({
    "type": "record", "name": "Event", "namespace": "tests.featurizer",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "entity", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "x", "type": ["null", "double"], "default": None},
        {"name": "n", "type": "long", "default": 0},
        {"name": "cat", "type": "string", "default": "a"},
        {"name": "flag", "type": "boolean", "default": False},
        {"name": "tags", "type": {"type": "map", "values": "double"}, "default": {}},
        {"name": "items", "type": {"type": "array", "items": "string"}, "default": []},
    ],
}, "tests")
AGGREGATIONS = ("count", "sum", "mean", "std", "min", "max", "last", "distinct_count")
WINDOWS = {
    "sliding": {"kind": "sliding", "size": 60_000},
    "tumbling": {"kind": "tumbling", "size": 60_000},
    "hopping": {"kind": "hopping", "size": 60_000, "hop": 20_000},
}


def make_spec(features: dict[str, Any] | None = None, validation: dict[str, Any] | None = None,
              segments: Sequence[str] = ()) -> PipelineSpec:
    data = {
        "name": "test-pipeline",
        "input": {"topic": TOPIC, "schema": "unused.avsc", "event_id": "id", "entity_key": "entity",
                  "event_time": "ts", "validation": validation or {}, "max_map_size": 4},
        "features": features if features is not None else {},
        "segments": list(segments),
        "model": {"name": "m", "task": "classification", "estimator": "river.linear_model.LogisticRegression"},
    }
    return parse_pipeline(data, Path("."))


def all_aggregations_spec(lateness: int = 30_000, late_events: str = "emit_unwindowed") -> PipelineSpec:
    """Every aggregation over every window kind, plus a 10 s sliding count."""
    aggregations = [{"name": f"{agg}_{kind}", "field": "x", "agg": agg, "window": window}
                    for kind, window in WINDOWS.items() for agg in AGGREGATIONS]
    aggregations.append({"name": "cats_sliding", "field": "cat", "agg": "distinct_count",
                         "window": WINDOWS["sliding"]})
    aggregations.append({"name": "count_10s", "field": "x", "agg": "count",
                         "window": {"kind": "sliding", "size": 10_000}})
    return make_spec({"allowed_lateness": lateness, "late_events": late_events, "aggregations": aggregations})


def event(i: int, entity: str, ts: int, x: float | None = 1.0, **fields: Any) -> dict[str, Any]:
    return {"id": f"e{i}", "entity": entity, "ts": ts, "x": x, "n": 0, "cat": "a", "flag": False,
            "tags": {}, "items": [], **fields}


def records(events: Sequence[dict[str, Any]], partition: int = 0, first_offset: int = 0) -> list[ConsumedRecord]:
    """Records as a producer sends them: each stamped (CreateTime) when it is sent, never before the
    events sent so far, so an event that arrives late carries a Kafka timestamp past its event time."""
    sent_at, stamped = 0, []
    for i, e in enumerate(events):
        sent_at = max(sent_at, e["ts"])
        stamped.append(ConsumedRecord(TOPIC, partition, first_offset + i, e["entity"], e, sent_at))
    return stamped


def processor(spec: PipelineSpec, **kwargs: Any) -> FeaturizerProcessor:
    kwargs.setdefault("clock", lambda: 1_000)
    return FeaturizerProcessor(spec, SCHEMA, features_topic="features", **kwargs)


def run_batches(proc: FeaturizerProcessor, recs: Sequence[ConsumedRecord],
                sizes: Sequence[int] = (500,)) -> ProcessResult:
    """Process ``recs`` in batches whose sizes cycle through ``sizes``."""
    result = ProcessResult()
    start, i = 0, 0
    while start < len(recs):
        size = max(1, sizes[i % len(sizes)])
        result.extend(proc.process(recs[start:start + size]))
        start += size
        i += 1
    return result


def vectors(result: ProcessResult) -> dict[str, dict[str, Any]]:
    """Each output vector by event id, without the wall-clock ``computed_at``."""
    found = {}
    for output in result.outputs:
        assert isinstance(output, OutgoingRecord) and output.value is not None
        found[output.value["event_id"]] = {k: v for k, v in output.value.items() if k != "computed_at"}
    return found


# -- the brute-force reference ----------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    time: int
    offset: int
    value: dict[str, Any]


def reference_start(window: dict[str, Any], t: int) -> int:
    size = window["size"]
    if window["kind"] == "sliding":
        return t - size + 1
    if window["kind"] == "tumbling":
        return (t // size) * size
    hop = window["hop"]
    # Enumerate the hop-aligned windows [k*hop, k*hop + size) that contain t; take the oldest.
    starts = [k * hop for k in range(t // hop - size // hop - 2, t // hop + 1) if k * hop <= t < k * hop + size]
    return min(starts)


def reference_aggregate(agg: str, values: list[Any]) -> float | None:
    if agg == "count":
        return float(len(values))
    if agg == "distinct_count":
        return float(len(set(values)))
    if agg == "sum":
        return float(sum(values))
    if not values:
        return None
    return {"mean": lambda: statistics.fmean(values), "std": lambda: statistics.pstdev(values),
            "min": lambda: float(min(values)), "max": lambda: float(max(values)),
            "last": lambda: float(values[-1])}[agg]()


def expected_numeric(spec: PipelineSpec, known: Sequence[Known], current: Known, horizon: int) -> dict[str, float]:
    """Aggregates and time since previous of ``current`` over ``known`` (the entity's arrived events)."""
    expected: dict[str, float] = {}
    t = current.time
    ordered = sorted(known, key=lambda k: (k.time, k.offset))
    for aggregation in spec.features.aggregations:
        start = reference_start(aggregation.window.model_dump(), t)
        values = [k.value[aggregation.field] for k in ordered
                  if start <= k.time <= t and (k.time, k.offset) <= (t, current.offset)
                  and k.value[aggregation.field] is not None]
        result = reference_aggregate(aggregation.agg, values)
        if result is not None:
            expected[aggregation.name] = result
    if spec.features.time_since_previous:
        before = [k.time for k in ordered if (k.time, k.offset) < (t, current.offset)]
        expected["time_since_previous_s"] = min(t - before[-1], horizon) / 1000 if before else horizon / 1000
    return expected


def assert_close(actual: dict[str, float], expected: dict[str, float], where: str = "") -> None:
    assert set(actual) >= set(expected), f"{where}: missing {set(expected) - set(actual)}"
    for name, value in expected.items():
        assert math.isclose(actual[name], value, rel_tol=1e-9, abs_tol=1e-9), \
            f"{where}: {name} = {actual[name]}, brute force says {value}"


# -- fakes ----------------------------------------------------------------------------------


class MemoryStore(FeatureStore):
    """The store contract in memory: the greatest (event time, sequence) wins; ``down`` fails writes."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], FeatureWrite] = {}
        self.calls: list[int] = []
        self.down = False

    def write_many(self, group: str, writes: Sequence[FeatureWrite], now_ms: int | None = None) -> list[bool]:
        if self.down:
            raise FeatureStoreUnavailable("store is down")
        self.calls.append(len(writes))
        applied = []
        for write in writes:
            stored = self.rows.get((group, write.entity_key))
            ok = stored is None or write.version > stored.version
            if ok:
                self.rows[(group, write.entity_key)] = write
            applied.append(ok)
        return applied

    def read_many(self, group: str, entity_keys: Sequence[str], now_ms: int | None = None) -> list[FeatureRead | None]:
        raise NotImplementedError

    def delete_entities(self, group: str, entity_keys: Sequence[str]) -> int:
        if self.down:
            raise FeatureStoreUnavailable("store is down")
        return sum(self.rows.pop((group, key), None) is not None for key in entity_keys)

    def close(self) -> None:
        pass


class ListHistory:
    """A PartitionHistory over in-memory partitions: committed offsets and the records before them.

    A replay starts where KafkaPartitionHistory's does: at the first offset whose timestamp is at
    least ``lookback_ms`` before the timestamp of the last record before the end offset (from the
    first record when that is not past 0), so a restore that looks back too little is seen here too.
    """

    def __init__(self, partitions: dict[int, list[ConsumedRecord]], committed: dict[int, int | None]) -> None:
        self.partitions = partitions
        self.committed_offsets = committed
        self.replays: list[dict[TopicPartitionRef, int]] = []

    def committed(self, partitions: Sequence[TopicPartitionRef]) -> dict[TopicPartitionRef, int | None]:
        return {p: self.committed_offsets.get(p.partition) for p in partitions}

    def replay(self, ends, lookback_ms):  # noqa: ANN001 - the protocol's signature
        self.replays.append(dict(ends))
        for ref, end in ends.items():
            before = sorted((r for r in self.partitions[ref.partition] if r.offset < end), key=lambda r: r.offset)
            if not before:
                continue
            since = before[-1].timestamp_ms - lookback_ms
            start = 0 if since <= 0 else next(i for i, r in enumerate(before) if r.timestamp_ms >= since)
            yield from before[start:]


class RecordingMetrics:
    """counter()/gauge() as ServiceMetrics has them, remembering every call."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, tuple], float] = {}
        self.gauges: dict[str, float] = {}

    def counter(self, name: str, description: str = "", unit: str = ""):  # noqa: ANN201
        def add(amount: float = 1, attributes: dict | None = None) -> None:
            key = (name, tuple(sorted((attributes or {}).items())))
            self.counts[key] = self.counts.get(key, 0) + amount
        return add

    def gauge(self, name: str, description: str = "", unit: str = ""):  # noqa: ANN201
        def set_value(value: float, attributes: dict | None = None) -> None:
            self.gauges[name] = value
        return set_value

    def count(self, name: str, **attributes: str) -> float:
        return self.counts.get((name, tuple(sorted(attributes.items()))), 0)


def reference_run(spec: PipelineSpec, recs: Sequence[ConsumedRecord], horizon: int) -> dict[str, tuple[bool, dict]]:
    """Event id -> (late, expected numeric aggregates) by brute force, or (True, {}) when dead-lettered.

    Walks the records in arrival order; an entity's known events are those accepted before.
    """
    return {record.value["id"]: outcome
            for record, outcome in zip(recs, reference_outcomes(spec, recs, horizon).values(), strict=True)}


def reference_outcomes(spec: PipelineSpec, recs: Sequence[ConsumedRecord],
                       horizon: int) -> dict[int, tuple[bool, dict]]:
    """Offset -> (late, expected numeric), or (True, {}) when dead-lettered, as :func:`reference_run`.

    A copy of an accepted event (same id and entity) is counted once while the original is
    still retained, its event time within ``horizon + allowed_lateness`` of the entity's newest
    (docs/featurizer.md): its outcome is the original's. Later, it is an event of its own.
    """
    lateness = spec.features.allowed_lateness
    known: dict[tuple[int, str], list[Known]] = {}
    originals: dict[tuple[int, str, str], tuple[Known, tuple[bool, dict]]] = {}
    expected: dict[int, tuple[bool, dict]] = {}
    for record in recs:
        value = record.value
        entity = known.setdefault((record.partition, value["entity"]), [])
        original = originals.get((record.partition, value["entity"], value["id"]))
        if original is not None and original[0].time > max(k.time for k in entity) - horizon - lateness:
            expected[record.offset] = original[1]
            continue
        current = Known(value["ts"], record.offset, value)
        late = bool(entity) and current.time < max(k.time for k in entity) - lateness
        if late and spec.features.late_events == "dead_letter":
            expected[record.offset] = (True, {})
            continue
        entity.append(current)
        expected[record.offset] = (late, expected_numeric(spec, entity, current, horizon))
        originals[(record.partition, value["entity"], value["id"])] = (current, expected[record.offset])
    return expected
