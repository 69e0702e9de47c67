"""The featurizer's processor: input events in, one FeatureVector per event out, rows to the store.

Pure as far as Kafka goes: it is handed decoded records, returns records to produce and never
touches a consumer. The two things it talks to are injected: a :class:`FeatureStore` (through
:class:`FeatureRowWriter`, fed by :class:`LatestRows`) and a :class:`PartitionHistory`, which
replays an assigned partition's recent input so the windows are rebuilt before the partition's
first batch (docs/featurizer.md).

Per event: validate (before any state), decide lateness, insert into the entity's sorted buffer,
compute the vector over buffered events with a version key <= the event's own, evict. A copy of
a buffered event (same event id, another offset: a producer's re-send) is not applied: the
original's vector is emitted again. Per batch:
each entity's row is queued for the store (latest_rows.py; written by the writer's thread in the
service, at once in tests). Then the metrics are recorded.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from typing import Any, Protocol

from services.featurizer.exceptions import FutureEventError, LateEventError
from services.featurizer.latest_rows import LatestRows
from services.featurizer.state import EntityState, PartitionState
from services.featurizer.store_writer import FeatureRowWriter
from services.featurizer.validation import RecordValidator
from services.featurizer.vectors import FeatureBuilder
from services.featurizer.windows import OFFSET_MASK, SHIFT
from streamloop.contracts import PipelineSpec
from streamloop.contracts.schemas import AvroSchema
from streamloop.kafka import ConsumedRecord, InvalidRecordError, OutgoingRecord, ProcessResult, Rejection
from streamloop.kafka.dead_letters import STAGE_PROCESS, STAGE_VALIDATION
from streamloop.kafka.records import TopicPartitionRef
from streamloop.store import FeatureStore
from streamloop.store.feature_store import wall_clock_ms

log = logging.getLogger(__name__)

Outcome = OutgoingRecord | Rejection
_TP = tuple[str, int]


class PartitionHistory(Protocol):
    """The input topic read as the featurizer's changelog (services/featurizer/history.py)."""

    def committed(self, partitions: Sequence[TopicPartitionRef]) -> dict[TopicPartitionRef, int | None]:
        """The group's committed offset of each partition; None where nothing is committed."""
        ...

    def replay(self, ends: Mapping[TopicPartitionRef, int], lookback_ms: int) -> Iterable[ConsumedRecord]:
        """Decoded records before each end offset, starting ``lookback_ms`` before the last one's timestamp."""
        ...


class Metrics(Protocol):
    def counter(self, name: str, description: str = "", unit: str = "") -> Callable[..., None]: ...

    def gauge(self, name: str, description: str = "", unit: str = "") -> Callable[..., None]: ...


class _NoMetrics:
    def counter(self, name: str, description: str = "", unit: str = "") -> Callable[..., None]:
        return lambda *args, **kwargs: None

    gauge = counter


