"""Each entity's latest row in the online store: which row it is, its version, when it is computed again.

A row is the entity's features over every event that has arrived, as of its greatest-version
event (time t), versioned (t, the greatest offset applied to the entity): docs/featurizer.md,
"The online store". The processor hands this module, once per batch, each entity's last vector
of the batch (nothing is decided per event on its hot path). Here each row is taken from that
vector when its event is the entity's greatest version, or computed again from the entity's
buffer, and queued on the :class:`FeatureRowWriter`, which does the I/O. After a lost log tail,
the rows holding lost events are deleted and computed again; after a rebuild, every entity's row
is queued again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from services.featurizer.state import PartitionState
from services.featurizer.store_writer import FeatureRowWriter
from services.featurizer.vectors import FeatureBuilder
from services.featurizer.windows import OFFSET_MASK, SHIFT
from streamloop.kafka import OutgoingRecord
from streamloop.store import FeatureWrite


class LatestRows:
    """Turns entity state into the store's rows and queues them on the writer."""

    def __init__(self, builder: FeatureBuilder, writer: FeatureRowWriter, *, ttl: int,
                 writes: Callable[..., None], pending: Callable[..., None]) -> None:
        self.builder = builder
        self.writer = writer
        self._ttl = ttl
        self._writes = writes
        self._pending = pending
        self._reported = (0, 0)

    def queue_batch(self, rows: Mapping[str, tuple[PartitionState, OutgoingRecord]], now: int) -> None:
        """Queue the row of each entity the batch applied events to: ``rows`` holds its partition,
        and the vector of the batch's last event applied to the entity.

        An event that arrives out of order, on time or late, is in the row at once, and its offset
        makes the version greater than the row it replaces, though t is the same (the store refuses
        equal versions). When the batch's last event of the entity is its greatest version, the row
        is that event's vector; otherwise it is computed again.
        """
        if self.writer.store is None:
            return
        writes = []
        for entity_key, (part, output) in rows.items():
            entity = part.entities.get(entity_key)
            if entity is None or entity.latest_value is None:
                continue  # rewound: the lost events took the row with them
            # The vector is the row when its event is the entity's greatest version.
            vector = output.value if output.source is not None and \
                entity.latest_key & OFFSET_MASK == output.source.offset else None
            if vector is None:
                writes.extend(self.computed(part, [entity_key]))
            else:
                writes.append(FeatureWrite(entity_key, vector["event_time"], entity.last_offset,
                                           vector["numeric"], vector["categorical"]))
        self.writer.submit(writes)
        self.flush(now)

    def replace_lost(self, part: PartitionState, lost: Sequence[str]) -> None:
        """The rows of entities that lost events with the log's tail (``part`` already rewound).

        The store's guard keeps a row holding a lost event over every older version: it is
        deleted, and computed again without the lost events where the entity's newest event is
        left. The state keeps only the newest event's record, so when that one was lost the row
        cannot be computed again: the entity has none until its next event.
        """
        self.writer.discard(lost)
        self.writer.submit(self.computed(part, lost))

    def rewrite(self, parts: Iterable[PartitionState], now: int) -> None:
        """Queue each rebuilt entity's latest row again: rows pending at a crash are not lost."""
        if self.writer.store is None:
            return
        writes = []
        for part in parts:
            writes += self.computed(part, part.entities, now)
        self.writer.submit(writes)
        self.flush(now)

    def computed(self, part: PartitionState, entity_keys: Iterable[str],
                 now: int | None = None) -> list[FeatureWrite]:
        """The rows of these entities computed from their buffers; with ``now``, only those within the TTL."""
        writes = []
        for entity_key in entity_keys:
            entity = part.entities.get(entity_key)
            if entity is None or entity.latest_value is None:
                continue  # its greatest-version event was lost: no row until its next event
            event_time = entity.latest_key // SHIFT
            if now is not None and now - event_time > self._ttl:
                continue
            numeric, categorical, _ = self.builder.build(entity, entity.latest_key, entity.latest_value)
            writes.append(FeatureWrite(entity_key, event_time, entity.last_offset, numeric, categorical))
        return writes

    def flush(self, now: int) -> None:
        """Write pending rows now, unless the writer's own thread does; report what was written."""
        writer = self.writer
        if not writer.background:
            writer.flush(now)
        applied, stale = writer.applied, writer.stale
        if applied > self._reported[0]:
            self._writes(applied - self._reported[0], {"result": "applied"})
        if stale > self._reported[1]:
            self._writes(stale - self._reported[1], {"result": "stale"})
        self._reported = (applied, stale)
        self._pending(writer.pending)
