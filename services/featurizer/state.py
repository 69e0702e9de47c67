"""Per-partition, per-entity event buffers, sorted by version key (event time, then offset).

An entity keeps the events it still needs: those newer than ``max_time - horizon``, and the event
id of each, so that a copy of a buffered event (same id, another offset) is known. A whole
entity is forgotten once its newest event trails its partition's newest event by more than
``horizon + disorder`` (docs/featurizer.md, "State"). Both rules depend only on the events, never
on when a sweep ran, so a state rebuilt by replaying the input topic equals the original.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Sequence
from typing import Any

from services.featurizer.windows import OFFSET_MASK, SHIFT

# A broker that loses a log's tail loses its newest records (noida-db: 1-20 per restart,
# docs/reliability.md), so the event ids of the newest offsets are what tells a new record at a
# lost offset from a replay. Up to this many per partition, a few hundred kB.
REMEMBERED_IDS = 10_000
_UNSEEN = object()


def _insert(keys: list[int], key: int) -> int:
    """Insert ``key`` in order and return its index; appending is the common (in-order) case."""
    if not keys or key > keys[-1]:
        keys.append(key)
        return len(keys) - 1
    index = bisect_right(keys, key)
    keys.insert(index, key)
    return index


class Series:
    """The non-null values of one aggregated field, in version-key order."""

    __slots__ = ("keys", "values")

    def __init__(self, keys: list[int] | None = None, values: list[Any] | None = None) -> None:
        self.keys: list[int] = keys if keys is not None else []
        self.values: list[Any] = values if values is not None else []

    def insert(self, key: int, value: Any) -> None:
        index = _insert(self.keys, key)
        if index == len(self.values):
            self.values.append(value)
        else:
            self.values.insert(index, value)

    def remove(self, key: int) -> None:
        index = bisect_left(self.keys, key)
        if index < len(self.keys) and self.keys[index] == key:
            del self.keys[index]
            del self.values[index]

    def evict_before(self, cutoff_key: int) -> None:
        if self.keys and self.keys[0] < cutoff_key:
            index = bisect_left(self.keys, cutoff_key)
            del self.keys[:index]
            del self.values[:index]

    def window(self, start_key: int, end_key: int) -> list[Any]:
        """Values with ``start_key <= key <= end_key``."""
        keys = self.keys
        hi = len(keys) if keys and keys[-1] == end_key else bisect_right(keys, end_key)
        return self.values[bisect_left(keys, start_key, 0, hi):hi]


class EntityState:
    """The buffered events of one entity: every event's key and id, and one :class:`Series` per field.

    ``latest`` is the version key and record of the entity's greatest-version event: the entity's
    row in the online store is its features over every buffered event, and ``last_offset``, the
    greatest offset applied, is the row's revision. ``ids`` holds the event id of each key
    (same order), ``by_id`` maps a buffered event's id to its key: both leave with the event.
    """

    __slots__ = ("keys", "ids", "by_id", "series", "max_time", "latest_key", "latest_value", "last_offset")

    def __init__(self, fields: int) -> None:
        self.keys: list[int] = []
        self.ids: list[str] = []
        self.by_id: dict[str, int] = {}
        self.series: list[Series] = [Series() for _ in range(fields)]
        self.max_time = -1
        self.latest_key = -1
        self.latest_value: dict[str, Any] | None = None
        self.last_offset = -1

    def insert(self, key: int, values: Sequence[Any], event_id: str) -> None:
        index = _insert(self.keys, key)
        if index == len(self.ids):
            self.ids.append(event_id)
        else:
            self.ids.insert(index, event_id)
        self.by_id[event_id] = key
        for series, value in zip(self.series, values, strict=True):
            if value is not None:
                series.insert(key, value)

    def remove(self, key: int) -> None:
        """Undo :meth:`insert` (when computing the event's features failed)."""
        index = bisect_left(self.keys, key)
        if index < len(self.keys) and self.keys[index] == key:
            del self.keys[index]
            self.by_id.pop(self.ids.pop(index), None)
        for series in self.series:
            series.remove(key)

    def applied(self, key: int, value: dict[str, Any], horizon: int) -> None:
        """Account for an inserted event: newest time, latest version, and evict what is too old."""
        event_time = key // SHIFT
        if event_time > self.max_time:
            self.max_time = event_time
        if key > self.latest_key:
            self.latest_key = key
            self.latest_value = value
        offset = key & OFFSET_MASK
        if offset > self.last_offset:
            self.last_offset = offset
        cutoff = (self.max_time - horizon + 1) * SHIFT
        if self.keys[0] < cutoff:
            index = bisect_left(self.keys, cutoff)
            del self.keys[:index]
            by_id = self.by_id
            for event_id in self.ids[:index]:
                del by_id[event_id]
            del self.ids[:index]
            for series in self.series:
                series.evict_before(cutoff)

    def previous_time(self, key: int) -> int | None:
        """Event time of the buffered event just before ``key`` in version order."""
        keys = self.keys
        index = len(keys) - 1 if keys and keys[-1] == key else bisect_left(keys, key)
        return keys[index - 1] // SHIFT if index > 0 else None

    def as_of(self, offset: int) -> EntityState:
        """A copy holding only the events with offset <= ``offset``: the state as it was then.

        Exact as long as nothing that event's windows needed was evicted since (docs/featurizer.md).
        """
        view = EntityState(0)
        kept = [i for i, k in enumerate(self.keys) if k & OFFSET_MASK <= offset]
        view.keys = [self.keys[i] for i in kept]
        view.ids = [self.ids[i] for i in kept]
        view.by_id = dict(zip(view.ids, view.keys, strict=True))
        view.series = []
        for series in self.series:
            kept = [i for i, k in enumerate(series.keys) if k & OFFSET_MASK <= offset]
            view.series.append(Series([series.keys[i] for i in kept], [series.values[i] for i in kept]))
        view.max_time = max((k // SHIFT for k in view.keys), default=-1)
        view.last_offset = max((k & OFFSET_MASK for k in view.keys), default=-1)
        return view

    def truncate(self, offset: int) -> bool:
        """Drop the events at ``offset`` or later; False when none is left."""
        kept = self.as_of(offset - 1)
        self.keys, self.ids, self.by_id = kept.keys, kept.ids, kept.by_id
        self.series, self.max_time = kept.series, kept.max_time
        if self.last_offset >= offset:
            self.last_offset = kept.last_offset
        if self.latest_key & OFFSET_MASK >= offset:
            # Only the newest event's record is kept: a rebuild rewrites no row until the next event.
            self.latest_key = self.keys[-1] if self.keys else -1
            self.latest_value = None
        return bool(self.keys)

    @property
    def size(self) -> int:
        return len(self.keys)


class PartitionState:
    """The entities of one input partition, the highest offset applied, the newest event time and
    the event ids of the newest offsets applied."""

    __slots__ = ("entities", "applied", "commit_offset", "watermark", "_ids", "_id_offsets")

    def __init__(self, applied: int = -1) -> None:
        self.entities: dict[str, EntityState] = {}
        self.applied = applied
        # Where the runner last committed: past records that did not decode, which are never applied.
        self.commit_offset = -1
        self.watermark = -1
        self._ids: dict[int, object] = {}
        self._id_offsets: deque[int] = deque()

    @property
    def next_offset(self) -> int:
        """The offset consumption goes on from, with this state."""
        return max(self.applied + 1, self.commit_offset)

    def remember(self, offset: int, event_id: object) -> None:
        """Note the event id (as decoded, None when missing) of the record applied at ``offset``."""
        self._ids[offset] = event_id
        self._id_offsets.append(offset)
        if len(self._id_offsets) > REMEMBERED_IDS:
            del self._ids[self._id_offsets.popleft()]

    def applied_event_at(self, offset: int, event_id: object) -> bool:
        """Whether the record applied at ``offset`` had ``event_id``; assumed so before the ids remembered."""
        if not self._id_offsets or offset < self._id_offsets[0]:
            return True
        # An offset never seen in between held a record that was never decoded: not this one.
        return self._ids.get(offset, _UNSEEN) == event_id

    def rewind(self, offset: int) -> list[str]:
        """Forget every event at ``offset`` or later, and that they were applied: the log lost them.

        Returns the entities whose row in the store holds a lost event (a revision at or past ``offset``).
        """
        lost_rows = []
        for entity_key, entity in list(self.entities.items()):
            if entity.last_offset >= offset:
                lost_rows.append(entity_key)
            if not entity.truncate(offset):
                del self.entities[entity_key]
        self.watermark = max((entity.max_time for entity in self.entities.values()), default=-1)
        self.applied = offset - 1
        self.commit_offset = -1
        while self._id_offsets and self._id_offsets[-1] >= offset:
            del self._ids[self._id_offsets.pop()]
        return lost_rows

    def sweep(self, forget_after: int) -> int:
        """Drop every entity forgotten by the rule above; returns how many were dropped."""
        threshold = self.watermark - forget_after
        stale = [key for key, entity in self.entities.items() if entity.max_time < threshold]
        for key in stale:
            del self.entities[key]
        return len(stale)

    @property
    def buffered_events(self) -> int:
        return sum(entity.size for entity in self.entities.values())
