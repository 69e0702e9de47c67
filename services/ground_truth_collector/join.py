"""The label join as a pure state machine: one :class:`JoinPartition` per partition of the keyed stream.

Every record of the partition goes through :meth:`JoinPartition.apply` in log order: a label, a
logged feature vector or a prediction, all keyed by ``event_id``. Each label ends in exactly one
decision, so ``labels_in = joined + after_horizon + no_matching_event + duplicate + pending``:

- **joined**: the label, the event's features and every prediction so far become a LabeledExample,
  as soon as label, features and at least one prediction are there (in any arrival order). At the
  deadline a label with features but no prediction is joined with none.
- **after_horizon**: ``label_time - event_time > horizon`` (UnmatchedLabel AFTER_HORIZON).
- **no_matching_event**: no feature vector arrived by the deadline (NO_MATCHING_EVENT).
- **duplicate**: the event already has a label; the first one wins (DUPLICATE).

Time is the partition's stream time (:class:`StreamClock`), never a wall clock, so a replay
decides exactly as the first run did. An entry's deadline is its latest known time (event or
label), taken no later than the latest plausible time (StreamClock.latest_plausible), + horizon +
grace. Then it is remembered for ``remember_ms`` more, an unlabeled event with its features (a
label that was merely late in arriving still joins, one past the horizon is AFTER_HORIZON, a
second one DUPLICATE), a decided one with its label (a label whose event never came included: its
event's late records are ignored, a label sent again is DUPLICATE), and then deleted. At most
``max_entries`` entries per partition: beyond that the one nearest its deadline is evicted early.

Replays are recognised per entry: an entry keeps the source (topic, partition, offset) of its
label, feature vector and predictions, and of every later label it answered DUPLICATE, so a
record it already holds or answered changes nothing, in whatever order records are delivered
again after a restart. (A per-source offset watermark would be cheaper, but faust can deliver a
source partition with a gap after a rebalance and then redeliver the gap; a watermark would
silently skip it.) A replay of a record whose entry was already deleted, i.e. older than
horizon + grace + remember in stream time, is treated as new.

After the keyed topic grew, an event's records can go to another partition than its entry was
made in; the faust runtime's one table still finds the entry. The entry stays its first partition's
(``Entry.partition``): stored and deleted there (in its changelog partition, which restores it), and
expired there, at the deadline another partition's record moved it to. Stored by the partition
whose record changed it, it was in two changelog partitions, and a restart brought back whichever
was restored last: the event unlabeled again, say, and a label sent again joined a second time.
"""

from __future__ import annotations

import heapq
import logging

from services.ground_truth_collector.clock import StreamClock
from services.ground_truth_collector.entries import (
    Decision,
    Entry,
    Joined,
    JoinInput,
    Kind,
    Reason,
    SourceRef,
    Status,
    Unmatched,
    joined_prediction,
    label_input,
    label_state,
    labeled_example,
    prediction_identity,
    unmatched_label,
)
from services.ground_truth_collector.join_interface import META_PREFIX, JoinConfig, JoinCounters, StateStore
from streamloop.kafka.exceptions import RecordRefusedError

log = logging.getLogger(__name__)