class FeaturizerProcessor:
    """Turns the pipeline's input events into FeatureVectors (the ``features`` topic)."""

    def __init__(self, spec: PipelineSpec, schema: AvroSchema, *, features_topic: str,
                 store: FeatureStore | None = None, history: PartitionHistory | None = None,
                 metrics: Metrics | None = None, group: str = "features", disorder_ms: int = 3_600_000,
                 sweep_interval_s: float = 60.0,
                 clock: Callable[[], int] = wall_clock_ms, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.features_topic = features_topic
        self.builder = FeatureBuilder(spec, schema)
        self.validator = RecordValidator(spec.input, schema, categorical=spec.features.categorical,
                                         segments=spec.segments)
        self.writer = FeatureRowWriter(store, group, monotonic=monotonic)
        self.history = history
        self.horizon = self.builder.horizon
        self._lateness = spec.features.allowed_lateness
        # An on-time event can be `allowed_lateness` behind the entity's newest and looks back one
        # horizon (time_since_previous_s is capped there): that much is kept behind the newest.
        self.retention = self.horizon + self._lateness
        self.forget_after = self.retention + disorder_ms
        self.disorder_ms = disorder_ms
        # Replay far enough back that every event still buffered at the end offset is read again.
        self.lookback_ms = self.retention + 2 * disorder_ms
        self._late_policy = spec.features.late_events
        self._event_id = spec.input.event_id
        self._fields = len(self.builder.fields)
        self._partitions: dict[_TP, PartitionState] = {}
        self._parked: dict[_TP, PartitionState] = {}
        # Outcomes of the latest batch's new records: what a replay of that batch must emit again.
        self._recent: dict[tuple[str, int, int], Outcome] = {}
        self._clock = clock
        self._monotonic = monotonic
        self._sweep_interval = sweep_interval_s
        self._next_sweep = monotonic() + sweep_interval_s
        metrics = metrics or _NoMetrics()
        self._validation_failures = metrics.counter(
            "streamloop_validation_failures", "Input events dead-lettered by validation, by rule.")
        self._late = metrics.counter("streamloop_late_events", "Events later than the allowed lateness, by policy.")
        self._replayed = metrics.counter("streamloop_featurizer_replayed_records",
                                         "Records seen again: re-emitted (replay) or re-applied to rebuild state.")
        self._copies = metrics.counter("streamloop_featurizer_duplicate_events",
                                       "Copies of a buffered event (same event id, another offset): not applied, "
                                       "the original's vector emitted again.")
        store_writes = metrics.counter("streamloop_feature_store_writes",
                                       "Feature rows written to the store, by result (applied or stale).")
        self._entities_gauge = metrics.gauge("streamloop_featurizer_entities", "Entities with buffered events.")
        self._events_gauge = metrics.gauge("streamloop_featurizer_buffered_events", "Events held in windows.")
        pending_gauge = metrics.gauge("streamloop_feature_store_pending_writes",
                                      "Feature rows queued for the store (waiting for it, when it is down).")
        self.latest_rows = LatestRows(self.builder, self.writer, ttl=spec.features.ttl,
                                      writes=store_writes, pending=pending_gauge)

    # -- the batch ---------------------------------------------------------------------------

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        result = ProcessResult()
        now = self._clock()
        failures: Counter[str] = Counter()
        late = replayed = copies = 0
        # Per entity applied to: its partition, and the vector of its last event applied (latest_rows.py).
        rows: dict[str, tuple[PartitionState, OutgoingRecord]] = {}
        current: _TP | None = None
        part = PartitionState()
        recent = None
        for record in batch:
            if (record.topic, record.partition) != current:
                current = (record.topic, record.partition)
                part = self._partitions.get(current) or self._ensure(current)
            if record.offset <= part.applied and \
                    not part.applied_event_at(record.offset, record.value.get(self._event_id)):
                # Not the record applied at this offset: the broker lost the log's tail and new
                # records took its offsets. Rewinding the partition, rather than applying just this
                # record, also drops the lost events from the windows, as a rebuild from the log
                # would (their producer may send them again), and makes every later record at a
                # lost offset new without another check.
                log.warning("%s[%d]@%d holds another event than the one applied there: the log lost its tail; "
                            "forgetting what was applied from there on", record.topic, record.partition, record.offset)
                # The rows holding a lost event are deleted, and computed again where they can be.
                self.latest_rows.replace_lost(part, part.rewind(record.offset))
            if record.offset <= part.applied:
                replayed += 1
                outcome = self._replay(part, record, now)
            else:
                applied = True
                try:
                    outcome, applied = self._apply(part, record, now, emit=True)
                except LateEventError as exc:
                    outcome = Rejection(record, exc, STAGE_VALIDATION)
                    late += 1
                except InvalidRecordError as exc:
                    outcome = Rejection(record, exc, STAGE_VALIDATION)
                    failures[exc.rule or "unknown"] += 1
                except Exception as exc:  # noqa: BLE001 - a bug on one event must not stall the partition
                    log.exception("featurizing %s[%d]@%d failed", record.topic, record.partition, record.offset)
                    outcome = Rejection(record, exc, STAGE_PROCESS)
                part.applied = record.offset
                part.remember(record.offset, record.value.get(self._event_id))
                if recent is None:
                    recent = self._recent = {}
                recent[(record.topic, record.partition, record.offset)] = outcome
                if not applied:
                    copies += 1  # the original's vector again: not late again, and no new row
                elif isinstance(outcome, OutgoingRecord):
                    late += outcome.value["late"]  # type: ignore[index]
                    rows[outcome.key] = (part, outcome)  # type: ignore[index]
            if isinstance(outcome, OutgoingRecord):
                result.outputs.append(outcome)
            else:
                result.rejections.append(outcome)
        self.latest_rows.queue_batch(rows, now)
        for rule, count in failures.items():
            self._validation_failures(count, {"rule": rule})
        if late:
            self._late(late, {"policy": self._late_policy})
        if replayed:
            self._replayed(replayed, {"kind": "re-emitted"})
        if copies:
            self._copies(copies)
        return result

    def _apply(self, part: PartitionState, record: ConsumedRecord, now: int,
               emit: bool) -> tuple[OutgoingRecord | None, bool]:
        """Validate, insert and (when ``emit``) build one new event's vector; raises on rejection.

        Returns the vector and whether the event was applied: a copy of a buffered event is not.
        """
        value = record.value
        event_id, entity_key, event_time = self.validator.validate(value)
        entities = part.entities
        entity = entities.get(entity_key)
        if entity is not None and entity.max_time < part.watermark - self.forget_after:
            entity = None  # forgotten: silent for longer than the horizon (state.py)
        if entity is not None:
            original = entity.by_id.get(event_id)
            if original is not None:
                # The same event again (an at-least-once producer's re-send): counted once, and
                # its vector is the original's, so downstream sees one vector per event id.
                return (self._copy_output(record, entity, original, value, event_id, entity_key, now)
                        if emit else None), False
        late = self._admit(record, entity_key, event_time, entity.max_time if entity is not None else None)
        key = event_time * SHIFT + record.offset
        fresh = entity is None
        if entity is None:
            entity = EntityState(self._fields)
        entity.insert(key, self.builder.field_values(value), event_id)
        output = None
        if emit:
            try:
                output = self._output(record, entity, key, value, event_id, entity_key, event_time, now, late)
            except Exception:
                if not fresh:
                    entity.remove(key)
                raise
        if fresh:
            entities[entity_key] = entity
        entity.applied(key, value, self.retention)
        if event_time > part.watermark:
            part.watermark = event_time  # never past its Kafka timestamp plus the disorder (above)
        return output, True

    def _admit(self, record: ConsumedRecord, entity_key: str, event_time: int, newest: int | None) -> bool:
        """The rules past validation, the same live and replayed: whether the event is late, or the
        rejection; ``newest`` is the entity's newest event time, None when it is new or forgotten."""
        if record.key != entity_key:
            # State is per partition, and the producer's partitioner places a record by its key:
            # keyed otherwise, an entity's events are spread over partitions and each of them
            # sees only its share, so every window would be silently wrong.
            field = self.spec.input.entity_key
            found = "the record has no Kafka key" if record.key is None else \
                f"Kafka key {record.key!r} is not the event's {field} {entity_key!r}"
            raise InvalidRecordError(f"{found}: events must be keyed by {field}", rule=f"{field}.kafka_key")
        if record.timestamp_ms > 0 and event_time > record.timestamp_ms + self.disorder_ms:
            # Featurized, it would be its entity's newest event for years: every later event of
            # the entity late, the entity never forgotten, its stored row outranking every later
            # one. The rule reads only the record, so a restore skips it the same.
            raise FutureEventError(
                f"event time {event_time} is {event_time - record.timestamp_ms} ms after the record's Kafka "
                f"timestamp {record.timestamp_ms}, more than FEATURIZER_DISORDER_MS ({self.disorder_ms})",
                rule=f"{self.spec.input.event_time}.future")
        late = newest is not None and event_time < newest - self._lateness
        if late and self._late_policy == "dead_letter":
            raise LateEventError(
                f"event time {event_time} is more than {self._lateness} ms behind the entity's newest event "
                f"({newest})", rule=f"{self.spec.input.event_time}.allowed_lateness")
        return late

    def _output(self, record: ConsumedRecord, entity: EntityState, key: int, value: dict[str, Any],
                event_id: str, entity_key: str, event_time: int, now: int, late: bool) -> OutgoingRecord:
        numeric, categorical, segments = self.builder.build(entity, key, value)
        vector = {
            "event_id": event_id, "entity_key": entity_key, "event_time": event_time, "pipeline": self.spec.name,
            "numeric": numeric, "categorical": categorical, "segments": segments, "computed_at": now, "late": late,
        }
        return OutgoingRecord(self.features_topic, entity_key, vector, source=record)

    def _copy_output(self, record: ConsumedRecord, entity: EntityState, original: int, value: dict[str, Any],
                     event_id: str, entity_key: str, now: int) -> OutgoingRecord:
        """The vector of the buffered event ``original`` (its version key) again, for a copy of it.

        As a replay of the original's offset: over the events that had arrived by then (the
        original's own values included), with its event time and lateness. Only the copy's record
        is read, for the passthrough, categorical and segment fields: an at-least-once re-send
        carries the same payload, so the vector is the original's but for ``computed_at``, while
        nothing the original read has been evicted (the original still on time: docs/featurizer.md).
        """
        view = entity.as_of(original & OFFSET_MASK)
        event_time = original // SHIFT
        newest = max((k // SHIFT for k in view.keys if k != original), default=None)
        late = self._admit(record, entity_key, event_time, newest)
        return self._output(record, view, original, value, event_id, entity_key, event_time, now, late)

    # -- replays -----------------------------------------------------------------------------

    def _replay(self, part: PartitionState, record: ConsumedRecord, now: int) -> Outcome:
        """An already-applied record: the same outcome again, without touching the state."""
        remembered = self._recent.get((record.topic, record.partition, record.offset))
        if remembered is not None:
            return remembered
        # Not of the latest batch: rebuild the entity's state as it was just before this record.
        value = record.value
        try:
            event_id, entity_key, event_time = self.validator.validate(value)
            entity = part.entities.get(entity_key)
            view = entity.as_of(record.offset - 1) if entity is not None else EntityState(self._fields)
            original = view.by_id.get(event_id)
            if original is not None:
                assert entity is not None
                return self._copy_output(record, entity, original, value, event_id, entity_key, now)
            # Forgetting is already in the buffer: a forgotten entity's events were dropped before
            # this record went in, so the view holds none of them. The rule cannot be applied
            # again: it needs the partition's newest event time back then, and today's would
            # forget entities that were not forgotten then.
            late = self._admit(record, entity_key, event_time, view.max_time if view.keys else None)
        except InvalidRecordError as exc:
            return Rejection(record, exc, STAGE_VALIDATION)
        key = event_time * SHIFT + record.offset
        view.insert(key, self.builder.field_values(value), event_id)
        return self._output(record, view, key, value, event_id, entity_key, event_time, now, late)

    # -- partitions --------------------------------------------------------------------------

    def on_assigned(self, partitions: Sequence[TopicPartitionRef]) -> None:
        """Keep the state of a partition we still hold at its committed offset; rebuild the others."""
        self._take(partitions)
        self._parked.clear()  # revoked and not given back: gone

    def _take(self, partitions: Sequence[TopicPartitionRef]) -> None:
        committed = self.history.committed(partitions) if self.history is not None else {}
        to_restore: dict[_TP, int] = {}
        for ref in partitions:
            tp = (ref.topic, ref.partition)
            parked = self._parked.pop(tp, None)
            offset = committed.get(ref)
            if parked is not None and (self.history is None or offset == parked.next_offset):
                self._partitions[tp] = parked
            elif offset is None or offset <= 0:
                self._partitions[tp] = PartitionState()  # consumption starts at the beginning
            else:
                to_restore[tp] = offset
        if to_restore:
            self._restore(to_restore)

    def committing(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """The runner's commit: a partition given back at that offset keeps its state, though the
        batch's last records did not decode and were never applied."""
        for tp, offset in offsets.items():
            part = self._partitions.get(tp)
            if part is not None:
                part.commit_offset = offset

    def on_revoked(self, partitions: Sequence[TopicPartitionRef]) -> None:
        for ref in partitions:
            part = self._partitions.pop((ref.topic, ref.partition), None)
            if part is not None:
                self._parked[(ref.topic, ref.partition)] = part

    def _ensure(self, tp: _TP) -> PartitionState:
        """A record of a partition never announced by on_assigned (tests, or a runner without hooks)."""
        if self.history is not None:
            self._take([TopicPartitionRef(*tp)])
        return self._partitions.setdefault(tp, PartitionState())

    def _restore(self, ends: dict[_TP, int]) -> None:
        """Re-apply each partition's recent input without emitting, then rewrite the latest rows."""
        assert self.history is not None
        started = self._monotonic()
        parts = {tp: PartitionState(applied=end - 1) for tp, end in ends.items()}
        refs = {TopicPartitionRef(*tp): end for tp, end in ends.items()}
        replayed = 0
        for record in self.history.replay(refs, self.lookback_ms):
            tp = (record.topic, record.partition)
            part = parts.get(tp)
            if part is None or record.offset >= ends[tp]:
                continue
            replayed += 1
            part.remember(record.offset, record.value.get(self._event_id))
            # A record that was dead-lettered when first consumed (invalid, late, or failing) left no
            # trace in the state then, and leaves none now.
            with suppress(Exception):
                self._apply(part, record, 0, emit=False)
        self._partitions.update(parts)
        self.latest_rows.rewrite(parts.values(), self._clock())
        self._replayed(replayed, {"kind": "restored"})
        log.info("rebuilt %d partitions from %d input records in %.2fs (%d entities)", len(parts), replayed,
                 self._monotonic() - started, sum(len(p.entities) for p in parts.values()))

    # -- time --------------------------------------------------------------------------------

    def tick(self, now_ms: int) -> ProcessResult:
        """Retry pending store rows; every sweep interval, drop forgotten entities and report sizes."""
        self.latest_rows.flush(now_ms)
        if self._monotonic() >= self._next_sweep:
            self._next_sweep = self._monotonic() + self._sweep_interval
            for part in self._partitions.values():
                part.sweep(self.forget_after)
            self._entities_gauge(sum(len(p.entities) for p in self._partitions.values()))
            self._events_gauge(sum(p.buffered_events for p in self._partitions.values()))
        return ProcessResult()