class JoinPartition:
    """The join of one partition; rebuilt from the store when the partition is (re)assigned."""

    def __init__(self, partition: int, store: StateStore, config: JoinConfig,
                 counters: JoinCounters | None = None) -> None:
        self.partition = partition
        self.store = store
        self.config = config
        self.counters = counters if counters is not None else JoinCounters()
        self._meta_key = f"{META_PREFIX}{partition}"
        self.time = StreamClock(config.idle_after_ms, config.future_tolerance_ms, config.sources,
                                store.get(self._meta_key))
        self._heap: list[tuple[int, str]] = []
        self.size = 0
        self.pending = 0
        for key, state in store.entries(partition):
            if key.startswith(META_PREFIX):
                continue
            entry = Entry.from_state(state)
            self._heap.append((entry.deadline, entry.event_id))
            self.size += 1
            self.pending += entry.waiting
        heapq.heapify(self._heap)

    # -- the two ways in ---------------------------------------------------------------------

    @property
    def clock(self) -> int | None:
        return self.time.clock

    def apply(self, item: JoinInput) -> list[Decision]:
        """Apply one keyed record; return what to emit. A replayed record changes nothing.

        The store may refuse the record's own entry (RecordRefusedError: larger than Kafka takes);
        the join is then as before the record (its counters and clock too), and the caller takes
        back the store's writes since it began (``TableStore.rollback``) and dead-letters the record.
        """
        counters, pending, size = vars(self.counters).copy(), self.pending, self.size
        time = StreamClock(self.config.idle_after_ms, self.config.future_tolerance_ms, self.config.sources,
                           self.time.to_state())
        try:
            if not self.time.observe(item.source, item.time, item.timestamp_ms):
                self.counters.implausible_times += 1
            stored = self.store.get(item.event_id)
            entry = Entry.from_state(stored) if stored is not None else None
            if item.kind is Kind.LABEL:
                decisions = self._on_label(entry, item)
            elif item.kind is Kind.FEATURES:
                decisions = self._on_features(entry, item)
            else:
                decisions = self._on_prediction(entry, item)
        except RecordRefusedError:
            vars(self.counters).update(counters)
            self.pending, self.size, self.time = pending, size, time
            raise
        decisions += self._expire()
        self._save_meta()
        return decisions

    def tick(self, timestamp_ms: int) -> list[Decision]:
        """A tick record's Kafka timestamp: quiet sources stop holding the clock back."""
        if not self.time.tick(timestamp_ms):
            return []
        decisions = self._expire()
        self._save_meta()
        return decisions

    def resume(self, timestamp_ms: int) -> None:
        """A resume record: wait for the sources to deliver again before the clock moves on."""
        self.time.resume(timestamp_ms)
        self._save_meta()

    # -- per kind ----------------------------------------------------------------------------

    def _on_label(self, entry: Entry | None, item: JoinInput) -> list[Decision]:
        source = item.source.text()
        if entry is not None and entry.label is not None and (
                entry.label["source"] == source or source in entry.duplicate_label_sources):
            self.counters.replayed += 1
            return []
        self.counters.labels_in += 1
        if entry is None:
            entry = Entry(item.event_id, self.partition, label=label_state(item))
            self._insert(entry)
            self.pending += 1
            return self._evict_over_cap()
        if entry.label is not None:
            decision = self._duplicate(entry, item)
            entry.duplicate_label_sources.append(source)
            self._save(entry)
            return [decision]
        entry.label = label_state(item)
        if entry.status is Status.EXPIRED:
            return [self._decide_late_label(entry, item)]
        self.pending += 1
        decisions = self._evaluate(entry)
        self._save(entry)
        return decisions

    def _on_features(self, entry: Entry | None, item: JoinInput) -> list[Decision]:
        value = item.value
        if entry is not None and entry.features_source == item.source:
            self.counters.replayed += 1
            return []
        if entry is not None and entry.features_source is not None:
            self.counters.duplicate_features += 1
            return []
        if entry is not None and entry.status not in (Status.OPEN, Status.EXPIRED):
            self.counters.ignored_after_decision += 1
            return []
        new = entry is None
        entry = entry or Entry(item.event_id, self.partition)
        entry.features = {"numeric": dict(value.get("numeric") or {}),
                          "categorical": dict(value.get("categorical") or {})}
        entry.features_source = item.source
        entry.segments = dict(value.get("segments") or {})
        entry.event_time = int(value["event_time"])
        entry.entity_key = value.get("entity_key") or entry.entity_key
        entry.pipeline = value.get("pipeline") or entry.pipeline
        decisions = self._evaluate(entry) if entry.waiting else []
        if new:
            self._insert(entry)
            return decisions + self._evict_over_cap()
        self._save(entry)
        return decisions

    def _on_prediction(self, entry: Entry | None, item: JoinInput) -> list[Decision]:
        value = item.value
        identity = prediction_identity(value)
        if entry is not None and item.source.text() in entry.prediction_sources:
            self.counters.replayed += 1
            return []
        if entry is not None and identity in entry.prediction_ids:
            self.counters.duplicate_predictions += 1
            return []
        if entry is not None and entry.status is Status.JOINED:
            entry.prediction_ids.append(identity)
            entry.prediction_sources.append(item.source.text())
            self._save(entry)
            self.counters.late_predictions += 1
            assert entry.label is not None
            example = labeled_example(entry, [joined_prediction(value)], self.config.pipeline, with_features=False)
            decided_at = self._decided_at(entry.label_time)
            return [Joined(example, decided_at, SourceRef.parse(entry.label["source"]), late_prediction=True)]
        if entry is not None and entry.status not in (Status.OPEN, Status.EXPIRED):
            self.counters.ignored_after_decision += 1
            return []
        new = entry is None
        entry = entry or Entry(item.event_id, self.partition)
        entry.prediction_ids.append(identity)
        entry.prediction_sources.append(item.source.text())
        entry.predictions.append(joined_prediction(value))
        if entry.event_time is None:
            entry.event_time = int(value["event_time"])
        entry.entity_key = entry.entity_key or value.get("entity_key")
        entry.pipeline = entry.pipeline or value.get("pipeline")
        decisions = self._evaluate(entry) if entry.waiting else []
        if new:
            self._insert(entry)
            return decisions + self._evict_over_cap()
        self._save(entry)
        return decisions

    # -- decisions ---------------------------------------------------------------------------

    def _evaluate(self, entry: Entry) -> list[Decision]:
        """A waiting label with what has arrived so far: decide now, or keep waiting."""
        assert entry.label_time is not None
        if entry.event_time is not None and entry.label_time - entry.event_time > self.config.horizon_ms:
            delay = entry.label_time - entry.event_time
            detail = f"label_time - event_time = {delay} ms exceeds the join horizon of {self.config.horizon_ms} ms"
            return [self._unmatched(entry, Status.AFTER_HORIZON, Reason.AFTER_HORIZON, detail)]
        if entry.features is not None and entry.predictions:
            return [self._join(entry)]
        return []

    def _join(self, entry: Entry) -> Joined:
        assert entry.label is not None
        example = labeled_example(entry, entry.predictions, self.config.pipeline)
        self.pending -= 1
        self.counters.joined += 1
        self.counters.joined_without_prediction += not entry.predictions
        entry.status = Status.JOINED
        entry.decided_at = self._decided_at(entry.label_time)
        entry.features = None  # the example is out; keep what classifies late predictions and duplicates
        entry.predictions = []
        return Joined(example, entry.decided_at, SourceRef.parse(entry.label["source"]))

    def _unmatched(self, entry: Entry, status: Status, reason: Reason, detail: str) -> Unmatched:
        self.pending -= 1
        if reason is Reason.AFTER_HORIZON:
            self.counters.after_horizon += 1
        else:
            self.counters.no_matching_event += 1
        entry.status = status
        entry.decided_at = self._decided_at(entry.label_time)
        entry.features = None
        entry.predictions = []
        item = label_input(entry)
        return Unmatched(unmatched_label(item, reason, detail, entry.decided_at, entry.entity_key), item.source)

    def _duplicate(self, entry: Entry, item: JoinInput) -> Unmatched:
        self.counters.duplicate += 1
        first = entry.label or {}
        agrees = first.get("label") == item.value["label"]
        detail = (f"event already has a label (label_time {first.get('label_time')}, {entry.status.value}); "
                  + ("this one agrees" if agrees else f"this one disagrees: first was {first.get('label')!r}"))
        record = unmatched_label(item, Reason.DUPLICATE, detail, self._decided_at(item.time), entry.entity_key)
        return Unmatched(record, item.source)

    def _decide_late_label(self, entry: Entry, item: JoinInput) -> Decision:
        """A first label for an event past its deadline (remembered): decide now, nothing to wait for."""
        self.pending += 1
        assert entry.event_time is not None and entry.label_time is not None
        delay = entry.label_time - entry.event_time
        if delay > self.config.horizon_ms:
            detail = f"label_time - event_time = {delay} ms exceeds the join horizon of {self.config.horizon_ms} ms"
            decision: Decision = self._unmatched(entry, Status.AFTER_HORIZON, Reason.AFTER_HORIZON, detail)
        elif entry.features is not None:
            decision = self._join(entry)
        else:
            detail = "predictions for the event arrived but its feature vector did not, by the deadline"
            decision = self._unmatched(entry, Status.NO_MATCH, Reason.NO_MATCHING_EVENT, detail)
        self._save(entry)
        return decision

    def _on_deadline(self, entry: Entry, evicted: bool) -> list[Decision]:
        decisions: list[Decision] = []
        if entry.waiting and entry.features is not None:
            decisions.append(self._join(entry))
        elif entry.waiting:
            if evicted:
                detail = (f"evicted before its event arrived: the join state of partition {self.partition} "
                          f"is full ({self.config.max_entries} entries)")
            elif entry.predictions:
                detail = "predictions for the event arrived but its feature vector did not, by the deadline"
            else:
                detail = (f"no feature vector or prediction with this event_id within the horizon "
                          f"({self.config.horizon_ms} ms) + grace ({self.config.grace_ms} ms)")
            decisions.append(self._unmatched(entry, Status.NO_MATCH, Reason.NO_MATCHING_EVENT, detail))
        elif entry.status is Status.OPEN:
            self.counters.expired_events += 1
            entry.status = Status.EXPIRED
        # A label whose event never came is remembered too: forgotten, its event's late records and
        # a label sent again would make a new entry, and a second decision for the same event.
        if not (evicted or entry.remembered or not self.config.remember_ms):
            entry.remembered = True
            entry.deadline += self.config.remember_ms
            try:
                self._save(entry)
            except RecordRefusedError as exc:
                # Not the applied record's doing: refused, the pass would stop half done, the record
                # blamed, and the entry (off the heap) would never expire. Forgotten instead.
                log.warning("join partition %d: %s; deleted at its deadline instead of remembered", self.partition,
                            exc)
                self.counters.forgotten_too_large += 1
            else:
                heapq.heappush(self._heap, (entry.deadline, entry.event_id))
                return decisions
        self.store.delete(entry.event_id, entry.partition)
        self.size -= 1
        return decisions

    # -- time, deadlines and storage -----------------------------------------------------------

    def _decided_at(self, label_time: int | None) -> int:
        """When the truth became usable, in stream time: the label's time, or the clock if it is later.

        A label stamped beyond anything plausible (see StreamClock) counts at the latest time seen.
        """
        time = self.time
        candidates = [t for t in (label_time, time.high) if t is not None]
        decided = min(candidates) if candidates else 0
        return max(decided, time.clock) if time.clock is not None else decided

    def _deadline(self, entry: Entry) -> int:
        latest = max(t for t in (entry.event_time, entry.label_time) if t is not None)
        # An implausible time (a label_time in microseconds) would put the deadline beyond any the
        # clock reaches: the label never decided, its entry kept until the cap evicted others.
        bound = self.time.latest_plausible
        if bound is not None:
            latest = min(latest, bound)
        return latest + self.config.horizon_ms + self.config.grace_ms

    def _insert(self, entry: Entry) -> None:
        entry.deadline = self._deadline(entry)
        self.store.put(entry.event_id, entry.to_state(), entry.partition)
        heapq.heappush(self._heap, (entry.deadline, entry.event_id))
        self.size += 1

    def _save(self, entry: Entry) -> None:
        """Store an entry in the partition it was created in (``entry.partition``), whichever
        partition's record changed it (see the module docstring, "After the keyed topic grew")."""
        if entry.status is Status.OPEN and not entry.remembered:
            deadline = self._deadline(entry)
            # Moved later, the entry's heap item (at the old deadline) puts it back at the new one
            # when it comes up (_pop_due); moved earlier, only a new item would come up in time.
            if deadline < entry.deadline and entry.partition == self.partition:
                heapq.heappush(self._heap, (deadline, entry.event_id))
            entry.deadline = deadline
        self.store.put(entry.event_id, entry.to_state(), entry.partition)

    def _pop_due(self, force: bool) -> Entry | None:
        while self._heap and (force or self.time.clock is not None and self._heap[0][0] < self.time.clock):
            deadline, event_id = heapq.heappop(self._heap)
            stored = self.store.get(event_id)
            if stored is None or stored["partition"] != self.partition:
                continue  # deleted; or a key made again by another partition's record, after this one deleted it
            if stored["deadline"] > deadline:
                heapq.heappush(self._heap, (stored["deadline"], event_id))  # moved later since it was pushed
                continue
            # Due; at a deadline moved earlier by another partition's record (no item of its own), late.
            return Entry.from_state(stored)
        return None

    def _expire(self) -> list[Decision]:
        decisions: list[Decision] = []
        while (entry := self._pop_due(force=False)) is not None:
            decisions += self._on_deadline(entry, evicted=False)
        return decisions

    def _evict_over_cap(self) -> list[Decision]:
        decisions: list[Decision] = []
        while self.size > self.config.max_entries and (entry := self._pop_due(force=True)) is not None:
            self.counters.evicted += 1
            decisions += self._on_deadline(entry, evicted=True)
        return decisions

    def _save_meta(self) -> None:
        self.store.put(self._meta_key, {"partition": self.partition, **self.time.to_state()}, self.partition)
